import Foundation
import Synchronization
import Testing

/// Online membership changes on real `swetcd` processes driven by the real `etcdctl`.
@Suite("E2E membership", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2EMembershipTests {
    @Test func learnerJoinsIsPromotedUpdatedAndRemoved() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k0", "v0").status == 0
            }
            // Add m4 as a learner, then start it with --initial-cluster-state existing.
            let m4 = try Member(name: "m4", extraArgs: ["--initial-cluster-state", "existing"])
            do {
                let id = try await M.add(m4, via: ms[0], learner: true)
                m4.initialCluster = (ms + [m4]).map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
                try await m4.start()
                #expect(m4.memberID == id, "the joiner takes the ID MemberAdd chose")
                try await E2E.waitUntil("the learner has replicated k0", limit: .seconds(30)) {
                    try await m4.ctl("get", "k0", "--consistency=s").lines == ["k0", "v0"]
                }
                // The learner's attribute publish reaches the leader: every member lists its
                // name and client URL, still as a learner.
                for m in ms {
                    try await E2E.waitUntil("m4's client URL listed on \(m.name)", limit: .seconds(20)) {
                        try await m.ctl("member", "list").stdout
                            .contains("\(id), started, m4, \(m4.peerURL), http://\(m4.endpoint), true")
                    }
                }
                // A learner refuses writes and linearizable reads with etcd's text.
                let put = try await m4.ctl("put", "k1", "v1")
                #expect(put.status != 0)
                #expect(put.stderr.contains("etcdserver: rpc not supported for learner"), "\(put.stderr)")
                #expect(try await m4.ctl("member", "list").lines.count == 4)
                // A voter is refused promotion.
                let voter = try #require(ms[1].memberID)
                #expect(try await ms[0].ctl("member", "promote", voter).stderr
                    .contains("etcdserver: can only promote a learner member"))
                // Promote through every member in turn (followers forward to the leader).
                try await E2E.waitUntil("m4 promoted", limit: .seconds(30)) {
                    try await ms[1].ctl("member", "promote", id).status == 0
                }
                try await E2E.waitUntil("m4 accepts writes", limit: .seconds(20)) {
                    try await m4.ctl("put", "k1", "v1").status == 0
                }
                #expect(try await ms[2].ctl("get", "k1").lines == ["k1", "v1"])
                let listed = try await ms[0].ctl("member", "list").lines
                #expect(listed.filter { $0.hasSuffix(", false") }.count == 4, "\(listed)")

                // Update m4's peer URL (recorded everywhere), then set it back.
                let other = "http://127.0.0.1:\(try E2E.freePort())"
                #expect(try await ms[2].ctl("member", "update", id, "--peer-urls=\(other)").status == 0)
                try await E2E.waitUntil("the new URL listed on m1") {
                    try await ms[0].ctl("member", "list").stdout.contains(other)
                }
                #expect(try await ms[2].ctl("member", "update", id, "--peer-urls=\(m4.peerURL)").status == 0)
                let dup = try await ms[0].ctl("member", "add", "x", "--peer-urls=\(ms[1].peerURL)")
                #expect(dup.stderr.contains("etcdserver: Peer URLs already exists"), "\(dup.stderr)")
                // etcdctl checks URLs itself; the server's check answers through the gateway.
                let curl = try Child("/usr/bin/curl", ["-s", "-m", "10", "-X", "POST", "-d", #"{"peerURLs":["http://h"]}"#,
                                                       "http://\(ms[0].endpoint)/v3/cluster/member/add"])
                try curl.start()
                _ = try await curl.waitExit()
                #expect(curl.stdout.contains("etcdserver: given member URLs are invalid"), "\(curl.stdout)")

                // Remove m4 (a follower): it stops by itself and refuses to come back.
                try await E2E.waitUntil("m4 removed", limit: .seconds(20)) {
                    try await ms[0].ctl("member", "remove", id).status == 0
                }
                // Exit status 3 ("removed": the unit's RestartPreventExitStatus), at once and
                // again when started once more.
                let status = try await try #require(m4.child).waitExit(limit: .seconds(20))
                #expect(status == 3)
                #expect(m4.child?.stderr.contains("the member has been permanently removed from the cluster") == true)
                await #expect(throws: E2EError.self) { try await m4.start() }
                #expect(m4.exitStatus == 3)
                #expect(try await ms[1].ctl("member", "list").lines.count == 3)
            } catch {
                Issue.record("m4 log tail: \((m4.child?.stderr ?? "").suffix(3000))")
                await m4.cleanUp()
                throw error
            }
            await m4.cleanUp()

            // Remove the leader through a follower: leadership moves first, writes go on.
            let leader = try await M.leader(of: ms)
            let follower = try #require(ms.first { $0 !== leader })
            let leaderID = try #require(leader.memberID)
            #expect(try await follower.ctl("member", "remove", leaderID).status == 0)
            _ = try await try #require(leader.child).waitExit(limit: .seconds(20))
            let rest = ms.filter { $0 !== leader }
            try await E2E.waitUntil("writes after removing the leader", limit: .seconds(20)) {
                try await rest[0].ctl("put", "k2", "v2").status == 0
            }
            #expect(try await rest[1].ctl("member", "list").lines.count == 2)
        }
    }

    /// --strict-reconfig-check (the default): with one of three members down, adding a voter or
    /// removing a started one would leave too few started members for a quorum: refused.
    @Test func strictReconfigCheckRefusesQuorumLoss() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k", "v").status == 0
            }
            let downID = try #require(ms[2].memberID)
            try await ms[2].crash()
            // m1's transport must have seen m3 go before the checks mean anything.
            try await E2E.waitUntil("m1 lost its stream to m3", limit: .seconds(20)) {
                (ms[0].child?.stderr ?? "").split(separator: "\n").contains {
                    $0.contains("\"lost the stream to peer\"") && $0.contains("\"remote-peer-id\":\"\(downID)\"")
                }
            }
            let add = try await ms[0].ctl("member", "add", "m4", "--peer-urls=http://127.0.0.1:\(try E2E.freePort())")
            #expect(add.stderr.contains("etcdserver: re-configuration failed due to not enough started members"), "\(add.stderr)")
            let remove = try await ms[0].ctl("member", "remove", try #require(ms[1].memberID))
            #expect(remove.stderr.contains("etcdserver: re-configuration failed due to not enough started members"), "\(remove.stderr)")
            #expect(try await ms[0].ctl("member", "list").lines.count == 3)
            // A learner does not count: it may be added.
            let learner = try await ms[0].ctl("member", "add", "l", "--learner", "--peer-urls=http://127.0.0.1:\(try E2E.freePort())")
            #expect(learner.status == 0, "\(learner.stderr)")
        }
    }

    /// --auto-promote-learners: a learner added to a one-member cluster becomes a voter by
    /// itself once it has caught up, and publishes its name.
    @Test func autoPromoteLearner() async throws {
        try await Member.with(extraArgs: ["--auto-promote-learners"]) { m1 in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await m1.ctl("put", "k", "v").status == 0
            }
            let m2 = try Member(name: "m2", extraArgs: ["--initial-cluster-state", "existing"])
            do {
                _ = try await M.add(m2, via: m1, learner: true)
                m2.initialCluster = "\(m1.name)=\(m1.peerURL),m2=\(m2.peerURL)"
                try await m2.start()
                try await E2E.waitUntil("m2 promoted and named", limit: .seconds(30)) {
                    let lines = try await m1.ctl("member", "list").lines
                    return lines.count == 2 && lines.allSatisfy { $0.hasSuffix(", false") } && lines.contains { $0.contains(", m2, ") }
                }
                var last = ""
                do {
                    try await E2E.waitUntil("m2 accepts writes", limit: .seconds(40)) {
                        let r = try await m2.ctl("put", "k2", "v2")
                        last = r.stderr
                        return r.status == 0
                    }
                } catch {
                    Issue.record("last put on m2: \(last); m1 member list: \(try await m1.ctl("member", "list").stdout)")
                    throw error
                }
            } catch {
                Issue.record("m2 log tail: \((m2.child?.stderr ?? "").suffix(3000))")
                await m2.cleanUp()
                throw error
            }
            await m2.cleanUp()
        }
    }

    /// 3 → 5 (each added as a learner, started with `existing`, promoted) → 3 (the leader
    /// removed, then an original member) under a continuous write load:
    /// every acknowledged write is on the final members, and the longest interval in which no
    /// member reported a leader is measured (printed; bounded generously).
    @Test func scaleThreeToFiveAndBackUnderLoad() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "warm", "up").status == 0
            }
            let load = LoadState(ms)
            let writer = Task {
                var i = 0
                while !Task.isCancelled {
                    let targets = load.voters.withLock { $0 }
                    let m = targets[i % targets.count]
                    if let r = try? await etcdctl(m.endpoint, ["put", "load\(i)", "v\(i)"], limit: 10), r.status == 0 {
                        load.acked.withLock { $0.append("load\(i)") }
                    }
                    i += 1
                }
            }
            let monitor = Task {
                while !Task.isCancelled {
                    let endpoints = load.voters.withLock { $0.map(\.endpoint) }
                    let out = try? await etcdctl(endpoints.joined(separator: ","), ["endpoint", "status", "-w", "json"], limit: 5)
                    load.sample(hasLeader: out.map { M.anyLeader(in: $0.stdout) } ?? false)
                    try? await Task.sleep(for: .milliseconds(50))
                }
            }
            var added: [Member] = []
            do {
                for name in ["m4", "m5"] {
                    let m = try Member(name: name, extraArgs: ["--initial-cluster-state", "existing"])
                    added.append(m)
                    let current = load.voters.withLock { $0 }
                    let id = try await M.add(m, via: current[0], learner: true)
                    m.initialCluster = (current + [m]).map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
                    try await m.start()
                    try await E2E.waitUntil("\(name) promoted", limit: .seconds(60)) {
                        try await current[1].ctl("member", "promote", id).status == 0
                    }
                    load.voters.withLock { $0.append(m) }
                }
                // Shrink: first the current leader, then another original member.
                let leader = try await M.leader(of: load.voters.withLock { $0 })
                let second = try #require(ms.first { m in m !== leader && !added.contains { a in a === m } })
                for old in [leader, second] {
                    let id = try #require(old.memberID)
                    load.voters.withLock { $0.removeAll { $0 === old } }
                    let via = load.voters.withLock { $0[0] }
                    try await E2E.waitUntil("\(old.name) removed", limit: .seconds(30)) {
                        try await via.ctl("member", "remove", id).status == 0
                    }
                    _ = try await try #require(old.child).waitExit(limit: .seconds(20))
                }
                // A few more writes on the final cluster, then stop the load.
                let before = load.acked.withLock { $0.count }
                try await E2E.waitUntil("writes on the final cluster", limit: .seconds(20)) {
                    load.acked.withLock { $0.count } >= before + 5
                }
                writer.cancel()
                monitor.cancel()
                _ = await writer.value
                _ = await monitor.value
                let final = load.voters.withLock { $0 }
                #expect(final.count == 3)
                #expect(try await final[0].ctl("member", "list").lines.count == 3)
                let acked = load.acked.withLock { $0 }
                #expect(acked.count >= 10, "\(acked.count) writes acknowledged")
                for m in final {
                    var missing: [String] = []
                    var lastError = ""
                    do {
                        try await E2E.waitUntil("\(m.name) has every acknowledged write", limit: .seconds(30)) {
                            let out = try await m.ctl("get", "load", "--prefix", "--keys-only")
                            lastError = out.stderr
                            missing = Array(Set(acked).subtracting(out.lines))
                            return out.status == 0 && missing.isEmpty
                        }
                    } catch {
                        Issue.record("\(m.name): missing \(missing.sorted()), last error \(lastError)")
                        throw error
                    }
                }
                let gap = load.longestGap
                print("scale 3→5→3: \(acked.count) acknowledged writes, \(load.samples) status polls (mean interval \(load.meanPollInterval.map { "\($0)" } ?? "-")), longest interval without a leader: \(gap.map { "\($0)" } ?? "none observed")")
                #expect((gap ?? .zero) < .seconds(10))
            } catch {
                writer.cancel()
                monitor.cancel()
                for m in added {
                    Issue.record("\(m.name) log tail: \((m.child?.stderr ?? "").suffix(2000))")
                    await m.cleanUp()
                }
                throw error
            }
            for m in added { await m.cleanUp() }
        }
    }

    /// /readyz on a learner: ready for what a learner serves (serializable reads, a leader, no
    /// CORRUPT alarm), so a StatefulSet rolls past it; still ready once promoted, now with the
    /// linearizable check run.
    @Test func learnerPassesReadyz() async throws {
        try await Member.withCluster(2) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k", "v").status == 0
            }
            let m3 = try Member(name: "m3", extraArgs: ["--initial-cluster-state", "existing"])
            do {
                let id = try await M.add(m3, via: ms[0], learner: true)
                m3.initialCluster = (ms + [m3]).map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
                try await m3.start()
                let readyz = "http://\(m3.endpoint)/readyz?verbose"
                try await E2E.waitUntil("the learner is ready", limit: .seconds(30)) {
                    let r = try await curl(["-w", "\n%{http_code}", readyz])
                    return r.stdout.hasSuffix("\n200") && r.stdout.contains("[+]linearizable_read skipped: learner")
                }
                // It is still a learner: writes are refused, serializable reads served.
                #expect(try await m3.ctl("put", "k1", "v1").stderr.contains("etcdserver: rpc not supported for learner"))
                try await E2E.waitUntil("the learner serves k", limit: .seconds(20)) {
                    try await m3.ctl("get", "k", "--consistency=s").lines == ["k", "v"]
                }
                try await E2E.waitUntil("m3 promoted", limit: .seconds(30)) {
                    try await ms[0].ctl("member", "promote", id).status == 0
                }
                try await E2E.waitUntil("the promoted member is ready on linearizable reads", limit: .seconds(20)) {
                    let r = try await curl(["-w", "\n%{http_code}", readyz])
                    return r.stdout.hasSuffix("\n200") && r.stdout.contains("[+]linearizable_read ok")
                }
            } catch {
                Issue.record("m3 log tail: \((m3.child?.stderr ?? "").suffix(3000))")
                await m3.cleanUp()
                throw error
            }
            await m3.cleanUp()
        }
    }

    /// A member that lost its data directory (same name and peer URL, empty directory) is
    /// refused with etcd's message, whether started as "new" (its ID from --initial-cluster) or
    /// "existing" (found by its peer URL): its empty log must not take over a started ID.
    @Test func emptyDataDirOverAStartedMemberIsRefused() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k", "v").status == 0
            }
            let lost = ms[2]
            let id = try #require(lost.memberID)
            try await E2E.waitUntil("m3's client URL published", limit: .seconds(20)) {
                try await ms[0].ctl("member", "list").stdout.contains("\(id), started, m3, \(lost.peerURL), http://")
            }
            try await lost.crash()
            try FileManager.default.removeItem(atPath: lost.dataDir)
            for state in ["new", "existing"] {
                lost.extraArgs = ["--initial-cluster-state", state]
                await #expect(throws: E2EError.self) { try await lost.start() }
                #expect(lost.exitStatus != nil && lost.exitStatus != 0)
                #expect(lost.stderrText.contains("member \(id) has already been bootstrapped"), "\(state): \(lost.stderrText.suffix(1500))")
                #expect(!FileManager.default.fileExists(atPath: "\(lost.dataDir)/member/wal"), "nothing written for \(state)")
            }
            // The cluster is untouched and still serves (once it has a leader again: the lost
            // member may have led it).
            #expect(try await ms[0].ctl("member", "list").lines.count == 3)
            var last = ""
            try await E2E.waitUntil("a write after the refusals", limit: .seconds(20)) {
                let put = try await ms[1].ctl("put", "k2", "v2")
                last = put.stderr
                if put.status != 0 { print("emptyDataDir: a put after the refusals failed (retried): \(put.stderr)") }
                return put.status == 0
            }
            #expect(try await ms[0].ctl("get", "k2", "--print-value-only").lines == ["v2"], "last error: \(last)")
        }
    }
}

