import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import SwiftProtobuf
import Testing
@testable import Server

/// The client port's own path for unary KV calls (FastUnaryHandler + FastKV): answers, errors
/// and bad input as grpc-swift's path gives them, and everything else still on grpc-swift.
@Suite("Client port: unary KV fast path", .serialized)
struct FastUnaryTests {
    @Test func kvCallsAnswerOnTheFastPathWithEtcdsErrors() async throws {
        let f = CoreFixture(extraArgs: ["--listen-client-urls", "http://127.0.0.1:0",
                                        "--advertise-client-urls", "http://127.0.0.1:2379"])
        defer { f.remove() }
        var logger = Logger(label: "fast")
        logger.logLevel = .critical
        let s = try await f.start()
        let listener = try ClientListener(server: s, logger: logger)
        let serving = Task { try await listener.serve() }
        defer { serving.cancel() }
        let address = try #require(try await listener.boundAddresses().first)
        let port = try #require(address.split(separator: ":").last.flatMap { Int($0) })
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
        try await withGRPCClient(transport: transport) { client in
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
        }
        #expect(!s.fatal.isFired)
    }

    @Test func grpcMessagesArePercentEncoded() {
        #expect(FastUnaryHandler.percentEncoded("plain text: ok") == "plain text: ok")
        #expect(FastUnaryHandler.percentEncoded("100% é\n") == "100%25 %C3%A9%0A")
    }
}
