import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Reads what `etcdctl snapshot restore` writes into an etcd data directory's WAL
/// (`member/wal/*.wal`): the member and cluster IDs (metadata record) and the initial
/// membership (one conf-change entry per member, whose context is the member's JSON).
///
/// etcd's WAL file is a sequence of frames: an 8-byte little-endian length word (low 56 bits:
/// the record's length; when the top bit is set, bits 56-58 give the count of padding bytes
/// after it), then a walpb.Record {type 1, crc 2, data 3}. Record types: 1 metadata
/// (etcdserverpb.Metadata {NodeID 1, ClusterID 2}), 2 entry (raftpb.Entry {Type 1, Term 2,
/// Index 3, Data 4}), 3 hard state, 4 crc, 5 snapshot. A zero length word (the preallocated,
/// unused tail of the file) ends the log.
public enum EtcdWAL {
    public struct Member: Equatable, Sendable {
        public var id: UInt64
        public var name: String
        public var peerURLs: [String]
        public var isLearner: Bool
    }

    public struct Restored: Equatable, Sendable {
        public var memberID: UInt64
        public var clusterID: UInt64
        /// The members in the order of their conf-change entries.
        public var members: [Member]
        /// Highest entry index in the log.
        public var lastIndex: UInt64
    }

    /// The largest record accepted (a restore's records are a few hundred bytes).
    static let maxRecord = 16 << 20
    /// The most records read (a restore writes a few per member).
    static let maxRecords = 100_000

    /// The names of etcd's WAL segment files, `<seq 16 hex>-<index 16 hex>.wal`, in order.
    public static func segments(in directory: String) throws -> [String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        return names.filter { n in
            n.count == 37 && n.hasSuffix(".wal") && n.dropLast(4).enumerated().allSatisfy { i, c in i == 16 ? c == "-" : c.isHexDigit }
        }.sorted()
    }

