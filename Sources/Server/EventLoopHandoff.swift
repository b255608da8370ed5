import NIOCore
import NIOPosix

/// Work for event loops that one thread produces in bursts: the Raft loop or the apply thread
/// answering a batch of applied requests. Inside ``batching(_:)``, ``execute(_:on:)`` gathers
/// the work per event loop and, when the batch ends, hands each loop all of its share as one
/// task, instead of one task (a locked queue and possibly a wake-up) per request. Outside a
/// batch it is `loop.execute`.
///
/// Unchecked Sendable: a batch is reachable only through its thread's variable, so only the
/// thread that opened it touches it.
final class EventLoopHandoff: @unchecked Sendable {
    private static let current = ThreadSpecificVariable<EventLoopHandoff>()
    private var pending: [(loop: any EventLoop, work: [@Sendable () -> Void])] = []

    /// Runs `work` on `loop`: now (as `loop.execute`), or at the end of this thread's batch.
    static func execute(_ work: @escaping @Sendable () -> Void, on loop: any EventLoop) {
        guard let batch = current.currentValue else {
            loop.execute(work)
            return
        }
        // A handful of event loops: a linear search beats hashing.
        if let i = batch.pending.firstIndex(where: { $0.loop === loop }) {
            batch.pending[i].work.append(work)
        } else {
            batch.pending.append((loop, [work]))
        }
    }

    /// Runs `body`, gathering what it hands to event loops until it returns (or throws). A
    /// batch inside a batch joins the outer one.
    static func batching<T>(_ body: () throws -> T) rethrows -> T {
        if current.currentValue != nil { return try body() }
        let batch = EventLoopHandoff()
        current.currentValue = batch
        defer {
            current.currentValue = nil
            for (loop, work) in batch.pending {
                if work.count == 1 {
                    loop.execute(work[0])
                } else {
                    loop.execute { for w in work { w() } }
                }
            }
        }
        return try body()
    }
}
