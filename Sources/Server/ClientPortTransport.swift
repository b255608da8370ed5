public import GRPCCore
public import GRPCNIOTransportHTTP2
import NIOCore
public import NIOPosix
public import NIOSSL
import NIOTLS
import Synchronization

/// How the client port listens: address, optional TLS, gRPC limits and keepalive policy, and
/// the HTTP/1.1 routes served next to gRPC.
public struct ClientPortConfiguration: Sendable {
    /// Where to listen.
    public enum Address: Sendable, Equatable {
        /// A TCP host (name or IP literal) and port; port 0 picks a free port.
        case tcp(host: String, port: Int)
        /// A Unix-domain socket path (an existing socket file is replaced).
        case unix(path: String)
    }

    /// Where to listen.
    public var address: Address
    /// TLS for the port, or nil for plaintext. ALPN `h2` selects gRPC; with `http/1.1` or
    /// without ALPN the first bytes decide, as in plaintext. The context should offer both
    /// protocols (`applicationProtocols = ["h2", "http/1.1"]`).
    public var tls: NIOSSLContext?
    /// When set, asked for the TLS context of each new connection instead of `tls` (certificate
    /// rotation: the source rebuilds it when the files change).
    public var tlsProvider: (@Sendable () -> NIOSSLContext)?
    /// With TLS: a handler run after the handshake (checks the client certificate's name and
    /// records its CN), or nil.
    var certificateHandler: (@Sendable () -> ClientCertificateHandler)?
    /// With TLS: revocation lists that fail the handshake of a revoked client certificate.
    var revocation: CertificateRevocation?
    /// The largest gRPC request message accepted (etcd: `--max-request-bytes` + 512 KiB).
    public var maxReceiveMessageBytes: Int
    /// The largest HTTP/1.1 request body accepted (larger: 413).
    public var maxHTTPBodyBytes: Int
    /// Clients may ping at most this often without being told to go away (etcd:
    /// `--grpc-keepalive-min-time`, 5 s).
    public var keepaliveMinClientPingInterval: Duration
    /// Idle time after which the server pings a client (etcd: `--grpc-keepalive-interval`, 2 h).
    public var keepaliveTime: Duration
    /// How long the server waits for a ping answer (etcd: `--grpc-keepalive-timeout`, 20 s).
    public var keepaliveTimeout: Duration
    /// A connection that sends nothing for this long before its protocol is known is closed.
    public var protocolDetectionTimeout: Duration
    /// The most HTTP/2 streams (gRPC calls) one client connection may have open at once,
    /// advertised in SETTINGS_MAX_CONCURRENT_STREAMS so that a client queues further calls
    /// instead of being refused (etcd: `--max-concurrent-streams`, default 2^32-1). Values
    /// outside 1...2^32-1 mean the default.
    public var maxConcurrentStreams: Int
    /// The most client connections (gRPC and HTTP/1.1 together) open at once; a connection
    /// accepted beyond it is closed at once, before anything is read from it (swetcd:
    /// `--experimental-max-client-connections`, default 4096).
    public var maxConnections: Int
    /// A gRPC connection without open calls for this long is closed gracefully (GOAWAY, after
    /// which the client reconnects when it needs to); nil keeps it open (default 2 h).
    public var maxConnectionIdle: Duration?
    /// An HTTP/1.1 connection must deliver the complete head (request line and headers) of its
    /// next request within this time of becoming ready for it, else it is closed: this bounds
    /// both idle keep-alive connections and headers sent slowly (default 2 min). Headers are
    /// limited by NIO's parser to 80 KiB (larger: 400 and close).
    public var httpIdleTimeout: Duration
    /// An HTTP/1.1 request body must be complete within this time of its head, else the
    /// connection is closed (default 1 min). Responses (a streamed watch) have no limit.
    public var httpReadTimeout: Duration
    /// The largest HTTP/1.1 request head (all header names and values) accepted; larger is
    /// answered 400 and the connection closed (default 80 KiB, NIO's parser limit).
    public var httpMaxHeaderBytes: Int
    /// The HTTP/1.1 routes.
    public var router: HTTPRouter
    /// Unary gRPC calls served by ``FastUnaryHandler`` instead of grpc-swift (nil: none).
    var fastUnary: (any FastUnaryService)?
    /// LeaseKeepAlive streams served by ``FastKeepAliveHandler`` (needs ``fastUnary``).
    var fastKeepAlive: (any FastKeepAliveService)?