    /// Reads the WAL in `directory`. Throws with a clear reason when it is not etcd's WAL, or
    /// when it holds anything but a restore's membership: client requests in it mean the
    /// data directory belongs to an etcd member that has run, whose newest data may be in the
    /// log rather than the db, so importing the db alone would lose writes.
    public static func readRestored(directory: String) throws -> Restored {
        let files = try segments(in: directory)
        guard !files.isEmpty else { throw EtcdSnapshotError("\(directory) holds no etcd WAL segment (<seq>-<index>.wal)") }
        var metadata: (UInt64, UInt64)?
        var members: [UInt64: Member] = [:]
        var order: [UInt64] = []
        var lastIndex: UInt64 = 0
        var requests = 0
        var records = 0
        for name in files {
            let path = directory + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw EtcdSnapshotError("cannot open \(path): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var offset: Int64 = 0
            func readExactly(_ n: Int) throws -> [UInt8]? {
                var out = [UInt8](repeating: 0, count: n)
                var done = 0
                while done < n {
                    let r = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, n - done, off_t(offset) + off_t(done)) }
                    if r < 0 && errno == EINTR { continue }
                    if r < 0 { throw EtcdSnapshotError("cannot read \(path): \(String(cString: strerror(errno)))") }
                    if r == 0 { return nil }
                    done += r
                }
                return out
            }
            while true {
                guard let word = try readExactly(8) else { break }
                var lenField: UInt64 = 0
                for (i, b) in word.enumerated() { lenField |= UInt64(b) << (8 * UInt64(i)) }
                if lenField == 0 { break }
                let length = Int(lenField & 0x00FF_FFFF_FFFF_FFFF)
                let padding = lenField & (1 << 63) != 0 ? Int((lenField >> 56) & 0x7) : 0
                guard length <= maxRecord else {
                    throw EtcdSnapshotError("\(path) at offset \(offset): record of \(length) bytes is not an etcd WAL record")
                }
                offset += 8
                guard let frame = try readExactly(length + padding) else {
                    throw EtcdSnapshotError("\(path) at offset \(offset): truncated record of \(length) bytes")
                }
                offset += Int64(length + padding)
                records += 1
                guard records <= maxRecords else { throw EtcdSnapshotError("\(path): more than \(maxRecords) records") }
                let record = Array(frame[..<length])
                var type: UInt64 = 0
                var data: [UInt8] = []
                try ProtoWire.fields(record, what: "\(path): walpb.Record") { field, value in
                    switch (field, value) {
                    case (1, .varint(let v)): type = v
                    case (3, .bytes(let r)): data = Array(record[r])
                    default: break
                    }
                }
                switch type {
                case 1:
                    var node: UInt64 = 0, cluster: UInt64 = 0
                    try ProtoWire.fields(data, what: "\(path): etcdserverpb.Metadata") { field, value in
                        if case .varint(let v) = value { if field == 1 { node = v } else if field == 2 { cluster = v } }
                    }
                    if let (n, c) = metadata, n != node || c != cluster {
                        throw EtcdSnapshotError("\(path): WAL segments name different members")
                    }
                    metadata = (node, cluster)
                case 2:
                    var entryType: UInt64 = 0, index: UInt64 = 0
                    var payload: [UInt8] = []
                    try ProtoWire.fields(data, what: "\(path): raftpb.Entry") { field, value in
                        switch (field, value) {
                        case (1, .varint(let v)): entryType = v
                        case (3, .varint(let v)): index = v
                        case (4, .bytes(let r)): payload = Array(data[r])
                        default: break
                        }
                    }
                    lastIndex = max(lastIndex, index)
                    if entryType == 1 {
                        try applyConfChange(payload, path: path, members: &members, order: &order)
                    } else if !payload.isEmpty {
                        requests += 1
                    }
                case 3, 4, 5:
                    break
                default:
                    throw EtcdSnapshotError("\(path) at offset \(offset): unknown WAL record type \(type); not etcd's WAL")
                }
            }
        }
        guard let (memberID, clusterID) = metadata, memberID != 0 else {
            throw EtcdSnapshotError("\(directory): the etcd WAL has no metadata record naming this member")
        }
        if requests > 0 {
            throw EtcdSnapshotError("\(directory): the etcd WAL holds \(requests) entries beyond a restore's membership, so this is the data directory of an etcd member that has run (its newest writes may be only in the WAL); take a snapshot with `etcdctl snapshot save` and restore it (`etcdctl snapshot restore` or `swetcdutl snapshot restore`) instead")
        }
        let list = order.compactMap { members[$0] }
        guard list.contains(where: { $0.id == memberID }) else {
            throw EtcdSnapshotError("\(directory): the etcd WAL names member \(String(memberID, radix: 16)) but its membership does not contain it")
        }
        return Restored(memberID: memberID, clusterID: clusterID, members: list, lastIndex: lastIndex)
    }

    /// raftpb.ConfChange {ID 1, Type 2, NodeID 3, Context 4}; types: 0 add, 1 remove, 2
    /// update, 3 add learner. The context of an add is etcd's member JSON.
    private static func applyConfChange(_ bytes: [UInt8], path: String, members: inout [UInt64: Member], order: inout [UInt64]) throws {
        var type: UInt64 = 0, node: UInt64 = 0
        var context: [UInt8] = []
        try ProtoWire.fields(bytes, what: "\(path): raftpb.ConfChange") { field, value in
            switch (field, value) {
            case (2, .varint(let v)): type = v
            case (3, .varint(let v)): node = v
            case (4, .bytes(let r)): context = Array(bytes[r])
            default: break
            }
        }
        switch type {
        case 0, 2, 3:
            let m: EtcdBolt.EtcdMember
            do { m = try JSONDecoder().decode(EtcdBolt.EtcdMember.self, from: Data(context)) } catch {
                throw EtcdSnapshotError("\(path): conf change for member \(String(node, radix: 16)) has no member JSON: \(error)")
            }
            guard m.id == node, node != 0 else {
                throw EtcdSnapshotError("\(path): conf change for member \(String(node, radix: 16)) names member \(String(m.id, radix: 16))")
            }
            if members[node] == nil { order.append(node) }
            members[node] = Member(id: node, name: m.name ?? "", peerURLs: m.peerURLs ?? [], isLearner: type == 3 || m.isLearner == true)
        case 1:
            members[node] = nil
            order.removeAll { $0 == node }
        default:
            throw EtcdSnapshotError("\(path): conf change of unknown type \(type)")
        }
    }
}
