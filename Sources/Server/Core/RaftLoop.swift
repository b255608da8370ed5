import EtcdConfig
import Foundation
import LMDBBackend
import Logging
import NIOCore
import NIOPosix
import Raft
import Storage
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

/// The Raft loop's inbox: a locked queue, and whether a pass of the loop that will drain it
/// is scheduled already (so a burst of inputs schedules one pass).
final class LoopInbox: Sendable {
    private struct State {
        var inputs: [LoopInput] = []
        /// A pass is scheduled (or the loop has not started: its first pass drains).
        var scheduled = true
        /// The loop ended: inputs are dropped and no pass is scheduled any more (its event loop
        /// is about to shut down).
        var closed = false
    }

    private let state = Mutex(State())
    private let stopping = Atomic<Bool>(false)

    /// Queues `input`; true when the caller must schedule a pass.
    func append(_ input: LoopInput) -> Bool {
        state.withLock { s in
            if s.closed { return false }
            s.inputs.append(input)
            if s.scheduled { return false }
            s.scheduled = true
            return true
        }
    }

    /// True when the caller must schedule a pass (none is scheduled).
    func claimPass() -> Bool {
        state.withLock { s in
            if s.scheduled || s.closed { return false }
            s.scheduled = true
            return true
        }
    }

    /// Takes every queued input; an input queued from now on schedules another pass.
    func drain() -> [LoopInput] {
        state.withLock { s in
            s.scheduled = false
            let all = s.inputs
            s.inputs.removeAll(keepingCapacity: true)
            return all
        }
    }

    func requestStop() { stopping.store(true, ordering: .releasing) }

