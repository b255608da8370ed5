import NIOCore
import NIOHTTP1

/// The limits of one HTTP/1.1 connection on the client port.
struct HTTPLimits: Sendable {
    /// Request bodies larger than this are answered 413.
    var maxBodyBytes: Int
    /// Request heads larger than this are answered 400 (by NIO's parser).
    var maxHeaderBytes: Int
    /// Time allowed for the complete head of the next request.
    var idleTimeout: TimeAmount
    /// Time allowed for a request body after its head.
    var readTimeout: TimeAmount
}

/// Serves HTTP/1.1 requests of one connection through an ``HTTPRouter``.
///
/// NIO's pipelining handler in front of it delivers one request at a time, so at most one
/// route handler runs per connection. Bodies larger than the limit are answered with 413 and
/// the connection is closed. Malformed requests never reach this handler: NIO's protocol error
/// handler answers 400 and closes the connection. While the connection waits for the client
/// (the next request's head, or a body), a deadline runs: ``HTTPLimits/idleTimeout`` for the
/// head, ``HTTPLimits/readTimeout`` for the body; when it passes the connection is closed.
final class HTTPConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case receiving(HTTPRequestHead, ByteBuffer)
        case rejecting(HTTPRequestHead)
        case responding
    }

    private static let tooLarge: HTTPResponse = {
        var response = HTTPResponse.text(.payloadTooLarge, "request body too large\n")
        response.headers.replaceOrAdd(name: "connection", value: "close")
        return response
    }()

    private let router: HTTPRouter
    private let maxBodyBytes: Int
    private let limits: HTTPLimits
    private var state = State.idle
    private var task: Task<Void, Never>?
    /// Closes the connection when the client is too slow (see the type's description).
    private var deadline: Scheduled<Void>?

    init(router: HTTPRouter, limits: HTTPLimits) {
        self.router = router
        self.maxBodyBytes = limits.maxBodyBytes
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armDeadline(context: context, after: limits.idleTimeout)
    }

    private func armDeadline(context: ChannelHandlerContext, after delay: TimeAmount) {
        deadline?.cancel()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: delay) {
            bound.value.close(promise: nil)
        }
    }

    private func disarmDeadline() {
        deadline?.cancel()
        deadline = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch part {
        case .head: armDeadline(context: context, after: limits.readTimeout)
        case .end: disarmDeadline()
        case .body: break
        }
        switch (part, state) {
        case (.head(let head), .idle):
            let declared = head.headers.first(name: "content-length").flatMap { Int($0) } ?? 0
            let expectsContinue = head.headers["expect"].contains { $0.lowercased() == "100-continue" }
            if declared > maxBodyBytes {
                state = .rejecting(head)
                if expectsContinue {
                    // The client waits for our word before sending the body: refuse now.
                    state = .responding
                    respond(context: context, head: head, forceClose: true) { _ in Self.tooLarge }
                }
            } else {
                state = .receiving(head, context.channel.allocator.buffer(capacity: max(0, declared)))
                if expectsContinue {
                    let interim = HTTPResponseHead(version: head.version, status: .continue)
                    context.writeAndFlush(wrapOutboundOut(.head(interim)), promise: nil)
                }
            }
        case (.body(var chunk), .receiving(let head, var body)):
            state = .idle  // drop the reference while appending (avoid a copy)
            if body.readableBytes + chunk.readableBytes > maxBodyBytes {
                state = .rejecting(head)
            } else {
                body.writeBuffer(&chunk)
                state = .receiving(head, body)
            }
        case (.body, .rejecting):
            break
        case (.end, .receiving(let head, let body)):
            state = .responding
            var request = HTTPRequest(method: head.method, uri: head.uri, headers: head.headers, body: body)
            request.certificateCommonName = ClientCertificateNames.shared.name(of: context.channel)
            let ready = request
            respond(context: context, head: head) { router in await router.respond(to: ready) }
        case (.end, .rejecting(let head)):
            state = .responding
            respond(context: context, head: head, forceClose: true) { _ in Self.tooLarge }
        case (.body, .responding), (.end, .responding):
            // The rest of a request already refused (413 after `expect: 100-continue`).
            break
        default:
            // Parts out of order cannot come from NIO's decoder; treat as a broken connection.
            context.close(promise: nil)
        }
    }

    /// The server is shutting down: a response still being produced is cancelled (a streamed
    /// body ends and the connection closes; a complete body is still sent). NIO's pipelining
    /// handler closes the connection once no response is pending.
    func quiesce() {
        task?.cancel()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Parse errors were answered with 400 by NIO's error handler; nothing else is
        // recoverable on this connection either.
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        task?.cancel()
        task = nil
        disarmDeadline()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        task?.cancel()
        task = nil
        disarmDeadline()
    }

    private func respond(
        context: ChannelHandlerContext,
        head: HTTPRequestHead,
        forceClose: Bool = false,
        produce: @escaping @Sendable (HTTPRouter) async -> HTTPResponse
    ) {
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let router = self.router
        let version = head.version
        let keepAlive = head.isKeepAlive && !forceClose
        let headersOnly = head.method == .HEAD

        @Sendable func write(_ part: HTTPServerResponsePart) async throws {
            try await loop.flatSubmit {
                bound.value.1.writeAndFlush(NIOAny(part))
            }.get()
        }

        task = Task {
            let response = await produce(router)
            var headers = response.headers
            var closeAfter = !keepAlive
            switch response.body {
            case .bytes(let bytes):
                headers.replaceOrAdd(name: "content-length", value: String(bytes.readableBytes))
                headers.remove(name: "transfer-encoding")
            case .stream:
                headers.remove(name: "content-length")
                if version < .http1_1 { closeAfter = true }  // no chunking: the body ends at close
            }
            if closeAfter { headers.replaceOrAdd(name: "connection", value: "close") }

            var failed = false
            do {
                try await write(.head(HTTPResponseHead(version: version, status: response.status, headers: headers)))
                switch response.body {
                case .bytes(let bytes):
                    if bytes.readableBytes > 0, !headersOnly { try await write(.body(.byteBuffer(bytes))) }
                case .stream(let produceBody):
                    if !headersOnly {
                        try await produceBody(HTTPBodyWriter { chunk in try await write(.body(.byteBuffer(chunk))) })
                    }
                }
            } catch {
                failed = true
            }

            // Back to idle before `.end` goes out: the pipelining handler may deliver the next
            // request as soon as it sees the end of this response.
            let close = closeAfter || failed
            let broken = failed
            loop.execute {
                let (handler, context) = bound.value
                handler.task = nil
                handler.state = .idle
                if broken {
                    context.close(promise: nil)
                    return
                }
                if !close {
                    // Waiting for the next request (a pipelined one may already be parsed:
                    // its head re-arms the deadline).
                    handler.armDeadline(context: context, after: handler.limits.idleTimeout)
                }
                let written = context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
                if close {
                    written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
                }
            }
        }
    }
}

/// Tells the ``HTTPConnectionHandler`` behind NIO's HTTP handlers about a graceful shutdown.
final class HTTPQuiesceRelay: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    private let handler: HTTPConnectionHandler

    init(handler: HTTPConnectionHandler) {
        self.handler = handler
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            handler.quiesce()
        }
        context.fireUserInboundEventTriggered(event)
    }
}

extension HTTPVersion {
    fileprivate static func < (lhs: HTTPVersion, rhs: HTTPVersion) -> Bool {
        (lhs.major, lhs.minor) < (rhs.major, rhs.minor)
    }
}
