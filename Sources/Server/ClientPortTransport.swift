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
    /// Unary gRPC calls served by ``FastStreamRouter`` instead of grpc-swift (nil: none).
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
/// gRPC) or, with TLS, by ALPN. gRPC connections get NIO's HTTP/2 handler with an inline stream
/// multiplexer and ``GRPCConnectionManager``; each stream gets ``OversizeMessageGuard``, the
/// fast paths (``FastStreamRouter``, ``StreamDispatchHandler``) and ``GRPCStreamBridge``, which hands the streams the fast
/// paths did not take to the `GRPCServer` this transport is given to. HTTP/1.1 connections are
/// answered by the configuration's ``HTTPRouter``.
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

    private let configuration: ClientPortConfiguration
    private let eventLoopGroup: any EventLoopGroup
    private let shared: SharedState

    /// Creates the transport; nothing is bound until the server starts.
    public init(
        configuration: ClientPortConfiguration,
        eventLoopGroup: MultiThreadedEventLoopGroup = .singletonMultiThreadedEventLoopGroup
    ) {
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.shared = SharedState(address: eventLoopGroup.any().makePromise())
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
            guard let address = try await shared.address.get(), !shared.isStopped else {
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
        let (calls, queue) = AsyncStream.makeStream(of: (@Sendable () async -> Void).self)
        let runner = GRPCCallRunner(handler: streamHandler, descriptors: shared.descriptors,
                                    limit: configuration.maxReceiveMessageBytes, calls: queue)
        let connections = ConnectionRegistry()
        let listener = ClientPortListener(configuration: configuration, eventLoopGroup: eventLoopGroup)
        let server: any Channel
        do {
            server = try await listener.bind(grpc: GRPCPipeline(configuration: configuration, runner: runner, connections: connections),
                                             connections: connections)
        } catch {
            queue.finish()
            shared.setAddress(nil)
            throw error
        }
        shared.setAddress(server.localAddress.flatMap(Self.grpcAddress))
        shared.listening(server: server, connections: connections) { queue.finish() }
        // However the listener ends, the connections are asked to finish.
        let shared = self.shared
        server.closeFuture.whenComplete { _ in shared.beginGracefulShutdown() }
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for await call in calls {
                    group.addTask { await call() }
                }
            }
        } onCancel: {
            server.close(promise: nil)
            connections.closeAll()
            queue.finish()
        }
        server.close(promise: nil)
        shared.stopped()
    }

    public func configure(context: GRPCServerContext) {
        shared.configure(context.methods)
    }

    /// Stops accepting connections and asks each open one to finish: gRPC connections get
    /// GOAWAY and close once their calls are done; `listen` returns when all have closed.
    public func beginGracefulShutdown() {
        shared.beginGracefulShutdown()
    }

    static func grpcAddress(_ address: NIOCore.SocketAddress) -> GRPCNIOTransportHTTP2.SocketAddress? {
        switch address {
        case .v4(let a): return .ipv4(host: a.host, port: address.port ?? 0)
        case .v6(let a): return .ipv6(host: a.host, port: address.port ?? 0)
        case .unixDomainSocket: return .unixDomainSocket(path: address.pathname ?? "")
        }
    }

    /// The transport's state shared by its copies (it is a struct).
    final class SharedState: Sendable {
        private let addressPromise: EventLoopPromise<GRPCNIOTransportHTTP2.SocketAddress?>
        private let addressSet = Atomic<Bool>(false)
        private struct State {
            var descriptors: [String: MethodDescriptor] = [:]
            var listening: (server: any Channel, connections: ConnectionRegistry, stopped: @Sendable () -> Void)?
            var shutdownRequested = false
            var stopped = false
        }
        private let state = Mutex(State())

        init(address: EventLoopPromise<GRPCNIOTransportHTTP2.SocketAddress?>) {
            self.addressPromise = address
        }

        deinit {
            // Never started: nobody waits forever for the address.
            setAddress(nil)
        }

        /// The bound address (nil: binding failed), set once.
        var address: EventLoopFuture<GRPCNIOTransportHTTP2.SocketAddress?> { addressPromise.futureResult }

        func setAddress(_ address: GRPCNIOTransportHTTP2.SocketAddress?) {
            if !addressSet.exchange(true, ordering: .acquiringAndReleasing) {
                addressPromise.succeed(address)
            }
        }

        var descriptors: [String: MethodDescriptor] { state.withLock { $0.descriptors } }

        /// `listen` has returned.
        var isStopped: Bool { state.withLock { $0.stopped } }

        func stopped() {
            state.withLock { $0.stopped = true }
        }

        func configure(_ methods: [MethodDescriptor]) {
            var byPath: [String: MethodDescriptor] = [:]
            for method in methods { byPath["/" + method.fullyQualifiedMethod] = method }
            state.withLock { $0.descriptors = byPath }
        }

        func listening(server: any Channel, connections: ConnectionRegistry, stopped: @escaping @Sendable () -> Void) {
            let stopNow = state.withLock { state in
                state.listening = (server, connections, stopped)
                return state.shutdownRequested
            }
            if stopNow { beginGracefulShutdown() }
        }

        func beginGracefulShutdown() {
            let listening = state.withLock { state in
                state.shutdownRequested = true
                return state.listening
            }
            guard let listening else { return }
            listening.server.close(promise: nil)
            listening.connections.quiesce(then: listening.stopped)
        }
    }
}

