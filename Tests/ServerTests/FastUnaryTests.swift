import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import SwiftProtobuf
import Testing
@testable import Server

/// The client port's own path for unary KV calls (FastStreamRouter + FastKV): answers, errors
/// and bad input as grpc-swift's path gives them, and everything else still on grpc-swift.
@Suite("Client port: unary KV fast path", .serialized)
struct FastUnaryTests {
    @Test func kvCallsAnswerOnTheFastPathWithEtcdsErrors() async throws {
        try await withServingMember { s, listener, client, _ in
            func call(_ method: String, _ bytes: [UInt8], service: String = "etcdserverpb.KV") async throws -> [UInt8] {
                try await client.unary(
                    request: ClientRequest(message: bytes),
                    descriptor: MethodDescriptor(fullyQualifiedService: service, method: method),
                    serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
                ) { try $0.message }
            }
            let fast = try #require(listener.fastKV)
            var put = Etcdserverpb_PutRequest()
            put.key = Data("k".utf8)
            put.value = Data("v1".utf8)
            let putReply = try Etcdserverpb_PutResponse(serializedBytes: try await call("Put", try put.serializedBytes()))
            put.value = Data("v2".utf8)
            put.prevKv = true
            let second = try Etcdserverpb_PutResponse(serializedBytes: try await call("Put", try put.serializedBytes()))
            #expect(second.header.revision == putReply.header.revision + 1)
            #expect(second.prevKv.value == Data("v1".utf8))

            var range = Etcdserverpb_RangeRequest()
            range.key = Data("k".utf8)
            let got = try Etcdserverpb_RangeResponse(serializedBytes: try await call("Range", try range.serializedBytes()))
            #expect(got.kvs.map(\.value) == [Data("v2".utf8)])
            #expect(got.header.revision == second.header.revision)

            var txn = Etcdserverpb_TxnRequest()
            var cmp = Etcdserverpb_Compare()
            cmp.key = Data("k".utf8)
            cmp.target = .value
            cmp.result = .equal
            cmp.value = Data("v2".utf8)
            txn.compare = [cmp]
            var op = Etcdserverpb_RequestOp()
            op.requestDeleteRange = { var d = Etcdserverpb_DeleteRangeRequest(); d.key = Data("k".utf8); return d }()
            txn.success = [op]
            let t = try Etcdserverpb_TxnResponse(serializedBytes: try await call("Txn", try txn.serializedBytes()))
            #expect(t.succeeded)
            #expect(t.responses.first?.responseDeleteRange.deleted == 1)

            var del = Etcdserverpb_DeleteRangeRequest()
            del.key = Data("k".utf8)
            let d = try Etcdserverpb_DeleteRangeResponse(serializedBytes: try await call("DeleteRange", try del.serializedBytes()))
            #expect(d.deleted == 0)
            #expect(fast.served.load(ordering: .relaxed) == 5)

            // etcd's errors, with their codes, as trailers-only answers.
            func refusal(_ method: String, _ bytes: [UInt8]) async -> RPCError? {
                do {
                    _ = try await call(method, bytes)
                    return nil
                } catch {
                    return error as? RPCError
                }
            }
            let empty = await refusal("Range", [])
            #expect(empty?.code == .invalidArgument)
            #expect(empty?.message == "etcdserver: key is not provided")
            range.revision = 1_000
            let future = await refusal("Range", try range.serializedBytes())
            #expect(future?.code == .outOfRange)
            #expect(future?.message == "etcdserver: mvcc: required revision is a future revision")
            // A message that does not parse: grpc-go's status and text.
            let truncated = await refusal("Put", [0x0A, 0x05, 0x01])
            #expect(truncated?.code == .internalError)
            #expect(truncated?.message.hasPrefix("grpc: error unmarshalling request") == true)
            #expect(fast.served.load(ordering: .relaxed) == 8)

            // Other methods stay on grpc-swift, on the same connection.
            let status = try await call("Status", [], service: "etcdserverpb.Maintenance")
            #expect(try Etcdserverpb_StatusResponse(serializedBytes: status).header.memberID == s.memberID)
            var compact = Etcdserverpb_CompactionRequest()
            compact.revision = 2
            _ = try await call("Compact", try compact.serializedBytes())
            #expect(fast.served.load(ordering: .relaxed) == 8)
            #expect(!s.fatal.isFired)
        }
    }

