import Foundation
import LMDBBackend
import MVCC

/// Lease records in the backend's `lease` bucket (etcd's `leasepb.Lease` encoding). Writes join
/// the current backend batch, so they commit with the entry that made them.
final class BackendLeasePersistence: LeasePersistence {
    let backend: Backend
    init(_ backend: Backend) { self.backend = backend }

    func saveLease(_ lease: PersistedLease) throws {
        try backend.put(.lease, key: PersistedLease.bucketKey(for: lease.id), value: lease.encoded())
    }

    func deleteLease(id: Int64) throws {
        try backend.delete(.lease, key: PersistedLease.bucketKey(for: id))
    }

    func loadLeases() throws -> [PersistedLease] {
        var values: [[UInt8]] = []
        try backend.read { r in
            try r.scan(.lease, from: [0], to: nil) { _, v in
                values.append([UInt8](v))
                return true
            }
        }
        return try values.map { try PersistedLease(decoding: $0) }
    }
}

/// Connects the keyspace and the lessor both ways: the store asks the lessor whether a lease
/// exists and tells it which keys join or leave a lease; the lessor asks the store to delete
/// the keys of a revoked lease.
final class LeaseBridge: MVCCLeaseHooks, LeaseKeyDeleter {
    let lessor: Lessor
    /// Set once at start-up, before any apply.
    nonisolated(unsafe) weak var store: MVCCStore?

    init(lessor: Lessor) { self.lessor = lessor }

    func leaseExists(_ id: Int64) -> Bool { lessor.contains(id: id) }
    func attach(key: [UInt8], lease: Int64) { try? lessor.attach(keys: [key], to: lease) }
    func detach(key: [UInt8], lease: Int64) { try? lessor.detach(keys: [key], from: lease) }

    func deleteLeasedKeys(_ keys: [[UInt8]], revoking leaseID: Int64) throws {
        guard let store else { throw LeaseError.noKeyDeleter }
        try store.deleteKeys(keys)
    }

    /// Re-attaches every live leased key (after start-up or a backend swap).
    func reattach() throws {
        guard let store else { return }
        for (key, lease) in try store.leasedKeys() {
            try? lessor.attach(keys: [key], to: lease)
        }
    }
}
