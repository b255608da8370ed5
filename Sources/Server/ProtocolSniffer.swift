import GRPCNIOTransportHTTP2
import NIOCore
import NIOHTTP1
import NIOHTTP2
import Synchronization

/// Hands configured gRPC connections from child channels (any event loop) to the listening
/// channel's pipeline, where the transport's `NIOAsyncChannel` picks them up.
///
/// Connections can be classified before the handler is attached to the listening channel (the
/// channel accepts as soon as it is bound); those are queued and flushed when it attaches.
final class GRPCConnectionInbox: Sendable {
    typealias Connection = HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel

    private enum State {
        case waiting([(Connection, any Channel)])
        case attached(NIOLoopBound<ChannelHandlerContext>)
        case closed
    }

    private let state = Mutex<State>(.waiting([]))

    init() {}

    private enum Route {
        case queued
        case forward(NIOLoopBound<ChannelHandlerContext>)
        case discard
    }

    /// Forwards a connection into the listening channel's pipeline (from any thread); `channel`
    /// is its socket channel, closed if the listener has already gone.
    func deliver(_ connection: Connection, channel: any Channel) {
        let route: Route = state.withLock { state in
            switch state {
            case .waiting(var queued):
                queued.append((connection, channel))
                state = .waiting(queued)
                return .queued
            case .attached(let context):
                return .forward(context)
            case .closed:
                return .discard
            }
        }
        switch route {
        case .queued:
            break
        case .forward(let target):
            target.eventLoop.execute {
                // The async handler hands buffered reads to its consumer on read-complete.
                target.value.fireChannelRead(NIOAny(connection))
                target.value.fireChannelReadComplete()
            }
        case .discard:
            channel.close(promise: nil)
        }
    }

    /// Called on the listening channel's event loop when the handler joins the pipeline.
    fileprivate func attach(_ context: ChannelHandlerContext) {
        let queued: [(Connection, any Channel)] = state.withLock { state in
            guard case .waiting(let queued) = state else { return [] }
            state = .attached(NIOLoopBound(context, eventLoop: context.eventLoop))
            return queued
        }
        for (connection, _) in queued {
            context.fireChannelRead(NIOAny(connection))
        }
        if !queued.isEmpty {
            context.fireChannelReadComplete()
        }
    }

    /// Called when the listening channel goes away: later connections are closed.
    fileprivate func detach() {
        let queued: [(Connection, any Channel)] = state.withLock { state in
            defer { state = .closed }
            if case .waiting(let queued) = state { return queued }
            return []
        }
        for (_, channel) in queued {
            channel.close(promise: nil)
        }
    }
}

/// The listening channel's pipeline is
/// `[quiescing] [NIO accept] [GRPCConnectionInboxHandler] [NIOAsyncChannel] [AcceptedChannelBypass] tail`.
///
/// NIO registers an accepted child channel only when it reaches the pipeline's tail, and the
/// `NIOAsyncChannel` handler would take any read for a gRPC connection (and then forward it to
/// the tail, which expects child channels). So accepted channels jump over the async handler
/// (fired from the bypass handler's context), and gRPC connections are injected before it and
/// stopped after it.
final class GRPCConnectionInboxHandler: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = GRPCConnectionInbox.Connection

    private let inbox: GRPCConnectionInbox
    private let bypass: AcceptedChannelBypass

    init(inbox: GRPCConnectionInbox, bypass: AcceptedChannelBypass) {
        self.inbox = inbox
        self.bypass = bypass
    }

    func handlerAdded(context: ChannelHandlerContext) {
        inbox.attach(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        inbox.detach()
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbox.detach()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // An accepted child channel, initialized (it classifies itself): send it to the tail so
        // NIO registers it, skipping the async handler that only takes gRPC connections.
        bypass.forwardToTail(data, orClose: unwrapInboundIn(data))
    }
}

/// The last handler of the listening channel (see ``GRPCConnectionInboxHandler``): drops the
/// gRPC connections the async handler forwards, and passes accepted child channels to the tail.
final class AcceptedChannelBypass: ChannelInboundHandler {
    typealias InboundIn = Any

    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A gRPC connection already taken by the async handler: it must not reach the tail.
    }

    /// Fires an accepted child channel to the tail, or closes it if this handler has left.
    fileprivate func forwardToTail(_ data: NIOAny, orClose child: any Channel) {
        if let context {
            context.fireChannelRead(data)
        } else {
            child.close(promise: nil)
        }
    }
}

/// What a client connection turned out to be, and how to continue it.
struct ConnectionStarter: Sendable {
    let connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
    let inbox: GRPCConnectionInbox
    let router: HTTPRouter
    let http: HTTPLimits
    let usesTLS: Bool

    /// Adds the gRPC HTTP/2 pipeline at the end of `channel`'s pipeline and hands the connection
    /// to the transport.
    func startGRPC(on channel: any Channel) -> EventLoopFuture<Void> {
        let inbox = self.inbox
        let tls: HTTP2ServerTransport.ConnectionConfigurator.TLS =
            usesTLS ? .configured(requireALPN: false) : .none
        return connectionConfigurator.configure(channel: channel, tls: tls).flatMapThrowing { connection in
            // The socket became active before this pipeline existed. The HTTP/2 handler copes
            // (it starts at once when added to an active channel) but then swallows the
            // channel-active event, so gRPC's connection manager behind it, which starts its
            // keepalive and idle timers on that event, is told from the HTTP/2 handler's place.
            if channel.isActive {
                try channel.pipeline.syncOperations.context(handlerType: NIOHTTP2Handler.self).fireChannelActive()
            }
            try FirstGoAwayBypass.install(on: channel)
            inbox.deliver(connection, channel: channel)
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
