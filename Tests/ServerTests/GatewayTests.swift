import EtcdProto
import GRPCCore
import NIOCore
import NIOHTTP1
import Synchronization
import Testing
@testable import Server

@Suite struct GatewayTests {
    func router() -> HTTPRouter {
        let backend = FakeMaintenanceBackend(snapshot: BytesSnapshotReader(Array(repeating: 1, count: 10)), isLeader: false)
        var router = HTTPRouter()
        Gateway.register(maintenance: MaintenanceService(backend: backend), in: &router)
        Gateway.register(cluster: ClusterService(backend: backend), in: &router)
        return router
    }

    func post(_ path: String, _ body: String) async -> HTTPResponse {
        await router().respond(to: HTTPRequest(method: .POST, uri: path, body: ByteBuffer(string: body)))
    }

    @Test func unaryCallsUseEtcdsJSONMapping() async throws {
        let r = await post("/v3/maintenance/status", "{}")
        #expect(r.status == .ok)
        let text = bodyText(r)
        // 64-bit integers as strings, proto field names.
        #expect(text.contains(#""cluster_id":"11""#))
        #expect(text.contains(#""dbSize":"4096""#) || text.contains(#""db_size":"4096""#))
        let status = try Etcdserverpb_StatusResponse(jsonString: text, options: .etcdGateway)
        #expect(status.raftAppliedIndex == 9)
        #expect(status.version == "3.5.17")
    }

    @Test func requestBodiesAreDecoded() async throws {
        let r = await post("/v3/maintenance/hashkv", #"{"revision":"17"}"#)
        let response = try Etcdserverpb_HashKVResponse(jsonString: bodyText(r), options: .etcdGateway)
        #expect(response.compactRevision == 17)
        #expect(response.hash == 0xdead)
        // An empty body is the default request.
        #expect(await post("/v3/cluster/member/list", "").status == .ok)
    }

    @Test func errorsCarryCodeMessageAndMappedStatus() async {
        let notLeader = await post("/v3/maintenance/transfer-leadership", #"{"targetID":"5"}"#)
        #expect(notLeader.status == .preconditionFailed)
        #expect(bodyText(notLeader) == #"{"error":"etcdserver: not leader","code":9,"message":"etcdserver: not leader"}"#)

        let unimplemented = await post("/v3/cluster/member/add", #"{"peerURLs":["http://a:2380"]}"#)
        #expect(unimplemented.status == .notImplemented)
        #expect(bodyText(unimplemented).contains(#""code":12"#))

        let garbage = await post("/v3/maintenance/hashkv", "{not json")
        #expect(garbage.status == .badRequest)
        #expect(bodyText(garbage).contains(#""code":3"#))
    }

    @Test func streamedCallsWriteOneResultPerLine() async throws {
        let r = await post("/v3/maintenance/snapshot", "{}")
        guard case .stream(let produce) = r.body else {
            Issue.record("expected a streamed body")
            return
        }
        let chunks = Mutex<[UInt8]>([])
        try await produce(HTTPBodyWriter(writeChunk: { buffer in
            chunks.withLock { $0 += Array(buffer.readableBytesView) }
        }))
        let text = String(decoding: chunks.withLock { $0 }, as: UTF8.self)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.allSatisfy { $0.hasPrefix(#"{"result":{"#) })
        #expect(lines.first?.contains(#""remaining_bytes":"32""#) == true)
    }

    @Test func streamErrorsEndTheBodyWithAnErrorObject() async throws {
        let handler = Gateway.serverStreaming("/v3/test/stream") {
            (_: Etcdserverpb_SnapshotRequest, w: RPCWriter<Etcdserverpb_SnapshotResponse>, _: ServerContext) in
            try await w.write(Etcdserverpb_SnapshotResponse())
            throw RPCError(code: .unavailable, message: "etcdserver: no leader")
        }
        let r = await handler(HTTPRequest(method: .POST, uri: "/v3/test/stream"))
        guard case .stream(let produce) = r.body else {
            Issue.record("expected a streamed body")
            return
        }
        let chunks = Mutex<[UInt8]>([])
        try await produce(HTTPBodyWriter(writeChunk: { buffer in
            chunks.withLock { $0 += Array(buffer.readableBytesView) }
        }))
        let lines = String(decoding: chunks.withLock { $0 }, as: UTF8.self).split(separator: "\n")
        #expect(lines.first == #"{"result":{}}"#)
        #expect(lines.last == #"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#)
    }

    @Test func gRPCCodesMapToGatewayStatuses() {
        #expect(Gateway.httpStatus(for: .invalidArgument) == .badRequest)
        #expect(Gateway.httpStatus(for: .outOfRange) == .badRequest)
        #expect(Gateway.httpStatus(for: .notFound) == .notFound)
        #expect(Gateway.httpStatus(for: .resourceExhausted) == .tooManyRequests)
        #expect(Gateway.httpStatus(for: .unavailable) == .serviceUnavailable)
        #expect(Gateway.httpStatus(for: .permissionDenied) == .forbidden)
        #expect(Gateway.httpStatus(for: .unauthenticated) == .unauthorized)
        #expect(Gateway.httpStatus(for: .dataLoss) == .internalServerError)
    }
}
