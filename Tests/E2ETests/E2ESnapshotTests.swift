import Foundation
import Testing

/// A killed leader, far behind the new leader's compacted log when it restarts, catches up
/// through a snapshot, and so does a member joining afterwards; lease calls
/// on a follower reach the leader; every member lists every member's client URLs.
@Suite("E2E snapshot install", .serialized, .enabled(if: E2E.available && E2E.benchPath != nil, "swetcd, swetcd-bench or etcdctl not found"))
struct E2ESnapshotTests {
    /// Writes through `swetcd-bench` (one etcdctl process per write would be too slow).
    static let writes = Int(ProcessInfo.processInfo.environment["SWETCD_E2E_SNAPSHOT_WRITES"] ?? "") ?? 6000

    @Test func killedLeaderAndJoinerCatchUpThroughSnapshots() async throws {
        try await Member.withCluster(3, extraArgs: ["--snapshot-count", "100"]) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "warm", "up").status == 0
            }
            // Member attributes: every member lists every member's name and client URL.
            for m in ms {
                try await E2E.waitUntil("member list on \(m.name) shows every client URL") {
                    let out = try await m.ctl("member", "list").stdout
                    return ms.allSatisfy { o in out.contains(", \(o.name), \(o.peerURL), http://\(o.endpoint),") }
                }
            }
            let lead = try await Member.agreedLeader(of: ms)
            let followers = ms.filter { $0 !== lead }

            // Leases through a follower: keep-alive and time-to-live are answered by the leader.
            let grant = try await followers[0].ctl("lease", "grant", "60")
            let leaseID = try #require(grant.stdout.split(separator: " ").dropFirst().first.map(String.init), "\(grant.stderr)")
            let kept = try await followers[0].ctl("lease", "keep-alive", "--once", leaseID)
            #expect(kept.stdout.contains("lease \(leaseID) keepalived with TTL(60)"), "\(kept)")
            let ttl = try await followers[1].ctl("lease", "timetolive", leaseID)
            #expect(ttl.stdout.contains("granted with TTL(60s), remaining("), "\(ttl)")
            #expect(!ttl.stdout.contains("remaining(-1s)") && !ttl.stdout.contains("already expired"), "\(ttl)")
            let unknown = try await followers[1].ctl("lease", "timetolive", "1234abcd")
            #expect(unknown.stdout.contains("already expired"), "\(unknown)")

            // The leader is killed; the other two elect a new one and write far beyond
            // --snapshot-count and the 5000 entries a leader keeps for slow followers, so the old
            // leader can only come back through a snapshot.
            let behind = lead
            try await behind.crash()
            let newLead = try await Member.agreedLeader(of: followers)
            let bench = try await E2E.runBench([
                "put", "--endpoints", followers.map(\.endpoint).joined(separator: ","), "--clients", "16", "--conns", "2",
                "--total", "\(Self.writes)", "--key-space-size", "\(Self.writes)", "--sequential-keys",
                "--key-prefix", "snap/", "--key-size", "12",
            ])
            #expect(bench.status == 0, "\(bench.stdout)\(bench.stderr)")

            try await behind.start()
            // A watch on the old leader, started before it caught up (or while): as soon as it
            // knows a leader (etcdctl's watch requires one).
            // (A logged leader "0" is a leader lost, not one known.)
            try await E2E.waitUntil("the old leader knows the new leader") {
                behind.lastKnownLeader.map { $0 != "0" } ?? false
            }
            let early = try behind.watch(["--prefix", "after/"], limit: 90)
            try await E2E.waitUntil("the follower installs a snapshot", limit: .seconds(60)) {
                (behind.child?.stderr ?? "").contains("\"installed snapshot from the leader\"")
            }
            // Every key readable locally (serializable) on the follower, and the same keyspace hash
            // on every member.
            let written = try await count(on: newLead, serializable: false)
            #expect(written >= Self.writes * 9 / 10, "\(written) keys written")
            var seen = -1
            try await E2E.waitUntil("all \(written) keys on the follower (saw \(seen))", limit: .seconds(30)) {
                seen = try await count(on: behind, serializable: true)
                return seen == written
            }
            try await E2E.waitUntil("identical HashKV on every member", limit: .seconds(30)) {
                var hashes: Set<String> = []
                for m in ms {
                    let out = try await m.ctl("endpoint", "hashkv", "-w", "json").stdout
                    guard let r = out.range(of: "\"hash\":") else { return false }
                    hashes.insert(String(out[r.upperBound...].prefix { $0.isNumber }))
                }
                return hashes.count == 1
            }
            // Watches on the follower see new writes: the early one and a new one.
            let late = try behind.watch(["--prefix", "after/"], limit: 60)
            do {
                try await E2E.waitUntil("watches on the follower see a new write", limit: .seconds(20)) {
                    _ = try await newLead.ctl("put", "after/1", "x")
                    return early.stdout.contains("PUT\nafter/1\nx") && late.stdout.contains("PUT\nafter/1\nx")
                }
            } catch {
                Issue.record("early watch: \(early.stdout) \(early.stderr); late watch: \(late.stdout) \(late.stderr)")
                throw error
            }
            early.signal(SIGTERM)
            late.signal(SIGTERM)
            // The follower's status shows it applied as far as the leader had.
            let leaderApplied = try await newLead.appliedIndex()
            #expect(leaderApplied > UInt64(Self.writes))
            try await E2E.waitUntil("the follower applied as far as the leader") {
                try await behind.appliedIndex() >= leaderApplied
            }
            // Its member list (now from the leader's backend) still has every client URL.
            let list = try await behind.ctl("member", "list").stdout
            #expect(ms.allSatisfy { list.contains("http://\($0.endpoint)") }, "\(list)")

            // A new member joining now (learner, --initial-cluster-state existing) starts with an
            // empty log the leader no longer has: it too comes in through a snapshot.
            let joiner = try Member(name: "m4", extraArgs: ["--initial-cluster-state", "existing", "--snapshot-count", "100"])
            do {
                _ = try await M.add(joiner, via: newLead, learner: true)
                joiner.initialCluster = (ms + [joiner]).map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
                try await joiner.start()
                try await E2E.waitUntil("the joiner installs a snapshot", limit: .seconds(60)) {
                    (joiner.child?.stderr ?? "").contains("\"installed snapshot from the leader\"")
                }
                let all = try await count(on: newLead, serializable: false)
                try await E2E.waitUntil("all \(all) keys on the joiner", limit: .seconds(30)) {
                    try await count(on: joiner, serializable: true) == all
                }
            } catch {
                Issue.record("joiner log tail: \((joiner.child?.stderr ?? "").suffix(3000))")
                await joiner.cleanUp()
                throw error
            }
            await joiner.cleanUp()
        }
    }

    /// A watch opened on a follower before it falls behind (stopped with SIGSTOP while the
    /// others write past the leader's retained log) stays open across the snapshot install
    /// that brings it back, and delivers every event of its range exactly once, in order:
    /// those applied before, those that came in the snapshot, and those after. The keyspace
    /// restores in place and keeps its watchers, so the same gRPC stream goes on (etcdctl's
    /// keepalive is stretched so the client does not drop the connection of the stopped member
    /// and resume on a new one).
    @Test func aFollowerWatchSpansTheSnapshotInstallWithoutGapOrRepeat() async throws {
        try await Member.withCluster(3, extraArgs: ["--snapshot-count", "100"]) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "warm", "up").status == 0
            }
            let lead = try await Member.agreedLeader(of: ms)
            let follower = try #require(ms.first { $0 !== lead })
            let others = ms.filter { $0 !== follower }
            // From the next revision, so no write below is missed however late the stream opens.
            let header = try await lead.ctl("get", "warm", "-w", "json").stdout
            let revision = try #require(header.range(of: "\"revision\":").flatMap { r in
                Int(header[r.upperBound...].prefix { $0.isNumber })
            }, "\(header)")
            let watch = try follower.watch(["--keepalive-time=1000s", "--keepalive-timeout=1000s", "--prefix", "w/",
                                            "--rev=\(revision + 1)"], limit: 240)
            defer { watch.signal(SIGTERM) }
            var written: [String] = []
            func put(_ n: Int) async throws {
                let key = "w/\(String(format: "%03d", n))"
                let r = try await lead.ctl("put", key, "v\(n)")
                #expect(r.status == 0, "\(r)")
                written.append(key)
            }
            try await put(0)
            try await E2E.waitUntil("the watch on the follower sees a write", limit: .seconds(20)) {
                if let status = watch.exitStatus { throw E2EError("etcdctl watch exited with \(status): \(watch.stderr)") }
                return watch.stdout.contains("w/000")
            }
            for n in 1...10 { try await put(n) }
            try await E2E.waitUntil("the watch sees w/010") { watch.stdout.contains("w/010") }
            #expect(!follower.stderrText.contains("\"installed snapshot from the leader\""))

            // The follower stops; the others go far past what the leader keeps for it.
            let child = try #require(follower.child)
            child.signal(SIGSTOP)
            var resumed = false
            defer { if !resumed { child.signal(SIGCONT) } }
            for n in 11...20 { try await put(n) }
            let bench = try await E2E.runBench([
                "put", "--endpoints", others.map(\.endpoint).joined(separator: ","), "--clients", "16", "--conns", "2",
                "--total", "\(Self.writes)", "--key-space-size", "\(Self.writes)", "--sequential-keys",
                "--key-prefix", "snap/", "--key-size", "12",
            ])
            #expect(bench.status == 0, "\(bench.stdout)\(bench.stderr)")
            for n in 21...30 { try await put(n) }
            child.signal(SIGCONT)
            resumed = true
            try await E2E.waitUntil("the follower installs a snapshot", limit: .seconds(90)) {
                follower.stderrText.contains("\"installed snapshot from the leader\"")
            }
            for n in 31...40 { try await put(n) }
            do {
                try await E2E.waitUntil("the watch sees w/040", limit: .seconds(30)) { watch.stdout.contains("w/040") }
            } catch {
                Issue.record("watch output: \(watch.stdout) \(watch.stderr)")
                throw error
            }
            #expect(watch.exitStatus == nil, "etcdctl watch ended: \(watch.stderr)")
            // Every key once, in order: etcdctl prints each event as PUT, key, value.
            let lines = watch.stdout.split(separator: "\n").map(String.init)
            var seen: [String] = []
            var i = 0
            while i + 2 < lines.count {
                #expect(lines[i] == "PUT", "line \(i): \(lines[i])")
                seen.append(lines[i + 1])
                i += 3
            }
            #expect(i == lines.count, "a partial event at the end: \(lines.suffix(3))")
            #expect(seen == written, "watched \(seen.count) events, wrote \(written.count)")
        }
    }

    /// The number of `snap/` keys on `member` (-1 if unreadable).
    private func count(on member: Member, serializable: Bool) async throws -> Int {
        let out = try await member.ctl(["get", "snap/", "--prefix", "--keys-only", "--limit=1", "-w", "json",
                                        "--consistency=\(serializable ? "s" : "l")"]).stdout
        guard let r = out.range(of: "\"count\":") else {
            Issue.record("no count in: \(out)")
            return -1
        }
        return Int(out[r.upperBound...].prefix { $0.isNumber }) ?? -1
    }
}

extension E2E {
    /// `swetcd-bench`, built beside `swetcd`.
    static let benchPath: String? = {
        guard let swetcd = swetcdPath else { return nil }
        let path = URL(fileURLWithPath: swetcd).deletingLastPathComponent().appendingPathComponent("swetcd-bench").path
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }()
}
