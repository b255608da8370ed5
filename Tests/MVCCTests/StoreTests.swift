import Foundation
import LMDBBackend
import Testing
@testable import MVCC

@Suite struct StoreTests {
    @Test func revisionsVersionsAndTombstones() throws {
        let dir = StoreDir()
        let st = try dir.open()
        #expect(st.currentRevision == 1, "an empty store is at revision 1, as etcd's")
        #expect(try st.put("a", "1") == 2)
        #expect(try st.put("a", "2") == 3)
        #expect(try st.put("b", "x") == 4)
        let a = try #require(try st.get("a"))
        #expect(a == KeyValue(key: b("a"), createRevision: 2, modRevision: 3, version: 2, value: b("2")))
        #expect(try st.del("a") == 1)
        #expect(st.currentRevision == 5)
        #expect(try st.get("a") == nil)
        #expect(try st.del("a") == 0)
        #expect(st.currentRevision == 5, "a delete of nothing takes no revision")
        try st.put("a", "3")
        let again = try #require(try st.get("a"))
        #expect(again.createRevision == 6 && again.version == 1 && again.modRevision == 6)
        // History.
        #expect(try st.get("a", rev: 2)?.value == b("1"))
        #expect(try st.get("a", rev: 5) == nil)
        #expect(try st.get("b", rev: 3) == nil)
    }

    @Test func rangeShapes() throws {
        let dir = StoreDir()
        let st = try dir.open()
        for k in ["a", "ab", "abc", "b", "c"] { try st.put(k, "v" + k) }
        #expect(try st.keys("a", "b") == ["a", "ab", "abc"])
        #expect(try st.keys("ab", "\0") == ["ab", "abc", "b", "c"])
        #expect(try st.keys("\0", "\0") == ["a", "ab", "abc", "b", "c"])
        #expect(try st.keys("b", "a") == [])
        var r = RangeRequest(key: b("a"), rangeEnd: b("\0"), limit: 2)
        var resp = try st.range(r)
        #expect(resp.kvs.map { s($0.key) } == ["a", "ab"])
        #expect(resp.more && resp.count == 5 && resp.revision == 6)
        r.limit = 5
        resp = try st.range(r)
        #expect(!resp.more && resp.kvs.count == 5)
        r.countOnly = true
        resp = try st.range(r)
        #expect(resp.kvs.isEmpty && resp.count == 5)
        r = RangeRequest(key: b("a"), rangeEnd: b("\0"))
        r.keysOnly = true
        #expect(try st.range(r).kvs.allSatisfy { $0.value.isEmpty })
        #expect(throws: MVCCError.futureRevision) { try st.range(RangeRequest(key: b("a"), revision: 7)) }
        #expect(throws: MVCCError.keyNotProvided) { try st.range(RangeRequest(key: [])) }
    }

    @Test func sortAndFilters() throws {
        let dir = StoreDir()
        let st = try dir.open()
        try st.put("a", "3")   // 2 (an empty store is at revision 1)
        try st.put("b", "1")   // 3
        try st.put("c", "2")   // 4
        try st.put("a", "0")   // 5: a version 2
        var r = RangeRequest(key: b("a"), rangeEnd: b("d"))
        r.sortTarget = .mod
        r.sortOrder = .descend
        #expect(try st.range(r).kvs.map { s($0.key) } == ["a", "c", "b"])
        r.sortTarget = .value
        r.sortOrder = .none   // a non-key target with no order sorts ascending
        #expect(try st.range(r).kvs.map { s($0.key) } == ["a", "b", "c"])
        r.sortTarget = .version
        r.sortOrder = .descend
        #expect(try st.range(r).kvs.map { s($0.key) } == ["a", "b", "c"])
        r.sortTarget = .key
        r.limit = 1
        let resp = try st.range(r)
        #expect(resp.kvs.map { s($0.key) } == ["c"] && resp.more && resp.count == 3)
        var f = RangeRequest(key: b("a"), rangeEnd: b("d"))
        f.minModRevision = 4
        #expect(try st.range(f).kvs.map { s($0.key) } == ["a", "c"])
        f = RangeRequest(key: b("a"), rangeEnd: b("d"))
        f.maxCreateRevision = 3
        f.minCreateRevision = 3
        let fr = try st.range(f)
        #expect(fr.kvs.map { s($0.key) } == ["b"] && fr.count == 3)
    }

