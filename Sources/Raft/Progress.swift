/// How the leader currently replicates to a follower.
public enum ProgressState: Sendable, Equatable {
    /// One append at a time until the follower's match index is found.
    case probe
    /// Appends are pipelined, bounded by the inflight window.
    case replicate
    /// A snapshot is on its way; appends wait for its outcome.
    case snapshot
}

/// A sliding window of in-flight appends (by last index), bounded by count and bytes.
struct Inflights {
    let capacity: Int
    let maxBytes: UInt64
    private var items: [(index: UInt64, bytes: UInt64)] = []
    private var head = 0
    private(set) var bytes: UInt64 = 0

    init(capacity: Int, maxBytes: UInt64) {
        self.capacity = capacity
        self.maxBytes = maxBytes
    }

    var count: Int { items.count - head }

    var full: Bool { count >= capacity || (maxBytes > 0 && bytes >= maxBytes) }

    mutating func add(index: UInt64, bytes b: UInt64) {
        items.append((index, b))
        bytes += b
    }

    /// Frees every append whose last index is <= `index`.
    mutating func freeLE(_ index: UInt64) {
        while head < items.count, items[head].index <= index {
            bytes -= items[head].bytes
            head += 1
        }
        if head > 64 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
    }

    mutating func freeFirst() {
        if head < items.count { freeLE(items[head].index) }
    }

    mutating func reset() {
        items.removeAll(keepingCapacity: true)
        head = 0
        bytes = 0
    }
}

/// The leader's view of one peer.
struct Progress {
    var match: UInt64 = 0
    var next: UInt64
    var state: ProgressState = .probe
    /// Index of the snapshot being sent (snapshot state).
    var pendingSnapshot: UInt64 = 0
    /// Heard from since the last CheckQuorum round.
    var recentActive = false
    /// In probe state: an append is outstanding, wait for its answer or a heartbeat answer.
    var probeSent = false
    /// In snapshot state: heartbeat answers received since the snapshot was sent.
    var snapshotWaitAcks = 0
    var inflights: Inflights
    var isLearner = false

    init(next: UInt64, inflights: Inflights, isLearner: Bool) {
        self.next = next
        self.inflights = inflights
        self.isLearner = isLearner
    }

    var isPaused: Bool {
        switch state {
        case .probe: return probeSent
        case .replicate: return inflights.full
        case .snapshot: return true
        }
    }

    private mutating func reset(to s: ProgressState) {
        probeSent = false
        pendingSnapshot = 0
        snapshotWaitAcks = 0
        state = s
        inflights.reset()
    }

    mutating func becomeProbe() {
        if state == .snapshot {
            let pending = pendingSnapshot
            reset(to: .probe)
            next = max(match + 1, pending + 1)
        } else {
            reset(to: .probe)
            next = match + 1
        }
    }

    mutating func becomeReplicate() {
        reset(to: .replicate)
        next = match + 1
    }

    mutating func becomeSnapshot(_ index: UInt64) {
        reset(to: .snapshot)
        pendingSnapshot = index
    }

    /// Records an acknowledgement up to `n`; returns whether `match` advanced.
    mutating func maybeUpdate(_ n: UInt64) -> Bool {
        var updated = false
        if match < n {
            match = n
            updated = true
            probeSent = false
        }
        next = max(next, n + 1)
        return updated
    }

    /// Handles a rejection of the append after `rejected`; `hint` is the leader's estimate of
    /// the follower's last matching index. Returns false for stale rejections.
    mutating func maybeDecrease(rejected: UInt64, hint: UInt64) -> Bool {
        if state == .replicate {
            if rejected <= match { return false }
            next = match + 1
            return true
        }
        if next == 0 || next - 1 != rejected { return false }
        next = max(min(rejected, hint + 1), match + 1)
        probeSent = false
        return true
    }

    /// Records that entries up to `last` (of `bytes` bytes) were sent.
    mutating func sentEntries(last: UInt64, bytes: UInt64) {
        switch state {
        case .replicate:
            next = last + 1
            inflights.add(index: last, bytes: bytes)
        case .probe:
            probeSent = true
        case .snapshot:
            break
        }
    }
}

/// The outcome of counting votes (or acknowledgements).
enum VoteResult: Equatable {
    case pending, lost, won
}

/// Membership as the progress tracker sees it (sets, for quorum arithmetic).
struct MembershipConfig: Equatable {
    var voters: Set<UInt64> = []
    var outgoing: Set<UInt64> = []
    var learners: Set<UInt64> = []
    var learnersNext: Set<UInt64> = []
    var autoLeave = false

    var isJoint: Bool { !outgoing.isEmpty }

    var allVoters: Set<UInt64> { voters.union(outgoing) }

    var allMembers: Set<UInt64> { voters.union(outgoing).union(learners).union(learnersNext) }

    init() {}

    init(_ cs: ConfState) {
        voters = Set(cs.voters)
        outgoing = Set(cs.votersOutgoing)
        learners = Set(cs.learners)
        learnersNext = Set(cs.learnersNext)
        autoLeave = cs.autoLeave
    }

    var confState: ConfState {
        ConfState(voters: Array(voters), learners: Array(learners), votersOutgoing: Array(outgoing),
                  learnersNext: Array(learnersNext), autoLeave: autoLeave)
    }

