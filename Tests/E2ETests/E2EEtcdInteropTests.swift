import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real etcd 3.4 server from Debian (`etcd-server`), for round trips with swetcd.
final class RealEtcd: @unchecked Sendable {
    static let path: String? = ["/usr/bin/etcd"].first { FileManager.default.isExecutableFile(atPath: $0) }
    let name: String
    let dataDir: String
    let clientPort: Int
    let peerPort: Int
    private(set) var child: Child?
    var endpoint: String { "127.0.0.1:\(clientPort)" }
    var peerURL: String { "http://127.0.0.1:\(peerPort)" }

    init(name: String = "e1", dataDir: String? = nil) throws {
        self.name = name
        self.dataDir = try dataDir ?? E2E.tempDir("etcd-\(name)")
        clientPort = try E2E.freePort()
        peerPort = try E2E.freePort()
    }

    func start() async throws {
        let args = [
            "--name", name, "--data-dir", dataDir,
            "--listen-client-urls", "http://127.0.0.1:\(clientPort)", "--advertise-client-urls", "http://127.0.0.1:\(clientPort)",
            "--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
            "--initial-cluster", "\(name)=\(peerURL)", "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        let c = try Child(try #require(Self.path), args)
        try c.start()
        child = c
        try await E2E.waitUntil("etcd on \(clientPort)", limit: .seconds(30)) {
            if let s = c.exitStatus { throw E2EError("etcd exited with \(s): \(c.stderr.suffix(3000))") }
            guard E2E.isListening(clientPort) else { return false }
            return try await etcdctl(endpoint, ["endpoint", "health"]).status == 0
        }
    }

    func ctl(_ args: String...) async throws -> CommandOutput { try await etcdctl(endpoint, args) }

    func stop() async {
        guard let c = child else { return }
        c.signal(SIGTERM)
        _ = try? await c.waitExit()
        child = nil
    }

    func cleanUp() async {
        await stop()
        try? FileManager.default.removeItem(atPath: dataDir)
    }
}

/// Snapshots cross between swetcd and the real etcd 3.4 in both directions with the real tools:
/// `etcdctl snapshot save` from swetcd → `etcdctl snapshot status` / `snapshot restore` → etcd
/// serves the same keys, revisions and leases; and etcd's own snapshot → `swetcdutl snapshot
/// restore` → swetcd serves the same.
@Suite("E2E etcd snapshot interop", .serialized,
       .enabled(if: E2E.available && RealEtcd.path != nil, "swetcd, etcdctl or etcd not found"))
struct E2EEtcdInteropTests {
    /// Writes a keyspace with history: puts, overwrites, deletes, a lease with keys, a
    /// compaction. Returns the lease ID (hex) and the compaction revision.
    static let bulkKeys = Int(ProcessInfo.processInfo.environment["SWETCD_E2E_INTEROP_KEYS"] ?? "") ?? 3000

