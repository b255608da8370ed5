import BoltFormat
import Crypto
import Foundation
import LMDBBackend

#if canImport(Glibc)
import Glibc
#endif

/// A snapshot file as `etcdctl snapshot save` writes it from swetcd's Maintenance.Snapshot
/// stream: the backend's db file, whose size is a multiple of 512, usually followed by a
/// 32-byte SHA-256 of those bytes (the server appends it; etcdctl keeps it).
struct SnapshotFile {
    let path: String
    /// Size of the whole file.
    let size: Int64
    /// Whether the file ends with the SHA-256 trailer.
    let hasHash: Bool
    /// Bytes of the db (the file without the trailer).
    var dbSize: Int64 { hasHash ? size - 32 : size }

    /// Opens `path` and checks its size: a multiple of 512, optionally plus 32 for the hash.
    init(path: String) throws {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw ToolError("cannot open snapshot file \(path): \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ToolError("snapshot file \(path) is not a regular file") }
        let size = Int64(st.st_size)
        guard size > 0 else { throw ToolError("snapshot file \(path) is empty") }
        switch size % 512 {
        case 0: hasHash = false
        case 32 where size > 32: hasHash = true
        default:
            throw ToolError("snapshot file \(path) has \(size) bytes: neither a multiple of 512 nor that plus a 32-byte "
                            + "SHA-256, so it is truncated or not a snapshot")
        }
        self.path = path
        self.size = size
    }

    /// Checks the trailer against the SHA-256 of the db bytes. A file without a trailer passes
    /// only with `skipMissing` (restore's `--skip-hash-check`).
    func verifyHash() throws {
        guard hasHash else {
            throw ToolError("snapshot file \(path) has no SHA-256 trailer (not saved by etcdctl snapshot save?); "
                            + "use --skip-hash-check to use it anyway")
        }
        var hasher = SHA256()
        var trailer: [UInt8] = []
        try stream(count: size) { chunk, offset in
            let dbPart = Int(max(0, min(Int64(chunk.count), dbSize - offset)))
            if dbPart > 0 { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: chunk[..<dbPart])) }
            if dbPart < chunk.count { trailer += chunk[dbPart...] }
        }
        let digest = Array(hasher.finalize())
        guard trailer == digest else {
            throw ToolError("snapshot file \(path) is damaged: its SHA-256 trailer is \(hex(trailer)) but the data "
                            + "hashes to \(hex(digest))")
        }
    }

    /// Writes the db bytes to a new file at `destination` and syncs it.
    func copyDB(to destination: String) throws {
        let out = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw ToolError("cannot create \(destination): \(String(cString: strerror(errno)))") }
        defer { close(out) }
        try stream(count: dbSize) { chunk, _ in
            var done = 0
            while done < chunk.count {
                let n = write(out, chunk.baseAddress! + done, chunk.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw ToolError("cannot write \(destination): \(String(cString: strerror(errno)))") }
                done += n
            }
        }
        guard fsync(out) == 0 else { throw ToolError("cannot sync \(destination): \(String(cString: strerror(errno)))") }
    }

    /// Reads the first `count` bytes in chunks: `body(chunk, offsetOfChunk)`.
    private func stream(count: Int64, _ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ToolError("cannot open snapshot file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let chunkSize = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        var offset: Int64 = 0
        while offset < count {
            let want = Int(min(Int64(chunkSize), count - offset))
            let n = read(fd, buffer.baseAddress, want)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw ToolError("snapshot file \(path): read failed at offset \(offset): "
                                + (n == 0 ? "unexpected end of file" : String(cString: strerror(errno))))
            }
            try body(UnsafeRawBufferPointer(rebasing: buffer[..<n]), offset)
            offset += Int64(n)
        }
    }

    /// Whether the db is a bbolt file (etcd's format, also what swetcd's Maintenance.Snapshot
    /// sends) rather than an LMDB copy (older swetcd snapshots).
    func isBolt() throws -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ToolError("cannot open snapshot file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 64)
        let n = head.withUnsafeMutableBytes { read(fd, $0.baseAddress, 64) }
        return n == 64 && BoltReader.looksLikeBolt(head)
    }

    /// Opens the db as a bbolt file (the hash trailer left out).
    func boltReader() throws -> BoltReader {
        do { return try BoltReader(path: path, limit: dbSize) } catch {
            throw ToolError("snapshot file \(path) is not a valid etcd backend: \(error)")
        }
    }

    /// Opens a private copy of the db (the file itself is never opened by LMDB, which would
    /// create a lock file beside it) and runs `body` on it; the copy is removed afterwards.
    func withBackend<T>(_ body: (Backend) throws -> T) throws -> T {
        let dir = NSTemporaryDirectory() + "swetcdutl-snapshot-\(UUID().uuidString)"
        guard mkdir(dir, 0o700) == 0 else { throw ToolError("cannot create \(dir): \(String(cString: strerror(errno)))") }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let db = dir + "/db"
        try copyDB(to: db)
        var options = Backend.Options()
        options.sync = false
        options.initialMapSize = 1 << 20
        let backend: Backend
        do {
            backend = try Backend(path: db, options: options)
        } catch {
            throw ToolError("snapshot file \(path) does not hold a swetcd backend: \(error)")
        }
        defer { backend.abandon() }
        return try body(backend)
    }
}

/// Lower-case hex of `bytes`.
func hex(_ bytes: [UInt8]) -> String {
    bytes.map { b in String(b >> 4, radix: 16) + String(b & 0xF, radix: 16) }.joined()
}
