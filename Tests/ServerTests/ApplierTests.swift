import Dispatch
import Foundation
import Raft
import Storage
import Synchronization
import Testing
@testable import Server

/// The Raft loop's apply thread (`Applier`): order, skipping what the backend holds, readers
/// waiting for the applied index, the queue's bound, failures and stopping.
@Suite struct ApplierTests {
    /// A state machine that records what it applies and on which thread, and can hold the
    /// apply thread at a gate or fail at one index.
    final class Machine: AppliedStateMachine, RaftLoopRequests, @unchecked Sendable {
        struct Seen {
            var applied: [UInt64] = []
            var marked: [UInt64] = []
            var offThread = 0
            var commits = 0
            var reads: [UInt64] = []
        }
        let seen = Mutex(Seen())
        /// The applied index the applier published last.
        let published = Mutex<UInt64>(0)
        let gate = DispatchSemaphore(value: 0)
        let gated: Bool
        let failAt: UInt64?
        var owner: ThreadOwner?

        init(gated: Bool = false, failAt: UInt64? = nil) {
            self.gated = gated
            self.failAt = failAt
        }

        private func note(_ body: (inout Seen) -> Void) {
            let on = owner?.isCurrent ?? false
            seen.withLock {
                if !on { $0.offThread += 1 }
                body(&$0)
            }
        }
        func apply(normal entry: Entry) throws {
            if gated { _ = gate.wait(timeout: .now() + 10) }
            if entry.index == failAt { throw FakeError("broken at \(entry.index)") }
            note { $0.applied.append(entry.index) }
        }
        func apply(confChange: ConfChange, entry: Entry, inBackend: Bool) throws {}
        func markApplied(_ entry: Entry) throws { note { $0.marked.append(entry.index) } }
        func installSnapshot(_ snapshot: Snapshot, dataDir: DataDir, appliedIndex: UInt64) throws -> UInt64 { 0 }
        func snapshotData() throws -> [UInt8] { [] }
        func commitIfDue() throws { note { $0.commits += 1 } }
        func leadershipChanged(isLeader: Bool) {}
        var autoPromotesLearners: Bool { false }
        func learnerPromotion(_ status: RaftStatus) -> ConfChange? { nil }
        func leaseHousekeeping() {}
        func removedByPeer(_ peer: UInt64) throws {}
        func proposalFailed(_ data: [UInt8], _ error: EtcdError) {}
        func confChangeFailed(_ id: UInt64, _ error: EtcdError) {}
        func readsDone(_ readers: [UInt64], _ result: Result<Void, any Error>) { seen.withLock { $0.reads += readers } }
        func loopFailed(_ error: any Error) {}
    }

    static func entries(_ range: ClosedRange<UInt64>, empty: Set<UInt64> = []) -> [Entry] {
        range.map { Entry(term: 1, index: $0, data: empty.contains($0) ? [] : [1, 2, 3]) }
    }

    static func make(_ m: Machine, consistentIndex: UInt64 = 0, commitInterval: TimeInterval = 0.1,
                     woken: DispatchSemaphore? = nil) -> Applier {
        let a = Applier(machine: m, requests: m, applied: consistentIndex, consistentIndex: consistentIndex,
                        commitInterval: commitInterval,
                        publish: { index in m.published.withLock { $0 = index } },
                        wakeLoop: { woken?.signal() })
        m.owner = a.owner
        a.start()
        return a
    }

    @Test func appliesInLogOrderOnItsOwnThread() throws {
        let m = Machine()
        let a = Self.make(m)
        try a.hand(Self.entries(1...3))
        try a.hand(Self.entries(4...4, empty: [4]))
        try a.hand(Self.entries(5...9))
        // A call runs after everything handed before it, on the apply thread.
        let onThread = try a.call { a.owner.isCurrent }
        #expect(onThread)
        let seen = m.seen.withLock { $0 }
        #expect(seen.applied == [1, 2, 3, 5, 6, 7, 8, 9])
        #expect(seen.marked == [4])
        #expect(seen.offThread == 0)
        #expect(m.published.withLock { $0 } == 9)
        #expect(a.currentApplied == 9)
        #expect(!a.owner.isCurrent)
        a.stop()
        #expect(!a.owner.isClaimed)
    }

