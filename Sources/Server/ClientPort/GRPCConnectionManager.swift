import NIOCore
import NIOHTTP2

/// Connection management of one gRPC (HTTP/2) connection on the client port, behind NIO's
/// HTTP/2 handler: it closes connections that stay without calls, pings quiet clients, polices
/// client pings, and shuts the connection down gracefully. The rules follow grpc-go (etcd's
/// server) and grpc-swift's server connection handler:
///
/// - Idle: with no open stream for `maxIdleTime`, a graceful shutdown starts.
/// - Keepalive: after `keepaliveTime` without a read, the server pings; no answer (nor any
///   other read) within `keepaliveTimeout` closes the connection.
/// - Client pings: a ping sooner than `minPingInterval` after the last accepted one (or, without
///   open streams, sooner than 2 h: pings without calls are not allowed) is a strike; the third
///   strike is answered GOAWAY ENHANCE_YOUR_CALM with "too_many_pings" and the connection closes.
///   As in grpc-go, once a HEADERS or DATA frame has gone out (told by ``GRPCConnectionWriter``),
///   the next ping is accepted and the strikes start over: a client's flow-control (BDP) pings
///   during a large response are not abuse.
/// - Graceful shutdown (on `ChannelShouldQuiesceEvent`, or idle): GOAWAY with the largest stream
///   ID and a PING; the PING's answer proves the client has seen it, so a second GOAWAY names
///   the last stream opened; the connection closes once no stream is open. The first GOAWAY
///   goes out through ``FirstGoAwayBypass`` (NIO would refuse the streams still to come).
final class GRPCConnectionManager: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame
    typealias InboundOut = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    struct Configuration: Sendable {
        var maxIdleTime: TimeAmount?
        var keepaliveTime: TimeAmount
        var keepaliveTimeout: TimeAmount
        var minPingInterval: TimeAmount
    }

    /// Pings without calls must be at least this far apart (gRFC A8, grpc-go).
    static let pingIntervalWithoutCalls = TimeAmount.hours(2)
    /// Strikes tolerated before too_many_pings (grpc-go and grpc-swift: 2).
    static let maxPingStrikes = 2

    private enum Phase {
        case active
        /// The first GOAWAY and its PING are out; `secondSent` once the second GOAWAY is.
        case closing(secondSent: Bool)
        case closed
    }

    private let configuration: Configuration
    private var context: ChannelHandlerContext?
    private var phase = Phase.active
    private var openStreams = 0
    private var lastStreamID = HTTP2StreamID.rootStream
    private var pingStrikes = 0
    /// A stream wrote response HEADERS or DATA since the last client ping.
    private var wroteSinceLastPing = false
    private var lastValidPing: NIODeadline?
    private var idleTimer: Scheduled<Void>?
    /// The keepalive timer, or while a keepalive ping is out, its timeout.
    private var keepaliveTimer: Scheduled<Void>?
    private var lastRead = NIODeadline.now()
    private var started = false
    private let shutdownPing = HTTP2PingData(withInteger: .random(in: .min ... .max))
    private let keepalivePing = HTTP2PingData(withInteger: .random(in: .min ... .max))

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { start() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimers()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        start()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        phase = .closed
        cancelTimers()
        context.fireChannelInactive()
    }

    private func start() {
        guard !started else { return }
        started = true
        lastRead = .now()
        startIdleTimer()
        startKeepaliveTimer()
    }

    private func cancelTimers() {
        idleTimer?.cancel()
        idleTimer = nil
        keepaliveTimer?.cancel()
        keepaliveTimer = nil
    }

    // MARK: Streams

    private func streamOpened(_ id: HTTP2StreamID) {
        openStreams += 1
        if id > lastStreamID { lastStreamID = id }
        idleTimer?.cancel()
        idleTimer = nil
    }

    private func streamClosed(_ id: HTTP2StreamID) {
        openStreams -= 1
        guard openStreams == 0 else { return }
        switch phase {
        case .active:
            startIdleTimer()
        case .closing(secondSent: true):
            // Let NIO flush the stream's last frames first.
            guard let context else { return }
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { bound.value.closeGracefully() }
        case .closing, .closed:
            break
        }
    }

    /// A HEADERS or DATA frame went out on this connection (on the event loop).
    func wroteHeadersOrData() {
        wroteSinceLastPing = true
    }

    // MARK: Reads

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Anything read shows the peer is alive (the keepalive timer looks at this time).
        lastRead = .now()
        let frame = unwrapInboundIn(data)
        if case .ping(let ping, let ack) = frame.payload {
            if ack {
                receivedPingAck(ping)
            } else {
                receivedPing()
            }
        }
        context.fireChannelRead(data)
    }

    private func receivedPing() {
        guard let context else { return }
        switch phase {
        case .closed:
            return
        case .active, .closing:
            break
        }
        let now = NIODeadline.now()
        if wroteSinceLastPing {
            wroteSinceLastPing = false
            pingStrikes = 0
            lastValidPing = now
            return
        }
        let interval = openStreams > 0 ? configuration.minPingInterval : Self.pingIntervalWithoutCalls
        if let last = lastValidPing, last + interval > now {
            pingStrikes += 1
            guard pingStrikes > Self.maxPingStrikes else { return }
            phase = .closed
            cancelTimers()
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(
                lastStreamID: lastStreamID, errorCode: .enhanceYourCalm,
                opaqueData: context.channel.allocator.buffer(string: "too_many_pings")))
            context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
            // One tick later, so the GOAWAY is written before the close.
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.execute { bound.value.close(promise: nil) }
        } else {
            lastValidPing = now
        }
        // NIO's HTTP/2 handler answers the ping itself.
    }

    private func receivedPingAck(_ ping: HTTP2PingData) {
        guard let context, case .closing(secondSent: false) = phase, ping == shutdownPing else { return }
        phase = .closing(secondSent: true)
        let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(
            lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
        if openStreams == 0 { closeGracefully() }
    }

    // MARK: Events

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            beginGracefulShutdown()
            return
        case let created as NIOHTTP2StreamCreatedEvent:
            // NIO's HTTP/2 handler reports every stream, served by a stream channel or not.
            streamOpened(created.streamID)
        case let closed as StreamClosedEvent:
            streamClosed(closed.streamID)
        default:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case is NIOHTTP2Errors.StreamError:
            // Belongs to one stream, which has been told.
            return
        case is NIOHTTP2Errors.NoSuchStream:
            // A stream opened while shutting down races the GOAWAY; harmless then.
            if case .closing = phase { return }
        default:
            break
        }
        context.close(promise: nil)
    }

    // MARK: Shutdown and timers

    private func beginGracefulShutdown() {
        guard let context, case .active = phase else { return }
        phase = .closing(secondSent: false)
        idleTimer?.cancel()
        idleTimer = nil
        keepaliveTimer?.cancel()
        keepaliveTimer = nil
        let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(
            lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
        context.write(wrapOutboundOut(goAway), promise: nil)
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .ping(shutdownPing, ack: false))), promise: nil)
    }

    /// Closes once everything written has gone out (closing the output side first flushes it).
    private func closeGracefully() {
        guard let context else { return }
        phase = .closed
        cancelTimers()
        let channel = context.channel
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.close(mode: .output, promise: promise)
        promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
    }

    private func startIdleTimer() {
        guard let maxIdle = configuration.maxIdleTime, let context, case .active = phase, openStreams == 0 else { return }
        idleTimer?.cancel()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: maxIdle) {
            bound.value.idleTimer = nil
            bound.value.beginGracefulShutdown()
        }
    }

    /// Arms the keepalive timer to fire `keepaliveTime` after the last read (reads only note
    /// their time: no timer work per read).
    private func startKeepaliveTimer() {
        guard let context, started, case .active = phase else { return }
        keepaliveTimer?.cancel()
        let remaining = lastRead + configuration.keepaliveTime - .now()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        keepaliveTimer = context.eventLoop.scheduleTask(in: max(remaining, .milliseconds(1))) {
            bound.value.keepaliveTimer = nil
            bound.value.keepaliveTimerFired()
        }
    }

    private func keepaliveTimerFired() {
        guard let context, case .active = phase else { return }
        if lastRead + configuration.keepaliveTime > .now() {
            startKeepaliveTimer()
            return
        }
        let pingSent = NIODeadline.now()
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .ping(keepalivePing, ack: false))), promise: nil)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        keepaliveTimer = context.eventLoop.scheduleTask(in: configuration.keepaliveTimeout) {
            let manager = bound.value
            manager.keepaliveTimer = nil
            if manager.lastRead >= pingSent {
                manager.startKeepaliveTimer()
                return
            }
            // No answer, nor anything else, in time: the peer is gone (grpc-go closes).
            manager.phase = .closed
            manager.context?.close(promise: nil)
        }
    }
}
