import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
import SwiftProtobuf
import Testing
@testable import Server

/// Mutated bytes on the client port of an in-process member: every etcd gRPC method gets
/// valid requests with random byte-level damage (flips, cuts, insertions, stray fields), and
/// the JSON gateway gets damaged JSON. Each call is answered (any status) or times out; the
/// member never stops and still serves afterwards. A trap kills the test process.
///
/// `WIRE_FUZZ_SEED` (1), `WIRE_FUZZ_CALLS` (400) lengthen or replay the run.
@Suite("Wire: mutated gRPC and gateway requests never stop a member", .serialized)
struct WireFuzzTests {
    static var seed: UInt64 { ProcessInfo.processInfo.environment["WIRE_FUZZ_SEED"].flatMap(UInt64.init) ?? 1 }
    static var calls: Int { ProcessInfo.processInfo.environment["WIRE_FUZZ_CALLS"].flatMap(Int.init) ?? 400 }

    /// Unary methods fuzzed, with a valid request to start from. Membership changes, alarms
    /// and leader moves are left out: a random one may legitimately take a one-member cluster
    /// out of service, which would only slow the run (the apply fuzzer covers alarms).
    static func unarySeeds(_ gen: inout FuzzGen) -> [(service: String, method: String, bytes: [UInt8])] {
        func b(_ m: some SwiftProtobuf.Message) -> [UInt8] { (try? m.serializedBytes()) ?? [] }
        var grant = Etcdserverpb_LeaseGrantRequest()
        grant.ttl = 30
        var ttl = Etcdserverpb_LeaseTimeToLiveRequest()
        ttl.id = gen.int64()
        var compact = Etcdserverpb_CompactionRequest()
        compact.revision = gen.sparse()
        var hashKV = Etcdserverpb_HashKVRequest()
        hashKV.revision = gen.sparse()
        var lock = V3lockpb_LockRequest()
        lock.name = gen.bytes()
        lock.lease = gen.int64()
        var campaign = V3electionpb_CampaignRequest()
        campaign.name = gen.bytes()
        campaign.lease = gen.int64()
        campaign.value = gen.bytes()
        var leader = V3electionpb_LeaderRequest()
        leader.name = gen.bytes()
        return [
            ("etcdserverpb.KV", "Range", b(gen.range())),
            ("etcdserverpb.KV", "Put", b(gen.put())),
            ("etcdserverpb.KV", "DeleteRange", b(gen.delete())),
            ("etcdserverpb.KV", "Txn", b(gen.txn(depth: 0))),
            ("etcdserverpb.KV", "Compact", b(compact)),
            ("etcdserverpb.Lease", "LeaseGrant", b(grant)),
            ("etcdserverpb.Lease", "LeaseRevoke", b(ttl)),
            ("etcdserverpb.Lease", "LeaseTimeToLive", b(ttl)),
            ("etcdserverpb.Lease", "LeaseLeases", []),
            ("etcdserverpb.Cluster", "MemberList", []),
            ("etcdserverpb.Maintenance", "Status", []),
            ("etcdserverpb.Maintenance", "Hash", []),
            ("etcdserverpb.Maintenance", "HashKV", b(hashKV)),
            ("etcdserverpb.Maintenance", "Defragment", []),
            ("etcdserverpb.Maintenance", "Downgrade", []),
            ("etcdserverpb.Auth", "AuthStatus", []),
            ("etcdserverpb.Auth", "Authenticate", []),
            ("etcdserverpb.Auth", "UserAdd", []),
            ("v3lockpb.Lock", "Lock", b(lock)),
            ("v3lockpb.Lock", "Unlock", b(lock)),
            ("v3electionpb.Election", "Campaign", b(campaign)),
            ("v3electionpb.Election", "Leader", b(leader)),
            ("v3electionpb.Election", "Resign", b(leader)),
            ("v3electionpb.Election", "Proclaim", b(leader)),
        ]
    }

