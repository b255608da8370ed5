import Foundation
import Testing
@testable import LMDBBackend

/// A fresh temporary directory removed when the value is dropped.
final class BackendTempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "swetcd-backend-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    var db: String { path + "/db" }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

private func fastOptions(limit: Int = 10_000) -> Backend.Options {
    var o = Backend.Options()
    o.sync = false
    o.batchLimit = limit
    return o
}

@Suite struct BackendTests {
    @Test func readsSeeStagedWritesBeforeCommit() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: fastOptions())
        try be.put(.key, key: b("a"), value: b("1"))
        try be.put(.key, key: b("c"), value: b("3"))
        try be.commit()
        try be.put(.key, key: b("b"), value: b("2"))
        try be.delete(.key, key: b("c"))
        try be.put(.key, key: b("d"), value: b("4"))
        #expect(be.pendingCount == 3)
        try be.read { r in
            #expect(try r.get(.key, key: b("b")) == b("2"))
            #expect(try r.get(.key, key: b("c")) == nil)
            #expect(try r.get(.key, key: b("a")) == b("1"))
            let all = try r.range(.key, from: [], to: nil)
            #expect(all.map { String(decoding: $0.key, as: UTF8.self) } == ["a", "b", "d"])
            let mid = try r.range(.key, from: b("b"), to: b("d"))
            #expect(mid.map(\.value) == [b("2")])
            let lim = try r.range(.key, from: [], to: nil, limit: 2)
            #expect(lim.count == 2)
            // Other buckets are separate.
            #expect(try r.get(.meta, key: b("a")) == nil)
        }
    }

    @Test func batchCommitsAtLimitAndWhenDue() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: fastOptions(limit: 3))
        try be.put(.key, key: b("a"), value: b("1"))
        try be.put(.key, key: b("b"), value: b("1"))
        #expect(be.commitCount == 0)
        try be.put(.key, key: b("c"), value: b("1"))
        #expect(be.commitCount == 1)
        #expect(be.pendingCount == 0)
        try be.put(.key, key: b("d"), value: b("1"))
        #expect(try be.commitIfDue(now: .now - .seconds(1)) == false)
        #expect(try be.commitIfDue(now: .now + .milliseconds(150)) == true)
        #expect(be.commitCount == 2)
        #expect(try be.commitIfDue(now: .now + .seconds(5)) == false)
    }

    @Test func noCommitInsideABatchScope() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: fastOptions(limit: 2))
        try be.batch {
            for i in 0..<5 { try be.put(.key, key: b("k\(i)"), value: []) }
            #expect(try be.commitIfDue(now: .now + .seconds(10)) == false)
            try be.batch { try be.setConsistentIndex(3) }
            #expect(be.commitCount == 0, "limit reached but the scope is open")
        }
        #expect(be.commitCount == 1 && be.pendingCount == 0, "committed when the scope closed")
        struct Boom: Error {}
        #expect(throws: Boom.self) { try be.batch { try be.put(.key, key: b("x"), value: []); throw Boom() } }
        try be.put(.key, key: b("y"), value: [])
        #expect(be.commitCount == 2, "a throwing scope still closes")
    }

    @Test func snapshotKeepsItsPointInTime() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: fastOptions())
        try be.put(.key, key: b("a"), value: b("1"))
        let snap = try be.snapshot()
        try be.put(.key, key: b("a"), value: b("2"))
        try be.put(.key, key: b("b"), value: b("2"))
        try be.commit()
        #expect(try snap.read { try $0.range(.key, from: [], to: nil).map(\.value) } == [b("1")])
        #expect(try be.read { try $0.range(.key, from: [], to: nil).map(\.value) } == [b("2"), b("2")])
        snap.release()
        snap.release()
        #expect(throws: BackendError.self) { try snap.read { _ in 0 } }
    }

    @Test func uncommittedBatchIsLostButConsistentIndexTellsWhere() throws {
        let dir = BackendTempDir()
        do {
            let be = try Backend(path: dir.db, options: fastOptions())
            try be.put(.key, key: b("x"), value: b("1"))
            try be.setConsistentIndex(7, term: 2)
            try be.commit()
            try be.put(.key, key: b("y"), value: b("2"))
            try be.setConsistentIndex(8, term: 2)
            #expect(try be.consistentIndex() == 8)
            be.abandon()
        }
        let be = try Backend(path: dir.db, options: fastOptions())
        #expect(try be.consistentIndex() == 7)
        let (x, y) = try be.read { r in (try r.get(.key, key: b("x")), try r.get(.key, key: b("y"))) }
        #expect(x == b("1"))
        #expect(y == nil)
    }

    @Test func closeCommitsAndReopenKeepsData() throws {
        let dir = BackendTempDir()
        var h: UInt32 = 0
        do {
            let be = try Backend(path: dir.db, options: fastOptions())
            for i in 0..<100 { try be.put(.lease, key: b("k\(i)"), value: b("v\(i)")) }
            h = try be.hash()
            try be.close()
            #expect(throws: BackendError.self) { try be.put(.key, key: b("a"), value: []) }
        }
        let be = try Backend(path: dir.db, options: fastOptions())
        #expect(try be.hash() == h)
        #expect(try be.read { try $0.range(.lease, from: [], to: nil).count } == 100)
    }

    @Test func hashDependsOnContentNotOnCommits() throws {
        let d1 = BackendTempDir(), d2 = BackendTempDir()
        let x = try Backend(path: d1.db, options: fastOptions(limit: 2))
        let y = try Backend(path: d2.db, options: fastOptions())
        for i in 0..<10 {
            try x.put(.key, key: b("k\(i)"), value: b("\(i)"))
            try y.put(.key, key: b("k\(i)"), value: b("\(i)"))
        }
        #expect(try x.hash() == y.hash())
        try x.setConsistentIndex(5)
        try y.setConsistentIndex(9, term: 2)
        #expect(try x.hash() == y.hash(), "the consistent index is not part of the hash")
        #expect(try x.hash(ignoring: []) != y.hash(ignoring: []))
        try y.put(.key, key: b("k3"), value: b("other"))
        #expect(try x.hash() != y.hash())
    }

    @Test func rejectsBadKeys() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: fastOptions())
        #expect(throws: BackendError.self) { try be.put(.key, key: [], value: b("v")) }
        let big = [UInt8](repeating: 1, count: be.maxKeySize + 1)
        #expect(throws: BackendError.self) { try be.put(.key, key: big, value: b("v")) }
    }

    @Test func garbageFileIsAnErrorNotACrash() throws {
        let dir = BackendTempDir()
        let junk = Data((0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        try junk.write(to: URL(fileURLWithPath: dir.db))
        #expect(throws: BackendError.self) { _ = try Backend(path: dir.db, options: fastOptions()) }
    }

    @Test func mapGrowsWhenFull() throws {
        let dir = BackendTempDir()
        var o = fastOptions(limit: 100)
        o.initialMapSize = 1 << 20
        let be = try Backend(path: dir.db, options: o)
        let empty = try be.fileSize()
        #expect(try be.committedFileSize() == empty)
        let value = [UInt8](repeating: 7, count: 4000)
        for i in 0..<1000 { try be.put(.key, key: b("key\(i)"), value: value) }
        try be.commit()
        #expect(try be.read { try $0.range(.key, from: [], to: nil).count } == 1000)
        #expect(try be.fileSize() > 4_000_000)
        // The size known from memory follows the commits that grew the file.
        #expect(try be.committedFileSize() == be.fileSize())
    }

    @Test func sizeInUseExcludesFreePages() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: fastOptions())
        let value = [UInt8](repeating: 1, count: 1000)
        for i in 0..<2000 { try be.put(.key, key: b("k\(i)"), value: value) }
        try be.commit()
        let full = try be.sizeInUse()
        #expect(full > 2_000_000)
        #expect(full <= (try be.fileSize()))
        for i in 0..<2000 { try be.delete(.key, key: b("k\(i)")) }
        try be.commit()
        // A few commits so LMDB's freelist settles.
        for i in 0..<3 { try be.put(.meta, key: b("m"), value: b("\(i)")); try be.commit() }
        let after = try be.sizeInUse()
        #expect(after < full / 4)
        #expect(try be.fileSize() >= full)
    }

    @Test func pointInTimeCopyOpensWithSameContent() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: fastOptions())
        for i in 0..<500 { try be.put(.key, key: b("k\(i)"), value: b("v\(i)")) }
        try be.setConsistentIndex(42)
        let h = try be.hash()
        let copyPath = dir.path + "/copy.db"
        try be.copy(toPath: copyPath, compact: true)
        try be.put(.key, key: b("after"), value: b("x"))
        let copy = try Backend(path: copyPath, options: fastOptions())
        #expect(try copy.hash() == h)
        #expect(try copy.consistentIndex() == 42)

        // The fd form, into a regular file.
        let fdPath = dir.path + "/fd.db"
        let fd = open(fdPath, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        try #require(fd >= 0)
        try be.copy(to: fd)
        close(fd)
        let c2 = try Backend(path: fdPath, options: fastOptions())
        #expect(try c2.read { try $0.get(.key, key: b("after")) } == b("x"))
    }
}

@Suite struct BackendLoopTests {
    @Test(.timeLimit(.minutes(1))) func commitLoopWritesTheBatch() async throws {
        let dir = BackendTempDir()
        var o = Backend.Options()
        o.sync = false
        o.batchInterval = .milliseconds(5)
        let be = try Backend(path: dir.db, options: o)
        try be.put(.key, key: Array("a".utf8), value: [])
        let loop = be.runCommitLoop()
        // Wait for the event (a commit), bounded by the time limit.
        while be.commitCount == 0 { await Task.yield() }
        loop.cancel()
        #expect(be.pendingCount == 0)
    }
}
