import Foundation
import Testing
@testable import MVCC

/// Drains every buffered response of `ws` without waiting.
func drain(_ ws: WatchStream) -> [WatchResponse] {
    var out: [WatchResponse] = []
    while let r = ws.poll() { out.append(r) }
    return out
}

func eventsOf(_ rs: [WatchResponse], id: Int64) -> [Event] {
    rs.filter { $0.watchID == id }.flatMap(\.events)
}

@Suite struct WatchTests {
    @Test func syncedWatcherGetsPutsAndDeletesOfItsRange() throws {
        let dir = StoreDir()
        let st = try dir.open()
        let ws = st.makeWatchStream()
        defer { ws.close() }
        let one = try ws.watch(key: b("a"))
        let pre = try ws.watch(key: b("p/"), rangeEnd: b("p0"))
        try st.put("a", "1")
        try st.put("p/x", "1")
        try st.put("q", "1")
        _ = try st.txn(TxnRequest(success: [.put(PutRequest(key: b("p/y"), value: b("2"))),
                                        .deleteRange(DeleteRangeRequest(key: b("a")))]))
        let rs = drain(ws)
        let a = eventsOf(rs, id: one)
        #expect(a.map(\.type) == [.put, .delete])
        #expect(a[1].kv == KeyValue(key: b("a"), modRevision: 5))
        let p = eventsOf(rs, id: pre)
        #expect(p.map { s($0.kv.key) } == ["p/x", "p/y"])
        #expect(rs.last?.revision == 5)
        // One response per watcher per write.
        #expect(rs.filter { $0.watchID == pre }.count == 2)
        #expect(st.watcherCounts.synced == 2)
    }

