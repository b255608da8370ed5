import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Online defragmentation with `etcdctl defrag`, and disaster recovery: `etcdctl snapshot
/// save` from a running cluster, `swetcdutl snapshot restore` into new data directories, and a
/// new cluster started on them.
@Suite("E2E defrag and snapshot restore", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2EDefragSnapshotTests {
    /// `swetcdutl`, built next to `swetcd`.
    static func swetcdutl() throws -> String {
        let path = (try #require(E2E.swetcdPath) as NSString).deletingLastPathComponent + "/swetcdutl"
        try #require(FileManager.default.isExecutableFile(atPath: path), "no swetcdutl at \(path)")
        return path
    }

    static func run(_ path: String, _ args: [String]) async throws -> CommandOutput {
        let c = try Child(path, args)
        try c.start()
        let status = try await c.waitExit(limit: .seconds(60))
        return CommandOutput(status: status, stdout: c.stdout, stderr: c.stderr)
    }

    /// A field of `etcdctl endpoint status -w json` (the first endpoint's).
    static func statusField(_ m: Member, _ name: String) async throws -> Int64 {
        let out = try await m.ctl("endpoint", "status", "-w", "json")
        let array = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [[String: Any]])
        let status = try #require(array.first?["Status"] as? [String: Any])
        if let n = status[name] as? NSNumber { return n.int64Value }
        let header = try #require(status["header"] as? [String: Any])
        return try #require(header[name] as? NSNumber).int64Value
    }

    @Test func defragUnderWritesKeepsEveryWriteAndShrinks() async throws {
        try await Member.with { m in
            // Fill with values that are then overwritten and compacted away: free pages.
            let big = String(repeating: "x", count: 60_000)
            for i in 0..<40 { #expect(try await m.ctl(["put", "big\(i % 10)", big]).status == 0) }
            let rev = try await Self.statusField(m, "revision")
            #expect(try await m.ctl("compact", "\(rev)").status == 0)
            for i in 0..<10 { _ = try await m.ctl("del", "big\(i)") }
            let before = try await Self.statusField(m, "dbSize")

            // Writes go on while defragmenting; each acknowledged one must be there afterwards.
            let writer = Task { () -> [String] in
                var acked: [String] = []
                for i in 0..<40 where !Task.isCancelled {
                    if (try? await m.ctl("put", "during\(i)", "v\(i)"))?.status == 0 { acked.append("during\(i)") }
                }
                return acked
            }
            for _ in 0..<2 {
                let d = try await m.ctl("defrag")
                #expect(d.status == 0, "\(d.stderr)")
                #expect(d.stdout.contains("Finished defragmenting etcd member[\(m.endpoint)]"), "\(d.stdout)")
            }
            let acked = await writer.value
            #expect(acked.count == 40)
            let keys = try await m.ctl("get", "during", "--prefix", "--keys-only").lines
            #expect(Set(acked).isSubset(of: Set(keys)))
            let after = try await Self.statusField(m, "dbSize")
            let inUse = try await Self.statusField(m, "dbSizeInUse")
            #expect(after < before, "dbSize \(before) -> \(after)")
            #expect(after - inUse < 64 * 4096, "dbSize \(after), in use \(inUse)")
            // The member keeps working after the swap, and after a restart.
            #expect(try await m.ctl("put", "after", "yes").lines == ["OK"])
            try await m.stop()
            try await m.start()
            try await E2E.waitUntil("restarted member serves") { try await m.ctl("get", "after").lines == ["after", "yes"] }
            #expect(try await m.ctl("get", "during", "--prefix", "--keys-only").lines.count == 40)
        }
    }

    /// One key's revisions as `etcdctl get -w json` reports them.
    struct KV: Equatable { var value: String; var create: Int64; var mod: Int64; var version: Int64; var lease: Int64 }

    static func kvs(_ m: Member, prefix: String) async throws -> [String: KV] {
        let out = try await m.ctl("get", prefix, "--prefix", "-w", "json")
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])
        var result: [String: KV] = [:]
        for kv in (obj["kvs"] as? [[String: Any]]) ?? [] {
            func int(_ k: String) -> Int64 { (kv[k] as? NSNumber)?.int64Value ?? 0 }
            func text(_ k: String) -> String {
                String(decoding: Data(base64Encoded: kv[k] as? String ?? "") ?? Data(), as: UTF8.self)
            }
            result[text("key")] = KV(value: text("value"), create: int("create_revision"), mod: int("mod_revision"),
                                     version: int("version"), lease: int("lease"))
        }
        return result
    }

    static func clusterID(_ m: Member) async throws -> String {
        let out = try await m.ctl("endpoint", "status", "-w", "json")
        let array = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [[String: Any]])
        let status = try #require(array.first?["Status"] as? [String: Any])
        let header = try #require(status["header"] as? [String: Any])
        return "\(try #require(header["cluster_id"] as? NSNumber))"
    }

    @Test func snapshotSavedFromAClusterRestoresIntoANewCluster() async throws {
        let util = try Self.swetcdutl()
        let dir = try E2E.tempDir("restore")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/snapshot.db"
        var saved: [String: KV] = [:]
        var leaseID = ""
        var oldCluster = ""
        var snapshotRevision: Int64 = 0
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k/0", "first").status == 0
            }
            let grant = try await ms[1].ctl("lease", "grant", "600")
            leaseID = try #require(grant.stdout.split(separator: " ").dropFirst().first.map(String.init))
            for i in 0..<12 { #expect(try await ms[i % 3].ctl("put", "k/\(i % 8)", "v\(i)").status == 0) }
            #expect(try await ms[0].ctl("put", "k/leased", "x", "--lease=\(leaseID)").status == 0)
            #expect(try await ms[2].ctl("del", "k/5").status == 0)
            saved = try await Self.kvs(ms[0], prefix: "k/")
            oldCluster = try await Self.clusterID(ms[0])
            // Every member defragments (etcdctl visits each endpoint), then the snapshot.
            let d = try await etcdctl(ms.map(\.endpoint).joined(separator: ","), ["defrag"])
            #expect(d.status == 0, "\(d.stderr)")
            #expect(d.stdout.split(separator: "\n").filter { $0.hasPrefix("Finished defragmenting") }.count == 3)
            // --cluster: etcdctl defragments every member whose client URLs the member list names.
            let c = try await ms[1].ctl("defrag", "--cluster")
            #expect(c.status == 0, "\(c.stderr)")
            #expect(c.stdout.contains("Finished defragmenting etcd member[http://\(ms[1].endpoint)]"), "\(c.stdout)")
            let s = try await ms[0].ctl("snapshot", "save", file)
            #expect(s.status == 0, "\(s.stderr)")
            snapshotRevision = try await Self.statusField(ms[0], "revision")
        }
        #expect(saved.count == 8, "\(saved.keys.sorted())")
        let status = try await Self.run(util, ["snapshot", "status", file, "-w", "json"])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains("\"revision\":\(snapshotRevision)"), "\(status.stdout)")

        // Three new members, restored with a new token and --bump-revision.
        let bump: Int64 = 1000
        var members: [Member] = []
        for i in 1...3 { members.append(try Member(name: "r\(i)")) }
        let cluster = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        do {
            for m in members {
                let r = try await Self.run(util, [
                    "snapshot", "restore", file, "--name", m.name, "--initial-cluster", cluster,
                    "--initial-cluster-token", "restored-cluster", "--initial-advertise-peer-urls", m.peerURL,
                    "--data-dir", m.dataDir, "--bump-revision", "\(bump)", "--mark-compacted",
                ])
                #expect(r.status == 0, "\(r.stderr)")
                m.initialCluster = cluster
                m.extraArgs = ["--initial-cluster-token", "restored-cluster"]
            }
            for m in members { try await m.start() }
            try await E2E.waitUntil("the restored cluster has a leader", limit: .seconds(20)) {
                try await members[0].ctl("get", "k/0").status == 0
            }
            for m in members {
                #expect(try await Self.kvs(m, prefix: "k/") == saved, "\(m.name)")
            }
            #expect(try await Self.clusterID(members[0]) != oldCluster)
            let list = try await members[0].ctl("member", "list")
            #expect(list.lines.count == 3 && members.allSatisfy { m in list.stdout.contains(m.name) }, "\(list.stdout)")
            let ttl = try await members[1].ctl("lease", "timetolive", leaseID, "--keys")
            #expect(ttl.status == 0 && ttl.stdout.contains("k/leased"), "\(ttl.stdout) \(ttl.stderr)")
            // Revisions continue above the snapshot's plus the bump; older ones are compacted.
            let put = try await members[2].ctl("put", "new", "value", "-w", "json")
            let header = try #require((try JSONSerialization.jsonObject(with: Data(put.stdout.utf8)) as? [String: Any])?["header"] as? [String: Any])
            let revision = try #require(header["revision"] as? NSNumber).int64Value
            #expect(revision > snapshotRevision + bump)
            let old = try await members[0].ctl("get", "k/0", "--rev=\(snapshotRevision)")
            #expect(old.status != 0 && old.stderr.contains("compacted"), "\(old.stderr)")
        } catch {
            for m in members { Issue.record("\(m.name) log tail: \((m.child?.stderr ?? "").suffix(2000))") }
            for m in members { await m.cleanUp() }
            throw error
        }
        for m in members { await m.cleanUp() }
    }
}
