import EtcdProto
import Foundation
import MVCC
import Synchronization
import Testing
@testable import Server

@Suite("Core: waiters, IDs, errors")
struct CoreUnitTests {
    @Test func waiterGetsResultTriggeredBeforeItWaits() async throws {
        let w = Waiters<Int>()
        w.register(7)
        w.trigger(7, .success(42))
        #expect(try await w.wait(7, timeout: .seconds(5), timeoutError: EtcdError.timeout) == 42)
        #expect(w.count == 0)
    }

    @Test func waiterTimesOutWithTheGivenError() async throws {
        let w = Waiters<Int>()
        w.register(1)
        await #expect(throws: EtcdError.timeout) {
            try await w.wait(1, timeout: .milliseconds(20), timeoutError: EtcdError.timeout)
        }
        // A late result is dropped, not delivered to anyone.
        w.trigger(1, .success(1))
        #expect(w.count == 0)
    }

    @Test func timeoutsNeedNoTaskPerWaiterAndTheSweepStops() async throws {
        let w = Waiters<Int>(sweepInterval: .milliseconds(5))
        // Many waiters with different deadlines: each ends with its own error, none early,
        // and once nobody waits no sweep stays scheduled.
        try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
            for i in 0..<200 {
                w.register(UInt64(i))
                group.addTask {
                    let start = ContinuousClock.now
                    let timeout = Duration.milliseconds(10 + i % 5 * 10)
                    do {
                        _ = try await w.wait(UInt64(i), timeout: timeout, timeoutError: EtcdError.timeout)
                        return (i, false)
                    } catch let e as EtcdError where e == .timeout {
                        return (i, ContinuousClock.now - start >= timeout)
                    }
                }
            }
            // One of them gets its result instead.
            w.trigger(0, .success(7))
            var ended = 0
            for try await (i, late) in group {
                ended += 1
                if i != 0 { #expect(late, "waiter \(i) timed out before its deadline") }
            }
            #expect(ended == 200)
        }
        #expect(w.count == 0)
        let deadline = ContinuousClock.now + .seconds(5)
        while w.isSweeping, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(!w.isSweeping)
    }

    @Test func callbackWaitersGetTheirResultTheirTimeoutOrTheStopOnce() async throws {
        let w = Waiters<Int>(sweepInterval: .milliseconds(5))
        final class Seen: Sendable {
            let results = Mutex<[UInt64: [Result<Int, any Error>]]>([:])
            func add(_ id: UInt64, _ r: Result<Int, any Error>) { results.withLock { $0[id, default: []].append(r) } }
            func count(_ id: UInt64) -> Int { results.withLock { $0[id]?.count ?? 0 } }
        }
        let seen = Seen()
        w.register(1, timeout: .seconds(600), timeoutError: EtcdError.timeout) { seen.add(1, $0) }
        w.register(2, timeout: .milliseconds(20), timeoutError: EtcdError.timeout) { seen.add(2, $0) }
        w.register(3, timeout: .seconds(600), timeoutError: EtcdError.timeout) { seen.add(3, $0) }
        #expect(w.isRegistered(1))
        w.trigger(1, .success(11))
        w.trigger(1, .success(12))  // a second result for the same ID is dropped
        let deadline = ContinuousClock.now + .seconds(5)
        while seen.count(2) == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        w.failAll(EtcdError.stopped)
        w.trigger(2, .success(22))  // too late: already timed out
        let r = seen.results.withLock { $0 }
        #expect(r[1]?.count == 1)
        #expect((try? r[1]?.first?.get()) == 11)
        #expect(r[2]?.count == 1)
        #expect((r[2]?.first).map { if case .failure(let e as EtcdError) = $0 { e == .timeout } else { false } } == true)
        #expect(r[3]?.count == 1)
        #expect((r[3]?.first).map { if case .failure(let e as EtcdError) = $0 { e == .stopped } else { false } } == true)
        #expect(w.count == 0)
    }

    @Test func failAllResumesSuspendedWaiters() async throws {
        let w = Waiters<Int>()
        w.register(3)
        let r = Task { try await w.wait(3, timeout: .seconds(10), timeoutError: EtcdError.timeout) }
        // Fail only once the waiter is suspended (polls a state flip, bounded by the timeout).
        let deadline = ContinuousClock.now + .seconds(5)
        while !w.isSuspended(3), ContinuousClock.now < deadline { await Task.yield() }
        w.failAll(EtcdError.stopped)
        await #expect(throws: EtcdError.stopped) { try await r.value }
    }

    @Test func requestIDsAreUniqueAndCarryTheMember() {
        let g = RequestIDGenerator(memberID: 0xABCD_1234, startMilliseconds: 1_000)
        var seen = Set<UInt64>()
        for _ in 0..<10_000 { seen.insert(g.next()) }
        #expect(seen.count == 10_000)
        #expect(seen.allSatisfy { $0 >> 48 == 0x1234 })
    }

    @Test func storeErrorsGetEtcdsTextAndCode() {
        #expect(EtcdError.from(MVCCError.compacted) == .compacted)
        #expect(EtcdError.compacted.message == "etcdserver: mvcc: required revision has been compacted")
        #expect(EtcdError.compacted.code == .outOfRange)
        #expect(EtcdError.from(LeaseError.leaseNotFound(5)).code == .notFound)
        #expect(EtcdError.from(LeaseError.ttlTooLarge(1)) == .leaseTTLTooLarge)
        #expect(EtcdError.timeout.rpcError.message == "etcdserver: request timed out")
        #expect(EtcdError.from(MVCCError.stopped("x")).code == .unknown)
    }
}

