import EtcdConfig
import EtcdProto
import Foundation
import Logging
import Synchronization
import Testing
@testable import Server

@Suite("Quota, alarms, corruption rules (unit)")
struct QuotaAlarmUnitTests {
    private func put(_ key: String, _ valueBytes: Int) -> Etcdserverpb_RequestOp {
        var op = Etcdserverpb_RequestOp()
        op.requestPut = putRequest(key, String(repeating: "v", count: valueBytes))
        return op
    }

    @Test func quotaFlagDefaultsAndDisabling() {
        #expect(BackendQuota(flag: 0).limit == Int64(2_147_483_648))
        #expect(BackendQuota(flag: 4096).limit == 4096)
        #expect(BackendQuota(flag: -1).limit == nil)
        // Disabled: everything passes, however large.
        #expect(BackendQuota(flag: -1).admits(cost: 1 << 30, size: 1 << 40))
    }

    @Test func quotaAdmitsOnlyBelowTheLimit() {
        let q = BackendQuota(flag: 1000)
        #expect(q.admits(cost: 100, size: 899))
        #expect(!q.admits(cost: 100, size: 900))   // etcd: size + cost must stay below the quota
        #expect(!q.admits(cost: 100, size: 5000))
        #expect(q.admits(cost: 0, size: 5000))     // free requests always pass
    }

    @Test func costEstimates() {
        var req = Swetcd_Internal_InternalRequest()
        req.put = putRequest("key", String(repeating: "x", count: 1000))
        #expect(BackendQuota.cost(req.request) == 256 + 3 + 1000)

        var grant = Etcdserverpb_LeaseGrantRequest()
        grant.ttl = 10
        req.leaseGrant = grant
        #expect(BackendQuota.cost(req.request) == 64)

        var del = Etcdserverpb_DeleteRangeRequest()
        del.key = Data("k".utf8)
        req.deleteRange = del
        #expect(BackendQuota.cost(req.request) == 0)
        req.compaction = Etcdserverpb_CompactionRequest()
        #expect(BackendQuota.cost(req.request) == 0)
        req.alarm = Etcdserverpb_AlarmRequest()
        #expect(BackendQuota.cost(req.request) == 0)

        // A txn costs its costlier branch; nested puts count; reads cost nothing.
        var txn = Etcdserverpb_TxnRequest()
        txn.success = [put("a", 10), put("b", 20)]
        var inner = Etcdserverpb_TxnRequest()
        inner.success = [put("c", 500)]
        var nested = Etcdserverpb_RequestOp()
        nested.requestTxn = inner
        var read = Etcdserverpb_RequestOp()
        read.requestRange = rangeRequest("a")
        txn.failure = [nested, read]
        req.txn = txn
        #expect(BackendQuota.cost(req.request) == 256 + 1 + 500)
        txn.failure = [read]
        req.txn = txn
        #expect(BackendQuota.cost(req.request) == (256 + 1 + 10) + (256 + 1 + 20))
        txn.success = [read]
        req.txn = txn
        #expect(BackendQuota.cost(req.request) == 0)
    }

    @Test func alarmKeysRoundTripAndRejectGarbage() {
        let k = AlarmKey(memberID: 0x8e9e05c52164694d, type: .nospace)
        #expect(k.bucketKey.count == 12)
        #expect(AlarmKey(bucketKey: k.bucketKey) == k)
        #expect(AlarmKey(bucketKey: AlarmKey(memberID: 1, type: .corrupt).bucketKey)?.type == .corrupt)
        #expect(AlarmKey(bucketKey: Array(k.bucketKey.prefix(11))) == nil)
        #expect(AlarmKey(bucketKey: be8(1) + [0, 0, 0, 9]) == nil)       // unknown type
        #expect(AlarmKey(bucketKey: be8(1) + [0, 0, 0, 0]) == nil)       // NONE is never stored
    }

    private func be8(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }

    @Test func statusTextIsEtcdsCompactForm() {
        #expect(AlarmKey(memberID: 10276657743932975437, type: .nospace).statusText
                == "memberID:10276657743932975437 alarm:NOSPACE ")
        #expect(AlarmKey(memberID: 0, type: .corrupt).statusText == "alarm:CORRUPT ")
    }

    @Test func metricsReportQuotaAndAutoCompactions() {
        let metrics = ServerMetrics(memberID: 1)
        var sample = MetricsSample()
        sample.quotaBackendBytes = 1234
        var text = metrics.render(sample: sample)
        #expect(text.contains("etcd_server_quota_backend_bytes 1234"))
        #expect(text.contains("swetcd_server_auto_compactions_total 0"))
        metrics.autoCompacted()
        metrics.autoCompacted()
        text = metrics.render(sample: sample)
        #expect(text.contains("swetcd_server_auto_compactions_total 2"))
    }

    @Test func initialCheckFlagsOnlyComparableMismatches() {
        let local = KVHash(hash: 111, revision: 50, compactRevision: 10)
        let peers = [
            PeerHashResult(memberID: 2, outcome: .hash(hash: 111, currentRevision: 50, compactRevision: 10)),
            PeerHashResult(memberID: 3, outcome: .hash(hash: 999, currentRevision: 60, compactRevision: 10)),
            PeerHashResult(memberID: 4, outcome: .hash(hash: 999, currentRevision: 60, compactRevision: 20)),
            PeerHashResult(memberID: 5, outcome: .compacted),
            PeerHashResult(memberID: 6, outcome: .future),
            PeerHashResult(memberID: 7, outcome: .failed("connection refused")),
        ]
        #expect(CorruptCheck.initialMismatches(local: local, peers: peers) == [3])
        #expect(CorruptCheck.initialMismatches(local: local, peers: Array(peers.prefix(1))).isEmpty)
    }

    @Test func periodicCheckRules() {
        let before = KVHash(hash: 111, revision: 50, compactRevision: 10)
        func suspects(_ peers: [PeerHashResult], after: KVHash? = nil) -> [UInt64] {
            CorruptCheck.periodicMismatches(leader: 1, before: before, after: after ?? before, peers: peers).map(\.memberID)
        }
        // Agreement, or nothing comparable: no suspects.
        #expect(suspects([PeerHashResult(memberID: 2, outcome: .hash(hash: 111, currentRevision: 50, compactRevision: 10)),
                          PeerHashResult(memberID: 3, outcome: .failed("down")),
                          PeerHashResult(memberID: 4, outcome: .future)]).isEmpty)
        // A different compact revision below the leader's is not comparable.
        #expect(suspects([PeerHashResult(memberID: 2, outcome: .hash(hash: 5, currentRevision: 50, compactRevision: 5))]).isEmpty)
        // Same compact revision, different hash.
        #expect(suspects([PeerHashResult(memberID: 2, outcome: .hash(hash: 5, currentRevision: 50, compactRevision: 10))]) == [2])
        // A follower ahead of the leader, in revision or in compaction.
        #expect(suspects([PeerHashResult(memberID: 3, outcome: .hash(hash: 111, currentRevision: 51, compactRevision: 10))]) == [3])
        #expect(suspects([PeerHashResult(memberID: 4, outcome: .hash(hash: 7, currentRevision: 50, compactRevision: 11))]) == [4])
        // The leader's own hash moved while its revisions did not.
        #expect(suspects([], after: KVHash(hash: 112, revision: 50, compactRevision: 10)) == [1])
        // ... but a write in between explains a new hash.
        #expect(suspects([], after: KVHash(hash: 112, revision: 51, compactRevision: 10)).isEmpty)
    }
}

// MARK: - Auto-compaction schedule on a manual clock

/// A clock that moves only when the test advances it. Each `sleep` parks until the clock
/// reaches its deadline; `parked` yields once per sleep call, so a test can wait (event, not
/// time) until the compactor has finished a step and is waiting again.
final class ManualClock: CompactorClock {
    private struct Sleeper { let deadline: Duration; let continuation: CheckedContinuation<Void, any Error> }
    private struct State { var offset: Duration = .zero; var sleepers: [Sleeper] = []; var closed = false }
    private let state = Mutex(State())
    private let start = ContinuousClock.now
    let parked: AsyncStream<Void>
    private let parkedContinuation: AsyncStream<Void>.Continuation

    init() {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        parked = stream
        parkedContinuation = continuation
    }

    var now: ContinuousClock.Instant { start + state.withLock { $0.offset } }

