/// Marks a vote request sent because of a leadership transfer: voters ignore their leader lease.
let campaignTransferContext: [UInt8] = Array("CampaignTransfer".utf8)

/// A Raft consensus node: a deterministic state machine driven by the caller.
///
/// The caller supplies time (``tick()``), incoming messages (``step(_:)``) and requests
/// (``propose(_:)``, ``readIndex(context:)``, ...), then collects work with ``ready()`` and
/// acknowledges it with ``advance(_:)``. The node does no I/O; it reads its persisted state
/// through a ``RaftStorage``. Not thread-safe: use from one task at a time.
public final class RaftNode {
    let cfg: RaftConfig
    /// This node's ID.
    public let id: UInt64

    var term: UInt64 = 0
    var vote: UInt64 = 0
    var log: RaftLog
    var role: RaftRole = .follower
    var lead: UInt64 = 0

    var membership = MembershipConfig()
    var progress: [UInt64: Progress] = [:]
    var votes: [UInt64: Bool] = [:]

    var msgs: [Message] = []
    var readStates: [ReadState] = []

    var electionElapsed = 0
    var heartbeatElapsed = 0
    var randomizedElectionTimeout = 0
    var rng: SplitMix64

    var leadTransferee: UInt64 = 0
    /// Log index of the latest membership change proposed by this leader (or the last index
    /// at election); no new change is accepted until it is applied.
    var pendingConfIndex: UInt64 = 0
    var uncommittedSize: UInt64 = 0
    var readOnly = ReadOnlyQueue()
    /// Reads received before an entry of this leader's term committed.
    var pendingReadIndexMessages: [Message] = []

    var prevSoftState: SoftState
    var prevHardState: HardState

    /// Creates a node from its persisted state in `storage`. A new cluster starts from storage
    /// holding a snapshot at index 0 whose ``ConfState`` lists the initial members.
    public init(config: RaftConfig, storage: any RaftStorage) throws {
        try config.validate()
        cfg = config
        id = config.id
        rng = SplitMix64(seed: config.seed ^ (config.id &* 0x9E37_79B9_7F4A_7C15))
        log = try RaftLog(storage: storage, maxCommittedSize: config.maxCommittedSizePerReady)
        let (hs, cs) = try storage.initialState()
        let mc = MembershipConfig(cs)
        try mc.validate()
        // Stored state obeys the same bounds as messages: a damaged or hostile log whose CRCs
        // still pass must not make the term or index arithmetic overflow later.
        let stored = [hs.term, hs.commit, try log.lastIndex(), try log.firstIndex()]
        if let bad = stored.first(where: { $0 >= Self.valueLimit }) {
            throw RaftError.logInvariant("stored term or index \(bad) out of range")
        }
        if !hs.isEmpty {
            let last = try log.lastIndex()
            guard hs.commit <= last, hs.commit >= log.committed else {
                throw RaftError.logInvariant("hard state commit \(hs.commit) outside log [\(log.committed), \(last)]")
            }
            term = hs.term
            vote = hs.vote
            log.committed = hs.commit
        }
        if config.applied > 0 {
            guard config.applied <= log.committed else {
                throw RaftError.logInvariant("applied \(config.applied) beyond commit \(log.committed)")
            }
            log.appliedTo(config.applied)
        }
        prevSoftState = SoftState(lead: 0, role: .follower)
        prevHardState = HardState(term: term, vote: vote, commit: log.committed)
        try switchMembership(mc)
        try becomeFollower(term: term, lead: 0)
    }

    // MARK: - Public interface

    /// Advances the logical clock by one tick (elections, heartbeats, CheckQuorum).
    public func tick() throws {
        if role == .leader {
            heartbeatElapsed += 1
            electionElapsed += 1
            if electionElapsed >= cfg.electionTick {
                electionElapsed = 0
                if cfg.checkQuorum { try stepInternal(Message(type: .checkQuorum, from: id)) }
                if role == .leader && leadTransferee != 0 { leadTransferee = 0 }
            }
            guard role == .leader else { return }
            if heartbeatElapsed >= cfg.heartbeatTick {
                heartbeatElapsed = 0
                try stepInternal(Message(type: .beat, from: id))
            }
            try maybeAutoLeaveJoint()
        } else {
            electionElapsed += 1
            if promotable && electionElapsed >= randomizedElectionTimeout {
                electionElapsed = 0
                try stepInternal(Message(type: .hup, from: id))
            }
        }
    }

