import Foundation
import Raft
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What the clients and the fault task of one run share.
final class FaultRun: Sendable {
    /// CLOCK_MONOTONIC at time zero: the Go client reads the same clock.
    let origin = FaultRun.monotonic()
    /// Each operation with the node it was sent to.
    let history = Mutex<[(op: HistoryOp, node: Int)]>([])
    /// Nodes cut off from the majority: (node, from, to) in run time; nil `to` while it lasts.
    let minorityWindows = Mutex<[(node: Int, from: UInt64, to: UInt64?)]>([])
    let down = Mutex<Set<Int>>([])
    let stop = Atomic<Bool>(false)
    let faults = Mutex<[String]>([])
    /// The revision compacted part-way through the faults.
    let compactRevision = Mutex<Int64?>(nil)

    func now() -> UInt64 { Self.monotonic() - origin }
    static func monotonic() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
    func record(_ op: HistoryOp, node: Int) { history.withLock { $0.append((op, node)) } }
    var count: Int { history.withLock { $0.count } }
}

/// One event a watcher printed: revision, key, value.
struct WatchedEvent: Equatable, CustomStringConvertible {
    let revision: Int64
    let key: String
    let value: String
    var description: String { "\(revision) \(key)=\(value)" }

    /// The events of `etcdctl watch -w json` output (one JSON response per line).
    static func parse(_ text: String) -> [WatchedEvent] {
        var events: [WatchedEvent] = []
        for line in text.split(separator: "\n") where line.hasPrefix("{") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let list = obj["Events"] as? [[String: Any]] else { continue }
            for e in list {
                guard let kv = e["kv"] as? [String: Any] else { continue }
                events.append(WatchedEvent(revision: (kv["mod_revision"] as? NSNumber)?.int64Value ?? 0,
                                           key: decode(kv["key"]) ?? "", value: decode(kv["value"]) ?? ""))
            }
        }
        return events
    }

    static func decode(_ v: Any?) -> String? {
        guard let s = v as? String, let d = Data(base64Encoded: s) else { return nil }
        return String(decoding: d, as: UTF8.self)
    }
}

/// A real three-member cluster, each member in its own network namespace, under a seeded
/// schedule of faults (partitions of every shape, random loss, delays with jitter that reorder
/// packets, SIGSTOP of leader and follower,
/// kill -9 and restart) while etcdctl clients put, read, create-if-absent and
/// compare-and-swap a few keys on every member, etcd's Go clientv3 (Tests/E2ETests/go/faultclient)
/// does kube-apiserver's creates and updates over all three, and one watcher stays connected
/// throughout.
/// Checks: the history is linearizable, no member cut off from the majority answered a
/// request, the watcher saw every acknowledged write once, in order and without gaps (the
/// same events as a watch from revision 1 afterwards), and the members converge (equal
/// HashKV at one revision). E2E_FAULT_ROUNDS repeats the schedule (CI: 1), E2E_FAULT_SEED
/// replays one.
@Suite("E2E faults in network namespaces", .serialized,
       .enabled(if: NetnsCluster.available, "needs root, ip, iptables (scripts/ensure-deps) and the binaries"))
struct E2EFaultTests {
    static let env = ProcessInfo.processInfo.environment
    static let rounds = Int(env["E2E_FAULT_ROUNDS"] ?? "") ?? 1
    static let clients = 4
    static let hotKeys = ["f/k0", "f/k1", "f/k2"]
    static let createKeys = (0..<24).map { "f/c\($0)" }

    enum Fault: String, CaseIterable {
        case isolateLeader, isolateFollower, leaderDeaf, followerMute, bridge, loss, delay, slowLeader, pauseLeader,
             pauseFollower, killRestart
    }