    /// The loop ended: drops what is queued and refuses what comes.
    func close() {
        state.withLock { s in
            s.closed = true
            s.inputs.removeAll()
        }
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

/// The member's applied state (keyspace, lessor, membership, alarms on the backend) as the
/// Raft loop and its apply thread use it. The methods that change the applied state (apply,
/// markApplied, installSnapshot, snapshotData, commitIfDue, removedByPeer) are called on the
/// apply thread only (`Applier`), in log order; the others on the loop thread.
protocol AppliedStateMachine: AnyObject {
    /// Applies a committed normal entry with data that the backend does not hold yet (its
    /// index is above the consistent index), the index stored in the same backend batch.
    func apply(normal entry: Entry) throws
    /// Applies a committed conf change that Raft has taken already: the member list, backend
    /// and transport only when `inBackend` is false (the backend does not hold it yet).
    func apply(confChange: ConfChange, entry: Entry, inBackend: Bool) throws
    /// Records in the backend that `entry`, which changes nothing else, is applied.
    func markApplied(_ entry: Entry) throws
    /// Whether applying the normal entry `entry` costs little and a bounded amount (a put, a
    /// lease grant, an empty entry), so the loop may apply it itself (any thread).
    func appliesQuickly(_ entry: Entry) -> Bool
    /// Swaps in the leader's backend for `snapshot` (persisted already) and reopens the
    /// applied state on it. Returns the new backend's consistent index.
    func installSnapshot(_ snapshot: Snapshot, dataDir: DataDir, appliedIndex: UInt64) throws -> UInt64
    /// Commits the backend and returns the data a Raft snapshot of the applied state carries.
    func snapshotData() throws -> [UInt8]
    /// Commits the backend's batch when its interval or size is reached.
    func commitIfDue() throws
    /// This member became the leader, or stopped being it.
    func leadershipChanged(isLeader: Bool)
    /// Whether learners in sync are promoted without being asked (`--auto-promote-learners`).
    var autoPromotesLearners: Bool { get }
    /// The promotion of the first learner in sync with the leader (`status`), if any.
    func learnerPromotion(_ status: RaftStatus) -> ConfChange?
    /// On the leader, every 500 ms: proposes revocations of expired leases and due checkpoints.
    func leaseHousekeeping()
    /// A peer refused this member as removed from the cluster: record it and stop.
    func removedByPeer(_ peer: UInt64) throws
}

/// The async façade's side of the loop's answers: proposals it cannot take, readers, and the
/// end of the loop. Called on the loop thread (readers also on the apply thread).
protocol RaftLoopRequests: AnyObject, Sendable {
    /// Raft dropped the proposal `data` (no leader known).
    func proposalFailed(_ data: [UInt8], _ error: EtcdError)
    /// A membership change proposed with waiter `id` was refused.
    func confChangeFailed(_ id: UInt64, _ error: EtcdError)
    /// Linearizable readers may read now (success) or failed.
    func readsDone(_ readers: [UInt64], _ result: Result<Void, any Error>)
    /// The loop stopped on an error it cannot recover from.
    func loopFailed(_ error: any Error)
}

/// The Raft loop: one OS thread that alone owns the Raft node, the durable Raft log and the
/// loop's bookkeeping (the index handed to the apply thread, snapshot index, configuration,
/// pending reads, leader epoch, the transport it sends through). Other threads reach it only
/// through `send`, the published `status`, `start` and `stop`. Loop-only state is read and
/// written through `own`, checked against the loop thread in debug builds. Committed entries
/// are applied on the loop's apply thread (`Applier`).
///
/// The thread is the only one of a NIO event loop group of its own (``eventLoopGroup``), on
/// which the member's peer connections live too: the loop's sends are written to the socket
/// on the spot, and what a peer sends is read and handed to the loop on the same thread, with
/// no thread wake-up between the network and Raft in either direction. Inputs schedule one
/// pass of the loop (a burst of them, one pass); a timer schedules the ticks. A pass blocks
/// the thread for its WAL fsync; the peer connections wait meanwhile, as Raft would.
final class RaftLoop: @unchecked Sendable {
    /// The loop's own state.
    struct Owned {
        /// The last entry handed to the apply thread (Raft's applied index).
        var appliedIndex: UInt64
        var snapshotIndex: UInt64
        /// The backend's consistent index at start-up (the apply thread's from then on).
        let consistentIndex: UInt64
        var confState: ConfState
        var leader: UInt64 = 0
        var leaderEpoch: UInt64 = 0
        /// ReadIndex requests sent and not yet answered: context → reader IDs.
        var pendingReads: [[UInt8]: [UInt64]] = [:]
        var readCounter: UInt64 = 0
        /// A single voter campaigns as soon as its configuration is applied.
        var campaignWhenAlone = false
        var lastLeaseHousekeeping = ContinuousClock.now
        /// When a refused peer message was last logged (logging is rate-limited).
        var lastRejectionLog = ContinuousClock.now - .seconds(10)
        /// Sends messages to the other members (set at start).
        var transport: PeerTransport?
        /// The applied state and the façade (set at start, cleared when the loop ends).
        var machine: (any AppliedStateMachine)?
        var requests: (any RaftLoopRequests)?
        var applier: Applier?
        /// Uptime nanoseconds of the next tick, and its timer.
        var nextTick: UInt64 = 0
        var tickTimer: Scheduled<Void>?
    }

    let memberID: UInt64
    private let heartbeat: Duration
    private let snapshotCount: UInt64
    private let logger: Logger
    private let metrics: ServerMetrics
    private let inbox = LoopInbox()
    /// The loop's own event loop group (one thread), and its event loop.
    let eventLoopGroup: MultiThreadedEventLoopGroup
    let eventLoop: any EventLoop
    private let groupShutDown = Atomic<Bool>(false)
    private let published: Mutex<LoopStatus>
    private let exited = Atomic<Bool>(false)
    private let done = Mutex<CheckedContinuation<Void, Never>?>(nil)
    /// Uptime (DispatchTime nanoseconds) at the end of the loop's last pass: its liveness.
    private let lastPass = Atomic<UInt64>(0)
    /// The loop thread, once started.
    let owner = ThreadOwner()
    /// The apply thread, once started: the applied state's owner.
    var applyOwner: ThreadOwner? { applierRef.withLock { $0?.owner } }
    private let applierRef = Mutex<Applier?>(nil)

    private let _node: RaftNode
    private let _storage: DurableRaftStorage
    private var _owned: Owned

    private var node: RaftNode {
        owner.check()
        return _node
    }
    private var storage: DurableRaftStorage {
        owner.check()
        return _storage
    }
    private var own: Owned {
        _read {
            owner.check()
            yield _owned
        }
        _modify {
            owner.check()
            yield &_owned
        }
    }

    init(node: RaftNode, storage: DurableRaftStorage, memberID: UInt64, heartbeat: Duration, snapshotCount: UInt64,
         appliedIndex: UInt64, snapshotIndex: UInt64, consistentIndex: UInt64, status: LoopStatus,
         logger: Logger, metrics: ServerMetrics) {
        _node = node
        _storage = storage
        self.memberID = memberID
        self.heartbeat = heartbeat
        self.snapshotCount = snapshotCount
        self.logger = logger
        self.metrics = metrics
        published = Mutex(status)
        _owned = Owned(appliedIndex: appliedIndex, snapshotIndex: snapshotIndex,
                       consistentIndex: consistentIndex, confState: node.status.confState)
        eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        eventLoop = eventLoopGroup.next()
    }

    deinit {
        if !groupShutDown.exchange(true, ordering: .acquiringAndReleasing) {
            eventLoopGroup.shutdownGracefully { _ in }
        }
    }

    /// Ends the loop's event loop group, and with it whatever connections still live on it.
    /// Call after ``stop()`` (or ``abandon()``) and after the peer transport and server stopped.
    func shutDownEventLoop() async {
        if groupShutDown.exchange(true, ordering: .acquiringAndReleasing) { return }
        try? await eventLoopGroup.shutdownGracefully()
    }

    // MARK: What other threads use

    /// Hands `input` to the loop (never blocks); dropped once the loop has ended.
    func send(_ input: LoopInput) {
        if inbox.append(input) { schedulePass() }
    }

    private func schedulePass() {
        eventLoop.execute { [self] in pass() }
    }

    /// Reads the status the loop published last.
    func withStatus<T: Sendable>(_ body: (LoopStatus) -> T) -> T { published.withLock { body($0) } }

    /// Whether the loop has ended (stopped, or failed).
    var hasExited: Bool { exited.load(ordering: .acquiring) }

    /// Uptime nanoseconds at the end of the loop's last pass (0 before the first).
    var lastPassNanos: UInt64 { lastPass.load(ordering: .relaxed) }

    /// Uptime nanoseconds at which the apply thread began its current work; 0 while it is idle
    /// (or not started).
    var applyBusySinceNanos: UInt64 { applierRef.withLock { $0?.busySinceNanos ?? 0 } }

    /// Starts the loop thread, which sends through `transport` (nil: nothing to send to) and
    /// applies to `machine`.
    func start(transport: PeerTransport?, machine: any AppliedStateMachine, requests: any RaftLoopRequests) {
        own.transport = transport
        own.machine = machine
        own.requests = requests
        let applier = Applier(machine: machine, requests: requests, applied: own.appliedIndex,
                              consistentIndex: own.consistentIndex,
                              inline: ProcessInfo.processInfo.environment["SWETCD_NO_INLINE_APPLY"] == nil,
                              publish: { [weak self] index in self?.published.withLock { $0.applied = index } },
                              wakeLoop: { [weak self] in
                                  if let self, inbox.claimPass() { schedulePass() }
                              })
        own.applier = applier
        applierRef.withLock { $0 = applier }
        applier.start()
        eventLoop.execute { [self] in
            nameCurrentThread("raft-loop")
            owner.claim()
            pass()
        }
    }

    /// Stops the loop and returns once its thread has ended (the WAL synced and closed).
    func stop() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let alreadyExited = done.withLock { slot -> Bool in
                if exited.load(ordering: .acquiring) { return true }
                slot = c
                return false
            }
            inbox.requestStop()
            if alreadyExited {
                c.resume()
            } else {
                // A pass ends the loop (one may be scheduled already; the second does nothing).
                schedulePass()
            }
        }
    }

