import Synchronization

/// The lease store: grants, renews and revokes leases, tracks the keys attached to each lease,
/// and (on the primary, the Raft leader) tracks expiry and remaining-TTL checkpoints.
///
/// Two paths use it concurrently:
/// - the apply loop, in log order on every member: ``grant(id:ttl:)``, ``revoke(id:)``,
///   ``attach(keys:to:)``, ``detach(keys:from:)``, ``applyCheckpoints(_:)``, ``reload()``,
///   ``restore(attaching:)``;
/// - the leader's RPC and timer paths: ``renew(id:)``, ``timeToLive(id:includeKeys:)``,
///   ``leases()``, ``expiredLeases(limit:)``, ``dueCheckpoints(limit:)``.
///
/// The lessor never talks to Raft itself: expired leases and due checkpoints are returned to
/// the server, which proposes `LeaseRevoke` and `LeaseCheckpoint` entries; their application
/// comes back through ``revoke(id:)`` and ``applyCheckpoints(_:)``.
///
/// Lease records (ID, TTL, checkpointed remaining TTL) are persisted through
/// ``LeasePersistence``; attached keys are not (they are recorded in each key's `lease` field,
/// and the MVCC restore re-attaches them with ``attach(keys:to:)``).
public final class Lessor: Sendable {
    /// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
    public static let maxTTL: Int64 = 9_000_000_000

    private static let nanosPerSecond: Int64 = 1_000_000_000

    /// The settings this lessor runs with.
    public let config: LessorConfig
    private let clock: any LeaseClock
    private let persistence: any LeasePersistence
    private let state: Mutex<LessorState>

    /// Creates a non-primary lessor and loads the persisted leases (their TTLs raised to the
    /// minimum TTL, their expiry clocks stopped until ``promote(extension:)``).
    /// - Throws: what `persistence.loadLeases()` throws.
    public init(
        config: LessorConfig = LessorConfig(),
        clock: any LeaseClock = SystemLeaseClock(),
        persistence: any LeasePersistence,
        keyDeleter: (any LeaseKeyDeleter)? = nil
    ) throws {
        self.config = config
        self.clock = clock
        self.persistence = persistence
        var initial = LessorState()
        initial.deleter = keyDeleter
        state = Mutex(initial)
        try reload()
    }

    /// Installs the deleter of revoked leases' keys (the MVCC store, which is usually created
    /// after the lessor because it attaches keys to it).
    public func setKeyDeleter(_ deleter: any LeaseKeyDeleter) {
        state.withLock { $0.deleter = deleter }
    }

    // MARK: Apply path (every member, in log order)

    /// Grants lease `id` with `ttl` seconds, raised to the minimum TTL. Returns the granted TTL.
    ///
    /// The ID comes from the log entry (the proposing member replaces a requested ID of 0 with
    /// one from ``LeaseIDGenerator``), so every member grants the same lease.
    /// - Throws: ``LeaseError/leaseNotFound(_:)`` for ID 0, ``LeaseError/ttlTooLarge(_:)``,
    ///   ``LeaseError/leaseExists(_:)``, or a persistence error (nothing changed then).
    @discardableResult
    public func grant(id: Int64, ttl: Int64) throws -> Int64 {
        guard id != 0 else { throw LeaseError.leaseNotFound(0) }
        guard ttl <= Self.maxTTL else { throw LeaseError.ttlTooLarge(ttl) }
        let now = nowNanos()
        return try state.withLock { state in
            guard state.leases[id] == nil else { throw LeaseError.leaseExists(id) }
            let granted = max(ttl, config.minTTL)
            try persistence.saveLease(PersistedLease(id: id, ttl: granted, remainingTTL: 0))
            state.leases[id] = LeaseRecord(ttl: granted)
            if state.isPrimary {
                state.setExpiry(of: id, to: leaseSaturatingAdd(now, Self.nanos(seconds: granted)))
                scheduleCheckpoint(of: id, now: now, in: &state)
            }
            return granted
        }
    }