    @Test func historyUnderNetworkAndProcessFaults() async throws {
        let seed = UInt64(Self.env["E2E_FAULT_SEED"] ?? "") ?? UInt64.random(in: 1...1_000_000)
        print("faults: seed \(seed) (replay with E2E_FAULT_SEED=\(seed))")
        let goProgram = try await GoChecks.binary("faultclient")
        try await NetnsCluster.with(3) { cluster in
            let nodes = cluster.nodes
            let run = FaultRun()
            let leases = try await FaultLeases(node: try await cluster.leader(), run: run)
            // The watcher stays on n1, which is never killed (a pause or a partition keeps
            // its connection).
            let watcher = try etcdctlProcess(nodes[0].endpoint, ["watch", "--prefix", "f/", "--rev", "1", "-w", "json"],
                                             limit: 900)
            try watcher.start()
            defer { watcher.signal(SIGTERM) }   // timeout(1) passes TERM on; KILL would orphan etcdctl
            // etcd's clientv3 over all three members (its balancer picks), as kube-apiserver.
            let goDir = try E2E.tempDir("faultclient")
            defer { try? FileManager.default.removeItem(atPath: goDir) }
            let stopFile = goDir + "/stop"
            let goClient = try Child("/usr/bin/timeout", [
                "-s", "KILL", "1800", goProgram, "--endpoints", nodes.map(\.endpoint).joined(separator: ","),
                "--clients", "2", "--first-id", "100", "--seed", "\(seed)", "--origin", "\(run.origin)",
                "--hot-keys", Self.hotKeys.joined(separator: ","), "--create-keys", Self.createKeys.joined(separator: ","),
                "--stop-file", stopFile,
            ])
            try goClient.start()
            defer { goClient.signal(SIGKILL) }

            try await withThrowingTaskGroup(of: Void.self) { group in
                for c in 0..<Self.clients {
                    group.addTask { try await Self.client(c, seed: seed, nodes: nodes, run: run) }
                }
                group.addTask { try await leases.drive(seed: seed, nodes: nodes, run: run) }
                group.addTask {
                    defer { run.stop.store(true, ordering: .relaxed) }
                    try await Self.faults(seed: seed, cluster: cluster, run: run, watcher: watcher)
                }
                try await group.waitForAll()
            }
            // The Go client finishes the requests it has in flight and prints the last ones.
            _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
            #expect(try await goClient.waitExit(limit: .seconds(30)) == 0, "faultclient: \(goClient.stderr.suffix(2000))")
            let goOps = Self.parseGoHistory(goClient.stdout)
            for op in goOps { run.record(op, node: 0) }
            let goAcked = goOps.filter { op in
                guard op.end != nil, case .cas(_, _, let ok) = op.kind else { return false }
                return ok
            }.count
            print("faults: clientv3: \(goOps.count) operations, \(goAcked) acknowledged conditional writes")
            #expect(goAcked >= 5, "the Go client had too few writes acknowledged: \(goClient.stderr.suffix(1500))")

            // Healed (the fault task undid each fault); every member is up again.
            let leader = try await cluster.leader()
            let healed = run.now()
            for key in Self.hotKeys + Self.createKeys {
                let start = run.now()
                let (ok, value, _) = try await Self.get(leader, key)
                if ok { run.record(HistoryOp(client: 99, key: key, kind: .get(value), start: start, end: run.now()), node: leader.index) }
            }
            let end = try await leader.ctl(["put", "f/zz-end", "end"])
            #expect(end.status == 0, "\(end)")

            let ops = run.history.withLock { $0 }
            let history = ops.map(\.op)
            let acked = history.filter {
                guard $0.end != nil else { return false }
                switch $0.kind {
                case .put: return true
                case .cas(_, _, let ok): return ok
                case .get: return false
                }
            }
            let faults = run.faults.withLock { $0 }
            print("faults: seed \(seed), \(ops.count) operations, \(history.filter { $0.end == nil }.count) unknown outcome, \(acked.count) acknowledged writes, \(faults.count) faults: \(faults.joined(separator: ", "))")
            #expect(faults.count >= Fault.allCases.count * Self.rounds)
            #expect(acked.count >= 20, "too few writes acknowledged")

            // 1. Linearizable.
            if let failure = LinearizabilityChecker.check(history) {
                Issue.record("seed \(seed): \(failure)")
            }
            // 2. A member cut off from the majority answered nothing (no write, no
            // linearizable read), for requests sent and answered while it was cut off.
            let windows = run.minorityWindows.withLock { $0 }
            for (op, node) in ops {
                guard let e = op.end else { continue }
                for w in windows where w.node == node && op.start >= w.from && e <= (w.to ?? .max) {
                    Issue.record("seed \(seed): n\(node) answered while cut off from the majority: \(op)")
                }
            }
            // 3. The watcher that stayed connected got every event once, in order, with no gap:
            // from the revision compacted during the run on, the same list as a new watch from
            // there; and every acknowledged write is among its events.
            try await E2E.waitUntil("the watcher reaching the last write", limit: .seconds(30)) {
                watcher.stdout.contains("\"Events\"") && WatchedEvent.parse(watcher.stdout).contains { $0.key == "f/zz-end" }
            }
            let live = WatchedEvent.parse(watcher.stdout)
            let compacted = try #require(run.compactRevision.withLock { $0 }, "no compaction during the run")
            let replay = try await Self.watchAll(cluster.nodes[1], from: compacted)
            let liveTail = live.filter { $0.revision >= compacted }
            #expect(liveTail == replay, "the live watcher's events differ from a replay from revision \(compacted): \(liveTail.count) vs \(replay.count)")
            #expect(zip(live, live.dropFirst()).allSatisfy { $0.revision < $1.revision }, "revisions not increasing")
            var seen: [String: Int64] = [:]
            for e in live {
                if let r = seen[e.value] { Issue.record("value \(e.value) written twice: revisions \(r) and \(e.revision)") }
                seen[e.value] = e.revision
            }
            for op in acked {
                let value: String
                switch op.kind {
                case .put(let v): value = v
                case .cas(_, let v, _): value = v
                case .get: continue
                }
                if seen[value] == nil { Issue.record("acknowledged write lost: \(op)") }
            }
            // 4. Converged: equal HashKV on every member at the last revision.
            let revision = try #require(live.last?.revision)
            var hashes: [Int: UInt64] = [:]
            try await E2E.waitUntil("equal HashKV on every member", limit: .seconds(30)) {
                hashes = await cluster.hashKV(at: revision)
                return hashes.count == nodes.count && Set(hashes.values).count == 1
            }
            // 5. A watch from before the compacted revision is refused on every member with
            // etcd's error and the compact revision, and no event is served.
            for n in nodes {
                let out = try await n.ctl(["watch", "--prefix", "f/", "--rev", "\(compacted - 1)", "-w", "json"], limit: 15)
                #expect(out.stderr.contains("required revision has been compacted"), "n\(n.index): \(out)")
                #expect(out.stdout.contains("\"CompactRevision\":\(compacted)"), "n\(n.index): \(out)")
                #expect(WatchedEvent.parse(out.stdout).isEmpty, "n\(n.index) served events from a compacted revision: \(out.stdout.prefix(500))")
            }
            // 6. Leases.
            try await leases.check(cluster: cluster, run: run, healed: healed, electionTimeout: UInt64(cluster.electionTimeout))
        }
    }

