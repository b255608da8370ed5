import EtcdConfig
import Foundation
import GRPCCore
import Logging

/// Serves the client gRPC services of an ``EtcdServer`` on its `--listen-client-urls`
/// (http:// plaintext, https:// TLS, and the same on a Unix-domain socket with unix:// and
/// unixs://; gRPC and HTTP/1.1 share each port through the shell's `ClientPortTransport`),
/// and `/metrics` with the health endpoints on its `--listen-metrics-urls`.
public final class ClientListener: Sendable {
    private let servers: [(url: EndpointURL, kind: String, grpc: GRPCServer<ClientPortTransport>)]
    private let logger: Logger
    /// The unary KV calls served without grpc-swift (``FastStreamRouter``); nil when
    /// `SWETCD_NO_FAST_UNARY` is set (every call then goes through grpc-swift: for A/B
    /// benchmarks, docs/BENCHMARKS.md).
    let fastKV: FastKV?
    /// LeaseKeepAlive streams served without grpc-swift (nil with `SWETCD_NO_FAST_UNARY`).
    let fastLease: FastLease?

    /// Prepares one gRPC server per client URL with the etcd services (KV, Watch, Lease,
    /// Maintenance, Cluster, Auth, Lock, Election) and, on the same port, the HTTP routes:
    /// `/version`, `/health`, `/livez`, `/readyz`, `/metrics` and (unless
    /// `--enable-grpc-gateway=false`) the `/v3/` JSON gateway. Each metrics URL gets a port
    /// with only `/metrics`, `/health`, `/livez`, `/readyz` and `/version` (no gRPC services).
    public init(server: EtcdServer, logger: Logger) throws {
        let cfg = server.config
        let fastKV = ProcessInfo.processInfo.environment["SWETCD_NO_FAST_UNARY"] == nil ? FastKV(server: server) : nil
        self.fastKV = fastKV
        let fastLease = fastKV == nil ? nil : FastLease(server: server)
        self.fastLease = fastLease
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
        let tls = try Self.tlsSource(cfg, logger: logger)
        let revocation = try Self.revocation(cfg, logger: logger)
        for (url, kind) in targets {
            guard url.scheme == "http" || kind == "client" else {
                throw ServerStartError("listen \(kind) URL \(url): only http:// metrics URLs are supported yet")
            }
            // unix:// and unixs:// listen on a Unix-domain socket named by the URL's host:port.
            let address: ClientPortConfiguration.Address = url.unixSocketPath.map { .unix(path: $0) }
                ?? .tcp(host: url.host == "localhost" ? "127.0.0.1" : url.host, port: url.port)
            var port = ClientPortConfiguration(address: address, router: kind == "client" ? router : metricsRouter)
            if url.isSecure, let tls {
                port.tlsProvider = { tls.current() }
                let allowed = tls.settings.allowedHostname
                if tls.settings.clientCertAuth {
                    port.certificateHandler = { ClientCertificateHandler(allowedHostname: allowed) }
                }
                port.revocation = revocation
            }
            port.maxReceiveMessageBytes = cfg.maxReceiveMessageBytes
            port.maxHTTPBodyBytes = cfg.maxReceiveMessageBytes
            port.keepaliveMinClientPingInterval = cfg.grpcKeepaliveMinTime
            port.keepaliveTime = cfg.grpcKeepaliveInterval
            port.keepaliveTimeout = cfg.grpcKeepaliveTimeout
            port.maxConcurrentStreams = Int(clamping: cfg.maxConcurrentStreams)
            port.maxConnections = Int(clamping: max(1, cfg.maxClientConnections))
            if kind == "client" {
                port.fastUnary = fastKV
                port.fastKeepAlive = fastLease
            }
            let transport = ClientPortTransport(configuration: port)
            list.append((url, kind, GRPCServer(transport: transport, services: kind == "client" ? services : [],
                                                interceptors: [TokenInterceptor()])))
        }
        servers = list
        self.logger = logger
    }

    /// The TLS context source of the https:// and unixs:// client URLs (nil without any): the
    /// configured files, or with `--auto-tls` and no files a certificate generated now.
    static func tlsSource(_ cfg: ServerConfig, logger: Logger) throws -> ClientTLSContextSource? {
        guard cfg.listenClientURLs.contains(where: \.isSecure) else { return nil }
        var settings = cfg.clientTLS
        if settings.certFile.isEmpty {
            guard settings.autoTLS else {
                throw ServerStartError("TLS key/cert (--cert-file, --key-file) must be provided for client urls with HTTPS scheme")
            }
            let hosts = cfg.listenClientURLs.map(\.host) + cfg.advertiseClientURLs.map(\.host)
            let made = try SelfSignedCertificate.make(directory: cfg.effectiveDataDir + "/fixtures/client", hosts: hosts,
                                                      validityYears: cfg.selfSignedCertValidity)
            settings.certFile = made.cert
            settings.keyFile = made.key
            logger.info("client TLS with a self-signed certificate (--auto-tls)", metadata: ["cert-file": "\(made.cert)"])
        } else if settings.autoTLS {
            logger.warning("ignoring client auto TLS since certs given")
        }
        return try ClientTLSContextSource(config: cfg, settings: settings, logger: logger)
    }

    /// `--client-crl-file` on the https:// and unixs:// client URLs, loaded now (nil without one).
    static func revocation(_ cfg: ServerConfig, logger: Logger) throws -> CertificateRevocation? {
        guard cfg.listenClientURLs.contains(where: \.isSecure), !cfg.clientTLS.crlFile.isEmpty else { return nil }
        do {
            let r = try CertificateRevocation(crlFile: cfg.clientTLS.crlFile, caFile: cfg.clientTLS.trustedCAFile, logger: logger)
            logger.info("client certificates are checked against the revocation list", metadata: ["crl-file": "\(r.crlFile)"])
            for list in r.lists() {
                if let next = list.nextUpdate, next < Date() {
                    logger.error("the revocation list is past its nextUpdate: certificates of its issuer are refused until it is replaced",
                                 metadata: ["crl-file": "\(r.crlFile)", "issuer": "\(list.issuer)", "next-update": "\(next)"])
                }
            }
            return r
        } catch {
            throw ServerStartError("--client-crl-file: \(error)")
        }
    }

    /// Serves until ``stop()``; throws if a listener cannot bind. The socket files of unix://
    /// and unixs:// URLs are removed when serving ends (as etcd's listener does on close).
    public func serve() async throws {
        defer {
            for (url, _, _) in servers {
                if let path = url.unixSocketPath { unlink(path) }
            }
        }
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
