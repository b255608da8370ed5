#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call on a WAL or snapshot file: which call, on which path, and the OS error.
public struct FileIOError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The operation that failed, e.g. `"fdatasync"`.
    public let operation: String
    /// The file or directory it was applied to.
    public let path: String
    /// The `errno` value.
    public let code: Int32

    public var description: String {
        "\(operation) \(path): \(String(cString: strerror(code))) (errno \(code))"
    }
}

/// An open file descriptor with the few POSIX calls the WAL and snapshot code need.
/// Every call retries on EINTR and loops over short reads and writes.
final class FileIOHandle {
    var path: String
    private(set) var fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { if fd >= 0 { _ = Glibc.close(fd) } }

    static func open(_ path: String, flags: Int32, mode: mode_t = 0o600) throws -> FileIOHandle {
        var fd: Int32
        repeat { fd = Glibc.open(path, flags | O_CLOEXEC, mode) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw FileIOError(operation: "open", path: path, code: errno) }
        return FileIOHandle(path: path, fd: fd)
    }

    static func openDirectory(_ path: String) throws -> FileIOHandle {
        try open(path, flags: O_RDONLY | O_DIRECTORY)
    }

    func fail(_ op: String, _ code: Int32 = errno) -> FileIOError {
        FileIOError(operation: op, path: path, code: code)
    }

    func size() throws -> Int64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw fail("fstat") }
        return Int64(st.st_size)
    }

    /// Reads up to `count` bytes at `offset`; fewer only at end of file.
    func read(at offset: Int64, count: Int) throws -> [UInt8] {
        var failure: FileIOError?
        let out = [UInt8](unsafeUninitializedCapacity: max(count, 0)) { buf, initialized in
            var done = 0
            while done < count {
                let n = pread(fd, buf.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = fail("pread")
                    break
                }
                if n == 0 { break }
                done += n
            }
            initialized = done
        }
        if let failure { throw failure }
        return out
    }

    /// The whole file.
    func readAll() throws -> [UInt8] {
        let n = try size()
        guard n <= Int64(Int.max) else { throw fail("read", EFBIG) }
        return try read(at: 0, count: Int(n))
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw fail("pwrite")
            }
            done += n
        }
    }

    func write(_ bytes: [UInt8], at offset: Int64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    /// Writes `count` zero bytes at `offset` (from one shared 64 KiB buffer of zeros).
    func writeZeros(count: Int64, at offset: Int64) throws {
        var done: Int64 = 0
        while done < count {
            let n = min(count - done, Int64(FileIOHandle.zeros.count))
            try FileIOHandle.zeros.withUnsafeBytes { try write(UnsafeRawBufferPointer(rebasing: $0[..<Int(n)]), at: offset + done) }
            done += n
        }
    }

    private static let zeros = [UInt8](repeating: 0, count: 64 << 10)

    /// Flushes data (and the size if it changed), not other metadata.
    func dataSync() throws {
        var r: Int32
        repeat { r = fdatasync(fd) } while r != 0 && errno == EINTR
        guard r == 0 else { throw fail("fdatasync") }
    }

    /// Flushes data and all metadata; on a directory, makes its entries (creates, renames) durable.
    func sync() throws {
        var r: Int32
        repeat { r = fsync(fd) } while r != 0 && errno == EINTR
        guard r == 0 else { throw fail("fsync") }
    }

    func truncate(to length: Int64) throws {
        var r: Int32
        repeat { r = ftruncate(fd, off_t(length)) } while r != 0 && errno == EINTR
        guard r == 0 else { throw fail("ftruncate") }
    }

    /// Reserves blocks up to `length` so later writes need no allocation; new space reads as zeros.
    func preallocate(to length: Int64) throws {
        let r = posix_fallocate(fd, 0, off_t(length))
        guard r == 0 else { throw fail("posix_fallocate", r) }
    }

    /// An exclusive advisory lock, without waiting; false when another descriptor holds it.
    func tryLock() throws -> Bool {
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { return true }
        if errno == EWOULDBLOCK { return false }
        throw fail("flock")
    }

    func close() {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
    }
}

/// Directory-level helpers.
enum FileIO {
    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// Names in a directory, without "." and "..", sorted.
    static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw FileIOError(operation: "opendir", path: path, code: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let ent = readdir(dir) {
            let name = withUnsafePointer(to: &ent.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Creates a directory (mode 0700); succeeds if it already exists as a directory.
    static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o700) == 0 { return }
        let e = errno
        if e == EEXIST && isDirectory(path) { return }
        throw FileIOError(operation: "mkdir", path: path, code: e)
    }

    static func rename(_ from: String, _ to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw FileIOError(operation: "rename", path: "\(from) -> \(to)", code: errno) }
    }

    static func remove(_ path: String) throws {
        guard unlink(path) == 0 else { throw FileIOError(operation: "unlink", path: path, code: errno) }
    }

    static func removeDirectory(_ path: String) throws {
        guard rmdir(path) == 0 else { throw FileIOError(operation: "rmdir", path: path, code: errno) }
    }

    /// fsync of the directory itself, so entries created or renamed in it survive a crash.
    static func syncDirectory(_ path: String) throws {
        let d = try FileIOHandle.openDirectory(path)
        defer { d.close() }
        try d.sync()
    }

    static func join(_ a: String, _ b: String) -> String {
        a.hasSuffix("/") ? a + b : a + "/" + b
    }

    static func parent(_ path: String) -> String {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        guard let slash = p.lastIndex(of: "/") else { return "." }
        return slash == p.startIndex ? "/" : String(p[..<slash])
    }

    static func lastComponent(_ path: String) -> String {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        guard let slash = p.lastIndex(of: "/") else { return p }
        return String(p[p.index(after: slash)...])
    }
}

/// Little-endian integer encoding into a byte array.
extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        var le = v.littleEndian
        Swift.withUnsafeBytes(of: &le) { append(contentsOf: $0) }
    }

    mutating func storeLE<T: FixedWidthInteger>(_ v: T, at offset: Int) {
        var le = v.littleEndian
        Swift.withUnsafeBytes(of: &le) { src in
            for i in 0..<src.count { self[offset + i] = src[i] }
        }
    }
}

extension UnsafeRawBufferPointer {
    /// Little-endian integer at `offset`; the caller has checked the bounds.
    func loadLE<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
