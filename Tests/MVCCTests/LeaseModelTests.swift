import Foundation
import Raft
import Testing

@testable import MVCC

/// Seeded random sequences of lease operations checked step by step against a plain model.
/// LEASE_SEEDS and LEASE_STEPS lengthen the run.
@Suite struct LeaseModelTests {
    static let seeds = UInt64(ProcessInfo.processInfo.environment["LEASE_SEEDS"] ?? "") ?? 24
    static let steps = Int(ProcessInfo.processInfo.environment["LEASE_STEPS"] ?? "") ?? 400

    @Test func randomOperationsMatchTheModel() throws {
        var coverage = LeaseModelRun.Coverage()
        for seed in 1...Self.seeds {
            var run = try LeaseModelRun(seed: seed)
            defer { coverage.add(run.coverage) }
            do {
                for step in 0..<Self.steps {
                    run.step = step
                    try run.randomStep()
                }
            } catch let mismatch as LeaseModelMismatch {
                Issue.record("seed \(seed), step \(run.step), op \(run.lastOp): \(mismatch.what)")
            }
        }
        // The runs reach every interesting case.
        #expect(coverage.expired > 0 && coverage.revokedWithKeys > 0 && coverage.checkpoints > 0)
        #expect(coverage.renewals > 0 && coverage.clears > 0 && coverage.restartsWithKeys > 0)
    }
}

struct LeaseModelMismatch: Error {
    var what: String
}

/// One randomized run: a lessor on a manual clock, the model, and the fake key store.
struct LeaseModelRun {
    struct ModelLease {
        var ttl: Int64
        var remaining: Int64 = 0
        var expiry: Int64?  // clock nanoseconds; nil while not primary
    }

    static let second: Int64 = 1_000_000_000
    static let config = LessorConfig(
        minTTL: 2, checkpointInterval: .seconds(5), expiredRetryInterval: .seconds(3), revokeRate: 1_000_000)
    static let keySpace = (0..<10).map { leaseKey("k\($0)") }

    var rng: SplitMix64
    let clock = ManualLeaseClock(start: .seconds(100))
    let persistence = InMemoryLeasePersistence()
    let store = FakeLeasedKeys()
    var lessor: Lessor
    var leases: [Int64: ModelLease] = [:]
    var kv: [[UInt8]: Int64] = [:]
    var primary = false
    var step = 0
    var lastOp = ""
    var coverage = Coverage()

    struct Coverage {
        var expired = 0, revokedWithKeys = 0, checkpoints = 0, renewals = 0, clears = 0, restartsWithKeys = 0

        mutating func add(_ other: Coverage) {
            expired += other.expired
            revokedWithKeys += other.revokedWithKeys
            checkpoints += other.checkpoints
            renewals += other.renewals
            clears += other.clears
            restartsWithKeys += other.restartsWithKeys
        }
    }

    init(seed: UInt64) throws {
        rng = SplitMix64(seed: seed)
        lessor = try Lessor(config: Self.config, clock: clock, persistence: persistence, keyDeleter: store)
    }

    var now: Int64 { leaseNanoseconds(clock.now()) }

    func ensure(_ condition: Bool, _ what: @autoclosure () -> String) throws {
        if !condition { throw LeaseModelMismatch(what: what()) }
    }

    /// Runs `body` and checks it throws exactly `expected` (or succeeds when nil).
    func expectOutcome<T>(_ expected: LeaseError?, _ body: () throws -> T) throws -> T? {
        do {
            let value = try body()
            try ensure(expected == nil, "succeeded, expected \(String(describing: expected))")
            return value
        } catch let error as LeaseError {
            try ensure(error == expected, "threw \(error), expected \(String(describing: expected))")
            return nil
        }
    }