@Suite("Core: single-member server", .serialized)
struct CoreServerTests {
    @Test func putRangeTxnDeleteThroughTheLog() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        let base = s.currentRevision
        let put = try await s.put(putRequest("a", "1"))
        #expect(put.header.revision == base + 1)
        #expect(put.header.memberID == s.memberID && put.header.clusterID == s.clusterID)
        #expect(put.header.raftTerm >= 1)
        #expect(s.members().map(\.name) == ["n1"] && s.members().first?.id == s.memberID)
        #expect(s.isLeader && s.leaderID == s.memberID)
        _ = try await s.put(putRequest("b", "2"))
        let r = try await s.range(rangeRequest("a", end: "c"))
        #expect(r.kvs.map { String(decoding: $0.key, as: UTF8.self) } == ["a", "b"])
        #expect(r.header.revision == base + 2)
        let ser = try await s.range(rangeRequest("a", serializable: true))
        #expect(ser.kvs.first?.value == Data("1".utf8))

        var txn = Etcdserverpb_TxnRequest()
        var cmp = Etcdserverpb_Compare()
        cmp.key = Data("a".utf8)
        cmp.target = .value
        cmp.value = Data("1".utf8)
        txn.compare = [cmp]
        var op = Etcdserverpb_RequestOp()
        op.request = .requestPut(putRequest("a", "2"))
        txn.success = [op]
        let t = try await s.txn(txn)
        #expect(t.succeeded && t.header.revision == base + 3)
        let t2 = try await s.txn(txn)
        #expect(!t2.succeeded)