    @Test func putOptionsAndDeletePrev() throws {
        let dir = StoreDir()
        let st = try dir.open()
        try st.put("k", "v1", lease: 7)
        var p = PutRequest(key: b("k"), value: b("ignored"), lease: 0, prevKv: true)
        p.ignoreValue = true
        #expect(throws: MVCCError.valueProvided) { try st.put(p) }
        p.value = []
        let r = try st.put(p)
        #expect(r.prevKv?.value == b("v1"))
        #expect(try st.get("k")?.value == b("v1"))
        #expect(try st.get("k")?.lease == 0)
        p = PutRequest(key: b("k"), value: b("v3"), lease: 5)
        p.ignoreLease = true
        #expect(throws: MVCCError.leaseProvided) { try st.put(p) }
        p.lease = 0
        _ = try st.put(PutRequest(key: b("k"), value: b("v2"), lease: 9))
        _ = try st.put(p)
        #expect(try st.get("k")?.lease == 9 && st.get("k")?.value == b("v3"))
        p.key = b("missing")
        #expect(throws: MVCCError.keyNotFound) { try st.put(p) }
        #expect(throws: MVCCError.keyNotProvided) { try st.put(PutRequest(key: [], value: [])) }
        try st.put("k2", "x")
        let d = try st.deleteRange(DeleteRangeRequest(key: b("k"), rangeEnd: b("l"), prevKv: true))
        #expect(d.deleted == 2 && d.prevKvs.map { s($0.value) } == ["v3", "x"])
        #expect(d.revision == st.currentRevision)
    }

    @Test func txnCompareBranchesAndOneRevision() throws {
        let dir = StoreDir()
        let st = try dir.open()
        try st.put("a", "1")
        let cas = TxnRequest(
            compare: [Compare(key: b("a"), target: .mod(2), result: .equal)],
            success: [.put(PutRequest(key: b("a"), value: b("2"))), .put(PutRequest(key: b("b"), value: b("2"))),
                      .range(RangeRequest(key: b("a"), rangeEnd: b("c")))],
            failure: [.range(RangeRequest(key: b("a")))])
        let r1 = try st.txn(cas)
        #expect(r1.succeeded && r1.revision == 3)
        guard case .range(let seen) = r1.responses[2] else { Issue.record("no range"); return }
        #expect(seen.kvs.map { s($0.value) } == ["2", "2"], "reads in a txn see its own writes")
        #expect(try st.get("b")?.modRevision == 3 && st.get("a")?.modRevision == 3)
        let r2 = try st.txn(cas)
        #expect(!r2.succeeded && r2.revision == 3)
        // Absent keys compare as zero; a value compare on an absent key fails.
        #expect(try st.txn(TxnRequest(compare: [Compare(key: b("zz"), target: .create(0), result: .equal)])).succeeded)
        #expect(try !st.txn(TxnRequest(compare: [Compare(key: b("zz"), target: .value([]), result: .equal)])).succeeded)
        // Range compares need every key to match.
        #expect(try st.txn(TxnRequest(compare: [Compare(key: b("a"), rangeEnd: b("c"), target: .value(b("2")), result: .equal)])).succeeded)
        #expect(try !st.txn(TxnRequest(compare: [Compare(key: b("a"), rangeEnd: b("c"), target: .version(1), result: .greater)])).succeeded)
        #expect(try st.txn(TxnRequest(compare: [Compare(key: b("a"), target: .lease(0), result: .equal)])).succeeded)
        #expect(try st.txn(TxnRequest(compare: [Compare(key: b("a"), target: .value(b("1")), result: .greater)])).succeeded)
        #expect(try st.txn(TxnRequest(compare: [Compare(key: b("a"), target: .mod(5), result: .less)])).succeeded)
        #expect(try st.txn(TxnRequest(compare: [Compare(key: b("a"), target: .version(5), result: .notEqual)])).succeeded)
    }

