import ArgumentParser
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf

/// `put`: Put requests (as etcd's `benchmark put`).
struct PutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "put", abstract: "Benchmark Put.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var keyOptions: KeyOptions

    @Option(help: "NAME:PASSWORD: authenticate on each connection's member (auth enabled) and send its token.")
    var user: String?

    func validate() throws {
        if let user, !user.contains(":") { throw ValidationError("--user must be NAME:PASSWORD") }
    }

    func run() async throws {
        let keys = keyOptions.keys
        let value = Array(repeating: UInt8(ascii: "v"), count: keyOptions.valSize)
        let total = keyOptions.total
        let pool = try ConnectionPool(endpoints: try connection.parsedEndpoints(), count: connection.conns)
        let user = self.user
        let (result, secs) = try await pool.run { pool in
            // Tokens are per member: one per connection.
            var tokens: [Metadata] = Array(repeating: [:], count: pool.clients.count)
            if let user, let colon = user.firstIndex(of: ":") {
                var auth = Etcdserverpb_AuthenticateRequest()
                auth.name = String(user[..<colon])
                auth.password = String(user[user.index(after: colon)...])
                for (i, c) in pool.clients.enumerated() {
                    let token = try await Etcdserverpb_Auth.Client(wrapping: c).authenticate(auth).token
                    tokens[i] = ["token": .string(token)]
                }
            }
            let metadata = tokens
            return try await runClosedLoop(clients: connection.clients, total: total, pool: pool) { c, n, grpc in
                var req = Etcdserverpb_PutRequest()
                req.key = Data(keys.key(forRequest: n))
                req.value = Data(value)
                _ = try await Etcdserverpb_KV.Client(wrapping: grpc).put(req, metadata: metadata[c % metadata.count])
                return true
            }
        }
        try Report(command: "put", total: total, result: result, seconds: secs).printChecked(json: connection.json)
    }
}

/// `range KEY [END]`: Range requests, linearizable or serializable.
struct RangeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "range", abstract: "Benchmark Range.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "Key to read (or the start of the range).")
    var key: String

    @Argument(help: "End of the range (exclusive); omit for a single key.")
    var end: String?

    @Option(help: "Consistency: l (linearizable) or s (serializable).")
    var consistency: String = "l"

    @Option(help: "Total number of requests.")
    var total: Int = 10000

    @Option(help: "Maximum number of keys returned (0: no limit).")
    var limit: Int64 = 0

    @Flag(help: "Return only the count of keys.")
    var countOnly = false

    func validate() throws {
        guard consistency == "l" || consistency == "s" else { throw ValidationError("--consistency must be l or s") }
        guard total >= 1 else { throw ValidationError("--total must be at least 1") }
    }

    func run() async throws {
        var req = Etcdserverpb_RangeRequest()
        req.key = Data(key.utf8)
        if let end { req.rangeEnd = Data(end.utf8) }
        req.serializable = consistency == "s"
        req.limit = limit
        req.countOnly = countOnly
        let request = req
        let pool = try ConnectionPool(endpoints: try connection.parsedEndpoints(), count: connection.conns)
        let (result, secs) = try await pool.run { pool in
            try await runClosedLoop(clients: connection.clients, total: total, pool: pool) { _, _, grpc in
                _ = try await Etcdserverpb_KV.Client(wrapping: grpc).range(request)
                return true
            }
        }
        try Report(command: "range", total: total, result: result, seconds: secs).printChecked(json: connection.json)
    }
}

