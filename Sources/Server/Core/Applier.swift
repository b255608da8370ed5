import Foundation
import LMDBBackend
import Raft
import Storage
import Synchronization

/// The apply thread (`raft-apply`): applies the committed entries the Raft loop hands over, in
/// log order, to the applied state, and commits the backend on its own schedule. The loop does
/// not wait for it, except where Raft needs the applied state to be current: a conf change, a
/// leader's snapshot to install, a snapshot to take (`call`), and when too much is queued.
///
/// The applied state has one owner at a time, the holder of the apply token (`active`):
/// the apply thread while it applies a queued item or commits the backend, or the loop, which
/// applies a small batch of quick entries (puts, lease grants, empty entries) itself when the
/// thread is idle with nothing queued (`inline`). Handing that batch over would cost a thread
/// wake-up on every write; the loop still never waits for a backend commit (while one runs,
/// the token is taken and the batch is queued) nor for an apply of unbounded cost. Every
/// `AppliedStateMachine` method that changes the applied state runs under the token; the
/// holder claims `owner`, so a debug build stops on any other thread touching it.
/// Linearizable readers wait here for the applied index to reach their read index. A failure
/// stops the thread; the loop finds it at its next `hand`, `call` or `checkFailure` and takes
/// its fatal path.
final class Applier: @unchecked Sendable {
    /// The loop applies a batch itself only up to this many entries, each one the machine
    /// `appliesQuickly`: a slow apply must not delay WAL writes and heartbeats.
    static let maxInlineEntries = 64
    /// At most this many entries, or this many bytes of entry data, wait to be applied; the
    /// loop waits beyond that (a lone batch larger than the byte bound is still taken).
    static let maxQueuedEntries = 8192
    static let maxQueuedBytes = 64 << 20

    private final class Call {
        let body: () throws -> Any
        var result: Result<Any, any Error>?
        init(_ body: @escaping () throws -> Any) { self.body = body }
    }

    private enum Item {
        case entries([Entry], bytes: Int)
        case call(Call)
    }

    /// Guards everything below it.
    private let condition = NSCondition()
    private var queue: [Item] = []
    private var head = 0
    private var queuedEntries = 0
    private var queuedBytes = 0
    private var stopping = false
    /// The apply token: someone (the thread, or the loop inline) is applying or committing.
    private var active = false
    /// Whether the loop may apply a batch itself when the thread is idle.
    private let inline: Bool
    private var exited = false
    private var failure: (any Error)?
    private var applied: UInt64
    private var readers: [(index: UInt64, ids: [UInt64])] = []
    /// The loop waits in `hand` for the queue to shrink.
    private var waitingForRoom = false
    /// The apply thread waits for the loop to give back the token.
    private var waitingForToken = false

    /// The apply thread, once started.
    let owner = ThreadOwner()
    /// Uptime nanoseconds at which the thread began its current item or commit; 0 while idle.
    private let busy = Atomic<UInt64>(0)

    /// Uptime nanoseconds at which the apply thread began what it is doing now; 0 while it
    /// waits for work. A stuck backend commit or apply shows here (the watchdog reads it).
    var busySinceNanos: UInt64 { busy.load(ordering: .relaxed) }
    /// Apply-thread state: normal entries at or below it are in the backend already (start-up,
    /// or an installed snapshot) and are skipped.
    private var _consistentIndex: UInt64
    private var consistentIndex: UInt64 {
        get { owner.check(); return _consistentIndex }
        set { owner.check(); _consistentIndex = newValue }
    }

    private let machine: any AppliedStateMachine
    private let requests: any RaftLoopRequests
    private let publish: @Sendable (UInt64) -> Void
    private let wakeLoop: @Sendable () -> Void
    private let commitInterval: TimeInterval

    /// `publish` gets the applied index after each batch; `wakeLoop` is called on failure.
    init(machine: any AppliedStateMachine, requests: any RaftLoopRequests, applied: UInt64, consistentIndex: UInt64,
         commitInterval: TimeInterval = 0.1, inline: Bool = true, publish: @escaping @Sendable (UInt64) -> Void,
         wakeLoop: @escaping @Sendable () -> Void) {
        self.machine = machine
        self.inline = inline
        self.requests = requests
        self.applied = applied
        _consistentIndex = consistentIndex
        self.commitInterval = commitInterval
        self.publish = publish
        self.wakeLoop = wakeLoop
    }

