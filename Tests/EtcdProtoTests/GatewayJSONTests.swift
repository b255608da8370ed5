import EtcdProto
import Foundation
import SwiftProtobuf
import Testing

/// The JSON mapping of etcd's gateway: snake_case names as in the .proto files,
/// 64-bit integers as strings, bytes as base64. The expected strings are the
/// responses shown in etcd's gRPC gateway guide (key "foo" = "Zm9v", value "bar"
/// = "YmFy"); both sides list fields in field-number order, so the comparison is
/// byte for byte.
@Suite("Gateway JSON")
struct GatewayJSONTests {
    static func header(cluster: UInt64, member: UInt64, revision: Int64, term: UInt64)
        -> Etcdserverpb_ResponseHeader
    {
        var header = Etcdserverpb_ResponseHeader()
        header.clusterID = cluster
        header.memberID = member
        header.revision = revision
        header.raftTerm = term
        return header
    }

    static func keyValue(_ key: String, _ value: String, create: Int64, mod: Int64, version: Int64)
        -> Mvccpb_KeyValue
    {
        var kv = Mvccpb_KeyValue()
        kv.key = Data(key.utf8)
        kv.value = Data(value.utf8)
        kv.createRevision = create
        kv.modRevision = mod
        kv.version = version
        return kv
    }

    @Test("A range response prints exactly as etcd's gateway prints it")
    func rangeResponseMatchesEtcd() throws {
        var response = Etcdserverpb_RangeResponse()
        response.header = Self.header(
            cluster: 12_585_971_608_760_269_493, member: 13_847_567_121_247_652_255, revision: 2, term: 3)
        response.kvs = [Self.keyValue("foo", "bar", create: 2, mod: 2, version: 1)]
        response.count = 1

        let json = try response.jsonString(options: .etcdGateway)
        #expect(
            json
                == #"{"header":{"cluster_id":"12585971608760269493","member_id":"13847567121247652255","revision":"2","raft_term":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        )
        let back = try Etcdserverpb_RangeResponse(jsonString: json, options: .etcdGateway)
        #expect(back == response)
    }

    @Test("A txn response nests its range result under response_range")
    func txnResponseMatchesEtcd() throws {
        var inner = Etcdserverpb_RangeResponse()
        inner.header.revision = 6
        inner.kvs = [Self.keyValue("foo", "baz", create: 2, mod: 6, version: 4)]
        inner.count = 1
        var op = Etcdserverpb_ResponseOp()
        op.responseRange = inner
        var response = Etcdserverpb_TxnResponse()
        response.header = Self.header(
            cluster: 14_841_639_068_965_178_418, member: 10_276_657_743_932_975_437, revision: 6, term: 3)
        response.succeeded = true
        response.responses = [op]

        let json = try response.jsonString(options: .etcdGateway)
        #expect(
            json
                == #"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"6","raft_term":"3"},"succeeded":true,"responses":[{"response_range":{"header":{"revision":"6"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"6","version":"4","value":"YmF6"}],"count":"1"}}]}"#
        )
    }

    @Test("A txn request from the guide decodes: camelCase oneof names, enums by name, int64 strings")
    func txnRequestDecodes() throws {
        let body =
            #"{"compare":[{"version":"4","result":"EQUAL","target":"VERSION","key":"Zm9v"}],"success":[{"requestRange":{"key":"Zm9v"}}]}"#
        let request = try Etcdserverpb_TxnRequest(jsonString: body, options: .etcdGateway)
        let compare = try #require(request.compare.first)
        #expect(compare.result == .equal)
        #expect(compare.target == .version)
        #expect(compare.key == Data("foo".utf8))
        #expect(compare.targetUnion == .version(4))
        #expect(request.success.first?.requestRange.key == Data("foo".utf8))
        #expect(request.failure.isEmpty)
    }

    @Test("Snake_case request names decode too, and unknown fields are ignored")
    func snakeCaseAndUnknownFields() throws {
        let body = #"{"key":"Zm9v","range_end":"Zm9w","limit":"10","sort_order":"DESCEND","no_such_field":1}"#
        let request = try Etcdserverpb_RangeRequest(jsonString: body, options: .etcdGateway)
        #expect(request.rangeEnd == Data("fop".utf8))
        #expect(request.limit == 10)
        #expect(request.sortOrder == .descend)
        // Strict decoding (the default) refuses the unknown field with an error, not a crash.
        #expect(throws: (any Error).self) {
            _ = try Etcdserverpb_RangeRequest(jsonString: body)
        }
    }

    @Test("A watch event prints like the gateway's stream; PUT, the default type, is left out")
    func watchResponse() throws {
        var event = Mvccpb_Event()
        event.kv = Self.keyValue("foo", "bar", create: 2, mod: 2, version: 1)
        var response = Etcdserverpb_WatchResponse()
        response.header = Self.header(
            cluster: 12_585_971_608_760_269_493, member: 13_847_567_121_247_652_255, revision: 2, term: 2)
        response.events = [event]
        #expect(
            try response.jsonString(options: .etcdGateway)
                == #"{"header":{"cluster_id":"12585971608760269493","member_id":"13847567121247652255","revision":"2","raft_term":"2"},"events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}]}"#
        )
        var deletion = Mvccpb_Event()
        deletion.type = .delete
        deletion.kv.key = Data("foo".utf8)
        deletion.kv.modRevision = 3
        #expect(try deletion.jsonString(options: .etcdGateway) == #"{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"3"}}"#)
    }

    @Test("Mixed-case etcd names (TTL, ID, dbSizeInUse, isLearner) keep their spelling")
    func mixedCaseNames() throws {
        var grant = Etcdserverpb_LeaseGrantResponse()
        grant.id = 7_587_862_072_907_584_516
        grant.ttl = 60
        #expect(try grant.jsonString(options: .etcdGateway) == #"{"ID":"7587862072907584516","TTL":"60"}"#)

        var status = Etcdserverpb_StatusResponse()
        status.version = "3.5.0"
        status.dbSize = 20480
        status.leader = 1
        status.raftIndex = 5
        status.raftTerm = 2
        status.raftAppliedIndex = 5
        status.dbSizeInUse = 16384
        status.isLearner = true
        #expect(
            try status.jsonString(options: .etcdGateway)
                == #"{"version":"3.5.0","dbSize":"20480","leader":"1","raftIndex":"5","raftTerm":"2","raftAppliedIndex":"5","dbSizeInUse":"16384","isLearner":true}"#
        )
        let ttl = try Etcdserverpb_LeaseTimeToLiveResponse(
            jsonString: #"{"ID":"1","TTL":"-1","grantedTTL":"0","keys":["Zm9v"]}"#, options: .etcdGateway)
        #expect(ttl.ttl == -1)
        #expect(ttl.keys == [Data("foo".utf8)])
    }
}
