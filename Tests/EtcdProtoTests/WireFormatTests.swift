import EtcdProto
import Foundation
import SwiftProtobuf
import Testing

/// Binary encoding: round trips, plus byte strings worked out by hand from etcd's
/// field numbers, so a renumbered field cannot go unnoticed.
@Suite("Wire format")
struct WireFormatTests {
    static func bytes(_ hex: String) -> Data {
        var data = Data()
        var chars = hex.filter { !$0.isWhitespace }.makeIterator()
        while let high = chars.next(), let low = chars.next() {
            data.append(UInt8(String([high, low]), radix: 16)!)
        }
        return data
    }

    @Test("A range response survives a binary round trip")
    func rangeResponseBinary() throws {
        var response = Etcdserverpb_RangeResponse()
        response.header.clusterID = 14_841_639_068_965_178_418
        response.header.memberID = 10_276_657_743_932_975_437
        response.header.revision = 4
        response.header.raftTerm = 2
        var kv = Mvccpb_KeyValue()
        kv.key = Data("foo".utf8)
        kv.value = Data("bar".utf8)
        kv.createRevision = 4
        kv.modRevision = 4
        kv.version = 1
        kv.lease = 7_587_862_072_907_584_516
        response.kvs = [kv, kv]
        response.more = true
        response.count = 2

        let encoded: Data = try response.serializedBytes()
        let decoded = try Etcdserverpb_RangeResponse(serializedBytes: encoded)
        #expect(decoded == response)
        #expect(decoded.kvs.count == 2)
        #expect(decoded.kvs.first?.value == Data("bar".utf8))
    }

    @Test("Put request bytes: key is field 1, value field 2, lease field 3, prev_kv field 4")
    func putRequestBytes() throws {
        var put = Etcdserverpb_PutRequest()
        put.key = Data("foo".utf8)
        put.value = Data("bar".utf8)
        put.lease = 5
        put.prevKv = true
        let encoded: Data = try put.serializedBytes()
        #expect(encoded == Self.bytes("0a03666f6f 1203626172 1805 2001"))
    }

    @Test("Compare bytes: mod_revision is oneof field 6, range_end is field 64")
    func compareBytes() throws {
        var compare = Etcdserverpb_Compare()
        compare.result = .notEqual
        compare.target = .mod
        compare.key = Data("a".utf8)
        compare.modRevision = 9
        compare.rangeEnd = Data("b".utf8)
        let encoded: Data = try compare.serializedBytes()
        // 08 03 (result) 10 02 (target) 1a 01 61 (key) 30 09 (mod_revision) 82 04 01 62 (range_end, tag 514)
        #expect(encoded == Self.bytes("0803 1002 1a0161 3009 82040162"))
        #expect(try Etcdserverpb_Compare(serializedBytes: encoded) == compare)
    }

    @Test("Watch response bytes: events are field 11; a nested txn survives a round trip")
    func watchAndNestedTxn() throws {
        var response = Etcdserverpb_WatchResponse()
        response.watchID = 1
        var event = Mvccpb_Event()
        event.type = .delete
        event.kv.key = Data("k".utf8)
        response.events = [event]
        let encoded: Data = try response.serializedBytes()
        // 10 01 (watch_id) 5a 07 [08 01 (type) 12 03 [0a 01 6b]] (events)
        #expect(encoded == Self.bytes("1001 5a07 0801 1203 0a016b"))

        var inner = Etcdserverpb_TxnRequest()
        var put = Etcdserverpb_RequestOp()
        put.requestPut.key = Data("x".utf8)
        inner.success = [put]
        var outer = Etcdserverpb_TxnRequest()
        var nested = Etcdserverpb_RequestOp()
        nested.requestTxn = inner
        outer.failure = [nested]
        let outerBytes: Data = try outer.serializedBytes()
        #expect(try Etcdserverpb_TxnRequest(serializedBytes: outerBytes) == outer)
    }

    @Test("3.5 additions: status, member list, downgrade, auth status")
    func additions() throws {
        var status = Etcdserverpb_StatusResponse()
        status.dbSizeInUse = 4096
        status.isLearner = true
        status.errors = ["memberID:1 alarm:NOSPACE "]
        let statusBytes: Data = try status.serializedBytes()
        // 42 .. (errors, field 8) 48 80 20 (dbSizeInUse, field 9) 50 01 (isLearner, field 10)
        #expect(statusBytes.suffix(5) == Self.bytes("488020 5001"))
        #expect(try Etcdserverpb_StatusResponse(serializedBytes: statusBytes) == status)

        var list = Etcdserverpb_MemberListRequest()
        list.linearizable = true
        #expect(try list.serializedBytes() == Self.bytes("0801"))

        var downgrade = Etcdserverpb_DowngradeRequest()
        downgrade.action = .cancel
        downgrade.version = "3.4"
        #expect(try downgrade.serializedBytes() == Self.bytes("0802 1203332e34"))

        var auth = Etcdserverpb_AuthStatusResponse()
        auth.enabled = true
        auth.authRevision = 3
        #expect(try auth.serializedBytes() == Self.bytes("1001 1803"))
        #expect(Etcdserverpb_Maintenance.Method.Downgrade.descriptor.fullyQualifiedMethod == "etcdserverpb.Maintenance/Downgrade")
        #expect(Etcdserverpb_Auth.Method.AuthStatus.descriptor.fullyQualifiedMethod == "etcdserverpb.Auth/AuthStatus")
    }