    @Test func entriesTheBackendHoldsAreSkipped() throws {
        let m = Machine()
        let a = Self.make(m, consistentIndex: 5)
        try a.hand(Self.entries(1...8, empty: [7]))
        try a.call {}
        #expect(m.seen.withLock { $0.applied } == [6, 8])
        #expect(m.seen.withLock { $0.marked } == [7])
        a.stop()
    }

    @Test func readersWaitForTheAppliedIndex() throws {
        let m = Machine(gated: true)
        let a = Self.make(m)
        try a.hand(Self.entries(1...3))
        a.releaseReads(at: 3, [42])
        #expect(m.seen.withLock { $0.reads }.isEmpty, "nothing is applied yet")
        m.gate.signal()
        m.gate.signal()
        m.gate.signal()
        try a.call {}
        #expect(m.seen.withLock { $0.reads } == [42])
        // A read index already applied is answered at once.
        a.releaseReads(at: 2, [43])
        #expect(m.seen.withLock { $0.reads } == [42, 43])
        a.stop()
    }

    /// With the queue full, `hand` returns only once the apply thread has made room.
    @Test func handWaitsForRoomBeyondTheBound() throws {
        let m = Machine(gated: true)
        let a = Self.make(m)
        let full = UInt64(Applier.maxQueuedEntries)
        try a.hand(Self.entries(1...full))
        let appliedWhenHandReturned = Mutex<Int?>(nil)
        let starting = DispatchSemaphore(value: 0)
        let returned = DispatchSemaphore(value: 0)
        Thread {
            starting.signal()
            try? a.hand(Self.entries(full + 1...full + 1))
            appliedWhenHandReturned.withLock { $0 = m.seen.withLock { $0.applied.count } }
            returned.signal()
        }.start()
        try #require(starting.wait(timeout: .now() + 10) == .success)
        // Give a wrongly non-blocking hand time to return (a late start only hides a failure).
        Thread.sleep(forTimeInterval: 0.05)
        #expect(appliedWhenHandReturned.withLock { $0 } == nil)
        for _ in 0...full { m.gate.signal() }
        try #require(returned.wait(timeout: .now() + 10) == .success)
        #expect((appliedWhenHandReturned.withLock { $0 } ?? 0) > 0)
        try a.call {}
        #expect(m.seen.withLock { $0.applied.count } == Int(full) + 1)
        a.stop()
    }

    @Test func aFailureStopsTheThreadAndReachesTheLoop() throws {
        let m = Machine(failAt: 2)
        let woken = DispatchSemaphore(value: 0)
        let a = Self.make(m, woken: woken)
        try a.hand(Self.entries(1...3))
        try #require(woken.wait(timeout: .now() + 10) == .success)
        #expect(throws: FakeError.self) { try a.checkFailure() }
        #expect(throws: FakeError.self) { try a.hand(Self.entries(4...4)) }
        #expect(throws: FakeError.self) { try a.call {} }
        #expect(m.seen.withLock { $0.applied } == [1])
        #expect(m.published.withLock { $0 } == 0, "the failed batch is not published as applied")
        a.stop()
    }

    @Test func stopAppliesWhatWasHanded() throws {
        let m = Machine()
        let a = Self.make(m)
        for i in stride(from: UInt64(1), through: 991, by: 10) { try a.hand(Self.entries(i...i + 9)) }
        a.stop()
        #expect(m.seen.withLock { $0.applied.count } == 1000)
        #expect(throws: (any Error).self) { try a.call {} }
    }

    /// A batch that does not finish shows as busy time (the systemd watchdog stops pinging on
    /// it); an idle thread shows none.
    @Test func aStuckApplyShowsAsBusyTime() async throws {
        let m = Machine(gated: true)
        let a = Self.make(m, commitInterval: 10)
        #expect(a.busySinceNanos == 0)
        try a.hand(Self.entries(1...1))
        try await waitUntil { a.busySinceNanos > 0 }
        let since = a.busySinceNanos
        #expect(since <= DispatchTime.now().uptimeNanoseconds)
        m.gate.signal()
        try a.call {}
        try await waitUntil { a.busySinceNanos == 0 }
        a.stop()
    }

    @Test func commitsTheBackendWhileIdle() async throws {
        let m = Machine()
        let a = Self.make(m, commitInterval: 0.005)
        try await waitUntil { m.seen.withLock { $0.commits } >= 3 }
        #expect(m.seen.withLock { $0.offThread } == 0)
        a.stop()
    }
}