    /// Throws if the sets are inconsistent.
    func validate() throws {
        if !voters.isDisjoint(with: learners) || !outgoing.isDisjoint(with: learners) {
            throw RaftError.invalidConfChange("a node is both voter and learner")
        }
        if !learnersNext.isSubset(of: outgoing) || !learnersNext.isDisjoint(with: voters) {
            throw RaftError.invalidConfChange("learnersNext must be outgoing voters only")
        }
        if !isJoint && autoLeave { throw RaftError.invalidConfChange("autoLeave outside joint") }
        if voters.isEmpty && !allMembers.isEmpty {
            throw RaftError.invalidConfChange("removed all voters")
        }
    }
}

/// Quorum arithmetic for a single majority configuration.
enum Majority {
    /// The highest index acknowledged by a majority of `voters` (`UInt64.max` if empty).
    static func committed(_ voters: Set<UInt64>, _ match: (UInt64) -> UInt64?) -> UInt64 {
        if voters.isEmpty { return UInt64.max }
        var m = voters.map { match($0) ?? 0 }
        m.sort(by: >)
        return m[m.count / 2]
    }

    static func result(_ voters: Set<UInt64>, _ votes: [UInt64: Bool]) -> VoteResult {
        if voters.isEmpty { return .won }
        var yes = 0, missing = 0
        for v in voters {
            switch votes[v] {
            case true?: yes += 1
            case false?: break
            case nil: missing += 1
            }
        }
        let q = voters.count / 2 + 1
        if yes >= q { return .won }
        if yes + missing >= q { return .pending }
        return .lost
    }
}

extension MembershipConfig {
    /// Commit index under (possibly joint) consensus.
    func committed(_ match: (UInt64) -> UInt64?) -> UInt64 {
        min(Majority.committed(voters, match), Majority.committed(outgoing, match))
    }

    func voteResult(_ votes: [UInt64: Bool]) -> VoteResult {
        let a = Majority.result(voters, votes), b = Majority.result(outgoing, votes)
        if a == .lost || b == .lost { return .lost }
        if a == .won && b == .won { return .won }
        return .pending
    }

    /// Applies a membership change, returning the new configuration.
    func applying(_ cc: ConfChangeV2) throws -> MembershipConfig {
        var c = self
        if cc.leavesJoint {
            guard isJoint else { throw RaftError.invalidConfChange("not in a joint configuration") }
            c.learners.formUnion(c.learnersNext)
            c.learnersNext = []
            c.outgoing = []
            c.autoLeave = false
            try c.validate()
            return c
        }
        let (enters, autoLeave) = cc.entersJoint
        if isJoint { throw RaftError.invalidConfChange("already in a joint configuration") }
        if enters {
            if voters.isEmpty { throw RaftError.invalidConfChange("cannot enter joint from an empty configuration") }
            c.outgoing = voters
            c.autoLeave = autoLeave
        }
        for ch in cc.changes where ch.nodeID != 0 {
            let id = ch.nodeID
            switch ch.type {
            case .addNode:
                c.voters.insert(id)
                c.learners.remove(id)
                c.learnersNext.remove(id)
            case .addLearnerNode:
                c.voters.remove(id)
                if c.outgoing.contains(id) {
                    c.learnersNext.insert(id)
                } else {
                    c.learners.insert(id)
                }
            case .removeNode:
                c.voters.remove(id)
                c.learners.remove(id)
                c.learnersNext.remove(id)
            }
        }
        if !enters && c.voters.symmetricDifference(voters).count > 1 {
            throw RaftError.invalidConfChange("more than one voter changed without joint consensus")
        }
        if c.voters.isEmpty { throw RaftError.invalidConfChange("removed all voters") }
        try c.validate()
        return c
    }
}

/// Pending ReadIndex requests awaiting a heartbeat quorum (safe mode).
///
/// Each request gets a new round number of this leader; the heartbeats sent for it carry the
/// round (8 bytes, big-endian), never client bytes. An acknowledgement of round r counts only for
/// requests of rounds <= r, so an ack sent before a request arrived never confirms it, and
/// requests with equal client contexts stay distinct.
struct ReadOnlyQueue {
    struct Request {
        var index: UInt64
        var message: Message
        var round: UInt64
    }

    private(set) var pending: [Request] = []
    private(set) var round: UInt64 = 0
    /// Highest round each peer acknowledged.
    private var acked: [UInt64: UInt64] = [:]

    /// Heartbeat context for the newest pending request (nil if none).
    var lastContext: [UInt8]? { pending.last.map { Self.encode($0.round) } }

    static func encode(_ r: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: r >> (56 - 8 * $0)) } }

    static func decode(_ c: [UInt8]) -> UInt64? {
        guard c.count == 8 else { return nil }
        return c.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Queues a request in a new round; returns the heartbeat context to send for it.
    mutating func add(index: UInt64, _ m: Message) -> [UInt8] {
        round += 1
        pending.append(Request(index: index, message: m, round: round))
        return Self.encode(round)
    }

    /// Records that `id` acknowledged the round in `context`.
    mutating func ack(from id: UInt64, context: [UInt8]) {
        guard let r = Self.decode(context), r <= round else { return }
        acked[id] = max(acked[id] ?? 0, r)
    }

    /// Removes and returns the oldest requests whose round `confirmed` says a quorum acknowledged
    /// (the leader itself counts for every round).
    mutating func release(leader: UInt64, confirmed: ([UInt64: Bool]) -> Bool) -> [Request] {
        var k = 0
        while k < pending.count {
            let r = pending[k].round
            var votes: [UInt64: Bool] = [leader: true]
            for (id, a) in acked where a >= r { votes[id] = true }
            if !confirmed(votes) { break }
            k += 1
        }
        let done = Array(pending[..<k])
        pending.removeFirst(k)
        return done
    }
}