    @Test("Service and method names are etcd's")
    func serviceNames() {
        #expect(Etcdserverpb_KV.descriptor.fullyQualifiedService == "etcdserverpb.KV")
        #expect(Etcdserverpb_Watch.Method.Watch.descriptor.fullyQualifiedMethod == "etcdserverpb.Watch/Watch")
        #expect(Etcdserverpb_Lease.Method.LeaseKeepAlive.descriptor.fullyQualifiedMethod == "etcdserverpb.Lease/LeaseKeepAlive")
        #expect(Etcdserverpb_Maintenance.Method.HashKV.descriptor.fullyQualifiedMethod == "etcdserverpb.Maintenance/HashKV")
        #expect(Etcdserverpb_Cluster.Method.MemberPromote.descriptor.fullyQualifiedMethod == "etcdserverpb.Cluster/MemberPromote")
        #expect(V3lockpb_Lock.Method.Unlock.descriptor.fullyQualifiedMethod == "v3lockpb.Lock/Unlock")
        #expect(V3electionpb_Election.Method.Observe.descriptor.fullyQualifiedMethod == "v3electionpb.Election/Observe")
        #expect(Swetcd_Peer_Peer.Method.Messages.descriptor.fullyQualifiedMethod == "swetcd.peer.Peer/Messages")
    }

    @Test("Auth and lock/election messages round-trip")
    func authAndConcurrency() throws {
        var permission = Authpb_Permission()
        permission.permType = .readwrite
        permission.key = Data("/a".utf8)
        permission.rangeEnd = Data("/b".utf8)
        var role = Authpb_Role()
        role.name = Data("admin".utf8)
        role.keyPermission = [permission]
        #expect(try Authpb_Role(serializedBytes: try role.serializedBytes() as Data) == role)

        var campaign = V3electionpb_CampaignResponse()
        campaign.header.revision = 9
        campaign.leader.name = Data("e".utf8)
        campaign.leader.key = Data("e/694d7b1f0a3a2a04".utf8)
        campaign.leader.rev = 9
        campaign.leader.lease = 0x694d_7b1f_0a3a_2a04
        #expect(try V3electionpb_CampaignResponse(serializedBytes: try campaign.serializedBytes() as Data) == campaign)

        var lock = V3lockpb_LockRequest()
        lock.name = Data("l".utf8)
        lock.lease = 42
        #expect(try lock.serializedBytes() == Self.bytes("0a016c 102a"))
    }

    @Test("Peer protocol messages round-trip; the snapshot stream is a header then chunks")
    func peerMessages() throws {
        var batch = Swetcd_Peer_MessageBatch()
        batch.clusterID = 0xcdf8_1819_4e3a_8c32
        batch.from = 1
        batch.to = 2
        batch.messages = [Data([1, 2, 3]), Data(), Data(repeating: 0xff, count: 300)]
        #expect(try Swetcd_Peer_MessageBatch(serializedBytes: try batch.serializedBytes() as Data) == batch)

        var header = Swetcd_Peer_SnapshotHeader()
        header.clusterID = batch.clusterID
        header.from = 1
        header.to = 3
        header.index = 1000
        header.term = 4
        header.size = 1 << 20
        header.sha256 = Data(repeating: 0xab, count: 32)
        var first = Swetcd_Peer_SnapshotPart()
        first.header = header
        var chunk = Swetcd_Peer_SnapshotPart()
        chunk.chunk = Data(repeating: 7, count: 64)
        for part in [first, chunk] {
            #expect(try Swetcd_Peer_SnapshotPart(serializedBytes: try part.serializedBytes() as Data) == part)
        }
        #expect(first.part == .header(header))

        var hello = Swetcd_Peer_Hello()
        hello.protocolVersion = PeerProtocol.version
        hello.clusterID = 9
        var refusal = Swetcd_Peer_HelloReply()
        refusal.accepted = false
        refusal.reason = "cluster ID mismatch"
        refusal.clusterID = 10
        #expect(try Swetcd_Peer_HelloReply(serializedBytes: try refusal.serializedBytes() as Data) == refusal)
        #expect(PeerProtocol.version == 1)
    }

    @Test("Garbage bytes give a thrown error, never a crash")
    func garbage() {
        let inputs: [Data] = [
            Self.bytes("0a ff"),  // length beyond the end
            Self.bytes("ff ff ff ff ff ff ff ff ff ff ff"),  // overlong varint
            Self.bytes("0f"),  // wire type 7 does not exist
            Self.bytes("12 05 0a 10 00"),  // nested length beyond the end
        ]
        for input in inputs {
            #expect(throws: (any Error).self) {
                _ = try Etcdserverpb_RangeResponse(serializedBytes: input)
            }
        }
    }
}
