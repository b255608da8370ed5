import Raft
import Synchronization

/// The bounded outgoing queue of one peer. It accepts messages only while a stream to the
/// peer is open; otherwise (and when full) `push` reports them as dropped. One consumer,
/// the stream writer, takes messages in order with `next()`.
final class PeerQueue: Sendable {
    private struct State {
        var items: [Raft.Message] = []
        var open = false
        var waiter: CheckedContinuation<[Raft.Message]?, Never>?
    }

    private let state = Mutex(State())
    let capacity: Int
    let maxTake: Int

    init(capacity: Int, maxTake: Int = 512) {
        self.capacity = max(1, capacity)
        self.maxTake = max(1, maxTake)
    }

    /// Queues `messages`; returns how many were dropped.
    func push(_ messages: [Raft.Message]) -> Int {
        let (dropped, wake) = state.withLock { s -> (Int, (CheckedContinuation<[Raft.Message]?, Never>, [Raft.Message])?) in
            guard s.open else { return (messages.count, nil) }
            let room = max(0, capacity - s.items.count)
            s.items.append(contentsOf: messages.prefix(room))
            let dropped = messages.count - min(room, messages.count)
            if let waiter = s.waiter, !s.items.isEmpty {
                s.waiter = nil
                return (dropped, (waiter, Self.take(&s, maxTake)))
            }
            return (dropped, nil)
        }
        if let (waiter, batch) = wake { waiter.resume(returning: batch) }
        return dropped
    }

    /// The next messages in order, waiting for some; `nil` once the queue is closed or the
    /// calling task is cancelled.
    func next() async -> [Raft.Message]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[Raft.Message]?, Never>) in
                let ready = state.withLock { s -> [Raft.Message]?? in
                    if !s.items.isEmpty { return .some(Self.take(&s, maxTake)) }
                    if !s.open { return .some(nil) }
                    s.waiter = continuation
                    return .none
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            _ = close()
        }
    }

    /// Starts accepting messages (a stream is up).
    func open() {
        state.withLock { $0.open = true }
    }

    /// Stops accepting messages, wakes the consumer with `nil` and returns what was still
    /// queued (now dropped).
    func close() -> [Raft.Message] {
        let (left, waiter) = state.withLock { s in
            s.open = false
            let left = s.items
            s.items = []
            let waiter = s.waiter
            s.waiter = nil
            return (left, waiter)
        }
        waiter?.resume(returning: nil)
        return left
    }

    private static func take(_ s: inout State, _ limit: Int) -> [Raft.Message] {
        if s.items.count <= limit {
            defer { s.items = [] }
            return s.items
        }
        let batch = Array(s.items.prefix(limit))
        s.items.removeFirst(limit)
        return batch
    }
}

/// A one-way "stopped" flag that tasks can await (cancellable) and event-loop code can
/// subscribe to (``onStop(_:)``).
final class StopSignal: Sendable {
    private struct State {
        var stopped = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var callbacks: [Int: @Sendable () -> Void] = [:]
        var nextKey = 0
    }

    private let state = Mutex(State())

    var isStopped: Bool { state.withLock { $0.stopped } }

    func stop() {
        let (waiters, callbacks) = state.withLock { s in
            s.stopped = true
            defer {
                s.waiters = [:]
                s.callbacks = [:]
            }
            return (Array(s.waiters.values), Array(s.callbacks.values))
        }
        for waiter in waiters { waiter.resume() }
        for callback in callbacks { callback() }
    }

    /// Runs `body` once when stopped (on the stopping thread); returns a key for
    /// ``cancelOnStop(_:)``, or nil (and does not run `body`) if already stopped.
    func onStop(_ body: @escaping @Sendable () -> Void) -> Int? {
        state.withLock { s -> Int? in
            guard !s.stopped else { return nil }
            defer { s.nextKey += 1 }
            s.callbacks[s.nextKey] = body
            return s.nextKey
        }
    }

    func cancelOnStop(_ key: Int) {
        _ = state.withLock { $0.callbacks.removeValue(forKey: key) }
    }

    /// Returns once stopped, or when the calling task is cancelled.
    func wait() async {
        let key = state.withLock { s in
            defer { s.nextKey += 1 }
            return s.nextKey
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { s -> Bool in
                    if s.stopped || Task.isCancelled { return true }
                    s.waiters[key] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: key) }
            waiter?.resume()
        }
    }
}
