// The sending end of `swetcd.peer.Peer/Messages` as a raw NIO HTTP/2 stream: the Raft loop's
// `send` writes each batch as one gRPC-framed DATA frame with `writeAndFlush` (NIO hops to
// the connection's event loop), with no Swift task in between.

import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import Raft
import Synchronization

/// One outgoing `Messages` call to a peer on a connection of its own (plaintext, or peer TLS
/// with the dialler's context of the moment, as grpc-swift's connections to the peer). The
/// request headers are written once; each ``send(_:)`` then writes its batches. What the peer
/// has not yet taken (written but not on the socket) is bounded by `capacity` messages;
/// beyond it messages are dropped, as a full `PeerQueue` drops them.
final class PeerRawStream: Sendable {
    private let connection: any Channel
    private let stream: any Channel
    private let watcher: NIOLoopBound<PeerRawStreamWatcher>
    private let transport: PeerTransport
    private let peer: UInt64
    private let capacity: Int
    /// Messages written whose write has not completed yet.
    private let pending = Atomic<Int>(0)
    /// Set by ``close()``: the stream was ended on purpose here.
    private let closedHere = Atomic<Bool>(false)

    private init(connection: any Channel, stream: any Channel, watcher: NIOLoopBound<PeerRawStreamWatcher>,
                 transport: PeerTransport, peer: UInt64) {
        self.connection = connection
        self.stream = stream
        self.watcher = watcher
        self.transport = transport
        self.peer = peer
        self.capacity = max(1, transport.options.queueCapacity)
    }

    /// Dials `url`, opens the HTTP/2 connection and the `Messages` stream to `peer` and writes
    /// its request headers. Throws if any step fails within `transport.options.handshakeTimeout`.
    static func open(_ url: EndpointURL, peer: UInt64, transport: PeerTransport) async throws -> PeerRawStream {
        var sslContext: NIOSSLContext?
        switch url.scheme {
        case "http": break
        case "https":
            guard let tls = transport.tls else {
                throw PeerTransportError.unsupportedURL("\(url): an https:// peer URL needs peer TLS (--peer-cert-file and --peer-key-file, or --peer-auto-tls)")
            }
            sslContext = tls.client.current()
        default:
            throw PeerTransportError.unsupportedURL("\(url): peer URLs are http:// or https://")
        }
        let serverName = PeerTLS.isIPAddress(url.host) ? nil : url.host
        let options = transport.options
        let timeout = TimeAmount(options.handshakeTimeout)
        let tlsContext = sslContext
        let connection = try await ClientBootstrap(group: options.eventLoopGroup ?? MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tlsContext {
                        try sync.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                    }
                    _ = try sync.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()
                    ) { inbound in
                        // A peer does not open streams to the dialler.
                        inbound.close()
                    }
                    try sync.addHandler(PeerPingHandler(interval: TimeAmount(options.keepaliveInterval),
                                                        timeout: TimeAmount(options.keepaliveTimeout)))
                }
            }
            .connect(host: url.host, port: url.port).get()
        do {
            let multiplexer = try await connection.pipeline.handler(type: NIOHTTP2Handler.self).flatMapThrowing {
                try $0.syncMultiplexer()
            }.get()
            let stream = try await connection.eventLoop.flatSubmit {
                multiplexer.createStreamChannel { stream in
                    stream.eventLoop.makeCompletedFuture {
                        try stream.pipeline.syncOperations.addHandler(PeerRawStreamWatcher())
                    }
                }
            }.get()
            let watcher = try await stream.eventLoop.submit {
                NIOLoopBound(try stream.pipeline.syncOperations.handler(type: PeerRawStreamWatcher.self), eventLoop: stream.eventLoop)
            }.get()
            var headers = HPACKHeaders()
            headers.add(name: ":method", value: "POST")
            headers.add(name: ":scheme", value: url.scheme)
            headers.add(name: ":path", value: PeerMessagesHandler.path)
            let host = url.host.contains(":") ? "[\(url.host)]" : url.host
            headers.add(name: ":authority", value: "\(host):\(url.port)")
            headers.add(name: "content-type", value: "application/grpc")
            headers.add(name: "te", value: "trailers")
            headers.add(name: "user-agent", value: PeerService.serverVersion)
            let opened = stream.eventLoop.makePromise(of: Void.self)
            stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: headers)), promise: opened)
            let deadline = connection.eventLoop.scheduleTask(in: timeout) { connection.close(promise: nil) }
            defer { deadline.cancel() }
            try await opened.futureResult.get()
            return PeerRawStream(connection: connection, stream: stream, watcher: watcher, transport: transport, peer: peer)
        } catch {
            // The connection can end while the stream is set up (its pings went unanswered,
            // the peer hung up): then the pipeline is torn down and the step that failed says
            // little, so report what happened, as the stream would once open.
            let lost = !connection.isActive
            try? await connection.close()
            if lost { throw RPCError(code: .unavailable, message: "the connection to the peer closed while opening the stream") }
            throw error
        }
    }

    /// Writes `messages` to the peer, in order, from any thread (without blocking). Returns
    /// how many were dropped: those beyond the bound, or all once the stream is closed.
    func send(_ messages: [Raft.Message]) -> Int {
        guard stream.isActive else { return messages.count }
        let room = capacity - pending.load(ordering: .relaxed)
        guard room > 0 else { return messages.count }
        let taken = room >= messages.count ? messages : Array(messages.prefix(room))
        pending.add(taken.count, ordering: .relaxed)
        for batch in transport.batches(taken, to: peer) {
            let count = batch.messages.count
            do {
                write(try batch.serializedBytes(), messages: count)
            } catch {
                pending.subtract(count, ordering: .relaxed)
                transport.logger.error("cannot encode a message batch", metadata: ["error": "\(error)"])
            }
        }
        return messages.count - taken.count
    }

    /// Writes one gRPC message (`bytes`, an encoded batch of `messages` counted in `pending`).
    func write(_ bytes: [UInt8], messages count: Int) {
        let frame = GRPCFrames.framed(bytes, stream.allocator)
        let promise = stream.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { [self] result in
            pending.subtract(count, ordering: .relaxed)
            // Lost with the stream: Raft should probe the peer.
            if case .failure = result { transport.delegate.transportReportUnreachable(peer) }
        }
        stream.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(frame))), promise: promise)
    }

    /// Whether the stream is still open.
    var isOpen: Bool { stream.isActive }

    /// Waits until the stream ends; returns what ended it: the peer's status when it sent
    /// one other than OK, nil when ``close()`` ended it, otherwise an UNAVAILABLE error (the
    /// connection broke, or its pings went unanswered).
    func closed() async -> (any Error)? {
        try? await stream.closeFuture.get()
        let status = try? await stream.eventLoop.submit { self.watcher.value.status }.get()
        if let status { return status }
        if closedHere.load(ordering: .acquiring) { return nil }
        return RPCError(code: .unavailable, message: "the stream to the peer was closed")
    }

    /// Closes the stream and its connection (from any thread).
    func close() {
        closedHere.store(true, ordering: .releasing)
        connection.close(promise: nil)
    }
}

