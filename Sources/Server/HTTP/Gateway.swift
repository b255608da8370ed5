import EtcdProto
public import GRPCCore
public import SwiftProtobuf
import NIOCore
import NIOHTTP1

/// etcd's JSON gateway under `/v3/`: POST bodies in etcd's JSON mapping are decoded into the
/// request message, handed to the same service method the gRPC side uses, and the response is
/// written back as JSON (`JSONEncodingOptions.etcdGateway`). Server-streaming calls write one
/// `{"result": ...}` object per line. Errors look like grpc-gateway v1's:
/// `{"error": text, "code": grpcCode, "message": text}` with the HTTP status for the code.
public enum Gateway {
    /// A unary call as a route handler.
    public static func unary<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ path: String,
        _ call: @escaping @Sendable (Request, ServerContext) async throws -> Response
    ) -> HTTPRouteHandler {
        { http in
            let token = http.headers.first(name: "authorization")
            let request: Request
            do { request = try decode(Request.self, from: http) } catch {
                return errorResponse(asRPCError(error))
            }
            do {
                let response = try await withContext(path, token: token, commonName: http.certificateCommonName) { try await call(request, $0) }
                return .json(.ok, try response.jsonString(options: .etcdGateway))
            } catch {
                return errorResponse(asRPCError(error))
            }
        }
    }

    /// A server-streaming call (one request, many responses) as a route handler: a chunked
    /// body with one `{"result": ...}` per line; an error after the first line is written as
    /// `{"error": {...}}` and ends the body.
    public static func serverStreaming<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ path: String,
        _ call: @escaping @Sendable (Request, RPCWriter<Response>, ServerContext) async throws -> Void
    ) -> HTTPRouteHandler {
        { http in
            let token = http.headers.first(name: "authorization")
            let request: Request
            do { request = try decode(Request.self, from: http) } catch {
                return errorResponse(asRPCError(error))
            }
            let body: HTTPResponse.Body = .stream { writer in
                let lines = RPCWriter(wrapping: JSONLineWriter<Response>(body: writer))
                do {
                    try await withContext(path, token: token, commonName: http.certificateCommonName) { try await call(request, lines, $0) }
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    try await writer.write(Array(streamErrorLine(asRPCError(error)).utf8))
                }
            }
            return HTTPResponse(status: .ok, headers: ["content-type": "application/json"], body: body)
        }
    }

    /// A bidirectional-streaming call as a route handler, as etcd's gateway runs one: the body
    /// holds zero or more JSON request objects (one after another, e.g. one per line), each sent
    /// to the call in order; the responses are streamed like ``serverStreaming(_:_:)``'s. With
    /// `finishRequests` the request stream ends after the body's last request (the call may
    /// then end, as LeaseKeepAlive does); otherwise it stays open, and the call runs until the
    /// client disconnects or the server stops (a watch, which etcd keeps after the client's
    /// half-close).
    public static func bidiStreaming<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ path: String,
        finishRequests: Bool,
        _ call: @escaping @Sendable (RPCAsyncSequence<Request, any Error>, RPCWriter<Response>, ServerContext) async throws -> Void
    ) -> HTTPRouteHandler {
        { http in
            let token = http.headers.first(name: "authorization")
            let requests: [Request]
            do { requests = try decodeAll(Request.self, from: http) } catch {
                return errorResponse(asRPCError(error))
            }
            let body: HTTPResponse.Body = .stream { writer in
                // Unbounded: the requests are all known; a never-finished stream ends its
                // iteration when the iterating task is cancelled.
                let (stream, feed) = AsyncThrowingStream<Request, any Error>.makeStream()
                for r in requests { feed.yield(r) }
                if finishRequests { feed.finish() }
                defer { feed.finish() }
                let lines = RPCWriter(wrapping: JSONLineWriter<Response>(body: writer))
                do {
                    try await withContext(path, token: token, commonName: http.certificateCommonName) {
                        try await call(RPCAsyncSequence(wrapping: stream), lines, $0)
                    }
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    try await writer.write(Array(streamErrorLine(asRPCError(error)).utf8))
                }
            }
            return HTTPResponse(status: .ok, headers: ["content-type": "application/json"], body: body)
        }
    }

    /// etcd's `/v3/watch`: the body's WatchRequests (create, cancel, progress) go to `service`;
    /// the stream of `{"result": WatchResponse}` lines lasts until the client disconnects.
    public static func watch(_ service: WatchService) -> HTTPRouteHandler {
        bidiStreaming("/v3/watch", finishRequests: false) {
            (requests: RPCAsyncSequence<Etcdserverpb_WatchRequest, any Error>, writer: RPCWriter<Etcdserverpb_WatchResponse>, context) in
            let response = try await service.watch(request: StreamingServerRequest(metadata: [:], messages: requests), context: context)
            _ = try await response.accepted.get().producer(writer)
        }
    }

    /// etcd's `/v3/lease/keepalive`: one `{"result": LeaseKeepAliveResponse}` line per
    /// LeaseKeepAliveRequest in the body, then the body ends.
    public static func leaseKeepAlive(_ service: LeaseService) -> HTTPRouteHandler {
        bidiStreaming("/v3/lease/keepalive", finishRequests: true, service.leaseKeepAlive(request:response:context:))
    }

    /// Decodes every JSON object of the POST body, in order (an empty body is no request).
    static func decodeAll<Request: SwiftProtobuf.Message>(_ type: Request.Type, from http: HTTPRequest) throws -> [Request] {
        var body = http.body
        let bytes = body.readBytes(length: body.readableBytes) ?? []
        guard let objects = splitJSONObjects(bytes) else {
            throw RPCError(code: .invalidArgument, message: "invalid request body: not a sequence of JSON objects")
        }
        return try objects.map { object in
            do {
                return try Request(jsonUTF8Bytes: object, options: .etcdGateway)
            } catch {
                throw RPCError(code: .invalidArgument, message: "invalid request body: \(error)")
            }
        }
    }

    /// Splits concatenated top-level JSON objects (separated by whitespace or nothing) at their
    /// closing braces; nil if anything else appears at the top level or an object is unclosed.
    static func splitJSONObjects(_ bytes: [UInt8]) -> [[UInt8]]? {
        var out: [[UInt8]] = []
        var depth = 0
        var start = 0
        var inString = false
        var escaped = false
        for (i, b) in bytes.enumerated() {
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch b {
            case UInt8(ascii: "\""):
                guard depth > 0 else { return nil }
                inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                if depth == 0 {
                    guard b == UInt8(ascii: "{") else { return nil }
                    start = i
                }
                depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                guard depth > 0 else { return nil }
                depth -= 1
                if depth == 0 { out.append(Array(bytes[start...i])) }
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"):
                continue
            default:
                guard depth > 0 else { return nil }
            }
        }
        return depth == 0 && !inString ? out : nil
    }

    /// Decodes the POST body (empty means the default request).
    static func decode<Request: SwiftProtobuf.Message>(_ type: Request.Type, from http: HTTPRequest) throws -> Request {
        var body = http.body
        let text = body.readString(length: body.readableBytes) ?? ""
        if text.allSatisfy(\.isWhitespace) { return Request() }
        do {
            return try Request(jsonString: text, options: .etcdGateway)
        } catch {
            throw RPCError(code: .invalidArgument, message: "invalid request body: \(error)")
        }
    }

    /// Runs `body` with a server context for `path` and, as the call's credentials, the
    /// `Authorization` header's token (etcd's gateway takes the token from that header) and the
    /// connection's client certificate CN (the user when no token is given, as on gRPC).
    static func withContext<T: Sendable>(_ path: String, token: String? = nil, commonName: String? = nil,
                                         _ body: (ServerContext) async throws -> T) async throws -> T {
        try await RequestCredentials.$token.withValue(token) {
            try await RequestCredentials.$certificateCommonName.withValue(commonName) { try await withPlainContext(path, body) }
        }
    }

    private static func withPlainContext<T: Sendable>(_ path: String, _ body: (ServerContext) async throws -> T) async throws -> T {
        try await withServerContextRPCCancellationHandle { handle in
            let segments = path.split(separator: "/")
            let descriptor = MethodDescriptor(fullyQualifiedService: "gateway" + (segments.dropLast().map { "." + $0 }.joined()),
                                              method: segments.last.map(String.init) ?? "")
            let context = ServerContext(descriptor: descriptor, remotePeer: "gateway", localPeer: "gateway",
                                        cancellation: handle)
            return try await body(context)
        }
    }

    /// grpc-gateway v1's HTTP status for a gRPC code (etcd 3.5 uses that gateway).
    public static func httpStatus(for code: RPCError.Code) -> HTTPResponseStatus {
        switch code {
        case .cancelled: return .requestTimeout
        case .unknown: return .internalServerError
        case .invalidArgument: return .badRequest
        case .deadlineExceeded: return .gatewayTimeout
        case .notFound: return .notFound
        case .alreadyExists: return .conflict
        case .permissionDenied: return .forbidden
        case .unauthenticated: return .unauthorized
        case .resourceExhausted: return .tooManyRequests
        case .failedPrecondition: return .preconditionFailed
        case .aborted: return .conflict
        case .outOfRange: return .badRequest
        case .unimplemented: return .notImplemented
        case .internalError: return .internalServerError
        case .unavailable: return .serviceUnavailable
        case .dataLoss: return .internalServerError
        default: return .internalServerError
        }
    }

    /// The error body and status of a failed unary call.
    public static func errorResponse(_ error: RPCError) -> HTTPResponse {
        let text = jsonString(error.message)
        let code = error.code.rawValue
        return .json(httpStatus(for: error.code), "{\"error\":\(text),\"code\":\(code),\"message\":\(text)}")
    }

    /// The line ending a stream that failed.
    static func streamErrorLine(_ error: RPCError) -> String {
        let status = httpStatus(for: error.code)
        return "{\"error\":{\"grpc_code\":\(error.code.rawValue),\"http_code\":\(status.code),\"message\":\(jsonString(error.message)),\"http_status\":\(jsonString(status.reasonPhrase))}}\n"
    }

    /// `s` as a JSON string literal.
    static func jsonString(_ s: String) -> String {
        "\"" + HealthEndpoints.jsonEscaped(s) + "\""
    }
}

