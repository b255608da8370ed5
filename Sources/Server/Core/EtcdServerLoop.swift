import EtcdProto
import Foundation
import LMDBBackend
import Logging
import MVCC
import Raft
import Storage
import SwiftProtobuf

/// State owned by the Raft loop thread.
final class RaftLoopState {
    let node: RaftNode
    let storage: DurableRaftStorage
    let heartbeat: Duration
    let snapshotCount: UInt64
    var appliedIndex: UInt64
    var snapshotIndex: UInt64
    /// The backend's consistent index at start-up or after a snapshot install: normal entries
    /// up to it are already in the backend and are not applied again.
    var consistentIndex: UInt64
    var confState: ConfState
    var leader: UInt64 = 0
    var leaderEpoch: UInt64 = 0
    /// ReadIndex requests sent and not yet answered: context → reader IDs.
    var pendingReads: [[UInt8]: [UInt64]] = [:]
    /// Readers whose read index is known, waiting for the apply loop to reach it.
    var readsAwaitingApply: [(index: UInt64, readers: [UInt64])] = []
    var readCounter: UInt64 = 0
    /// A single voter campaigns as soon as its configuration is applied.
    var campaignWhenAlone = false
    var lastLeaseHousekeeping = ContinuousClock.now
    /// When a refused peer message was last logged (logging is rate-limited).
    var lastRejectionLog = ContinuousClock.now - .seconds(10)
    /// Sends messages to the other members (set before the loop starts).
    var transport: PeerTransport?

    init(node: RaftNode, storage: DurableRaftStorage, heartbeat: Duration, snapshotCount: UInt64,
         appliedIndex: UInt64, snapshotIndex: UInt64, consistentIndex: UInt64) {
        self.node = node
        self.storage = storage
        self.heartbeat = heartbeat
        self.snapshotCount = snapshotCount
        self.appliedIndex = appliedIndex
        self.snapshotIndex = snapshotIndex
        self.consistentIndex = consistentIndex
        self.confState = node.status.confState
    }

    /// The most up-to-date other voter, for a leadership transfer.
    func transferTarget() -> UInt64? {
        let st = node.status
        return st.progress.filter { $0.key != node.id && !$0.value.isLearner }
            .max { $0.value.match < $1.value.match }?.key
    }
}

extension EtcdServer {
    func startLoopThread() {
        let thread = Thread { [self] in
            nameCurrentThread("raft-loop")
            runLoop()
            loopExited.store(true, ordering: .releasing)
            let c = loopDone.withLock { slot -> CheckedContinuation<Void, Never>? in
                let c = slot
                slot = nil
                return c
            }
            c?.resume()
        }
        thread.name = "raft-loop"
        thread.stackSize = 8 << 20
        thread.start()
    }

    private func runLoop() {
        let hbNanos = UInt64(loop.heartbeat.components.seconds) * 1_000_000_000
            + UInt64(loop.heartbeat.components.attoseconds / 1_000_000_000)
        var nextTick = DispatchTime.now().uptimeNanoseconds + hbNanos
        while !inbox.isStopping {
            inbox.wait(until: DispatchTime(uptimeNanoseconds: nextTick))
            if inbox.isStopping { break }
            do {
                try handleInputs(inbox.drain())
                let now = DispatchTime.now().uptimeNanoseconds
                if now >= nextTick {
                    try loop.node.tick()
                    nextTick = max(nextTick + hbNanos, now + hbNanos / 4)
                    try leaseHousekeeping()
                }
                while loop.node.hasReady {
                    try handleReady(try loop.node.ready())
                }
                _ = try backend.commitIfDue()
                loopPassNanos.store(DispatchTime.now().uptimeNanoseconds, ordering: .relaxed)
            } catch {
                logger.critical("raft loop failed; stopping the member", metadata: ["error": "\(error)"])
                fatalReasonSlot.withLock { $0 = "\(error)" }
                // Nothing waiting on the log can be answered any more: fail it now, not at
                // its timeout. Whatever was acknowledged before is in the WAL already.
                waiters.failAll(EtcdError.stopped)
                fatal.fire()
                break
            }
        }
        // Leave what is durable durable: the WAL syncs on close, the backend commits in stop().
        do { try loop.storage.close() } catch {
            logger.error("closing the WAL failed", metadata: ["error": "\(error)"])
        }
        failPendingReads(EtcdError.stopped)
    }

