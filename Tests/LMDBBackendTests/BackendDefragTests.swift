import Foundation
import Synchronization
import Testing
@testable import LMDBBackend

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

private func options(limit: Int = 10_000, sync: Bool = false, map: Int = 1 << 30) -> Backend.Options {
    var o = Backend.Options()
    o.sync = sync
    o.batchLimit = limit
    o.initialMapSize = map
    return o
}

/// Fills `count` keys of `size`-byte values, committed, then deletes all but every `keep`-th.
private func fillAndThin(_ be: Backend, count: Int, size: Int, keep: Int) throws {
    let value = [UInt8](repeating: 0x5A, count: size)
    for i in 0..<count { try be.put(.key, key: b("fill\(i)"), value: value) }
    try be.commit()
    for i in 0..<count where i % keep != 0 { try be.delete(.key, key: b("fill\(i)")) }
    try be.commit()
    // A few small commits so LMDB's freelist settles.
    for i in 0..<3 { try be.put(.meta, key: b("settle"), value: b("\(i)")); try be.commit() }
}

/// Every key/value of every bucket, committed and staged.
private func contents(_ be: Backend) throws -> [String: [UInt8]] {
    try be.read { r in
        var out: [String: [UInt8]] = [:]
        for bucket in BackendBucket.allCases {
            for (k, v) in try r.range(bucket, from: [], to: nil) { out["\(bucket.name)/\(String(decoding: k, as: UTF8.self))"] = v }
        }
        return out
    }
}

/// A thread that keeps writing `w<n>` keys (committing every few) until stopped; it records
/// what it wrote, and what was committed, for checks afterwards.
private final class Writer: @unchecked Sendable {
    let backend: Backend
    private let state = Mutex((stop: false, written: 0, committed: 0, failure: String?.none))
    private let done = DispatchSemaphore(value: 0)

    init(_ backend: Backend) { self.backend = backend }

    func start() {
        Thread { [self] in
            var n = 0
            while !state.withLock({ $0.stop }) {
                do {
                    try backend.batch {
                        try backend.put(.key, key: b("w\(n)"), value: b("value-\(n)"))
                        // Overwrites and deletes of earlier keys, so replay order matters.
                        if n % 7 == 3 { try backend.put(.key, key: b("w\(n - 3)"), value: b("changed-\(n)")) }
                        if n % 11 == 5 { try backend.delete(.key, key: b("w\(n - 5)")) }
                        try backend.setConsistentIndex(UInt64(n + 1))
                    }
                    n += 1
                    if n % 5 == 0 { try backend.commit() }
                    let (written, committed) = (n, n % 5 == 0 ? n : nil)
                    state.withLock {
                        $0.written = written
                        if let c = committed { $0.committed = c }
                    }
                } catch {
                    state.withLock { $0.failure = "\(error)" }
                    break
                }
            }
            done.signal()
        }.start()
    }

    var written: Int { state.withLock { $0.written } }
    var committed: Int { state.withLock { $0.committed } }

    /// Blocks (bounded) until `count` more writes have been made than when called.
    func waitForMore(_ count: Int) {
        let target = written + count
        let deadline = Date().addingTimeInterval(30)
        while written < target && Date() < deadline && state.withLock({ $0.failure == nil }) { usleep(1000) }
    }

    /// Stops the thread; returns how many writes it made and its error, if any.
    func stop() -> (Int, String?) {
        state.withLock { $0.stop = true }
        _ = done.wait(timeout: .now() + 30)
        return state.withLock { ($0.written, $0.failure) }
    }

    /// What the keys `w0..<n` must hold after `n` writes (nil: deleted).
    static func model(_ n: Int) -> [String: String?] {
        var m: [String: String?] = [:]
        for i in 0..<n {
            m["w\(i)"] = "value-\(i)"
            if i % 7 == 3 { m["w\(i - 3)"] = "changed-\(i)" }
            if i % 11 == 5 { m["w\(i - 5)"] = String?.none }
        }
        return m
    }

