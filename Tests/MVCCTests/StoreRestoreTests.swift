import Foundation
import LMDBBackend
import Synchronization
import Testing
@testable import MVCC

/// A follower's keyspace and a leader's, in separate directories, sharing a history the
/// leader may extend; `install()` restores the follower in place from a copy of the leader's
/// backend, as a snapshot install does.
private final class FollowerAndLeader {
    let followerDir = StoreDir()
    let leaderDir = StoreDir()
    let follower: MVCCStore
    let leader: MVCCStore

    init(follower options: MVCCStore.Options = MVCCStore.Options()) throws {
        follower = try followerDir.open(options: options)
        leader = try leaderDir.open()
    }

    /// The same write on both, with the same revision.
    @discardableResult
    func both(_ k: String, _ v: String) throws -> Int64 {
        let rev = try follower.put(k, v)
        #expect(try leader.put(k, v) == rev)
        return rev
    }

    /// Copies the leader's backend beside the follower's db and restores the follower from it.
    func install() throws {
        let file = followerDir.path + "/\(UUID().uuidString).snap.db"
        try leader.backend.copy(toPath: file)
        try follower.restore(replacingBackend: { try follower.backend.replace(withFileAt: file) })
    }

    /// Runs catch-up steps until no watcher is unsynced (bounded).
    func syncAll() throws {
        var steps = 0
        while try follower.syncWatchers() > 0 {
            steps += 1
            try #require(steps < 100, "catch-up did not finish")
        }
    }
}

@Suite struct StoreRestoreTests {
    @Test func keptWatchersCatchUpFromTheNewBackendWithoutGapOrRepeat() throws {
        var o = MVCCStore.Options()
        o.watchCatchUpBatch = 2
        let p = try FollowerAndLeader(follower: o)
        try p.both("k/1", "a")      // 2
        try p.both("other", "x")    // 3
        try p.both("k/2", "b")      // 4
        try p.both("k/3", "c")      // 5
        try p.both("k/4", "d")      // 6
        let ws = p.follower.makeWatchStream()
        defer { ws.close() }
        // Half-way through its catch-up when the snapshot arrives.
        let behind = try ws.watch(key: b("k/"), rangeEnd: b("k0"), startRevision: 2)
        try p.follower.syncWatchers()
        // Synced, with prevKV (read from the new backend after the install).
        let live = try ws.watch(key: b("k/"), rangeEnd: b("k0"), options: WatchOptions(prevKV: true))
        try p.both("k/2", "b2")     // 7
        // Only the leader applies these; the follower gets them through the snapshot.
        try p.leader.put("k/5", "e")        // 8
        try p.leader.del("k/1")             // 9
        try p.leader.put("other", "y")      // 10
        try p.leader.put("k/2", "b3")       // 11
        let before = drain(ws)
        #expect(eventsOf(before, id: behind).map(\.kv.modRevision) == [2])
        #expect(eventsOf(before, id: live).map(\.kv.modRevision) == [7])

        try p.install()
        #expect(p.follower.currentRevision == 11)
        #expect(try p.follower.get("k/5")?.value == b("e"))
        #expect(try p.follower.get("k/1") == nil)
        #expect(p.follower.watcherCounts == (0, 2, 0))
        try p.syncAll()
        #expect(p.follower.watcherCounts == (2, 0, 0))
        let later = try p.follower.put("k/6", "f")   // after the install: reaches both
        #expect(later == 12)
        let after = drain(ws)
        let l = eventsOf(after, id: live)
        #expect(l.map(\.kv.modRevision) == [8, 9, 11, 12])
        #expect(l.map(\.type) == [.put, .delete, .put, .put])
        #expect(l[2].prevKv?.value == b("b2"))
        #expect(l[1].prevKv?.value == b("a"))
        #expect(eventsOf(after, id: behind).map(\.kv.modRevision) == [4, 5, 6, 7, 8, 9, 11, 12])
        #expect(after.allSatisfy { !$0.canceled })
    }

