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
final class Waiters<Value: Sendable>: Sendable {
    private enum Slot {
        case waiting(CheckedContinuation<Value, any Error>)
        /// Triggered (or failed) before the waiter suspended.
        case done(Result<Value, any Error>)
        /// Registered but not yet suspended.
        case registered
    }
    private let slots = Mutex<[UInt64: Slot]>([:])

    /// Reserves `id`; call before proposing so a fast apply finds it.
    func register(_ id: UInt64) {
        slots.withLock { $0[id] = .registered }
    }

    /// Whether `id` is registered (the apply loop skips building results nobody waits for).
    func isRegistered(_ id: UInt64) -> Bool { slots.withLock { $0[id] != nil } }

    /// Whether a waiter for `id` is suspended (tests).
    func isSuspended(_ id: UInt64) -> Bool {
        slots.withLock { if case .waiting? = $0[id] { return true } else { return false } }
    }

    /// Number of pending waiters.
    var count: Int { slots.withLock { $0.count } }

    /// Delivers the result for `id` (no-op if nobody waits).
    func trigger(_ id: UInt64, _ result: Result<Value, any Error>) {
        let cont: CheckedContinuation<Value, any Error>? = slots.withLock { s in
            switch s[id] {
            case .waiting(let c)?:
                s[id] = nil
                return c
            case .registered?:
                s[id] = .done(result)
                return nil
            default:
                return nil
            }
        }
        cont?.resume(with: result)
    }

    /// Fails every pending waiter with `error` (server stop).
    func failAll(_ error: any Error) {
        let all: [(UInt64, Slot)] = slots.withLock { s in
            let a = Array(s)
            s.removeAll()
            return a
        }
        for (_, slot) in all {
            if case .waiting(let c) = slot { c.resume(throwing: error) }
        }
    }

    /// Waits for the result of `id` at most `timeout`; then throws `timeoutError` and forgets
    /// the ID (a late apply result is dropped).
    func wait(_ id: UInt64, timeout: Duration, timeoutError: any Error) async throws -> Value {
        let timer = Task {
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { self.trigger(id, .failure(timeoutError)) }
        }
        defer { timer.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Value, any Error>) in
                let early: Result<Value, any Error>? = slots.withLock { s in
                    switch s[id] {
                    case .done(let r)?:
                        s[id] = nil
                        return r
                    case .registered?:
                        s[id] = .waiting(c)
                        return nil
                    default:
                        return .failure(timeoutError)
                    }
                }
                if let early { c.resume(with: early) }
            }
        } onCancel: {
            self.trigger(id, .failure(CancellationError()))
        }
    }
}

/// A one-shot event that long-running streams (watch, keep-alive) wait on, so a graceful stop
/// can end them instead of waiting for their clients to leave.
public final class ShutdownSignal: Sendable {
    private struct State {
        var fired = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var next: UInt64 = 0
    }
    private let state = Mutex(State())

    init() {}

    /// Whether ``fire()`` was called.
    public var isFired: Bool { state.withLock { $0.fired } }

    /// Wakes every current and future waiter.
    public func fire() {
        let all = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.fired = true
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        for c in all { c.resume() }
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
