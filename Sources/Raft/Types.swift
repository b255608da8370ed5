/// Value types exchanged between the Raft core, its storage and its transport.
///
/// Node IDs are `UInt64`; `0` means "no node" (no leader, no vote).

/// The kind of a log entry.
public enum EntryType: UInt8, Sendable, Equatable, CaseIterable {
    /// Application data (may be empty: a new leader appends an empty entry).
    case normal = 0
    /// An encoded ``ConfChange``.
    case confChange = 1
    /// An encoded ``ConfChangeV2``.
    case confChangeV2 = 2
}

/// One entry of the replicated log.
public struct Entry: Sendable, Equatable {
    /// Term of the leader that created the entry.
    public var term: UInt64
    /// Position in the log (first real entry is 1).
    public var index: UInt64
    /// How `data` is to be interpreted.
    public var type: EntryType
    /// Payload.
    public var data: [UInt8]

    /// Creates an entry.
    public init(term: UInt64, index: UInt64, type: EntryType = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.type = type
        self.data = data
    }

    /// Size counted against byte limits (payload plus a fixed overhead).
    var size: UInt64 { UInt64(data.count) + 16 }
}

/// The state that must be persisted before messages of the same `Ready` are sent.
public struct HardState: Sendable, Equatable {
    /// Current term.
    public var term: UInt64
    /// Candidate voted for in `term` (0 = none).
    public var vote: UInt64
    /// Highest log index known to be committed.
    public var commit: UInt64

    /// Creates a hard state.
    public init(term: UInt64 = 0, vote: UInt64 = 0, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }

    /// True for the all-zero state of a fresh node.
    public var isEmpty: Bool { term == 0 && vote == 0 && commit == 0 }
}

/// A cluster configuration, as stored in snapshots.
///
/// Outside joint consensus `votersOutgoing` and `learnersNext` are empty. In a joint
/// configuration decisions need a majority of `voters` AND of `votersOutgoing`;
/// `learnersNext` are outgoing voters that become learners when the joint state is left.
public struct ConfState: Sendable, Equatable {
    /// Voters of the (incoming) configuration, sorted.
    public var voters: [UInt64]
    /// Learners, sorted.
    public var learners: [UInt64]
    /// Voters of the outgoing configuration (joint consensus only), sorted.
    public var votersOutgoing: [UInt64]
    /// Nodes to add as learners when leaving the joint configuration, sorted.
    public var learnersNext: [UInt64]
    /// Whether the joint configuration is left automatically.
    public var autoLeave: Bool

    /// Creates a configuration; the lists are stored sorted.
    public init(voters: [UInt64] = [], learners: [UInt64] = [], votersOutgoing: [UInt64] = [],
                learnersNext: [UInt64] = [], autoLeave: Bool = false) {
        self.voters = voters.sorted()
        self.learners = learners.sorted()
        self.votersOutgoing = votersOutgoing.sorted()
        self.learnersNext = learnersNext.sorted()
        self.autoLeave = autoLeave
    }

    /// True while in a joint configuration.
    public var isJoint: Bool { !votersOutgoing.isEmpty }
}

/// Where a snapshot sits in the log and which configuration it carries.
public struct SnapshotMetadata: Sendable, Equatable {
    /// Index of the last entry the snapshot covers.
    public var index: UInt64
    /// Term of that entry.
    public var term: UInt64
    /// Configuration in effect at `index`.
    public var confState: ConfState

    /// Creates snapshot metadata.
    public init(index: UInt64 = 0, term: UInt64 = 0, confState: ConfState = ConfState()) {
        self.index = index
        self.term = term
        self.confState = confState
    }
}

/// A state-machine snapshot: application bytes plus where they sit in the log.
public struct Snapshot: Sendable, Equatable {
    /// Position and configuration.
    public var metadata: SnapshotMetadata
    /// Opaque application state.
    public var data: [UInt8]

    /// Creates a snapshot.
    public init(metadata: SnapshotMetadata = SnapshotMetadata(), data: [UInt8] = []) {
        self.metadata = metadata
        self.data = data
    }