    /// Closes the log of a loop that was never started (a refused start).
    func abandon() throws {
        try storage.close()
    }

    // MARK: The loop thread

    /// One pass of the loop: the inputs queued, a tick when due, and every Ready.
    private func pass() {
        // Ended (stopped or failed): a pass scheduled before does nothing.
        guard !hasExited else { return }
        if inbox.isStopping { return end() }
        do {
            try own.applier?.checkFailure()
            try handleInputs(inbox.drain())
            // NIO's clock: the tick timer's deadline is on it.
            let now = NIODeadline.now().uptimeNanoseconds
            let hbNanos = UInt64(heartbeat.components.seconds) * 1_000_000_000
                + UInt64(heartbeat.components.attoseconds / 1_000_000_000)
            if own.nextTick == 0 {
                own.nextTick = now + hbNanos
            } else if now >= own.nextTick {
                try node.tick()
                own.nextTick = max(own.nextTick + hbNanos, now + hbNanos / 4)
                try leaseHousekeeping()
            }
            if own.tickTimer == nil {
                own.tickTimer = eventLoop.scheduleTask(deadline: .uptimeNanoseconds(own.nextTick)) { [self] in
                    own.tickTimer = nil
                    pass()
                }
            }
            while node.hasReady {
                try handleReady(try node.ready())
            }
            lastPass.store(DispatchTime.now().uptimeNanoseconds, ordering: .relaxed)
        } catch {
            logger.critical("raft loop failed; stopping the member", metadata: ["error": "\(error)"])
            // Nothing waiting on the log can be answered any more: fail it now, not at
            // its timeout. Whatever was acknowledged before is in the WAL already.
            own.requests?.loopFailed(error)
            end()
        }
    }