    /// Terms and indexes stay far below 2^62 in any real cluster; larger values (in a message
    /// or in stored state) are garbage and would make the arithmetic overflow.
    static let valueLimit: UInt64 = 1 << 62

    /// Feeds a message received from a peer.
    ///
    /// Peer input is checked first, against the message alone and this node's log; a message
    /// that fails is refused with ``RaftError/rejectedMessage(_:_:)`` and changes nothing.
    /// Any other error thrown here is an internal invariant violation: stop the node.
    public func step(_ m: Message) throws {
        try validate(m)
        do {
            try stepInternal(m)
        } catch RaftError.proposalDropped {
            // A forwarded request that cannot be served is dropped; the requester times out.
        }
    }

    /// Refuses peer input that could break an invariant further down.
    func validate(_ m: Message) throws {
        func reject(_ r: MessageRejection, _ why: @autoclosure () -> String) -> RaftError {
            .rejectedMessage(r, "\(m.type) from \(m.from): \(why())")
        }
        if m.type.isLocal { throw reject(.localType, "local message kind") }
        let limit = Self.valueLimit
        if m.term >= limit || m.logTerm >= limit || m.index >= limit || m.commit >= limit
            || m.rejectHint >= limit || m.entries.contains(where: { $0.term >= limit || $0.index >= limit })
            || (m.snapshot.map { $0.metadata.index >= limit || $0.metadata.term >= limit } ?? false) {
            throw reject(.outOfRange, "term or index field out of range")
        }
        if m.to != id { throw reject(.misaddressed, "addressed to \(m.to), delivered to \(id)") }
        // Forwarded requests carry term 0 (they are handled like local ones); every other
        // message must carry its sender's term, or it would bypass all term checks.
        switch m.type {
        case .propose, .readIndex, .transferLeader:
            if m.term != 0 { throw reject(.badTerm, "forwarded request with term \(m.term)") }
        default:
            if m.term == 0 { throw reject(.badTerm, "no term") }
        }
        if m.type.isResponse && progress[m.from] == nil { throw reject(.unknownPeer, "not in the configuration") }
        switch m.type {
        case .append:
            var prevTerm = m.logTerm
            for (k, e) in m.entries.enumerated() {
                if e.index != m.index + 1 + UInt64(k) {
                    throw reject(.malformedEntries, "entries not consecutive after \(m.index)")
                }
                if e.term < prevTerm || e.term > m.term {
                    throw reject(.malformedEntries, "entry \(e.index) has term \(e.term) outside [\(prevTerm), \(m.term)]")
                }
                prevTerm = e.term
            }
        case .propose:
            for e in m.entries where e.type != .normal {
                let ok = e.type == .confChange ? (try? ConfChange(decoding: e.data)) != nil
                    : (try? ConfChangeV2(decoding: e.data)) != nil
                if !ok { throw reject(.badConfChange, "undecodable membership change") }
            }
        default:
            if !m.entries.isEmpty { throw reject(.malformedEntries, "entries on a message that carries none") }
        }
        if m.type == .snapshot {
            guard let snap = m.snapshot else { throw reject(.badSnapshot, "no snapshot") }
            if snap.metadata.term > m.term {
                throw reject(.badSnapshot, "snapshot term \(snap.metadata.term) above message term \(m.term)")
            }
            do { try MembershipConfig(snap.metadata.confState).validate() } catch {
                throw reject(.badSnapshot, "invalid configuration: \(error)")
            }
        } else if m.snapshot != nil {
            throw reject(.badSnapshot, "snapshot on a message that carries none")
        }
        // Claims about this node's own log that a correct peer never makes.
        let last = try log.lastIndex()
        if m.type == .heartbeat && m.term >= term && m.commit > last {
            throw reject(.beyondLog, "commit \(m.commit) beyond last index \(last)")
        }
        if m.type == .appendResponse && !m.reject && role == .leader && m.term == term && m.index > last {
            throw reject(.beyondLog, "acknowledges \(m.index) beyond last index \(last)")
        }
    }

    /// Proposes application data for the log.
    public func propose(_ data: [UInt8]) throws {
        try stepInternal(Message(type: .propose, from: id, entries: [Entry(term: 0, index: 0, data: data)]))
    }

    /// Proposes a single membership change.
    public func proposeConfChange(_ cc: ConfChange) throws {
        try stepInternal(Message(type: .propose, from: id,
                                 entries: [Entry(term: 0, index: 0, type: .confChange, data: cc.encode())]))
    }