    /// Revokes lease `id`: deletes its attached keys in one revision through the
    /// ``LeaseKeyDeleter`` (not called when there are none), then forgets the lease and removes
    /// its record.
    /// - Throws: ``LeaseError/leaseNotFound(_:)``, ``LeaseError/noKeyDeleter``, or what the
    ///   deleter or the persistence throws (the lease then stays, so the revocation can be
    ///   retried).
    public func revoke(id: Int64) throws {
        let (keys, deleter) = try state.withLock { state -> ([[UInt8]], (any LeaseKeyDeleter)?) in
            guard let lease = state.leases[id] else { throw LeaseError.leaseNotFound(id) }
            return (Self.sorted(lease.keys), state.deleter)
        }
        if !keys.isEmpty {
            guard let deleter else { throw LeaseError.noKeyDeleter }
            // Outside the lock: the deleter may call back (detach) into this lessor.
            try deleter.deleteLeasedKeys(keys, revoking: id)
        }
        try state.withLock { state in
            guard let lease = state.leases[id] else { return }
            try persistence.deleteLease(id: id)
            for key in lease.keys where state.keyOwner[key] == id {
                state.keyOwner[key] = nil
            }
            state.leases[id] = nil
            state.compactQueuesIfNeeded()
        }
    }

    /// Attaches `keys` to lease `id` (on a put with a lease, and when the MVCC restore finds a
    /// key with a lease). A key attached to another lease moves to this one.
    /// - Throws: ``LeaseError/leaseNotFound(_:)`` (then nothing is attached).
    public func attach(keys: [[UInt8]], to id: Int64) throws {
        try state.withLock { state in
            guard state.leases[id] != nil else { throw LeaseError.leaseNotFound(id) }
            for key in keys {
                if let previous = state.keyOwner[key], previous != id {
                    state.leases[previous]?.keys.remove(key)
                }
                state.keyOwner[key] = id
                state.leases[id]?.keys.insert(key)
            }
        }
    }

    /// Detaches `keys` from lease `id` (on a delete, or a put that changes or drops the lease).
    /// Keys not attached to this lease are ignored.
    /// - Throws: ``LeaseError/leaseNotFound(_:)``.
    public func detach(keys: [[UInt8]], from id: Int64) throws {
        try state.withLock { state in
            guard state.leases[id] != nil else { throw LeaseError.leaseNotFound(id) }
            for key in keys where state.keyOwner[key] == id {
                state.keyOwner[key] = nil
                state.leases[id]?.keys.remove(key)
            }
        }
    }

    /// Applies replicated remaining-TTL checkpoints: records and persists each lease's
    /// remaining TTL (0 clears it). It takes effect at the next promotion, so a new leader
    /// resumes from the checkpoint instead of restarting the full TTL. Unknown leases are
    /// ignored (they were revoked meanwhile).
    /// - Throws: a persistence error (earlier checkpoints of the batch stay applied).
    public func applyCheckpoints(_ checkpoints: [LeaseCheckpoint]) throws {
        let now = nowNanos()
        try state.withLock { state in
            for checkpoint in checkpoints {
                guard let lease = state.leases[checkpoint.id] else { continue }
                let remaining = max(0, checkpoint.remainingTTL)
                try persistence.saveLease(PersistedLease(id: checkpoint.id, ttl: lease.ttl, remainingTTL: remaining))
                state.leases[checkpoint.id]?.remainingTTL = remaining
                if state.isPrimary { scheduleCheckpoint(of: checkpoint.id, now: now, in: &state) }
            }
        }
    }

    /// Replaces all leases with the persisted ones (at start-up, and after installing a backend
    /// snapshot). Attached keys are forgotten; the MVCC restore re-attaches them. A primary
    /// lessor restarts every lease's expiry clock from its checkpointed or full TTL.
    /// - Throws: what `persistence.loadLeases()` throws (the current state is then kept).
    public func reload() throws {
        try restore(attaching: [])
    }

    /// Restores in place after the persistence's contents were replaced (a backend snapshot
    /// from the leader): replaces all leases with the persisted ones and attaches `keys` (each
    /// live key with a lease, from the keyspace) in one step, so no caller sees the leases
    /// without their keys. The object stays, so everything holding it keeps working. Keys of a
    /// lease that is not persisted are skipped. A primary lessor restarts every lease's expiry
    /// clock from its checkpointed or full TTL.
    /// - Throws: what `persistence.loadLeases()` throws (the current state is then kept).
    public func restore(attaching keys: [(key: [UInt8], lease: Int64)]) throws {
        let records = try persistence.loadLeases()
        let now = nowNanos()
        state.withLock { state in
            state.leases = [:]
            state.keyOwner = [:]
            state.expiryQueue.removeAll()
            state.checkpointQueue.removeAll()
            for record in records where record.id != 0 {
                var lease = LeaseRecord(ttl: max(record.ttl, config.minTTL))
                lease.remainingTTL = max(0, record.remainingTTL)
                state.leases[record.id] = lease
            }
            for (key, id) in keys where state.leases[id] != nil {
                if let previous = state.keyOwner[key], previous != id { state.leases[previous]?.keys.remove(key) }
                state.keyOwner[key] = id
                state.leases[id]?.keys.insert(key)
            }
            if state.isPrimary { restartClocks(extension: 0, now: now, in: &state) }
        }
    }

