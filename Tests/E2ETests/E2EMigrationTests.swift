import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The rolling migration of docs/MIGRATION.md, with the real etcd 3.4 and etcdctl: a 3-member
/// etcd cluster → swetcd (snapshot, `swetcdutl snapshot restore --bump-revision
/// --mark-compacted` on each member with the same layout, start on the same ports) → etcd
/// again (snapshot, `swetcdutl migrate --bump-revision --mark-compacted`, `etcdctl snapshot
/// restore`, start). A watcher connected during each switch sees the old cluster's events,
/// is cancelled, and resuming from its last revision on the new cluster gets a compaction
/// error: never an event at a revision the old cluster already used, nor a silent gap.
@Suite("E2E rolling migration etcd → swetcd → etcd", .serialized,
       .enabled(if: E2E.available && RealEtcd.path != nil, "swetcd, etcdctl or etcd not found"))
struct E2EMigrationTests {
    /// Every `mod_revision` of the events in a `watch -w json` output, in order.
    static func eventRevisions(_ output: String) -> [Int64] {
        var out: [Int64] = []
        var rest = Substring(output)
        while let r = rest.range(of: "\"mod_revision\":") {
            let digits = rest[r.upperBound...].prefix { $0.isNumber }
            if let n = Int64(digits) { out.append(n) }
            rest = rest[r.upperBound...]
        }
        return out
    }

    static func revision(_ endpoint: String) async throws -> Int64 {
        try await E2EEtcdInteropTests.keyspace(endpoint).revision
    }

    static func clusterID(_ endpoint: String) async throws -> String {
        let out = try await etcdctl(endpoint, ["member", "list", "-w", "json"])
        #expect(out.status == 0, "\(out)")
        guard let r = out.stdout.range(of: "\"cluster_id\":") else { return "" }
        return String(out.stdout[r.upperBound...].prefix { $0.isNumber })
    }

    /// A watcher connected to the old cluster during a switch: it saw exactly the old
    /// cluster's revisions `from...through`, then was cancelled (etcdctl watches require a
    /// leader, so "no leader" once the old cluster loses quorum, or "compacted" if it
    /// reconnected to the new one). Resuming from the last revision it saw, as a client does,
    /// on the new cluster gets the compaction error, no event.
    static func expectResync(_ w: Child, from: Int64, through: Int64, endpoints: String, _ what: String) async throws {
        try await E2E.waitUntil("\(what): the watcher is cancelled", limit: .seconds(60)) { w.exitStatus != nil }
        #expect(eventRevisions(w.stdout) == Array(from...through), "\(what): \(eventRevisions(w.stdout))")
        let text = w.stdout + w.stderr
        #expect(text.contains("required revision has been compacted") || text.contains("no leader"), "\(what): \(text.suffix(500))")
        let resumed = try await etcdctl(endpoints, ["watch", "--prefix", "/registry/", "--rev=\(through + 1)", "-w", "json"], limit: 15)
        #expect(resumed.stderr.contains("required revision has been compacted"), "\(what): \(resumed)")
        #expect(eventRevisions(resumed.stdout).isEmpty, "\(what): \(resumed.stdout)")
    }

