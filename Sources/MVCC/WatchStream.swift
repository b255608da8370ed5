import Foundation

/// A set of watches sharing one bounded response buffer (one gRPC Watch stream).
///
/// Writers never wait for the consumer: when the buffer is full, the watcher whose response
/// did not fit is parked (a "victim") with that response and stops receiving new events; when
/// the consumer makes room, parked responses are resent and the watcher catches up from the
/// backend. Each watcher therefore sees every event of its range exactly once, in revision
/// order. One consumer task reads with `next()` (or `for await`); `close()` ends the stream.
public final class WatchStream: AsyncSequence, @unchecked Sendable {
    public typealias Element = WatchResponse

    let store: MVCCStore
    let capacity: Int
    let capacityBytes: Int
    private let bufferLock = NSLock()
    private var buffer: [WatchResponse] = []
    /// `approximateBytes` of the unread responses in `buffer`.
    private var bufferedBytes = 0
    private var head = 0
    private var waiter: CheckedContinuation<WatchResponse?, Never>?
    private var closed = false
    private var overflowed = false
    /// Guarded by the store's lock.
    var watchers: [Int64: Watcher] = [:]
    private var nextID: Int64 = 0

    init(store: MVCCStore, capacity: Int, capacityBytes: Int = .max) {
        self.store = store
        self.capacity = capacity
        self.capacityBytes = capacityBytes
    }

    // MARK: consumer side

    /// The next response, waiting for one; nil once the stream is closed or the calling task
    /// is cancelled.
    public func next() async -> WatchResponse? {
        let (ready, retry): (WatchResponse??, Bool) = bufferLock.withLock { popLocked() }
        if retry { store.retryVictims() }
        if let r = ready { return r }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<WatchResponse?, Never>) in
                bufferLock.lock()
                let (r, _) = popLocked()
                if let r {
                    bufferLock.unlock()
                    c.resume(returning: r)
                } else if Task.isCancelled {
                    bufferLock.unlock()
                    c.resume(returning: nil)
                } else {
                    waiter = c
                    bufferLock.unlock()
                }
            }
        } onCancel: {
            let w: CheckedContinuation<WatchResponse?, Never>? = bufferLock.withLock {
                defer { waiter = nil }
                return waiter
            }
            w?.resume(returning: nil)
        }
    }

    /// The buffered response, if any, without waiting (nil when none is ready).
    public func poll() -> WatchResponse? {
        let (ready, retry): (WatchResponse??, Bool) = bufferLock.withLock { popLocked() }
        if retry { store.retryVictims() }
        return ready ?? nil
    }

    /// (.some(response) | .some(nil) when closed | nil when empty, whether room was needed).
    private func popLocked() -> (WatchResponse??, Bool) {
        if head < buffer.count {
            let r = buffer[head]
            buffer[head] = WatchResponse(watchID: 0, events: [], revision: 0)
            head += 1
            bufferedBytes -= r.approximateBytes
            if head > 64 && head * 2 > buffer.count {
                buffer.removeFirst(head)
                head = 0
            }
            let retry = overflowed
            overflowed = false
            return (.some(r), retry)
        }
        if closed { return (.some(nil), false) }
        // Empty but a push failed (e.g. a cancel purged the buffer): let parked watchers in.
        let retry = overflowed
        overflowed = false
        return (nil, retry)
    }

    /// Buffered responses not yet read.
    public var bufferedCount: Int { bufferLock.withLock { buffer.count - head } }

    /// Approximate bytes of the buffered responses not yet read.
    public var bufferedBytesCount: Int { bufferLock.withLock { bufferedBytes } }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: WatchStream
        public mutating func next() async -> WatchResponse? { await stream.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: self) }

    // MARK: producer side (store lock held)

    /// Adds a response unless the buffer is full; false when it did not fit.
    func push(_ r: WatchResponse) -> Bool {
        bufferLock.lock()
        if closed { bufferLock.unlock(); return true }
        if let w = waiter {
            waiter = nil
            bufferLock.unlock()
            w.resume(returning: r)
            return true
        }
        let size = r.approximateBytes
        let pending = buffer.count - head
        if pending >= capacity || (pending > 0 && bufferedBytes + size > capacityBytes) {
            overflowed = true
            bufferLock.unlock()
            return false
        }
        buffer.append(r)
        bufferedBytes += size
        bufferLock.unlock()
        return true
    }

    /// Drops buffered responses of `watchID`; true if that made room after a failed push.
    private func purge(watchID: Int64) -> Bool {
        bufferLock.withLock {
            let before = buffer.count - head
            buffer = Array(buffer[head...]).filter { $0.watchID != watchID }
            head = 0
            bufferedBytes = buffer.reduce(0) { $0 + $1.approximateBytes }
            guard overflowed, buffer.count < before else { return false }
            overflowed = false
            return true
        }
    }

    var allSyncedLocked: Bool { watchers.values.allSatisfy { $0.state == .synced } }

    // MARK: control

    /// Starts watching `key` (`rangeEnd` as in `RangeRequest`) from `startRevision`
    /// (0: from the next change). `id` -1 picks the next free ID. A start revision below the
    /// compact revision yields a canceled response carrying the compact revision.
    /// Returns the watch ID.
    @discardableResult
    public func watch(key: [UInt8], rangeEnd: [UInt8] = [], startRevision: Int64 = 0,
                      options: WatchOptions = WatchOptions(), id: Int64 = -1) throws -> Int64 {
        try store.lock.withLock {
            if bufferLock.withLock({ closed }) { throw MVCCError.watcherNotFound }
            var wid = id
            if wid >= 0 {
                if watchers[wid] != nil { throw MVCCError.duplicateWatchID }
            } else {
                while watchers[nextID] != nil { nextID += 1 }
                wid = nextID
                nextID += 1
            }
            let cur = store.currentRev
            let start = startRevision <= 0 ? cur + 1 : startRevision
            let w = Watcher(id: wid, key: key, rangeEnd: rangeEnd, options: options, stream: self, minRev: start)
            if start < store.compactMainRev {
                let resp = WatchResponse(watchID: wid, events: [], revision: cur,
                                         compactRevision: store.compactMainRev, canceled: true)
                if push(resp) { return wid }
            }
            watchers[wid] = w
            store.watch.add(w, as: start > cur ? .synced : .unsynced)
            return wid
        }
    }

    /// Stops watch `id`: no response of it is delivered after this returns.
    public func cancel(_ id: Int64) throws {
        try store.lock.withLock {
            guard let w = watchers[id] else { throw MVCCError.watcherNotFound }
            store.watch.remove(w)
            watchers[id] = nil
            if purge(watchID: id) { store.retryVictimsLocked() }
        }
    }

    /// Asks for a progress notification (`watchID == -1`, the current revision): sent at once
    /// when every watcher of the stream is synced, else as soon as they all are.
    public func requestProgress() {
        store.lock.withLock {
            store.watch.progressWaiting[ObjectIdentifier(self)] = self
            store.answerProgressLocked()
        }
    }

    /// Cancels every watch and ends the stream (`next()` returns nil).
    public func close() {
        store.lock.withLock {
            for (_, w) in watchers { store.watch.remove(w) }
            watchers.removeAll()
            store.watch.progressWaiting[ObjectIdentifier(self)] = nil
        }
        let w: CheckedContinuation<WatchResponse?, Never>? = bufferLock.withLock {
            closed = true
            buffer.removeAll()
            bufferedBytes = 0
            head = 0
            defer { waiter = nil }
            return waiter
        }
        w?.resume(returning: nil)
    }
}