    /// Ends the loop (stopped, or failed): the apply thread finishes, the WAL is closed, and
    /// ``stop()`` returns.
    private func end() {
        inbox.close()
        own.tickTimer?.cancel()
        own.tickTimer = nil
        // What was handed over is committed: the apply thread applies it before it ends.
        own.applier?.stop()
        // Leave what is durable durable: the WAL syncs on close, the backend commits in stop().
        do { try storage.close() } catch {
            logger.error("closing the WAL failed", metadata: ["error": "\(error)"])
        }
        failPendingReads(EtcdError.stopped)
        own.machine = nil
        own.requests = nil
        own.applier = nil
        owner.release()
        exited.store(true, ordering: .releasing)
        let c = done.withLock { slot -> CheckedContinuation<Void, Never>? in
            let c = slot
            slot = nil
            return c
        }
        c?.resume()
    }

    private func handleInputs(_ inputs: [LoopInput]) throws {
        var readers: [UInt64] = []
        for input in inputs {
            switch input {
            case .propose(let data):
                do { try node.propose(data) } catch RaftError.proposalDropped {
                    own.requests?.proposalFailed(data, EtcdError.noLeader)
                }
            case .proposeConfChange(let cc):
                do { try node.proposeConfChange(cc) } catch RaftError.proposalDropped {
                    own.requests?.confChangeFailed(cc.id, EtcdError.membershipChangeInProgress)
                } catch {
                    own.requests?.confChangeFailed(cc.id, EtcdError("etcdserver: invalid membership change: \(error)", code: .failedPrecondition))
                }
            case .messages(let ms):
                for m in ms { try stepFromPeer(m) }
            case .snapshot(let m, let file):
                try stepFromPeer(m)
                // Taken: the next Ready carries it and the install uses the file. Otherwise the
                // body is of no use and must not stay on disk.
                if node.pendingSnapshotIndex != m.snapshot?.metadata.index {
                    unlink(file)
                    unlink(file + "-lock")
                    logger.warning("dropped a received snapshot that Raft did not take", metadata: [
                        "from": "\(String(m.from, radix: 16))", "index": "\(m.snapshot?.metadata.index ?? 0)",
                        "term": "\(m.term)",
                    ])
                }
            case .read(let id):
                readers.append(id)
            case .transferLeadership(let to):
                if let target = to != 0 ? to : transferTarget() {
                    // Dropped when no leader is known to forward to; the requester times out.
                    do { try node.transferLeadership(to: target) } catch RaftError.proposalDropped {}
                }
            case .reportUnreachable(let p):
                try node.reportUnreachable(p)
            case .reportSnapshot(let p, let ok):
                try node.reportSnapshot(p, success: ok)
            case .campaign:
                own.campaignWhenAlone = true
                try campaignIfAlone()
            case .removedByPeer(let peer):
                if let applier = own.applier { try applier.call { try applier.removedByPeer(peer) } }
            }
        }
        if !readers.isEmpty {
            own.readCounter &+= 1
            var ctx: [UInt8] = []
            withUnsafeBytes(of: own.readCounter.bigEndian) { ctx.append(contentsOf: $0) }
            do {
                try node.readIndex(context: ctx)
                own.pendingReads[ctx] = readers
            } catch {
                own.requests?.readsDone(readers, .failure(EtcdError.noLeader))
            }
        }
    }

