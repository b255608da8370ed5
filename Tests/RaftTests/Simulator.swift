@testable import Raft

/// An invariant violation found by the simulator.
struct SimFailure: Error, CustomStringConvertible {
    var description: String
}

/// A deterministic cluster simulation driven by one seed.
///
/// Every step is one tick of global time: a random action (proposal, read, membership change,
/// transfer, crash/restart, partition, snapshot), message delivery with loss, duplication,
/// delay and reordering, then every live node ticks. Each node's Ready is handled as the server
/// does: a leader's appends go out first, then the write (synced when `mustSync`), then the
/// other messages, apply, advance; a crash may strike between any two of these, and a leader's
/// write may stay in flight for a few ticks while it keeps stepping (acks race its own write).
/// In two thirds of the seeds committed entries go to a per-node apply queue that a simulated
/// apply thread drains at random points, as the server's apply thread does; conf changes,
/// received snapshots and snapshots taken are barriers, and reads wait for the applied state.
/// A crash keeps only what was synced, plus a random prefix of the unsynced WAL records (see
/// ``SimDisk``). Invariants are checked after every event and every step, by counting from the
/// durable images and the messages sent, never through the core's own quorum code; a liveness
/// phase without faults ends the run.
final class Simulation {
    struct Pending {
        var at: Int
        var seq: Int
        var message: Message
    }

    struct App {
        var index: UInt64
        var digest: UInt64
    }

    struct EntryKey: Hashable {
        var index: UInt64
        var term: UInt64
    }

    let seed: UInt64
    let steps: Int
    var rng: SplitMix64
    var now = 0
    var seq = 0
    var faults = true
    /// Profile: frequent short partitions of small clusters, one entry per append — the
    /// conditions under which old-term entries get re-replicated by new leaders.
    var churn = false

    var ids: [UInt64] = []
    var configs: [UInt64: RaftConfig] = [:]
    var disks: [UInt64: SimDisk] = [:]
    /// A leader's Ready whose write is still in flight (its early messages are out), and the
    /// step at which the write completes.
    var pendingWrites: [UInt64: (ready: Ready, at: Int)] = [:]
    var nodes: [UInt64: RaftNode] = [:] {
        didSet { liveIDs = ids.filter { nodes[$0] != nil } }
    }
    /// Live nodes in ID order, kept with `nodes` (computing it at every use was a hot spot).
    private(set) var liveIDs: [UInt64] = []
    /// Each node's applied state (what its apply thread has applied).
    var apps: [UInt64: App] = [:]
    /// Apply model of this seed. Threaded: `finishReady` hands normal committed entries to the
    /// node's apply queue and goes on; the apply thread applies some of them at random points
    /// (`runApplyThreads`). A conf change waits until the queue is empty, then is applied by
    /// the loop; so do a received snapshot and a snapshot taken. Otherwise (synchronous) the
    /// Ready applies its entries itself.
    var threadedApply = false
    /// Threaded: the most entries a queue holds; the loop waits (the queue drains) beyond it.
    var applyQueueLimit = 0
    /// Threaded: per mille chance that a node's apply thread runs at a drain point.
    var applyRunChance: UInt64 = 0
    /// Threaded: entries handed over and not applied yet, in order (lost in a crash).
    var applyQueues: [UInt64: [Entry]] = [:]
    /// Entries in all apply queues.
    var queuedEntries = 0
    /// Read answers whose read index is known, waiting for the applied state to reach it.
    var pendingReads: [UInt64: [(context: [UInt8], index: UInt64)]] = [:]
    var crashedUntil: [UInt64: Int] = [:]
    var inflight: [Pending] = []
    var jointFocus = false
    var cuts: Set<[UInt64]> = []
    var healAt = 0
    /// Nodes removed from the cluster: the transport refuses their traffic from then on.
    var retired: Set<UInt64> = []
    var everMember: Set<UInt64> = []

    // Oracles.
    var leaderOfTerm: [UInt64: UInt64] = [:]
    var committedTerm: [UInt64: UInt64] = [:]
    var maxCommitted: UInt64 = 0
    var seenCommit: [UInt64: UInt64] = [:]
    var entryInfo: [EntryKey: (hash: UInt64, prevTerm: UInt64?)] = [:]
    var digestAt: [UInt64: UInt64] = [:]
    var readFloor: [[UInt8]: UInt64] = [:]
    var votesFor: [EntryKey: Set<UInt64>] = [:] // key: (candidate, term)
    /// Every vote granted, as sent: key (voter, term) -> candidate.
    var voteGiven: [EntryKey: UInt64] = [:]
    var nextData: UInt64 = 0
    var nextRead: UInt64 = 0

    // Statistics.
    var stats = (leaders: 0, commits: UInt64(0), reads: 0, confChanges: 0, crashes: 0, snapshots: 0, oldTermCommits: 0, dangerous: 0,
                 writesInFlight: 0, commitsDuringWrite: 0, unsyncedLost: 0,
                 appliesLagged: 0, maxApplyLag: 0, confBarriers: 0, snapshotBarriers: 0, snapshotTakeWaits: 0,
                 queueFullWaits: 0, readsWaited: 0)

