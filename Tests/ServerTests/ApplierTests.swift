import Dispatch
import EtcdProto
import Foundation
import NIOCore
import NIOPosix
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
            /// The threads (pthread_self) entries were applied on.
            var threads: Set<UInt> = []
        }
        let seen = Mutex(Seen())
        /// The applied index the applier published last.
        let published = Mutex<UInt64>(0)
        let gate = DispatchSemaphore(value: 0)
        let gated: Bool
        let failAt: UInt64?
        var owner: ThreadOwner?
        /// Holds the apply thread at this index (with `gate`) when set.
        var gateAt: UInt64?
        /// Runs for each applied entry on the applying thread (set before handing entries).
        var onApply: ((UInt64) -> Void)?

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
            if gated || entry.index == gateAt { _ = gate.wait(timeout: .now() + 60) }
            if entry.index == failAt { throw FakeError("broken at \(entry.index)") }
            onApply?(entry.index)
            let me = UInt(bitPattern: Int(bitPattern: pthread_self()))
            note {
                $0.applied.append(entry.index)
                $0.threads.insert(me)
            }
        }
        func apply(confChange: ConfChange, entry: Entry, inBackend: Bool) throws {}
        func markApplied(_ entry: Entry) throws { note { $0.marked.append(entry.index) } }
        /// Entries whose data starts with 9 are slow: never applied inline.
        func appliesQuickly(_ entry: Entry) -> Bool { entry.data.first != 9 }
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
                     inline: Bool = false, woken: DispatchSemaphore? = nil) -> Applier {
        let a = Applier(machine: m, requests: m, applied: consistentIndex, consistentIndex: consistentIndex,
                        commitInterval: commitInterval, inline: inline,
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

    /// With the thread idle and nothing queued the caller applies a batch itself (no wake-up),
    /// holding the token; while the thread holds it (here a call held at a gate, in real use a
    /// backend commit) a batch is queued instead and the caller does not wait.
    @Test func theLoopAppliesItselfWhileTheThreadIsIdle() throws {
        let m = Machine()
        let a = Self.make(m, commitInterval: 10, inline: true)
        let me = UInt(bitPattern: Int(bitPattern: pthread_self()))
        try a.hand(Self.entries(1...3))
        #expect(m.seen.withLock { $0.applied } == [1, 2, 3], "applied before hand returned")
        #expect(m.seen.withLock { $0.threads } == [me])
        #expect(m.seen.withLock { $0.offThread } == 0, "the caller held the token")
        #expect(a.currentApplied == 3)
        #expect(!a.owner.isClaimed)

        let gate = DispatchSemaphore(value: 0)
        let held = DispatchSemaphore(value: 0)
        let callDone = DispatchSemaphore(value: 0)
        Thread {
            try? a.call {
                held.signal()
                _ = gate.wait(timeout: .now() + 10)
            }
            callDone.signal()
        }.start()
        try #require(held.wait(timeout: .now() + 10) == .success)
        try a.hand(Self.entries(4...5))
        #expect(m.seen.withLock { $0.applied } == [1, 2, 3], "queued behind the running call")
        gate.signal()
        try #require(callDone.wait(timeout: .now() + 10) == .success)
        try a.call {}
        let seen = m.seen.withLock { $0 }
        #expect(seen.applied == [1, 2, 3, 4, 5])
        #expect(seen.threads.count == 2, "4 and 5 applied on the apply thread")
        #expect(seen.offThread == 0)
        a.stop()
    }

    /// A batch with an entry that may be slow, or more than `maxInlineEntries`, goes to the
    /// thread even when it is idle.
    @Test func slowOrLargeBatchesGoToTheThread() throws {
        let m = Machine()
        let a = Self.make(m, commitInterval: 10, inline: true)
        let me = UInt(bitPattern: Int(bitPattern: pthread_self()))
        try a.hand([Entry(term: 1, index: 1, data: [1]), Entry(term: 1, index: 2, data: [9])])
        let big = UInt64(Applier.maxInlineEntries) + 3
        try a.hand(Self.entries(3...big))
        try a.call {}
        let seen = m.seen.withLock { $0 }
        #expect(seen.applied == Array(1...big))
        #expect(!seen.threads.contains(me))
        a.stop()
    }

    /// The server's classification reads the request kind from the encoded entry, and a txn's
    /// compares and ops from its bytes: only small put-only txns on single keys apply quickly.
    @Test func putsLeaseGrantsNoopsAndSmallPutTxnsApplyQuickly() throws {
        func entry(_ fill: (inout Swetcd_Internal_InternalRequest) -> Void) throws -> Entry {
            var r = Swetcd_Internal_InternalRequest()
            r.header.id = 77
            r.header.username = "root"
            fill(&r)
            return Entry(term: 1, index: 1, data: try r.serializedBytes())
        }
        var put = Etcdserverpb_PutRequest()
        put.key = Data("k".utf8)
        put.value = Data(repeating: 1, count: 300)
        put.prevKv = true
        var grant = Etcdserverpb_LeaseGrantRequest()
        grant.id = 5
        grant.ttl = 60
        var del = Etcdserverpb_DeleteRangeRequest()
        del.key = Data([0])
        del.rangeEnd = Data([0])
        var range = Etcdserverpb_RangeRequest()
        range.key = Data("k".utf8)
        var compare = Etcdserverpb_Compare()
        compare.key = Data("k".utf8)
        compare.target = .mod
        compare.modRevision = 9
        var rangeCompare = compare
        rangeCompare.rangeEnd = Data([0])
        func txn(compares: [Etcdserverpb_Compare] = [], success: [Etcdserverpb_RequestOp] = [],
                 failure: [Etcdserverpb_RequestOp] = []) -> Etcdserverpb_TxnRequest {
            var t = Etcdserverpb_TxnRequest()
            t.compare = compares
            t.success = success
            t.failure = failure
            return t
        }
        let putOp = Etcdserverpb_RequestOp.with { $0.requestPut = put }
        let limit = EtcdServer.quickTxnOperations
        let quickTxns = [
            txn(success: [putOp]),
            txn(compares: Array(repeating: compare, count: limit), success: Array(repeating: putOp, count: limit),
                failure: Array(repeating: putOp, count: limit)),
            txn(),
        ]
        let slowTxns = [
            txn(success: [putOp, Etcdserverpb_RequestOp.with { $0.requestRange = range }]),
            txn(failure: [Etcdserverpb_RequestOp.with { $0.requestDeleteRange = del }]),
            txn(success: [Etcdserverpb_RequestOp.with { $0.requestTxn = txn(success: [putOp]) }]),
            txn(compares: [compare, rangeCompare], success: [putOp]),
            txn(compares: Array(repeating: compare, count: limit + 1), success: [putOp]),
            txn(success: Array(repeating: putOp, count: limit + 1)),
        ]
        let quick = [try entry { $0.put = put }, try entry { $0.leaseGrant = grant }, try entry { $0.noop = .init() },
                     Entry(term: 1, index: 1)] + (try quickTxns.map { t in try entry { $0.txn = t } })
        let slow = [try entry { $0.deleteRange = del }, try entry { $0.leaseRevoke = .init() },
                    try entry { $0.compaction = .init() }, Entry(term: 1, index: 1, data: [0x0A, 0x7F])]
            + (try slowTxns.map { t in try entry { $0.txn = t } })
        for (i, e) in quick.enumerated() { #expect(EtcdServer.appliesQuickly(e.data), "quick entry \(i)") }
        for (i, e) in slow.enumerated() { #expect(!EtcdServer.appliesQuickly(e.data), "slow entry \(i)") }
        #expect(quick.map { EtcdServer.requestField($0.data) } == [2, 6, 10, nil, 4, 4, 4])
        #expect(slow.map { EtcdServer.requestField($0.data) } == [3, 7, 5, nil, 4, 4, 4, 4, 4, 4])
        // An entry cut short is slow (applying reports it).
        var cut = try entry { $0.txn = txn(compares: [compare], success: [putOp]) }.data
        cut.removeLast(3)
        #expect(!EtcdServer.appliesQuickly(cut))
    }

    /// A failure while the caller applies inline is thrown to it and stops the thread too.
    @Test func anInlineFailureReachesTheCallerAndStopsTheThread() throws {
        let m = Machine(failAt: 2)
        let a = Self.make(m, inline: true)
        #expect(throws: FakeError.self) { try a.hand(Self.entries(1...3)) }
        #expect(throws: FakeError.self) { try a.checkFailure() }
        #expect(throws: FakeError.self) { try a.hand(Self.entries(4...4)) }
        #expect(m.seen.withLock { $0.applied } == [1])
        a.stop()
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

    /// Answers handed to event loops while a long queued item is applied leave per slice of
    /// `maxInlineEntries`, not when the item's last entry is done.
    @Test func answersOfALongItemLeavePerSlice() async throws {
        let m = Machine()
        let loop = NIOSingletons.posixEventLoopGroup.next()
        let answered = Mutex<[UInt64]>([])
        m.gateAt = 100
        m.onApply = { index in EventLoopHandoff.execute({ answered.withLock { $0.append(index) } }, on: loop) }
        let a = Self.make(m, commitInterval: 10, inline: false)
        try a.hand(Self.entries(1...130))
        let slice = UInt64(Applier.maxInlineEntries)
        // Entry 100 holds the thread: the first slice is answered meanwhile, nothing after it.
        try await waitUntil { answered.withLock { $0.count } >= Int(slice) }
        #expect(answered.withLock { $0 } == Array(1...slice))
        m.gate.signal()
        try a.call {}
        try await waitUntil { answered.withLock { $0.count } == 130 }
        #expect(answered.withLock { $0 } == Array(1...130))
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