    /// Requests larger than a stream's receive window (64 KiB) on the fast path: the server
    /// gives each stream's window back as it reads (no stream channel does it for these
    /// calls), so several such calls at once on one connection all finish.
    @Test(.timeLimit(.minutes(1))) func requestsLargerThanTheStreamWindowAreRead() async throws {
        try await withServingMember { s, listener, client, _ in
            let fast = try #require(listener.fastKV)
            let before = fast.served.load(ordering: .relaxed)
            let values = (0..<4).map { i in Data(repeating: UInt8(i + 1), count: 300_000 + i * 70_000) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (i, value) in values.enumerated() {
                    group.addTask {
                        var put = Etcdserverpb_PutRequest()
                        put.key = Data("big\(i)".utf8)
                        put.value = value
                        _ = try await client.unary(
                            request: ClientRequest(message: try put.serializedBytes()),
                            descriptor: MethodDescriptor(fullyQualifiedService: "etcdserverpb.KV", method: "Put"),
                            serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
                        ) { try $0.message }
                    }
                }
                try await group.waitForAll()
            }
            for (i, value) in values.enumerated() {
                var range = Etcdserverpb_RangeRequest()
                range.key = Data("big\(i)".utf8)
                let bytes = try await client.unary(
                    request: ClientRequest(message: try range.serializedBytes()),
                    descriptor: MethodDescriptor(fullyQualifiedService: "etcdserverpb.KV", method: "Range"),
                    serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
                ) { try $0.message }
                #expect(try Etcdserverpb_RangeResponse(serializedBytes: bytes).kvs.first?.value == value)
            }
            #expect(fast.served.load(ordering: .relaxed) == before + 8)

            /// `call` is refused with etcd's status for a message over the receive limit.
            func expectRefusedAsTooLarge(_ what: String, _ call: () async throws -> Void) async throws {
                do {
                    try await call()
                    Issue.record("\(what) was accepted")
                } catch let error as RPCError {
                    #expect(error.code == .resourceExhausted)
                    #expect(error.message.hasPrefix("grpc: received message larger than max ("))
                }
            }
            // Over the receive limit: refused from the message's prefix with etcd's status,
            // the stream reset, and the connection goes on serving.
            var huge = Etcdserverpb_PutRequest()
            huge.key = Data("huge".utf8)
            huge.value = Data(repeating: 9, count: 4 << 20)
            try await expectRefusedAsTooLarge("a 4 MiB request") {
                _ = try await client.unary(
                    request: ClientRequest(message: try huge.serializedBytes()),
                    descriptor: MethodDescriptor(fullyQualifiedService: "etcdserverpb.KV", method: "Put"),
                    serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
                ) { try $0.message }
            }
            // Several messages on one unary call, each under the limit, more than it together:
            // refused the same way once the body passes the limit, not buffered to the end.
            var part = Etcdserverpb_PutRequest()
            part.key = Data("part".utf8)
            part.value = Data(repeating: 5, count: 1 << 20)
            let partBytes = try part.serializedBytes() as [UInt8]
            try await expectRefusedAsTooLarge("4 MiB in four messages") {
                _ = try await client.clientStreaming(
                    request: StreamingClientRequest(of: [UInt8].self) { writer in
                        for _ in 0..<4 { try await writer.write(partBytes) }
                    },
                    descriptor: MethodDescriptor(fullyQualifiedService: "etcdserverpb.KV", method: "Put"),
                    serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
                ) { try $0.message }
            }
            var range = Etcdserverpb_RangeRequest()
            range.key = Data("big0".utf8)
            _ = try await client.unary(
                request: ClientRequest(message: try range.serializedBytes()),
                descriptor: MethodDescriptor(fullyQualifiedService: "etcdserverpb.KV", method: "Range"),
                serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
            ) { try $0.message }
            #expect(!s.fatal.isFired)
        }
    }

    @Test func keepAliveStreamsRenewInOrderAndEndAtTheServersStop() async throws {
        try await withServingMember { s, listener, client, _ in
            let fast = try #require(listener.fastLease)
            var grant = Etcdserverpb_LeaseGrantRequest()
            grant.id = 77
            grant.ttl = 60
            _ = try await client.unary(
                request: ClientRequest(message: try grant.serializedBytes()),
                descriptor: MethodDescriptor(fullyQualifiedService: "etcdserverpb.Lease", method: "LeaseGrant"),
                serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
            ) { try $0.message }
            @Sendable func keepAlive(_ id: Int64) throws -> [UInt8] {
                var r = Etcdserverpb_LeaseKeepAliveRequest()
                r.id = id
                return try r.serializedBytes()
            }
            let descriptor = MethodDescriptor(fullyQualifiedService: "etcdserverpb.Lease", method: "LeaseKeepAlive")
            // Three requests, one for an unknown lease: answered in order, then status OK.
            let requests = [try keepAlive(77), try keepAlive(78), try keepAlive(77)]
            let answers = try await client.bidirectionalStreaming(
                request: StreamingClientRequest(of: [UInt8].self) { writer in
                    for m in requests { try await writer.write(m) }
                },
                descriptor: descriptor, serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
            ) { response in
                var out: [Etcdserverpb_LeaseKeepAliveResponse] = []
                for try await m in response.messages { out.append(try Etcdserverpb_LeaseKeepAliveResponse(serializedBytes: m)) }
                return out
            }
            #expect(answers.map(\.id) == [77, 78, 77])
            #expect(answers.map(\.ttl) == [60, 0, 60])
            #expect(answers.allSatisfy { $0.header.memberID == s.memberID })
            #expect(fast.served.load(ordering: .relaxed) == 3)

            // A stream left open ends with etcd's "server stopped" when the member stops.
            let outcome = Task { () -> String in
                do {
                    try await client.bidirectionalStreaming(
                        request: StreamingClientRequest(of: [UInt8].self) { writer in
                            try await writer.write(try keepAlive(77))
                            try await Task.sleep(for: .seconds(60))
                        },
                        descriptor: descriptor, serializer: RawBytesCodec(), deserializer: RawBytesCodec(), options: .defaults
                    ) { response in
                        for try await _ in response.messages {}
                    }
                    return "ended with OK"
                } catch let e as RPCError {
                    return e.message
                }
            }
            let deadline = ContinuousClock.now + .seconds(10)
            while fast.served.load(ordering: .relaxed) < 4, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
            #expect(fast.served.load(ordering: .relaxed) == 4)
            await s.stop()
            let ended = try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask { try await outcome.value }
                group.addTask { try await Task.sleep(for: .seconds(10)); return nil }
                defer { group.cancelAll() }
                return try await group.next() ?? nil
            }
            #expect(ended == "etcdserver: server stopped")
            outcome.cancel()
        }
    }

    @Test func grpcMessagesArePercentEncoded() {
        #expect(GRPCFrames.percentEncoded("plain text: ok") == "plain text: ok")
        #expect(GRPCFrames.percentEncoded("100% é\n") == "100%25 %C3%A9%0A")
    }
}