        var del = Etcdserverpb_DeleteRangeRequest()
        del.key = Data("a".utf8)
        del.rangeEnd = Data("z".utf8)
        #expect(try await s.deleteRange(del).deleted == 2)
        await #expect(throws: EtcdError.keyNotProvided) { try await s.put(putRequest("", "x")) }
        await #expect(throws: EtcdError.futureRevision) { try await s.range(rangeRequest("a", revision: 99)) }
        await s.stop()
        await #expect(throws: EtcdError.stopped) { try await s.put(putRequest("x", "y")) }
    }

    @Test func tooManyTxnOpsIsRefused() async throws {
        let f = CoreFixture(extraArgs: ["--max-txn-ops", "2"])
        defer { f.remove() }
        let s = try await f.start()
        var txn = Etcdserverpb_TxnRequest()
        for i in 0..<3 {
            var op = Etcdserverpb_RequestOp()
            op.request = .requestPut(putRequest("k\(i)", "v"))
            txn.success.append(op)
        }
        await #expect(throws: EtcdError.tooManyOps) { try await s.txn(txn) }
        // --max-request-bytes (1.5 MiB by default) bounds what is proposed.
        let big = String(repeating: "x", count: 1_600_000)
        await #expect(throws: EtcdError.requestTooLarge) { try await s.put(putRequest("big", big)) }
        #expect(try await s.range(rangeRequest("big")).kvs.isEmpty)
        await s.stop()
    }

    @Test func leasesGrantAttachRevoke() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        var g = Etcdserverpb_LeaseGrantRequest()
        g.ttl = 30
        let granted = try await s.leaseGrant(g)
        #expect(granted.id != 0 && granted.ttl == 30)
        _ = try await s.put(putRequest("lk", "v", lease: granted.id))
        var ttl = Etcdserverpb_LeaseTimeToLiveRequest()
        ttl.id = granted.id
        ttl.keys = true
        let t = try await s.leaseTimeToLive(ttl)
        #expect(t.keys == [Data("lk".utf8)] && t.grantedTtl == 30)
        #expect(try await s.leaseRenew(granted.id).ttl == 30)
        var revoke = Etcdserverpb_LeaseRevokeRequest()
        revoke.id = granted.id
        _ = try await s.leaseRevoke(revoke)
        #expect(try await s.range(rangeRequest("lk")).kvs.isEmpty)
        #expect(try await s.leaseTimeToLive(ttl).ttl == -1)
        await #expect(throws: EtcdError.leaseNotFound) { try await s.put(putRequest("x", "v", lease: granted.id)) }
        await s.stop()
    }

    @Test func restartReplaysAndSnapshotsKeepState() async throws {
        let f = CoreFixture(extraArgs: ["--snapshot-count", "10"])
        defer { f.remove() }
        var s = try await f.start()
        for i in 0..<25 { _ = try await s.put(putRequest("k\(i)", "v\(i)")) }
        var g = Etcdserverpb_LeaseGrantRequest()
        g.ttl = 100
        let lease = try await s.leaseGrant(g)
        _ = try await s.put(putRequest("leased", "v", lease: lease.id))
        let rev = s.currentRevision
        await s.stop()
        let snaps = try FileManager.default.contentsOfDirectory(atPath: f.dataDir + "/member/snap").filter { $0.hasSuffix(".snap") }
        #expect(!snaps.isEmpty)

        s = try await f.start()
        #expect(s.currentRevision == rev)
        let all = try await s.range(rangeRequest("k", end: "l"))
        #expect(all.kvs.count == 25)
        var ttl = Etcdserverpb_LeaseTimeToLiveRequest()
        ttl.id = lease.id
        ttl.keys = true
        #expect(try await s.leaseTimeToLive(ttl).keys == [Data("leased".utf8)])
        _ = try await s.put(putRequest("after", "restart"))
        #expect(s.currentRevision == rev + 1)
        await s.stop()
    }

    @Test func compactionMakesOldRevisionsUnreadable() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        var revs: [Int64] = []
        for v in ["1", "2", "3"] { revs.append(try await s.put(putRequest("c", v)).header.revision) }
        var c = Etcdserverpb_CompactionRequest()
        c.revision = revs[1]
        c.physical = true
        _ = try await s.compact(c)
        await #expect(throws: EtcdError.compacted) { try await s.range(rangeRequest("c", revision: revs[0])) }
        #expect(try await s.range(rangeRequest("c", revision: revs[1])).kvs.first?.value == Data("2".utf8))
        await #expect(throws: EtcdError.compacted) { try await s.compact(c) }
        await s.stop()
    }

    @Test func foreignDirectoryIsRefused() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        try FileManager.default.createDirectory(atPath: f.dataDir + "/member/wal", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: f.dataDir + "/member/wal/x.wal", contents: Data([1, 2, 3]))
        await #expect(throws: ServerStartError.self) { _ = try await f.start() }
        #expect(FileManager.default.fileExists(atPath: f.dataDir + "/member/wal/x.wal"))
        #expect(!FileManager.default.fileExists(atPath: f.dataDir + "/member/snap"))
    }
}

@Suite("Core: watch responses")
struct CoreWatchConvertTests {
    @Test func largeResponsesSplitIntoFragmentsOnlyWhenAsked() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        let events = (0..<10).map { i in
            Event(type: .put, kv: KeyValue(key: Array("k\(i)".utf8), createRevision: 5, modRevision: 5, version: 1,
                                           value: [UInt8](repeating: 1, count: 100)))
        }
        let wr = WatchResponse(watchID: 3, events: events, revision: 5)
        let whole = WatchService.convert(wr, server: s, fragment: false, maxBytes: 300)
        #expect(whole.count == 1 && whole[0].events.count == 10 && !whole[0].fragment)
        let parts = WatchService.convert(wr, server: s, fragment: true, maxBytes: 300)
        #expect(parts.count > 1)
        #expect(parts.dropLast().allSatisfy(\.fragment) && parts.last?.fragment == false)
        #expect(parts.flatMap(\.events).map(\.kv.key) == whole[0].events.map(\.kv.key))
        #expect(parts.allSatisfy { $0.watchID == 3 && $0.header.revision == 5 })
        let compacted = WatchService.convert(WatchResponse(watchID: 1, events: [], revision: 9, compactRevision: 4, canceled: true),
                                             server: s, fragment: false, maxBytes: 300)
        #expect(compacted[0].canceled && compacted[0].compactRevision == 4)
        await s.stop()
    }
}