    static func fill(_ endpoint: String, _ ctl: (String...) async throws -> CommandOutput) async throws -> (lease: String, compacted: Int64) {
        // A bulk of kube-apiserver-shaped keys first (many leaf pages and branch levels in the
        // file): SWETCD_E2E_INTEROP_KEYS (default 3000) keys of 1 KiB under /registry/configmaps/.
        let bulk = bulkKeys
        let bench = try await E2E.runBench(["put", "--endpoints", endpoint, "--conns", "2", "--clients", "16",
                                            "--total", "\(bulk)", "--key-space-size", "\(bulk)", "--sequential-keys",
                                            "--key-size", "10", "--val-size", "1024", "--key-prefix", "/registry/configmaps/"])
        #expect(bench.status == 0, "\(bench.stdout)\(bench.stderr)")
        let grant = try await ctl("lease", "grant", "3600")
        #expect(grant.status == 0, "\(grant)")
        let lease = String(try #require(grant.stdout.split(separator: " ").dropFirst().first))
        for i in 0..<120 {
            #expect(try await ctl("put", "/registry/pods/ns/p\(i % 60)", "value-\(i)-" + String(repeating: "x", count: i)).status == 0)
        }
        for i in 0..<5 { #expect(try await ctl("put", "--lease=\(lease)", "/registry/events/e\(i)", "event \(i)").status == 0) }
        #expect(try await ctl("del", "/registry/pods/ns/p1", "--prefix").status == 0)  // p1, p10..p19
        #expect(try await ctl("put", "big", String(repeating: "B", count: 20_000)).status == 0)
        let compacted = Int64(bulk) + 50
        #expect(try await ctl("compaction", "\(compacted)").status == 0)
        #expect(try await ctl("put", "after", "compaction").status == 0)
        return (lease, compacted)
    }

    /// `get "" --prefix -w json`: the header revision and the key-values (JSON objects).
    static func keyspace(_ endpoint: String, rev: Int64? = nil) async throws -> (revision: Int64, kvs: [NSDictionary]) {
        var args = ["get", "", "--prefix", "-w", "json"]
        if let rev { args.append("--rev=\(rev)") }
        let out = try await etcdctl(endpoint, args)
        #expect(out.status == 0, "\(out)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])
        let header = try #require(json["header"] as? [String: Any])
        let kvs = (json["kvs"] as? [[String: Any]] ?? []).map { NSDictionary(dictionary: $0) }
        return (try #require(header["revision"] as? NSNumber).int64Value, kvs)
    }

    /// `endpoint hashkv` (at `rev`, 0: current): the hash and the compact revision.
    static func hashKV(_ endpoint: String, rev: Int64 = 0) async throws -> (hash: Int64, compacted: Int64) {
        let out = try await etcdctl(endpoint, ["endpoint", "hashkv", "--rev=\(rev)", "-w", "json"])
        #expect(out.status == 0, "\(out)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [[String: Any]])
        let hashKV = try #require(json.first?["HashKV"] as? [String: Any], "\(out.stdout)")
        return (try #require(hashKV["hash"] as? NSNumber).int64Value, (hashKV["compact_revision"] as? NSNumber)?.int64Value ?? 0)
    }

    static func snapshotStatus(_ tool: String, _ args: [String]) async throws -> [String: Int64] {
        let out = try await E2EDefragSnapshotTests.run(tool, args + ["-w", "json"])
        #expect(out.status == 0, "\(out)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])
        return json.compactMapValues { ($0 as? NSNumber)?.int64Value }
    }

    static func leaseKeys(_ endpoint: String, _ lease: String) async throws -> [String] {
        let out = try await etcdctl(endpoint, ["lease", "timetolive", lease, "--keys"])
        #expect(out.status == 0, "\(out)")
        guard let r = out.stdout.range(of: "attached keys(") else { return [] }
        return out.stdout[r.upperBound...].prefix { $0 != ")" }.dropFirst().dropLast().split(separator: " ").map(String.init).sorted()
    }

    @Test func swetcdSnapshotBootsRealEtcd() async throws {
        let dir = try E2E.tempDir("interop-out")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/swetcd.db"
        var before: (revision: Int64, kvs: [NSDictionary]) = (0, [])
        var historical: (revision: Int64, kvs: [NSDictionary]) = (0, [])
        var lease = ""
        var historicalRev: Int64 = 0
        var hashes: [(hash: Int64, compacted: Int64)] = []
        try await Member.with { m in
            let filled = try await Self.fill(m.endpoint) { try await m.ctl($0) }
            lease = filled.lease
            before = try await Self.keyspace(m.endpoint)
            historicalRev = filled.compacted + 40
            historical = try await Self.keyspace(m.endpoint, rev: historicalRev)
            hashes = [try await Self.hashKV(m.endpoint), try await Self.hashKV(m.endpoint, rev: historicalRev)]
            let save = try await m.ctl("snapshot", "save", file)
            #expect(save.status == 0, "\(save)")
        }
        #expect(before.kvs.count > Self.bulkKeys)

        // etcdctl reads it (its integrity check, hash, revision, keys) and agrees with swetcdutl.
        let ctl = try #require(E2E.etcdctlPath)
        let etcdStatus = try await Self.snapshotStatus(ctl, ["snapshot", "status", file])
        let ourStatus = try await Self.snapshotStatus(try E2EDefragSnapshotTests.swetcdutl(), ["snapshot", "status", file])
        #expect(etcdStatus["revision"] == before.revision, "\(etcdStatus)")
        #expect(etcdStatus == ourStatus)
        #expect((etcdStatus["totalKey"] ?? 0) > Int64(before.kvs.count))

        // etcdctl restores it and the real etcd serves the same keyspace, history and lease.
        let etcd = try RealEtcd(dataDir: dir + "/etcd.data")
        let restore = try await E2EDefragSnapshotTests.run(ctl, [
            "snapshot", "restore", file, "--data-dir", etcd.dataDir, "--name", etcd.name,
            "--initial-cluster", "\(etcd.name)=\(etcd.peerURL)", "--initial-advertise-peer-urls", etcd.peerURL,
        ])
        #expect(restore.status == 0, "\(restore)")
        do {
            try await etcd.start()
            let after = try await Self.keyspace(etcd.endpoint)
            #expect(after.revision == before.revision)
            #expect(after.kvs == before.kvs)
            #expect(try await Self.keyspace(etcd.endpoint, rev: historicalRev).kvs == historical.kvs)
            // The same history hashes the same on etcd (so mixed clusters' corruption checks agree).
            let etcdHashes = [try await Self.hashKV(etcd.endpoint), try await Self.hashKV(etcd.endpoint, rev: historicalRev)]
            #expect(etcdHashes.map(\.hash) == hashes.map(\.hash), "etcd \(etcdHashes), swetcd \(hashes)")
            #expect(etcdHashes.map(\.compacted) == hashes.map(\.compacted))
            let compacted = try await etcd.ctl("get", "x", "--rev=10")
            #expect(compacted.stderr.contains("required revision has been compacted"), "\(compacted)")
            #expect(try await etcd.ctl("lease", "list").stdout.contains(lease))
            #expect(try await Self.leaseKeys(etcd.endpoint, lease) == (0..<5).map { "/registry/events/e\($0)" })
            let members = try await etcd.ctl("member", "list")
            #expect(members.stdout.contains(etcd.peerURL), "\(members)")
            // And it takes writes at the next revision.
            let put = try await etcd.ctl("put", "new", "v", "-w", "json")
            #expect(put.stdout.contains("\"revision\":\(before.revision + 1)"), "\(put)")
        } catch {
            Issue.record("etcd log: \((etcd.child?.stderr ?? "").suffix(3000))")
            await etcd.cleanUp()
            throw error
        }
        await etcd.cleanUp()
    }

    @Test func realEtcdSnapshotRestoresIntoSwetcd() async throws {
        let dir = try E2E.tempDir("interop-in")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/etcd.db"
        let etcd = try RealEtcd()
        var before: (revision: Int64, kvs: [NSDictionary]) = (0, [])
        var historical: (revision: Int64, kvs: [NSDictionary]) = (0, [])
        var lease = ""
        var historicalRev: Int64 = 0
        var hashes: [(hash: Int64, compacted: Int64)] = []
        do {
            try await etcd.start()
            let filled = try await Self.fill(etcd.endpoint) { try await etcdctl(etcd.endpoint, $0) }
            lease = filled.lease
            #expect(try await etcd.ctl("user", "add", "alice:secret").status == 0)
            #expect(try await etcd.ctl("role", "add", "reader").status == 0)
            #expect(try await etcd.ctl("role", "grant-permission", "reader", "read", "/registry/", "--prefix").status == 0)
            #expect(try await etcd.ctl("user", "grant-role", "alice", "reader").status == 0)
            before = try await Self.keyspace(etcd.endpoint)
            historicalRev = filled.compacted + 40
            historical = try await Self.keyspace(etcd.endpoint, rev: historicalRev)
            hashes = [try await Self.hashKV(etcd.endpoint), try await Self.hashKV(etcd.endpoint, rev: historicalRev)]
            let save = try await etcd.ctl("snapshot", "save", file)
            #expect(save.status == 0, "\(save)")
        } catch {
            Issue.record("etcd log: \((etcd.child?.stderr ?? "").suffix(3000))")
            await etcd.cleanUp()
            throw error
        }
        await etcd.cleanUp()
        #expect(before.kvs.count > Self.bulkKeys)

        let util = try E2EDefragSnapshotTests.swetcdutl()
        let etcdStatus = try await Self.snapshotStatus(try #require(E2E.etcdctlPath), ["snapshot", "status", file])
        #expect(try await Self.snapshotStatus(util, ["snapshot", "status", file]) == etcdStatus)

        let m = try Member()
        let restore = try await E2EDefragSnapshotTests.run(util, [
            "snapshot", "restore", file, "--data-dir", m.dataDir + "/restored", "--name", m.name,
            "--initial-cluster", "\(m.name)=\(m.peerURL)", "--initial-advertise-peer-urls", m.peerURL,
        ])
        #expect(restore.status == 0, "\(restore)")
        #expect(restore.stdout.contains("revision \(before.revision)"), "\(restore)")
        m.dataDir += "/restored"
        do {
            try await m.start()
            let after = try await Self.keyspace(m.endpoint)
            #expect(after.revision == before.revision)
            #expect(after.kvs == before.kvs)
            #expect(try await Self.keyspace(m.endpoint, rev: historicalRev).kvs == historical.kvs)
            let ourHashes = [try await Self.hashKV(m.endpoint), try await Self.hashKV(m.endpoint, rev: historicalRev)]
            #expect(ourHashes.map(\.hash) == hashes.map(\.hash), "swetcd \(ourHashes), etcd \(hashes)")
            #expect(ourHashes.map(\.compacted) == hashes.map(\.compacted))
            let compacted = try await m.ctl("get", "x", "--rev=10")
            #expect(compacted.stderr.contains("required revision has been compacted"), "\(compacted)")
            #expect(try await m.ctl("lease", "list").stdout.contains(lease))
            #expect(try await Self.leaseKeys(m.endpoint, lease) == (0..<5).map { "/registry/events/e\($0)" })
            #expect(try await m.ctl("user", "get", "alice").stdout.contains("Roles: reader"))
            #expect(try await m.ctl("role", "get", "reader").stdout.contains("[/registry/, /registry0)"))
            let put = try await m.ctl("put", "new", "v", "-w", "json")
            #expect(put.stdout.contains("\"revision\":\(before.revision + 1)"), "\(put)")
        } catch {
            Issue.record("swetcd log: \(m.stderrText.suffix(3000))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }
}