    private func handleInputs(_ inputs: [LoopInput]) throws {
        var readers: [UInt64] = []
        for input in inputs {
            switch input {
            case .propose(let data):
                do { try loop.node.propose(data) } catch RaftError.proposalDropped {
                    failProposal(data, EtcdError.noLeader)
                }
            case .proposeConfChange(let cc):
                do { try loop.node.proposeConfChange(cc) } catch RaftError.proposalDropped {
                    waiters.trigger(cc.id, .failure(EtcdError.membershipChangeInProgress))
                } catch {
                    waiters.trigger(cc.id, .failure(EtcdError("etcdserver: invalid membership change: \(error)", code: .failedPrecondition)))
                }
            case .messages(let ms):
                for m in ms { try stepFromPeer(m) }
            case .snapshot(let m, let file):
                try stepFromPeer(m)
                // Taken: the next Ready carries it and the install uses the file. Otherwise the
                // body is of no use and must not stay on disk.
                if loop.node.pendingSnapshotIndex != m.snapshot?.metadata.index {
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
                if let target = to != 0 ? to : loop.transferTarget() {
                    // Dropped when no leader is known to forward to; the requester times out.
                    do { try loop.node.transferLeadership(to: target) } catch RaftError.proposalDropped {}
                }
            case .reportUnreachable(let p):
                try loop.node.reportUnreachable(p)
            case .reportSnapshot(let p, let ok):
                try loop.node.reportSnapshot(p, success: ok)
            case .campaign:
                loop.campaignWhenAlone = true
                try campaignIfAlone()
            case .removedByPeer(let peer):
                try noteRemovedByPeer(peer)
            }
        }
        if !readers.isEmpty {
            loop.readCounter &+= 1
            var ctx: [UInt8] = []
            withUnsafeBytes(of: loop.readCounter.bigEndian) { ctx.append(contentsOf: $0) }
            do {
                try loop.node.readIndex(context: ctx)
                loop.pendingReads[ctx] = readers
            } catch {
                for r in readers { readWaiters.trigger(r, .failure(EtcdError.noLeader)) }
            }
        }
    }

    /// Steps a peer's message. Input Raft refuses is logged (rate-limited) and counted, and
    /// changes nothing; any other error is an internal invariant violation and propagates to
    /// the loop's fatal path, which stops the member (as etcd panics).
    private func stepFromPeer(_ m: Raft.Message) throws {
        do {
            try loop.node.step(m)
        } catch RaftError.rejectedMessage(let reason, let detail) {
            metrics.raftMessageRejected(reason)
            let now = ContinuousClock.now
            // A response from a member removed moments ago is routine; anything else is a
            // misbehaving or hostile peer. One line per second at most, whatever the rate.
            if now - loop.lastRejectionLog >= .seconds(1) {
                loop.lastRejectionLog = now
                let meta: Logger.Metadata = ["from": "\(String(m.from, radix: 16))", "reason": "\(reason.rawValue)", "detail": "\(detail)"]
                if reason == .unknownPeer {
                    logger.debug("ignored a raft message from a peer outside the configuration", metadata: meta)
                } else {
                    logger.warning("refused an invalid raft message from a peer", metadata: meta)
                }
            }
        }
    }

    /// Tells the waiter of a dropped proposal (if it has one) why.
    private func failProposal(_ data: [UInt8], _ error: EtcdError) {
        guard let req = try? Swetcd_Internal_InternalRequest(serializedBytes: data) else { return }
        waiters.trigger(req.header.id, .failure(error))
    }

    private func handleReady(_ rd: Ready) throws {
        // A leader's appends and heartbeats go out while its own WAL write runs (Raft thesis
        // 10.2.1): a three-member commit then costs one fsync in series, not two. Raft counts
        // the leader's own entries toward commit only at `advance`, after the write below.
        // Votes, append answers and anything sent at a not-yet-durable term wait for the fsync.
        let early = rd.messagesBeforePersist
        if !early.isEmpty { loop.transport?.send(early) }
        let persistStart = ContinuousClock.now
        let synced = try loop.storage.persist(rd)
        if rd.mustSync && synced { metrics.walFsync(ContinuousClock.now - persistStart) }
        let late = early.isEmpty ? rd.messages : rd.messagesAfterPersist
        if !late.isEmpty { loop.transport?.send(late) }
        if let ss = rd.softState { noteSoftState(ss) }
        if let snap = rd.snapshot, !snap.isEmpty {
            loop.confState = snap.metadata.confState
            try installSnapshot(snap)
            loop.appliedIndex = max(loop.appliedIndex, snap.metadata.index)
        }
        for entry in rd.committedEntries {
            try apply(entry)
        }
        for rs in rd.readStates {
            if let readers = loop.pendingReads.removeValue(forKey: rs.context) {
                loop.readsAwaitingApply.append((rs.index, readers))
            }
        }
        releaseReads()
        let hs = loop.node.hardState
        let applied = loop.appliedIndex
        let cs = loop.confState
        let voters = cs.voters.count
        // Not a voter: a learner, a joining member catching up, or a removed member.
        let learner = !cs.voters.contains(memberID)
        let raftStatus = loop.node.status
        var progress: [UInt64: UInt64] = [:]
        for (k, p) in raftStatus.progress { progress[k] = p.match }
        status.withLock {
            $0.term = hs.term
            $0.committed = hs.commit
            $0.applied = applied
            $0.voters = voters
            $0.isLearner = learner
            $0.lastIndex = raftStatus.lastIndex
            $0.progress = progress
        }
        try loop.node.advance(rd)
        try campaignIfAlone()
        try maybeSnapshot()
    }

    /// Campaigns once, if asked to at start-up and this member is the only voter.
    private func campaignIfAlone() throws {
        guard loop.campaignWhenAlone, !loop.confState.voters.isEmpty else { return }
        loop.campaignWhenAlone = false
        if loop.confState.voters == [memberID] { try loop.node.campaign() }
    }

    private func noteSoftState(_ ss: SoftState) {
        let changed = ss.lead != loop.leader
        let wasLeader = status.withLock { $0.isLeader }
        let nowLeader = ss.role == .leader
        if changed {
            loop.leader = ss.lead
            loop.leaderEpoch &+= 1
            failPendingReads(EtcdError.leaderChanged)
            if ss.lead != 0 { metrics.leaderChanged() }
            logger.info("leader changed", metadata: ["leader": "\(String(ss.lead, radix: 16))"])
        }
        let epoch = loop.leaderEpoch
        status.withLock {
            $0.leader = ss.lead
            $0.isLeader = nowLeader
            $0.leaderEpoch = epoch
        }
        if nowLeader && !wasLeader {
            lessor.promote(extension: electionTimeout)
        } else if !nowLeader && wasLeader {
            lessor.demote()
        }
    }

    private func failPendingReads(_ error: EtcdError) {
        for (_, readers) in loop.pendingReads {
            for r in readers { readWaiters.trigger(r, .failure(error)) }
        }
        loop.pendingReads.removeAll()
    }

    private func releaseReads() {
        guard !loop.readsAwaitingApply.isEmpty else { return }
        let applied = loop.appliedIndex
        var keep: [(index: UInt64, readers: [UInt64])] = []
        for w in loop.readsAwaitingApply {
            if w.index <= applied {
                for r in w.readers { readWaiters.trigger(r, .success(())) }
            } else {
                keep.append(w)
            }
        }
        loop.readsAwaitingApply = keep
    }

    /// On the leader, every 500 ms: propose revocations of expired leases and one checkpoint
    /// entry for the due checkpoints.
    private func leaseHousekeeping() throws {
        let now = ContinuousClock.now
        guard now - loop.lastLeaseHousekeeping >= .milliseconds(500) else { return }
        loop.lastLeaseHousekeeping = now
        guard status.withLock({ $0.isLeader }) else { return }
        try autoPromoteLearners()
        let expired = lessor.expiredLeases()
        if !expired.isEmpty { metrics.leasesExpired(expired.count) }
        for id in expired {
            var req = Swetcd_Internal_InternalRequest()
            var revoke = Etcdserverpb_LeaseRevokeRequest()
            revoke.id = id
            req.leaseRevoke = revoke
            proposeDetached(req)
        }
        let due = lessor.dueCheckpoints()
        if !due.isEmpty {
            var req = Swetcd_Internal_InternalRequest()
            req.leaseCheckpoint = Self.checkpointRequest(due)
            proposeDetached(req)
        }
    }

    static func checkpointRequest(_ cps: [LeaseCheckpoint]) -> Etcdserverpb_LeaseCheckpointRequest {
        var r = Etcdserverpb_LeaseCheckpointRequest()
        r.checkpoints = cps.map { cp in
            var c = Etcdserverpb_LeaseCheckpoint()
            c.id = cp.id
            c.remainingTtl = cp.remainingTTL
            return c
        }
        return r
    }

    /// Every `--snapshot-count` applied entries: commit the backend, record a Raft snapshot
    /// (its data is the membership) and drop log entries from memory beyond the 5000 kept for
    /// slow followers.
    private func maybeSnapshot() throws {
        guard loop.appliedIndex > loop.snapshotIndex,
              loop.appliedIndex - loop.snapshotIndex >= loop.snapshotCount else { return }
        try backend.commit()
        let data = membershipData()
        _ = try loop.storage.createSnapshot(index: loop.appliedIndex, confState: loop.confState, data: data)
        loop.snapshotIndex = loop.appliedIndex
        _ = try loop.storage.compact(keeping: 5000)
        logger.info("saved snapshot", metadata: ["index": "\(loop.appliedIndex)"])
    }

    /// The membership as stored in Raft snapshots (see `ClusterMembership.encodedForSnapshot`).
    func membershipData() -> [UInt8] { membership.encodedForSnapshot() }
}