    // MARK: Leadership

    /// Whether this lessor is the primary (runs expiry and checkpoints, accepts renewals).
    public var isPrimary: Bool { state.withLock { $0.isPrimary } }

    /// Makes this lessor the primary (on becoming Raft leader). Every lease expires after its
    /// checkpointed remaining TTL (or full TTL when none) plus `extension` (etcd uses the
    /// election timeout), so leases do not expire right after a leader change; expiries are
    /// then spread so no second holds more than 3/4 of ``LessorConfig/revokeRate``.
    public func promote(extension: Duration) {
        let now = nowNanos()
        state.withLock { state in
            state.isPrimary = true
            restartClocks(extension: max(0, leaseNanoseconds(`extension`)), now: now, in: &state)
        }
    }

    /// Stops being the primary (on losing leadership): leases no longer expire here and no
    /// checkpoints are emitted until the next ``promote(extension:)``.
    public func demote() {
        state.withLock { state in
            state.isPrimary = false
            for id in state.leases.keys {
                state.leases[id]?.expiry = nil
                state.leases[id]?.expiryQueuedAt = nil
                state.leases[id]?.checkpointAt = nil
            }
            state.expiryQueue.removeAll()
            state.checkpointQueue.removeAll()
        }
    }

    // MARK: Primary's periodic work

    /// Leases past their expiry, earliest first, at most `limit` of them (the server proposes a
    /// revocation for each). A reported lease is reported again after
    /// ``LessorConfig/expiredRetryInterval`` if it has not been revoked or renewed by then.
    /// Empty on a non-primary.
    public func expiredLeases(limit: Int = 500) -> [Int64] {
        let now = nowNanos()
        let retry = leaseNanoseconds(config.expiredRetryInterval)
        return state.withLock { state in
            guard state.isPrimary else { return [] }
            var expired: [Int64] = []
            var requeue: [(id: Int64, at: Int64)] = []
            while expired.count < limit, let top = state.expiryQueue.popDue(at: now) {
                guard let lease = state.leases[top.id], lease.expiryQueuedAt == top.deadline,
                    let expiry = lease.expiry
                else { continue }  // stale entry
                state.leases[top.id]?.expiryQueuedAt = nil  // a twin entry is stale now
                if expiry <= now {
                    expired.append(top.id)
                    requeue.append((top.id, leaseSaturatingAdd(now, max(1, retry))))
                } else {
                    requeue.append((top.id, expiry))
                }
            }
            // Re-queued after the scan, so a deadline that saturates at `now` is not seen twice.
            for (id, deadline) in requeue { state.queueExpiry(of: id, at: deadline) }
            return expired
        }
    }

    /// Remaining-TTL checkpoints that are due, at most `limit` of them (the server proposes them
    /// as one `LeaseCheckpoint` entry). A lease with more than
    /// ``LessorConfig/checkpointInterval`` left is checkpointed once per interval; a checkpoint
    /// is only emitted when it says something (remaining TTL below the granted TTL). Empty on a
    /// non-primary or when checkpoints are disabled.
    public func dueCheckpoints(limit: Int = 1000) -> [LeaseCheckpoint] {
        let now = nowNanos()
        return state.withLock { state in
            guard state.isPrimary, config.checkpointsEnabled else { return [] }
            var due: [LeaseCheckpoint] = []
            while due.count < limit, let top = state.checkpointQueue.popDue(at: now) {
                guard let lease = state.leases[top.id], lease.checkpointAt == top.deadline,
                    let expiry = lease.expiry
                else { continue }  // stale entry
                state.leases[top.id]?.checkpointAt = nil
                guard expiry > now else { continue }
                let remaining = Self.ceilSeconds(expiry - now)
                if remaining < lease.ttl { due.append(LeaseCheckpoint(id: top.id, remainingTTL: remaining)) }
                // Schedule the next one now, so a lost proposal does not stop checkpointing.
                scheduleCheckpoint(of: top.id, now: now, in: &state)
            }
            return due
        }
    }