/// The open client connections of a listening transport (any event loop): graceful shutdown
/// tells each to quiesce and waits until the gRPC ones have closed (HTTP/1.1 connections end
/// their response, or are closed by their own timeouts).
final class ConnectionRegistry: Sendable {
    private struct State {
        var open: [ObjectIdentifier: any Channel] = [:]
        var grpc: Set<ObjectIdentifier> = []
        var quiescing = false
        var whenDone: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    /// Tracks `channel` until it closes (told to quiesce at once if shutdown has begun).
    func add(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let quiescing = state.withLock { state in
            state.open[id] = channel
            return state.quiescing
        }
        channel.closeFuture.whenComplete { _ in self.remove(id) }
        if quiescing { Self.tellToQuiesce(channel) }
    }

    /// Marks a tracked connection as gRPC: graceful shutdown waits for it to close.
    func addGRPC(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        state.withLock { state in
            if state.open[id] != nil { state.grpc.insert(id) }
        }
    }

    private func remove(_ id: ObjectIdentifier) {
        let done: (@Sendable () -> Void)? = state.withLock { state in
            state.open[id] = nil
            state.grpc.remove(id)
            guard state.quiescing, state.grpc.isEmpty, let done = state.whenDone else { return nil }
            state.whenDone = nil
            return done
        }
        done?()
    }

    /// Asks every open connection to finish, once (NIO's HTTP/1.1 handler must not hear it
    /// twice); `then` runs once no gRPC connection is open.
    func quiesce(then done: @escaping @Sendable () -> Void) {
        let (open, runNow): ([any Channel], Bool) = state.withLock { state in
            let open = state.quiescing ? [] : Array(state.open.values)
            state.quiescing = true
            if state.grpc.isEmpty { return (open, true) }
            state.whenDone = done
            return (open, false)
        }
        for channel in open { Self.tellToQuiesce(channel) }
        if runNow { done() }
    }

    /// Closes every open connection at once.
    func closeAll() {
        let open = state.withLock { Array($0.open.values) }
        for channel in open { channel.close(promise: nil) }
    }

    private static func tellToQuiesce(_ channel: any Channel) {
        channel.eventLoop.execute {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
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
struct ClientPortListener {
    let configuration: ClientPortConfiguration
    let eventLoopGroup: any EventLoopGroup

    init(configuration: ClientPortConfiguration, eventLoopGroup: any EventLoopGroup) {
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
    }

    /// Binds the port; accepted connections are tracked in `connections`.
    func bind(grpc: GRPCPipeline, connections: ConnectionRegistry) async throws -> any Channel {
        let starter = ConnectionStarter(
            grpc: grpc,
            router: configuration.router,
            http: HTTPLimits(
                maxBodyBytes: configuration.maxHTTPBodyBytes,
                maxHeaderBytes: configuration.httpMaxHeaderBytes,
                idleTimeout: TimeAmount(configuration.httpIdleTimeout),
                readTimeout: TimeAmount(configuration.httpReadTimeout)
            )
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
                    connections.add(child)
                    try Self.initialize(child: child, tls: tls?(), certificateHandler: certificateHandler?(), revocation: revocation,
                                        starter: starter, sniffTimeout: sniffTimeout)
                }
            }

        switch configuration.address {
        case .tcp(let host, let port):
            return try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            return try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
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
