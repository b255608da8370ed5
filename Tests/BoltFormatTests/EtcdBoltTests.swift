import BoltFormat
@testable import EtcdSnapshot
import Foundation
import MVCC
import Storage
import Testing

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

private func options() -> Backend.Options {
    var o = Backend.Options()
    o.sync = false
    return o
}

private func dump(_ backend: Backend) throws -> [BackendBucket: [[UInt8]: [UInt8]]] {
    try backend.read { r in
        var out: [BackendBucket: [[UInt8]: [UInt8]]] = [:]
        for bucket in BackendBucket.allCases {
            var m: [[UInt8]: [UInt8]] = [:]
            try r.scan(bucket, from: [], to: nil) { k, v in
                m[Array(k)] = Array(v)
                return true
            }
            out[bucket] = m
        }
        return out
    }
}

@Suite struct EtcdBoltTests {
    /// A keyspace with puts, overwrites, deletes, leases, a compaction, members, an alarm and
    /// auth goes out as an etcd file and comes back identical (but for `currentRevision`,
    /// which etcd does not keep, and the member IDs' encoding, which round-trips).
    @Test func exportImportRoundTrip() throws {
        let dir = TempDir()
        let be = try Backend(path: dir.file("db"), options: options())
        let store = try MVCCStore(backend: be)
        for i in 0..<3000 { _ = try store.put(PutRequest(key: b("/registry/k\(i % 1000)"), value: b("value-\(i)"))) }
        _ = try store.deleteRange(DeleteRangeRequest(key: b("/registry/k1"), rangeEnd: b("/registry/k2")))
        try store.compact(1500)
        try be.put(.lease, key: PersistedLease.bucketKey(for: 0x1234), value: PersistedLease(id: 0x1234, ttl: 60, remainingTTL: 30).encoded())
        try be.put(.members, key: BigEndian.bytes(0x8e9e05c52164694d),
                   value: b(#"{"clientURLs":["http://127.0.0.1:2379"],"id":10276657743932975437,"isLearner":false,"name":"default","peerURLs":["http://localhost:2380"]}"#))
        try be.put(.membersRemoved, key: BigEndian.bytes(0xabc), value: [])
        try be.put(.alarm, key: BigEndian.bytes(0x8e9e05c52164694d) + [0, 0, 0, 1], value: [])
        try be.put(.auth, key: b("authEnabled"), value: [1])
        try be.put(.auth, key: b("authRevision"), value: BigEndian.bytes(9))
        try be.put(.authUsers, key: b("root"), value: [0x0A, 4] + b("root"))
        try be.put(.authRoles, key: b("root"), value: [0x0A, 4] + b("root"))
        try be.setConsistentIndex(77, term: 3)
        try be.commit()
        let before = try dump(be)

        let out = dir.file("snap.db")
        let status = try EtcdBolt.export(be, to: out, sync: false)
        let reader = try BoltReader(path: out)
        // The status computed while writing equals the one read back (etcdctl's algorithm).
        #expect(try EtcdBolt.status(reader) == status)
        #expect(status.revision == store.currentRevision)
        // etcd's encodings in the file.
        let meta = try reader.bucket(b("meta"))!
        var sched: [UInt8]?
        try reader.forEach(meta) { k, v, _ in
            if k == b("scheduledCompactRev") { sched = v }
            #expect(k != b("currentRevision"))
            return true
        }
        #expect(sched == BigEndian.bytes(1500) + [0x5F] + BigEndian.bytes(0))
        var memberKeys: [[UInt8]] = []
        try reader.forEach(try reader.bucket(b("members"))!) { k, _, _ in memberKeys.append(k); return true }
        #expect(memberKeys == [b("8e9e05c52164694d")])
        var cluster: [UInt8]?
        try reader.forEach(try reader.bucket(b("cluster"))!) { _, v, _ in cluster = v; return true }
        #expect(cluster == b("3.4.0"))

        let be2 = try Backend(path: dir.file("db2"), options: options())
        let stats = try EtcdBolt.importFile(reader, into: be2)
        #expect(stats.leases == 1 && stats.members == 1 && stats.alarms == 1 && stats.users == 1 && stats.roles == 1)
        var after = try dump(be2)
        var expected = before
        expected[.meta]![Array("currentRevision".utf8)] = nil
        after[.meta]![Array("currentRevision".utf8)] = nil
        #expect(after == expected)
        let store2 = try MVCCStore(backend: be2)
        #expect(store2.currentRevision == store.currentRevision)
        #expect(store2.compactRevision == 1500)
        try be.close()
        try be2.close()
    }

    @Test func keyValueCodecMatchesProtobuf() throws {
        let kv = KeyValue(key: b("k"), createRevision: 2, modRevision: 300, version: 1, value: b("v"), lease: -1)
        let bytes = EtcdBolt.encodeKeyValue(kv)
        #expect(Array(bytes.prefix(3)) == [0x0A, 1, 0x6B])
        #expect(try EtcdBolt.decodeKeyValue(bytes) == kv)
        // A tombstone is just the key.
        #expect(EtcdBolt.encodeKeyValue(KeyValue(key: b("k"))) == [0x0A, 1, 0x6B])
        #expect(throws: EtcdSnapshotError.self) { try EtcdBolt.decodeKeyValue([0x0A, 5, 1]) }
        #expect(throws: EtcdSnapshotError.self) { try EtcdBolt.decodeKeyValue([0x10]) }
        #expect(throws: EtcdSnapshotError.self) { try EtcdBolt.decodeKeyValue([0x10] + [UInt8](repeating: 0xFF, count: 11)) }
        #expect(throws: EtcdSnapshotError.self) { try EtcdBolt.decodeKeyValue([0x12, 1]) }  // field 2 as bytes
    }
}
