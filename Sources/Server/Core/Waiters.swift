import Foundation
import Synchronization

/// Unique proposal IDs for one member: the low 16 bits of the member ID, then a 40-bit
/// millisecond timestamp taken at start, then a counter, as etcd's `idutil.Generator` lays them
/// out, so IDs stay unique across restarts of the same member.
public final class RequestIDGenerator: Sendable {
    private let prefix: UInt64
    private let counter: Atomic<UInt64>

    /// A generator for `memberID`, seeded with the current time (or `startMilliseconds`).
    public init(memberID: UInt64, startMilliseconds: UInt64? = nil) {
        let ms = startMilliseconds ?? UInt64(Date().timeIntervalSince1970 * 1000)
        prefix = (memberID & 0xFFFF) << 48
        counter = Atomic((ms & 0xFF_FFFF_FFFF) << 8)
    }

    /// The next ID (never 0).
    public func next() -> UInt64 {
        let c = counter.wrappingAdd(1, ordering: .relaxed).newValue
        return prefix | (c & 0xFFFF_FFFF_FFFF)
    }
}

/// Waiters for apply results keyed by request ID: a request registers before it is proposed,
/// the apply loop triggers the ID with the result, and each waiter resumes at most once.
///
/// Timeouts cost no task or timer per request: a waiter stores its deadline in its slot, and
/// one sweep, scheduled every ``sweepInterval`` only while some waiter is suspended, fails the
/// overdue ones (a wait ends at most one interval after its deadline).
final class Waiters<Value: Sendable>: Sendable {
    private enum Slot {
        case waiting(CheckedContinuation<Value, any Error>, deadline: ContinuousClock.Instant, timeoutError: any Error)
        /// A waiter without a task: `callback` gets the result (on the triggering thread).
        case callback(@Sendable (Result<Value, any Error>) -> Void, deadline: ContinuousClock.Instant, timeoutError: any Error)
        /// Triggered (or failed) before the waiter suspended.
        case done(Result<Value, any Error>)
        /// Registered but not yet suspended.
        case registered

        /// Hands `result` to a suspended waiter (nothing for the other states).
        func deliver(_ result: Result<Value, any Error>) {
            switch self {
            case .waiting(let c, _, _): c.resume(with: result)
            case .callback(let f, _, _): f(result)
            default: break
            }
        }
    }
    private struct State {
        var slots: [UInt64: Slot] = [:]
        /// Suspended waiters (those with a deadline).
        var suspended = 0
        /// Whether a sweep is scheduled.
        var sweeping = false
    }
    private let state = Mutex(State())
    let sweepInterval: Duration

    init(sweepInterval: Duration = .milliseconds(20)) {
        self.sweepInterval = sweepInterval
    }

    /// Reserves `id`; call before proposing so a fast apply finds it.
    func register(_ id: UInt64) {
        state.withLock { $0.slots[id] = .registered }
    }

    /// Reserves `id` for a waiter without a task: `callback` runs once with the result, or with
    /// `timeoutError` after `timeout`, on the thread that triggers it (the Raft loop: keep it
    /// short, hand real work to another thread).
    func register(_ id: UInt64, timeout: Duration, timeoutError: any Error,
                  callback: @escaping @Sendable (Result<Value, any Error>) -> Void) {
        let deadline = ContinuousClock.now + timeout
        let startSweep = state.withLock { s -> Bool in
            s.slots[id] = .callback(callback, deadline: deadline, timeoutError: timeoutError)
            s.suspended += 1
            let start = !s.sweeping
            s.sweeping = true
            return start
        }
        if startSweep { scheduleSweep() }
    }

    /// Whether `id` is registered (the apply loop skips building results nobody waits for).
    func isRegistered(_ id: UInt64) -> Bool { state.withLock { $0.slots[id] != nil } }

    /// Whether a waiter for `id` is suspended (tests).
    func isSuspended(_ id: UInt64) -> Bool {
        state.withLock { if case .waiting? = $0.slots[id] { return true } else { return false } }
    }

    /// Number of pending waiters.
    var count: Int { state.withLock { $0.slots.count } }

    /// Whether a timeout sweep is scheduled (tests: none once nobody waits).
    var isSweeping: Bool { state.withLock { $0.sweeping } }

    /// Delivers the result for `id` (no-op if nobody waits).
    func trigger(_ id: UInt64, _ result: Result<Value, any Error>) {
        let taken: Slot? = state.withLock { s in
            switch s.slots[id] {
            case .waiting?, .callback?:
                s.suspended -= 1
                return s.slots.removeValue(forKey: id)
            case .registered?:
                s.slots[id] = .done(result)
                return nil
            default:
                return nil
            }
        }
        taken?.deliver(result)
    }