    /// Proposes a membership change of any size (empty = leave the joint configuration).
    public func proposeConfChange(_ cc: ConfChangeV2) throws {
        try stepInternal(Message(type: .propose, from: id,
                                 entries: [Entry(term: 0, index: 0, type: .confChangeV2, data: cc.encode())]))
    }

    /// Requests a linearizable read; the answer arrives as a ``ReadState`` with `context`.
    /// Contexts are opaque and returned unchanged; they need not be unique. Pending reads are
    /// discarded when the leader steps down: the caller must time them out.
    public func readIndex(context: [UInt8]) throws {
        try stepInternal(Message(type: .readIndex, from: id, context: context))
    }

    /// Asks the leader to hand leadership to `transferee` (a voter).
    public func transferLeadership(to transferee: UInt64) throws {
        try stepInternal(Message(type: .transferLeader, from: transferee))
    }

    /// Starts an election now (PreVote first when enabled).
    public func campaign() throws {
        try stepInternal(Message(type: .hup, from: id))
    }

    /// Applies a committed single membership change; returns the new configuration.
    @discardableResult
    public func applyConfChange(_ cc: ConfChange) throws -> ConfState {
        try applyConfChange(cc.asV2)
    }

    /// Applies a committed membership change (call when applying its entry); returns the new
    /// configuration, to be stored with the next snapshot.
    @discardableResult
    public func applyConfChange(_ cc: ConfChangeV2) throws -> ConfState {
        let next = try membership.applying(cc)
        try switchMembership(next)
        return next.confState
    }

    /// Tells the leader that `id` could not be reached (its replication falls back to probing).
    public func reportUnreachable(_ peer: UInt64) throws {
        try stepInternal(Message(type: .unreachable, from: peer))
    }

    /// Tells the leader whether the snapshot sent to `peer` was delivered.
    public func reportSnapshot(_ peer: UInt64, success: Bool) throws {
        try stepInternal(Message(type: .snapStatus, from: peer, reject: !success))
    }

    /// The current soft state.
    public var softState: SoftState { SoftState(lead: lead, role: role) }

