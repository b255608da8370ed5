import Foundation
import Raft
import Synchronization
import Testing

/// Concurrent clients (the real etcdctl) put and read a few keys on every member of a real
/// three-member cluster while members are killed with SIGKILL and restarted; the recorded
/// history must be linearizable. Puts whose outcome the client never learnt count as "may or
/// may not have happened"; failed reads are left out.
/// Shared by the client tasks and the fault task of one run.
private final class RunState: Sendable {
    let origin = ContinuousClock.now
    let history = Mutex<[HistoryOp]>([])
    let down = Mutex<Set<Int>>([])
    let done = Atomic<Int>(0)
    let crashes = Atomic<Int>(0)
    /// Nanoseconds since the run began.
    func now() -> UInt64 {
        let d = ContinuousClock.now - origin
        return UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
    }
}

@Suite("E2E linearizability", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2ELinearizabilityTests {
    /// Operations per client (E2E_LIN_OPS to change), clients, keys.
    static let opsPerClient = Int(ProcessInfo.processInfo.environment["E2E_LIN_OPS"] ?? "") ?? 30
    static let clients = 5
    static let keys = ["lin/a", "lin/b", "lin/c"]

    @Test func historyUnderCrashesIsLinearizable() async throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["E2E_LIN_SEED"] ?? "") ?? UInt64.random(in: 1...1_000_000)
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "warm", "up").status == 0
            }
            let run = RunState()

            try await withThrowingTaskGroup(of: Void.self) { group in
                for c in 0..<Self.clients {
                    group.addTask {
                        var rng = SplitMix64(seed: seed &+ UInt64(c) &* 7919)
                        for i in 0..<Self.opsPerClient {
                            let key = Self.keys[Int(rng.next() % UInt64(Self.keys.count))]
                            // Any member that is up (a request to a member being killed fails
                            // and counts as unknown, which the checker allows).
                            let up = (0..<ms.count).filter { m in !run.down.withLock { $0.contains(m) } }
                            let m = ms[up.isEmpty ? 0 : up[Int(rng.next() % UInt64(up.count))]]
                            let start = run.now()
                            if rng.next() % 2 == 0 {
                                let value = "c\(c)-\(i)"
                                let out = try await etcdctl(m.endpoint, ["put", key, value], limit: 15)
                                let end = out.status == 0 ? run.now() : nil
                                run.history.withLock { $0.append(HistoryOp(client: c, key: key, kind: .put(value), start: start, end: end)) }
                            } else {
                                let out = try await etcdctl(m.endpoint, ["get", key, "--print-value-only"], limit: 15)
                                guard out.status == 0 else { continue }
                                let end = run.now()
                                let value = out.lines.first
                                run.history.withLock { $0.append(HistoryOp(client: c, key: key, kind: .get(value), start: start, end: end)) }
                            }
                        }
                        run.done.add(1, ordering: .relaxed)
                    }
                }
                // Faults: kill a random member (sometimes the leader), let the others go on,
                // restart it; up to three times while the clients run.
                group.addTask {
                    var rng = SplitMix64(seed: seed ^ 0xFA17)
                    var round = 0
                    while run.done.load(ordering: .relaxed) < Self.clients && round < 3 {
                        round += 1
                        let before = run.history.withLock { $0.count }
                        try await E2E.waitUntil("some operations before a crash", limit: .seconds(60)) {
                            run.history.withLock { $0.count } >= before + 15 || run.done.load(ordering: .relaxed) == Self.clients
                        }
                        let victim = Int(rng.next() % UInt64(ms.count))
                        run.down.withLock { _ = $0.insert(victim) }
                        try await ms[victim].crash()
                        run.crashes.add(1, ordering: .relaxed)
                        let mid = run.history.withLock { $0.count }
                        try await E2E.waitUntil("operations while a member is down", limit: .seconds(60)) {
                            run.history.withLock { $0.count } >= mid + 15 || run.done.load(ordering: .relaxed) == Self.clients
                        }
                        try await ms[victim].start()
                        run.down.withLock { _ = $0.remove(victim) }
                    }
                }
                try await group.waitForAll()
            }

            let ops = run.history.withLock { $0 }
            let known = ops.filter { $0.end != nil }.count
            print("linearizability: seed \(seed), \(ops.count) operations, \(ops.count - known) with unknown outcome, \(run.crashes.load(ordering: .relaxed)) crashes")
            #expect(run.crashes.load(ordering: .relaxed) >= 1, "no member was killed during the run")
            #expect(ops.count >= Self.clients * Self.opsPerClient / 2, "too few operations completed")
            if let failure = LinearizabilityChecker.check(ops) {
                Issue.record("seed \(seed) (rerun with E2E_LIN_SEED=\(seed)): \(failure)")
            }
        }
    }
}
