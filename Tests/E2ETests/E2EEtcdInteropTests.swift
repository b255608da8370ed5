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

    /// `--initial-cluster` (default: this member alone) and `--initial-cluster-token`.
    var initialCluster: String?
    var token = "etcd-cluster"

    init(name: String = "e1", dataDir: String? = nil, clientPort: Int? = nil, peerPort: Int? = nil) throws {
        self.name = name
        self.dataDir = try dataDir ?? E2E.tempDir("etcd-\(name)")
        self.clientPort = try clientPort ?? E2E.freePort()
        self.peerPort = try peerPort ?? E2E.freePort()
    }

    /// Starts the process without waiting for it to serve (members of a cluster start together).
    func launch() throws {
        let args = [
            "--name", name, "--data-dir", dataDir,
            "--listen-client-urls", "http://127.0.0.1:\(clientPort)", "--advertise-client-urls", "http://127.0.0.1:\(clientPort)",
            "--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
            "--initial-cluster", initialCluster ?? "\(name)=\(peerURL)", "--initial-cluster-token", token,
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        let c = try Child(try #require(Self.path), args)
        try c.start()
        child = c
    }

    func start() async throws {
        try launch()
        try await waitHealthy()
    }

    func waitHealthy() async throws {
        let c = try #require(child)
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

    /// `etcdctl snapshot restore` (the real etcdctl 3.4) makes an etcd data directory; swetcd
    /// started on it imports it once (logged) and serves the same keyspace, history, leases,
    /// auth and watch, with the membership and IDs the restore gave it. An etcd member's own
    /// data directory (its WAL holds requests) is refused and left as it was.
    @Test func swetcdStartsOnEtcdctlRestoredDataDir() async throws {
        let dir = try E2E.tempDir("interop-datadir")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/etcd.db"
        let etcd = try RealEtcd(dataDir: dir + "/etcd.data")
        var before: (revision: Int64, kvs: [NSDictionary]) = (0, [])
        var lease = ""
        var compactedAt: Int64 = 0
        do {
            try await etcd.start()
            let filled = try await Self.fill(etcd.endpoint) { try await etcdctl(etcd.endpoint, $0) }
            lease = filled.lease
            compactedAt = filled.compacted
            #expect(try await etcd.ctl("user", "add", "alice:secret").status == 0)
            before = try await Self.keyspace(etcd.endpoint)
            #expect(try await etcd.ctl("snapshot", "save", file).status == 0)
        } catch {
            Issue.record("etcd log: \((etcd.child?.stderr ?? "").suffix(3000))")
            await etcd.cleanUp()
            throw error
        }
        await etcd.stop()

        // etcd's own (run) data directory: refused, nothing changed.
        let ran = try Member(name: "e1")
        let ranDir = ran.dataDir
        ran.dataDir = etcd.dataDir
        let listing = try FileManager.default.subpathsOfDirectory(atPath: etcd.dataDir).sorted()
        do {
            try await ran.start()
            Issue.record("swetcd started on a run etcd member's data directory")
        } catch {
            #expect("\(error)".contains("etcd member that has run"), "\(error)")
        }
        #expect(try FileManager.default.subpathsOfDirectory(atPath: etcd.dataDir).sorted() == listing)
        try? FileManager.default.removeItem(atPath: ranDir)

        // etcdctl snapshot restore with a new token; swetcd starts on the result.
        let m = try Member(name: "n1")
        let ctl = try #require(E2E.etcdctlPath)
        let restoreDir = dir + "/restored"
        let restore = try await E2EDefragSnapshotTests.run(ctl, [
            "snapshot", "restore", file, "--data-dir", restoreDir, "--name", m.name,
            "--initial-cluster", "\(m.name)=\(m.peerURL)", "--initial-advertise-peer-urls", m.peerURL,
            "--initial-cluster-token", "migrated",
        ])
        #expect(restore.status == 0, "\(restore)")
        let etcdClusterID = try #require(restore.stderr.range(of: "\"cluster-id\":\"").map { r in
            String(restore.stderr[r.upperBound...].prefix { $0 != "\"" })
        })
        m.dataDir = restoreDir
        do {
            try await m.start()
            let log = m.stderrText
            #expect(log.contains("imported an etcd data directory"), "\(log.suffix(2000))")
            let after = try await Self.keyspace(m.endpoint)
            #expect(after.revision == before.revision)
            #expect(after.kvs == before.kvs)
            let compacted = try await m.ctl("get", "x", "--rev=\(compactedAt - 1)")
            #expect(compacted.stderr.contains("required revision has been compacted"), "\(compacted)")
            #expect(try await Self.leaseKeys(m.endpoint, lease) == (0..<5).map { "/registry/events/e\($0)" })
            #expect(try await m.ctl("user", "list").stdout.contains("alice"))
            // The membership and IDs are those etcd would have had from this restore.
            let list = try await m.ctl("member", "list", "-w", "json")
            #expect(list.stdout.contains("\"cluster_id\":\(UInt64(etcdClusterID, radix: 16) ?? 0)"), "\(list.stdout) vs \(etcdClusterID)")
            #expect(list.stdout.contains(m.peerURL) && list.stdout.contains("\"name\":\"n1\""), "\(list.stdout)")
            // History is watchable from the compaction revision on, and new writes continue it.
            let w = try m.watch(["/registry/pods/ns/p2", "--rev=\(compactedAt)"], limit: 20)
            let seen = try await w.waitLines(3)
            #expect(seen.first == "PUT", "\(seen)")
            let put = try await m.ctl("put", "new", "v", "-w", "json")
            #expect(put.stdout.contains("\"revision\":\(before.revision + 1)"), "\(put)")
            w.signal(SIGTERM)
            _ = try? await w.waitExit()
            // A restart does not import again: the directory is swetcd's now.
            #expect(try await m.stop() == 0)
            try await m.start()
            #expect(!m.stderrText.contains("imported an etcd data directory"))
            try await E2E.waitUntil("the restarted member serves") { try await m.ctl("get", "new").stdout.contains("v") }
        } catch {
            Issue.record("swetcd log: \(m.stderrText.suffix(3000))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
        await etcd.cleanUp()
    }
}