    @Test func threeMemberMigrationUnderWatch() async throws {
        let dir = try E2E.tempDir("migration")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let util = try E2EDefragSnapshotTests.swetcdutl()
        let ctl = try #require(E2E.etcdctlPath)
        let token = "migrating"
        let bump: Int64 = 10_000
        // One layout (names, ports, token) for all three clusters: the member and cluster IDs
        // stay the same and clients keep their endpoints.
        var swetcds: [Member] = []
        for i in 1...3 { swetcds.append(try Member(name: "m\(i)")) }
        let cluster = swetcds.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        let endpoints = swetcds.map(\.endpoint).joined(separator: ",")
        func etcdCluster(_ tag: String) throws -> [RealEtcd] {
            try swetcds.map { m in
                let e = try RealEtcd(name: m.name, dataDir: dir + "/\(tag)-\(m.name)", clientPort: m.clientPort, peerPort: m.peerPort)
                e.initialCluster = cluster
                e.token = token
                return e
            }
        }
        let etcds = try etcdCluster("etcd1")
        let etcdsBack = try etcdCluster("etcd2")
        var watchers: [Child] = []
        defer { for w in watchers { w.signal(SIGTERM) } }
        func logs() -> String {
            (etcds + etcdsBack).map { "\($0.name) etcd: \(($0.child?.stderr ?? "").suffix(1500))" }.joined(separator: "\n")
                + swetcds.map { "\($0.name) swetcd: \($0.stderrText.suffix(1500))" }.joined(separator: "\n")
        }
        do {
            // 1. etcd 3.4, three members, with keys, a lease, and a watcher on all endpoints.
            for e in etcds { try e.launch() }
            for e in etcds { try await e.waitHealthy() }
            let etcdCluster = try await Self.clusterID(etcds[0].endpoint)
            for i in 0..<30 { #expect(try await etcdctl(endpoints, ["put", "/registry/pods/p\(i)", "v\(i)"]).status == 0) }
            let grant = try await etcdctl(endpoints, ["lease", "grant", "3600"])
            let lease = String(try #require(grant.stdout.split(separator: " ").dropFirst().first))
            #expect(try await etcdctl(endpoints, ["put", "--lease=\(lease)", "/registry/events/e1", "ev"]).status == 0)
            let watchFrom = try await Self.revision(endpoints) + 1
            let w1 = try etcdctlProcess(endpoints, ["watch", "--prefix", "/registry/", "--rev=\(watchFrom)", "-w", "json"], limit: 240)
            try w1.start()
            watchers.append(w1)
            for i in 0..<10 { #expect(try await etcdctl(endpoints, ["put", "/registry/pods/live\(i)", "x"]).status == 0) }
            let r1 = try await Self.revision(endpoints)
            try await E2E.waitUntil("the watcher saw etcd's writes") { Self.eventRevisions(w1.stdout).last == r1 }
            let file1 = dir + "/etcd.db"
            #expect(try await etcds[0].ctl("snapshot", "save", file1).status == 0)
            let before = try await E2EEtcdInteropTests.keyspace(etcds[0].endpoint)
            for e in etcds { await e.stop() }

            // 2. swetcd: each member restored with the same layout, revision bumped, compacted.
            for m in swetcds {
                let r = try await E2EDefragSnapshotTests.run(util, [
                    "snapshot", "restore", file1, "--name", m.name, "--initial-cluster", cluster,
                    "--initial-cluster-token", token, "--initial-advertise-peer-urls", m.peerURL,
                    "--data-dir", m.dataDir + "/data", "--bump-revision", "\(bump)", "--mark-compacted",
                ])
                #expect(r.status == 0, "\(r)")
                m.dataDir += "/data"
                m.initialCluster = cluster
                m.extraArgs = ["--initial-cluster-token", token]
            }
            for m in swetcds { try await m.start() }
            try await E2E.waitUntil("swetcd has a leader", limit: .seconds(20)) {
                try await etcdctl(endpoints, ["put", "/registry/pods/first", "swetcd"]).status == 0
            }
            // Every member knows it (a linearizable read needs the leader): a watch that
            // requires a leader, as etcdctl's do, is otherwise cancelled with "no leader" by a
            // member that has not heard from it yet, whichever endpoint etcdctl picks.
            for m in swetcds {
                try await E2E.waitUntil("\(m.name) knows the leader", limit: .seconds(20)) {
                    try await etcdctl(m.endpoint, ["get", "/registry/pods/first"]).status == 0
                }
            }
            // The watcher resumed at r1+1 on swetcd and was told to resync; nothing was reused.
            try await Self.expectResync(w1, from: watchFrom, through: r1, endpoints: endpoints, "etcd → swetcd")
            #expect(try await Self.clusterID(swetcds[0].endpoint) == etcdCluster)
            let onSwetcd = try await E2EEtcdInteropTests.keyspace(swetcds[1].endpoint)
            #expect(onSwetcd.revision == r1 + bump + 1)
            #expect(onSwetcd.kvs.filter { ($0["key"] as? String) != Data("/registry/pods/first".utf8).base64EncodedString() } == before.kvs)
            #expect(try await E2EEtcdInteropTests.leaseKeys(swetcds[2].endpoint, lease) == ["/registry/events/e1"])
            // A new watch from an old revision is refused as compacted; one from the new ones sees
            // the writes in order.
            let old = try await etcdctl(swetcds[0].endpoint, ["watch", "--prefix", "/registry/", "--rev=\(r1 + 1)"], limit: 10)
            #expect(old.stderr.contains("required revision has been compacted") || old.stdout.contains("compacted"), "\(old)")
            let w2From = onSwetcd.revision + 1
            let w2 = try etcdctlProcess(endpoints, ["watch", "--prefix", "/registry/", "--rev=\(w2From)", "-w", "json"], limit: 240)
            try w2.start()
            watchers.append(w2)
            for i in 0..<10 { #expect(try await etcdctl(endpoints, ["put", "/registry/pods/on-swetcd\(i)", "y"]).status == 0) }
            let r2 = try await Self.revision(endpoints)
            #expect(r2 == w2From + 9)
            try await E2E.waitUntil("the watcher saw swetcd's writes") { Self.eventRevisions(w2.stdout).last == r2 }

            // 3. Back to etcd: swetcd's snapshot (etcd's format), bumped and compacted by
            // swetcdutl migrate, restored by etcdctl 3.4 on each member.
            let file2 = dir + "/swetcd.db"
            #expect(try await swetcds[0].ctl("snapshot", "save", file2).status == 0)
            let middle = try await E2EEtcdInteropTests.keyspace(swetcds[0].endpoint)
            let file3 = dir + "/bumped.db"
            let refused = try await E2EDefragSnapshotTests.run(util, ["migrate", file2, "--output", file3, "--bump-revision", "5"])
            #expect(refused.status != 0 && refused.stderr.contains("--bump-revision needs --mark-compacted"), "\(refused)")
            #expect(!FileManager.default.fileExists(atPath: file3))
            let migrate = try await E2EDefragSnapshotTests.run(util, ["migrate", file2, "--output", file3,
                                                                      "--bump-revision", "\(bump)", "--mark-compacted"])
            #expect(migrate.status == 0, "\(migrate)")
            #expect(migrate.stdout.contains("revision \(r2) -> \(r2 + bump)"), "\(migrate)")
            for e in etcdsBack {
                let r = try await E2EDefragSnapshotTests.run(ctl, [
                    "snapshot", "restore", file3, "--name", e.name, "--initial-cluster", cluster,
                    "--initial-cluster-token", token, "--initial-advertise-peer-urls", e.peerURL, "--data-dir", e.dataDir,
                ])
                #expect(r.status == 0, "\(r)")
            }
            for m in swetcds { #expect(try await m.stop() == 0) }
            for e in etcdsBack { try e.launch() }
            for e in etcdsBack { try await e.waitHealthy() }
            try await Self.expectResync(w2, from: w2From, through: r2, endpoints: endpoints, "swetcd → etcd")
            let back = try await E2EEtcdInteropTests.keyspace(etcdsBack[2].endpoint)
            #expect(back.revision == r2 + bump)
            #expect(back.kvs == middle.kvs)
            #expect(try await E2EEtcdInteropTests.leaseKeys(etcdsBack[0].endpoint, lease) == ["/registry/events/e1"])
            let put = try await etcdctl(endpoints, ["put", "/registry/pods/back", "z", "-w", "json"])
            #expect(put.stdout.contains("\"revision\":\(r2 + bump + 1)"), "\(put)")
            let oldAgain = try await etcdctl(etcdsBack[1].endpoint, ["watch", "--prefix", "/registry/", "--rev=\(r2)"], limit: 10)
            #expect(oldAgain.stderr.contains("required revision has been compacted") || oldAgain.stdout.contains("compacted"), "\(oldAgain)")
        } catch {
            Issue.record("logs:\n\(logs())")
            for e in etcds + etcdsBack { await e.cleanUp() }
            for m in swetcds { await m.cleanUp() }
            throw error
        }
        for e in etcds + etcdsBack { await e.cleanUp() }
        for m in swetcds { await m.cleanUp() }
    }

    /// Keys of the kube-apiserver-shaped round trip (SWETCD_E2E_KUBE_KEYS, default 10,000; the
    /// 100,000-key run and its figures are in docs/BENCHMARKS.md).
    static let kubeKeys = Int(ProcessInfo.processInfo.environment["SWETCD_E2E_KUBE_KEYS"] ?? "") ?? 10_000

    static func hashKV(_ endpoint: String, rev: Int64) async throws -> String {
        let out = try await etcdctl(endpoint, ["endpoint", "hashkv", "--rev=\(rev)", "-w", "json"])
        #expect(out.status == 0, "\(out)")
        guard let r = out.stdout.range(of: "\"hash\":") else { return "" }
        return String(out.stdout[r.upperBound...].prefix { $0.isNumber })
    }

    static func count(_ endpoint: String) async throws -> String {
        // etcdctl 3.4 has no --count-only; the response's count is the total whatever the limit.
        let out = try await etcdctl(endpoint, ["get", "/registry/", "--prefix", "--keys-only", "--limit=1", "-w", "json"])
        #expect(out.status == 0, "\(out)")
        guard let r = out.stdout.range(of: "\"count\":") else { return "" }
        return String(out.stdout[r.upperBound...].prefix { $0.isNumber })
    }

    /// A kube-apiserver-shaped keyspace (`swetcd-bench kube-fill`: /registry keys over eight
    /// resources, binary values, events on ten leases) goes etcd → swetcd → etcd by
    /// snapshots: the second etcd's HashKV at the revision equals the first's (every key,
    /// value, revision and version came back), swetcd serves the same count, leases and
    /// samples in between. Timings are printed (docs/BENCHMARKS.md).
    @Test func kubeKeyspaceRoundTrip() async throws {
        let n = Self.kubeKeys
        let dir = try E2E.tempDir("kube-round-trip")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let util = try E2EDefragSnapshotTests.swetcdutl()
        let ctl = try #require(E2E.etcdctlPath)
        let clock = ContinuousClock()
        var timings: [(String, Duration)] = []
        func timed<T>(_ what: String, _ body: () async throws -> T) async rethrows -> T {
            let start = clock.now
            let r = try await body()
            timings.append((what, clock.now - start))
            return r
        }
        let a = try RealEtcd(name: "a", dataDir: dir + "/a")
        let m = try Member(name: "s")
        let b = try RealEtcd(name: "b", dataDir: dir + "/b")
        do {
            try await a.start()
            // In runs of 10,000 keys (each run of the bench is bounded to 120 s).
            try await timed("fill etcd") {
                for start in stride(from: 0, to: n, by: 10_000) {
                    let fill = try await E2E.runBench(["kube-fill", "--endpoints", a.endpoint, "--conns", "4", "--clients", "64",
                                                       "--start", "\(start)", "--total", "\(min(10_000, n - start))"])
                    #expect(fill.status == 0, "\(fill)")
                }
            }
            let revision = try await Self.revision(a.endpoint)
            let hash = try await Self.hashKV(a.endpoint, rev: revision)
            let count = try await Self.count(a.endpoint)
            #expect(count == "\(n)")
            let leases = try await a.ctl("lease", "list")
            let lease = try #require(leases.lines.dropFirst().first)
            let leaseKeyCount = try await E2EEtcdInteropTests.leaseKeys(a.endpoint, lease).count
            #expect(leaseKeyCount > 0)
            let sampleArgs = ["get", "/registry/pods/ns-7/", "--prefix", "-w", "json"]
            let sample = try await etcdctl(a.endpoint, sampleArgs).stdout.replacingOccurrences(of: "\"header\":{[^}]*}", with: "", options: .regularExpression)
            let fileA = dir + "/a.db"
            #expect(try await timed("etcdctl snapshot save (etcd)") { try await a.ctl("snapshot", "save", fileA) }.status == 0)
            await a.stop()

            // etcd → swetcd
            let r1 = try await timed("swetcdutl snapshot restore") {
                try await E2EDefragSnapshotTests.run(util, [
                    "snapshot", "restore", fileA, "--name", m.name, "--initial-cluster", "\(m.name)=\(m.peerURL)",
                    "--initial-advertise-peer-urls", m.peerURL, "--data-dir", m.dataDir + "/data",
                ])
            }
            #expect(r1.status == 0, "\(r1)")
            m.dataDir += "/data"
            try await timed("swetcd start") {
                try await m.start()
                try await E2E.waitUntil("swetcd serves") { try await m.ctl("get", "x").status == 0 }
            }
            #expect(try await Self.revision(m.endpoint) == revision)
            #expect(try await Self.count(m.endpoint) == count)
            #expect(try await E2EEtcdInteropTests.leaseKeys(m.endpoint, lease).count == leaseKeyCount)
            #expect(try await m.ctl("lease", "list").lines.count == leases.lines.count)
            let onSwetcd = try await m.ctl(sampleArgs).stdout.replacingOccurrences(of: "\"header\":{[^}]*}", with: "", options: .regularExpression)
            #expect(onSwetcd == sample)
            let fileS = dir + "/s.db"
            #expect(try await timed("etcdctl snapshot save (swetcd)") { try await m.ctl("snapshot", "save", fileS) }.status == 0)
            await m.cleanUp()

            // swetcd → etcd
            let r2 = try await timed("etcdctl snapshot restore") {
                try await E2EDefragSnapshotTests.run(ctl, [
                    "snapshot", "restore", fileS, "--name", b.name, "--initial-cluster", "\(b.name)=\(b.peerURL)",
                    "--initial-advertise-peer-urls", b.peerURL, "--data-dir", b.dataDir,
                ])
            }
            #expect(r2.status == 0, "\(r2)")
            try await b.start()
            #expect(try await Self.revision(b.endpoint) == revision)
            #expect(try await Self.hashKV(b.endpoint, rev: revision) == hash)
            #expect(try await E2EEtcdInteropTests.leaseKeys(b.endpoint, lease).count == leaseKeyCount)
            let size = (try? FileManager.default.attributesOfItem(atPath: fileA)[.size] as? Int) ?? 0
            print("kube keyspace round trip: \(n) keys, etcd snapshot \(size) bytes; " + timings.map { "\($0.0): \($0.1)" }.joined(separator: "; "))
        } catch {
            Issue.record("logs: a \((a.child?.stderr ?? "").suffix(1500)) s \(m.stderrText.suffix(1500)) b \((b.child?.stderr ?? "").suffix(1500))")
            await a.cleanUp(); await m.cleanUp(); await b.cleanUp()
            throw error
        }
        await a.cleanUp(); await m.cleanUp(); await b.cleanUp()
    }
}
