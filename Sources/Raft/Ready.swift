/// The role a node currently plays.
public enum RaftRole: Sendable, Equatable {
    /// Follows a leader (or waits for one).
    case follower
    /// Runs a pre-election (PreVote) without raising its term.
    case preCandidate
    /// Runs an election.
    case candidate
    /// Leads the cluster for the current term.
    case leader
}

/// Volatile state that is useful to the application but need not be persisted.
public struct SoftState: Sendable, Equatable {
    /// Known leader (0 = none).
    public var lead: UInt64
    /// This node's role.
    public var role: RaftRole
}

/// Errors thrown by ``RaftNode``.
public enum RaftError: Error, Equatable, Sendable {
    /// The proposal was not accepted: no leader, a leadership transfer is in progress,
    /// forwarding is disabled, a membership change is pending, or a size limit was hit.
    case proposalDropped
    /// ``RaftNode/step(_:)`` refused a message before acting on it: peer input that is
    /// malformed, out of range or contradicts this node's log. Nothing changed; the reason is
    /// a fixed label (for a counter), the text says what was wrong.
    case rejectedMessage(MessageRejection, String)
    /// The membership change cannot be applied to the current configuration.
    case invalidConfChange(String)
    /// An internal invariant does not hold (a bug, or stored state that contradicts itself).
    /// Peer input never causes it (such input is a ``rejectedMessage(_:_:)``): a driver should
    /// stop the node.
    case logInvariant(String)
}

/// Why ``RaftNode/step(_:)`` refused a message (a bounded set, usable as a metric label).
public enum MessageRejection: String, Sendable, CaseIterable {
    /// A local-only kind (hup, beat, ...) arrived from outside.
    case localType = "local_type"
    /// A term or index at or beyond 2^62.
    case outOfRange = "out_of_range"
    /// Addressed to another node.
    case misaddressed
    /// Term 0 on a message that needs one, or a term on a forwarded request.
    case badTerm = "bad_term"
    /// A response from a node not in the configuration (e.g. one just removed).
    case unknownPeer = "unknown_peer"
    /// Entries that are not consecutive, go back in term, or ride on a kind that carries none.
    case malformedEntries = "malformed_entries"
    /// An acknowledgement or commit index beyond this node's log.
    case beyondLog = "beyond_log"
    /// A snapshot message without a snapshot, with an invalid configuration or a newer term.
    case badSnapshot = "bad_snapshot"
    /// A forwarded membership change that does not decode.
    case badConfChange = "bad_conf_change"
}

/// A batch of work for the application, obtained with ``RaftNode/ready()``.
///
/// Handle it in this order: send ``messagesBeforePersist``, persist `hardState`, `entries` and
/// `snapshot` (durably when `mustSync`), send ``messagesAfterPersist``, apply `snapshot` and
/// `committedEntries` to the state machine, then call ``RaftNode/advance(_:)`` with this value
/// before asking for the next one. (Sending all of `messages` after persisting is also correct,
/// only slower.) `advance` is the node's acknowledgement that the entries are durable: a
/// leader counts its own log toward commit only up to what was advanced.
public struct Ready: Sendable {
    /// New soft state, if it changed.
    public var softState: SoftState?
    /// New hard state to persist, if it changed.
    public var hardState: HardState?
    /// Entries to append to stable storage (may replace a conflicting suffix).
    public var entries: [Entry] = []
    /// Snapshot to persist and apply.
    public var snapshot: Snapshot?
    /// Entries to apply to the state machine, in order.
    public var committedEntries: [Entry] = []
    /// Every message of this Ready: ``messagesBeforePersist`` followed by
    /// ``messagesAfterPersist`` (use those two to pipeline a leader's appends with its write).
    public var messages: [Message] = []
    /// Whether this node's leader messages may go out before the Ready is persisted: it leads
    /// at a term already durable (the Ready changes neither term nor vote) and installs no
    /// snapshot. Set by ``RaftNode/ready()``.
    public var leaderMaySendEarly: Bool = false
    /// Answers to ReadIndex requests.
    public var readStates: [ReadState] = []
    /// Whether the hard state or entries must be synced to disk before sending.
    public var mustSync: Bool = false

    /// Messages that may be sent while this Ready is being persisted (Raft thesis 10.2.1): a
    /// leader's appends, heartbeats, snapshots, transfer and read answers. None of them claims
    /// anything about this node's durable state; the leader's own log counts toward commit
    /// only once ``RaftNode/advance(_:)`` reports it durable.
    public var messagesBeforePersist: [Message] {
        leaderMaySendEarly ? messages.filter(\.type.mayPrecedePersistence) : []
    }

    /// Messages that must wait until this Ready is durable: votes, append and heartbeat
    /// answers, forwarded requests, and everything a node sends while its term or vote is not
    /// yet durable.
    public var messagesAfterPersist: [Message] {
        leaderMaySendEarly ? messages.filter { !$0.type.mayPrecedePersistence } : messages
    }

    /// An empty Ready (to persist state built outside a node, e.g. a new cluster's first entries).
    public init() {}

    /// True if there is nothing to do.
    public var isEmpty: Bool {
        softState == nil && hardState == nil && entries.isEmpty && snapshot == nil
            && committedEntries.isEmpty && messages.isEmpty && readStates.isEmpty
    }
}

/// The leader's view of one peer, for ``RaftStatus``.
public struct ProgressStatus: Sendable, Equatable {
    /// Highest index known replicated on the peer.
    public var match: UInt64
    /// Next index to send.
    public var next: UInt64
    /// Replication mode.
    public var state: ProgressState
    /// Whether the peer is a learner.
    public var isLearner: Bool
    /// Heard from since the last CheckQuorum round.
    public var recentActive: Bool
    /// Appends in flight.
    public var inflight: Int
}

/// A snapshot of a node's state for monitoring and tests.
public struct RaftStatus: Sendable, Equatable {
    /// Node ID.
    public var id: UInt64
    /// Term, vote, commit.
    public var hardState: HardState
    /// Leader and role.
    public var softState: SoftState
    /// Highest applied index.
    public var applied: UInt64
    /// Last log index.
    public var lastIndex: UInt64
    /// Current configuration.
    public var confState: ConfState
    /// Per-peer replication state (leaders only; includes the leader itself).
    public var progress: [UInt64: ProgressStatus]
    /// Target of an ongoing leadership transfer (0 = none).
    public var leadTransferee: UInt64
}