    // MARK: clients

    /// One client: puts and reads on the hot keys, compare-and-swap after a read, creates of
    /// the create keys; each request to a random member that is up.
    static func client(_ c: Int, seed: UInt64, nodes: [NetnsCluster.Node], run: FaultRun) async throws {
        var rng = SplitMix64(seed: seed &+ UInt64(c) &* 7919)
        var i = 0
        while !run.stop.load(ordering: .relaxed) && i < 600 {
            i += 1
            let up = nodes.filter { n in !run.down.withLock { $0.contains(n.index) } }
            let node = up.isEmpty ? nodes[0] : up[Int(rng.next() % UInt64(up.count))]
            let value = "c\(c)-\(i)"
            switch rng.next() % 4 {
            case 0:
                let key = hotKeys[Int(rng.next() % UInt64(hotKeys.count))]
                let start = run.now()
                let out = try await node.ctl(["put", key, value])
                run.record(HistoryOp(client: c, key: key, kind: .put(value), start: start, end: out.status == 0 ? run.now() : nil), node: node.index)
            case 1:
                let key = createKeys[Int(rng.next() % UInt64(createKeys.count))]
                let start = run.now()
                let (answered, ok) = try await txn(node, "create(\"\(key)\") = \"0\"", put: "put \(key) \(value)")
                run.record(HistoryOp(client: c, key: key, kind: .cas(expected: nil, new: value, succeeded: ok || !answered),
                                     start: start, end: answered ? run.now() : nil), node: node.index)
            default:
                // Read, then (every other time) swap by the revision read, as kube-apiserver updates.
                let key = rng.next() % 3 == 0 ? createKeys[Int(rng.next() % UInt64(createKeys.count))]
                                               : hotKeys[Int(rng.next() % UInt64(hotKeys.count))]
                let start = run.now()
                let (ok, current, modRevision) = try await get(node, key)
                guard ok else { continue }
                run.record(HistoryOp(client: c, key: key, kind: .get(current), start: start, end: run.now()), node: node.index)
                guard let current, rng.next() % 2 == 0 else { continue }
                let casStart = run.now()
                let (answered, swapped) = try await txn(node, "mod(\"\(key)\") = \"\(modRevision)\"", put: "put \(key) \(value)")
                run.record(HistoryOp(client: c, key: key, kind: .cas(expected: current, new: value, succeeded: swapped || !answered),
                                     start: casStart, end: answered ? run.now() : nil), node: node.index)
            }
        }
    }

