import Foundation
import LMDBBackend
import Testing

#if canImport(Glibc)
import Glibc
#endif

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

private func options(map: Int = 1 << 30) -> Backend.Options {
    var o = Backend.Options()
    o.sync = false
    o.initialMapSize = map
    return o
}

/// `Backend.openCopyStream()`: a consistent copy read as bytes, with no file on disk.
@Suite struct BackendCopyStreamTests {
    /// The stream has exactly `size` bytes, is the db as of its opening (later writes are not
    /// in it), opens as a backend, and nothing was written next to the db.
    @Test(.timeLimit(.minutes(1))) func streamIsAPointInTimeCopy() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options())
        for i in 0..<2000 { try be.put(.key, key: b("k\(i)"), value: [UInt8](repeating: UInt8(i % 251), count: 300)) }
        try be.setConsistentIndex(7)
        let hash = try be.hash()
        let filesBefore = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()

        let stream = try be.openCopyStream()
        // Writes after the stream opened are not part of it.
        try be.put(.key, key: b("later"), value: b("x"))
        try be.commit()
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == filesBefore)
        var bytes: [UInt8] = []
        while true {
            let chunk = try stream.read(maxBytes: 32 * 1024)
            if chunk.isEmpty { break }
            bytes += chunk
        }
        stream.close()
        #expect(Int64(bytes.count) == stream.size)

        let copyPath = dir.path + "/copy.db"
        #expect(FileManager.default.createFile(atPath: copyPath, contents: Data(bytes)))
        let copy = try Backend(path: copyPath, options: options())
        #expect(try copy.hash() == hash)
        #expect(try copy.consistentIndex() == 7)
        #expect(try copy.read { try $0.get(.key, key: b("later")) } == nil)
    }

    /// A reader that stops reading must not stop writes: when the map has to grow, the stream
    /// is aborted (its reader gets an error) and the commit goes through.
    @Test(.timeLimit(.minutes(1))) func stalledStreamIsAbortedWhenTheMapMustGrow() async throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options(map: 1 << 20))
        for i in 0..<100 { try be.put(.key, key: b("k\(i)"), value: [UInt8](repeating: 1, count: 2000)) }
        try be.commit()
        let stream = try be.openCopyStream()
        _ = try stream.read(maxBytes: 4096)  // begun, then stalled
        // Far more than the 1 MiB map: the commit needs a bigger map.
        let writer = Task.detached {
            for i in 0..<2000 { try be.put(.key, key: b("big\(i)"), value: [UInt8](repeating: 2, count: 2000)) }
            try be.commit()
        }
        try await writer.value
        #expect(try be.read { try $0.get(.key, key: b("big1999")) }?.count == 2000)
        var failed = false
        do {
            while try !stream.read(maxBytes: 1 << 20).isEmpty {}
        } catch {
            failed = "\(error)".contains("aborted")
        }
        #expect(failed, "the stalled stream should end with an abort error")
        stream.close()
    }

    /// Closing a stream before the end stops the copy; the backend can grow and close.
    @Test(.timeLimit(.minutes(1))) func closingEarlyReleasesTheCopy() throws {
        let dir = BackendTempDir()
        let be = try Backend(path: dir.db, options: options(map: 1 << 20))
        for i in 0..<200 { try be.put(.key, key: b("k\(i)"), value: [UInt8](repeating: 1, count: 2000)) }
        try be.commit()
        for _ in 0..<3 {
            let s = try be.openCopyStream()
            _ = try s.read(maxBytes: 100)
            s.close()
        }
        for i in 0..<2000 { try be.put(.key, key: b("big\(i)"), value: [UInt8](repeating: 2, count: 2000)) }
        try be.commit()
        try be.close()
    }
}
