import Foundation
import LMDBBackend
import Raft
import ServerFormat
import Storage
import Testing

/// The one encoding of member records, membership changes and the bootstrap log that the
/// server and `swetcdutl snapshot restore` share: what is written reads back the same.
@Suite("ServerFormat: member records, membership changes, bootstrap log")
struct ServerFormatTests {
    let a = MemberRecord(id: 0x8e9e05c52164694d, name: "a", peerURLs: ["http://10.0.0.1:2380", "https://a.example:2380"])
    var learner: MemberRecord {
        var m = MemberRecord(id: 2, name: "", peerURLs: ["http://10.0.0.2:2380"], isLearner: true)
        m.clientURLs = ["http://10.0.0.2:2379"]
        return m
    }

    @Test func memberRecordRoundTrips() throws {
        for m in [a, learner, MemberRecord(id: 0, name: "", peerURLs: [])] {
            #expect(try MemberRecord(decoding: m.encoded()) == m)
        }
        // JSON with sorted keys, every field present.
        let text = String(decoding: try learner.encoded(), as: UTF8.self)
        #expect(text.hasPrefix(#"{"clientURLs":["#))
        #expect(text.contains(#""id":2,"isLearner":true,"name":"","peerURLs":["#))
        // Records written before learners and client URLs existed still read.
        let old = try MemberRecord(decoding: Array(#"{"id":7,"name":"b","peerURLs":["http://x:1"]}"#.utf8))
        #expect(old == MemberRecord(id: 7, name: "b", peerURLs: ["http://x:1"]))
        #expect(old.clientURLs.isEmpty && !old.isLearner)
        #expect(throws: (any Error).self) { try MemberRecord(decoding: Array(#"{"id":7}"#.utf8)) }
    }

    @Test func memberKeyIsTheIDBigEndian() {
        #expect(MemberRecord.key(0x0102_0304_0506_0708) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(MemberRecord.key(a.id) == BigEndian.bytes(a.id))
    }

    @Test func membershipChangeRoundTripsThroughAConfChange() throws {
        let cases: [(MembershipChange, ConfChangeType, UInt64)] = [
            (MembershipChange(operation: .add, member: a), .addNode, a.id),
            (MembershipChange(operation: .add, member: learner), .addLearnerNode, learner.id),
            (MembershipChange(operation: .promote, member: learner), .addNode, learner.id),
            // An update is a Raft no-op: node 0.
            (MembershipChange(operation: .update, member: a), .addNode, 0),
            (MembershipChange(operation: .remove, member: a), .removeNode, a.id),
        ]
        for (change, type, node) in cases {
            let cc = try ConfChange(decoding: change.confChange(requestID: 9).encode())
            #expect(cc.type == type && cc.nodeID == node && cc.id == 9)
            #expect(try MembershipChange(decoding: cc.context) == change)
        }
        #expect(throws: (any Error).self) { try MembershipChange(decoding: Array("{not json".utf8)) }
    }

    /// Written to a real WAL, closed, reopened: the committed entries are one `add` per member
    /// in ID order at term 1, and the hard state commits them all.
    @Test func bootstrapLogRoundTripsThroughTheWAL() throws {
        var template = Array("\(NSTemporaryDirectory())/server-format-XXXXXX".utf8CString)
        let path = try #require(template.withUnsafeMutableBufferPointer { buf in mkdtemp(buf.baseAddress!).map { String(cString: $0) } })
        defer { try? FileManager.default.removeItem(atPath: path) }
        let members = [learner, a, MemberRecord(id: 1, name: "c", peerURLs: ["http://10.0.0.3:2380"])]
        let meta = WALMetadata(memberID: a.id, clusterID: 42)

        let storage = try DurableRaftStorage.open(DataDir(path: path), newMember: meta)
        try BootstrapLog.write(storage, members: members)
        try storage.close()

        let reopened = try DurableRaftStorage.open(DataDir(path: path), newMember: meta)
        defer { try? reopened.close() }
        #expect(reopened.recovery.hardState == HardState(term: 1, vote: 0, commit: 3))
        let entries = try reopened.committedEntries(after: 0)
        #expect(entries == BootstrapLog.entries(members: members))
        #expect(entries.map(\.index) == [1, 2, 3] && entries.allSatisfy { $0.term == 1 && $0.type == .confChange })
        let changes = try entries.map { try MembershipChange(decoding: ConfChange(decoding: $0.data).context) }
        #expect(changes == members.sorted { $0.id < $1.id }.map { MembershipChange(operation: .add, member: $0) })
    }
}