/// What the scale test's writer and monitor share.
final class LoadState: Sendable {
    let acked = Mutex<[String]>([])
    /// The members writes go to (and whose status is polled).
    let voters: Mutex<[Member]>
    private let state = Mutex<(lastSeen: ContinuousClock.Instant?, missing: Bool, longest: Duration?, samples: Int,
                               first: ContinuousClock.Instant?, last: ContinuousClock.Instant?)>((nil, false, nil, 0, nil, nil))

    init(_ members: [Member]) { voters = Mutex(members) }

    /// Records one poll: a gap runs from the last poll that saw a leader to the next one.
    func sample(hasLeader: Bool) {
        let now = ContinuousClock.now
        state.withLock { s in
            s.samples += 1
            if s.first == nil { s.first = now }
            s.last = now
            if hasLeader {
                if s.missing, let last = s.lastSeen {
                    let gap = now - last
                    if s.longest.map({ gap > $0 }) ?? true { s.longest = gap }
                }
                s.lastSeen = now
                s.missing = false
            } else {
                s.missing = true
            }
        }
    }

    var longestGap: Duration? { state.withLock { $0.longest } }
    var samples: Int { state.withLock { $0.samples } }
    /// The mean time between polls (the resolution of `longestGap`).
    var meanPollInterval: Duration? {
        state.withLock { s in
            guard let f = s.first, let l = s.last, s.samples > 1 else { return nil }
            return (l - f) / (s.samples - 1)
        }
    }

}

