import NIOCore
import NIOHPACK
import NIOHTTP2

/// The pipeline of a gRPC connection on the client port: ``GRPCConnectionWriter``, NIO's HTTP/2
/// handler with an inline (non-async) stream multiplexer, ``GRPCConnectionManager`` behind it, and per stream
/// ``OversizeMessageGuard``, the fast paths and (for a stream they do not serve)
/// ``GRPCStreamBridge``.
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
    /// PING, SETTINGS and other control frames a client may send in a sliding window (50,000
    /// a second; NIO keeps one timestamp per frame in the window, so at most 8 KiB each).
    static let controlFrameLimit = (count: 1000, window: TimeAmount.milliseconds(20))
    /// RST_STREAM frames, and separately stream errors, a client may cause in a sliding window.
    static let streamResetLimit = (count: 2000, window: TimeAmount.seconds(10))

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
        // NIO's flood defences, loosened to what grpc-go clients do in normal use (grpc-go's
        // server, etcd's, has no such counters). A grpc-go client sends a PING (its bandwidth
        // probe) after most DATA it receives, so a busy connection carries hundreds a second;
        // NIO's default, 200 control frames in 30 s, closed it with ENHANCE_YOUR_CALM every
        // second or two. Pings without responses between them are still refused by the
        // strike rule in GRPCConnectionManager.
        connection.controlFrameRateLimit.maximumCount = Self.controlFrameLimit.count
        connection.controlFrameRateLimit.windowLength = Self.controlFrameLimit.window
        // Cancelled calls (RST_STREAM) and stream errors: NIO's default, 200 in 30 s, closes
        // the connection of a client that cancels 7 calls a second; glitches (stream errors
        // over the connection's whole life, no decay) would end a long-lived connection.
        connection.maximumConnectionGlitches = Int(Int32.max)
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = Self.targetWindowSize
        stream.streamResetFrameRateLimit.maximumCount = Self.streamResetLimit.count
        stream.streamResetFrameRateLimit.windowLength = Self.streamResetLimit.window
        stream.streamErrorRateLimit.maximumCount = Self.streamResetLimit.count
        stream.streamErrorRateLimit.windowLength = Self.streamResetLimit.window

        let runner = self.runner
        let limit = self.limit
        let fastUnary = self.fastUnary
        let fastKeepAlive = self.fastKeepAlive
        try sync.addHandler(GRPCConnectionWriter(manager: manager))
        try sync.addHandler(NIOHTTP2Handler(mode: .server, connectionConfiguration: connection, streamConfiguration: stream))
        if let fastUnary {
            // The hot unary calls, served without a stream channel each.
            try sync.addHandler(FastStreamRouter(service: fastUnary, limit: limit, window: Self.targetWindowSize))
        }
        try sync.addHandler(HTTP2StreamMultiplexer(
            mode: .server, channel: channel, targetWindowSize: Self.targetWindowSize,
            outboundBufferSizeHighWatermark: stream.outboundBufferSizeHighWatermark,
            outboundBufferSizeLowWatermark: stream.outboundBufferSizeLowWatermark
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                let sync = stream.pipeline.syncOperations
                try sync.addHandler(OversizeMessageGuard(limit: limit))
                if fastUnary != nil {
                    // Keep-alive streams to their fast path, the rest to grpc-swift.
                    try sync.addHandler(StreamDispatchHandler(keepAlive: fastKeepAlive, limit: limit) {
                        GRPCStreamBridge(runner: runner)
                    })
                } else {
                    try sync.addHandler(GRPCStreamBridge(runner: runner))
                }
            }
        })
        try sync.addHandler(manager)
        try FirstGoAwayBypass.install(on: channel)
        connections.addGRPC(channel)
    }
}