    func start() {
        let thread = Thread { [self] in
            nameCurrentThread("raft-apply")
            run()
            condition.lock()
            exited = true
            condition.broadcast()
            condition.unlock()
        }
        thread.name = "raft-apply"
        thread.stackSize = 8 << 20
        thread.start()
    }

    // MARK: The Raft loop's side

    /// Applies committed normal entries on the calling thread when the apply thread is idle
    /// with nothing queued; otherwise queues them, waiting while the queue is over its bounds.
    func hand(_ entries: [Entry]) throws {
        guard !entries.isEmpty else { return }
        var bytes = 0
        for e in entries { bytes += e.data.count }
        let quick = inline && entries.count <= Self.maxInlineEntries && entries.allSatisfy { machine.appliesQuickly($0) }
        condition.lock()
        if quick, !active, head == queue.count, failure == nil, !exited {
            active = true
            condition.unlock()
            owner.claim()
            // The answers go to the event loops together, one task per loop.
            try EventLoopHandoff.batching {
                do {
                    for e in entries { try apply(e) }
                } catch {
                    owner.release()
                    fail(error)
                    throw error
                }
                owner.release()
                condition.lock()
                active = false
                // The thread woke for work or a commit while the loop held the token.
                if waitingForToken { condition.broadcast() }
                condition.unlock()
                setApplied(entries[entries.count - 1].index)
            }
            return
        }
        defer { condition.unlock() }
        while failure == nil, !exited, queuedEntries > 0,
              queuedEntries + entries.count > Self.maxQueuedEntries || queuedBytes + bytes > Self.maxQueuedBytes {
            waitingForRoom = true
            condition.wait()
            waitingForRoom = false
        }
        if let failure { throw failure }
        if exited { throw EtcdError.stopped }
        queue.append(.entries(entries, bytes: bytes))
        queuedEntries += entries.count
        queuedBytes += bytes
        condition.broadcast()
    }

    /// Runs `body` on the apply thread once everything queued before it is applied, and
    /// returns its result. The loop waits for it.
    func call<T>(_ body: @escaping () throws -> T) throws -> T {
        let c = Call { try body() }
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        queue.append(.call(c))
        condition.broadcast()
        while c.result == nil, failure == nil, !exited { condition.wait() }
        guard let r = c.result else { throw failure ?? EtcdError.stopped }
        // swiftlint:disable:next force_cast
        return try r.get() as! T
    }

    /// Answers `ids` once the applied index reaches `index` (at once if it has).
    func releaseReads(at index: UInt64, _ ids: [UInt64]) {
        condition.lock()
        if index > applied {
            readers.append((index, ids))
            condition.unlock()
            return
        }
        condition.unlock()
        requests.readsDone(ids, .success(()))
    }

    /// Throws the error the apply thread stopped on, if it did.
    func checkFailure() throws {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
    }

