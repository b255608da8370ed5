import Raft
import Testing

@testable import MVCC

@Suite struct LeaseRecordTests {
    @Test func encodesAsLeasepbLease() throws {
        // ID 1, TTL 300 (varint AC 02), RemainingTTL omitted when 0.
        #expect(PersistedLease(id: 1, ttl: 300, remainingTTL: 0).encoded() == [0x08, 0x01, 0x10, 0xAC, 0x02])
        #expect(PersistedLease(id: 0, ttl: 0, remainingTTL: 0).encoded() == [])
        #expect(PersistedLease(id: 2, ttl: 5, remainingTTL: 3).encoded() == [0x08, 0x02, 0x10, 0x05, 0x18, 0x03])
        // A negative int64 takes ten bytes.
        #expect(PersistedLease(id: -1, ttl: 0, remainingTTL: 0).encoded()
            == [0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    }

    @Test func roundTripsRandomRecords() throws {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<500 {
            let record = PersistedLease(
                id: Int64.random(in: Int64.min...Int64.max, using: &rng),
                ttl: Int64.random(in: 0...Lessor.maxTTL, using: &rng),
                remainingTTL: Int64.random(in: 0...1000, using: &rng))
            #expect(try PersistedLease(decoding: record.encoded()) == record)
        }
    }

    @Test func skipsUnknownFields() throws {
        // Field 4 varint, field 5 length-delimited "ab", field 6 fixed64, field 7 fixed32.
        let bytes: [UInt8] = [0x08, 0x09, 0x20, 0x01, 0x2A, 0x02, 0x61, 0x62, 0x31] + [UInt8](repeating: 0, count: 8)
            + [0x3D, 0, 0, 0, 0, 0x10, 0x0A]
        #expect(try PersistedLease(decoding: bytes) == PersistedLease(id: 9, ttl: 10, remainingTTL: 0))
    }

    @Test func rejectsMalformedInput() {
        let bad: [[UInt8]] = [
            [0x08],  // tag without value
            [0x08, 0x80],  // truncated varint
            [0x08] + [UInt8](repeating: 0xFF, count: 10) + [0x01],  // varint longer than 64 bits
            [0x00, 0x01],  // field number 0
            [0x0B],  // wire type 3 (groups)
            [0x2A, 0x05, 0x61],  // length past the end
            [0x31, 0x00],  // fixed64 truncated
            [0x2A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],  // huge length
        ]
        for bytes in bad {
            #expect(throws: LeaseError.self) { try PersistedLease(decoding: bytes) }
        }
        // Random garbage never crashes: it decodes or throws.
        var rng = SplitMix64(seed: 11)
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0..<24, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? PersistedLease(decoding: bytes)
        }
    }

    @Test func bucketKeyIsBigEndian() {
        #expect(PersistedLease.bucketKey(for: 0x0102_0304_0506_0708) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(PersistedLease.bucketKey(for: -1) == [UInt8](repeating: 0xFF, count: 8))
        let ids: [Int64] = [0, 1, 255, 256, 1 << 40, Int64.max]
        let keys = ids.map(PersistedLease.bucketKey(for:))
        #expect(zip(keys, keys.dropFirst()).allSatisfy { $0.lexicographicallyPrecedes($1) })
    }

    @Test func inMemoryPersistenceStoresRecords() throws {
        let store = InMemoryLeasePersistence([PersistedLease(id: 5, ttl: 10, remainingTTL: 0)])
        try store.saveLease(PersistedLease(id: 2, ttl: 20, remainingTTL: 1))
        try store.saveLease(PersistedLease(id: 5, ttl: 10, remainingTTL: 4))
        #expect(try store.loadLeases() == [
            PersistedLease(id: 2, ttl: 20, remainingTTL: 1), PersistedLease(id: 5, ttl: 10, remainingTTL: 4),
        ])
        try store.deleteLease(id: 2)
        try store.deleteLease(id: 99)
        #expect(try store.loadLeases().map(\.id) == [5])
    }
}

@Suite struct LeaseDeadlineQueueTests {
    @Test func popsInDeadlineThenIDOrder() {
        var rng = SplitMix64(seed: 3)
        var queue = LeaseDeadlineQueue()
        var pushed: [LeaseDeadlineQueue.Entry] = []
        for _ in 0..<1000 {
            let entry = LeaseDeadlineQueue.Entry(deadline: Int64.random(in: 0..<50, using: &rng), id: Int64.random(in: 0..<100, using: &rng))
            queue.push(deadline: entry.deadline, id: entry.id)
            pushed.append(entry)
        }
        queue.retain { $0.id % 3 != 0 }
        let expected = pushed.filter { $0.id % 3 != 0 }.sorted { $0.precedes($1) }
        var popped: [LeaseDeadlineQueue.Entry] = []
        while let entry = queue.popFirst() { popped.append(entry) }
        #expect(popped == expected)
        #expect(queue.count == 0)
    }
}