    @Test func nestedTxnAndRules() throws {
        let dir = StoreDir()
        let st = try dir.open()
        try st.put("a", "1")
        let nested = TxnRequest(
            compare: [Compare(key: b("a"), target: .version(1), result: .equal)],
            success: [.put(PutRequest(key: b("x"), value: b("1"))),
                      .txn(TxnRequest(compare: [Compare(key: b("x"), target: .version(0), result: .equal)],
                                      success: [.put(PutRequest(key: b("y"), value: b("then")))],
                                      failure: [.put(PutRequest(key: b("y"), value: b("else")))]))])
        let r = try st.txn(nested)
        #expect(r.succeeded)
        // Nested compares are decided on the state before the txn: x did not exist then.
        #expect(try st.get("y")?.value == b("then"))
        #expect(try st.get("x")?.modRevision == 3 && st.get("y")?.modRevision == 3)

        let dupPut = TxnRequest(success: [.put(PutRequest(key: b("k"), value: [])), .put(PutRequest(key: b("k"), value: []))])
        #expect(throws: MVCCError.duplicateKey) { try st.txn(dupPut) }
        let putInDelete = TxnRequest(success: [.deleteRange(DeleteRangeRequest(key: b("a"), rangeEnd: b("z"))),
                                               .put(PutRequest(key: b("k"), value: []))])
        #expect(throws: MVCCError.duplicateKey) { try st.txn(putInDelete) }
        let nestedDup = TxnRequest(success: [.put(PutRequest(key: b("k"), value: [])),
                                             .txn(TxnRequest(failure: [.put(PutRequest(key: b("k"), value: []))]))])
        #expect(throws: MVCCError.duplicateKey) { try st.txn(nestedDup) }
        let twoBranches = TxnRequest(success: [.txn(TxnRequest(success: [.put(PutRequest(key: b("k"), value: b("s")))],
                                                               failure: [.put(PutRequest(key: b("k"), value: b("f")))]))])
        #expect(try st.txn(twoBranches).succeeded)
        #expect(throws: MVCCError.keyNotProvided) { try st.txn(TxnRequest(success: [.range(RangeRequest(key: []))])) }

        // A failing check inside the chosen branch leaves no trace.
        let before = st.currentRevision
        let bad = TxnRequest(success: [.put(PutRequest(key: b("p"), value: [])),
                                       .range(RangeRequest(key: b("a"), revision: before + 5))])
        #expect(throws: MVCCError.futureRevision) { try st.txn(bad) }
        #expect(st.currentRevision == before)
        #expect(try st.get("p") == nil)
        // ... while the branch not taken is not checked.
        let notTaken = TxnRequest(compare: [Compare(key: b("a"), target: .version(99), result: .equal)],
                                  success: [.range(RangeRequest(key: b("a"), revision: before + 5))])
        #expect(try !st.txn(notTaken).succeeded)
    }

    @Test func compactionKeepsLatestAndDropsTombstones() throws {
        let dir = StoreDir()
        let st = try dir.open(options: { var o = MVCCStore.Options(); o.compactionBatchLimit = 2; return o }())
        try st.put("a", "1")  // 2
        try st.put("a", "2")  // 3
        try st.put("b", "1")  // 4
        try st.del("b")       // 5
        try st.put("c", "1")  // 6
        try st.put("a", "3")  // 7
        try st.compact(5)
        #expect(st.compactRevision == 5)
        #expect(throws: MVCCError.compacted) { try st.get("a", rev: 4) }
        #expect(throws: MVCCError.compacted) { try st.compact(5) }
        #expect(throws: MVCCError.futureRevision) { try st.compact(8) }
        #expect(try st.get("a", rev: 5)?.value == b("2"))
        #expect(try st.get("a", rev: 6)?.value == b("2"))
        #expect(try st.get("b", rev: 5) == nil)
        #expect(try st.keys("\0", "\0", rev: 6) == ["a", "c"])
        // Backend now holds revision 3 (a's state at 5) and 6, 7 only.
        let revs = try st.backend.read { r in try r.range(.key, from: [], to: nil).map { Int($0.key[7]) } }
        #expect(revs == [3, 6, 7])
        #expect(st.indexedKeys == 2)
    }

    @Test func hashKVAgreesAcrossBatchingAndCompactionTiming() throws {
        let d1 = StoreDir(), d2 = StoreDir()
        let x = try d1.open(batchLimit: 3)
        let y = try d2.open()
        for st in [x, y] {
            for i in 0..<20 { try st.put("k\(i % 7)", "v\(i)") }
            try st.del("k3")
        }
        try x.compact(10)
        #expect(try x.hashKV(revision: 15).hash != y.hashKV(revision: 15).hash, "y has more history")
        try y.compact(10)
        #expect(try x.hashKV().hash == y.hashKV().hash)
        #expect(try x.hashKV(revision: 15).hash == y.hashKV(revision: 15).hash)
        #expect(try x.hashKV(revision: 15).hash != x.hashKV(revision: 16).hash)
        try y.put("k1", "diverge")
        try x.put("k1", "other")
        #expect(try x.hashKV().hash != y.hashKV().hash)
        #expect(throws: MVCCError.compacted) { try x.hashKV(revision: 9) }
    }