    /// etcd's defaults: 1.5 MiB + 512 KiB receive limit, 5 s minimum client ping interval,
    /// 2 h server keepalive, 20 s keepalive timeout; `/version` is routed.
    public init(address: Address, tls: NIOSSLContext? = nil, router: HTTPRouter? = nil) {
        self.address = address
        self.tls = tls
        self.maxReceiveMessageBytes = 1_572_864 + 524_288
        self.maxHTTPBodyBytes = 1_572_864 + 524_288
        self.keepaliveMinClientPingInterval = .seconds(5)
        self.keepaliveTime = .seconds(2 * 60 * 60)
        self.keepaliveTimeout = .seconds(20)
        self.protocolDetectionTimeout = .seconds(10)
        self.maxConcurrentStreams = Self.unlimitedStreams
        self.maxConnections = 4096
        self.maxConnectionIdle = .seconds(2 * 60 * 60)
        self.httpIdleTimeout = .seconds(120)
        self.httpReadTimeout = .seconds(60)
        self.httpMaxHeaderBytes = 80 * 1024
        if let router {
            self.router = router
        } else {
            var router = HTTPRouter()
            router.addVersionRoute()
            self.router = router
        }
    }

    /// etcd's (grpc-go's) "no limit" for concurrent streams: 2^32-1.
    public static let unlimitedStreams = Int(UInt32.max)
}

/// A gRPC server transport for etcd's client port: gRPC (HTTP/2) and HTTP/1.1 on one socket.
///
/// Each accepted connection is classified by its first bytes (the HTTP/2 client preface means
/// gRPC) or, with TLS, by ALPN. gRPC connections go to the `GRPCServer` this transport is
/// given to; HTTP/1.1 connections are answered by the configuration's ``HTTPRouter``.
///
/// ```swift
/// let transport = ClientPortTransport(configuration: .init(address: .tcp(host: "127.0.0.1", port: 0)))
/// let server = GRPCServer(transport: transport, services: services)
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await server.serve() }
///     let address = try await transport.listeningAddress
/// }
/// ```
public struct ClientPortTransport: ServerTransport, ListeningServerTransport {
    public typealias Bytes = GRPCNIOTransportBytes

    private let underlying: HTTP2ServerTransport.Custom<ClientPortListener>
    private let maxReceiveMessageBytes: Int

    /// Creates the transport; nothing is bound until the server starts.
    public init(
        configuration: ClientPortConfiguration,
        eventLoopGroup: MultiThreadedEventLoopGroup = .singletonMultiThreadedEventLoopGroup
    ) {
        var config = HTTP2ServerTransport.Custom<ClientPortListener>.Config.defaults
        maxReceiveMessageBytes = configuration.maxReceiveMessageBytes
        // A message over the limit is answered ResourceExhausted from its length prefix by the
        // guard in front of gRPC's stream handler, never buffered; gRPC's own limit only
        // bounds what a compressed message may inflate to.
        config.rpc.maxRequestPayloadSize = configuration.maxReceiveMessageBytes
        let guardLimit = configuration.maxReceiveMessageBytes
        let fastUnary = configuration.fastUnary
        let fastKeepAlive = configuration.fastKeepAlive
        config.channelDebuggingCallbacks.onAcceptHTTP2Stream = { stream in
            stream.eventLoop.makeCompletedFuture {
                let sync = stream.pipeline.syncOperations
                if let fastUnary {
                    try sync.addHandler(FastUnaryHandler(service: fastUnary, keepAlive: fastKeepAlive, limit: guardLimit), position: .first)
                }
                try sync.addHandler(OversizeMessageGuard(limit: guardLimit), position: .first)
            }
        }
        // Without this setting NIO HTTP/2 enforces 100 streams per connection without telling
        // the client (the HTTP/2 default it sees is "unlimited"): the 101st concurrent call
        // was a connection error that failed every call in flight, executed or not.
        config.http2.maxConcurrentStreams = Self.effectiveMaxConcurrentStreams(configuration.maxConcurrentStreams)
        config.connection.maxIdleTime = configuration.maxConnectionIdle.flatMap { $0 > .zero ? $0 : nil }
        let keepalive = Self.effectiveKeepalive(configuration)
        config.connection.keepalive = .init(
            time: keepalive.time,
            timeout: keepalive.timeout,
            clientBehavior: .init(
                minPingIntervalWithoutCalls: keepalive.minClientPingInterval,
                allowWithoutCalls: false
            )
        )
        underlying = HTTP2ServerTransport.Custom(
            listenerFactory: ClientPortListener(configuration: configuration, eventLoopGroup: eventLoopGroup),
            config: config
        )
    }