    /// True for the "no snapshot" value (index 0).
    public var isEmpty: Bool { metadata.index == 0 }
}

/// Message kinds. Local kinds are never sent over the network.
public enum MessageType: UInt8, Sendable, Equatable, CaseIterable {
    /// Local: start an election (the node's own timeout or `campaign()`).
    case hup = 0
    /// Local: leader broadcasts heartbeats.
    case beat = 1
    /// A client proposal; followers forward it to the leader.
    case propose = 2
    /// Leader → follower: log entries (possibly none) after (`index`, `logTerm`).
    case append = 3
    /// Follower → leader: accepts up to `index` or rejects with a hint.
    case appendResponse = 4
    /// Candidate → voter: vote request.
    case requestVote = 5
    /// Voter → candidate: vote answer.
    case requestVoteResponse = 6
    /// Leader → follower: a snapshot to install.
    case snapshot = 7
    /// Leader → follower: liveness and commit index.
    case heartbeat = 8
    /// Follower → leader: heartbeat acknowledgement (echoes `context`).
    case heartbeatResponse = 9
    /// Local: the transport could not reach `from`.
    case unreachable = 10
    /// Local: outcome of sending a snapshot to `from` (`reject` = failure).
    case snapStatus = 11
    /// Local: leader checks it still hears from a quorum.
    case checkQuorum = 12
    /// Request to hand leadership to `from` (sent to the leader).
    case transferLeader = 13
    /// Leader → transfer target: campaign now.
    case timeoutNow = 14
    /// A linearizable read request; followers forward it to the leader.
    case readIndex = 15
    /// Leader → follower: the read index for a forwarded request.
    case readIndexResponse = 16
    /// Pre-candidate → voter: would you vote for me in `term`?
    case requestPreVote = 17
    /// Voter → pre-candidate: pre-vote answer.
    case requestPreVoteResponse = 18

    /// Kinds that only ever come from the local node.
    public var isLocal: Bool {
        switch self {
        case .hup, .beat, .unreachable, .snapStatus, .checkQuorum: return true
        default: return false
        }
    }

    /// Kinds only a leader sends, which state nothing about its durable log or vote: they may
    /// leave before the leader's own write is durable (see ``Ready/messagesBeforePersist``).
    var mayPrecedePersistence: Bool {
        switch self {
        case .append, .heartbeat, .snapshot, .timeoutNow, .readIndexResponse: return true
        default: return false
        }
    }

    /// Responses (these never need a leader to be known).
    var isResponse: Bool {
        switch self {
        case .appendResponse, .requestVoteResponse, .heartbeatResponse, .readIndexResponse,
             .requestPreVoteResponse: return true
        default: return false
        }
    }
}

/// A Raft message. Fields not used by a message kind are zero / empty.
public struct Message: Sendable, Equatable {
    /// Kind of message.
    public var type: MessageType
    /// Recipient.
    public var to: UInt64
    /// Sender.
    public var from: UInt64
    /// Sender's term (0 for local messages and proposals).
    public var term: UInt64
    /// Term of the entry at `index` (appends, votes) or of the reject hint (append rejections).
    public var logTerm: UInt64
    /// Log index: previous index for appends, last index for votes, match or rejected
    /// index for append responses, read index for read responses.
    public var index: UInt64
    /// Entries carried by appends and proposals.
    public var entries: [Entry]
    /// Leader's commit index.
    public var commit: UInt64
    /// Snapshot carried by `snapshot` messages.
    public var snapshot: Snapshot?
    /// Negative answer.
    public var reject: Bool
    /// On append rejection: the follower's guess of the last index that may match.
    public var rejectHint: UInt64
    /// Opaque context: read request IDs, the campaign-transfer marker.
    public var context: [UInt8]

