public import NIOCore
public import NIOHTTP1

/// One HTTP/1.1 request as seen by a route handler (the body is read in full first, up to the
/// listener's limit).
public struct HTTPRequest: Sendable {
    /// The request method.
    public var method: HTTPMethod
    /// The request target as sent (path and query).
    public var uri: String
    /// The path part of ``uri``, without the query.
    public var path: String
    /// The raw query (after `?`), or empty.
    public var query: String
    /// The request headers.
    public var headers: HTTPHeaders
    /// The request body.
    public var body: ByteBuffer
    /// The common name of the connection's verified client certificate (https:// with
    /// `--client-cert-auth`), or nil: the gateway's user when no token is given.
    var certificateCommonName: String?

    /// Creates a request; `path` and `query` are split from `uri`.
    public init(method: HTTPMethod, uri: String, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer()) {
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        if let mark = uri.firstIndex(of: "?") {
            path = String(uri[..<mark])
            query = String(uri[uri.index(after: mark)...])
        } else {
            path = uri
            query = ""
        }
    }

    /// The values of a query parameter (no percent-decoding beyond `+` → space is attempted:
    /// etcd's own parameters are plain words).
    public func queryValues(_ name: String) -> [String] {
        query.split(separator: "&").compactMap { pair in
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.first.map(String.init) == name else { return nil }
            return kv.count > 1 ? String(kv[1]) : ""
        }
    }
}

/// Writes the chunks of a streamed response body; each write waits until NIO has flushed it
/// (back-pressure), and throws once the client has gone away.
public struct HTTPBodyWriter: Sendable {
    let writeChunk: @Sendable (ByteBuffer) async throws -> Void

    /// Writes one chunk (empty buffers are skipped: an empty chunk would end the body).
    /// - Throws: `CancellationError` once the connection closed or the server is stopping.
    public func write(_ chunk: ByteBuffer) async throws {
        try Task.checkCancellation()
        guard chunk.readableBytes > 0 else { return }
        try await writeChunk(chunk)
    }

    /// Writes one chunk from bytes.
    public func write(_ bytes: some Sequence<UInt8>) async throws {
        try await write(ByteBuffer(bytes: bytes))
    }
}

/// A route handler's answer.
public struct HTTPResponse: Sendable {
    /// The body: complete bytes, or a stream sent with chunked transfer encoding.
    public enum Body: Sendable {
        /// A complete body, sent with `content-length`.
        case bytes(ByteBuffer)
        /// A streamed body: the closure writes chunks and returns to end the response.
        case stream(@Sendable (HTTPBodyWriter) async throws -> Void)
    }

    /// The status.
    public var status: HTTPResponseStatus
    /// The headers (`content-length`/`transfer-encoding` are set by the listener).
    public var headers: HTTPHeaders
    /// The body.
    public var body: Body

    /// Creates a response.
    public init(status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: Body = .bytes(ByteBuffer())) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A complete response with a `content-type`.
    public static func text(_ status: HTTPResponseStatus, _ text: String, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: ["content-type": contentType], body: .bytes(ByteBuffer(string: text)))
    }

    /// A complete JSON response (`application/json`); `json` must already be serialized.
    public static func json(_ status: HTTPResponseStatus = .ok, _ json: String) -> HTTPResponse {
        text(status, json, contentType: "application/json")
    }
}

/// A route handler.
public typealias HTTPRouteHandler = @Sendable (HTTPRequest) async -> HTTPResponse

/// Maps method and path to handlers: exact paths first, then the longest matching prefix
/// route. Unknown paths answer 404; a known path with a method it does not allow answers 405.
public struct HTTPRouter: Sendable {
    private struct Route: Sendable {
        var methods: [HTTPMethod]?
        var handler: HTTPRouteHandler
    }

    private var exact: [String: Route] = [:]
    private var prefixes: [(prefix: String, route: Route)] = []

    /// An empty router.
    public init() {}

    /// Routes requests for exactly `path` (query ignored). `methods` nil allows every method.
    public mutating func add(_ path: String, methods: [HTTPMethod]? = [.GET], handler: @escaping HTTPRouteHandler) {
        exact[path] = Route(methods: methods, handler: handler)
    }

    /// Routes every path starting with `prefix` (e.g. `/v3/`), unless an exact route matches.
    public mutating func addPrefix(_ prefix: String, methods: [HTTPMethod]? = nil, handler: @escaping HTTPRouteHandler) {
        prefixes.removeAll { $0.prefix == prefix }
        prefixes.append((prefix, Route(methods: methods, handler: handler)))
        prefixes.sort { $0.prefix.count > $1.prefix.count }
    }

    /// Adds etcd's `/version` route: `{"etcdserver":"…","etcdcluster":"…"}`; the cluster version
    /// is asked for on each request (etcd answers `not_decided` before it is known).
    public mutating func addVersionRoute(
        serverVersion: String = EtcdVersion.server,
        clusterVersion: @escaping @Sendable () -> String = { EtcdVersion.cluster }
    ) {
        add("/version") { _ in
            var json: [UInt8] = []
            json.append(contentsOf: #"{"etcdserver":"#.utf8)
            JSONLogFormat.appendString(serverVersion, to: &json)
            json.append(contentsOf: #","etcdcluster":"#.utf8)
            JSONLogFormat.appendString(clusterVersion(), to: &json)
            json.append(UInt8(ascii: "}"))
            return HTTPResponse(status: .ok, headers: ["content-type": "application/json"], body: .bytes(ByteBuffer(bytes: json)))
        }
    }

    /// Answers a request.
    public func respond(to request: HTTPRequest) async -> HTTPResponse {
        let route: Route
        if let found = exact[request.path] {
            route = found
        } else if let found = prefixes.first(where: { request.path.hasPrefix($0.prefix) }) {
            route = found.route
        } else {
            return .text(.notFound, "404 page not found\n")
        }
        // HEAD is answered like GET (the listener sends no body).
        let method = request.method == .HEAD ? HTTPMethod.GET : request.method
        if let methods = route.methods, !methods.contains(method) {
            var response = HTTPResponse.text(.methodNotAllowed, "Method Not Allowed\n")
            let allowed = methods.map(\.rawValue).sorted().joined(separator: ", ")
            response.headers.add(name: "allow", value: allowed)
            return response
        }
        return await route.handler(request)
    }
}

/// The versions swetcd reports where etcd reports its own.
public enum EtcdVersion {
    /// The etcd server version swetcd is compatible with (what `/version` and Status report).
    public static let server = "3.5.17"
    /// The cluster version (major.minor.0, as etcd reports it).
    public static let cluster = "3.5.0"
}
