import Foundation
import LMDBBackend
import Raft
import Testing
@testable import MVCC

/// Randomized histories checked against `Model`. Seeds print on failure; replay one with
/// MVCC_MODEL_SEED=<seed> MVCC_MODEL_SEEDS=1, lengthen with MVCC_MODEL_STEPS.
@Suite struct ModelTests {
    @Test(arguments: modelSeeds(default: 6))
    func keyspaceMatchesModelAcrossRestarts(seed: UInt64) throws {
        let steps = modelSteps(default: 400)
        var gen = OpGenerator(rng: SplitMix64(seed: seed))
        let model = Model()
        let d1 = StoreDir(), d2 = StoreDir()
        var o = MVCCStore.Options()
        o.compactionBatchLimit = 3
        var store = try d1.open(batchLimit: 7, options: o)
        let twin = try d2.open()   // same history, other batching: HashKV must agree
        for step in 0..<steps {
            let op = gen.next(model: model)
            if let diff = applyBoth(op, store: store, model: model) {
                Issue.record("seed \(seed) step \(step) \(op): \(diff)")
                return
            }
            _ = applyBoth(op, store: twin, model: Model())   // results checked via the hash
            if gen.chance(0.02) {
                try store.backend.close()
                store = try d1.open(batchLimit: 7, options: o)
            }
            if gen.chance(0.05) {
                let (h1, r1, c1) = try store.hashKV()
                let (h2, r2, c2) = try twin.hashKV()
                #expect(h1 == h2 && r1 == r2 && c1 == c2, "seed \(seed) step \(step): HashKV differs")
                if h1 != h2 { return }
            }
        }
        // Every retained revision reads the same in store and model.
        #expect(store.currentRevision == model.rev, "seed \(seed)")
        for r in max(1, model.compactRev)...max(1, model.rev) where model.rev > 0 {
            let req = RangeRequest(key: [0], rangeEnd: [0], revision: r)
            #expect(try store.range(req) == model.range(req), "seed \(seed) revision \(r)")
        }
        // After a final restart too.
        try store.backend.close()
        store = try d1.open()
        #expect(store.currentRevision == model.rev && store.compactRevision == model.compactRev, "seed \(seed)")
        let all = RangeRequest(key: [0], rangeEnd: [0])
        #expect(try store.range(all) == model.range(all), "seed \(seed)")
    }