    mutating func randomStep() throws {
        let id = Int64.random(in: 1...12, using: &rng)
        let key = Self.keySpace.randomElement(using: &rng)!
        switch Int.random(in: 0..<100, using: &rng) {
        case 0..<12: try grant(id)
        case 12..<30: try put(key, lease: Bool.random(using: &rng) ? id : 0)
        case 30..<36: try delete(key)
        case 36..<42: try revoke(id)
        case 42..<58:
            lastOp = "advance"
            clock.advance(by: .milliseconds(Int64.random(in: 0...4000, using: &rng)))
        case 58..<68: try expire()
        case 68..<78: try renew(id)
        case 78..<86: try checkpoint()
        case 86..<89: demote()
        case 89..<93: promote()
        case 93..<95: try restart()
        default: try query(id)
        }
        try ensure(store.live == kv, "key store \(store.live.count) keys, model \(kv.count)")
    }

    mutating func grant(_ id: Int64) throws {
        let ttl = Int.random(in: 0..<20, using: &rng) == 0 ? Lessor.maxTTL + 1 : Int64.random(in: -1...20, using: &rng)
        lastOp = "grant \(id) ttl \(ttl)"
        let expected: LeaseError? = ttl > Lessor.maxTTL ? .ttlTooLarge(ttl) : leases[id] != nil ? .leaseExists(id) : nil
        guard let granted = try expectOutcome(expected, { try lessor.grant(id: id, ttl: ttl) }) else { return }
        try ensure(granted == max(ttl, 2), "granted \(granted)")
        leases[id] = ModelLease(ttl: granted, expiry: primary ? now + granted * Self.second : nil)
    }

    mutating func put(_ key: [UInt8], lease id: Int64) throws {
        lastOp = "put lease \(id)"
        if id != 0 {
            let expected: LeaseError? = leases[id] == nil ? .leaseNotFound(id) : nil
            guard try expectOutcome(expected, { try lessor.attach(keys: [key], to: id) }) != nil else { return }
        } else if let old = kv[key], old != 0 {
            try lessor.detach(keys: [key], from: old)
        }
        kv[key] = id
        store.put(key, lease: id)
    }

    mutating func delete(_ key: [UInt8]) throws {
        lastOp = "delete"
        guard let old = kv[key] else { return }
        if old != 0 { try lessor.detach(keys: [key], from: old) }
        kv[key] = nil
        store.remove(key)
    }

    mutating func revoke(_ id: Int64) throws {
        lastOp = "revoke \(id)"
        let deletionsBefore = store.deletions.count
        let expected: LeaseError? = leases[id] == nil ? .leaseNotFound(id) : nil
        guard try expectOutcome(expected, { try lessor.revoke(id: id) }) != nil else {
            try ensure(store.deletions.count == deletionsBefore, "deleted keys of a missing lease")
            return
        }
        let attached = kv.filter { $0.value == id }.keys.sorted { $0.lexicographicallyPrecedes($1) }
        if attached.isEmpty {
            try ensure(store.deletions.count == deletionsBefore, "deleter called without keys")
        } else {
            try ensure(store.deletions.count == deletionsBefore + 1, "\(store.deletions.count - deletionsBefore) deletions")
            try ensure(store.deletions.last == .init(keys: attached, lease: id), "deleted other keys")
            coverage.revokedWithKeys += 1
        }
        for key in attached { kv[key] = nil }
        leases[id] = nil
    }

    mutating func expire() throws {
        lastOp = "expire"
        let got = lessor.expiredLeases(limit: 1000)
        let now = now
        var due: [(expiry: Int64, id: Int64)] = []
        for (id, lease) in leases {
            if let expiry = lease.expiry, expiry <= now { due.append((expiry, id)) }
        }
        due.sort { $0.expiry != $1.expiry ? $0.expiry < $1.expiry : $0.id < $1.id }
        let dueIDs = due.map { $0.id }
        try ensure(got == dueIDs, "expired \(got), model \(dueIDs)")
        coverage.expired += got.count
        for id in got { try revoke(id) }  // as the server does, through the log
    }

