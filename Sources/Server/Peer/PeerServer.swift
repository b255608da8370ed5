// The gRPC server on the peer URLs.

import EtcdConfig
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Synchronization

/// Serves gRPC services (the Peer service, and room for more) on this member's peer URLs,
/// one listener per URL.
public final class PeerServer: Sendable {
    /// How connections are secured. Only plaintext exists for now; peer TLS
    /// (`--peer-cert-file` and friends) will add a case here.
    public enum Security: Sendable {
        /// No TLS: only `http://` URLs are accepted.
        case plaintext
    }

    private struct Listener {
        let server: GRPCServer<HTTP2ServerTransport.Posix>
        let task: Task<Void, any Error>
        let url: EndpointURL
    }

    private let listeners = Mutex<[Listener]>([])
    private let logger: Logger
    private let security: Security
    private let maxRequestBytes: Int

    /// A server not yet listening. `maxRequestBytes` bounds one received message (a batch or
    /// a snapshot chunk).
    public init(logger: Logger, security: Security = .plaintext, maxRequestBytes: Int = 64 << 20) {
        self.logger = logger
        self.security = security
        self.maxRequestBytes = maxRequestBytes
    }

    /// Listens on every URL (port 0 picks a free port) and serves `services`. Throws if a
    /// URL is unusable or cannot be bound; listeners already started are stopped then.
    public func start(urls: [EndpointURL], services: [any RegistrableRPCService]) async throws {
        do {
            for url in urls {
                let address = try Self.bindAddress(url, security: security)
                var config = HTTP2ServerTransport.Posix.Config.defaults
                // Peers ping idle connections (PeerTransport's keepalive); accept that.
                config.connection.keepalive.clientBehavior = .init(
                    minPingIntervalWithoutCalls: .seconds(5), allowWithoutCalls: true)
                config.rpc.maxRequestPayloadSize = maxRequestBytes
                let server = GRPCServer(
                    transport: HTTP2ServerTransport.Posix(address: address, transportSecurity: .plaintext, config: config),
                    services: services)
                let task = Task { try await server.serve() }
                let bound: SocketAddress
                do {
                    bound = try await server.transport.listeningAddress
                } catch {
                    task.cancel()
                    _ = await task.result
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

    static func bindAddress(_ url: EndpointURL, security: Security) throws -> SocketAddress {
        guard url.scheme == "http" else {
            throw PeerTransportError.unsupportedURL("\(url): only http:// peer URLs are supported (no peer TLS yet)")
        }
        if url.host.contains(":") { return .ipv6(host: url.host, port: url.port) }
        if url.host == "localhost" { return .ipv4(host: "127.0.0.1", port: url.port) }
        guard !url.host.isEmpty, url.host.allSatisfy({ $0.isNumber || $0 == "." }) else {
            throw PeerTransportError.unsupportedURL("\(url): a listen URL needs an IP address")
        }
        return .ipv4(host: url.host, port: url.port)
    }
}