    func sleep(for duration: Duration) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let closed = state.withLock { s -> Bool in
                if s.closed { return true }
                s.sleepers.append(Sleeper(deadline: s.offset + duration, continuation: c))
                return false
            }
            if closed { c.resume(throwing: CancellationError()) } else { parkedContinuation.yield() }
        }
    }

    /// Moves time forward and wakes the sleepers that are due.
    func advance(by d: Duration) {
        let due = state.withLock { s -> [Sleeper] in
            s.offset += d
            let due = s.sleepers.filter { $0.deadline <= s.offset }
            s.sleepers.removeAll { $0.deadline <= s.offset }
            return due
        }
        for s in due { s.continuation.resume() }
    }

    /// Fails every sleeper (ends the compactor loop) and refuses new sleeps.
    func close() {
        let all = state.withLock { s -> [Sleeper] in
            s.closed = true
            defer { s.sleepers = [] }
            return s.sleepers
        }
        for s in all { s.continuation.resume(throwing: CancellationError()) }
        parkedContinuation.finish()
    }
}

/// A compaction target whose leadership, revision and failures the test sets.
final class FakeCompactionTarget: CompactionTarget {
    private struct State { var leader = true; var revision: Int64 = 1; var compactions: [Int64] = []; var failNext: EtcdError? }
    private let state = Mutex(State())

    var isLeader: Bool {
        get { state.withLock { $0.leader } }
        set { state.withLock { $0.leader = newValue } }
    }
    var currentRevision: Int64 {
        get { state.withLock { $0.revision } }
        set { state.withLock { $0.revision = newValue } }
    }
    var compactions: [Int64] { state.withLock { $0.compactions } }
    func failNext(_ e: EtcdError) { state.withLock { $0.failNext = e } }

    func compact(toRevision revision: Int64) async throws {
        try state.withLock { s in
            if let e = s.failNext {
                s.failNext = nil
                throw e
            }
            s.compactions.append(revision)
        }
    }
}

/// Runs a compactor on a manual clock; `step` advances by one interval and returns once the
/// compactor is parked again.
struct CompactorHarness {
    let clock = ManualClock()
    let target = FakeCompactionTarget()
    let compactor: AutoCompactor
    let task: Task<Void, Never>
    private var parked: AsyncStream<Void>.AsyncIterator

    init(_ policy: AutoCompaction) async throws {
        var logger = Logger(label: "compactor-test")
        logger.logLevel = .critical
        compactor = AutoCompactor(policy: policy, clock: clock, target: target, logger: logger)
        var it = clock.parked.makeAsyncIterator()
        let c = compactor
        task = Task { await c.run() }
        _ = await it.next()   // parked in its first sleep
        parked = it
    }

    /// Advances by `interval` and waits until the compactor sleeps again.
    mutating func step(_ interval: Duration) async {
        var it = parked
        clock.advance(by: interval)
        _ = await it.next()
        parked = it
    }

    func finish() async {
        clock.close()
        await task.value
    }
}

@Suite("Auto-compaction schedule (manual clock)")
struct AutoCompactionScheduleTests {
    @Test func retentionParsing() throws {
        #expect(try AutoCompaction(mode: "periodic", retention: "2") == .periodic(.seconds(7200)))   // bare = hours
        #expect(try AutoCompaction(mode: "periodic", retention: "30m") == .periodic(.seconds(1800)))
        #expect(try AutoCompaction(mode: "periodic", retention: "0") == .disabled)
        #expect(try AutoCompaction(mode: "revision", retention: "1000") == .revision(1000))
        #expect(AutoCompactor.sampleInterval(.seconds(600)) == .seconds(60))
        #expect(AutoCompactor.sampleInterval(.seconds(86400)) == .seconds(360))
        #expect(AutoCompactor.compactInterval(.seconds(86400)) == .seconds(3600))
        #expect(AutoCompactor.samplesKept(.seconds(7200)) == 21)
    }