    @Test func mutatedRequestsOnEveryMethod() async throws {
        try await withServingMember { s, listener, client, port in
            var gen = FuzzGen(seed: Self.seed)
            var answered = 0
            var codes: [String: Int] = [:]
            var options = CallOptions.defaults
            options.timeout = .seconds(2)
            for call in 0..<Self.calls {
                let seeds = Self.unarySeeds(&gen)
                let pick = seeds[gen.int(seeds.count)]
                let bytes = gen.mutate(pick.bytes)
                do {
                    _ = try await client.unary(
                        request: ClientRequest(message: bytes),
                        descriptor: MethodDescriptor(fullyQualifiedService: pick.service, method: pick.method),
                        serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: options
                    ) { try $0.message }
                    answered += 1
                    codes["ok", default: 0] += 1
                } catch let e as RPCError {
                    answered += 1
                    codes["\(e.code)", default: 0] += 1
                }
                #expect(!s.fatal.isFired, "call \(call) \(pick.method) \(bytes): the member stopped: \(s.fatalReason ?? "") (WIRE_FUZZ_SEED=\(Self.seed))")
                if s.fatal.isFired { break }
            }
            // Streams: watch and keep-alive with damaged requests, ended by the client.
            for method in ["Watch", "LeaseKeepAlive"] {
                for _ in 0..<5 {
                    var watch = Etcdserverpb_WatchRequest()
                    var create = Etcdserverpb_WatchCreateRequest()
                    create.key = gen.bytes()
                    create.rangeEnd = gen.bytes()
                    create.startRevision = gen.sparse()
                    create.watchID = gen.sparse()
                    create.fragment = gen.bool()
                    create.prevKv = gen.bool()
                    watch.createRequest = create
                    let first: [UInt8] = method == "Watch" ? ((try? watch.serializedBytes()) ?? []) : [8, 1]
                    let messages = (0..<3).map { _ in gen.mutate(first) }
                    var streamOptions = CallOptions.defaults
                    streamOptions.timeout = .milliseconds(500)
                    _ = try? await client.bidirectionalStreaming(
                        request: StreamingClientRequest(of: [UInt8].self) { writer in
                            for m in messages { try await writer.write(m) }
                        },
                        descriptor: MethodDescriptor(fullyQualifiedService: method == "Watch" ? "etcdserverpb.Watch" : "etcdserverpb.Lease", method: method),
                        serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: streamOptions
                    ) { response in
                        for try await _ in response.messages {}
                    }
                    #expect(!s.fatal.isFired)
                }
            }
            #expect(answered > Self.calls / 2, "most calls were answered (\(answered) of \(Self.calls))")
            // Most damaged requests still decode: the handlers, not only the decoder, are exercised.
            #expect(codes["ok", default: 0] > Self.calls / 10, "answers by code: \(codes)")
            if ProcessInfo.processInfo.environment["WIRE_FUZZ_VERBOSE"] != nil { print("wire fuzz answers by code: \(codes)") }

            // The JSON gateway with damaged bodies.
            let paths = ["/v3/kv/range", "/v3/kv/put", "/v3/kv/deleterange", "/v3/kv/txn", "/v3/kv/compaction",
                         "/v3/lease/grant", "/v3/lease/revoke", "/v3/lease/timetolive", "/v3/maintenance/hashkv",
                         "/v3/watch", "/v3/lease/keepalive", "/v3/lock/lock", "/v3/election/leader"]
            let bodies = [#"{"key":"YQ==","range_end":"AA==","limit":"9223372036854775807"}"#,
                          #"{"key":"YQ==","value":"Yg==","lease":"-1"}"#,
                          #"{"success":[{"request_range":{"key":"YQ==","limit":"-9223372036854775808"}}]}"#,
                          #"{"create_request":{"key":"YQ==","start_revision":"9223372036854775807"}}"#,
                          #"{"ID":"9223372036854775807","TTL":"9223372036854775807"}"#, "{}", "[]", ""]
            for i in 0..<60 {
                let path = paths[gen.int(paths.count)]
                let body = String(decoding: gen.mutate(Array(bodies[gen.int(bodies.count)].utf8), text: true), as: UTF8.self)
                let c = try await RawClient.connect(port: port, timeoutSeconds: 3)
                try await c.send("POST \(path) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
                _ = try? await c.readToEnd()
                #expect(!s.fatal.isFired, "gateway request \(i) \(path) \(body)")
            }

            // Still serving.
            _ = try await s.put(putRequest("after-fuzz", "ok"))
            #expect(try await s.range(rangeRequest("after-fuzz")).kvs.count == 1)
            listener.stop()
            await s.stop()
        }
    }
}

extension FuzzGen {
    /// Byte-level damage: flips, cuts, insertions and stray protobuf fields (or, for text,
    /// printable junk and structural characters).
    mutating func mutate(_ input: [UInt8], text: Bool = false) -> [UInt8] {
        var out = input
        for _ in 0..<(1 + int(3)) {
            switch int(6) {
            case 0 where !out.isEmpty:
                let i = int(out.count)
                out[i] = text ? Array("{}[]\",:0-9e.\\".utf8)[int(13)] : out[i] ^ UInt8(truncatingIfNeeded: 1 << int(8))
            case 1 where !out.isEmpty:
                out.removeSubrange(int(out.count)...)
            case 2:
                let junk: [UInt8] = text ? Array("\"9223372036854775808\"".utf8) : (0..<(1 + int(8))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                out.insert(contentsOf: junk, at: out.isEmpty ? 0 : int(out.count))
            case 3 where !text:
                // A stray varint or length-delimited field with an extreme value.
                var w = ProtoWriter()
                let field = 1 + int(20)
                if bool() { w.uint(field, UInt64(bitPattern: int64())) } else { w.bytesField(field, Array(bytes())) }
                out += w.bytes
            case 4 where !out.isEmpty:
                let i = int(out.count)
                out.remove(at: i)
            default:
                break
            }
        }
        return out
    }
}
