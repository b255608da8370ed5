import Foundation
import Synchronization
import Testing
@testable import LMDBBackend

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

/// `Backend.replace(withFileAt:)`: the same object continues on another complete db file.
@Suite struct BackendReplaceTests {
    private static func options() -> Backend.Options {
        var o = Backend.Options()
        o.sync = false
        return o
    }

    /// A complete backend file at `path` holding `key` = `value` and consistent index `index`.
    private static func makeFile(_ path: String, key: String, value: String, index: UInt64) throws {
        let be = try Backend(path: path, options: options())
        try be.put(.key, key: b(key), value: b(value))
        try be.setConsistentIndex(index)
        try be.close()
        unlink(path + "-lock")
    }

    @Test func continuesOnTheNewFileWhileOldViewsKeepTheOldOne() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: Self.options())
        try be.put(.key, key: b("old"), value: b("1"))
        for i in 0..<500 { try be.put(.key, key: b("bulk\(i)"), value: [UInt8](repeating: 1, count: 1000)) }
        try be.commit()
        let oldSize = try be.fileSize()
        // Staged, not committed: it goes to the old file, not the new one.
        try be.put(.key, key: b("staged"), value: b("2"))
        let view = try be.snapshot()
        let received = dir.path + "/0000000000000064.snap.db"
        try Self.makeFile(received, key: "new", value: "3", index: 100)

        try be.replace(withFileAt: received)
        // The size known from memory is the new file's.
        #expect(try be.committedFileSize() == be.fileSize())
        #expect(try be.committedFileSize() < oldSize)
        #expect(!FileManager.default.fileExists(atPath: received))
        #expect(!FileManager.default.fileExists(atPath: received + "-lock"))
        try be.read { (r: BackendReader) throws in
            #expect(try r.get(.key, key: b("new")) == b("3"))
            #expect(try r.get(.key, key: b("old")) == nil)
            #expect(try r.get(.key, key: b("staged")) == nil)
        }
        #expect(try be.consistentIndex() == 100)
        // A view taken before still reads the old contents.
        try view.read { (r: BackendReader) throws in
            #expect(try r.get(.key, key: b("old")) == b("1"))
            #expect(try r.get(.key, key: b("new")) == nil)
        }
        view.release()
        // Writes go to the new file and survive a reopen.
        try be.put(.key, key: b("after"), value: b("4"))
        try be.close()
        let reopened = try Backend(path: dir.db, options: Self.options())
        try reopened.read { (r: BackendReader) throws in
            #expect(try r.get(.key, key: b("new")) == b("3"))
            #expect(try r.get(.key, key: b("after")) == b("4"))
            #expect(try r.get(.key, key: b("old")) == nil)
        }
        try reopened.close()
    }

    @Test func aMissingOrBadFileLeavesTheOldContentsInUse() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: Self.options())
        try be.put(.key, key: b("old"), value: b("1"))
        #expect(throws: BackendError.self) { try be.replace(withFileAt: dir.path + "/missing.snap.db") }
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/missing.snap.db"))
        let truncated = dir.path + "/bad.snap.db"
        try Self.makeFile(truncated, key: "new", value: "2", index: 5)
        let fh = try #require(FileHandle(forWritingAtPath: truncated))
        try fh.truncate(atOffset: 4096 * 2)
        try fh.close()
        #expect(throws: BackendError.self) { try be.replace(withFileAt: truncated) }
        #expect(FileManager.default.fileExists(atPath: truncated))
        #expect(!FileManager.default.fileExists(atPath: truncated + "-lock"))
        #expect(try be.read { try $0.get(.key, key: b("old")) } == b("1"))
        try be.close()
    }

    @Test func aDefragmentationRunningAcrossTheReplaceGivesUp() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: Self.options())
        for i in 0..<100 { try be.put(.key, key: b("k\(i)"), value: b("v")) }
        try be.commit()
        let received = dir.path + "/0000000000000010.snap.db"
        try Self.makeFile(received, key: "new", value: "1", index: 16)
        // Replace while the defragmentation's copy is done (its first step).
        let replaced = Mutex(false)
        be.setDefragStepHook { step in
            if step == .copied {
                try? be.replace(withFileAt: received)
                replaced.withLock { $0 = true }
            }
            return false
        }
        #expect(throws: BackendError.self) { try be.defragment() }
        #expect(replaced.withLock { $0 })
        #expect(try be.read { try $0.get(.key, key: b("new")) } == b("1"))
        #expect(try be.read { try $0.get(.key, key: b("k1")) } == nil)
        #expect(!FileManager.default.fileExists(atPath: dir.db + ".defrag"))
        try be.close()
    }
}
