import Foundation
import Raft
import Synchronization

/// What other threads hand to the Raft loop.
enum LoopInput: Sendable {
    case propose([UInt8])
    /// A membership change (its `id` is the proposer's waiter ID).
    case proposeConfChange(ConfChange)
    case messages([Message])
    /// A leader's snapshot message whose backend body the transport stored at `file`.
    case snapshot(Message, file: String)
    /// A linearizable reader (its waiter ID); readers collected in one drain share one ReadIndex.
    case read(UInt64)
    case transferLeadership(UInt64)
    case reportUnreachable(UInt64)
    case reportSnapshot(UInt64, Bool)
    /// Start an election now (a single-member cluster at start-up).
    case campaign
    /// A peer refused this member: it was removed from the cluster.
    case removedByPeer(UInt64)
}

/// The Raft loop's inbox: a locked queue and a semaphore that wakes the loop.
final class LoopInbox: Sendable {
    private let queue = Mutex<[LoopInput]>([])
    private let wakeup = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)

    func send(_ input: LoopInput) {
        queue.withLock { $0.append(input) }
        wakeup.signal()
    }

    func drain() -> [LoopInput] {
        queue.withLock { q in
            let all = q
            q.removeAll(keepingCapacity: true)
            return all
        }
    }

    /// Sleeps until an input arrives or `deadline` passes.
    func wait(until deadline: DispatchTime) { _ = wakeup.wait(timeout: deadline) }

    func requestStop() {
        stopping.store(true, ordering: .releasing)
        wakeup.signal()
    }

    var isStopping: Bool { stopping.load(ordering: .acquiring) }
}

/// What the loop publishes for other threads after each Ready.
struct LoopStatus: Sendable {
    var leader: UInt64 = 0
    var term: UInt64 = 0
    var applied: UInt64 = 0
    var committed: UInt64 = 0
    var isLeader = false
    var isLearner = false
    /// Bumped at every leader change, so readers can tell a change happened while they waited.
    var leaderEpoch: UInt64 = 0
    /// Voters in the current configuration.
    var voters = 1
    /// The last log index (on the leader: its own match index).
    var lastIndex: UInt64 = 0
    /// On the leader: each member's match index.
    var progress: [UInt64: UInt64] = [:]
}