    @Test func catchUpFromHistoryInBatchesThenLive() throws {
        let dir = StoreDir()
        var o = MVCCStore.Options()
        o.watchCatchUpBatch = 3
        let st = try dir.open(options: o)
        for i in 1...10 { try st.put("k", "\(i)") }
        let ws = st.makeWatchStream()
        defer { ws.close() }
        let id = try ws.watch(key: b("k"), startRevision: 3, options: WatchOptions(prevKV: true))
        #expect(st.watcherCounts.unsynced == 1)
        var steps = 1
        while try st.syncWatchers() > 0 { steps += 1; try #require(steps < 10) }
        #expect(steps == 3, "9 revisions in steps of 3")
        try st.put("k", "11")
        let evs = eventsOf(drain(ws), id: id)
        #expect(evs.map(\.kv.modRevision) == Array(3...12))
        #expect(evs.allSatisfy { $0.prevKv?.modRevision == $0.kv.modRevision - 1 })
    }

    @Test func filtersAndPrevKV() throws {
        let dir = StoreDir()
        let st = try dir.open()
        let ws = st.makeWatchStream()
        defer { ws.close() }
        let noPut = try ws.watch(key: b("a"), rangeEnd: b("\0"), options: WatchOptions(prevKV: true, noPut: true))
        let noDel = try ws.watch(key: b("a"), rangeEnd: b("\0"), options: WatchOptions(noDelete: true))
        try st.put("a", "1")
        try st.put("b", "2")
        try st.del("a")
        let rs = drain(ws)
        let d = eventsOf(rs, id: noPut)
        #expect(d.map(\.type) == [.delete])
        #expect(d.first?.prevKv?.value == b("1"))
        #expect(eventsOf(rs, id: noDel).map(\.type) == [.put, .put])
    }

    @Test func compactedStartRevisionCancelsWithCompactRevision() throws {
        let dir = StoreDir()
        let st = try dir.open()
        for i in 1...5 { try st.put("k", "\(i)") }
        try st.compact(4)
        let ws = st.makeWatchStream()
        defer { ws.close() }
        let id = try ws.watch(key: b("k"), startRevision: 2)
        let r = try #require(ws.poll())
        #expect(r.watchID == id && r.canceled && r.compactRevision == 4)
        // An unsynced watcher overtaken by a compaction is canceled by the catch-up.
        let late = try ws.watch(key: b("k"), startRevision: 4)
        try st.put("k", "6")
        try st.compact(6)
        try st.syncWatchers()
        let c = drain(ws)
        #expect(c.count == 1 && c[0].watchID == late && c[0].canceled && c[0].compactRevision == 6)
        #expect(st.watcherCounts == (0, 0, 0))
    }

    @Test func slowConsumerIsParkedNotBlockingAndLosesNothing() async throws {
        let dir = StoreDir()
        var o = MVCCStore.Options()
        o.watchStreamBuffer = 2
        let st = try dir.open(options: o)
        let ws = st.makeWatchStream()
        defer { ws.close() }
        let id = try ws.watch(key: b("k"))
        for i in 1...20 { try st.put("k", "\(i)") }   // never blocks
        #expect(st.watcherCounts.victims == 1)
        var got: [Int64] = []
        var rounds = 0
        while got.count < 20 {
            rounds += 1
            try #require(rounds < 100)
            if let r = ws.poll() {
                got += r.events.map(\.kv.modRevision)
            } else {
                try st.syncWatchers()
            }
        }
        #expect(got == Array(2...21))
        #expect(st.watcherCounts.synced == 1)
        try st.put("k", "21")
        let next = await ws.next()
        #expect(next?.watchID == id && next?.events.first?.kv.modRevision == 22)
    }

    /// The stream's buffer is bounded in bytes too: a consumer that stops reading while
    /// large values are written pins about `watchStreamBufferBytes` plus one parked response,
    /// however much is written; catch-up responses are bounded by `watchCatchUpBytes`; and
    /// once it reads again it gets every event once, in order.
    @Test func bufferIsBoundedInBytesAndCatchUpStepsToo() throws {
        let dir = StoreDir()
        var o = MVCCStore.Options()
        o.watchStreamBufferBytes = 256 * 1024
        o.watchCatchUpBytes = 128 * 1024
        let st = try dir.open(options: o)
        let ws = st.makeWatchStream()
        defer { ws.close() }
        _ = try ws.watch(key: b("k"), rangeEnd: b("l"))
        let value = String(repeating: "v", count: 64 * 1024)
        for i in 0..<64 { try st.put("k\(i)", value) }   // 4 MiB, never blocks
        #expect(ws.bufferedBytesCount <= 256 * 1024 + 70 * 1024)
        #expect(ws.bufferedCount < 64)
        #expect(st.watcherCounts.victims == 1)
        var got: [Int64] = []
        var rounds = 0
        while got.count < 64 {
            rounds += 1
            try #require(rounds < 1000)
            if let r = ws.poll() {
                let bytes = r.events.reduce(0) { $0 + $1.kv.value.count }
                #expect(bytes <= 128 * 1024 + 64 * 1024, "a catch-up response of \(bytes) bytes")
                got += r.events.map(\.kv.modRevision)
            } else {
                try st.syncWatchers()
            }
        }
        #expect(got == Array(2...65))
        #expect(ws.bufferedBytesCount == 0)
    }

    @Test func cancelStopsDeliveryAndPurgesBuffered() throws {
        let dir = StoreDir()
        let st = try dir.open()
        let ws = st.makeWatchStream()
        defer { ws.close() }
        let a = try ws.watch(key: b("k"))
        let c = try ws.watch(key: b("k"))
        try st.put("k", "1")
        try ws.cancel(a)
        try st.put("k", "2")
        let rs = drain(ws)
        #expect(rs.allSatisfy { $0.watchID == c })
        #expect(eventsOf(rs, id: c).count == 2)
        #expect(throws: MVCCError.watcherNotFound) { try ws.cancel(a) }
        #expect(throws: MVCCError.duplicateWatchID) { try ws.watch(key: b("x"), id: c) }
        #expect(try ws.watch(key: b("x"), id: 100) == 100)
    }

    @Test func progressNotifications() throws {
        let dir = StoreDir()
        let st = try dir.open()
        for i in 1...3 { try st.put("k", "\(i)") }
        let ws = st.makeWatchStream()
        defer { ws.close() }
        let behind = try ws.watch(key: b("k"), startRevision: 2)
        ws.requestProgress()
        #expect(ws.poll() == nil, "not answered while a watcher is unsynced")
        try st.syncWatchers()
        let rs = drain(ws)
        #expect(rs.map(\.watchID) == [behind, -1])
        #expect(rs.last?.revision == 4 && rs.last?.events.isEmpty == true)
        let p = try ws.watch(key: b("z"), options: WatchOptions(progressNotify: true))
        st.notifyProgress()
        #expect(drain(ws) == [WatchResponse(watchID: p, events: [], revision: 4)])
    }

    @Test func closeEndsTheSequence() async throws {
        let dir = StoreDir()
        let st = try dir.open()
        let ws = st.makeWatchStream()
        try ws.watch(key: b("k"))
        try st.put("k", "1")
        let waiter = Task { () -> Int in
            var n = 0
            for await _ in ws { n += 1 }
            return n
        }
        // The consumer may or may not see the buffered response; either way the loop ends.
        ws.close()
        let n = await waiter.value
        #expect(n <= 1)
        #expect(st.watcherCounts == (0, 0, 0))
        try st.put("k", "2")
        #expect(ws.poll() == nil)
    }
}

@Suite struct WatchConcurrencyTests {
    @Test(.timeLimit(.minutes(1))) func cancellingTheConsumerEndsItsWait() async throws {
        let dir = StoreDir()
        let st = try dir.open()
        let ws = st.makeWatchStream()
        defer { ws.close() }
        try ws.watch(key: b("k"))
        let waiting = Task { await ws.next() }
        waiting.cancel()
        #expect(await waiting.value == nil)
        // The stream still works for the next consumer.
        try st.put("k", "1")
        #expect(await ws.next()?.events.count == 1)
    }

    /// Writers on several threads, a slow async consumer, the background catch-up loop:
    /// every revision arrives exactly once and in order.
    @Test(.timeLimit(.minutes(1))) func concurrentWritersAndConsumer() async throws {
        let dir = StoreDir()
        var o = MVCCStore.Options()
        o.watchStreamBuffer = 4
        o.watchCatchUpBatch = 16
        let st = try dir.open(batchLimit: 50, options: o)
        let ws = st.makeWatchStream()
        let id = try ws.watch(key: b("k"), rangeEnd: b("l"), startRevision: 1)
        let loop = st.runWatchLoop(interval: .milliseconds(1))
        let writers = 4, perWriter = 150
        let consumer = Task { () -> [Int64] in
            var revs: [Int64] = []
            for await r in ws where r.watchID == id {
                revs += r.events.map(\.kv.modRevision)
                if revs.count >= writers * perWriter { break }
            }
            return revs
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<writers {
                group.addTask {
                    for i in 0..<perWriter { try st.put("k\(w)/\(i)", "v") }
                }
            }
            try await group.waitForAll()
        }
        let revs = await consumer.value
        loop.cancel()
        ws.close()
        #expect(revs == Array(2...Int64(writers * perWriter) + 1))
    }
}
