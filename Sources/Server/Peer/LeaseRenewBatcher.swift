import GRPCCore
import Synchronization

/// Coalesces the keep-alives a follower forwards to the leader: while one renew call to a
/// leader is in flight, further renewals for that leader wait and go out together in the next
/// call, so a busy follower makes one peer call per round trip instead of one per keep-alive.
/// An idle follower sends a lone renewal at once (no added delay).
final class LeaseRenewBatcher: Sendable {
    /// One lease's answer: its TTL, or etcd's error for that lease.
    typealias Outcome = Result<Int64, EtcdError>
    /// Sends one batch to `leader`; answers one outcome per ID, in order. A thrown error
    /// (not leader, unreachable) is every waiter's answer.
    typealias Send = @Sendable (_ leader: UInt64, _ ids: [Int64], _ timeout: Duration) async throws -> [Outcome]

    private struct Waiter {
        let id: Int64
        let continuation: CheckedContinuation<Int64, any Error>
    }

    private struct Line {
        var sending = false
        var waiting: [Waiter] = []
    }

    private let lines = Mutex<[UInt64: Line]>([:])
    /// The most IDs in one call.
    let maxBatch: Int
    /// The most renewals waiting for one leader; beyond it a renewal is refused at once with
    /// etcd's "too many requests" (each keep-alive stream already bounds its own requests).
    let maxWaiting: Int

    init(maxBatch: Int = 1000, maxWaiting: Int = 65536) {
        precondition(maxBatch > 0 && maxWaiting > 0)
        self.maxBatch = maxBatch
        self.maxWaiting = maxWaiting
    }

    /// Renews `id` on `leader` in the next batch; returns its TTL.
    func renew(_ id: Int64, leader: UInt64, timeout: Duration, send: @escaping Send) async throws -> Int64 {
        try await withCheckedThrowingContinuation { continuation in
            enum Action { case refuse, wait, start }
            let action = lines.withLock { lines -> Action in
                var line = lines[leader] ?? Line()
                guard line.waiting.count < maxWaiting else { return .refuse }
                line.waiting.append(Waiter(id: id, continuation: continuation))
                let start = !line.sending
                line.sending = true
                lines[leader] = line
                return start ? .start : .wait
            }
            switch action {
            case .refuse: continuation.resume(throwing: EtcdError.tooManyRequests)
            case .wait: break
            case .start: Task { await self.drain(leader: leader, timeout: timeout, send: send) }
            }
        }
    }

    /// How many renewals wait for the next call to `leader` (not those in flight).
    func waiting(for leader: UInt64) -> Int {
        lines.withLock { $0[leader]?.waiting.count ?? 0 }
    }

    /// Sends batches to `leader` until nobody waits for it.
    private func drain(leader: UInt64, timeout: Duration, send: Send) async {
        while true {
            let batch = lines.withLock { lines -> [Waiter] in
                guard var line = lines[leader] else { return [] }
                let taken = Array(line.waiting.prefix(maxBatch))
                line.waiting.removeFirst(taken.count)
                if taken.isEmpty {
                    lines[leader] = nil
                } else {
                    lines[leader] = line
                }
                return taken
            }
            if batch.isEmpty { return }
            do {
                let outcomes = try await send(leader, batch.map(\.id), timeout)
                guard outcomes.count == batch.count else {
                    throw EtcdError.internal("the leader answered \(outcomes.count) renewals for \(batch.count)")
                }
                for (waiter, outcome) in zip(batch, outcomes) {
                    waiter.continuation.resume(with: outcome.mapError { $0 as any Error })
                }
            } catch {
                for waiter in batch { waiter.continuation.resume(throwing: error) }
            }
        }
    }
}