    /// Applies what is queued (unless the thread failed) and waits for the thread to end.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while !exited { condition.wait() }
        condition.unlock()
    }

    // MARK: The apply thread

    private func run() {
        // The backend's own clock decides when a commit is due; this only sets how often the
        // idle thread asks it.
        let checkEvery = max(commitInterval / 4, 0.001)
        var nextCheck = Date(timeIntervalSinceNow: checkEvery)
        while true {
            condition.lock()
            var item: Item?
            while true {
                if failure != nil {
                    condition.unlock()
                    return
                }
                if !active, head < queue.count {
                    item = queue[head]
                    head += 1
                    if head == queue.count || head >= 1024 {
                        queue.removeFirst(head)
                        head = 0
                    }
                    break
                }
                if !active, stopping {
                    condition.unlock()
                    return
                }
                if !active, Date() >= nextCheck { break }
                waitingForToken = active
                _ = condition.wait(until: active ? Date(timeIntervalSinceNow: checkEvery) : nextCheck)
                waitingForToken = false
            }
            active = true
            condition.unlock()
            owner.claim()
            busy.store(DispatchTime.now().uptimeNanoseconds, ordering: .relaxed)
            do {
                switch item {
                case .entries(let entries, let bytes)?:
                    // Answers leave per slice, so a long item (a follower catching up) does not
                    // hold the first ones until its last entry is applied.
                    var start = 0
                    while start < entries.count {
                        let end = min(start + Self.maxInlineEntries, entries.count)
                        try EventLoopHandoff.batching {
                            for e in entries[start..<end] { try apply(e) }
                            if end == entries.count {
                                finish(entries: entries.count, bytes: bytes, last: entries[end - 1].index)
                            }
                        }
                        start = end
                    }
                case .call(let c)?:
                    let r = Result { try c.body() }
                    condition.lock()
                    c.result = r
                    condition.broadcast()
                    condition.unlock()
                case nil:
                    break
                }
                try machine.commitIfDue()
                nextCheck = Date(timeIntervalSinceNow: checkEvery)
            } catch {
                owner.release()
                busy.store(0, ordering: .relaxed)
                return fail(error)
            }
            owner.release()
            busy.store(0, ordering: .relaxed)
            condition.lock()
            active = false
            condition.broadcast()
            condition.unlock()
        }
    }

    private func apply(_ entry: Entry) throws {
        if entry.index <= consistentIndex { return }
        if entry.data.isEmpty {
            try machine.markApplied(entry)
        } else {
            try machine.apply(normal: entry)
        }
    }

    private func finish(entries: Int, bytes: Int, last: UInt64) {
        condition.lock()
        queuedEntries -= entries
        queuedBytes -= bytes
        condition.unlock()
        setApplied(last)
    }

    private func fail(_ error: any Error) {
        condition.lock()
        failure = error
        condition.broadcast()
        condition.unlock()
        wakeLoop()
    }

    // MARK: Work the loop runs here with `call`

    /// The machine's part of a conf change Raft has taken (apply thread).
    func applyConfChange(_ cc: ConfChange?, entry: Entry) throws {
        owner.check()
        let inBackend = entry.index <= consistentIndex
        if let cc {
            try machine.apply(confChange: cc, entry: entry, inBackend: inBackend)
        } else if !inBackend {
            try machine.markApplied(entry)
        }
        setApplied(entry.index)
    }

    /// Installs a leader's snapshot (apply thread); the backend's consistent index moves to it.
    func installSnapshot(_ snap: Snapshot, dataDir: DataDir) throws {
        owner.check()
        let now = currentApplied
        consistentIndex = try machine.installSnapshot(snap, dataDir: dataDir, appliedIndex: now)
        setApplied(snap.metadata.index)
    }

    /// The applied index (any thread).
    var currentApplied: UInt64 {
        condition.lock()
        defer { condition.unlock() }
        return applied
    }

    /// Moves the applied index, wakes a loop waiting for room, publishes the index and answers
    /// the readers it covers. Nobody else waits on the condition for the applied index: after
    /// an inline batch the wake-up would only rouse the idle apply thread, once per write.
    private func setApplied(_ index: UInt64) {
        condition.lock()
        applied = max(applied, index)
        let now = applied
        var due: [UInt64] = []
        if !readers.isEmpty {
            var keep: [(index: UInt64, ids: [UInt64])] = []
            for r in readers {
                if r.index <= now { due += r.ids } else { keep.append(r) }
            }
            readers = keep
        }
        if waitingForRoom { condition.broadcast() }
        condition.unlock()
        publish(now)
        if !due.isEmpty { requests.readsDone(due, .success(())) }
    }

    /// Commits the backend and returns a Raft snapshot's data (apply thread).
    func snapshotData() throws -> [UInt8] {
        owner.check()
        return try machine.snapshotData()
    }

    /// Records that a peer refused this member as removed (apply thread).
    func removedByPeer(_ peer: UInt64) throws {
        owner.check()
        try machine.removedByPeer(peer)
    }
}