    /// `threadedApply` forces the apply model; nil: `SIM_APPLY`, else chosen per seed.
    init(seed: UInt64, steps: Int, threadedApply forced: Bool? = nil) throws {
        self.seed = seed
        self.steps = steps
        rng = SplitMix64(seed: seed)
        churn = rng.next() % 2 == 0
        let voters = churn ? [3, 3, 5][Int(rng.next() % 3)] : [3, 5, 7][Int(rng.next() % 3)]
        let learners = Int(rng.next() % 3)
        let spares = 3
        ids = (1...UInt64(voters + learners + spares)).map { $0 }
        let cs = ConfState(voters: Array(ids[0..<voters]), learners: Array(ids[voters..<(voters + learners)]))
        everMember = Set(ids[0..<(voters + learners)])
        let preVote = rng.next() % 5 != 0
        let checkQuorum = rng.next() % 4 != 0
        let heartbeat = 1 + Int(rng.next() % 3)
        let maxSize: UInt64 = churn ? 1 : [1, 64, 1 << 20][Int(rng.next() % 3)]
        let inflights = 1 + Int(rng.next() % 8)
        // Flow control varies per seed too: an uncommitted-size limit (proposals dropped) and an
        // in-flight byte window, each off in half of the seeds.
        let uncommitted: UInt64 = [0, 0, 64, 1 << 10][Int(rng.next() % 4)]
        let inflightBytes: UInt64 = [0, 0, 1, 4][Int(rng.next() % 4)] * max(maxSize, 16)
        // A third of the seeds spend much of their time in joint configurations, with elections
        // forced while joint.
        jointFocus = rng.next() % 3 == 0
        // The apply model has its own generator, so synchronous seeds run as they did before it.
        var applyRng = SplitMix64(seed: seed ^ 0xA991_7A99_1E5E_ED00)
        switch forced.map({ $0 ? "threaded" : "sync" }) ?? SimEnv.string("SIM_APPLY") {
        case "sync": threadedApply = false
        case "threaded": threadedApply = true
        default: threadedApply = applyRng.next() % 3 != 0
        }
        applyQueueLimit = [2, 16, 128][Int(applyRng.next() % 3)]
        applyRunChance = [30, 250, 800][Int(applyRng.next() % 3)]
        for id in ids {
            let disk = try SimDisk(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: cs)))
            let s = disk.live
            var c = RaftConfig(id: id)
            c.seed = seed &+ id
            c.electionTick = 10
            c.heartbeatTick = heartbeat
            c.preVote = preVote
            c.checkQuorum = checkQuorum
            c.maxSizePerMsg = maxSize
            c.maxInflightMsgs = inflights
            c.maxUncommittedEntriesSize = uncommitted
            c.maxInflightBytes = inflightBytes
            disks[id] = disk
            configs[id] = c
            nodes[id] = try RaftNode(config: c, storage: s)
            apps[id] = App(index: 0, digest: 0)
            applyQueues[id] = []
            seenCommit[id] = 0
        }
        liveIDs = ids // observers do not run in the initializer
    }

    var summary: String {
        "nodes=\(ids.count) ticks=\(now) leaders=\(stats.leaders) commit=\(stats.commits) reads=\(stats.reads) confChanges=\(stats.confChanges) crashes=\(stats.crashes) snapshots=\(stats.snapshots) oldTermCommits=\(stats.oldTermCommits) dangerous=\(stats.dangerous) writesInFlight=\(stats.writesInFlight) commitsDuringWrite=\(stats.commitsDuringWrite) unsyncedLost=\(stats.unsyncedLost)"
            + " apply=\(threadedApply ? "threaded(limit \(applyQueueLimit), run \(applyRunChance)/1000)" : "sync") appliesLagged=\(stats.appliesLagged) maxApplyLag=\(stats.maxApplyLag) barriers(conf/recvSnap/takeSnap)=\(stats.confBarriers)/\(stats.snapshotBarriers)/\(stats.snapshotTakeWaits) queueFullWaits=\(stats.queueFullWaits) readsWaited=\(stats.readsWaited)"
    }

    let tracing = SimEnv.int("SIM_TRACE") != nil

    func trace(_ s: @autoclosure () -> String) {
        if tracing { print("[\(now)] \(s())") }
    }

    func fail(_ s: String) -> SimFailure { SimFailure(description: "step \(now): \(s)") }

    func chance(_ percent: UInt64) -> Bool { rng.next() % 1000 < percent }

    func pick<T>(_ a: [T]) -> T? { a.isEmpty ? nil : a[Int(rng.next() % UInt64(a.count))] }


    var leaders: [RaftNode] { liveIDs.compactMap { nodes[$0] }.filter { $0.role == .leader } }

    // MARK: - Driver

    func run() throws {
        for _ in 0..<steps {
            try step()
        }
        try liveness()
    }

    func step() throws {
        now += 1
        try runApplyThreads()
        if faults { try randomAction() }
        if faults && churn && chance(120) { partition() }
        if faults && churn && chance(300), let l = pick(leaders) { try propose(at: l.id) }
        if faults { try disturbJointLeader() }
        try completeWrites()
        try deliverDue()
        try runApplyThreads()
        for id in liveIDs {
            guard let n = nodes[id] else { continue }
            if faults && chance(30) { continue } // clock skew: a missed tick
            try event(id) { try n.tick() }
        }
        try runApplyThreads()
        try checkStep()
    }

    func randomAction() throws {
        let r = rng.next() % 1000
        switch r {
        case 0..<250:
            if let id = pick(liveIDs) { try propose(at: id) }
        case 250..<330:
            if let id = pick(liveIDs) { try read(at: id) }
        case 330..<345:
            try membershipChange()
        case 415..<(jointFocus ? 445 : 415):
            try membershipChange()
        case 345..<355:
            if let l = pick(leaders), let t = pick(l.membership.voters.sorted()) {
                try event(l.id) { try l.transferLeadership(to: t) }
            }
        case 355..<365:
            if crashedUntil.count < 2, let id = pick(liveIDs) { try crash(id) }
        case 365..<385:
            partition()
        case 385..<415:
            if let id = pick(liveIDs) { try snapshot(at: id) }
        default:
            break
        }
        for (id, t) in crashedUntil.sorted(by: { $0.key < $1.key }) where t <= now { try restart(id) }
        if !cuts.isEmpty && now >= healAt { cuts = [] }
    }

    func propose(at id: UInt64) throws {
        guard let n = nodes[id] else { return }
        nextData += 1
        var d: [UInt8] = []
        withUnsafeBytes(of: nextData.littleEndian) { d.append(contentsOf: $0) }
        try event(id) {
            do { try n.propose(d) } catch RaftError.proposalDropped {}
        }
    }

    /// While a leader is in a joint configuration, sometimes cut it off or crash it, so that an
    /// election runs under the joint rules (both majorities must agree).
    func disturbJointLeader() throws {
        guard let l = leaders.first(where: { $0.membership.isJoint }), chance(jointFocus ? 60 : 10) else { return }
        if chance(300), crashedUntil.count < 2 { return try crash(l.id) }
        cuts = []
        for b in ids where b != l.id { cuts.insert([l.id, b]); cuts.insert([b, l.id]) }
        healAt = now + 5 + Int(rng.next() % 30)
    }

    func read(at id: UInt64) throws {
        guard let n = nodes[id] else { return }
        nextRead += 1
        let ctx = Array("r\(nextRead)".utf8)
        for k in liveIDs { maxCommitted = max(maxCommitted, nodes[k]!.log.committed) }
        readFloor[ctx] = maxCommitted
        try event(id) { try n.readIndex(context: ctx) }
    }

    func membershipChange() throws {
        guard let l = pick(leaders) else { return }
        let m = l.membership
        if m.isJoint {
            // Leaving is proposed less often in joint-focused seeds: more time spent joint.
            if !m.autoLeave && (!jointFocus || chance(250)) { try event(l.id) { try l.proposeConfChange(ConfChangeV2()) } }
            return
        }
        let fresh = ids.filter { !everMember.contains($0) && !retired.contains($0) }
        let voters = m.voters.sorted(), learners = m.learners.sorted()
        var changes: [ConfChangeSingle] = []
        var transition = ConfChangeTransition.auto
        switch rng.next() % 6 {
        case 0:
            if let f = pick(fresh) { changes = [.init(type: .addLearnerNode, nodeID: f)] }
        case 1:
            if voters.count < 7, let x = pick(learners) { changes = [.init(type: .addNode, nodeID: x)] }
        case 2:
            if voters.count > 3, let x = pick(voters) { changes = [.init(type: .removeNode, nodeID: x)] }
            else if let x = pick(learners) { changes = [.init(type: .removeNode, nodeID: x)] }
        case 3:
            if voters.count > 3, let x = pick(voters) { changes = [.init(type: .addLearnerNode, nodeID: x)] }
        default:
            // Joint consensus: swap a voter (or two, so the incoming majority can be made of
            // lagging nodes) for learners or fresh nodes, sometimes explicitly.
            let candidates = learners + fresh
            if voters.count >= 3, candidates.count >= 2, jointFocus || chance(300) {
                let outs = Array(voters.shuffled(using: &rng).prefix(2)), ins = Array(candidates.shuffled(using: &rng).prefix(2))
                changes = ins.map { .init(type: .addNode, nodeID: $0) } + outs.map { .init(type: .removeNode, nodeID: $0) }
                transition = [.auto, .jointImplicit, .jointExplicit][Int(rng.next() % 3)]
            } else if let out = pick(voters), let inn = pick(candidates) {
                changes = [.init(type: .addNode, nodeID: inn), .init(type: .removeNode, nodeID: out)]
                transition = [.auto, .jointImplicit, .jointExplicit][Int(rng.next() % 3)]
            }
        }
        if changes.isEmpty { return }
        for c in changes where c.type != .removeNode { everMember.insert(c.nodeID) }
        let cc = ConfChangeV2(transition: transition, changes: changes)
        // Sometimes proposed at another member (forwarded to the leader, or dropped).
        let proposer = chance(250) ? pick(liveIDs).flatMap { nodes[$0] } ?? l : l
        try event(proposer.id) {
            do {
                if changes.count == 1 && rng.next() % 2 == 0 {
                    try proposer.proposeConfChange(ConfChange(id: 1, type: changes[0].type, nodeID: changes[0].nodeID))
                } else {
                    try proposer.proposeConfChange(cc)
                }
            } catch RaftError.proposalDropped {
            }
        }
    }

    func crash(_ id: UInt64) throws {
        // The disk keeps what was synced and a random prefix of what was not (a torn tail).
        let disk = disks[id]!
        let kept = disk.unsynced.isEmpty ? 0 : Int(rng.next() % UInt64(disk.unsynced.count + 1))
        trace("crash \(id): keeps \(kept) of \(disk.unsynced.count) unsynced records")
        stats.unsyncedLost += disk.unsynced.count - kept
        try disk.crash(keeping: kept)
        pendingWrites[id] = nil
        nodes[id] = nil
        // The apply queue and the reads waiting for it are memory: lost.
        queuedEntries -= applyQueues[id, default: []].count
        applyQueues[id] = []
        pendingReads[id] = nil
        crashedUntil[id] = now + 5 + Int(rng.next() % 40)
        stats.crashes += 1
    }

    func restart(_ id: UInt64) throws {
        crashedUntil[id] = nil
        let s = disks[id]!.live
        let snap = try s.snapshot()
        var c = configs[id]!
        c.applied = snap.metadata.index
        c.seed = rng.next()
        let n = try RaftNode(config: c, storage: s)
        trace("restart \(id) hs \(s.hardState) last \((try? s.lastIndex()) ?? 0)")
        nodes[id] = n
        apps[id] = App(index: snap.metadata.index, digest: Self.digest(of: snap.data))
        // The commits it recovered (up to its durable commit index) go to the oracle again: an
        // entry it applies after the restart must be in the committed map.
        seenCommit[id] = snap.metadata.index
    }

    func partition() {
        let all = ids
        cuts = []
        // Churn: mostly cut off the newest leader, which leaves divergent uncommitted tails.
        let kind = churn && chance(700) ? 1 : rng.next() % 3
        switch kind {
        case 0: // symmetric split into two groups
            for a in all {
                for b in all where a != b && (a % 2) != (b % 2) && rng.next() % 2 == 0 { cuts.insert([a, b]); cuts.insert([b, a]) }
            }
        case 1: // isolate one node (maybe the leader)
            let newest = leaders.max { $0.term < $1.term }?.id
            if let x = churn || rng.next() % 2 == 0 ? newest ?? pick(all) : pick(all) {
                for b in all where b != x { cuts.insert([x, b]); cuts.insert([b, x]) }
            }
        default: // asymmetric: some links one way only
            for a in all {
                for b in all where a != b && chance(150) { cuts.insert([a, b]) }
            }
        }
        healAt = now + (churn ? 2 + Int(rng.next() % 20) : 5 + Int(rng.next() % 60))
    }

    func snapshot(at id: UInt64) throws {
        guard let n = nodes[id] else { return }
        // Taken of the applied state: the loop first waits until everything handed is applied.
        if !applyQueues[id, default: []].isEmpty {
            stats.snapshotTakeWaits += 1
            try drainApplyQueue(id, upTo: .max)
        }
        guard let a = apps[id] else { return }
        let disk = disks[id]!
        let s = disk.live
        guard a.index > (try s.snapshot()).metadata.index else { return }
        if let d = digestAt[a.index], d != a.digest {
            throw fail("node \(id) takes a snapshot at \(a.index) whose state is not the one applied at that index")
        }
        // As the server's: the snapshot and its WAL marker are synced (and so all before them).
        try disk.sync()
        try s.createSnapshot(index: a.index, confState: n.membership.confState, data: Self.bytes(a.digest))
        try disk.durable.createSnapshot(index: a.index, confState: n.membership.confState, data: Self.bytes(a.digest))
        let keep = rng.next() % 4
        let upTo = a.index > keep ? a.index - keep : a.index
        if upTo >= (try s.firstIndex()) { try s.compact(upTo) }
        stats.snapshots += 1
    }

    // MARK: - Network

    func send(_ m: Message) {
        if faults {
            if chance(churn ? 200 : 50) { return dropped(m) }
            let copies = chance(20) ? 2 : 1
            for _ in 0..<copies {
                seq += 1
                // A few messages arrive much later, across election timeouts and term changes.
                let delay = chance(15) ? 10 + Int(rng.next() % 20) : Int(rng.next() % (churn ? 6 : 4))
                inflight.append(Pending(at: now + delay, seq: seq, message: m))
            }
        } else {
            seq += 1
            inflight.append(Pending(at: now + Int(rng.next() % 2), seq: seq, message: m))
        }
    }

    func dropped(_ m: Message) {
        guard let sender = nodes[m.from] else { return }
        if m.type == .snapshot { try? sender.reportSnapshot(m.to, success: false) }
        if m.type == .append && chance(300) { try? sender.reportUnreachable(m.to) }
    }

    func deliverDue() throws {
        var due: [Pending] = []
        var rest: [Pending] = []
        for p in inflight { if p.at <= now { due.append(p) } else { rest.append(p) } }
        inflight = rest
        // Reorder: deliver in a random permutation.
        for i in due.indices.reversed() where i > 0 {
            let j = Int(rng.next() % UInt64(i + 1))
            due.swapAt(i, j)
        }
        for p in due { try deliver(p.message) }
    }

    func deliver(_ m: Message) throws {
        if cuts.contains([m.from, m.to]) || retired.contains(m.from) || retired.contains(m.to) {
            return dropped(m)
        }
        guard let n = nodes[m.to] else { return dropped(m) }
        trace("deliver \(m.type) \(m.from)->\(m.to) t\(m.term) i\(m.index) lt\(m.logTerm) c\(m.commit) n\(m.entries.count)\(m.entries.first.map { " first \($0.index)/\($0.term)" } ?? "") rej\(m.reject) hint\(m.rejectHint) [node t\(n.term) \(n.role) last\((try? n.log.lastIndex()) ?? 0) c\(n.log.committed)]")
        if m.type == .requestVoteResponse && !m.reject {
            votesFor[EntryKey(index: m.to, term: m.term), default: []].insert(m.from)
        }
        try event(m.to) {
            do {
                try n.step(m)
            } catch RaftError.proposalDropped {
            } catch RaftError.rejectedMessage(.unknownPeer, _) {
                // A response from a member removed meanwhile. Any other rejection fails the run:
                // a correct peer never sends what step() refuses.
            }
        }
        if m.type == .snapshot, let sender = nodes[m.from] {
            try event(m.from) { try sender.reportSnapshot(m.to, success: true) }
        }
    }

    // MARK: - Ready handling

    /// Runs `body` against node `id`, checks the per-event invariants, then handles its Ready.
    func event(_ id: UInt64, _ body: () throws -> Void) throws {
        guard let n = nodes[id] else { return }
        let wasLeader = n.role == .leader
        let commit = n.log.committed
        do {
            try body()
        } catch RaftError.proposalDropped {
        } catch let e as RaftError {
            throw fail("node \(id): \(e)")
        }
        try afterEvent(n, wasLeader: wasLeader, commitBefore: commit)
        try processReady(id)
    }

    func afterEvent(_ n: RaftNode, wasLeader: Bool, commitBefore: UInt64) throws {
        if n.role == .leader && !wasLeader {
            stats.leaders += 1
            if let other = leaderOfTerm[n.term], other != n.id {
                throw fail("two leaders in term \(n.term): \(other) and \(n.id)")
            }
            leaderOfTerm[n.term] = n.id
            // Elected by a quorum of voters of its configuration; learners' votes never count.
            // Counted here from the vote messages delivered, not with the core's quorum code.
            var granted: Set<UInt64> = [n.id]
            for v in votesFor[EntryKey(index: n.id, term: n.term), default: []] { granted.insert(v) }
            if !Self.quorum(n.membership.confState, granted) {
                throw fail("node \(n.id) leads term \(n.term) without a quorum of voters: \(granted.sorted())")
            }
            // Leader completeness: it holds every committed entry.
            for k in liveIDs { maxCommitted = max(maxCommitted, nodes[k]!.log.committed) }
            let first = try n.log.firstIndex()
            if maxCommitted > 0, try n.log.lastIndex() < maxCommitted {
                throw fail("leader \(n.id) of term \(n.term) lacks committed index \(maxCommitted)")
            }
            if maxCommitted >= first {
                for i in first...maxCommitted {
                    if let t = committedTerm[i], t != (try n.log.term(i)) {
                        throw fail("leader \(n.id) of term \(n.term) has a different entry at committed index \(i)")
                    }
                }
            }
        }
        if n.role == .leader && n.log.committed > commitBefore {
            if pendingWrites[n.id] != nil { stats.commitsDuringWrite += 1 }
            // Whatever a leader commits is durable on a quorum of voters (learners never count).
            let ci = n.log.committed
            let t = try n.log.term(ci)
            if t != n.term {
                stats.oldTermCommits += 1
                let holders = ids.filter { (try? disks[$0]!.live.term(ci)).map { $0 > t } ?? false }
                if !holders.isEmpty {
                    stats.dangerous += 1
                    trace("DANGER leader \(n.id) t\(n.term) commits \(ci)/\(t); higher-term holders \(holders)")
                }
            }
            // Durably: counted on each voter's durable image (what a crash keeps), the leader's
            // own included, with majorities counted here, not by the core's quorum code.
            var has: Set<UInt64> = []
            for v in n.membership.allVoters where try disks[v]!.durablyHolds(index: ci, term: t) { has.insert(v) }
            if !Self.quorum(n.membership.confState, has) {
                throw fail("leader \(n.id) committed \(ci)/\(t) durable on \(has.sorted()) only; voters \(n.membership.allVoters.sorted())")
            }
        }
        // A non-voter never campaigns or wins; a leader removed or demoted by a configuration
        // it applies keeps leading (etcd's default) until a higher term, CheckQuorum or a transfer.
        if n.role != .follower && !n.membership.allVoters.contains(n.id) && !(n.role == .leader && wasLeader) {
            throw fail("non-voter \(n.id) is \(n.role)")
        }
    }

    func processReady(_ id: UInt64) throws {
        while pendingWrites[id] == nil, let n = nodes[id], n.hasReady {
            let rd = try n.ready()
            // A leader's appends leave before its own write (thesis 10.2.1), as in the server.
            let early = rd.messagesBeforePersist
            for m in early { try sendChecked(id, m) }
            if faults && chance(churn ? 2 : 5) { return try crash(id) } // the write is lost, early messages are out
            if faults && !early.isEmpty && chance(200) {
                // The write stays in flight; the leader keeps stepping (acks race its write).
                pendingWrites[id] = (rd, now + Int(rng.next() % 4))
                stats.writesInFlight += 1
                trace("write in flight at \(id) until step \(pendingWrites[id]!.at)")
                return
            }
            guard try finishReady(id, n, rd) else { return }
        }
    }

    /// Completes the leader writes that are due, then handles what piled up meanwhile.
    func completeWrites() throws {
        for (id, w) in pendingWrites.sorted(by: { $0.key < $1.key }) where w.at <= now {
            pendingWrites[id] = nil
            guard let n = nodes[id] else { continue }
            guard try finishReady(id, n, w.ready) else { continue }
            try processReady(id)
        }
    }

    /// Persists, sends the rest, applies (or hands to the apply queue) and advances one Ready;
    /// false if the node crashed.
    func finishReady(_ id: UInt64, _ n: RaftNode, _ rd: Ready) throws -> Bool {
        let disk = disks[id]!
        if let snap = rd.snapshot {
            if let d = digestAt[snap.metadata.index], d != Self.digest(of: snap.data) {
                throw fail("node \(id) received a snapshot at \(snap.metadata.index) with a foreign state")
            }
            // A barrier: the apply thread first applies everything handed to it.
            if !applyQueues[id, default: []].isEmpty {
                stats.snapshotBarriers += 1
                try drainApplyQueue(id, upTo: .max)
            }
            if let a = apps[id], a.index >= snap.metadata.index {
                throw fail("node \(id) installs a snapshot at \(snap.metadata.index) over applied index \(a.index)")
            }
            try disk.write(.snapshot(snap))
            apps[id] = App(index: snap.metadata.index, digest: Self.digest(of: snap.data))
        }
        if !rd.entries.isEmpty {
            trace("persist \(id) \(rd.entries.map { "\($0.index)/\($0.term)" }) hs \(String(describing: rd.hardState))")
            try checkNewEntries(id, rd.entries)
            for e in rd.entries { try disk.write(.entry(e)) } // one WAL record each: a crash may tear between them
        }
        if let hs = rd.hardState { try disk.write(.hardState(hs)) }
        if rd.mustSync { try disk.sync() }
        if faults && chance(churn ? 2 : 5) { try crash(id); return false } // persisted, nothing else sent or applied
        for m in rd.messagesAfterPersist { try sendChecked(id, m) }
        for e in rd.committedEntries { try handOver(id, e) }
        // The apply thread may run while the loop goes on.
        if threadedApply && chance(applyRunChance / 2) { try runApplyThread(id) }
        for r in rd.readStates {
            guard let floor = readFloor[r.context] else { throw fail("unknown read context") }
            if r.index < floor {
                throw fail("read at node \(id) got read index \(r.index) < commit \(floor) at request time")
            }
            pendingReads[id, default: []].append((r.context, r.index))
        }
        if !rd.readStates.isEmpty {
            try answerReads(id)
            let applied = apps[id]!.index
            stats.readsWaited += rd.readStates.filter { $0.index > applied }.count
        }
        guard nodes[id] === n else { return false }
        // The leader's own log counts toward commit from here: check what that commits.
        let wasLeader = n.role == .leader, commit = n.log.committed
        try n.advance(rd)
        try afterEvent(n, wasLeader: wasLeader, commitBefore: commit)
        return true
    }

    /// Sends a message after checking what it claims about the sender's durable state, counted
    /// from its disk image: a granted vote is durable and the only one of its term; an append
    /// acknowledgement covers entries that are durable.
    func sendChecked(_ id: UInt64, _ m: Message) throws {
        let disk = disks[id]!
        switch m.type {
        case .requestVoteResponse where !m.reject:
            let key = EntryKey(index: id, term: m.term)
            if let other = voteGiven[key], other != m.to {
                throw fail("node \(id) voted for \(other) and \(m.to) in term \(m.term)")
            }
            voteGiven[key] = m.to
            let hs = disk.durable.hardState
            if hs.term < m.term || (hs.term == m.term && hs.vote != m.to) {
                throw fail("node \(id) grants its vote in term \(m.term) to \(m.to) before it is durable (durable \(hs))")
            }
        case .requestVote:
            // A candidate asks for votes only once its own vote is durable; it counts as a vote.
            let hs = disk.durable.hardState
            if hs.term > m.term { break } // a stale request; this node never votes in that term again
            if hs.term != m.term || hs.vote != id {
                throw fail("candidate \(id) asks for votes in term \(m.term) before its own vote is durable (durable \(hs))")
            }
            let key = EntryKey(index: id, term: m.term)
            if let other = voteGiven[key], other != id {
                throw fail("node \(id) voted for \(other) and for itself in term \(m.term)")
            }
            voteGiven[key] = id
        case .appendResponse where !m.reject && m.index > 0:
            // An index compacted away in the live view is inside the (synced) snapshot.
            let live = (try? disk.live.term(m.index)) ?? 0
            if try !disk.durablyHolds(index: m.index, term: live) {
                throw fail("node \(id) acknowledges index \(m.index) before it is durable")
            }
        default:
            break
        }
        send(m)
    }

    func checkNewEntries(_ id: UInt64, _ ents: [Entry]) throws {
        var prev: UInt64? = ents[0].index == 0 ? nil : (try? nodes[id]!.log.term(ents[0].index - 1))
        for e in ents {
            // A stale leader may write anything at a committed index in its own log, but no
            // node may lose a committed entry it holds.
            if let ct = committedTerm[e.index], ct != e.term, (try? disks[id]!.live.term(e.index)) == ct {
                throw fail("node \(id) overwrites committed index \(e.index) (term \(ct)) with term \(e.term)")
            }
            let key = EntryKey(index: e.index, term: e.term)
            let h = Self.hash(e)
            if let known = entryInfo[key] {
                if known.hash != h { throw fail("two different entries at index \(e.index) term \(e.term)") }
                if let p = prev, let kp = known.prevTerm, p != kp {
                    throw fail("log matching broken before index \(e.index) term \(e.term)")
                }
                if known.prevTerm == nil, prev != nil { entryInfo[key] = (h, prev) }
            } else {
                entryInfo[key] = (h, prev)
            }
            prev = e.term
        }
    }

    /// Gives a committed entry to the application: applied at once when synchronous, else
    /// queued for the apply thread; a conf change is a barrier (applied by the loop once every
    /// entry before it is).
    func handOver(_ id: UInt64, _ e: Entry) throws {
        guard threadedApply else { return try apply(id, e) }
        let queued = applyQueues[id, default: []].count
        if e.type != .normal {
            if queued > 0 {
                stats.confBarriers += 1
                try drainApplyQueue(id, upTo: .max)
            }
            return try apply(id, e)
        }
        if queued >= applyQueueLimit {
            // The queue is full: the loop waits until the apply thread made room.
            stats.queueFullWaits += 1
            try drainApplyQueue(id, upTo: queued - applyQueueLimit + 1)
        }
        applyQueues[id, default: []].append(e)
        queuedEntries += 1
    }

    /// Each node's apply thread may run now and apply some of its queue: one to four entries,
    /// or (30%) all of them.
    func runApplyThreads() throws {
        guard queuedEntries > 0 else { return }
        for id in ids where !applyQueues[id, default: []].isEmpty && chance(applyRunChance) { try runApplyThread(id) }
    }

    func runApplyThread(_ id: UInt64) throws {
        let queued = applyQueues[id, default: []].count
        guard queued > 0 else { return }
        stats.maxApplyLag = max(stats.maxApplyLag, queued)
        try drainApplyQueue(id, upTo: chance(300) ? queued : 1 + Int(rng.next() % UInt64(min(queued, 4))))
    }

    /// The apply thread applies up to `count` queued entries in order, then answers the reads
    /// the applied state now covers.
    func drainApplyQueue(_ id: UInt64, upTo count: Int) throws {
        var applied = 0
        while applied < count, let e = applyQueues[id]?.first {
            applyQueues[id]!.removeFirst()
            queuedEntries -= 1
            // Raft's view (advanced past it) is ahead of the application's.
            if let n = nodes[id], n.log.applied >= e.index { stats.appliesLagged += 1 }
            try apply(id, e)
            applied += 1
        }
        try answerReads(id)
    }

    /// Answers, in order, the reads whose read index the applied state has reached. Checked:
    /// the applied state covers the read index and the commit index when the read was made.
    func answerReads(_ id: UInt64) throws {
        guard let waiting = pendingReads[id], !waiting.isEmpty, let a = apps[id] else { return }
        var keep: [(context: [UInt8], index: UInt64)] = []
        for r in waiting {
            guard a.index >= r.index else {
                keep.append(r)
                continue
            }
            let floor = readFloor[r.context] ?? .max
            if a.index < r.index || a.index < floor {
                throw fail("read at node \(id) answered at applied index \(a.index): read index \(r.index), commit at request \(floor)")
            }
            stats.reads += 1
        }
        pendingReads[id] = keep
    }

    /// Applies one committed entry to the node's state (and a conf change to its Raft node).
    func apply(_ id: UInt64, _ e: Entry) throws {
        guard var a = apps[id], let n = nodes[id] else { return }
        // Only committed entries are applied: the entry is in the oracle's committed map.
        try noteCommits(id, n)
        if committedTerm[e.index] != e.term {
            throw fail("node \(id) applies \(e.index)/\(e.term), not committed (committed term \(String(describing: committedTerm[e.index])))")
        }
        if e.type != .normal, !applyQueues[id, default: []].isEmpty {
            throw fail("node \(id) applies the conf change at \(e.index) with entries before it still queued")
        }
        if e.index != a.index + 1 { throw fail("node \(id) applies \(e.index) after \(a.index)") }
        a.index = e.index
        a.digest = Self.mix(a.digest, Self.hash(e))
        if let d = digestAt[e.index] {
            if d != a.digest { throw fail("node \(id) applied a different sequence at \(e.index)") }
        } else {
            digestAt[e.index] = a.digest
        }
        apps[id] = a
        guard e.type != .normal else { return }
        let cc: ConfChangeV2 = e.type == .confChange ? try ConfChange(decoding: e.data).asV2 : try ConfChangeV2(decoding: e.data)
        let before = n.membership.allMembers
        let wasLeader = n.role == .leader, commit = n.log.committed
        do {
            try n.applyConfChange(cc)
            stats.confChanges += 1
        } catch RaftError.invalidConfChange {
            return
        }
        try afterEvent(n, wasLeader: wasLeader, commitBefore: commit)
        // A removed member goes away once no other member's configuration (outgoing half
        // included) names it: until then a member still in a joint configuration may need its
        // vote (configurations take effect when applied, so a member that has appended but not
        // applied the change that leaves the joint configuration still counts the old voters).
        for r in before.subtracting(n.membership.allMembers) {
            if !liveIDs.contains(where: { $0 != r && nodes[$0]!.membership.allMembers.contains(r) }) { retired.insert(r) }
        }
    }

    func checkStep() throws {
        for id in liveIDs {
            let n = nodes[id]!
            if n.role == .leader, let other = leaderOfTerm[n.term], other != id {
                throw fail("two leaders in term \(n.term)")
            }
            try noteCommits(id, n)
            // Raft's applied index is what was handed over: the applied state plus the queue.
            let a = apps[id]!.index
            if a > n.log.committed || a + UInt64(applyQueues[id, default: []].count) != n.log.applied {
                throw fail("node \(id) applied \(a) + queued \(applyQueues[id, default: []].count), Raft applied \(n.log.applied) commit \(n.log.committed)")
            }
        }
    }

    /// Records the node's newly committed entries in the oracle, checking they agree with
    /// every other node's.
    func noteCommits(_ id: UInt64, _ n: RaftNode) throws {
        let c = n.log.committed
        if c > seenCommit[id, default: 0] {
            let lo = max(seenCommit[id, default: 0] + 1, try n.log.firstIndex())
            if lo <= c {
                for i in lo...c {
                    let t = try n.log.term(i)
                    if let ct = committedTerm[i] {
                        if ct != t { throw fail("node \(id) committed term \(t) at \(i), others \(ct)") }
                    } else {
                        committedTerm[i] = t
                    }
                }
            }
            seenCommit[id] = c
            maxCommitted = max(maxCommitted, c)
            stats.commits = maxCommitted
        }
    }

    // MARK: - Liveness

    func liveness() throws {
        faults = false
        cuts = []
        for id in crashedUntil.keys.sorted() { try restart(id) }
        var leaderAt: Int?
        var proposedAt = -100
        nextData += 1
        var marker: [UInt8] = Array("done".utf8)
        withUnsafeBytes(of: nextData.littleEndian) { marker.append(contentsOf: $0) }
        let start = now
        while now - start < 600 {
            try step()
            let ls = leaders.filter { l in l.membership.allMembers.allSatisfy { (nodes[$0]?.term ?? 0) <= l.term } }
            if leaderAt == nil, !ls.isEmpty { leaderAt = now - start }
            if leaderAt == nil && now - start > 200 {
                throw fail("no leader \(now - start) ticks after healing: \(stateDump())")
            }
            guard let l = ls.first else { continue }
            guard let idx = markerIndex(l, marker) else {
                if now - proposedAt >= 5 {
                    proposedAt = now
                    try event(l.id) {
                        do { try l.propose(marker) } catch RaftError.proposalDropped {}
                    }
                }
                continue
            }
            // Done when every member of the leader's configuration applied the marker.
            guard l.log.committed >= idx else { continue }
            if l.membership.allMembers.allSatisfy({ (apps[$0]?.index ?? 0) >= idx }) { return }
        }
        throw fail("proposal did not commit everywhere after healing: \(stateDump())")
    }

    func stateDump() -> String {
        liveIDs.map { id -> String in
            let n = nodes[id]!
            let m = n.membership
            return "\(id)\(retired.contains(id) ? "(retired)" : ""): \(n.role) t\(n.term) v\(n.vote) last\((try? n.log.lastIndex()) ?? 0)/\((try? n.log.lastTerm()) ?? 0) c\(n.log.committed) a\(apps[id]!.index)+q\(applyQueues[id, default: []].count) lead\(n.lead) V\(m.voters.sorted()) O\(m.outgoing.sorted()) L\(m.learners.sorted()) LN\(m.learnersNext.sorted()) prevote\(configs[id]!.preVote) cq\(configs[id]!.checkQuorum)"
        }.joined(separator: "\n  ")
    }

    func markerIndex(_ l: RaftNode, _ marker: [UInt8]) -> UInt64? {
        let first = (try? l.log.firstIndex()) ?? 1
        guard let last = try? l.log.lastIndex(), last >= first else { return nil }
        var i = last
        while i >= max(first, last > 300 ? last - 300 : 0) {
            if let e = try? l.log.slice(i, i + 1, maxBytes: .max).first, e.data == marker { return i }
            i -= 1
        }
        return nil
    }

    // MARK: - Independent quorum counting

    /// A strict majority of `voters` is in `has` (true for an empty list).
    static func majority(_ voters: [UInt64], _ has: Set<UInt64>) -> Bool {
        voters.filter { has.contains($0) }.count * 2 > voters.count
    }

    /// `has` holds a majority of the configuration: of the voters and, when joint, of the
    /// outgoing voters too.
    static func quorum(_ cs: ConfState, _ has: Set<UInt64>) -> Bool {
        majority(cs.voters, has) && (cs.votersOutgoing.isEmpty || majority(cs.votersOutgoing, has))
    }

    // MARK: - Hashing

    static func hash(_ e: Entry) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ UInt64(e.type.rawValue)
        for b in e.data {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }

    static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        var s = SplitMix64(seed: a ^ (b &* 0x9E37_79B9_7F4A_7C15))
        return s.next()
    }

    static func bytes(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) } }

    static func digest(of data: [UInt8]) -> UInt64 {
        guard data.count == 8 else { return 0 }
        return data.enumerated().reduce(0) { $0 | (UInt64($1.element) << (UInt64($1.offset) * 8)) }
    }
}

