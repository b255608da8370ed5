import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2

/// Serves the client port's hot unary calls (``FastUnaryService``) at the connection level,
/// between NIO's HTTP/2 handler and the stream multiplexer: a call it takes never gets an
/// HTTP/2 stream channel, pipeline or handlers of its own. Its frames are read and its answer
/// written as frames of the connection. Every other stream (streaming calls, keep-alives,
/// anything not a plain uncompressed gRPC POST) goes on untouched to the multiplexer behind,
/// which makes a stream channel for it as before.
///
/// What a stream channel did for the calls taken here is done here: the request's message
/// framing and size limit (etcd's ResourceExhausted "received message larger than max"
/// before the message is buffered), the stream's receive window (a WINDOW_UPDATE as a large
/// request is read), and an answer dropped when the client reset the stream first. The
/// connection's window is the multiplexer's, from the HTTP/2 handler's window events.
final class FastStreamRouter: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame
    typealias InboundOut = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private struct Call {
        var path: String
        var token: String?
        var body: ByteBuffer?
        /// Received bytes not yet given back to the client's send window for this stream.
        var unacknowledged = 0
        /// The request is complete: the call runs or has answered.
        var running = false
        /// The stream was reset or answered: nothing more is written to it.
        var done = false
    }

    private let service: any FastUnaryService
    private let limit: Int
    private let window: Int
    /// The streams served here, from their request headers until NIO reports them closed.
    private var calls: [HTTP2StreamID: Call] = [:]

    init(service: any FastUnaryService, limit: Int, window: Int) {
        self.service = service
        self.limit = limit
        self.window = window
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let id = frame.streamID
        guard id != .rootStream else {
            context.fireChannelRead(data)
            return
        }
        guard var call = calls[id] else {
            if case .headers(let h) = frame.payload, let path = h.headers.first(name: ":path"),
               path != GRPCFrames.keepAlivePath, service.serves(path),
               GRPCFrames.isPlainGRPC(h.headers, path: path) {
                calls[id] = Call(path: path, token: h.headers.first(name: "token"))
                if h.endStream { finish(context: context, id) }
                return
            }
            context.fireChannelRead(data)
            return
        }
        guard !call.running else { return }
        switch frame.payload {
        case .data(let d):
            guard case .byteBuffer(var bytes) = d.data else { return }
            call.unacknowledged += bytes.readableBytes + (d.paddingBytes.map { $0 + 1 } ?? 0)
            if call.body == nil {
                call.body = bytes
            } else {
                call.body!.writeBuffer(&bytes)
            }
            // Refused from the first message's prefix, before its bytes are buffered; a body
            // longer than that one message (a unary call carries one) is bounded the same way.
            let size = max(Self.declaredLength(call.body!) ?? 0, call.body!.readableBytes - 5)
            if size > limit {
                calls[id] = call
                refuse(context: context, id, RPCError(code: .resourceExhausted, message: "grpc: received message larger than max (\(size) vs. \(limit))"))
                return
            }
            if d.endStream {
                calls[id] = call
                finish(context: context, id)
                return
            }
            if call.unacknowledged >= window / 2 {
                // The stream's receive window, given back as the request is read (the
                // message itself is bounded by the limit above).
                context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: call.unacknowledged))), promise: nil)
                context.flush()
                call.unacknowledged = 0
            }
            calls[id] = call
        case .headers(let h):
            // Request trailers end the request.
            if h.endStream { finish(context: context, id) }
        case .rstStream:
            // The client gave up: the answer, if it still comes, is dropped.
            calls[id]?.running = true
            calls[id]?.done = true
        default:
            break
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let closed = event as? StreamClosedEvent {
            calls.removeValue(forKey: closed.streamID)
        }
        // Passed on either way: the connection manager behind counts every stream.
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        calls.removeAll()
        context.fireChannelInactive()
    }

    /// The length the first message of `body` declares, once its 5-byte prefix is in.
    private static func declaredLength(_ body: ByteBuffer) -> Int? {
        guard let length = body.getInteger(at: body.readerIndex + 1, as: UInt32.self) else { return nil }
        return Int(length)
    }

    /// The request of stream `id` is complete: checks its framing and runs the call.
    private func finish(context: ChannelHandlerContext, _ id: HTTP2StreamID) {
        guard var call = calls[id], !call.running else { return }
        call.running = true
        var bytes = call.body ?? ByteBuffer()
        call.body = nil
        calls[id] = call
        switch GRPCMessageFraming.unaryMessage(&bytes) {
        case .failure(let error):
            answer(context: context, id, .failure(error))
            return
        case .success(let message):
            let commonName = ClientCertificateNames.shared.name(of: context.channel)
            let service = self.service
            let path = call.path
            let token = call.token
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            let reply: @Sendable (Result<[UInt8], RPCError>) -> Void = { result in
                if loop.inEventLoop {
                    let (router, context) = bound.value
                    router.answer(context: context, id, result)
                } else {
                    EventLoopHandoff.execute({
                        let (router, context) = bound.value
                        router.answer(context: context, id, result)
                    }, on: loop)
                }
            }
            if service.start(path: path, message: message, token: token, commonName: commonName,
                             onLoop: { work in EventLoopHandoff.execute(work, on: loop) }, done: reply) {
                return
            }
            Task {
                reply(await service.call(path: path, message: message, token: token, commonName: commonName))
            }
        }
    }

    /// Ends stream `id` with `error` before its request is read to the end, and resets it so
    /// the client stops sending (as a stream channel's close did).
    private func refuse(context: ChannelHandlerContext, _ id: HTTP2StreamID, _ error: RPCError) {
        guard calls[id]?.done == false else { return }
        calls[id]!.running = true
        calls[id]!.done = true
        calls[id]!.body = nil
        context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: GRPCFrames.trailers(error, headersSent: false), endStream: true)))), promise: nil)
        context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.cancel))), promise: nil)
        context.flush()
    }

    /// Writes the call's answer and ends the stream; nothing when the stream is gone.
    private func answer(context: ChannelHandlerContext, _ id: HTTP2StreamID, _ result: Result<[UInt8], RPCError>) {
        guard calls[id]?.done == false, context.channel.isActive else { return }
        calls[id]!.done = true
        switch result {
        case .success(let message):
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: GRPCFrames.responseHeaders())))), promise: nil)
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(GRPCFrames.framed(message, context.channel.allocator)), endStream: false)))), promise: nil)
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: GRPCFrames.trailers(nil, headersSent: true), endStream: true)))), promise: nil)
        case .failure(let error):
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: GRPCFrames.trailers(error, headersSent: false), endStream: true)))), promise: nil)
        }
        context.flush()
    }
}