    /// The most up-to-date other voter, for a leadership transfer.
    private func transferTarget() -> UInt64? {
        let st = node.status
        return st.progress.filter { $0.key != node.id && !$0.value.isLearner }
            .max { $0.value.match < $1.value.match }?.key
    }

    /// Steps a peer's message. Input Raft refuses is logged (rate-limited) and counted, and
    /// changes nothing; any other error is an internal invariant violation and propagates to
    /// the loop's fatal path, which stops the member (as etcd panics).
    private func stepFromPeer(_ m: Raft.Message) throws {
        do {
            try node.step(m)
        } catch RaftError.rejectedMessage(let reason, let detail) {
            metrics.raftMessageRejected(reason)
            let now = ContinuousClock.now
            // A response from a member removed moments ago is routine; anything else is a
            // misbehaving or hostile peer. One line per second at most, whatever the rate.
            if now - own.lastRejectionLog >= .seconds(1) {
                own.lastRejectionLog = now
                let meta: Logger.Metadata = ["from": "\(String(m.from, radix: 16))", "reason": "\(reason.rawValue)", "detail": "\(detail)"]
                if reason == .unknownPeer {
                    logger.debug("ignored a raft message from a peer outside the configuration", metadata: meta)
                } else {
                    logger.warning("refused an invalid raft message from a peer", metadata: meta)
                }
            }
        }
    }

    private func handleReady(_ rd: Ready) throws {
        // A leader's appends and heartbeats go out while its own WAL write runs (Raft thesis
        // 10.2.1): a three-member commit then costs one fsync in series, not two. Raft counts
        // the leader's own entries toward commit only at `advance`, after the write below.
        // Votes, append answers and anything sent at a not-yet-durable term wait for the fsync.
        let early = rd.messagesBeforePersist
        if !early.isEmpty { own.transport?.send(early) }
        let persistStart = ContinuousClock.now
        let synced = try storage.persist(rd)
        if rd.mustSync && synced { metrics.walFsync(ContinuousClock.now - persistStart) }
        let late = early.isEmpty ? rd.messages : rd.messagesAfterPersist
        if !late.isEmpty { own.transport?.send(late) }
        if let ss = rd.softState { noteSoftState(ss) }
        if let snap = rd.snapshot, !snap.isEmpty {
            own.confState = snap.metadata.confState
            if let applier = own.applier {
                // After everything handed over is applied, on the apply thread.
                let dir = storage.dataDir
                try applier.call { try applier.installSnapshot(snap, dataDir: dir) }
                own.snapshotIndex = max(own.snapshotIndex, snap.metadata.index)
            }
            own.appliedIndex = max(own.appliedIndex, snap.metadata.index)
        }
        try handOver(rd.committedEntries)
        EventLoopHandoff.batching {
            for rs in rd.readStates {
                if let readers = own.pendingReads.removeValue(forKey: rs.context) {
                    own.applier?.releaseReads(at: rs.index, readers)
                }
            }
        }
        let hs = node.hardState
        let cs = own.confState
        let voters = cs.voters.count
        // Not a voter: a learner, a joining member catching up, or a removed member.
        let learner = !cs.voters.contains(memberID)
        let raftStatus = node.status
        var progress: [UInt64: UInt64] = [:]
        for (k, p) in raftStatus.progress { progress[k] = p.match }
        published.withLock {
            $0.term = hs.term
            $0.committed = hs.commit
            $0.voters = voters
            $0.isLearner = learner
            $0.lastIndex = raftStatus.lastIndex
            $0.progress = progress
        }
        try node.advance(rd)
        try campaignIfAlone()
        try maybeSnapshot()
    }