    /// The SETTINGS_MAX_CONCURRENT_STREAMS value advertised: etcd (grpc-go) treats 0 as
    /// unlimited; anything outside 1...2^32-1 is the unlimited 2^32-1.
    static func effectiveMaxConcurrentStreams(_ value: Int) -> Int {
        (1...ClientPortConfiguration.unlimitedStreams).contains(value) ? value : ClientPortConfiguration.unlimitedStreams
    }

    /// The keepalive policy as etcd applies its flags: server pings only when both the interval
    /// and the timeout are positive, else grpc-go's defaults (2 h, 20 s); the client ping
    /// minimum is enforced when positive, else grpc-go's default (5 min).
    static func effectiveKeepalive(
        _ configuration: ClientPortConfiguration
    ) -> (time: Duration, timeout: Duration, minClientPingInterval: Duration) {
        let serverPings = configuration.keepaliveTime > .zero && configuration.keepaliveTimeout > .zero
        return (
            serverPings ? configuration.keepaliveTime : .seconds(2 * 60 * 60),
            serverPings ? configuration.keepaliveTimeout : .seconds(20),
            configuration.keepaliveMinClientPingInterval > .zero ? configuration.keepaliveMinClientPingInterval : .seconds(5 * 60)
        )
    }

    /// The bound address, once listening (port 0 resolved to the real port).
    /// - Throws: ``ClientPortError/notListening`` if binding failed or the transport stopped.
    public var listeningAddress: GRPCNIOTransportHTTP2.SocketAddress {
        get async throws {
            guard let address = await underlying.listeningAddress else {
                throw ClientPortError.notListening
            }
            return address
        }
    }

    public func listen(
        streamHandler: @escaping @Sendable (
            _ stream: RPCStream<Inbound, Outbound>,
            _ context: ServerContext
        ) async -> Void
    ) async throws {
        let limit = maxReceiveMessageBytes
        try await underlying.listen { stream, context in
            let inbound = Inbound(wrapping: SizeLimitedRequestParts(base: stream.inbound, limit: limit))
            await streamHandler(RPCStream(descriptor: stream.descriptor, inbound: inbound, outbound: stream.outbound), context)
        }
    }

    public func configure(context: GRPCServerContext) {
        underlying.configure(context: context)
    }

    public func beginGracefulShutdown() {
        underlying.beginGracefulShutdown()
    }
}

/// Request parts of one RPC, failing with etcd's (grpc-go's) ResourceExhausted error at the
/// first message larger than `limit` bytes: "grpc: received message larger than max (N vs. M)".
struct SizeLimitedRequestParts<Bytes: GRPCContiguousBytes & Sendable>: AsyncSequence, Sendable {
    typealias Element = RPCRequestPart<Bytes>
    typealias Failure = any Error

    let base: RPCAsyncSequence<RPCRequestPart<Bytes>, any Error>
    let limit: Int

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: RPCAsyncSequence<RPCRequestPart<Bytes>, any Error>.AsyncIterator
        let limit: Int

        mutating func next() async throws -> RPCRequestPart<Bytes>? {
            let part = try await base.next()
            if case .message(let bytes)? = part, bytes.count > limit {
                throw RPCError(code: .resourceExhausted,
                               message: "grpc: received message larger than max (\(bytes.count) vs. \(limit))")
            }
            return part
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), limit: limit)
    }
}

/// Errors of the client port.
public enum ClientPortError: Error, Equatable, CustomStringConvertible {
    /// The transport is not (or no longer) listening.
    case notListening

    public var description: String {
        switch self {
        case .notListening: return "the client port is not listening"
        }
    }
}

/// Binds the client port and classifies each accepted connection (see ``ClientPortTransport``).
struct ClientPortListener: HTTP2ServerTransport.ListenerFactory {
    let configuration: ClientPortConfiguration
    let eventLoopGroup: any EventLoopGroup

    init(configuration: ClientPortConfiguration, eventLoopGroup: any EventLoopGroup) {
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
    }