    // MARK: Queries and keep-alive (RPC path)

    /// Renews lease `id` (keep-alive): it expires a full TTL from now.
    /// - Throws: ``LeaseError/notPrimary`` on a non-primary, ``LeaseError/leaseNotFound(_:)``,
    ///   ``LeaseError/leaseExpired(_:)`` for a lease past its expiry awaiting revocation.
    public func renew(id: Int64) throws -> LeaseRenewal {
        let now = nowNanos()
        return try state.withLock { state in
            guard state.isPrimary else { throw LeaseError.notPrimary }
            guard let lease = state.leases[id] else { throw LeaseError.leaseNotFound(id) }
            if let expiry = lease.expiry, expiry <= now { throw LeaseError.leaseExpired(id) }
            state.setExpiry(of: id, to: leaseSaturatingAdd(now, Self.nanos(seconds: lease.ttl)))
            if lease.checkpointAt == nil { scheduleCheckpoint(of: id, now: now, in: &state) }
            state.compactQueuesIfNeeded()
            let clear = config.checkpointsEnabled && lease.remainingTTL > 0
            return LeaseRenewal(ttl: lease.ttl, clearCheckpoint: clear ? LeaseCheckpoint(id: id, remainingTTL: 0) : nil)
        }
    }

    /// The granted and remaining TTL of lease `id`, with its keys if `includeKeys`.
    /// - Throws: ``LeaseError/leaseNotFound(_:)`` (etcd then answers TTL -1).
    public func timeToLive(id: Int64, includeKeys: Bool = false) throws -> LeaseTimeToLive {
        let now = nowNanos()
        return try state.withLock { state in
            guard let lease = state.leases[id] else { throw LeaseError.leaseNotFound(id) }
            let remaining: Int64
            if let expiry = lease.expiry {
                remaining = expiry > now ? (expiry - now) / Self.nanosPerSecond : 0
            } else {
                remaining = lease.remainingTTL > 0 ? lease.remainingTTL : lease.ttl
            }
            let keys = includeKeys ? Self.sorted(lease.keys) : []
            return LeaseTimeToLive(id: id, grantedTTL: lease.ttl, remainingTTL: remaining, keys: keys)
        }
    }

    /// The IDs of all leases, ascending.
    public func leases() -> [Int64] {
        state.withLock { $0.leases.keys.sorted() }
    }

    /// Whether lease `id` exists (the server checks it before a put with a lease).
    public func contains(id: Int64) -> Bool {
        state.withLock { $0.leases[id] != nil }
    }

    /// The lease `key` is attached to, or 0 ("no lease").
    public func leaseID(ofKey key: [UInt8]) -> Int64 {
        state.withLock { $0.keyOwner[key] ?? 0 }
    }

    /// The keys attached to lease `id`, ascending.
    /// - Throws: ``LeaseError/leaseNotFound(_:)``.
    public func keys(of id: Int64) throws -> [[UInt8]] {
        try state.withLock { state in
            guard let lease = state.leases[id] else { throw LeaseError.leaseNotFound(id) }
            return Self.sorted(lease.keys)
        }
    }

    // MARK: Internals

    /// The clock in nanoseconds, never below 0 (so differences with expiries cannot overflow).
    private func nowNanos() -> Int64 { max(0, leaseNanoseconds(clock.now())) }

    private static func nanos(seconds: Int64) -> Int64 {
        let product = seconds.multipliedReportingOverflow(by: nanosPerSecond)
        return product.overflow ? (seconds < 0 ? Int64.min : Int64.max) : product.partialValue
    }

    private static func ceilSeconds(_ nanos: Int64) -> Int64 {
        nanos / nanosPerSecond + (nanos % nanosPerSecond > 0 ? 1 : 0)
    }

    private static func sorted(_ keys: Set<[UInt8]>) -> [[UInt8]] {
        keys.sorted { $0.lexicographicallyPrecedes($1) }
    }

