public import BoltFormat
import Foundation
public import LMDBBackend
import MVCC

/// Conversion between swetcd's backend (LMDB, our encodings) and etcd's backend file (bbolt
/// with etcd's buckets and encodings), the format of `etcdctl snapshot save`.
///
/// | etcd bucket | etcd key / value | ours |
/// | --- | --- | --- |
/// | `key` | revision key (main 8 BE, `_`, sub 8 BE, `t` for a tombstone) / mvccpb.KeyValue | same key / our KeyValue encoding |
/// | `meta` | `consistent_index`, `term` 8 BE; `scheduledCompactRev`, `finishedCompactRev` as 17-byte revision keys | same names, compact revisions 8 BE, plus `currentRevision` |
/// | `lease` | ID 8 BE / leasepb.Lease | identical |
/// | `members` | ID in hex / JSON {id, peerURLs, isLearner, name, clientURLs} | ID 8 BE / JSON |
/// | `members_removed` | ID in hex / "removed" | ID 8 BE / empty |
/// | `cluster` | `clusterVersion` / "3.4.0" | (none) |
/// | `alarm` | etcdserverpb.AlarmMember / empty | member ID 8 BE + type 4 BE / empty |
/// | `auth`, `authUsers`, `authRoles` | `authEnabled` 1 byte, `authRevision` 8 BE; name / authpb User, Role | identical |
public enum EtcdBolt {
    /// The cluster version written into the `cluster` bucket (etcd 3.4 reads it at restore).
    public static let clusterVersion = "3.4.0"

    /// What `etcdctl snapshot status` reports for a file.
    public struct Status: Equatable, Sendable {
        /// CRC-32C over every bucket's name, then its keys and values, in file order.
        public var hash: UInt32
        /// Main revision of the last `key`-bucket key.
        public var revision: Int64
        /// Keys in all buckets.
        public var totalKey: Int
        /// Bytes of the bbolt file.
        public var totalSize: Int64
    }

    // MARK: export