    func makeListeningChannel(
        listenerConfigurator: HTTP2ServerTransport.ListenerConfigurator,
        connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
    ) async throws -> NIOAsyncChannel<HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never> {
        let inbox = GRPCConnectionInbox()
        let starter = ConnectionStarter(
            connectionConfigurator: connectionConfigurator,
            inbox: inbox,
            router: configuration.router,
            http: HTTPLimits(
                maxBodyBytes: configuration.maxHTTPBodyBytes,
                maxHeaderBytes: configuration.httpMaxHeaderBytes,
                idleTimeout: TimeAmount(configuration.httpIdleTimeout),
                readTimeout: TimeAmount(configuration.httpReadTimeout)
            ),
            usesTLS: configuration.tls != nil || configuration.tlsProvider != nil
        )
        let tls: (@Sendable () -> NIOSSLContext)?
        if let provider = configuration.tlsProvider {
            tls = provider
        } else if let fixed = configuration.tls {
            tls = { fixed }
        } else {
            tls = nil
        }
        let certificateHandler = configuration.certificateHandler
        let revocation = configuration.revocation
        let sniffTimeout = TimeAmount(configuration.protocolDetectionTimeout)
        let admission = ConnectionAdmission(limit: configuration.maxConnections)

        let bootstrap = ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                listenerConfigurator.configure(channel: channel)
            }
            // Dead peers of idle HTTP/1.1 connections are found by TCP keepalive (gRPC
            // connections also have HTTP/2 pings); ignored on Unix sockets.
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    guard admission.admit() else {
                        // Over the cap: closed as soon as it is active, nothing read from it.
                        try child.pipeline.syncOperations.addHandler(RefusedConnectionHandler())
                        return
                    }
                    child.closeFuture.whenComplete { _ in admission.release() }
                    try Self.initialize(child: child, tls: tls?(), certificateHandler: certificateHandler?(), revocation: revocation,
                                        starter: starter, sniffTimeout: sniffTimeout)
                }
            }

        let server: any Channel
        switch configuration.address {
        case .tcp(let host, let port):
            server = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }

        do {
            return try await server.eventLoop.submit {
                let bypass = AcceptedChannelBypass()
                try server.pipeline.syncOperations.addHandler(GRPCConnectionInboxHandler(inbox: inbox, bypass: bypass))
                let connections = try NIOAsyncChannel<HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never>(
                    wrappingChannelSynchronously: server
                )
                try server.pipeline.syncOperations.addHandler(bypass)
                return connections
            }.get()
        } catch {
            try? await server.close()
            throw error
        }
    }

    /// The first handlers of an accepted connection: TLS and ALPN when configured, else the
    /// protocol sniffer.
    static func initialize(
        child: any Channel,
        tls: NIOSSLContext?,
        certificateHandler: ClientCertificateHandler? = nil,
        revocation: CertificateRevocation? = nil,
        starter: ConnectionStarter,
        sniffTimeout: TimeAmount
    ) throws {
        let sync = child.pipeline.syncOperations
        guard let tls else {
            try sync.addHandler(ProtocolSniffer(starter: starter, timeout: sniffTimeout))
            return
        }
        try sync.addHandler(CertificateRevocation.serverHandler(context: tls, revocation: revocation))
        try sync.addHandler(TLSHandshakeDeadline(timeout: sniffTimeout))
        if let certificateHandler { try sync.addHandler(certificateHandler) }
        try sync.addHandler(ApplicationProtocolNegotiationHandler { result, channel in
            switch result {
            case .negotiated("h2"):
                return starter.startGRPC(on: channel)
            default:
                // http/1.1 or none: the first bytes decide (an HTTP/2 preface means gRPC).
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ProtocolSniffer(starter: starter, timeout: sniffTimeout)
                    )
                }
            }
        })
    }
}

/// Closes a TLS connection whose handshake is not complete within `timeout` (the protocol
/// detection timeout), so a client that connects and stays silent, or stalls mid-handshake,
/// holds nothing for long; removes itself once the handshake is done.
final class TLSHandshakeDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard deadline == nil else { return }
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted? = event as? TLSUserEvent {
            deadline?.cancel()
            deadline = nil
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }
}

/// Counts the client port's open connections against its cap (any event loop).
final class ConnectionAdmission: Sendable {
    private let open = Atomic<Int>(0)
    private let admitted = Atomic<Int>(0)
    let limit: Int

    /// Connections admitted since start (closed ones included).
    var admittedTotal: Int { admitted.load(ordering: .relaxed) }

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// Takes a slot, or returns false (taking nothing) when all are in use.
    func admit() -> Bool {
        if open.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            open.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        admitted.wrappingAdd(1, ordering: .relaxed)
        return true
    }

    /// Gives a slot back when an admitted connection has closed.
    func release() {
        open.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Connections holding a slot now.
    var current: Int { open.load(ordering: .relaxed) }
}

/// The only handler of a connection accepted over the cap: closes it once active.
final class RefusedConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { context.close(promise: nil) }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