    /// Schedules the next checkpoint of lease `id` one interval from now if checkpoints are on
    /// and the lease has more than one interval left.
    private func scheduleCheckpoint(of id: Int64, now: Int64, in state: inout LessorState) {
        guard config.checkpointsEnabled, let lease = state.leases[id], lease.checkpointAt == nil,
            let expiry = lease.expiry
        else { return }
        let interval = max(1, leaseNanoseconds(config.checkpointInterval))
        guard expiry - now > interval else { return }
        let at = leaseSaturatingAdd(now, interval)
        state.leases[id]?.checkpointAt = at
        state.checkpointQueue.push(deadline: at, id: id)
    }

    /// Sets every lease's expiry to now + extension + (checkpointed or full) TTL, spreads
    /// expiry pile-ups, and schedules checkpoints.
    private func restartClocks(extension: Int64, now: Int64, in state: inout LessorState) {
        state.expiryQueue.removeAll()
        state.checkpointQueue.removeAll()
        var expiries: [(expiry: Int64, id: Int64)] = []
        expiries.reserveCapacity(state.leases.count)
        for (id, lease) in state.leases {
            let ttl = lease.remainingTTL > 0 ? lease.remainingTTL : lease.ttl
            expiries.append((leaseSaturatingAdd(leaseSaturatingAdd(now, `extension`), Self.nanos(seconds: ttl)), id))
        }
        expiries.sort { $0.expiry != $1.expiry ? $0.expiry < $1.expiry : $0.id < $1.id }
        Self.spread(&expiries, perSecond: max(1, config.revokeRate * 3 / 4))
        for (expiry, id) in expiries {
            state.leases[id]?.checkpointAt = nil
            state.setExpiry(of: id, to: expiry)
            scheduleCheckpoint(of: id, now: now, in: &state)
        }
    }

    /// Delays expiries (sorted ascending) so that at most `perSecond` fall in each one-second
    /// window: a window opens at the first expiry past the current one; when a window is full,
    /// the next one starts one second later and the leases it takes move up to its start.
    static func spread(_ expiries: inout [(expiry: Int64, id: Int64)], perSecond: Int) {
        guard expiries.count > perSecond else { return }
        var windowStart = Int64.min
        var inWindow = 0
        for index in expiries.indices {
            let expiry = expiries[index].expiry
            if windowStart == Int64.min || expiry >= leaseSaturatingAdd(windowStart, nanosPerSecond) {
                windowStart = expiry
                inWindow = 0
            } else if inWindow >= perSecond {
                windowStart = leaseSaturatingAdd(windowStart, nanosPerSecond)
                inWindow = 0
            }
            expiries[index].expiry = max(expiry, windowStart)
            inWindow += 1
        }
    }
}

/// One lease as the lessor holds it.
struct LeaseRecord {
    /// Granted TTL in seconds.
    var ttl: Int64
    /// Last applied checkpoint in seconds; 0 when none.
    var remainingTTL: Int64 = 0
    /// Expiry in clock nanoseconds; nil while not primary (the clock is stopped).
    var expiry: Int64?
    /// Deadline of this lease's live entry in the expiry queue.
    var expiryQueuedAt: Int64?
    /// Deadline of this lease's live entry in the checkpoint queue.
    var checkpointAt: Int64?
    /// Attached keys.
    var keys: Set<[UInt8]> = []
}

/// Everything the lessor's lock guards.
struct LessorState {
    var leases: [Int64: LeaseRecord] = [:]
    var keyOwner: [[UInt8]: Int64] = [:]
    var isPrimary = false
    var expiryQueue = LeaseDeadlineQueue()
    var checkpointQueue = LeaseDeadlineQueue()
    var deleter: (any LeaseKeyDeleter)?

    mutating func setExpiry(of id: Int64, to expiry: Int64) {
        leases[id]?.expiry = expiry
        queueExpiry(of: id, at: expiry)
    }

    mutating func queueExpiry(of id: Int64, at deadline: Int64) {
        leases[id]?.expiryQueuedAt = deadline
        expiryQueue.push(deadline: deadline, id: id)
    }

    /// Drops stale queue entries once they outnumber the leases (renewals leave one each).
    mutating func compactQueuesIfNeeded() {
        let bound = 2 * leases.count + 64
        if expiryQueue.count > bound {
            expiryQueue.retain { leases[$0.id]?.expiryQueuedAt == $0.deadline }
        }
        if checkpointQueue.count > bound {
            checkpointQueue.retain { leases[$0.id]?.checkpointAt == $0.deadline }
        }
    }
}
