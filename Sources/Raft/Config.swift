/// How the leader answers ``RaftNode/readIndex(context:)``.
public enum ReadOnlyOption: Sendable, Equatable {
    /// Confirm leadership with a heartbeat round per read (linearizable). The only mode:
    /// lease-based reads were removed (they could be served after a leadership transfer or
    /// after the followers' lease had expired).
    case safe
}

/// Why a ``RaftConfig`` was refused.
public enum RaftConfigError: Error, Equatable, Sendable {
    /// `id` is 0.
    case zeroID
    /// `heartbeatTick` is 0.
    case zeroHeartbeatTick
    /// `electionTick` is not greater than `heartbeatTick`.
    case electionTickTooSmall
    /// `maxInflightMsgs` is 0.
    case zeroMaxInflightMsgs
    /// `maxInflightBytes` is smaller than `maxSizePerMsg`.
    case maxInflightBytesTooSmall
}

/// Parameters of a ``RaftNode``.
public struct RaftConfig: Sendable, Equatable {
    /// This node's ID (non-zero).
    public var id: UInt64
    /// Ticks without hearing from a leader before a follower campaigns. The actual timeout is
    /// drawn from `[electionTick, 2 * electionTick)` with the seeded generator.
    public var electionTick: Int = 10
    /// Ticks between leader heartbeats.
    public var heartbeatTick: Int = 1
    /// Maximum bytes of entries in one append message (at least one entry is always sent).
    public var maxSizePerMsg: UInt64 = 1 << 20
    /// Maximum append messages in flight to one follower in the replicate state.
    public var maxInflightMsgs: Int = 256
    /// Maximum entry bytes in flight to one follower (0 = no byte limit).
    public var maxInflightBytes: UInt64 = 0
    /// Leader steps down when it has not heard from a quorum within an election timeout;
    /// followers ignore vote requests while they have a live leader.
    public var checkQuorum: Bool = true
    /// Run a pre-election so a partitioned node cannot disrupt the cluster with higher terms.
    public var preVote: Bool = true
    /// Read-index mode.
    public var readOnlyOption: ReadOnlyOption = .safe
    /// Followers drop proposals instead of forwarding them to the leader.
    public var disableProposalForwarding: Bool = false
    /// Last applied index when restarting (entries up to it are not handed out again).
    public var applied: UInt64 = 0
    /// Leader refuses proposals once this many uncommitted entry bytes are in its log
    /// (0 = no limit).
    public var maxUncommittedEntriesSize: UInt64 = 0
    /// Maximum bytes of committed entries in one ``Ready`` (at least one entry).
    public var maxCommittedSizePerReady: UInt64 = UInt64.max
    /// Seed of the generator that randomizes election timeouts; the core is deterministic.
    public var seed: UInt64 = 0

    /// Creates a configuration with defaults for everything but the ID.
    public init(id: UInt64) { self.id = id }

    /// Throws the first problem found.
    public func validate() throws {
        if id == 0 { throw RaftConfigError.zeroID }
        if heartbeatTick <= 0 { throw RaftConfigError.zeroHeartbeatTick }
        if electionTick <= heartbeatTick { throw RaftConfigError.electionTickTooSmall }
        if maxInflightMsgs <= 0 { throw RaftConfigError.zeroMaxInflightMsgs }
        if maxInflightBytes != 0 && maxInflightBytes < maxSizePerMsg {
            throw RaftConfigError.maxInflightBytesTooSmall
        }
    }
}

/// SplitMix64: a tiny deterministic generator. The core draws its randomized election
/// timeouts from it; seeded tests across the package use it too, so a printed seed replays.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
