import EtcdConfig
import GRPCCore
import Logging

/// Serves the client gRPC services of an ``EtcdServer`` on its `--listen-client-urls`
/// (plaintext; gRPC and HTTP/1.1 share each port through the shell's `ClientPortTransport`).
public final class ClientListener: Sendable {
    private let servers: [(url: EndpointURL, grpc: GRPCServer<ClientPortTransport>)]
    private let logger: Logger

    /// Prepares one gRPC server per client URL with the etcd services (KV, Watch, Lease,
    /// Maintenance, Cluster, Auth, Lock, Election) and, on the same port, the HTTP routes:
    /// `/version`, `/health`, `/livez`, `/readyz`, `/metrics` and the `/v3/` JSON gateway.
    public init(server: EtcdServer, logger: Logger) throws {
        let cfg = server.config
        let services: [any RegistrableRPCService] = [
            KVService(server: server), WatchService(server: server), LeaseService(server: server),
        ] + server.coordinationServices()
        var router = HTTPRouter()
        router.addVersionRoute()
        server.registerHTTPRoutes(in: &router)
        var list: [(EndpointURL, GRPCServer<ClientPortTransport>)] = []
        for url in cfg.listenClientURLs {
            guard url.scheme == "http" else {
                throw ServerStartError("listen client URL \(url): only plaintext http:// is supported yet (TLS comes later)")
            }
            var port = ClientPortConfiguration(
                address: .tcp(host: url.host == "localhost" ? "127.0.0.1" : url.host, port: url.port),
                router: router)
            port.maxReceiveMessageBytes = cfg.maxReceiveMessageBytes
            port.maxHTTPBodyBytes = cfg.maxReceiveMessageBytes
            port.keepaliveMinClientPingInterval = cfg.grpcKeepaliveMinTime
            port.keepaliveTime = cfg.grpcKeepaliveInterval
            port.keepaliveTimeout = cfg.grpcKeepaliveTimeout
            port.maxConcurrentStreams = Int(clamping: cfg.maxConcurrentStreams)
            port.maxConnections = Int(clamping: max(1, cfg.maxClientConnections))
            let transport = ClientPortTransport(configuration: port)
            list.append((url, GRPCServer(transport: transport, services: services)))
        }
        servers = list
        self.logger = logger
    }

    /// Serves until ``stop()``; throws if a listener cannot bind.
    public func serve() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (url, grpc) in servers {
                group.addTask { try await grpc.serve() }
                group.addTask { [logger] in
                    if let addr = try? await grpc.listeningAddress {
                        logger.info("serving client traffic", metadata: ["address": "\(addr)", "url": "\(url)"])
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// The bound addresses (after ``serve()`` started), e.g. to learn a port 0 choice.
    public func boundAddresses() async throws -> [String] {
        var out: [String] = []
        for (_, grpc) in servers {
            if let a = try await grpc.listeningAddress { out.append("\(a)") }
        }
        return out
    }

    /// Stops accepting connections and lets running calls finish.
    public func stop() {
        for (_, grpc) in servers { grpc.beginGracefulShutdown() }
    }
}
