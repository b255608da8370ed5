// Value types shared by the lessor and the code that wires it to the server.

/// An error from the lease store. `description` is etcd's error text, so the server can send it
/// to clients unchanged.
public enum LeaseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No lease with this ID exists (gRPC `NotFound`). ID 0 ("no lease") is never found.
    case leaseNotFound(Int64)
    /// A lease with this ID already exists (gRPC `FailedPrecondition`).
    case leaseExists(Int64)
    /// The requested TTL exceeds ``Lessor/maxTTL`` (gRPC `OutOfRange`).
    case ttlTooLarge(Int64)
    /// This lessor is not the primary (the Raft leader); the server forwards the request to the
    /// leader.
    case notPrimary
    /// The lease is past its expiry and waits for its revocation to be applied. The server
    /// should wait for that revocation and then answer ``leaseNotFound(_:)``, or retry on the
    /// new leader if leadership changes first.
    case leaseExpired(Int64)
    /// A lease with attached keys was revoked before a ``LeaseKeyDeleter`` was installed.
    case noKeyDeleter
    /// A persisted lease record could not be decoded.
    case corruptRecord(String)

    /// etcd's text for this error.
    public var description: String {
        switch self {
        case .leaseNotFound, .leaseExpired: return "etcdserver: requested lease not found"
        case .leaseExists: return "etcdserver: lease already exists"
        case .ttlTooLarge: return "etcdserver: too large lease TTL"
        case .notPrimary: return "not a primary lessor"
        case .noKeyDeleter: return "lease: no key deleter installed"
        case .corruptRecord(let why): return "lease: corrupt lease record: \(why)"
        }
    }
}

/// A checkpoint of one lease's remaining TTL, as carried by etcd's `LeaseCheckpoint` message.
/// The primary emits them (``Lessor/dueCheckpoints(limit:)``), the server replicates them through
/// Raft and every member applies them (``Lessor/applyCheckpoints(_:)``).
public struct LeaseCheckpoint: Equatable, Hashable, Sendable {
    /// The lease ID.
    public var id: Int64
    /// Remaining TTL in seconds; 0 clears a previous checkpoint (the full TTL applies again).
    public var remainingTTL: Int64

    /// Creates a checkpoint record.
    public init(id: Int64, remainingTTL: Int64) {
        self.id = id
        self.remainingTTL = remainingTTL
    }
}

/// The answer to a keep-alive (``Lessor/renew(id:)``).
public struct LeaseRenewal: Equatable, Sendable {
    /// The lease's granted TTL in seconds, as etcd's `LeaseKeepAliveResponse.TTL`.
    public var ttl: Int64
    /// When set, the lease had a checkpointed remaining TTL; the server must propose this
    /// checkpoint (remaining TTL 0) through Raft so a later leader change does not shorten the
    /// renewed lease to the stale checkpoint.
    public var clearCheckpoint: LeaseCheckpoint?

    /// Creates a renewal answer.
    public init(ttl: Int64, clearCheckpoint: LeaseCheckpoint? = nil) {
        self.ttl = ttl
        self.clearCheckpoint = clearCheckpoint
    }
}

/// The answer to a time-to-live query (``Lessor/timeToLive(id:includeKeys:)``).
public struct LeaseTimeToLive: Equatable, Sendable {
    /// The lease ID.
    public var id: Int64
    /// The TTL the lease was granted with (after raising to the minimum TTL), in seconds.
    public var grantedTTL: Int64
    /// Whole seconds left before expiry (truncated, never negative). On a non-primary lessor,
    /// which does not run the expiry clock, this is the last checkpointed remaining TTL or the
    /// granted TTL.
    public var remainingTTL: Int64
    /// The attached keys in ascending byte order; empty unless requested.
    public var keys: [[UInt8]]

    /// Creates a time-to-live answer.
    public init(id: Int64, grantedTTL: Int64, remainingTTL: Int64, keys: [[UInt8]]) {
        self.id = id
        self.grantedTTL = grantedTTL
        self.remainingTTL = remainingTTL
        self.keys = keys
    }
}

/// Settings of the lessor.
public struct LessorConfig: Equatable, Sendable {
    /// Shortest TTL granted in seconds; shorter requests are raised to it. etcd derives it from
    /// the election timeout (see ``minimumTTL(electionTicks:heartbeat:)``); 2 s by default.
    public var minTTL: Int64
    /// How often the primary checkpoints the remaining TTL of a lease whose remaining TTL is
    /// longer than this interval (etcd: 5 minutes).
    public var checkpointInterval: Duration
    /// Whether remaining-TTL checkpoints are emitted at all (and cleared on renewal).
    public var checkpointsEnabled: Bool
    /// After a lease is reported expired, how long before it is reported again if its
    /// revocation has not been applied by then (etcd: 3 s).
    public var expiredRetryInterval: Duration
    /// Leases the server revokes per second at most. After a promotion, expiries are spread so
    /// that no one-second window holds more than three quarters of this rate.
    public var revokeRate: Int