/// Membership helpers for the tests.
enum M {
    /// `etcdctl member add` of `m` through `via`; returns the new member's hex ID.
    static func add(_ m: Member, via: Member, learner: Bool) async throws -> String {
        let out = try await via.ctl(["member", "add", m.name, "--peer-urls=\(m.peerURL)"] + (learner ? ["--learner"] : []))
        guard out.status == 0, let first = out.lines.first, first.hasPrefix("Member ") else {
            throw E2EError("member add failed: \(out.stdout) \(out.stderr)")
        }
        let words = first.split(separator: " ")
        guard words.count > 1 else { throw E2EError("unexpected member add output: \(first)") }
        #expect(out.stdout.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""))
        return String(words[1])
    }

    /// The member every member agrees is the leader.
    static func leader(of ms: [Member]) async throws -> Member {
        var found: Member?
        try await E2E.waitUntil("members agree on the leader") {
            var seen: Set<String> = []
            for m in ms {
                let out = try await m.ctl("endpoint", "status", "-w", "json")
                guard let id = leaderIDs(in: out.stdout).first else { return false }
                seen.insert(String(id, radix: 16))
            }
            found = ms.first { seen == [$0.memberID ?? ""] }
            return found != nil
        }
        return try #require(found)
    }

    /// The leader IDs in `etcdctl endpoint status -w json` output (0 = none).
    static func leaderIDs(in json: String) -> [UInt64] {
        guard let data = json.data(using: .utf8),
              let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] else { return [] }
        return list.compactMap { ($0["Status"] as? [String: Any])?["leader"] as? NSNumber }.map(\.uint64Value)
    }

    static func anyLeader(in json: String) -> Bool { leaderIDs(in: json).contains { $0 != 0 } }
}