/// On the raw `Messages` stream: keeps the status the peer ends the call with (response
/// bodies are ignored, as the grpc-swift sender ignores them).
final class PeerRawStreamWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload

    /// The peer's status when not OK.
    private(set) var status: RPCError?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .headers(let h) = unwrapInboundIn(data) else { return }
        if let status = h.headers.first(name: ":status"), status != "200" {
            self.status = RPCError(code: .unavailable, message: "the peer answered the Messages call with HTTP status \(status)")
        }
        if let code = h.headers.first(name: "grpc-status"), code != "0" {
            let message = h.headers.first(name: "grpc-message").flatMap { $0.removingPercentEncoding } ?? ""
            let rpcCode = Int(code).flatMap { Status.Code(rawValue: $0) }.flatMap { RPCError.Code($0) } ?? .unknown
            self.status = RPCError(code: rpcCode, message: message)
        }
        if h.endStream { context.close(promise: nil) }
    }
}

/// Pings the peer every `interval` on the raw connection and closes it when a ping is not
/// answered within `timeout` (as grpc-swift's client keepalive does on its connections).
final class PeerPingHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let interval: TimeAmount
    private let timeout: TimeAmount
    private var repeated: RepeatedTask?
    private var deadline: Scheduled<Void>?
    private var counter: UInt64 = 0

    init(interval: TimeAmount, timeout: TimeAmount) {
        self.interval = interval
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { stop() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if case .ping(_, ack: true) = frame.payload {
            deadline?.cancel()
            deadline = nil
        }
        context.fireChannelRead(data)
    }

    private func start(_ context: ChannelHandlerContext) {
        guard repeated == nil else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        repeated = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (handler, context) = bound.value
            handler.ping(context)
        }
    }

    private func ping(_ context: ChannelHandlerContext) {
        counter &+= 1
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .ping(HTTP2PingData(withInteger: counter), ack: false))), promise: nil)
        if deadline == nil {
            let channel = context.channel
            deadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        }
    }

    private func stop() {
        repeated?.cancel()
        repeated = nil
        deadline?.cancel()
        deadline = nil
    }
}