    /// Creates a configuration; the defaults are etcd's.
    public init(
        minTTL: Int64 = 2,
        checkpointInterval: Duration = .seconds(300),
        checkpointsEnabled: Bool = true,
        expiredRetryInterval: Duration = .seconds(3),
        revokeRate: Int = 1000
    ) {
        self.minTTL = minTTL
        self.checkpointInterval = checkpointInterval
        self.checkpointsEnabled = checkpointsEnabled
        self.expiredRetryInterval = expiredRetryInterval
        self.revokeRate = revokeRate
    }

    /// etcd's minimum lease TTL: one and a half election timeouts, rounded up to whole seconds
    /// (2 s for 10 election ticks of 100 ms).
    public static func minimumTTL(electionTicks: Int, heartbeat: Duration) -> Int64 {
        let ticks = Int64(max(0, electionTicks) * 3 / 2)
        let nanos = leaseNanoseconds(heartbeat).multipliedReportingOverflow(by: ticks)
        if nanos.overflow { return Int64.max / 1_000_000_000 }
        let perSecond: Int64 = 1_000_000_000
        return (nanos.partialValue + perSecond - 1) / perSecond
    }
}

/// A lease as stored by ``LeasePersistence``: etcd's `leasepb.Lease` record.
public struct PersistedLease: Equatable, Hashable, Sendable {
    /// The lease ID.
    public var id: Int64
    /// The granted TTL in seconds.
    public var ttl: Int64
    /// The last checkpointed remaining TTL in seconds; 0 when none.
    public var remainingTTL: Int64

    /// Creates a record.
    public init(id: Int64, ttl: Int64, remainingTTL: Int64) {
        self.id = id
        self.ttl = ttl
        self.remainingTTL = remainingTTL
    }

    /// The key of this lease in a backend bucket: the ID as 8 big-endian bytes, so a cursor
    /// walks leases in ID order for non-negative IDs.
    public static func bucketKey(for id: Int64) -> [UInt8] {
        let bits = UInt64(bitPattern: id)
        return (0..<8).map { UInt8(truncatingIfNeeded: bits >> (56 - 8 * UInt64($0))) }
    }

    /// The record encoded as protobuf `leasepb.Lease {ID = 1; TTL = 2; RemainingTTL = 3}`.
    /// Fields holding 0 are omitted, as proto3 does.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(24)
        ProtobufFields.appendInt(1, id, to: &out)
        ProtobufFields.appendInt(2, ttl, to: &out)
        ProtobufFields.appendInt(3, remainingTTL, to: &out)
        return out
    }

    /// Decodes a record written by ``encoded()`` (or by etcd). Unknown fields are skipped.
    /// - Throws: ``LeaseError/corruptRecord(_:)`` on truncated or malformed input.
    public init(decoding bytes: some Collection<UInt8>) throws {
        var reader = LeaseRecordReader(bytes: Array(bytes))
        var fields: [UInt64: Int64] = [:]
        while !reader.atEnd {
            let tag = try reader.varint()
            let field = tag >> 3
            guard field != 0 else { throw LeaseError.corruptRecord("field number 0") }
            switch tag & 7 {
            case 0: fields[field] = Int64(bitPattern: try reader.varint())
            case 1: try reader.skip(8)
            case 2:
                let length = try reader.varint()
                guard length <= UInt64(Int.max) else { throw LeaseError.corruptRecord("length overflow") }
                try reader.skip(Int(length))
            case 5: try reader.skip(4)
            default: throw LeaseError.corruptRecord("unsupported wire type \(tag & 7)")
            }
        }
        self.init(id: fields[1] ?? 0, ttl: fields[2] ?? 0, remainingTTL: fields[3] ?? 0)
    }
}

/// A bounds-checked cursor over an encoded lease record.
struct LeaseRecordReader {
    let bytes: [UInt8]
    var offset = 0

    var atEnd: Bool { offset >= bytes.count }

    mutating func varint() throws -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < bytes.count else { throw LeaseError.corruptRecord("truncated varint at byte \(offset)") }
            let byte = bytes[offset]
            offset += 1
            if shift == 63 && byte > 1 { throw LeaseError.corruptRecord("varint overflow at byte \(offset - 1)") }
            value |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return value }
            shift += 7
        }
    }

    mutating func skip(_ count: Int) throws {
        guard count <= bytes.count - offset else {
            throw LeaseError.corruptRecord("field of \(count) bytes runs past the end at byte \(offset)")
        }
        offset += count
    }
}

/// `duration` in nanoseconds, saturating at the bounds of `Int64`.
func leaseNanoseconds(_ duration: Duration) -> Int64 {
    // Checked first: `components` traps when the seconds do not fit in Int64.
    if duration >= .nanoseconds(Int64.max) { return Int64.max }
    if duration <= .nanoseconds(Int64.min) { return Int64.min }
    let (seconds, attoseconds) = duration.components
    let whole = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if whole.overflow { return seconds < 0 ? Int64.min : Int64.max }
    return leaseSaturatingAdd(whole.partialValue, attoseconds / 1_000_000_000)
}

/// `a + b`, saturating at the bounds of `Int64`.
func leaseSaturatingAdd(_ a: Int64, _ b: Int64) -> Int64 {
    let sum = a.addingReportingOverflow(b)
    if !sum.overflow { return sum.partialValue }
    return b > 0 ? Int64.max : Int64.min
}
