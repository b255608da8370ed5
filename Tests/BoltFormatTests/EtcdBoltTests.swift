import BoltFormat
@testable import EtcdSnapshot
import Foundation
import LMDBBackend
import MVCC
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

    /// The server's path: a copy beside the db converted to bbolt; the copy is gone afterwards,
    /// and a file system without room (here: a reserve larger than any disk) refuses up front.
    @Test func makeSnapshotBesideTheDbAndRefuseWithoutRoom() throws {
        let dir = TempDir()
        let be = try Backend(path: dir.file("db"), options: options())
        let store = try MVCCStore(backend: be)
        for i in 0..<100 { _ = try store.put(PutRequest(key: b("k\(i)"), value: b("v"))) }
        let before = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        let (path, status) = try EtcdBolt.makeSnapshot(of: be, in: dir.path)
        #expect(status.revision == 101)
        #expect(try EtcdBolt.status(try BoltReader(path: path)) == status)
        unlink(path)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == before)
        let e = #expect(throws: EtcdSnapshotError.self) { try EtcdBolt.makeSnapshot(of: be, in: dir.path, reserve: 1 << 60) }
        #expect(e?.message.hasPrefix("not enough disk space for a snapshot") == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == before)
        // Leftovers of a crash are removed at start.
        FileManager.default.createFile(atPath: dir.file(EtcdBolt.tempPrefix + "x.db"), contents: Data([1]))
        EtcdBolt.removeStaleSnapshots(in: dir.path)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == before)
        try be.close()
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

/// Seeded damage to an etcd-format file behind valid meta checksums, imported into a fresh
/// backend: every trial imports or throws (a trap would kill the run), and both happen.
/// `ETCD_IMPORT_FUZZ_SEED` / `ETCD_IMPORT_FUZZ_TRIALS` replay or lengthen it.
@Suite struct EtcdImportFuzzTests {
    @Test(.timeLimit(.minutes(3))) func damagedEtcdFilesImportOrFailCleanly() throws {
        let env = ProcessInfo.processInfo.environment
        let seed = UInt64(env["ETCD_IMPORT_FUZZ_SEED"] ?? "") ?? 1
        let trials = Int(env["ETCD_IMPORT_FUZZ_TRIALS"] ?? "") ?? 150
        var rng = SeededRandom(seed: seed)
        let dir = TempDir()
        let be = try Backend(path: dir.file("src"), options: options())
        let store = try MVCCStore(backend: be)
        for i in 0..<200 { _ = try store.put(PutRequest(key: b("/k\(i % 70)"), value: b("v\(i)"), lease: 0)) }
        _ = try store.deleteRange(DeleteRangeRequest(key: b("/k1"), rangeEnd: b("/k2")))
        try be.put(.lease, key: PersistedLease.bucketKey(for: 5), value: PersistedLease(id: 5, ttl: 9, remainingTTL: 0).encoded())
        try be.put(.members, key: BigEndian.bytes(7), value: b(#"{"id":7,"name":"a","peerURLs":["http://x:1"]}"#))
        try be.put(.alarm, key: BigEndian.bytes(7) + [0, 0, 0, 2], value: [])
        try be.commit()
        try EtcdBolt.export(be, to: dir.file("etcd.db"), sync: false)
        try be.close()
        let original = Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("etcd.db"))))
        var imported = 0, refused = 0
        for trial in 0..<trials {
            var bytes = original
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                // Damage inside pages (not the metas): keys, values, element fields.
                let o = Int.random(in: 8192..<bytes.count, using: &rng)
                bytes[o] = Int.random(in: 0..<2, using: &rng) == 0 ? bytes[o] ^ (1 << UInt8.random(in: 0...7, using: &rng))
                                                                  : UInt8.random(in: 0...255, using: &rng)
            }
            let target = try Backend(path: dir.file("t\(trial)"), options: options())
            defer {
                target.abandon()
                unlink(dir.file("t\(trial)"))
                unlink(dir.file("t\(trial)-lock"))
            }
            do {
                let reader = try BoltReader(bytes: bytes)
                try EtcdBolt.importFile(reader, into: target)
                _ = try MVCCStore(backend: target)
                imported += 1
            } catch {
                refused += 1
            }
        }
        print("etcd import fuzz seed \(seed): \(imported) imported, \(refused) refused")
        #expect(imported > 0 && refused > 0)
    }
}
