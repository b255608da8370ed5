// The gRPC server on the peer URLs.

import EtcdConfig
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import Synchronization

/// Serves gRPC services (the Peer service, and room for more) on this member's peer URLs,
/// one listener per URL.
public final class PeerServer: Sendable {
    private struct Listener {
        let server: GRPCServer<HTTP2ServerTransport.Custom<PeerListener>>
        let task: Task<Void, any Error>
        let url: EndpointURL
    }

    private let listeners = Mutex<[Listener]>([])
    private let logger: Logger
    private let tls: PeerTLS?
    private let maxRequestBytes: Int
    private let admission: ConnectionAdmission
    private let refusals: PeerRefusals?
    private let fastMessages: Bool
    private let connectionGroup: (any EventLoopGroup)?

    /// A server not yet listening. `https://` URLs are served with `tls` (required for them);
    /// `maxRequestBytes` bounds one received message (a batch or a snapshot chunk);
    /// `maxConnections` the connections open at once over all its URLs (more are closed at
    /// once and counted in `refusals`).
    /// Concurrent calls one peer connection may carry (its Messages stream, snapshot transfers
    /// and forwarded lease calls).
    static let maxConcurrentStreams = 4096

    /// Connections this server has admitted since it started (over all its URLs).
    public var admittedConnections: Int { admission.admittedTotal }

    /// With `fastMessages` (the default unless `SWETCD_NO_FAST_PEER=1`), `Messages` calls to a
    /// ``PeerTransport/makeService()`` among the served services are answered at the HTTP/2
    /// frame level by ``PeerMessagesHandler`` instead of grpc-swift (same checks and statuses).
    /// Accepted connections live on `connectionGroup` (nil: NIO's shared group); the server
    /// gives its Raft loop's event loop, which then reads peers' messages itself.
    public init(logger: Logger, tls: PeerTLS? = nil, maxRequestBytes: Int = 64 << 20,
                maxConnections: Int = 4096, refusals: PeerRefusals? = nil,
                fastMessages: Bool = PeerTransport.fastPeerDefault,
                connectionGroup: (any EventLoopGroup)? = nil) {
        self.fastMessages = fastMessages
        self.connectionGroup = connectionGroup
        self.logger = logger
        self.tls = tls
        self.admission = ConnectionAdmission(limit: maxConnections)
        self.refusals = refusals ?? tls?.refusals
        self.maxRequestBytes = maxRequestBytes
    }

    /// Listens on every URL (port 0 picks a free port) and serves `services`. Throws if a
    /// URL is unusable or cannot be bound; listeners already started are stopped then.
    public func start(urls: [EndpointURL], services: [any RegistrableRPCService]) async throws {
        // The transport whose Messages calls are served at the frame level, if any.
        let fast = fastMessages ? services.lazy.compactMap { ($0 as? PeerService)?.transport }.first : nil
        do {
            for url in urls {
                let address = try Self.bindAddress(url, tls: tls != nil)
                var config = HTTP2ServerTransport.Custom<PeerListener>.Config.defaults
                // Peers ping idle connections (PeerTransport's keepalive); accept that.
                config.connection.keepalive.clientBehavior = .init(
                    minPingIntervalWithoutCalls: .seconds(5), allowWithoutCalls: true)
                config.rpc.maxRequestPayloadSize = maxRequestBytes
                // Advertised, so a peer's calls beyond it wait instead of drawing a GOAWAY that
                // would also end its Messages stream on the same connection (forwarded lease
                // keep-alives share that connection).
                config.http2.maxConcurrentStreams = Self.maxConcurrentStreams
                if let fast {
                    let limit = maxRequestBytes
                    config.channelDebuggingCallbacks.onAcceptHTTP2Stream = { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(
                                PeerMessagesHandler(transport: fast, limit: limit), position: .first)
                        }
                    }
                }
                let server = GRPCServer(
                    transport: HTTP2ServerTransport.Custom(
                        listenerFactory: PeerListener(address: address, tls: url.scheme == "https" ? tls : nil,
                                                      handshakeTimeout: .seconds(10), admission: admission,
                                                      refusals: refusals, connectionGroup: connectionGroup),
                        config: config),
                    services: services)
                let task = Task { try await server.serve() }
                guard let bound = await server.transport.listeningAddress else {
                    task.cancel()
                    let error = await task.result
                    throw PeerTransportError.unsupportedURL("cannot listen on \(url): \(error)")
                }
                let port = bound.ipv4?.port ?? bound.ipv6?.port ?? url.port
                let boundURL = EndpointURL(scheme: url.scheme, host: url.host, port: port)
                listeners.withLock { $0.append(Listener(server: server, task: task, url: boundURL)) }
                logger.info("serving peer traffic", metadata: ["address": "\(boundURL)"])
            }
        } catch {
            await stop()
            throw error
        }
    }

    /// The URLs actually listened on (with the chosen ports).
    public var boundAddresses: [EndpointURL] { listeners.withLock { $0.map(\.url) } }

    /// Stops listening. Calls still running get `grace` to finish, then are cancelled.
    public func stop(grace: Duration = .seconds(1)) async {
        let all = listeners.withLock { l in
            defer { l = [] }
            return l
        }
        for listener in all { listener.server.beginGracefulShutdown() }
        for listener in all {
            let task = listener.task
            let deadline = Task {
                try? await Task.sleep(for: grace)
                task.cancel()
            }
            _ = await task.result
            deadline.cancel()
        }
    }

    static func bindAddress(_ url: EndpointURL, tls: Bool) throws -> NIOCore.SocketAddress {
        switch url.scheme {
        case "http": break
        case "https":
            guard tls else {
                throw PeerTransportError.unsupportedURL("\(url): an https:// peer URL needs peer TLS (--peer-cert-file and --peer-key-file, or --peer-auto-tls)")
            }
        default:
            throw PeerTransportError.unsupportedURL("\(url): peer URLs are http:// or https://")
        }
        var host = url.host
        if host == "localhost" { host = "127.0.0.1" }
        guard !host.isEmpty, host.contains(":") || host.allSatisfy({ $0.isNumber || $0 == "." }) else {
            throw PeerTransportError.unsupportedURL("\(url): a listen URL needs an IP address")
        }
        do {
            return try NIOCore.SocketAddress(ipAddress: host, port: url.port)
        } catch {
            throw PeerTransportError.unsupportedURL("\(url): \(error)")
        }
    }
}