    @Test(arguments: modelSeeds(default: 6))
    func watchStreamsDeliverEveryEventOnceInOrder(seed: UInt64) throws {
        let steps = modelSteps(default: 400)
        var gen = OpGenerator(rng: SplitMix64(seed: seed))
        let model = Model()
        let dir = StoreDir()
        var o = MVCCStore.Options()
        o.watchStreamBuffer = 3       // small: slow consumers get parked often
        o.watchCatchUpBatch = 5
        let store = try dir.open(batchLimit: 11, options: o)

        struct Watch {
            let id: Int64
            let key: [UInt8]
            let end: [UInt8]
            let start: Int64
            let options: WatchOptions
            var got: [Event] = []
            var canceledAt: Int64?        // by us: nothing may arrive afterwards
            var compacted = false
        }
        var streams: [WatchStream] = [store.makeWatchStream(), store.makeWatchStream()]
        var watches: [[Watch]] = [[], []]
        var compactions: Set<Int64> = []

        func addWatch() throws {
            let si = Int.random(in: 0..<streams.count, using: &gen.rng)
            let k = gen.key()
            let end = gen.chance(0.5) ? gen.rangeEnd(for: k) : []
            let start = gen.chance(0.5) ? 0 : Int64.random(in: (model.compactRev + 1)...(model.rev + 2), using: &gen.rng)
            let opts = WatchOptions(prevKV: gen.chance(0.3), noPut: gen.chance(0.1), noDelete: gen.chance(0.1))
            let id = try streams[si].watch(key: k, rangeEnd: end, startRevision: start, options: opts)
            watches[si].append(Watch(id: id, key: k, end: end, start: start == 0 ? model.rev + 1 : start, options: opts))
        }
        func consume(_ si: Int, max: Int) {
            var n = 0
            while n < max, let r = streams[si].poll() {
                n += 1
                guard let wi = watches[si].firstIndex(where: { $0.id == r.watchID }) else {
                    Issue.record("seed \(seed): response for unknown watch \(r.watchID)")
                    continue
                }
                if watches[si][wi].canceledAt != nil { Issue.record("seed \(seed): response after cancel") }
                if r.canceled { watches[si][wi].compacted = true }
                watches[si][wi].got += r.events
            }
        }

        for _ in 0..<3 { try addWatch() }
        for step in 0..<steps {
            let op = gen.next(model: model, compactWeight: 0.02)
            if let diff = applyBoth(op, store: store, model: model) {
                Issue.record("seed \(seed) step \(step) \(op): \(diff)")
                return
            }
            if case .compact = op { compactions.insert(model.compactRev) }
            if gen.chance(0.05) { try addWatch() }
            if gen.chance(0.3) { consume(Int.random(in: 0..<streams.count, using: &gen.rng), max: 4) }
            if gen.chance(0.2) { try store.syncWatchers() }
            if gen.chance(0.02) {
                let si = Int.random(in: 0..<streams.count, using: &gen.rng)
                if let wi = watches[si].indices.filter({ watches[si][$0].canceledAt == nil && !watches[si][$0].compacted })
                    .randomElement(using: &gen.rng) {
                    // It may have been canceled by a compaction already (response not read yet).
                    if (try? streams[si].cancel(watches[si][wi].id)) != nil { watches[si][wi].canceledAt = model.rev }
                }
            }
        }
        // Drain everything.
        var rounds = 0
        while true {
            rounds += 1
            if rounds == 9_999 {
                let c = store.watcherCounts
                Issue.record("seed \(seed): stuck: synced \(c.synced) unsynced \(c.unsynced) victims \(c.victims) buffered \(streams.map(\.bufferedCount)) rev \(model.rev) compact \(model.compactRev)")
            }
            try #require(rounds < 10_000, "seed \(seed): watchers never caught up")
            for si in streams.indices { consume(si, max: .max) }
            let left = try store.syncWatchers()
            let counts = store.watcherCounts
            if left == 0 && counts.victims == 0 && streams.allSatisfy({ $0.bufferedCount == 0 }) { break }
        }
        for si in streams.indices {
            for w in watches[si] {
                var want = model.events.filter {
                    $0.kv.modRevision >= w.start && Model.inRange($0.kv.key, w.key, w.end)
                        && !($0.type == .put && w.options.noPut) && !($0.type == .delete && w.options.noDelete)
                }
                if w.options.prevKV {
                    for i in want.indices {
                        want[i].prevKv = model.state(at: want[i].kv.modRevision - 1)[want[i].kv.key]
                    }
                }
                // etcd's rule: a delete exactly at a compaction revision may be compacted away
                // before an unsynced watcher reads it.
                func norm(_ evs: [Event]) -> [Event] {
                    evs.filter { !($0.type == .delete && compactions.contains($0.kv.modRevision)) }
                }
                let g = norm(w.got), wn = norm(want)
                if w.canceledAt != nil || w.compacted {
                    #expect(Array(wn.prefix(g.count)).map(\.kv) == g.map(\.kv), "seed \(seed) watch \(w.id): not a prefix")
                } else {
                    let gr = g.map { "\($0.type == .put ? "P" : "D")\(s($0.kv.key))@\($0.kv.modRevision)" }
                    let wr = wn.map { "\($0.type == .put ? "P" : "D")\(s($0.kv.key))@\($0.kv.modRevision)" }
                    let firstDiff = (0..<min(gr.count, wr.count)).first { gr[$0] != wr[$0] } ?? min(gr.count, wr.count)
                    #expect(gr == wr, "seed \(seed) watch \(w.id) \(s(w.key))..\(s(w.end)) from \(w.start) \(w.options): first difference at \(firstDiff): got \(gr.dropFirst(max(0, firstDiff - 2)).prefix(5)) want \(wr.dropFirst(max(0, firstDiff - 2)).prefix(5)); compactions \(compactions.sorted())")
                    #expect(g.map(\.kv) == wn.map(\.kv) || gr != wr, "seed \(seed) watch \(w.id): values differ")
                }
                // prevKV: exact while the previous version is retained, else absent.
                for (x, y) in zip(g, wn) where w.options.prevKV && x.kv == y.kv {
                    if let p = y.prevKv, p.modRevision >= model.compactRev {
                        #expect(x.prevKv == p, "seed \(seed) watch \(w.id): prevKV at \(x.kv.modRevision)")
                    } else {
                        #expect(x.prevKv == nil || x.prevKv == y.prevKv, "seed \(seed) watch \(w.id): prevKV")
                    }
                }
            }
        }
        for s in streams { s.close() }
        streams.removeAll()
    }

