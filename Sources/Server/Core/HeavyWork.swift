import Foundation
import LMDBBackend
import Synchronization

/// A few dedicated threads for long blocking work (Hash, HashKV, compaction jobs), so that it
/// never occupies Swift's cooperative pool, which every RPC, keep-alive and health check
/// shares (it has one thread per core). At most `threads` jobs run at once; the others wait in
/// a FIFO queue, and their callers wait suspended (holding no thread).
public final class HeavyWorkPool: @unchecked Sendable {
    /// The server's pool: two jobs at a time.
    public static let shared = HeavyWorkPool(threads: 2, name: "swetcd-heavy")
    /// Blocking waits that are short but not bounded by us (reading a snapshot stream while
    /// LMDB's copy produces it): more threads, little CPU.
    public static let io = HeavyWorkPool(threads: 8, name: "swetcd-io")

    private let condition = NSCondition()
    private var queue: [@Sendable () -> Void] = []
    private var head = 0
    private var started = 0
    private var running = 0
    private let threads: Int
    private let name: String

    /// A pool of at most `threads` worker threads (started on first use) named `name`.
    public init(threads: Int, name: String) {
        self.threads = max(1, threads)
        self.name = name
    }

    /// Jobs waiting for a thread, and jobs running.
    public var load: (queued: Int, running: Int) {
        condition.withLock { (queue.count - head, running) }
    }

    /// Runs `body` on one of the pool's threads and returns its result; the caller is
    /// suspended meanwhile. Cancelling the caller does not stop a job already running.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            submit {
                do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
            }
        }
    }

    private func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        queue.append(job)
        if started < threads && started - running < queue.count - head {
            started += 1
            let threadName = "\(name)-\(started)"
            let t = Thread { [self] in
                nameCurrentThread(threadName)
                work()
            }
            t.name = threadName
            t.start()
        }
        condition.signal()
        condition.unlock()
    }

    private func work() {
        while true {
            condition.lock()
            while head == queue.count { condition.wait() }
            let job = queue[head]
            head += 1
            if head == queue.count {
                queue.removeAll(keepingCapacity: true)
                head = 0
            }
            running += 1
            condition.unlock()
            job()
            condition.withLock { running -= 1 }
        }
    }
}

/// Counts concurrent Maintenance.Snapshot streams against a limit.
public final class SnapshotStreams: Sendable {
    /// Streams served at once (each holds an LMDB read transaction and a copy thread).
    public let limit: Int
    private let open = Mutex(0)

    public init(limit: Int) { self.limit = max(1, limit) }

    /// Streams open now.
    public var count: Int { open.withLock { $0 } }

    /// Takes a slot; false when all are taken.
    func acquire() -> Bool {
        open.withLock { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }

    @Sendable func release() { open.withLock { $0 -= 1 } }
}

/// A ``SnapshotReader`` over a streamed backend copy; releases its slot once closed.
final class StreamSnapshotReader: SnapshotReader {
    private let stream: BackendCopyStream
    private let releaseSlot: @Sendable () -> Void
    private let closed = Mutex(false)

    init(stream: BackendCopyStream, release: @escaping @Sendable () -> Void) {
        self.stream = stream
        self.releaseSlot = release
    }

    var size: Int64 { stream.size }

    func read(maxBytes: Int) throws -> [UInt8] { try stream.read(maxBytes: maxBytes) }

    func close() {
        let first = closed.withLock { c -> Bool in
            defer { c = true }
            return !c
        }
        guard first else { return }
        stream.close()
        releaseSlot()
    }
}