    /// Retention 10 minutes: a sample every minute; first compaction after 10 minutes to the
    /// revision of minute 0, then one every 10 minutes to the revision about 10 minutes old.
    @Test func periodicUnderAnHour() async throws {
        var h = try await CompactorHarness(.periodic(.seconds(600)))
        // The sample at minute 0 is the fake's initial revision 1; the one at minute m is 100 + m.
        for minute in 1...25 {
            h.target.currentRevision = 100 + Int64(minute)
            await h.step(.seconds(60))
            if minute == 9 { #expect(h.target.compactions.isEmpty) }
            if minute == 10 { #expect(h.target.compactions == [1]) }   // the sample of minute 0
            if minute == 19 { #expect(h.target.compactions.count == 1) }
        }
        // Compaction at minute 20 keeps 11 samples (minutes 9..19): compacts to minute 9's sample.
        #expect(h.target.compactions == [1, 109])
        await h.finish()
    }

    /// Retention 2 hours: a sample every 6 minutes; first compaction after 2 hours, then hourly,
    /// each to the oldest of the 21 samples kept (at least 2 hours old).
    @Test func periodicOfHoursCompactsHourly() async throws {
        var h = try await CompactorHarness(.periodic(.seconds(7200)))
        // The sample at minute 0 is the fake's initial revision 1; the one at minute t is 1000 + t.
        var t = 0
        var log: [Int] = []
        while t < 300 {
            h.target.currentRevision = 1000 + Int64(t + 6)
            await h.step(.seconds(360))
            t += 6
            if h.target.compactions.count > log.count { log.append(t) }
        }
        #expect(log == [120, 180, 240, 300])
        // At 180 the samples kept are minutes 54...174: the oldest (revision 1054) is compacted.
        #expect(h.target.compactions == [1, 1054, 1114, 1174])
        await h.finish()
    }

    @Test func periodicWaitsWhileNotLeaderButKeepsSampling() async throws {
        var h = try await CompactorHarness(.periodic(.seconds(10)))
        h.target.isLeader = false
        for i in 1...30 {
            h.target.currentRevision = Int64(10 + i)
            await h.step(.seconds(1))
        }
        #expect(h.target.compactions.isEmpty)
        h.target.isLeader = true
        await h.step(.seconds(1))
        // Ten seconds have long passed: compacts at once to the sample ten seconds old.
        #expect(h.target.compactions == [30])
        await h.finish()
    }

    @Test func periodicRetriesAfterAFailureAndTreatsCompactedAsDone() async throws {
        var h = try await CompactorHarness(.periodic(.seconds(10)))
        h.target.failNext(.timeout)
        for i in 1...10 {
            h.target.currentRevision = Int64(100 + i)
            await h.step(.seconds(1))
        }
        #expect(h.target.compactions.isEmpty)   // the attempt at 10 s failed
        await h.step(.seconds(1))
        #expect(h.target.compactions.count == 1) // retried one sample later
        #expect(h.compactor.completed == 1)
        h.target.failNext(.compacted)
        // Writes go on, so each compaction has a new revision to compact to.
        for _ in 1...10 { h.target.currentRevision += 1; await h.step(.seconds(1)) }
        #expect(h.target.compactions.count == 1)
        for _ in 1...9 { h.target.currentRevision += 1; await h.step(.seconds(1)) }
        #expect(h.target.compactions.count == 1) // "compacted" counted as success: next in 10 s
        h.target.currentRevision += 1
        await h.step(.seconds(1))
        #expect(h.target.compactions.count == 2)
        await h.finish()
    }

    /// A store without writes: the first periodic compaction compacts to its revision 1 (as
    /// etcd 3.4 and 3.6 do), then nothing is proposed while the revision stays there (etcd 3.6);
    /// once writes come, the next sample whose oldest kept revision moved compacts to it.
    @Test func periodicSkipsTheRevisionItLastCompactedTo() async throws {
        var h = try await CompactorHarness(.periodic(.seconds(10)))
        for _ in 1...60 { await h.step(.seconds(1)) }
        #expect(h.target.compactions == [1])
        #expect(h.compactor.completed == 1)
        h.target.currentRevision = 7
        // The first sample of 7 (taken one second from now) is the oldest of the 11 kept
        // eleven seconds after that.
        for _ in 1...11 { await h.step(.seconds(1)) }
        #expect(h.target.compactions == [1])
        await h.step(.seconds(1))
        #expect(h.target.compactions == [1, 7])
        for _ in 1...30 { await h.step(.seconds(1)) }
        #expect(h.target.compactions == [1, 7])
        await h.finish()
    }

    @Test func revisionModeEveryFiveMinutes() async throws {
        var h = try await CompactorHarness(.revision(1000))
        h.target.currentRevision = 500
        await h.step(.seconds(300))
        #expect(h.target.compactions.isEmpty)        // 500 - 1000 is not a revision
        h.target.currentRevision = 5000
        h.clock.advance(by: .seconds(299))           // not yet 5 minutes: the compactor sleeps on
        #expect(h.target.compactions.isEmpty)
        await h.step(.seconds(1))
        #expect(h.target.compactions == [4000])
        await h.step(.seconds(300))
        #expect(h.target.compactions == [4000])      // nothing new to compact
        h.target.currentRevision = 6000
        h.target.isLeader = false
        await h.step(.seconds(300))
        #expect(h.target.compactions == [4000])      // followers never compact
        h.target.isLeader = true
        await h.step(.seconds(300))
        #expect(h.target.compactions == [4000, 5000])
        await h.finish()
    }
}