    /// A batch not yet committed at a "crash" is lost; the consistent index stored with each
    /// batch tells which log entries to replay, and replaying them restores the history.
    @Test(arguments: modelSeeds(default: 4))
    func crashLosesUncommittedBatchAndReplayRestoresIt(seed: UInt64) throws {
        var gen = OpGenerator(rng: SplitMix64(seed: seed))
        let planner = Model()
        var log: [ModelOp] = []   // the "WAL": entry i + 1 is log[i]
        for _ in 0..<modelSteps(default: 300) {
            let op = gen.next(model: planner, compactWeight: 0.02)
            log.append(op)
            _ = try? apply(op, to: planner)
        }
        let dir = StoreDir()
        var store = try dir.open(batchLimit: 13)
        var applied = 0
        var crashes = 0
        while applied < log.count {
            // Apply a random stretch, then crash.
            let stretch = Int.random(in: 1...60, using: &gen.rng)
            while applied < min(log.count, applied + stretch) {
                // One log entry: its writes and the consistent index in one unit of the batch.
                try store.backend.batch {
                    _ = try? applyStore(log[applied], store)
                    try store.backend.setConsistentIndex(UInt64(applied + 1))
                }
                applied += 1
            }
            if gen.chance(0.5) { try store.backend.commitIfDue(now: .now + .seconds(1)) }
            store.backend.abandon()
            crashes += 1
            store = try dir.open(batchLimit: 13)
            let ci = Int(try store.backend.consistentIndex())
            #expect(ci <= applied, "seed \(seed)")
            applied = ci   // replay from the entry after the stored index
        }
        // The replayed store equals a store that never crashed.
        let clean = Model()
        for op in log { _ = try? apply(op, to: clean) }
        #expect(store.currentRevision == clean.rev, "seed \(seed) after \(crashes) crashes")
        let all = RangeRequest(key: [0], rangeEnd: [0])
        #expect(try store.range(all) == clean.range(all), "seed \(seed)")
        for r in max(1, clean.compactRev)...max(1, clean.rev) where clean.rev > 0 {
            let req = RangeRequest(key: [0], rangeEnd: [0], revision: r)
            #expect(try store.range(req) == clean.range(req), "seed \(seed) revision \(r)")
        }
    }

    private func apply(_ op: ModelOp, to m: Model) throws {
        switch op {
        case .put(let p): _ = try m.put(p)
        case .delete(let d): _ = m.deleteRange(d)
        case .txn(let t): _ = try m.txn(t)
        case .range: break
        case .compact(let r): try m.compact(r)
        }
    }

    private func applyStore(_ op: ModelOp, _ st: MVCCStore) throws {
        switch op {
        case .put(let p): _ = try st.put(p)
        case .delete(let d): _ = try st.deleteRange(d)
        case .txn(let t): _ = try st.txn(t)
        case .range: break
        case .compact(let r): try st.compact(r)
        }
    }
}