    mutating func renew(_ id: Int64) throws {
        lastOp = "renew \(id)"
        let now = now
        let expected: LeaseError?
        if !primary {
            expected = .notPrimary
        } else if let lease = leases[id] {
            expected = (lease.expiry ?? Int64.max) <= now ? .leaseExpired(id) : nil
        } else {
            expected = .leaseNotFound(id)
        }
        guard let renewal = try expectOutcome(expected, { try lessor.renew(id: id) }), let lease = leases[id] else { return }
        try ensure(renewal.ttl == lease.ttl, "renewed ttl \(renewal.ttl)")
        let wantsClear = lease.remaining > 0
        try ensure((renewal.clearCheckpoint != nil) == wantsClear, "clear checkpoint \(String(describing: renewal.clearCheckpoint))")
        leases[id]?.expiry = now + lease.ttl * Self.second
        coverage.renewals += 1
        if wantsClear { coverage.clears += 1 }
        if let clear = renewal.clearCheckpoint, Bool.random(using: &rng) {
            try lessor.applyCheckpoints([clear])
            leases[id]?.remaining = 0
        }
    }

    mutating func checkpoint() throws {
        lastOp = "checkpoint"
        let due = lessor.dueCheckpoints()
        let now = now
        if !primary { try ensure(due.isEmpty, "checkpoints from a non-primary") }
        for checkpoint in due {
            guard let lease = leases[checkpoint.id] else { throw LeaseModelMismatch(what: "checkpoint of missing lease") }
            let expiry = lease.expiry ?? 0
            let left = (expiry - now + Self.second - 1) / Self.second
            try ensure(expiry > now && checkpoint.remainingTTL == left && left < lease.ttl,
                "checkpoint \(checkpoint) with \(expiry - now) ns left of ttl \(lease.ttl)")
        }
        coverage.checkpoints += due.count
        guard Int.random(in: 0..<4, using: &rng) != 0 else { return }  // sometimes the proposal is lost
        try lessor.applyCheckpoints(due)
        for checkpoint in due { leases[checkpoint.id]?.remaining = checkpoint.remainingTTL }
    }

    mutating func demote() {
        lastOp = "demote"
        lessor.demote()
        primary = false
        for id in leases.keys { leases[id]?.expiry = nil }
    }

    mutating func promote() {
        let extra = Int64.random(in: 0...3000, using: &rng)
        lastOp = "promote +\(extra) ms"
        lessor.promote(extension: .milliseconds(extra))
        primary = true
        let base = now + extra * 1_000_000
        for (id, lease) in leases {
            leases[id]?.expiry = base + (lease.remaining > 0 ? lease.remaining : lease.ttl) * Self.second
        }
    }

    mutating func restart() throws {
        lastOp = "restart"
        lessor = try Lessor(config: Self.config, clock: clock, persistence: persistence, keyDeleter: store)
        primary = false
        for id in leases.keys { leases[id]?.expiry = nil }
        // The MVCC restore re-attaches every key that carries a lease.
        for (key, id) in kv where id != 0 { try lessor.attach(keys: [key], to: id) }
        if kv.values.contains(where: { $0 != 0 }) { coverage.restartsWithKeys += 1 }
    }

    mutating func query(_ id: Int64) throws {
        lastOp = "query \(id)"
        try ensure(lessor.leases() == leases.keys.sorted(), "leases \(lessor.leases())")
        let records = try persistence.loadLeases()
        let modelRecords = leases.map { PersistedLease(id: $0.key, ttl: $0.value.ttl, remainingTTL: $0.value.remaining) }
            .sorted { $0.id < $1.id }
        try ensure(records == modelRecords, "persisted \(records), model \(modelRecords)")
        let expected: LeaseError? = leases[id] == nil ? .leaseNotFound(id) : nil
        guard let answer = try expectOutcome(expected, { try lessor.timeToLive(id: id, includeKeys: true) }),
            let lease = leases[id]
        else { return }
        let remaining: Int64
        if let expiry = lease.expiry {
            remaining = max(0, expiry - now) / Self.second
        } else {
            remaining = lease.remaining > 0 ? lease.remaining : lease.ttl
        }
        let keys = kv.filter { $0.value == id }.keys.sorted { $0.lexicographicallyPrecedes($1) }
        try ensure(answer == LeaseTimeToLive(id: id, grantedTTL: lease.ttl, remainingTTL: remaining, keys: keys),
            "time-to-live \(answer), model ttl \(lease.ttl) remaining \(remaining) keys \(keys.count)")
    }
}
