@testable import EtcdSnapshot
import Foundation
import MVCC
import Raft
import Testing

/// etcd's WAL as `etcdctl snapshot restore` writes it, built record by record.
private struct WALBuilder {
    var bytes: [UInt8] = []

    mutating func record(type: Int64, data: [UInt8]) {
        var rec: [UInt8] = []
        ProtobufFields.appendInt(1, type, to: &rec)
        ProtobufFields.appendInt(2, 12345, to: &rec)
        ProtobufFields.appendBytes(3, data, to: &rec)
        let padding = (8 - rec.count % 8) % 8
        var word = UInt64(rec.count)
        if padding > 0 { word |= (0x80 | UInt64(padding)) << 56 }
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: word >> (8 * UInt64(i)))) }
        bytes += rec + [UInt8](repeating: 0, count: padding)
    }

    mutating func metadata(node: UInt64, cluster: UInt64) {
        var m: [UInt8] = []
        ProtobufFields.appendInt(1, Int64(bitPattern: node), to: &m)
        ProtobufFields.appendInt(2, Int64(bitPattern: cluster), to: &m)
        record(type: 1, data: m)
    }

    mutating func entry(index: Int64, type: Int64, data: [UInt8]) {
        var e: [UInt8] = []
        ProtobufFields.appendInt(1, type, to: &e)
        ProtobufFields.appendInt(2, 1, to: &e)
        ProtobufFields.appendInt(3, index, to: &e)
        ProtobufFields.appendBytes(4, data, to: &e)
        record(type: 2, data: e)
    }

    mutating func addMember(index: Int64, id: UInt64, name: String, url: String) {
        var cc: [UInt8] = []
        ProtobufFields.appendInt(2, 0, to: &cc)
        ProtobufFields.appendInt(3, Int64(bitPattern: id), to: &cc)
        ProtobufFields.appendBytes(4, Array("{\"id\":\(id),\"peerURLs\":[\"\(url)\"],\"name\":\"\(name)\"}".utf8), to: &cc)
        entry(index: index, type: 1, data: cc)
    }

    func write(to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Followed by the preallocated zeros of a real segment.
        try Data(bytes + [UInt8](repeating: 0, count: 4096)).write(to: URL(fileURLWithPath: dir + "/0000000000000000-0000000000000000.wal"))
    }
}

@Suite("etcd WAL of a restore")
struct EtcdWALTests {
    private func restoreWAL() -> WALBuilder {
        var w = WALBuilder()
        w.record(type: 4, data: [])
        w.metadata(node: 0x58a8_8bf9_7839_8f80, cluster: 0x3d93_f952_f492_92c8)
        w.record(type: 5, data: [])
        w.addMember(index: 1, id: 0x43cc_f13c_9d84_d8d2, name: "n2", url: "http://127.0.0.1:2")
        w.addMember(index: 2, id: 0x58a8_8bf9_7839_8f80, name: "n1", url: "http://127.0.0.1:1")
        w.record(type: 3, data: [0x08, 0x01, 0x18, 0x02])
        return w
    }

    @Test func readsTheMembershipAndIDs() throws {
        let dir = NSTemporaryDirectory() + "etcd-wal-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try restoreWAL().write(to: dir)
        let r = try EtcdWAL.readRestored(directory: dir)
        #expect(r.memberID == 0x58a8_8bf9_7839_8f80 && r.clusterID == 0x3d93_f952_f492_92c8)
        #expect(r.members.map(\.name) == ["n2", "n1"])
        #expect(r.members[1].peerURLs == ["http://127.0.0.1:1"])
        #expect(r.lastIndex == 2)
    }

    @Test func refusesAWALWithClientRequests() throws {
        let dir = NSTemporaryDirectory() + "etcd-wal-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var w = restoreWAL()
        w.entry(index: 3, type: 0, data: [])  // a new leader's empty entry is fine
        w.entry(index: 4, type: 0, data: [1, 2, 3])
        try w.write(to: dir)
        #expect(throws: EtcdSnapshotError.self) { try EtcdWAL.readRestored(directory: dir) }
        do { _ = try EtcdWAL.readRestored(directory: dir) } catch { #expect("\(error)".contains("etcd member that has run")) }
    }

    /// Truncations and byte flips of a valid WAL give an error or a result, never a crash.
    @Test func damagedWALsNeverCrash() throws {
        let dir = NSTemporaryDirectory() + "etcd-wal-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = restoreWAL().bytes
        var rng = SplitMix64(seed: 15)
        for round in 0..<300 {
            var bytes = good
            if round % 3 == 0 {
                bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count))))
            } else {
                for _ in 0..<(1 + round % 4) {
                    bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            try? FileManager.default.removeItem(atPath: dir)
            var w = WALBuilder()
            w.bytes = bytes
            try w.write(to: dir)
            _ = try? EtcdWAL.readRestored(directory: dir)
        }
        // No segment at all.
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(throws: EtcdSnapshotError.self) { try EtcdWAL.readRestored(directory: dir) }
    }
}