    /// The operations `faultclient` printed (one JSON object a line).
    static func parseGoHistory(_ text: String) -> [HistoryOp] {
        text.split(separator: "\n").compactMap { line in
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let client = (o["c"] as? NSNumber)?.intValue, let key = o["k"] as? String,
                  let start = (o["s"] as? NSNumber)?.int64Value, let end = (o["f"] as? NSNumber)?.int64Value,
                  start >= 0 else { return nil }
            let value = o["v"] as? String
            let kind: HistoryOp.Kind
            if o["t"] as? String == "get" {
                kind = .get(value)
            } else {
                guard let value else { return nil }
                kind = .cas(expected: o["x"] as? String, new: value, succeeded: (o["ok"] as? Bool) ?? true)
            }
            return HistoryOp(client: client, key: key, kind: kind, start: UInt64(start), end: end < 0 ? nil : UInt64(end))
        }
    }

    /// A linearizable get: (answered, value or nil when absent, mod revision).
    static func get(_ node: NetnsCluster.Node, _ key: String) async throws -> (Bool, String?, Int64) {
        let out = try await node.ctl(["get", key, "-w", "json"])
        guard out.status == 0, let obj = try? JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any] else {
            return (false, nil, 0)
        }
        guard let kv = (obj["kvs"] as? [[String: Any]])?.first else { return (true, nil, 0) }
        return (true, WatchedEvent.decode(kv["value"]) ?? "", (kv["mod_revision"] as? NSNumber)?.int64Value ?? 0)
    }

    /// A one-compare txn with one put on success and nothing on failure: (answered, succeeded).
    static func txn(_ node: NetnsCluster.Node, _ compare: String, put: String) async throws -> (Bool, Bool) {
        let out = try await node.ctl(["txn"], input: "\(compare)\n\n\(put)\n\n\n")
        guard out.status == 0 else { return (false, false) }
        let first = out.lines.first ?? ""
        guard first == "SUCCESS" || first == "FAILURE" else { return (false, false) }
        return (true, first == "SUCCESS")
    }

    /// Every event under f/ from revision `from`, through a new watcher on `node`.
    static func watchAll(_ node: NetnsCluster.Node, from: Int64) async throws -> [WatchedEvent] {
        let w = try etcdctlProcess(node.endpoint, ["watch", "--prefix", "f/", "--rev", "\(from)", "-w", "json"], limit: 60)
        try w.start()
        defer { w.signal(SIGKILL) }
        try await E2E.waitUntil("a replay of the watch", limit: .seconds(30)) {
            WatchedEvent.parse(w.stdout).contains { $0.key == "f/zz-end" }
        }
        return WatchedEvent.parse(w.stdout)
    }

    // MARK: faults

    /// Compacts at the revision of the live watcher's last event, through the leader.
    static func compact(cluster: NetnsCluster, run: FaultRun, watcher: Child) async throws {
        var revision: Int64 = 0
        try await E2E.waitUntil("the watcher past revision 2", limit: .seconds(30)) {
            revision = WatchedEvent.parse(watcher.stdout).last?.revision ?? 0
            return revision > 2
        }
        try await E2E.waitUntil("a compaction at \(revision)", limit: .seconds(30)) {
            let out = try await cluster.leader().ctl(["compact", "\(revision)"])
            return out.status == 0 || out.stderr.contains("required revision has been compacted")
        }
        run.compactRevision.withLock { $0 = revision }
        run.faults.withLock { $0.append("compact(\(revision))") }
    }

    /// Each fault of `Fault` once per round, in a seeded order: applied, held for 1.5–3 s
    /// while the clients run, undone; then the cluster must elect a leader and take writes
    /// before the next.
    /// Half-way through the first round, the revision of the live `watcher`'s last event is
    /// compacted (it has seen it, so it is not cut off).
    static func faults(seed: UInt64, cluster: NetnsCluster, run: FaultRun, watcher: Child) async throws {
        var rng = SplitMix64(seed: seed ^ 0xFA17)
        let nodes = cluster.nodes
        for round in 0..<rounds {
            var order = Fault.allCases
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            for (index, fault) in order.enumerated() {
                if round == 0 && index == order.count / 2 { try await compact(cluster: cluster, run: run, watcher: watcher) }
                // Some operations between faults.
                let before = run.count
                try await E2E.waitUntil("operations before a fault", limit: .seconds(60)) { run.count >= before + 6 }
                let leader = try await cluster.leader()
                let followers = nodes.filter { $0 !== leader }
                let follower = followers[Int(rng.next() % UInt64(followers.count))]
                let other = followers.first { $0 !== follower }!
                let hold = Duration.milliseconds(1500 + Int64(rng.next() % 1500))
                run.faults.withLock { $0.append("\(fault.rawValue)(leader n\(leader.index), follower n\(follower.index))") }
                var cutOff: NetnsCluster.Node?
                switch fault {
                case .isolateLeader:
                    try await cluster.isolate(leader); cutOff = leader
                case .isolateFollower:
                    try await cluster.isolate(follower); cutOff = follower
                case .leaderDeaf:
                    // One way: the leader's heartbeats go out, nothing comes back in.
                    for f in followers { try await cluster.dropIncoming(at: leader, from: f) }
                    cutOff = leader
                case .followerMute:
                    // One way: the follower hears the leader, the leader never hears it.
                    try await cluster.dropIncoming(at: leader, from: follower)
                case .bridge:
                    // Leader and one follower cut apart; the other follower sees both.
                    try await cluster.cut(leader, follower)
                case .loss:
                    try await cluster.randomLoss(0.2)
                case .delay:
                    // Every link 20-100 ms one way; the jitter reorders packets.
                    try await cluster.delayAll(milliseconds: 20, jitter: 80)
                case .slowLeader:
                    // The leader's links, both ways, 200-800 ms: heartbeats and acks arrive near
                    // the election timeout (1 s), out of order.
                    try await cluster.delayIncoming(at: leader, from: followers, milliseconds: 200, jitter: 600)
                    for f in followers { try await cluster.delayIncoming(at: f, from: [leader], milliseconds: 200, jitter: 600) }
                case .pauseLeader:
                    cluster.pause(leader)
                case .pauseFollower:
                    cluster.pause(follower)
                case .killRestart:
                    // Never n1: the watcher stays connected to it.
                    let victim = [leader, follower, other].first { $0.index != 1 }!
                    run.down.withLock { _ = $0.insert(victim.index) }
                    try await cluster.crash(victim)
                }
                let from = run.now()
                if let n = cutOff { run.minorityWindows.withLock { $0.append((n.index, from, nil)) } }
                try await Task.sleep(for: hold)
                if cutOff != nil {
                    let to = run.now()
                    run.minorityWindows.withLock { w in w[w.count - 1].to = to }
                }
                if fault == .delay || fault == .slowLeader {
                    let delayed = cluster.delayedPackets
                    run.faults.withLock { $0[$0.count - 1] += " \(delayed) packets delayed" }
                    #expect(delayed > 0, "\(fault.rawValue): the delayer held no packet")
                }
                try await cluster.heal()
                for n in nodes where n.paused { cluster.resume(n) }
                for n in nodes where !n.isRunning {
                    try await cluster.start(n)
                    run.down.withLock { _ = $0.remove(n.index) }
                }
                // Recovered: a leader all agree on, and it takes a write.
                let next = try await cluster.leader(limit: .seconds(40))
                try await E2E.waitUntil("a write after healing", limit: .seconds(30)) {
                    try await next.ctl(["put", "sync", "\(fault.rawValue)"]).status == 0
                }
            }
        }
    }
}

