import Synchronization

@testable import MVCC

/// A stand-in for the MVCC store's side of leases: a map of live keys to their lease, which the
/// lessor's revocations delete from. Records every deletion call.
final class FakeLeasedKeys: LeaseKeyDeleter {
    struct Deletion: Equatable {
        var keys: [[UInt8]]
        var lease: Int64
    }

    private struct State {
        var live: [[UInt8]: Int64] = [:]
        var deletions: [Deletion] = []
        var failNext = false
        var lessor: Lessor?
    }

    private let state = Mutex(State())

    /// When set, every deletion also detaches the keys through the lessor, as an MVCC delete
    /// does; this calls back into the lessor during a revocation.
    func detachThrough(_ lessor: Lessor) { state.withLock { $0.lessor = lessor } }

    func failNextDeletion() { state.withLock { $0.failNext = true } }

    /// Records a put of `key` with `lease` (0 = no lease).
    func put(_ key: [UInt8], lease: Int64) { state.withLock { $0.live[key] = lease } }

    func remove(_ key: [UInt8]) { _ = state.withLock { $0.live.removeValue(forKey: key) } }

    var live: [[UInt8]: Int64] { state.withLock { $0.live } }
    var deletions: [Deletion] { state.withLock { $0.deletions } }

    struct InjectedFailure: Error {}

    func deleteLeasedKeys(_ keys: [[UInt8]], revoking leaseID: Int64) throws {
        let lessor = try state.withLock { state -> Lessor? in
            if state.failNext {
                state.failNext = false
                throw InjectedFailure()
            }
            state.deletions.append(Deletion(keys: keys, lease: leaseID))
            for key in keys { state.live[key] = nil }
            return state.lessor
        }
        try lessor?.detach(keys: keys, from: leaseID)
    }
}

/// A lessor with a manual clock, in-memory persistence and a fake key store.
struct LeaseFixture {
    let clock: ManualLeaseClock
    let persistence: InMemoryLeasePersistence
    let keys: FakeLeasedKeys
    let lessor: Lessor

    init(config: LessorConfig = LessorConfig(), records: [PersistedLease] = [], start: Duration = .seconds(1000)) throws {
        clock = ManualLeaseClock(start: start)
        persistence = InMemoryLeasePersistence(records)
        keys = FakeLeasedKeys()
        lessor = try Lessor(config: config, clock: clock, persistence: persistence, keyDeleter: keys)
    }

    /// A second lessor on the same clock, persistence and keys: a restarted member, or another
    /// member that applied the same log.
    func restarted(config: LessorConfig? = nil) throws -> Lessor {
        try Lessor(config: config ?? lessor.config, clock: clock, persistence: persistence, keyDeleter: keys)
    }

    /// Puts `key` with lease `id` into the fake store and attaches it.
    func put(_ key: String, lease id: Int64) throws {
        try lessor.attach(keys: [Array(key.utf8)], to: id)
        keys.put(Array(key.utf8), lease: id)
    }
}

/// Bytes of a string key.
func leaseKey(_ text: String) -> [UInt8] { Array(text.utf8) }