    /// Checks the backend against the model of `n` writes.
    static func check(_ be: Backend, writes n: Int) throws {
        let all = try contents(be)
        for (k, v) in model(n) {
            #expect(all["key/\(k)"].map { String(decoding: $0, as: UTF8.self) } == v, "key \(k) after \(n) writes")
        }
        #expect(all.keys.filter { $0.hasPrefix("key/w") }.count == model(n).values.compactMap { $0 }.count)
    }
}

@Suite struct BackendDefragTests {
    @Test func shrinksTheFileAndKeepsEveryKey() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options(map: 1 << 20))
        try fillAndThin(be, count: 4000, size: 1000, keep: 10)
        try be.setConsistentIndex(99, term: 3)
        try be.put(.lease, key: b("staged"), value: b("not committed yet"))
        let before = try contents(be)
        let hash = try be.hash(ignoring: [])
        let size = try be.fileSize()
        #expect(size > 4_000_000)

        let result = try be.defragment()
        #expect(result.sizeBefore == size)
        #expect(result.sizeAfter < size / 4, "\(result.sizeAfter) of \(size)")
        #expect(try be.fileSize() == result.sizeAfter)
        #expect(try be.committedFileSize() == result.sizeAfter)
        // The new file holds (almost) no free pages.
        #expect(try be.fileSize() - be.sizeInUse() <= 8 * 4096)
        #expect(try contents(be) == before)
        #expect(try be.hash(ignoring: []) == hash)
        #expect(!FileManager.default.fileExists(atPath: dir.db + ".defrag"))
        #expect(!FileManager.default.fileExists(atPath: dir.db + ".defrag-lock"))

        // The new file keeps working: writes, map growth (the map started at 1 MiB), a
        // second defragmentation, and a reopen.
        let value = [UInt8](repeating: 1, count: 3000)
        for i in 0..<2000 { try be.put(.key, key: b("more\(i)"), value: value) }
        try be.commit()
        try be.defragment()
        let after = try contents(be)
        #expect(after.count == before.count + 2000)
        try be.close()
        let reopened = try Backend(path: dir.db, options: options())
        #expect(try contents(reopened) == after)
        #expect(try reopened.consistentIndex() == 99)
    }

    @Test(.timeLimit(.minutes(2))) func writesDuringTheCopyAndCatchUpAreKept() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options(limit: 50))
        try fillAndThin(be, count: 3000, size: 1000, keep: 5)
        let writer = Writer(be)
        // Writes go on between every step: during the copy, after it (replayed in catch-up
        // rounds) and right before the pause (replayed in it).
        be.setDefragStepHook { step in
            if step == .copied { writer.waitForMore(300) }
            if step == .caughtUp { writer.waitForMore(40) }
            return false
        }
        writer.start()
        writer.waitForMore(20)
        // Reads in parallel with everything.
        let reads = Atomic<Int>(0)
        let readStop = Atomic<Bool>(false)
        let reader = Thread {
            while !readStop.load(ordering: .relaxed) {
                if (try? be.read({ try $0.get(.key, key: b("fill0")) })) == [UInt8](repeating: 0x5A, count: 1000) {
                    reads.add(1, ordering: .relaxed)
                }
            }
        }
        reader.start()
        let result = try be.defragment()
        writer.waitForMore(50)
        let (n, failure) = writer.stop()
        readStop.store(true, ordering: .relaxed)
        #expect(failure == nil)
        #expect(result.replayedBatches > 0)
        #expect(result.sizeAfter < result.sizeBefore)
        #expect(reads.load(ordering: .relaxed) > 0)
        try Writer.check(be, writes: n)
        #expect(try be.consistentIndex() == UInt64(n))
        try be.close()
        let reopened = try Backend(path: dir.db, options: options())
        try Writer.check(reopened, writes: n)
    }

    @Test func viewsOpenedBeforeTheSwapKeepReadingTheOldFile() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options())
        try fillAndThin(be, count: 1000, size: 500, keep: 4)
        try be.put(.key, key: b("a"), value: b("old"))
        try be.commit()
        let view = try be.snapshot()
        try be.put(.key, key: b("a"), value: b("new"))
        try be.commit()
        try be.defragment()
        #expect(try view.read { try $0.get(.key, key: b("a")) } == b("old"))
        #expect(try view.read { try $0.get(.key, key: b("fill0")) }?.count == 500)
        #expect(try be.read { try $0.get(.key, key: b("a")) } == b("new"))
        view.release()
        try be.put(.key, key: b("a"), value: b("newer"))
        try be.commit()
        #expect(try be.read { try $0.get(.key, key: b("a")) } == b("newer"))
        // A point-in-time copy (Maintenance.Snapshot) of the new file.
        let copy = dir.path + "/copy.db"
        try be.copy(toPath: copy)
        #expect(try Backend(path: copy, options: options()).read { try $0.get(.key, key: b("a")) } == b("newer"))
    }

    @Test func oneAtATimeAndAClosedBackendStopsIt() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options())
        try fillAndThin(be, count: 500, size: 500, keep: 2)
        let second = Mutex<String?>(nil)
        be.setDefragStepHook { step in
            if step == .copied {
                do { try be.defragment() } catch { second.withLock { $0 = "\(error)" } }
            }
            if step == .caughtUp { try? be.close() }
            return false
        }
        #expect(throws: BackendError.self) { try be.defragment() }
        #expect(second.withLock { $0 }?.contains("already running") == true)
        #expect(!FileManager.default.fileExists(atPath: dir.db + ".defrag"))
        let reopened = try Backend(path: dir.db, options: options())
        #expect(try reopened.read { try $0.range(.key, from: [], to: nil).count } == 250)
    }

    /// A process killed at any step: the reopened backend holds every committed write and
    /// no leftover, and defragments again.
    @Test(arguments: DefragmentStep.allCases)
    func killedAtAStepReopensWithEveryCommittedWrite(_ stop: DefragmentStep) throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options(sync: true))
        try fillAndThin(be, count: 1000, size: 800, keep: 3)
        // Writes committed during the copy (before the stop point): they must survive too.
        be.setDefragStepHook { step in
            if step == .copied {
                for i in 0..<20 { try? be.put(.key, key: b("during\(i)"), value: b("\(i)")) }
                try? be.commit()
            }
            return step == stop
        }
        let expected = try { () throws -> [String: [UInt8]] in
            var c = try contents(be)
            for i in 0..<20 { c["key/during\(i)"] = b("\(i)") }
            return c
        }()
        #expect(throws: BackendError.self) { try be.defragment() }
        // Staged, never committed: a crash loses it (the WAL would replay it).
        try be.put(.key, key: b("staged"), value: b("lost"))
        be.abandon()
        let leftover = FileManager.default.fileExists(atPath: dir.db + ".defrag")
        #expect(leftover == (stop != .renamed), "the copy is left behind unless it was renamed")

        let reopened = try Backend(path: dir.db, options: options(sync: true))
        #expect(try contents(reopened) == expected)
        #expect(!FileManager.default.fileExists(atPath: dir.db + ".defrag"))
        if stop == .renamed { #expect(try reopened.fileSize() - reopened.sizeInUse() <= 8 * 4096) }
        let result = try reopened.defragment()
        #expect(result.sizeAfter <= result.sizeBefore)
        #expect(try contents(reopened) == expected)
    }

    @Test func truncatedFileIsRefusedNotAFault() throws {
        let dir = BackendTempDir()
        do {
            let be = try Backend(path: dir.db, options: options())
            for i in 0..<500 { try be.put(.key, key: b("k\(i)"), value: [UInt8](repeating: 1, count: 500)) }
            try be.close()
        }
        let size = try #require(try FileManager.default.attributesOfItem(atPath: dir.db)[.size] as? NSNumber).intValue
        #expect(truncate(dir.db, off_t(size / 2)) == 0)
        #expect(throws: BackendError.self) { _ = try Backend(path: dir.db, options: options()) }
    }
}