    @Test func aWatcherBehindTheNewCompactionGetsTheCompactedResponse() throws {
        let p = try FollowerAndLeader()
        for i in 0..<3 { try p.both("k", "\(i)") }   // 2...4
        let ws = p.follower.makeWatchStream()
        defer { ws.close() }
        let id = try ws.watch(key: b("k"))          // needs 5 next
        var last: Int64 = 0
        for i in 3..<6 { last = try p.leader.put("k", "\(i)") }   // 5...7
        try p.leader.compact(last)

        try p.install()
        #expect(p.follower.compactRevision == last)
        try p.follower.syncWatchers()
        let rs = drain(ws)
        #expect(rs.count == 1)
        let r = try #require(rs.first)
        #expect(r.watchID == id && r.canceled && r.compactRevision == last && r.events.isEmpty)
        #expect(p.follower.watcherCounts == (0, 0, 0))
        // The same response as a new watch from a compacted revision gets.
        let fresh = try ws.watch(key: b("k"), startRevision: 5)
        var expected = try #require(ws.poll())
        #expect(expected.watchID == fresh)
        expected.watchID = id
        #expect(expected == r)
        #expect(throws: MVCCError.watcherNotFound) { try ws.cancel(id) }
    }

    @Test func aWatcherAtTheCurrentRevisionGetsNothingExtraThenNewPuts() throws {
        let p = try FollowerAndLeader()
        for i in 0..<3 { try p.both("k", "\(i)") }   // 2...4
        let ws = p.follower.makeWatchStream()
        defer { ws.close() }
        let id = try ws.watch(key: b("k"), options: WatchOptions(prevKV: true))
        // A watch from a revision not reached yet stays waiting for it.
        let future = try ws.watch(key: b("k"), startRevision: 7)

        try p.install()
        try p.syncAll()
        #expect(drain(ws).isEmpty)
        #expect(p.follower.watcherCounts == (2, 0, 0))
        let r5 = try p.follower.put("k", "x")
        let r6 = try p.follower.put("k", "y")
        let r7 = try p.follower.put("k", "z")
        let rs = drain(ws)
        let mine = eventsOf(rs, id: id)
        #expect(mine.map(\.kv.modRevision) == [r5, r6, r7])
        #expect(mine.first?.prevKv?.value == b("2"))
        #expect(eventsOf(rs, id: future).map(\.kv.modRevision) == [r7])
    }

    @Test func aParkedWatcherKeepsItsParkedResponseAndLosesNothing() throws {
        var o = MVCCStore.Options()
        o.watchStreamBuffer = 2
        let p = try FollowerAndLeader(follower: o)
        let ws = p.follower.makeWatchStream()
        defer { ws.close() }
        let id = try ws.watch(key: b("k"))
        var revs: [Int64] = []
        for i in 0..<6 { revs.append(try p.both("k", "\(i)")) }
        #expect(p.follower.watcherCounts.victims == 1)
        for i in 6..<10 { revs.append(try p.leader.put("k", "\(i)")) }

        try p.install()
        var got: [Int64] = []
        var rounds = 0
        while got.count < revs.count {
            rounds += 1
            try #require(rounds < 100, "got \(got)")
            if let r = ws.poll() {
                #expect(r.watchID == id && !r.canceled)
                got += r.events.map(\.kv.modRevision)
            } else {
                try p.follower.syncWatchers()
            }
        }
        #expect(got == revs)
        try p.syncAll()
        #expect(ws.poll() == nil)
    }

    /// A compaction job scheduled on the old contents does nothing to the new ones, even at
    /// the same revision.
    @Test func aCompactionJobOfTheOldContentsStops() throws {
        let p = try FollowerAndLeader()
        for i in 0..<3 { try p.follower.put("a", "\(i)") }    // 2...4
        let job = try p.follower.scheduleCompaction(4)
        for i in 0..<3 { try p.leader.put("b/\(i)", "v") }    // other keys at 2...4
        try p.leader.compact(4)
        try p.install()
        try job.run()
        #expect(try p.follower.keys("b/", "b0") == ["b/0", "b/1", "b/2"])
        #expect(try p.follower.keys("b/", "b0", rev: 4) == ["b/0", "b/1", "b/2"])
    }

