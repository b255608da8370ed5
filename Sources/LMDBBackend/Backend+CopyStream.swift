import CLMDB
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A consistent point-in-time copy of the backend read as a byte stream, with no file on disk:
/// a thread runs LMDB's copy into one end of a socket pair and `read` takes bytes from the
/// other. The copy's read transaction lives until the stream ends, so the reader sets the pace.
///
/// A stream that has not ended when the backend must grow its map (which LMDB allows only with
/// no transaction open) is aborted: its reader gets an error instead of stalling every write.
public final class BackendCopyStream: @unchecked Sendable {
    /// Total bytes of the copy (two meta pages and every page in use when it began).
    public let size: Int64
    private let fd: Int32
    private let lock = NSLock()
    private var copyError: (any Error)?
    private var aborted = false
    private var closed = false
    private weak var backend: Backend?

    fileprivate init(size: Int64, fd: Int32, backend: Backend) {
        self.size = size
        self.fd = fd
        self.backend = backend
    }

    /// The next bytes (at most `maxBytes`), waiting for the copy; empty at the end. Throws
    /// when the copy failed or was aborted.
    public func read(maxBytes: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max(1, maxBytes))
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if n > 0 {
                filled += n
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw BackendError(message: "snapshot stream read failed: errno \(errno)") }
            break  // end of stream
        }
        if filled == 0 {
            // The copy thread records its outcome before closing its end.
            let (error, wasAborted) = lock.withLock { (copyError, aborted) }
            if wasAborted { throw BackendError(message: "snapshot stream aborted: the backend had to grow its map") }
            if let error { throw error }
        }
        buffer.removeSubrange(filled...)
        return buffer
    }

    /// Ends the stream; the copy stops at its next write. Safe to call more than once.
    public func close() {
        let first = lock.withLock { () -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
        backend?.removeCopyStream(self)
    }

    /// Stops the copy (its writes fail); the reader gets an error.
    func abort() {
        lock.withLock {
            guard !closed else { return }
            aborted = true
            shutdown(fd, Int32(SHUT_RDWR))
        }
    }

    fileprivate func finished(_ error: (any Error)?) {
        lock.withLock { copyError = error }
    }
}

extension Backend {
    /// Starts a consistent copy of the committed db (the batch is committed first) streamed
    /// through a ``BackendCopyStream``; no file is written. The stream must be closed.
    public func openCopyStream() throws -> BackendCopyStream {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw BackendError(message: "snapshot stream: socketpair failed: errno \(errno)")
        }
        let (readFD, writeFD) = (fds[0], fds[1])
        var bufferSize: Int32 = 1 << 20
        setsockopt(writeFD, SOL_SOCKET, SO_SNDBUF, &bufferSize, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(readFD, SOL_SOCKET, SO_RCVBUF, &bufferSize, socklen_t(MemoryLayout<Int32>.size))
        shutdown(readFD, Int32(SHUT_WR))
        return try lock.withLock {
            do {
                waitForScopes()
                try commitLocked()
                let e = try env()
                // No batch commits while the lock is held, so the copy's read transaction,
                // begun before the lock is released below, sees exactly these pages.
                let size = Int64(e.lastPage() + 1) * Int64(e.pageSize())
                let stream = BackendCopyStream(size: size, fd: readFD, backend: self)
                copies += 1
                copyStreams[ObjectIdentifier(stream)] = stream
                let env = UnsafeEnv(e)
                let thread = Thread { [self] in
                    nameCurrentThread("snapshot-copy")
                    // A write to a closed stream must fail with EPIPE, not kill the process.
                    var block = sigset_t()
                    sigemptyset(&block)
                    sigaddset(&block, SIGPIPE)
                    pthread_sigmask(SIG_BLOCK, &block, nil)
                    var failure: (any Error)?
                    do {
                        try lmdbCheck(mdb_env_copyfd2(env.env.env, writeFD, 0), "copy")
                    } catch {
                        failure = error
                    }
                    stream.finished(failure)
                    Glibc.close(writeFD)
                    lock.withLock {
                        copies -= 1
                        lock.broadcast()
                    }
                }
                thread.name = "snapshot-copy"
                thread.start()
                // The copy's transaction has begun once its first bytes (the meta pages)
                // arrive, or it failed (end of stream).
                var p = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
                var waited = 0
                while poll(&p, 1, 100) == 0 {
                    waited += 100
                    if waited >= 30_000 {
                        stream.abort()
                        break
                    }
                }
                return stream
            } catch {
                Glibc.close(readFD)
                Glibc.close(writeFD)
                throw error
            }
        }
    }

    func removeCopyStream(_ stream: BackendCopyStream) {
        lock.withLock { _ = copyStreams.removeValue(forKey: ObjectIdentifier(stream)) }
    }

    /// Aborts every open copy stream (the map must grow; lock held).
    func abortCopyStreamsLocked() {
        for s in copyStreams.values { s.abort() }
    }
}

/// The LMDB env handed to the copy thread, which keeps it open until the copy ends (LMDB's
/// env may be used from any thread).
private struct UnsafeEnv: @unchecked Sendable {
    let env: LMDBEnv
    init(_ env: LMDBEnv) { self.env = env }
}