    /// The current hard state.
    public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }

    /// The index of a snapshot this node accepted and has not yet handed out in a `Ready`
    /// (nil when none): lets the driver tell a taken snapshot from an ignored one.
    public var pendingSnapshotIndex: UInt64? { log.unstable.snapshot?.metadata.index }

    /// Whether ``ready()`` has anything to return.
    public var hasReady: Bool {
        if softState != prevSoftState { return true }
        let hs = hardState
        if !hs.isEmpty && hs != prevHardState { return true }
        if log.unstable.snapshot != nil || !log.unstable.entries.isEmpty { return true }
        if !msgs.isEmpty || !readStates.isEmpty { return true }
        return (try? log.hasNextCommittedEntries()) ?? false
    }

    /// Collects pending work. Call ``advance(_:)`` with the result before the next call.
    public func ready() throws -> Ready {
        var rd = Ready()
        let ss = softState
        if ss != prevSoftState {
            rd.softState = ss
            prevSoftState = ss
        }
        let hs = hardState
        if !hs.isEmpty && hs != prevHardState {
            rd.hardState = hs
            rd.mustSync = hs.term != prevHardState.term || hs.vote != prevHardState.vote
        }
        rd.entries = log.unstable.entries
        if !rd.entries.isEmpty { rd.mustSync = true }
        rd.snapshot = log.unstable.snapshot
        // The hard state's commit may point into the snapshot: both must be durable together.
        if rd.snapshot != nil { rd.mustSync = true }
        rd.committedEntries = try log.nextCommittedEntries()
        if let last = rd.committedEntries.last { log.applying = last.index }
        rd.leaderMaySendEarly = role == .leader && rd.snapshot == nil
            && hs.term == prevHardState.term && hs.vote == prevHardState.vote
        rd.messages = msgs
        msgs = []
        rd.readStates = readStates
        readStates = []
        return rd
    }

    /// Acknowledges that a ``Ready`` was persisted (durably, when `mustSync`), sent and
    /// applied. A leader's own log counts toward commit from here on, not from when it was
    /// appended: its appends may have gone out before its write (``Ready/messagesBeforePersist``).
    /// Other messages may be stepped between ``ready()`` and this call.
    public func advance(_ rd: Ready) throws {
        if let hs = rd.hardState { prevHardState = hs }
        if let s = rd.snapshot {
            log.stableSnapTo(s.metadata.index)
            log.appliedTo(s.metadata.index)
        }
        if let e = rd.entries.last {
            log.stableTo(index: e.index, term: e.term)
            try selfPersisted()
        }
        if let e = rd.committedEntries.last {
            log.appliedTo(e.index)
            if role == .leader {
                var s: UInt64 = 0
                for c in rd.committedEntries where c.type == .normal { s += UInt64(c.data.count) }
                uncommittedSize = uncommittedSize > s ? uncommittedSize - s : 0
            }
        }
        try maybeAutoLeaveJoint()
    }

    /// The node's state, with per-peer progress when it leads.
    public var status: RaftStatus {
        var ps: [UInt64: ProgressStatus] = [:]
        if role == .leader {
            for (k, p) in progress {
                ps[k] = ProgressStatus(match: p.match, next: p.next, state: p.state, isLearner: p.isLearner,
                                       recentActive: p.recentActive, inflight: p.inflights.count)
            }
        }
        return RaftStatus(id: id, hardState: hardState, softState: softState, applied: log.applied,
                          lastIndex: (try? log.lastIndex()) ?? 0, confState: membership.confState,
                          progress: ps, leadTransferee: leadTransferee)
    }

    /// The leader's own durable log counts toward commit; a commit it makes goes out at once.
    func selfPersisted() throws {
        guard role == .leader, var p = progress[id] else { return }
        guard p.maybeUpdate(try log.persistedIndex()) else { return }
        progress[id] = p
        if try maybeCommit() { try broadcastAppend() }
    }

    // MARK: - Roles

    /// A node may campaign only if it is a voter of its configuration.
    var promotable: Bool { membership.allVoters.contains(id) }

    func resetRandomizedElectionTimeout() {
        randomizedElectionTimeout = cfg.electionTick + Int(rng.next() % UInt64(cfg.electionTick))
    }

    func reset(term t: UInt64) throws {
        if t != term {
            term = t
            vote = 0
        }
        lead = 0
        electionElapsed = 0
        heartbeatElapsed = 0
        resetRandomizedElectionTimeout()
        leadTransferee = 0
        votes = [:]
        let last = try log.lastIndex()
        for k in Array(progress.keys) {
            var p = newProgress(k, next: last + 1)
            if k == id {
                // Only what is durable counts (the rest counts once `advance` reports it).
                p.match = try log.persistedIndex()
                p.recentActive = true
            }
            progress[k] = p
        }
        pendingConfIndex = 0
        uncommittedSize = 0
        readOnly = ReadOnlyQueue()
        pendingReadIndexMessages = []
    }

    func newProgress(_ k: UInt64, next: UInt64) -> Progress {
        Progress(next: next, inflights: Inflights(capacity: cfg.maxInflightMsgs, maxBytes: cfg.maxInflightBytes),
                 isLearner: !membership.allVoters.contains(k))
    }

    func becomeFollower(term t: UInt64, lead l: UInt64) throws {
        try reset(term: t)
        lead = l
        role = .follower
    }

    func becomePreCandidate() {
        role = .preCandidate
        votes = [:]
        lead = 0
    }

    func becomeCandidate() throws {
        try reset(term: term + 1)
        vote = id
        role = .candidate
    }

    func becomeLeader() throws {
        try reset(term: term)
        lead = id
        role = .leader
        let last = try log.lastIndex()
        pendingConfIndex = last
        // Entries of earlier terms commit only through an entry of this term.
        try appendEntries([Entry(term: term, index: last + 1)])
    }

    // MARK: - Stepping

    func send(_ m0: Message) {
        var m = m0
        // A forwarded transfer request names the transferee in `from`.
        if m.type != .transferLeader { m.from = id }
        switch m.type {
        case .requestVote, .requestPreVote, .requestVoteResponse, .requestPreVoteResponse:
            break // term set by the caller
        case .propose, .readIndex, .transferLeader:
            m.term = 0 // forwarded requests are handled like local ones
        default:
            m.term = term
        }
        msgs.append(m)
    }

    func stepInternal(_ m: Message) throws {
        if m.term == 0 {
            // local message or forwarded request
        } else if m.term > term {
            if m.type == .requestVote || m.type == .requestPreVote {
                let force = m.context == campaignTransferContext
                let inLease = lead != 0 && electionElapsed < cfg.electionTick
                    && (cfg.checkQuorum || m.type == .requestPreVote)
                if !force && inLease { return }
            }
            switch m.type {
            case .requestPreVote:
                break
            case .requestPreVoteResponse where !m.reject:
                break
            case .append, .heartbeat, .snapshot:
                try becomeFollower(term: m.term, lead: m.from)
            default:
                try becomeFollower(term: m.term, lead: 0)
            }
        } else if m.term < term {
            if m.type == .heartbeat || m.type == .append {
                // Tell a stale leader about the newer term (as every Raft response does). Without
                // this a node that cannot campaign (it has not applied its own promotion yet) but
                // holds a higher term would ignore the leader forever.
                send(Message(type: .appendResponse, to: m.from))
            } else if m.type == .requestPreVote {
                send(Message(type: .requestPreVoteResponse, to: m.from, term: term, reject: true))
            }
            return
        }

        switch m.type {
        case .hup:
            try hup(transfer: false)
        case .requestVote, .requestPreVote:
            try handleVoteRequest(m)
        default:
            switch role {
            case .leader: try stepLeader(m)
            case .candidate, .preCandidate: try stepCandidate(m)
            case .follower: try stepFollower(m)
            }
        }
    }

    func handleVoteRequest(_ m: Message) throws {
        let pre = m.type == .requestPreVote
        let respType: MessageType = pre ? .requestPreVoteResponse : .requestVoteResponse
        let canVote = vote == m.from || (vote == 0 && lead == 0) || (pre && m.term > term)
        if canVote, try log.isUpToDate(lastIndex: m.index, term: m.logTerm) {
            send(Message(type: respType, to: m.from, term: m.term))
            if !pre {
                electionElapsed = 0
                vote = m.from
            }
        } else {
            send(Message(type: respType, to: m.from, term: term, reject: true))
        }
    }

    func hup(transfer: Bool) throws {
        if role == .leader || !promotable { return }
        if try hasUnappliedConfChanges() { return }
        try campaign(pre: cfg.preVote && !transfer, transfer: transfer)
    }

    func hasUnappliedConfChanges() throws -> Bool {
        if log.applied >= log.committed { return false }
        let lo = max(log.applied + 1, try log.firstIndex())
        if lo > log.committed { return false }
        for e in try log.slice(lo, log.committed + 1, maxBytes: UInt64.max) where e.type != .normal {
            return true
        }
        return false
    }

    func campaign(pre: Bool, transfer: Bool) throws {
        let voteTerm: UInt64
        let type: MessageType
        if pre {
            becomePreCandidate()
            voteTerm = term + 1
            type = .requestPreVote
        } else {
            try becomeCandidate()
            voteTerm = term
            type = .requestVote
        }
        if try poll(id, granted: true) == .won {
            if pre { try campaign(pre: false, transfer: transfer) } else { try becomeLeader() }
            return
        }
        let li = try log.lastIndex(), lt = try log.lastTerm()
        for peer in membership.allVoters.sorted() where peer != id {
            send(Message(type: type, to: peer, term: voteTerm, logTerm: lt, index: li,
                         context: transfer ? campaignTransferContext : []))
        }
    }

    func poll(_ from: UInt64, granted: Bool) throws -> VoteResult {
        if votes[from] == nil { votes[from] = granted }
        return membership.voteResult(votes)
    }

    func stepFollower(_ m: Message) throws {
        switch m.type {
        case .propose:
            if lead == 0 || cfg.disableProposalForwarding { throw RaftError.proposalDropped }
            var f = m
            f.to = lead
            send(f)
        case .append:
            electionElapsed = 0
            lead = m.from
            try handleAppend(m)
        case .heartbeat:
            electionElapsed = 0
            lead = m.from
            try handleHeartbeat(m)
        case .snapshot:
            electionElapsed = 0
            lead = m.from
            try handleSnapshot(m)
        case .transferLeader:
            if lead == 0 { throw RaftError.proposalDropped }
            var f = m
            f.to = lead
            send(f)
        case .timeoutNow:
            try hup(transfer: true)
        case .readIndex:
            if lead == 0 { throw RaftError.proposalDropped }
            var f = m
            f.to = lead
            send(f)
        case .readIndexResponse:
            readStates.append(ReadState(index: m.index, context: m.context))
        default:
            break
        }
    }

    func stepCandidate(_ m: Message) throws {
        let myResponse: MessageType = role == .preCandidate ? .requestPreVoteResponse : .requestVoteResponse
        switch m.type {
        case .propose, .readIndex, .transferLeader:
            throw RaftError.proposalDropped
        case .append:
            try becomeFollower(term: m.term, lead: m.from)
            try handleAppend(m)
        case .heartbeat:
            try becomeFollower(term: m.term, lead: m.from)
            try handleHeartbeat(m)
        case .snapshot:
            try becomeFollower(term: m.term, lead: m.from)
            try handleSnapshot(m)
        case myResponse:
            switch try poll(m.from, granted: !m.reject) {
            case .won:
                if role == .preCandidate {
                    try campaign(pre: false, transfer: false)
                } else {
                    try becomeLeader()
                    try broadcastAppend()
                }
            case .lost:
                try becomeFollower(term: term, lead: 0)
            case .pending:
                break
            }
        default:
            break
        }
    }

    // MARK: - Follower handlers

    func handleAppend(_ m: Message) throws {
        if m.index < log.committed {
            send(Message(type: .appendResponse, to: m.from, index: log.committed))
            return
        }
        if let lastNew = try log.maybeAppend(index: m.index, logTerm: m.logTerm, commit: m.commit,
                                             entries: m.entries) {
            send(Message(type: .appendResponse, to: m.from, index: lastNew))
            return
        }
        // Rejection: hint at the last index that may match, skipping whole terms that cannot.
        let probe = min(m.index, try log.lastIndex())
        let hint = log.findConflictByTerm(probe, m.logTerm)
        send(Message(type: .appendResponse, to: m.from, logTerm: hint.term, index: m.index,
                     reject: true, rejectHint: hint.index))
    }

    func handleHeartbeat(_ m: Message) throws {
        try log.commitTo(m.commit)
        send(Message(type: .heartbeatResponse, to: m.from, context: m.context))
    }

    func handleSnapshot(_ m: Message) throws {
        guard let s = m.snapshot else { return }
        if try restore(s) {
            send(Message(type: .appendResponse, to: m.from, index: try log.lastIndex()))
        } else {
            send(Message(type: .appendResponse, to: m.from, index: log.committed))
        }
    }

    func restore(_ s: Snapshot) throws -> Bool {
        let md = s.metadata
        if md.index <= log.committed { return false }
        if md.index >= UInt64.max / 2 { throw RaftError.logInvariant("snapshot index \(md.index) out of range") }
        if log.matchTerm(md.index, md.term) {
            try log.commitTo(md.index)
            return false
        }
        let mc = MembershipConfig(md.confState)
        try mc.validate()
        log.restore(s)
        membership = MembershipConfig()
        progress = [:]
        try switchMembership(mc)
        return true
    }

    // MARK: - Leader

    func appendEntries(_ ents0: [Entry]) throws {
        var ents = ents0
        let li = try log.lastIndex()
        var size: UInt64 = 0
        for i in ents.indices {
            ents[i].term = term
            ents[i].index = li + 1 + UInt64(i)
            // Membership changes are exempt from the limit (an auto-leave must never be lost).
            if ents[i].type == .normal { size += UInt64(ents[i].data.count) }
        }
        if cfg.maxUncommittedEntriesSize > 0 && size > 0 && uncommittedSize > 0
            && uncommittedSize + size > cfg.maxUncommittedEntriesSize {
            throw RaftError.proposalDropped
        }
        uncommittedSize += size
        try log.append(ents)
        // The leader's own match index moves when the entries are durable (`advance`), so a
        // quorum never counts a copy a crash could still lose.
    }

    /// Advances the commit index from the quorum's match indexes; true if it moved.
    func maybeCommit() throws -> Bool {
        let mci = membership.committed { self.progress[$0]?.match }
        guard try log.maybeCommit(mci, term: term) else { return false }
        if !pendingReadIndexMessages.isEmpty, try log.term(log.committed) == term {
            let waiting = pendingReadIndexMessages
            pendingReadIndexMessages = []
            for m in waiting { try handleReadIndex(m) }
        }
        return true
    }

    func broadcastAppend() throws {
        for k in progress.keys.sorted() where k != id { _ = try sendAppend(to: k) }
    }

    func broadcastHeartbeat(context: [UInt8]?) {
        for k in progress.keys.sorted() where k != id {
            guard let p = progress[k] else { continue }
            send(Message(type: .heartbeat, to: k, commit: min(p.match, log.committed), context: context ?? []))
        }
    }

    /// Sends entries (or a snapshot) to `to` if its progress allows; returns whether it sent.
    @discardableResult
    func sendAppend(to: UInt64, sendIfEmpty: Bool = true) throws -> Bool {
        guard var p = progress[to], !p.isPaused else { return false }
        let prev = p.next - 1
        let prevTerm: UInt64
        let ents: [Entry]
        do {
            prevTerm = try log.term(prev)
            ents = try log.entries(from: p.next, maxBytes: cfg.maxSizePerMsg)
        } catch RaftStorageError.compacted {
            return try sendSnapshot(to: to, &p)
        }
        if ents.isEmpty && !sendIfEmpty { return false }
        var bytes: UInt64 = 0
        for e in ents { bytes += UInt64(e.data.count) }
        if let last = ents.last { p.sentEntries(last: last.index, bytes: bytes) }
        progress[to] = p
        send(Message(type: .append, to: to, logTerm: prevTerm, index: prev, entries: ents, commit: log.committed))
        return true
    }

    func sendSnapshot(to: UInt64, _ p: inout Progress) throws -> Bool {
        guard p.recentActive else { return false }
        let s: Snapshot
        do {
            s = try log.snapshot()
        } catch RaftStorageError.snapshotTemporarilyUnavailable {
            return false
        }
        if s.isEmpty { throw RaftError.logInvariant("need a snapshot but storage has none") }
        p.becomeSnapshot(s.metadata.index)
        progress[to] = p
        send(Message(type: .snapshot, to: to, snapshot: s))
        return true
    }

    func stepLeader(_ m: Message) throws {
        switch m.type {
        case .beat:
            broadcastHeartbeat(context: readOnly.lastContext)
            return
        case .checkQuorum:
            if !quorumActive() { try becomeFollower(term: term, lead: 0) }
            for k in Array(progress.keys) where k != id { progress[k]?.recentActive = false }
            return
        case .propose:
            try leaderPropose(m)
            return
        case .readIndex:
            if try log.term(log.committed) != term {
                pendingReadIndexMessages.append(m)
                return
            }
            try handleReadIndex(m)
            return
        default:
            break
        }
        guard var p = progress[m.from] else { return }
        switch m.type {
        case .appendResponse:
            p.recentActive = true
            let last = try log.lastIndex()
            if m.reject {
                var hint = min(m.rejectHint, last)
                if m.logTerm > 0 { hint = log.findConflictByTerm(hint, m.logTerm).index }
                if p.maybeDecrease(rejected: m.index, hint: hint) {
                    if p.state == .replicate { p.becomeProbe() }
                    progress[m.from] = p
                    try sendAppend(to: m.from)
                } else {
                    progress[m.from] = p
                }
                return
            }
            if m.index > last {
                // validate() refuses such acknowledgements: reaching here is a bug.
                throw RaftError.logInvariant("peer \(m.from) acknowledges \(m.index) beyond last index \(last)")
            }
            let wasPaused = p.isPaused
            if p.maybeUpdate(m.index) {
                switch p.state {
                case .probe: p.becomeReplicate()
                case .snapshot: if p.match >= p.pendingSnapshot { p.becomeProbe() }
                case .replicate: p.inflights.freeLE(m.index)
                }
                progress[m.from] = p
                if try maybeCommit() {
                    try broadcastAppend()
                } else if wasPaused {
                    try sendAppend(to: m.from)
                }
                while try sendAppend(to: m.from, sendIfEmpty: false) {}
                if m.from == leadTransferee, let q = progress[m.from], q.match == (try log.lastIndex()) {
                    send(Message(type: .timeoutNow, to: m.from))
                }
            } else {
                progress[m.from] = p
            }
        case .heartbeatResponse:
            p.recentActive = true
            p.probeSent = false
            if p.state == .replicate && p.inflights.full { p.inflights.freeFirst() }
            if p.state == .snapshot {
                // The follower is alive but its snapshot never arrived (lost without a report):
                // after 2 x electionTick heartbeat answers, give up and probe (resending it).
                p.snapshotWaitAcks += 1
                if p.snapshotWaitAcks >= 2 * cfg.electionTick {
                    p.pendingSnapshot = 0
                    p.becomeProbe()
                }
            }
            progress[m.from] = p
            if p.match < (try log.lastIndex()) { try sendAppend(to: m.from) }
            if !m.context.isEmpty && !readOnly.pending.isEmpty {
                readOnly.ack(from: m.from, context: m.context)
                releaseReads()
            }
        case .snapStatus:
            guard p.state == .snapshot else { return }
            if m.reject { p.pendingSnapshot = 0 }
            p.becomeProbe()
            // Wait for the next heartbeat answer before probing again.
            p.probeSent = true
            progress[m.from] = p
        case .unreachable:
            if p.state == .replicate { p.becomeProbe() }
            progress[m.from] = p
        case .transferLeader:
            if p.isLearner { return }
            let target = m.from
            if leadTransferee != 0 {
                if leadTransferee == target { return }
                leadTransferee = 0
            }
            if target == id { return }
            leadTransferee = target
            electionElapsed = 0
            if p.match == (try log.lastIndex()) {
                send(Message(type: .timeoutNow, to: target))
            } else {
                try sendAppend(to: target)
            }
        default:
            break
        }
    }

    func quorumActive() -> Bool {
        var active: [UInt64: Bool] = [:]
        for (k, p) in progress where !p.isLearner { active[k] = k == id || p.recentActive }
        return membership.voteResult(active) == .won
    }

    func leaderPropose(_ m: Message) throws {
        if m.entries.isEmpty { throw RaftError.proposalDropped }
        // A leader outside its configuration still accepts proposals: the voters commit them.
        if leadTransferee != 0 { throw RaftError.proposalDropped }
        var ents = m.entries
        let li = try log.lastIndex()
        var newPending: UInt64?
        for i in ents.indices where ents[i].type != .normal {
            let cc: ConfChangeV2
            do {
                cc = ents[i].type == .confChange
                    ? try ConfChange(decoding: ents[i].data).asV2 : try ConfChangeV2(decoding: ents[i].data)
            } catch {
                throw RaftError.invalidConfChange("undecodable conf change")
            }
            let pending = pendingConfIndex > log.applied || newPending != nil
            var refusal: RaftError? = pending || membership.isJoint != cc.leavesJoint ? .proposalDropped : nil
            if refusal == nil {
                // Only one change is ever pending, so it applies to the current configuration;
                // one that cannot be applied must never reach the log (every node would fail).
                do { _ = try membership.applying(cc) } catch let e as RaftError { refusal = e }
            }
            if let refusal {
                if m.from == id { throw refusal }
                // A forwarded change that cannot be accepted becomes a no-op entry.
                ents[i] = Entry(term: 0, index: 0)
                continue
            }
            newPending = li + UInt64(i) + 1
        }
        try appendEntries(ents)
        // Only once the entry is in the log: a dropped proposal must not block later changes.
        if let newPending { pendingConfIndex = newPending }
        try broadcastAppend()
    }

    func handleReadIndex(_ m: Message) throws {
        if membership.voters == [id] && !membership.isJoint {
            respondToRead(m, index: log.committed)
            return
        }
        let ctx = readOnly.add(index: log.committed, m)
        releaseReads()
        if !readOnly.pending.isEmpty { broadcastHeartbeat(context: ctx) }
    }

    /// Answers the pending reads a quorum has confirmed.
    func releaseReads() {
        let done = readOnly.release(leader: id) { membership.voteResult($0) == .won }
        for r in done { respondToRead(r.message, index: r.index) }
    }

    func respondToRead(_ m: Message, index: UInt64) {
        if m.from == 0 || m.from == id {
            readStates.append(ReadState(index: index, context: m.context))
        } else {
            send(Message(type: .readIndexResponse, to: m.from, index: index, context: m.context))
        }
    }

    func maybeAutoLeaveJoint() throws {
        guard role == .leader, membership.isJoint, membership.autoLeave,
              pendingConfIndex <= log.applied, leadTransferee == 0 else { return }
        try? proposeConfChange(ConfChangeV2())
    }

    // MARK: - Membership

    func switchMembership(_ next: MembershipConfig) throws {
        membership = next
        let last = try log.lastIndex()
        for k in Array(progress.keys) where !next.allMembers.contains(k) { progress[k] = nil }
        for k in next.allMembers {
            if progress[k] == nil {
                var p = newProgress(k, next: last + 1)
                p.recentActive = true
                if k == id { p.match = try log.persistedIndex() }
                progress[k] = p
            } else {
                progress[k]?.isLearner = !next.allVoters.contains(k)
            }
        }
        guard role == .leader else { return }
        // A leader removed or demoted by this configuration keeps leading (etcd's default): it
        // no longer counts toward commit or quorum, but its appends and heartbeats are what tell
        // the remaining voters that the change committed. Stepping down here could strand a
        // joint configuration whose leave entry only this node knew to be committed. It steps
        // down the usual ways: a higher term, CheckQuorum, or a leadership transfer.
        if leadTransferee != 0 && !next.allVoters.contains(leadTransferee) { leadTransferee = 0 }
        if try maybeCommit() { try broadcastAppend() } else { try broadcastAppend() }
    }
}