    @Test func aFailedRestoreStopsTheKeyspaceWithAnError() throws {
        let p = try FollowerAndLeader()
        try p.both("k", "v")
        struct Refused: Error {}
        #expect(throws: Refused.self) { try p.follower.restore(replacingBackend: { throw Refused() }) }
        do {
            _ = try p.follower.get("k")
            Issue.record("a range after a failed restore succeeded")
        } catch MVCCError.stopped {
        }
    }

    /// Reads running while the contents are replaced get the old state or the new one.
    @Test(.timeLimit(.minutes(1))) func readsDuringRestoresSeeOldOrNewState() async throws {
        let p = try FollowerAndLeader()
        try p.both("k", "0")
        let follower = p.follower
        final class Shared: Sendable {
            let stop = Atomic<Bool>(false)
            let reads = Atomic<Int>(0)
            let bad = Mutex<[String]>([])
            let done = DispatchSemaphore(value: 0)
        }
        let shared = Shared()
        // A thread of its own: the reads block while a restore holds the keyspace, and a busy
        // loop on Swift's shared pool would starve the tests running beside this one.
        let reader = Thread { [follower, shared] in
            while !shared.stop.load(ordering: .acquiring) {
                do {
                    let r = try follower.range(RangeRequest(key: b("k")))
                    // Value i is written at revision i + 2.
                    if let kv = r.kvs.first, Int64(s(kv.value)).map({ $0 + 2 }) == kv.modRevision, r.revision >= kv.modRevision {
                        shared.reads.add(1, ordering: .releasing)
                    } else {
                        shared.bad.withLock { $0.append("\(r)") }
                    }
                } catch {
                    shared.bad.withLock { $0.append("\(error)") }
                }
            }
            shared.done.signal()
        }
        reader.start()
        /// Waits (bounded) until the reader has made progress since `count`.
        func readerMoved(since count: Int) async throws {
            let deadline = ContinuousClock.now + .seconds(20)
            while shared.reads.load(ordering: .acquiring) <= count {
                try #require(ContinuousClock.now < deadline, "the reader made no progress")
                try await Task.sleep(for: .milliseconds(1))
            }
        }
        for i in 1...15 {
            try await readerMoved(since: shared.reads.load(ordering: .acquiring))
            try p.leader.put("k", "\(i)")
            try p.install()
            #expect(try p.follower.get("k")?.value == b("\(i)"))
        }
        try await readerMoved(since: shared.reads.load(ordering: .acquiring))
        shared.stop.store(true, ordering: .releasing)
        #expect(shared.done.wait(timeout: .now() + 20) == .success, "the reader did not stop")
        let bad = shared.bad.withLock { $0 }
        #expect(bad.isEmpty, "\(bad.prefix(3))")
    }
}

@Suite struct LessorRestoreTests {
    @Test func restoreReplacesLeasesAndAttachesKeysInPlace() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 100)
        try f.lessor.grant(id: 2, ttl: 100)
        try f.put("one", lease: 1)
        try f.put("two", lease: 2)
        // The persisted records change underneath (a new backend): 1 is gone, 3 is new.
        try f.persistence.deleteLease(id: 1)
        try f.persistence.saveLease(PersistedLease(id: 3, ttl: 50, remainingTTL: 20))
        f.lessor.promote(extension: .zero)

        try f.lessor.restore(attaching: [(leaseKey("two"), 3), (leaseKey("x"), 2), (leaseKey("orphan"), 9)])
        #expect(f.lessor.leases() == [2, 3])
        #expect(!f.lessor.contains(id: 1))
        #expect(try f.lessor.keys(of: 2) == [leaseKey("x")])
        #expect(try f.lessor.keys(of: 3) == [leaseKey("two")])
        #expect(f.lessor.leaseID(ofKey: leaseKey("one")) == 0)
        #expect(f.lessor.leaseID(ofKey: leaseKey("orphan")) == 0)
        // Still the primary: clocks restarted from the checkpointed remaining TTL.
        #expect(f.lessor.isPrimary)
        #expect(try f.lessor.timeToLive(id: 3).remainingTTL == 20)
        f.clock.advance(by: .seconds(21))
        #expect(f.lessor.expiredLeases() == [3])
    }
}
