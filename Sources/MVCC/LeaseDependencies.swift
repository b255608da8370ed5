// The lessor's view of the outside world: time, durable storage of lease records, and deletion
// of the keys of a revoked lease. The server wires these to the real clock, the backend's
// "lease" bucket and the MVCC store.

import Synchronization

/// A monotonic clock for lease expiry.
public protocol LeaseClock: Sendable {
    /// Time elapsed since an arbitrary fixed origin; never decreases.
    func now() -> Duration
}

/// The system's monotonic clock, measured from the moment this value was created.
public struct SystemLeaseClock: LeaseClock {
    private let origin = ContinuousClock.now

    /// Creates a clock starting at zero now.
    public init() {}

    /// Time since this clock was created.
    public func now() -> Duration { ContinuousClock.now - origin }
}

/// A clock that moves only when told to: for tests and simulations.
public final class ManualLeaseClock: LeaseClock {
    private let current: Mutex<Duration>

    /// Creates a clock reading `start`.
    public init(start: Duration = .zero) { current = Mutex(start) }

    /// The current reading.
    public func now() -> Duration { current.withLock { $0 } }

    /// Moves the clock forward by `step` (negative steps are ignored: the clock is monotonic).
    public func advance(by step: Duration) {
        current.withLock { if step > .zero { $0 += step } }
    }
}

/// Durable storage of lease records (the backend's "lease" bucket).
///
/// Calls come from the lessor while it holds its lock, in the order of the changes they record.
public protocol LeasePersistence: Sendable {
    /// Inserts or replaces the record of `lease.id`.
    func saveLease(_ lease: PersistedLease) throws
    /// Removes the record of `id` (no error if absent).
    func deleteLease(id: Int64) throws
    /// Every stored record, in any order.
    func loadLeases() throws -> [PersistedLease]
}

/// Deletes the keys of a revoked or expired lease.
///
/// The lessor calls it without holding its lock, so the implementation may call back into the
/// lessor (for example to detach the keys it deletes).
public protocol LeaseKeyDeleter: Sendable {
    /// Deletes `keys` (non-empty, ascending byte order, so every member deletes in the same
    /// order) in ONE revision, the revision of the revocation.
    func deleteLeasedKeys(_ keys: [[UInt8]], revoking leaseID: Int64) throws
}

/// Lease records kept in memory: for tests, and for members that need no durability.
public final class InMemoryLeasePersistence: LeasePersistence {
    private let records = Mutex<[Int64: PersistedLease]>([:])

    /// Creates an empty store, or one holding `leases`.
    public init(_ leases: [PersistedLease] = []) {
        records.withLock { stored in
            for lease in leases { stored[lease.id] = lease }
        }
    }

    /// Inserts or replaces a record.
    public func saveLease(_ lease: PersistedLease) throws {
        records.withLock { $0[lease.id] = lease }
    }

    /// Removes a record.
    public func deleteLease(id: Int64) throws {
        _ = records.withLock { $0.removeValue(forKey: id) }
    }

    /// All records, sorted by ID.
    public func loadLeases() throws -> [PersistedLease] {
        records.withLock { $0.values.sorted { $0.id < $1.id } }
    }
}
