import Synchronization

/// Generates lease IDs on the member that proposes a `LeaseGrant` whose requested ID is 0, so
/// the ID travels in the log entry and every member grants the same lease.
///
/// IDs have etcd's layout: the low 16 bits of the member ID in the top bits (so members never
/// collide), then a 48-bit sequence that starts from the creation time in milliseconds (so a
/// restarted member does not reuse its earlier IDs) and counts up by one per ID. The sign bit is
/// cleared, and 0 is never returned. Given the same member ID and start, the sequence is the
/// same.
public final class LeaseIDGenerator: Sendable {
    private let prefix: UInt64
    private let sequence: Mutex<UInt64>

    private static let sequenceBits: UInt64 = 48
    private static let sequenceMask: UInt64 = (1 << sequenceBits) - 1

    /// Creates a generator for `memberID` whose sequence starts at `startMilliseconds` (Unix
    /// time in ms; the low 40 bits are used, shifted left by 8 to leave room for 256 IDs per
    /// millisecond).
    public init(memberID: UInt64, startMilliseconds: UInt64) {
        prefix = (memberID & 0xFFFF) << Self.sequenceBits
        sequence = Mutex((startMilliseconds & ((1 << 40) - 1)) << 8)
    }

    /// The next ID: positive and non-zero.
    public func next() -> Int64 {
        while true {
            let counter = sequence.withLock { value -> UInt64 in
                value = (value &+ 1) & Self.sequenceMask
                return value
            }
            let id = Int64(bitPattern: (prefix | counter) & UInt64(Int64.max))
            if id != 0 { return id }
        }
    }

    /// `requested` when it is non-zero, else ``next()``: etcd's rule for `LeaseGrantRequest.ID`.
    public func resolve(_ requested: Int64) -> Int64 {
        requested != 0 ? requested : next()
    }
}