    /// Writes `backend`'s state (its committed data and batch) as an etcd backend file at
    /// `path` (which must not exist). Use a backend nobody writes to (e.g. a private copy):
    /// the whole file is written from one read view.
    @discardableResult
    public static func export(_ backend: Backend, to path: String, sync: Bool = true) throws -> Status {
        let writer = try BoltWriter(path: path)
        var crc = CRC32C()
        var revision: Int64 = 0
        var total = 0
        let root = writer.makeBucket()
        do {
            try backend.read { r in
                // Buckets in byte order of their names, as they sit in the root bucket.
                let names = ["alarm", "auth", "authRoles", "authUsers", "cluster", "key", "lease", "members", "members_removed", "meta"]
                for name in names {
                    let b = writer.makeBucket()
                    crc.update(Array(name.utf8))
                    func put(_ k: [UInt8], _ v: [UInt8]) throws {
                        try b.put(k, v)
                        crc.update(k)
                        crc.update(v)
                        total += 1
                    }
                    switch name {
                    case "cluster":
                        try put(Array("clusterVersion".utf8), Array(clusterVersion.utf8))
                    case "key":
                        try r.scan(.key, from: [], to: nil) { k, v in
                            let key = Array(k)
                            guard let main = revisionMain(key) else { throw EtcdSnapshotError("malformed key-bucket key of \(k.count) bytes") }
                            let kv = try KeyValue(backendValue: Array(v))
                            try put(key, encodeKeyValue(kv))
                            revision = main
                            return true
                        }
                    case "meta":
                        var entries: [([UInt8], [UInt8])] = []
                        try r.scan(.meta, from: [], to: nil) { k, v in
                            let key = Array(k), value = Array(v)
                            switch String(decoding: key, as: UTF8.self) {
                            case "scheduledCompactRev", "finishedCompactRev":
                                guard let rev = BigEndian.uint64(value) else { throw EtcdSnapshotError("meta value of \(value.count) bytes") }
                                entries.append((key, BigEndian.bytes(rev) + [0x5F] + BigEndian.bytes(0)))
                            case "currentRevision":
                                break  // etcd derives it from the key bucket
                            default:
                                entries.append((key, value))
                            }
                            return true
                        }
                        for (k, v) in entries.sorted(by: { $0.0.lexicographicallyPrecedes($1.0) }) { try put(k, v) }
                    case "members", "members_removed":
                        var entries: [([UInt8], [UInt8])] = []
                        let removed = name == "members_removed"
                        try r.scan(removed ? .membersRemoved : .members, from: [], to: nil) { k, v in
                            guard let id = BigEndian.uint64(Array(k)) else { throw EtcdSnapshotError("member key of \(k.count) bytes") }
                            let key = Array(String(id, radix: 16).utf8)
                            entries.append((key, removed ? Array("removed".utf8) : try etcdMemberJSON(Array(v))))
                            return true
                        }
                        for (k, v) in entries.sorted(by: { $0.0.lexicographicallyPrecedes($1.0) }) { try put(k, v) }
                    case "alarm":
                        var entries: [[UInt8]] = []
                        try r.scan(.alarm, from: [], to: nil) { k, _ in
                            guard k.count == 12, let id = BigEndian.uint64(Array(k[0..<8])) else {
                                throw EtcdSnapshotError("alarm key of \(k.count) bytes")
                            }
                            let type = UInt64(k[8]) << 24 | UInt64(k[9]) << 16 | UInt64(k[10]) << 8 | UInt64(k[11])
                            var m: [UInt8] = []
                            ProtobufFields.appendInt(1, Int64(bitPattern: id), to: &m)
                            ProtobufFields.appendInt(2, Int64(type), to: &m)
                            entries.append(m)
                            return true
                        }
                        for k in entries.sorted(by: { $0.lexicographicallyPrecedes($1) }) { try put(k, []) }
                    default:
                        let bucket: BackendBucket = ["auth": .auth, "authRoles": .authRoles, "authUsers": .authUsers, "lease": .lease][name]!
                        try r.scan(bucket, from: [], to: nil) { k, v in
                            try put(Array(k), Array(v))
                            return true
                        }
                    }
                    try root.putBucket(Array(name.utf8), b)
                }
            }
            try writer.finish(root: root, sync: sync)
        } catch {
            unlink(path)
            throw error
        }
        return Status(hash: crc.value, revision: revision, totalKey: total, totalSize: writer.fileSize)
    }

    static func revisionMain(_ k: [UInt8]) -> Int64? {
        guard k.count == 17 || (k.count == 18 && k[17] == 0x74), k[8] == 0x5F, let main = BigEndian.uint64(Array(k[0..<8])) else { return nil }
        return Int64(bitPattern: main)
    }

    /// mvccpb.KeyValue {key 1, create_revision 2, mod_revision 3, version 4, value 5, lease 6}.
    static func encodeKeyValue(_ kv: KeyValue) -> [UInt8] { kv.etcdEncoded() }

    static func decodeKeyValue(_ bytes: [UInt8]) throws -> KeyValue {
        var kv = KeyValue(key: [])
        try ProtoWire.fields(bytes, what: "mvccpb.KeyValue") { field, value in
            switch (field, value) {
            case (1, .bytes(let r)): kv.key = Array(bytes[r])
            case (2, .varint(let v)): kv.createRevision = Int64(bitPattern: v)
            case (3, .varint(let v)): kv.modRevision = Int64(bitPattern: v)
            case (4, .varint(let v)): kv.version = Int64(bitPattern: v)
            case (5, .bytes(let r)): kv.value = Array(bytes[r])
            case (6, .varint(let v)): kv.lease = Int64(bitPattern: v)
            case (1...6, _): throw EtcdSnapshotError("mvccpb.KeyValue: field \(field) has the wrong wire type")
            default: break
            }
        }
        return kv
    }

    /// etcd's member JSON (membership.Member) and ours.
    struct EtcdMember: Codable {
        var id: UInt64
        var peerURLs: [String]?
        var isLearner: Bool?
        var name: String?
        var clientURLs: [String]?
    }

