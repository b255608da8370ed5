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
    /// A local-only message kind was passed to ``RaftNode/step(_:)``.
    case stepLocalMessage
    /// A response came from a node that is not in the configuration.
    case stepPeerNotFound
    /// The membership change cannot be applied to the current configuration.
    case invalidConfChange(String)
    /// A message or storage state contradicts the log (a bug or corrupt input).
    case logInvariant(String)
}

/// A batch of work for the application, obtained with ``RaftNode/ready()``.
///
/// Handle it in this order: persist `hardState`, `entries` and `snapshot` (durably when
/// `mustSync`), then send `messages`, then apply `snapshot` and `committedEntries` to the state
/// machine, then call ``RaftNode/advance(_:)`` with this value before asking for the next one.
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
    /// Messages to send once the above is persisted.
    public var messages: [Message] = []
    /// Answers to ReadIndex requests.
    public var readStates: [ReadState] = []
    /// Whether the hard state or entries must be synced to disk before sending.
    public var mustSync: Bool = false

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