    /// Fails every pending waiter with `error` (server stop).
    func failAll(_ error: any Error) {
        let all: [Slot] = state.withLock { s in
            let a = Array(s.slots.values)
            s.slots.removeAll()
            s.suspended = 0
            return a
        }
        for slot in all { slot.deliver(.failure(error)) }
    }

    /// Waits for the result of `id` at most `timeout`; then throws `timeoutError` and forgets
    /// the ID (a late apply result is dropped).
    func wait(_ id: UInt64, timeout: Duration, timeoutError: any Error) async throws -> Value {
        let deadline = ContinuousClock.now + timeout
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Value, any Error>) in
                let (early, startSweep): (Result<Value, any Error>?, Bool) = state.withLock { s in
                    switch s.slots[id] {
                    case .done(let r)?:
                        s.slots[id] = nil
                        return (r, false)
                    case .registered?:
                        s.slots[id] = .waiting(c, deadline: deadline, timeoutError: timeoutError)
                        s.suspended += 1
                        let start = !s.sweeping
                        s.sweeping = true
                        return (nil, start)
                    default:
                        return (.failure(timeoutError), false)
                    }
                }
                if let early { c.resume(with: early) }
                if startSweep { scheduleSweep() }
            }
        } onCancel: {
            self.trigger(id, .failure(CancellationError()))
        }
    }

    private func scheduleSweep() {
        let nanos = sweepInterval.components.seconds * 1_000_000_000
            + sweepInterval.components.attoseconds / 1_000_000_000
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanos))) { [self] in sweep() }
    }

    /// Fails the overdue waiters; schedules the next sweep while any waiter is suspended.
    private func sweep() {
        let now = ContinuousClock.now
        let (overdue, again): ([(Slot, any Error)], Bool) = state.withLock { s in
            var overdue: [(Slot, any Error)] = []
            var ids: [UInt64] = []
            if s.suspended > 0 {
                for (id, slot) in s.slots {
                    switch slot {
                    case .waiting(_, let deadline, let error), .callback(_, let deadline, let error):
                        if deadline <= now {
                            overdue.append((slot, error))
                            ids.append(id)
                        }
                    default:
                        break
                    }
                }
                for id in ids { s.slots[id] = nil }
                s.suspended -= overdue.count
            }
            s.sweeping = s.suspended > 0
            return (overdue, s.sweeping)
        }
        for (slot, error) in overdue { slot.deliver(.failure(error)) }
        if again { scheduleSweep() }
    }
}

/// A one-shot event that long-running streams (watch, keep-alive) wait on, so a graceful stop
/// can end them instead of waiting for their clients to leave.
public final class ShutdownSignal: Sendable {
    private struct State {
        var fired = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var callbacks: [UInt64: @Sendable () -> Void] = [:]
        var next: UInt64 = 0
    }
    private let state = Mutex(State())

    init() {}

    /// Whether ``fire()`` was called.
    public var isFired: Bool { state.withLock { $0.fired } }

    /// Wakes every current and future waiter.
    public func fire() {
        let (all, callbacks) = state.withLock { s -> ([CheckedContinuation<Void, Never>], [@Sendable () -> Void]) in
            s.fired = true
            defer {
                s.waiters.removeAll()
                s.callbacks.removeAll()
            }
            return (Array(s.waiters.values), Array(s.callbacks.values))
        }
        for c in all { c.resume() }
        for body in callbacks { body() }
    }

    /// Runs `body` once when fired (on the firing thread; keep it short) unless removed first;
    /// nil, and `body` is not kept, when already fired.
    func onFire(_ body: @escaping @Sendable () -> Void) -> UInt64? {
        state.withLock { s -> UInt64? in
            if s.fired { return nil }
            s.next += 1
            s.callbacks[s.next] = body
            return s.next
        }
    }

    /// Forgets a callback of ``onFire(_:)``.
    func removeCallback(_ id: UInt64) {
        _ = state.withLock { $0.callbacks.removeValue(forKey: id) }
    }

    /// Returns once fired, or when the calling task is cancelled.
    public func wait() async {
        let id = state.withLock { s -> UInt64 in
            s.next += 1
            return s.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { s -> Bool in
                    if s.fired || Task.isCancelled { return true }
                    s.waiters[id] = c
                    return false
                }
                if resumeNow { c.resume() }
            }
        } onCancel: {
            let c = state.withLock { $0.waiters.removeValue(forKey: id) }
            c?.resume()
        }
    }
}