/// `txn-put`: kube-apiserver's update: Txn comparing the key's mod_revision with the one the
/// client last saw (0: absent), then Put, else Range of the key. A failed compare counts
/// as a conflict and teaches the client the current mod_revision.
struct TxnPutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "txn-put", abstract: "Benchmark compare-and-swap Txn (mod_revision compare, then Put).")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var keyOptions: KeyOptions

    /// Each client's view of the mod_revisions of the keys it has touched.
    final class Revisions: @unchecked Sendable {
        private let lock = NSLock()
        private var byKey: [[UInt8]: Int64] = [:]
        subscript(key: [UInt8]) -> Int64 {
            get { lock.withLock { byKey[key] ?? 0 } }
            set { lock.withLock { byKey[key] = newValue } }
        }
    }

    func run() async throws {
        let keys = keyOptions.keys
        let value = Array(repeating: UInt8(ascii: "v"), count: keyOptions.valSize)
        let total = keyOptions.total
        let clients = connection.clients
        let seen = (0..<clients).map { _ in Revisions() }
        let pool = try ConnectionPool(endpoints: try connection.parsedEndpoints(), count: connection.conns)
        let (result, secs) = try await pool.run { pool in
            try await runClosedLoop(clients: clients, total: total, pool: pool) { c, n, grpc in
                let key = keys.key(forRequest: n)
                let expected = seen[c][key]
                var cmp = Etcdserverpb_Compare()
                cmp.key = Data(key)
                cmp.target = .mod
                cmp.result = .equal
                cmp.modRevision = expected
                var put = Etcdserverpb_PutRequest()
                put.key = Data(key)
                put.value = Data(value)
                var get = Etcdserverpb_RangeRequest()
                get.key = Data(key)
                var onSuccess = Etcdserverpb_RequestOp()
                onSuccess.requestPut = put
                var onFailure = Etcdserverpb_RequestOp()
                onFailure.requestRange = get
                var txn = Etcdserverpb_TxnRequest()
                txn.compare = [cmp]
                txn.success = [onSuccess]
                txn.failure = [onFailure]
                let resp = try await Etcdserverpb_KV.Client(wrapping: grpc).txn(txn)
                if resp.succeeded {
                    seen[c][key] = resp.header.revision
                    return true
                }
                let current = resp.responses.first?.responseRange.kvs.first?.modRevision ?? 0
                seen[c][key] = current
                return false
            }
        }
        try Report(command: "txn-put", total: total, result: result, seconds: secs).printChecked(json: connection.json)
    }
}

/// `kube-fill`: writes a kube-apiserver-shaped keyspace for migration tests and measurements:
/// keys `/registry/<resource>/ns-<i mod 50>/<resource>-<i>` over eight resources, binary
/// values (`k8s\0` then deterministic pseudo-random bytes, 100-700 bytes), and the `events`
/// keys attached to `--leases` leases (granted first, TTL one hour), as kube-apiserver does.
/// The same `--total` always gives the same keys and values.
struct KubeFillCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kube-fill", abstract: "Write a kube-apiserver-shaped keyspace (/registry, binary values, leased events).")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Number of keys.")
    var total: Int = 100_000

    @Option(help: "Number of leases the events keys are spread over.")
    var leases: Int = 10

    @Option(help: "Index of the first key (fill a large keyspace in several runs).")
    var start: Int = 0

    static let resources = ["pods", "configmaps", "secrets", "services", "events", "deployments", "replicasets", "endpointslices"]

    func validate() throws {
        guard total >= 1 else { throw ValidationError("--total must be at least 1") }
        guard leases >= 1 else { throw ValidationError("--leases must be at least 1") }
        guard start >= 0 else { throw ValidationError("--start must not be negative") }
    }

    static func key(_ i: Int) -> [UInt8] {
        let r = resources[i % resources.count]
        return Array("/registry/\(r)/ns-\(i % 50)/\(r)-\(i)".utf8)
    }

    static func value(_ i: Int) -> [UInt8] {
        var state = UInt64(i) &* 0x9E37_79B9_7F4A_7C15 &+ 1
        let size = 100 + (i &* 7919) % 600
        var out: [UInt8] = [0x6B, 0x38, 0x73, 0x00]
        out.reserveCapacity(size)
        while out.count < size {
            state = state &+ 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            for s in stride(from: 0, to: 64, by: 8) where out.count < size { out.append(UInt8(truncatingIfNeeded: z >> UInt64(s))) }
        }
        return out
    }

    func run() async throws {
        let total = self.total
        let pool = try ConnectionPool(endpoints: try connection.parsedEndpoints(), count: connection.conns)
        let leaseCount = leases
        let first = start
        let (result, secs) = try await pool.run { pool in
            var ids: [Int64] = []
            for _ in 0..<leaseCount {
                var grant = Etcdserverpb_LeaseGrantRequest()
                grant.ttl = 3600
                ids.append(try await Etcdserverpb_Lease.Client(wrapping: pool.clients[0]).leaseGrant(grant).id)
            }
            let leaseIDs = ids
            return try await runClosedLoop(clients: connection.clients, total: total, pool: pool) { _, request, grpc in
                let n = first + request
                var req = Etcdserverpb_PutRequest()
                req.key = Data(Self.key(n))
                req.value = Data(Self.value(n))
                if n % Self.resources.count == 4 { req.lease = leaseIDs[(n / Self.resources.count) % leaseIDs.count] }
                _ = try await Etcdserverpb_KV.Client(wrapping: grpc).put(req)
                return true
            }
        }
        try Report(command: "kube-fill", total: total, result: result, seconds: secs).printChecked(json: connection.json)
    }
}
