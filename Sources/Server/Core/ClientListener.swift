import EtcdConfig
import GRPCCore
import Logging

/// Serves the client gRPC services of an ``EtcdServer`` on its `--listen-client-urls`
/// (plaintext; gRPC and HTTP/1.1 share each port through the shell's `ClientPortTransport`),
/// and `/metrics` with the health endpoints on its `--listen-metrics-urls`.
public final class ClientListener: Sendable {
    private let servers: [(url: EndpointURL, kind: String, grpc: GRPCServer<ClientPortTransport>)]
    private let logger: Logger

    /// Prepares one gRPC server per client URL with the etcd services (KV, Watch, Lease,
    /// Maintenance, Cluster, Auth, Lock, Election) and, on the same port, the HTTP routes:
    /// `/version`, `/health`, `/livez`, `/readyz`, `/metrics` and (unless
    /// `--enable-grpc-gateway=false`) the `/v3/` JSON gateway. Each metrics URL gets a port
    /// with only `/metrics`, `/health`, `/livez`, `/readyz` and `/version` (no gRPC services).
    public init(server: EtcdServer, logger: Logger) throws {
        let cfg = server.config
        let services: [any RegistrableRPCService] = [
            KVService(server: server), WatchService(server: server), LeaseService(server: server),
        ] + server.coordinationServices()
        var router = HTTPRouter()
        router.addVersionRoute()
        server.registerHTTPRoutes(in: &router, gateway: cfg.enableGRPCGateway)
        var metricsRouter = HTTPRouter()
        metricsRouter.addVersionRoute()
        server.registerHTTPRoutes(in: &metricsRouter, gateway: false)
        // etcd: with keepalive interval or timeout 0, gRPC's defaults (2 h, 20 s) apply.
        var list: [(EndpointURL, String, GRPCServer<ClientPortTransport>)] = []
        let targets = cfg.listenClientURLs.map { ($0, "client") } + cfg.listenMetricsURLs.map { ($0, "metrics") }
        for (url, kind) in targets {
            guard url.scheme == "http" else {
                throw ServerStartError("listen \(kind) URL \(url): only plaintext http:// is supported yet (TLS comes later)")
            }
            var port = ClientPortConfiguration(
                address: .tcp(host: url.host == "localhost" ? "127.0.0.1" : url.host, port: url.port),
                router: kind == "client" ? router : metricsRouter)
            port.maxReceiveMessageBytes = cfg.maxReceiveMessageBytes
            port.maxHTTPBodyBytes = cfg.maxReceiveMessageBytes
            port.keepaliveMinClientPingInterval = cfg.grpcKeepaliveMinTime
            port.keepaliveTime = cfg.grpcKeepaliveInterval
            port.keepaliveTimeout = cfg.grpcKeepaliveTimeout
            port.maxConcurrentStreams = Int(clamping: cfg.maxConcurrentStreams)
            port.maxConnections = Int(clamping: max(1, cfg.maxClientConnections))
            let transport = ClientPortTransport(configuration: port)
            list.append((url, kind, GRPCServer(transport: transport, services: kind == "client" ? services : [],
                                                interceptors: [TokenInterceptor()])))
        }
        servers = list
        self.logger = logger
    }

    /// Serves until ``stop()``; throws if a listener cannot bind.
    public func serve() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (url, kind, grpc) in servers {
                group.addTask { try await grpc.serve() }
                group.addTask { [logger] in
                    if let addr = try? await grpc.listeningAddress {
                        logger.info(kind == "client" ? "serving client traffic" : "serving metrics",
                                    metadata: ["address": "\(addr)", "url": "\(url)"])
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// The bound addresses (after ``serve()`` started), e.g. to learn a port 0 choice.
    public func boundAddresses() async throws -> [String] {
        var out: [String] = []
        for (_, _, grpc) in servers {
            if let a = try await grpc.listeningAddress { out.append("\(a)") }
        }
        return out
    }

    /// Stops accepting connections and lets running calls finish.
    public func stop() {
        for (_, _, grpc) in servers { grpc.beginGracefulShutdown() }
    }
}
