import NIOCore
import NIOHPACK
import NIOHTTP2

/// The pipeline of a gRPC connection on the client port: ``GRPCConnectionWriter``, NIO's HTTP/2
/// handler with an inline (non-async) stream multiplexer, ``GRPCConnectionManager`` behind it, and per stream
/// ``OversizeMessageGuard``, the fast paths and ``GRPCStreamBridge``.
///
/// HTTP/2 settings are grpc-swift's server defaults (the transport this replaced): initial and
/// target window 65535, max frame 16384, NIO's max header list size; max concurrent streams
/// as configured.
struct GRPCPipeline: Sendable {
    let runner: GRPCCallRunner
    let connections: ConnectionRegistry
    let limit: Int
    let maxConcurrentStreams: Int
    let management: GRPCConnectionManager.Configuration
    let fastUnary: (any FastUnaryService)?
    let fastKeepAlive: (any FastKeepAliveService)?

    static let targetWindowSize = 65535
    static let maxFrameSize = 1 << 14

    init(configuration: ClientPortConfiguration, runner: GRPCCallRunner, connections: ConnectionRegistry) {
        self.runner = runner
        self.connections = connections
        self.limit = configuration.maxReceiveMessageBytes
        self.maxConcurrentStreams = ClientPortTransport.effectiveMaxConcurrentStreams(configuration.maxConcurrentStreams)
        let keepalive = ClientPortTransport.effectiveKeepalive(configuration)
        self.management = .init(
            maxIdleTime: configuration.maxConnectionIdle.flatMap { $0 > .zero ? TimeAmount($0) : nil },
            keepaliveTime: TimeAmount(keepalive.time),
            keepaliveTimeout: TimeAmount(keepalive.timeout),
            minPingInterval: TimeAmount(keepalive.minClientPingInterval)
        )
        self.fastUnary = configuration.fastUnary
        self.fastKeepAlive = configuration.fastKeepAlive
    }

    /// Adds the handlers at the end of `channel`'s pipeline (on its event loop).
    func configure(_ channel: any Channel) throws {
        let sync = channel.pipeline.syncOperations
        let manager = GRPCConnectionManager(configuration: management)

        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.targetWindowSize = Self.targetWindowSize
        connection.initialSettings = [
            HTTP2Setting(parameter: .initialWindowSize, value: Self.targetWindowSize),
            HTTP2Setting(parameter: .maxFrameSize, value: Self.maxFrameSize),
            HTTP2Setting(parameter: .maxHeaderListSize, value: HPACKDecoder.defaultMaxHeaderListSize),
            // Without this setting NIO HTTP/2 enforces 100 streams per connection without
            // telling the client (the HTTP/2 default it sees is "unlimited"): the 101st
            // concurrent call was a connection error that failed every call in flight.
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maxConcurrentStreams),
        ]
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = Self.targetWindowSize

        let runner = self.runner
        let limit = self.limit
        let fastUnary = self.fastUnary
        let fastKeepAlive = self.fastKeepAlive
        try sync.addHandler(GRPCConnectionWriter(manager: manager))
        _ = try sync.configureHTTP2Pipeline(
            mode: .server,
            connectionConfiguration: connection,
            streamConfiguration: stream,
            streamDelegate: manager.streamDelegate
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                let sync = stream.pipeline.syncOperations
                try sync.addHandler(OversizeMessageGuard(limit: limit))
                if let fastUnary {
                    try sync.addHandler(FastUnaryHandler(service: fastUnary, keepAlive: fastKeepAlive, limit: limit))
                }
                try sync.addHandler(GRPCStreamBridge(runner: runner))
            }
        }
        try sync.addHandler(manager)
        try FirstGoAwayBypass.install(on: channel)
        connections.addGRPC(channel)
    }
}