/// A tmpfs of a fixed size (a disk that fills up), mounted on a fresh directory.
final class TmpfsMount: Sendable {
    let mountPoint: String
    init(megabytes: Int) async throws {
        mountPoint = try E2E.tempDir("tmpfs")
        try await LoopFileSystem.sh("mount", "-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", mountPoint)
    }
    /// Fills the file system up to `leaveKiB` of free space with one file.
    func fill(leaveKiB: Int) async throws {
        let avail = try await LoopFileSystem.sh("df", "-k", "--output=avail", mountPoint)
            .split(separator: "\n").last.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } ?? 0
        if avail > leaveKiB {
            try await LoopFileSystem.sh("fallocate", "-l", "\((avail - leaveKiB) * 1024)", mountPoint + "/filler")
        }
    }
    func free() { try? FileManager.default.removeItem(atPath: mountPoint + "/filler") }
    func remove() async {
        _ = try? await LoopFileSystem.sh("umount", "--lazy", mountPoint)
        try? FileManager.default.removeItem(atPath: mountPoint)
    }
}

extension E2EFaultTests {
    /// Disk faults and a membership change during one:
    /// - n2's data directory is on an ext4 loop device that is frozen (fsfreeze: every write
    ///   blocks, as a stuck disk): the others go on taking writes; thawed, n2 catches up.
    /// - n3's data directory is on a small tmpfs that is then filled: n3 stops by itself with a
    ///   clear log line (never answering a write it could not store), the others go on; while it
    ///   is down a learner n4 is added, promoted and removed again; once space is freed n3
    ///   restarts with its data and catches up.
    /// Every acknowledged write is then on every member, and HashKV agrees.
    @Test func stuckDiskDiskFullAndMembershipChange() async throws {
        let loop = try await LoopFileSystem()
        let small: TmpfsMount
        do { small = try await TmpfsMount(megabytes: 80) } catch { await loop.remove(); throw error }
        try await NetnsCluster.with(3, prepare: { c in
            c.nodes[1].dataDir = loop.mountPoint + "/data"
            c.nodes[2].dataDir = small.mountPoint + "/data"
        }, cleanUp: {
            await loop.remove()
            await small.remove()
        }) { cluster in
            let (n1, n2, n3) = (cluster.nodes[0], cluster.nodes[1], cluster.nodes[2])
            _ = try await cluster.leader()
            let ackedBox = Mutex<[String: String]>([:])
            func put(_ via: NetnsCluster.Node, _ key: String, _ value: String, limit: Int = 15) async throws -> Bool {
                let ok = try await via.ctl(["put", key, value], limit: limit).status == 0
                if ok { ackedBox.withLock { $0[key] = value } }
                return ok
            }
            for i in 0..<10 { #expect(try await put(n1, "d/before\(i)", "v\(i)")) }

            // Stuck disk on n2 (perhaps the leader): the majority n1+n3 elects if needed and
            // goes on.
            let wasLeader = try await cluster.leader() === n2
            try await loop.freeze()
            let stuck = try etcdctlProcess(n2.endpoint, ["put", "d/stuck", "maybe"], limit: 20)
            try stuck.start()
            try await E2E.waitUntil("writes with n2's disk frozen", limit: .seconds(40)) {
                try await put(n1, "d/frozen", "yes", limit: 8)
            }
            for i in 0..<5 { #expect(try await put(n3, "d/frozen\(i)", "v\(i)")) }
            await loop.thaw()
            _ = try await stuck.waitExit(limit: .seconds(30))
            if stuck.exitStatus == 0 { ackedBox.withLock { $0["d/stuck"] = "maybe" } }
            print("faults: n2 disk frozen (leader: \(wasLeader)); its own write answered: \(stuck.exitStatus == 0)")

            // Disk full on n3.
            try await small.fill(leaveKiB: 64)
            let big = String(repeating: "x", count: 20_000)
            var i = 0
            try await E2E.waitUntil("n3 stopping on a full disk", limit: .seconds(90)) {
                i += 1
                _ = try await put(i % 2 == 0 ? n1 : n2, "d/big\(i)", big + "\(i)")
                return !n3.isRunning
            }
            let status = try #require(n3.child?.exitStatus)
            #expect(status != 0, "n3 exited with 0 on a full disk")
            #expect(n3.log.contains("the member cannot go on"), "\(n3.log.suffix(1500))")
            // The reason names the full disk (LMDB turns a short write into EIO; the backend
            // says what it was).
            #expect(n3.log.contains("No space left on device"), "\(n3.log.suffix(1500))")
            #expect(!n3.log.contains("Input/output error"), "\(n3.log.suffix(1500))")
            // The others go on.
            for j in 0..<5 { #expect(try await put(n1, "d/full\(j)", "v\(j)")) }

            // Membership change while n3 is down: learner n4 added, promoted, removed.
            let n4 = try await cluster.addNode(4)
            let add = try await n1.ctl(["member", "add", n4.name, "--peer-urls=\(n4.peerURL)", "--learner"])
            let id = try #require(add.lines.first?.split(separator: " ").dropFirst().first.map(String.init), "\(add)")
            try await cluster.start(n4, initialCluster: cluster.initialCluster(), state: "existing")
            try await E2E.waitUntil("n4 promoted", limit: .seconds(40)) {
                try await n1.ctl(["member", "promote", id]).status == 0
            }
            #expect(try await put(n2, "d/with-n4", "yes"))
            try await E2E.waitUntil("n4 removed", limit: .seconds(30)) {
                try await n1.ctl(["member", "remove", id]).status == 0
            }
            try await cluster.crash(n4)
            #expect(try await put(n1, "d/after-n4", "yes"))

            // Space freed: n3 restarts with its data and catches up.
            small.free()
            try await cluster.start(n3)
            let leader = try await cluster.leader(among: [n1, n2, n3], limit: .seconds(40))
            #expect(try await put(leader, "d/end", "end"))
            let revision = try #require(await cluster.status(leader)?.revision)
            try await E2E.waitUntil("equal HashKV on n1, n2, n3", limit: .seconds(40)) {
                let h = await cluster.hashKV(at: revision)
                return h.count == 3 && Set(h.values).count == 1
            }
            // Nothing acknowledged is lost, on any member (its own copy: a serializable read).
            let acked = ackedBox.withLock { $0 }
            for n in [n1, n2, n3] {
                let out = try await n.ctl(["get", "d/", "--prefix", "--consistency=s"], limit: 20)
                var have: [String: String] = [:]
                let lines = out.lines
                for k in stride(from: 0, to: lines.count - 1, by: 2) { have[lines[k]] = lines[k + 1] }
                for (k, v) in acked where have[k] != v { Issue.record("\(n.name) lost acknowledged \(k)") }
            }
            print("faults: disk test, \(acked.count) acknowledged writes, lost: 0 unless reported above")
        }
    }
}