    /// The values etcd 3.4.23 (Debian) answers to `etcdctl endpoint hashkv` for the same
    /// histories (its first put is revision 2, as here): HashKV is comparable across swetcd
    /// and etcd members. An entry at or below the compaction counts only while it is still its
    /// key's revision at the hashed revision.
    @Test func hashKVEqualsEtcds() throws {
        let plain = try StoreDir().open()
        try plain.put("a", "1")
        #expect(try plain.hashKV().hash == 2587454935)
        try plain.put("b", "2")
        try plain.put("b", "3")
        try plain.compact(3)
        #expect(try plain.hashKV().hash == 3949711804)

        let later = try StoreDir().open()
        try later.put("a", "1")
        try later.put("b", "2")
        try later.compact(3)
        try later.put("c", "4")
        try later.put("b", "5")
        #expect(try later.hashKV(revision: 4).hash == 3985746902)   // b@3 still b's revision at 4
        #expect(try later.hashKV(revision: 5).hash == 536617823)    // not at 5
    }

    @Test func restartRestoresIndexRevisionsAndCompaction() throws {
        let dir = StoreDir()
        var hash: UInt32 = 0
        do {
            let st = try dir.open()
            for i in 0..<50 { try st.put("k\(i % 10)", "v\(i)") }
            try st.del("k1", "k3")
            try st.compact(30)
            try st.put("k9", "last")
            try st.del("k9")    // the last write is a delete
            hash = try st.hashKV().hash
            try st.backend.close()
        }
        let st = try dir.open()
        #expect(st.currentRevision == 54)
        #expect(st.compactRevision == 30)
        #expect(try st.hashKV().hash == hash)
        #expect(try st.get("k0")?.value == b("v40"))
        #expect(try st.get("k0")?.version == 5)
        #expect(try st.get("k9") == nil)
        #expect(try st.keys("k", "l") == ["k0", "k3", "k4", "k5", "k6", "k7", "k8"])
        try st.put("k0", "next")
        #expect(try st.get("k0")?.version == 6)
        #expect(try st.get("k0")?.createRevision == 2)
    }

    /// etcd reports compact revision -1 until the first compaction (HashKV, its gauge); a
    /// compaction to 0 is allowed once and then reported as 0, across restarts.
    @Test func compactRevisionIsMinusOneUntilTheFirstCompaction() throws {
        let fresh = StoreDir(), zero = StoreDir()
        do {
            let st = try fresh.open()
            #expect(st.compactRevision == -1)
            #expect(try st.hashKV().compactRevision == -1)
            try st.put("a", "1")
            #expect(try st.hashKV(revision: 1).compactRevision == -1)
            try st.backend.close()
        }
        let reopened = try fresh.open()
        #expect(reopened.compactRevision == -1)
        #expect(try reopened.hashKV().compactRevision == -1)
        do {
            let st = try zero.open()
            #expect(throws: MVCCError.compacted) { try st.compact(-1) }
            try st.compact(0)
            #expect(st.compactRevision == 0)
            #expect(try st.hashKV().compactRevision == 0)
            #expect(throws: MVCCError.compacted) { try st.compact(0) }
            try st.backend.close()
        }
        let st = try zero.open()
        #expect(st.compactRevision == 0)
        #expect(throws: MVCCError.compacted) { try st.compact(0) }
        try st.compact(1)
        #expect(try st.hashKV().compactRevision == 1)
    }

    @Test func interruptedCompactionFinishesOnRestart() throws {
        let dir = StoreDir()
        do {
            let st = try dir.open()
            for i in 0..<30 { try st.put("k\(i % 3)", "v\(i)") }
            // Schedule a compaction but "crash" before any entry is removed.
            try st.backend.put(.meta, key: MVCCStore.scheduledCompactKey, value: BigEndian.bytes(UInt64(20)))
            try st.backend.close()
        }
        let st = try dir.open()
        #expect(st.compactRevision == 20)
        #expect(throws: MVCCError.compacted) { try st.get("k0", rev: 19) }
        let count = try st.backend.read { try $0.range(.key, from: [], to: nil).count }
        #expect(count == 3 + 11, "each key's latest revision at or below 20, and revisions 21...31")
        let finished = try st.backend.read { try $0.get(.meta, key: MVCCStore.finishedCompactKey) }
        #expect(finished == BigEndian.bytes(20))
    }

    @Test func corruptKeyBucketIsAnError() throws {
        let dir = StoreDir()
        do {
            let st = try dir.open()
            try st.put("a", "1")
            try st.backend.put(.key, key: [1, 2, 3], value: [9])
            try st.backend.close()
        }
        #expect(throws: MVCCError.self) { _ = try dir.open() }
    }

