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