    struct OurMember: Codable {
        var id: UInt64
        var name: String
        var peerURLs: [String]
        var isLearner: Bool
        var clientURLs: [String]
    }

    static func etcdMemberJSON(_ ours: [UInt8]) throws -> [UInt8] {
        let m: EtcdMember
        do { m = try JSONDecoder().decode(EtcdMember.self, from: Data(ours)) } catch {
            throw EtcdSnapshotError("member record is not JSON: \(error)")
        }
        let out = EtcdMember(id: m.id, peerURLs: m.peerURLs ?? [], isLearner: m.isLearner == true ? true : nil,
                             name: (m.name ?? "").isEmpty ? nil : m.name,
                             clientURLs: (m.clientURLs ?? []).isEmpty ? nil : m.clientURLs)
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(out))
    }

    static func ourMemberJSON(_ etcd: [UInt8], id: UInt64) throws -> [UInt8] {
        let m: EtcdMember
        do { m = try JSONDecoder().decode(EtcdMember.self, from: Data(etcd)) } catch {
            throw EtcdSnapshotError("member \(String(id, radix: 16)): record is not JSON: \(error)")
        }
        guard m.id == id else { throw EtcdSnapshotError("member \(String(id, radix: 16)): record names member \(String(m.id, radix: 16))") }
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(OurMember(id: id, name: m.name ?? "", peerURLs: m.peerURLs ?? [], isLearner: m.isLearner ?? false,
                                            clientURLs: m.clientURLs ?? [])))
    }

    // MARK: status and import

    /// etcdctl's `snapshot status` of a bbolt file (after a full consistency check).
    public static func status(_ reader: BoltReader) throws -> Status {
        _ = try reader.check()
        var crc = CRC32C()
        var revision: Int64 = 0
        var total = 0
        try reader.forEach(reader.root) { name, _, nested in
            guard let nested else { throw EtcdSnapshotError("top-level key \(printable(name)) is not a bucket") }
            crc.update(name)
            let isKey = name == Array("key".utf8)
            try reader.forEach(nested) { k, v, _ in
                crc.update(k)
                crc.update(v ?? [])
                if isKey, k.count >= 8 { revision = Int64(bitPattern: BigEndian.uint64(Array(k[0..<8]))!) }
                total += 1
                return true
            }
            return true
        }
        return Status(hash: crc.value, revision: revision, totalKey: total,
                      totalSize: Int64(reader.meta.pageCount) * Int64(reader.pageSize))
    }

    /// What an import brought in.
    public struct ImportStats: Equatable, Sendable {
        public var keys = 0
        public var revision: Int64 = 0
        public var leases = 0
        public var members = 0
        public var alarms = 0
        public var users = 0
        public var roles = 0
    }

    /// Copies an etcd backend file into `backend` (which should be empty), converting the
    /// encodings. Every entry is checked; anything malformed throws with what and where.
    /// Buckets swetcd does not keep (`cluster`, and any unknown one) are skipped.
    @discardableResult
    public static func importFile(_ reader: BoltReader, into backend: Backend) throws -> ImportStats {
        _ = try reader.check()
        var stats = ImportStats()
        try reader.forEach(reader.root) { name, _, nested in
            guard let nested else { throw EtcdSnapshotError("top-level key \(printable(name)) is not a bucket") }
            let bucketName = String(decoding: name, as: UTF8.self)
            try reader.forEach(nested) { k, v, sub in
                guard let v, sub == nil else {
                    throw EtcdSnapshotError("bucket \(bucketName): nested bucket \(printable(k)) is not expected")
                }
                try importEntry(bucketName, k, v, into: backend, stats: &stats)
                return true
            }
            return true
        }
        try backend.commit()
        return stats
    }

    static func printable(_ b: [UInt8]) -> String {
        b.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) ? "\"\(String(decoding: b, as: UTF8.self))\"" : "0x" + b.map { String(format: "%02x", $0) }.joined()
    }

    private static func importEntry(_ bucket: String, _ k: [UInt8], _ v: [UInt8], into backend: Backend, stats: inout ImportStats) throws {
        func where_() -> String { "bucket \(bucket), key \(printable(k))" }
        switch bucket {
        case "key":
            guard let main = revisionMain(k) else { throw EtcdSnapshotError("\(where_()): not a revision key") }
            let kv = try decodeKeyValue(v)
            guard !kv.key.isEmpty else { throw EtcdSnapshotError("\(where_()): KeyValue without a key") }
            if k.count == 18 {
                try backend.put(.key, key: k, value: KeyValue(key: kv.key).backendValue)
            } else {
                try backend.put(.key, key: k, value: kv.backendValue)
                stats.keys += 1
            }
            stats.revision = max(stats.revision, main)
        case "meta":
            switch String(decoding: k, as: UTF8.self) {
            case "consistent_index", "term":
                guard v.count == 8 else { throw EtcdSnapshotError("\(where_()): \(v.count) bytes, not 8") }
                try backend.put(.meta, key: k, value: v)
            case "scheduledCompactRev", "finishedCompactRev":
                guard v.count == 17 || v.count == 8 else { throw EtcdSnapshotError("\(where_()): \(v.count) bytes, not a revision") }
                let main = BigEndian.uint64(Array(v[0..<8]))!
                guard main <= UInt64(Int64.max / 2) else { throw EtcdSnapshotError("\(where_()): revision \(main) out of range") }
                try backend.put(.meta, key: k, value: BigEndian.bytes(main))
            default:
                break  // etcd 3.5's confState, storageVersion, ...: not ours
            }
        case "lease":
            guard k.count == 8 else { throw EtcdSnapshotError("\(where_()): lease ID of \(k.count) bytes") }
            let lease: PersistedLease
            do { lease = try PersistedLease(decoding: v) } catch { throw EtcdSnapshotError("\(where_()): \(error)") }
            guard PersistedLease.bucketKey(for: lease.id) == k else { throw EtcdSnapshotError("\(where_()): record holds lease \(lease.id)") }
            try backend.put(.lease, key: k, value: v)
            stats.leases += 1
        case "members", "members_removed":
            guard let s = String(bytes: k, encoding: .utf8), let id = UInt64(s, radix: 16), id != 0 else {
                throw EtcdSnapshotError("\(where_()): not a member ID")
            }
            if bucket == "members" {
                try backend.put(.members, key: BigEndian.bytes(id), value: try ourMemberJSON(v, id: id))
                stats.members += 1
            } else {
                try backend.put(.membersRemoved, key: BigEndian.bytes(id), value: [])
            }
        case "alarm":
            var member: UInt64 = 0, type: UInt64 = 0
            try ProtoWire.fields(k, what: "\(where_()): AlarmMember") { field, value in
                if case .varint(let x) = value { if field == 1 { member = x } else if field == 2 { type = x } }
            }
            guard type == 1 || type == 2 else { throw EtcdSnapshotError("\(where_()): unknown alarm type \(type)") }
            try backend.put(.alarm, key: BigEndian.bytes(member) + [0, 0, 0, UInt8(type)], value: [])
            stats.alarms += 1
        case "auth":
            switch String(decoding: k, as: UTF8.self) {
            case "authEnabled":
                guard v.count == 1 else { throw EtcdSnapshotError("\(where_()): \(v.count) bytes, not 1") }
                try backend.put(.auth, key: k, value: v)
            case "authRevision":
                guard v.count == 8 else { throw EtcdSnapshotError("\(where_()): \(v.count) bytes, not 8") }
                try backend.put(.auth, key: k, value: v)
            default:
                break
            }
        case "authUsers", "authRoles":
            guard k.count <= backend.maxKeySize else { throw EtcdSnapshotError("\(where_()): name longer than \(backend.maxKeySize) bytes") }
            try backend.put(bucket == "authUsers" ? .authUsers : .authRoles, key: k, value: v)
            if bucket == "authUsers" { stats.users += 1 } else { stats.roles += 1 }
        default:
            break  // cluster (the version is the running binary's) and buckets we do not keep
        }
    }
}
