import NIOCore
import NIOHTTP1
import NIOHTTP2

/// What a client connection turned out to be, and how to continue it.
struct ConnectionStarter: Sendable {
    let grpc: GRPCPipeline
    let router: HTTPRouter
    let http: HTTPLimits

    /// Adds the gRPC HTTP/2 pipeline at the end of `channel`'s pipeline.
    func startGRPC(on channel: any Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try grpc.configure(channel)
        }
    }

    /// Adds the HTTP/1.1 server pipeline and the router's handler at the end of `channel`'s
    /// pipeline. Must run on the channel's event loop.
    func startHTTP(on channel: any Channel) throws {
        let sync = channel.pipeline.syncOperations
        let handler = HTTPConnectionHandler(router: router, limits: http)
        // NIO's pipelining handler keeps the quiesce event to itself while a response is in
        // flight, so the connection handler hears of it from in front.
        try sync.addHandler(HTTPQuiesceRelay(handler: handler))
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderListSize = http.maxHeaderBytes
        decoderLimits.maxHeaderFieldSize = http.maxHeaderBytes
        try sync.configureHTTPServerPipeline(
            withPipeliningAssistance: true,
            withErrorHandling: true,
            withEncoderConfiguration: .init(),
            withDecoderLimitConfiguration: decoderLimits
        )
        try sync.addHandler(handler)
    }
}

/// The first handler of a plaintext client connection: reads until the bytes either match the
/// HTTP/2 client preface (→ gRPC) or cannot (→ HTTP/1.1), then installs that pipeline, replays
/// what it read and removes itself. A connection that says nothing for `timeout` is closed.
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    static let http2Preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private enum State {
        case sniffing
        case switching
        case done
    }

    private let starter: ConnectionStarter
    private let timeout: TimeAmount
    private var state = State.sniffing
    private var buffered: ByteBuffer?
    private var timer: Scheduled<Void>?

    init(starter: ConnectionStarter, timeout: TimeAmount) {
        self.starter = starter
        self.timeout = timeout
    }

    /// nil: not enough bytes yet; true: HTTP/2 preface; false: something else.
    static func classify(_ bytes: ByteBuffer) -> Bool? {
        let count = min(bytes.readableBytes, http2Preface.count)
        guard let head = bytes.getBytes(at: bytes.readerIndex, length: count) else { return nil }
        if head[...] != http2Preface[..<count] { return false }
        return count == http2Preface.count ? true : nil
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            bound.value.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if var pending = buffered {
            buffered = nil
            pending.writeBuffer(&bytes)
            buffered = pending
        } else {
            buffered = bytes
        }
        guard case .sniffing = state, let buffered, let isGRPC = Self.classify(buffered) else { return }
        state = .switching
        timer?.cancel()
        timer = nil
        if isGRPC {
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            starter.startGRPC(on: context.channel).whenComplete { result in
                let (handler, context) = bound.value
                switch result {
                case .success: handler.replayAndLeave(context: context)
                case .failure: context.close(promise: nil)
                }
            }
        } else {
            do {
                try starter.startHTTP(on: context.channel)
                replayAndLeave(context: context)
            } catch {
                context.close(promise: nil)
            }
        }
    }

    private func replayAndLeave(context: ChannelHandlerContext) {
        state = .done
        if let bytes = buffered {
            buffered = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, case .sniffing = state {
            // Shutting down before the client said anything: nothing to finish.
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if case .sniffing = state {
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }
}

/// Sends grpc-swift's first graceful-shutdown GOAWAY (last stream ID 2^31-1) around NIO's HTTP/2
/// state machine instead of through it.
///
/// The first GOAWAY only announces the shutdown: the client may still open streams until it
/// has seen it, which the PING sent with it proves; the second GOAWAY then names the last stream
/// served. NIO HTTP/2 (1.46), once it has sent any GOAWAY, refuses every new stream with
/// REFUSED_STREAM and then treats the DATA frame that follows the refused HEADERS as a
/// connection error (PROTOCOL_ERROR): a gRPC call opened in that window closed the connection
/// under every call in flight, including ones already executed. Written as raw bytes from in
/// front of NIO's handler, the first GOAWAY reaches the client while NIO keeps accepting the
/// streams it opened meanwhile; gRPC's connection manager counts them, so the second GOAWAY
/// (sent through NIO as usual) includes them and they are served.
final class FirstGoAwayBypass: ChannelOutboundHandler {
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// The handler in front of NIO's HTTP/2 handler, through which the raw frame is written.
    final class RawWriter: ChannelOutboundHandler {
        typealias OutboundIn = IOData
        fileprivate var context: ChannelHandlerContext?

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }
        func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }
    }

    private let raw: RawWriter

    init(raw: RawWriter) {
        self.raw = raw
    }

    /// Adds the pair around the connection's NIO HTTP/2 handler (on its event loop).
    static func install(on channel: any Channel) throws {
        let sync = channel.pipeline.syncOperations
        let http2 = try sync.handler(type: NIOHTTP2Handler.self)
        let raw = RawWriter()
        try sync.addHandler(raw, position: .before(http2))
        try sync.addHandler(FirstGoAwayBypass(raw: raw), position: .after(http2))
    }

    /// The 17 bytes of GOAWAY(last stream 2^31-1, NO_ERROR) on stream 0.
    static func encodedAnnouncement(allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 17)
        buffer.writeBytes([0, 0, 8, 0x7, 0, 0, 0, 0, 0])
        buffer.writeInteger(UInt32(Int32.max))
        buffer.writeInteger(UInt32(0))
        return buffer
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        if frame.streamID == .rootStream,
           case .goAway(let lastStreamID, let code, _) = frame.payload,
           lastStreamID == .maxID, code == .noError,
           let rawContext = raw.context {
            let bytes = Self.encodedAnnouncement(allocator: context.channel.allocator)
            rawContext.write(NIOAny(IOData.byteBuffer(bytes)), promise: promise)
            return
        }
        context.write(data, promise: promise)
    }
}