    final class Hooks: MVCCLeaseHooks, @unchecked Sendable {
        let lock = NSLock()
        var live: Set<Int64> = [5, 6]
        var attached: [Int64: Set<[UInt8]>] = [:]
        func leaseExists(_ id: Int64) -> Bool { lock.withLock { live.contains(id) } }
        func attach(key: [UInt8], lease: Int64) { _ = lock.withLock { attached[lease, default: []].insert(key) } }
        func detach(key: [UInt8], lease: Int64) { _ = lock.withLock { attached[lease]?.remove(key) } }
    }

    @Test func leaseHooksAttachDetachAndRevokeInOneRevision() throws {
        let dir = StoreDir()
        let st = try dir.open()
        let hooks = Hooks()
        st.setLeaseHooks(hooks)
        #expect(throws: MVCCError.leaseNotFound) { try st.put("a", "1", lease: 99) }
        try st.put("a", "1", lease: 5)
        try st.put("b", "1", lease: 5)
        try st.put("c", "1", lease: 6)
        try st.put("c", "2", lease: 5)
        #expect(hooks.attached[5] == [b("a"), b("b"), b("c")])
        #expect(hooks.attached[6] == [])
        try st.del("b")
        #expect(hooks.attached[5] == [b("a"), b("c")])
        let rev = try st.deleteKeys([b("a"), b("c")])
        #expect(rev == st.currentRevision && rev == 7)
        #expect(try st.get("a", rev: 7) == nil && st.get("c", rev: 6) != nil)
        try st.put("d", "1", lease: 6)
        #expect(try st.leasedKeys().map { s($0.key) } == ["d"])
    }

    /// Pulls the backend away in the middle of a txn (from the lease hook, after the first put).
    final class Saboteur: MVCCLeaseHooks, @unchecked Sendable {
        let backend: Backend
        init(_ b: Backend) { backend = b }
        func leaseExists(_ id: Int64) -> Bool { true }
        func attach(key: [UInt8], lease: Int64) { backend.abandon() }
        func detach(key: [UInt8], lease: Int64) {}
    }

    @Test func backendFailureMidWriteStopsTheStore() throws {
        let dir = StoreDir()
        let st = try dir.open()
        try st.put("a", "1")
        st.setLeaseHooks(Saboteur(st.backend))
        let t = TxnRequest(success: [.put(PutRequest(key: b("x"), value: [], lease: 1)),
                                     .put(PutRequest(key: b("y"), value: []))])
        #expect(throws: BackendError.self) { try st.txn(t) }
        #expect(st.currentRevision == 2)
        do {
            _ = try st.get("a")
            Issue.record("reads must fail after a half-applied write")
        } catch let e as MVCCError {
            guard case .stopped = e else { Issue.record("unexpected \(e)"); return }
        }
        #expect(throws: MVCCError.self) { try st.put("b", "1") }
    }
}

@Suite struct StoreConcurrencyTests {
    /// Readers in parallel with a writer whose txns set two keys together: every read sees
    /// both or neither change, and revisions never go back.
    @Test(.timeLimit(.minutes(1))) func readsSeeWholeTxns() async throws {
        let dir = StoreDir()
        let st = try dir.open(batchLimit: 7)   // commits land between and during reads
        try st.put("x", "0")
        try st.put("y", "0")
        let rounds = 300
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 1...rounds {
                    let v = b("\(i)")
                    _ = try st.txn(TxnRequest(success: [.put(PutRequest(key: b("x"), value: v)),
                                                        .put(PutRequest(key: b("y"), value: v))]))
                    if i % 50 == 0 { try st.compact(st.currentRevision - 5) }
                }
            }
            for _ in 0..<3 {
                group.addTask {
                    var last: Int64 = 0
                    for _ in 0..<rounds {
                        let r = try st.range(RangeRequest(key: b("x"), rangeEnd: b("z")))
                        #expect(r.kvs.count == 2 && r.kvs[0].value == r.kvs[1].value && r.kvs[0].modRevision == r.kvs[1].modRevision)
                        #expect(r.revision >= last)
                        last = r.revision
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try st.get("x")?.value == b("\(rounds)"))
    }

    /// HashKV at a fixed revision does not change while writes go on beside it.
    @Test(.timeLimit(.minutes(1))) func hashKVStableUnderWrites() async throws {
        let dir = StoreDir()
        let st = try dir.open(batchLimit: 5)
        for i in 0..<100 { try st.put("k\(i % 10)", "v\(i)") }
        let (want, _, _) = try st.hashKV(revision: 100)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { for i in 0..<200 { try st.put("k\(i % 10)", "w\(i)") } }
            group.addTask {
                for _ in 0..<20 {
                    let h = try st.hashKV(revision: 100).hash
                    #expect(h == want)
                }
            }
            try await group.waitForAll()
        }
        #expect(try st.hashKV(revision: 100).hash == want)
    }
}