    /// Creates a message.
    public init(type: MessageType, to: UInt64 = 0, from: UInt64 = 0, term: UInt64 = 0,
                logTerm: UInt64 = 0, index: UInt64 = 0, entries: [Entry] = [], commit: UInt64 = 0,
                snapshot: Snapshot? = nil, reject: Bool = false, rejectHint: UInt64 = 0,
                context: [UInt8] = []) {
        self.type = type
        self.to = to
        self.from = from
        self.term = term
        self.logTerm = logTerm
        self.index = index
        self.entries = entries
        self.commit = commit
        self.snapshot = snapshot
        self.reject = reject
        self.rejectHint = rejectHint
        self.context = context
    }
}

/// Single-step membership change kinds.
public enum ConfChangeType: UInt8, Sendable, Equatable, CaseIterable {
    /// Add a voter (or promote a learner).
    case addNode = 0
    /// Remove a voter or learner.
    case removeNode = 1
    /// Add a learner (or demote a voter, via joint consensus).
    case addLearnerNode = 2
}

/// One membership change of one node.
public struct ConfChangeSingle: Sendable, Equatable {
    /// What to do.
    public var type: ConfChangeType
    /// Node concerned.
    public var nodeID: UInt64

    /// Creates a change.
    public init(type: ConfChangeType, nodeID: UInt64) {
        self.type = type
        self.nodeID = nodeID
    }
}

/// A single membership change (the classic one-node-at-a-time protocol).
public struct ConfChange: Sendable, Equatable {
    /// Caller-chosen identifier, carried through unchanged.
    public var id: UInt64
    /// What to do.
    public var type: ConfChangeType
    /// Node concerned.
    public var nodeID: UInt64
    /// Opaque application context (e.g. the member's URLs).
    public var context: [UInt8]

    /// Creates a change.
    public init(id: UInt64 = 0, type: ConfChangeType, nodeID: UInt64, context: [UInt8] = []) {
        self.id = id
        self.type = type
        self.nodeID = nodeID
        self.context = context
    }

    /// The equivalent ``ConfChangeV2``.
    public var asV2: ConfChangeV2 {
        ConfChangeV2(transition: .auto, changes: [ConfChangeSingle(type: type, nodeID: nodeID)],
                     context: context)
    }
}

/// How a ``ConfChangeV2`` moves between configurations.
public enum ConfChangeTransition: UInt8, Sendable, Equatable, CaseIterable {
    /// A single voter change is applied directly; anything larger uses joint consensus and
    /// leaves it automatically.
    case auto = 0
    /// Always use joint consensus; leave it automatically.
    case jointImplicit = 1
    /// Always use joint consensus; the application leaves it with an empty ``ConfChangeV2``.
    case jointExplicit = 2
}

/// A membership change of any number of nodes. An empty change leaves a joint configuration.
public struct ConfChangeV2: Sendable, Equatable {
    /// Transition strategy.
    public var transition: ConfChangeTransition
    /// The changes, applied in order.
    public var changes: [ConfChangeSingle]
    /// Opaque application context.
    public var context: [UInt8]

    /// Creates a change.
    public init(transition: ConfChangeTransition = .auto, changes: [ConfChangeSingle] = [],
                context: [UInt8] = []) {
        self.transition = transition
        self.changes = changes
        self.context = context
    }

    /// True for the zero value (`.auto`, no changes), which leaves a joint configuration.
    /// An empty change with a joint transition enters a joint configuration instead.
    public var leavesJoint: Bool { transition == .auto && changes.isEmpty }

    /// Whether applying this change enters a joint configuration, and if so with auto-leave.
    var entersJoint: (enters: Bool, autoLeave: Bool) {
        if transition != .auto || changes.count > 1 {
            return (true, transition != .jointExplicit)
        }
        return (false, false)
    }
}

/// A read-index answer: once `index` is applied locally, a read made with `context` is
/// linearizable.
public struct ReadState: Sendable, Equatable {
    /// Commit index to wait for.
    public var index: UInt64
    /// The context passed to `readIndex(context:)`.
    public var context: [UInt8]

    /// Creates a read state.
    public init(index: UInt64, context: [UInt8]) {
        self.index = index
        self.context = context
    }
}