/// One node's disk in the simulation. Every write goes to the live storage (what the node
/// reads, as the server's page cache) and to a queue of unsynced WAL records; `sync` makes them
/// durable. A crash keeps the durable image plus a prefix of the unsynced records (a torn
/// WAL tail): entries without their hard state, a commit-only hard state lost, a snapshot
/// whose metadata never reached the disk.
final class SimDisk {
    enum Record {
        case entry(Entry)
        case hardState(HardState)
        case snapshot(Snapshot)
    }

    private(set) var live: MemoryStorage
    let durable: MemoryStorage
    private(set) var unsynced: [Record] = []

    init(_ initial: Snapshot) throws {
        live = MemoryStorage()
        durable = MemoryStorage()
        try live.applySnapshot(initial)
        try durable.applySnapshot(initial)
    }

    func write(_ r: Record) throws {
        try Self.apply(r, to: live)
        unsynced.append(r)
    }

    func sync() throws {
        for r in unsynced { try Self.apply(r, to: durable) }
        unsynced = []
    }

    /// Loses all unsynced records but the first `kept`; the live view becomes the disk's.
    func crash(keeping kept: Int) throws {
        for r in unsynced.prefix(kept) { try Self.apply(r, to: durable) }
        unsynced = []
        let s = MemoryStorage()
        try s.applySnapshot(try durable.snapshot())
        let first = try durable.firstIndex(), last = try durable.lastIndex()
        if last >= first { try s.append(try durable.entries(first, last + 1, maxBytes: .max)) }
        s.setHardState(durable.hardState)
        live = s
    }

    /// The durable image holds the entry (`index`, `term`), or a snapshot covering it.
    func durablyHolds(index: UInt64, term: UInt64) throws -> Bool {
        if try durable.snapshot().metadata.index >= index { return true }
        return (try? durable.term(index)) == term
    }

    static func apply(_ r: Record, to s: MemoryStorage) throws {
        switch r {
        case .entry(let e): try s.append([e])
        case .hardState(let hs): s.setHardState(hs)
        case .snapshot(let snap): try s.applySnapshot(snap)
        }
    }
}