/// Writes each message as one `{"result": ...}` line of a streamed HTTP body.
struct JSONLineWriter<Element: SwiftProtobuf.Message & Sendable>: RPCWriterProtocol {
    let body: HTTPBodyWriter

    func write(_ element: Element) async throws {
        let json = try element.jsonString(options: .etcdGateway)
        try await body.write(Array(("{\"result\":" + json + "}\n").utf8))
    }

    func write(contentsOf elements: some Sequence<Element>) async throws {
        for element in elements { try await write(element) }
    }
}

extension Gateway {
    /// Adds a POST route for a unary call.
    static func addUnary<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ router: inout HTTPRouter, _ path: String,
        _ call: @escaping @Sendable (Request, ServerContext) async throws -> Response
    ) {
        router.add(path, methods: [.POST], handler: unary(path, call))
    }

    /// Routes Maintenance's gateway paths to `service`.
    public static func register(maintenance service: MaintenanceService, in router: inout HTTPRouter) {
        addUnary(&router, "/v3/maintenance/alarm", service.alarm(request:context:))
        addUnary(&router, "/v3/maintenance/status", service.status(request:context:))
        addUnary(&router, "/v3/maintenance/defragment", service.defragment(request:context:))
        addUnary(&router, "/v3/maintenance/hash", service.hash(request:context:))
        addUnary(&router, "/v3/maintenance/hashkv", service.hashKV(request:context:))
        addUnary(&router, "/v3/maintenance/transfer-leadership", service.moveLeader(request:context:))
        addUnary(&router, "/v3/maintenance/downgrade", service.downgrade(request:context:))
        router.add("/v3/maintenance/snapshot", methods: [.POST],
                   handler: serverStreaming("/v3/maintenance/snapshot", service.snapshot(request:response:context:)))
    }

    /// Routes Cluster's gateway paths to `service`.
    public static func register(cluster service: ClusterService, in router: inout HTTPRouter) {
        addUnary(&router, "/v3/cluster/member/add", service.memberAdd(request:context:))
        addUnary(&router, "/v3/cluster/member/remove", service.memberRemove(request:context:))
        addUnary(&router, "/v3/cluster/member/update", service.memberUpdate(request:context:))
        addUnary(&router, "/v3/cluster/member/list", service.memberList(request:context:))
        addUnary(&router, "/v3/cluster/member/promote", service.memberPromote(request:context:))
    }

    /// Routes Auth's gateway paths to `service`.
    public static func register(auth service: AuthService, in router: inout HTTPRouter) {
        addUnary(&router, "/v3/auth/enable", service.authEnable(request:context:))
        addUnary(&router, "/v3/auth/disable", service.authDisable(request:context:))
        addUnary(&router, "/v3/auth/status", service.authStatus(request:context:))
        addUnary(&router, "/v3/auth/authenticate", service.authenticate(request:context:))
        addUnary(&router, "/v3/auth/user/add", service.userAdd(request:context:))
        addUnary(&router, "/v3/auth/user/get", service.userGet(request:context:))
        addUnary(&router, "/v3/auth/user/list", service.userList(request:context:))
        addUnary(&router, "/v3/auth/user/delete", service.userDelete(request:context:))
        addUnary(&router, "/v3/auth/user/changepw", service.userChangePassword(request:context:))
        addUnary(&router, "/v3/auth/user/grant", service.userGrantRole(request:context:))
        addUnary(&router, "/v3/auth/user/revoke", service.userRevokeRole(request:context:))
        addUnary(&router, "/v3/auth/role/add", service.roleAdd(request:context:))
        addUnary(&router, "/v3/auth/role/get", service.roleGet(request:context:))
        addUnary(&router, "/v3/auth/role/list", service.roleList(request:context:))
        addUnary(&router, "/v3/auth/role/delete", service.roleDelete(request:context:))
        addUnary(&router, "/v3/auth/role/grant", service.roleGrantPermission(request:context:))
        addUnary(&router, "/v3/auth/role/revoke", service.roleRevokePermission(request:context:))
    }

    /// Routes Lock's gateway paths to `service`.
    public static func register(lock service: LockService, in router: inout HTTPRouter) {
        addUnary(&router, "/v3/lock/lock", service.lock(request:context:))
        addUnary(&router, "/v3/lock/unlock", service.unlock(request:context:))
    }

    /// Routes Election's gateway paths to `service`.
    public static func register(election service: ElectionService, in router: inout HTTPRouter) {
        addUnary(&router, "/v3/election/campaign", service.campaign(request:context:))
        addUnary(&router, "/v3/election/proclaim", service.proclaim(request:context:))
        addUnary(&router, "/v3/election/leader", service.leader(request:context:))
        addUnary(&router, "/v3/election/resign", service.resign(request:context:))
        router.add("/v3/election/observe", methods: [.POST],
                   handler: serverStreaming("/v3/election/observe", service.observe(request:response:context:)))
    }
}