    /// Hands committed entries to the apply thread in log order without waiting for them,
    /// except a conf change: Raft takes it on this thread, and its membership part is applied
    /// (after every entry before it) before the loop goes on, as etcd waits for it.
    private func handOver(_ entries: [Entry]) throws {
        guard let last = entries.last else { return }
        defer { own.appliedIndex = max(own.appliedIndex, last.index) }
        guard let applier = own.applier else { return }
        var run: [Entry] = []
        for entry in entries {
            if entry.type == .normal {
                run.append(entry)
                continue
            }
            try applier.hand(run)
            run = []
            // Only a V1 change carries a membership change for the machine.
            var v1: ConfChange?
            if entry.type == .confChange {
                let cc = try ConfChange(decoding: entry.data)
                own.confState = try node.applyConfChange(cc)
                v1 = cc
            } else {
                own.confState = try node.applyConfChange(try ConfChangeV2(decoding: entry.data))
            }
            try applier.call { [v1] in try applier.applyConfChange(v1, entry: entry) }
        }
        try applier.hand(run)
    }

    /// Campaigns once, if asked to at start-up and this member is the only voter.
    private func campaignIfAlone() throws {
        guard own.campaignWhenAlone, !own.confState.voters.isEmpty else { return }
        own.campaignWhenAlone = false
        if own.confState.voters == [memberID] { try node.campaign() }
    }

    private func noteSoftState(_ ss: SoftState) {
        let changed = ss.lead != own.leader
        let wasLeader = published.withLock { $0.isLeader }
        let nowLeader = ss.role == .leader
        if changed {
            own.leader = ss.lead
            own.leaderEpoch &+= 1
            failPendingReads(EtcdError.leaderChanged)
            if ss.lead != 0 { metrics.leaderChanged() }
            logger.info("leader changed", metadata: ["leader": "\(String(ss.lead, radix: 16))"])
        }
        let epoch = own.leaderEpoch
        published.withLock {
            $0.leader = ss.lead
            $0.isLeader = nowLeader
            $0.leaderEpoch = epoch
        }
        if nowLeader != wasLeader { own.machine?.leadershipChanged(isLeader: nowLeader) }
    }

    private func failPendingReads(_ error: EtcdError) {
        let requests = own.requests
        for (_, readers) in own.pendingReads {
            requests?.readsDone(readers, .failure(error))
        }
        own.pendingReads.removeAll()
    }

    /// On the leader, every 500 ms: learner promotions (with `--auto-promote-learners`), then
    /// lease expiry and checkpoints.
    private func leaseHousekeeping() throws {
        let now = ContinuousClock.now
        guard now - own.lastLeaseHousekeeping >= .milliseconds(500) else { return }
        own.lastLeaseHousekeeping = now
        guard published.withLock({ $0.isLeader }), let machine = own.machine else { return }
        if machine.autoPromotesLearners, let cc = machine.learnerPromotion(node.status) {
            // Refused while another change is pending or the configuration does not allow it
            // (tried again at the next round); any other error is a Raft invariant violation.
            do {
                try node.proposeConfChange(cc)
                logger.info("auto-promoting learner", metadata: ["member-id": "\(MemberIdentity.hex(cc.nodeID))"])
            } catch RaftError.proposalDropped {
            } catch RaftError.invalidConfChange {
            }
        }
        machine.leaseHousekeeping()
    }

    /// Every `--snapshot-count` applied entries: commit the backend, record a Raft snapshot
    /// (its data is the membership) and drop log entries from memory beyond the 5000 kept for
    /// slow followers. The loop waits until the apply thread has applied what it was handed.
    private func maybeSnapshot() throws {
        guard own.appliedIndex > own.snapshotIndex,
              own.appliedIndex - own.snapshotIndex >= snapshotCount, let applier = own.applier else { return }
        let data = try applier.call { try applier.snapshotData() }
        _ = try storage.createSnapshot(index: own.appliedIndex, confState: own.confState, data: data)
        own.snapshotIndex = own.appliedIndex
        _ = try storage.compact(keeping: 5000)
        logger.info("saved snapshot", metadata: ["index": "\(own.appliedIndex)"])
    }
}
