// Peer TLS: the peer listener's and the peer dialler's TLS contexts, the check of a peer's
// certificate right after the handshake, and the verified identity of each inbound peer
// connection (which PeerTransport binds to the member a call claims to come from).

public import EtcdConfig
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// Peer TLS as configured by `--peer-cert-file --peer-key-file --peer-trusted-ca-file
/// --peer-client-cert-auth --peer-cert-allowed-cn --peer-cert-allowed-hostname --peer-auto-tls`
/// (with `--cipher-suites --tls-min-version --tls-max-version`).
///
/// Both contexts are rebuilt for new connections when a file changed (rotation without restart).
public final class PeerTLS: Sendable {
    /// The settings in force (`autoTLS` true only when the certificate was generated).
    let settings: TLSSettings
    /// The listener's context (asks for and verifies a client certificate with client-cert-auth).
    let server: ClientTLSContextSource
    /// The dialler's context (presents the certificate, verifies the server against the CA).
    let client: ClientTLSContextSource
    /// Inbound connections' verified certificates.
    let identities = PeerIdentities()
    /// `--peer-crl-file`: revoked peer certificates fail the listener's handshake (nil: none).
    let revocation: CertificateRevocation?
    /// Counts and logs refused peers (set by the server to its metrics).
    let refusals: PeerRefusals
    let logger: Logger

    /// Whether a call must come over a connection whose certificate names the member it
    /// claims to be from (client-cert-auth without the SAN-skip flag).
    var bindsMembers: Bool { settings.clientCertAuth && !settings.skipClientSANVerify }

    enum Role { case server, client }

    /// Peer TLS for `config`, or nil when no peer URL is https:// and no peer certificate is
    /// configured. Throws a start error naming what is wrong.
    public static func make(config: ServerConfig, logger: Logger, refusals: PeerRefusals) throws -> PeerTLS? {
        var settings = config.peerTLS
        let httpsURLs = config.listenPeerURLs.contains { $0.scheme == "https" }
            || config.initialAdvertisePeerURLs.contains { $0.scheme == "https" }
        guard httpsURLs else { return nil }
        // Refused by the configuration check (ConfigLoader): --peer-crl-file without a CA, allowed CN and
        // hostname together or without client-cert-auth, client-cert-auth with auto TLS.
        if settings.certFile.isEmpty {
            guard settings.autoTLS else {
                throw ServerStartError("TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer urls with HTTPS scheme")
            }
            let hosts = (config.listenPeerURLs + config.initialAdvertisePeerURLs).map(\.host).filter { !$0.isEmpty }
            let made = try SelfSignedCertificate.make(directory: config.effectiveDataDir + "/fixtures/peer", hosts: hosts,
                                                      validityYears: max(1, config.selfSignedCertValidity))
            settings.certFile = made.cert
            settings.keyFile = made.key
            logger.warning("peer TLS with a self-signed certificate (--peer-auto-tls): peer traffic is encrypted but peers are not authenticated; keep the peer port on a private network", metadata: ["cert-file": "\(made.cert)"])
        } else {
            if settings.autoTLS { logger.warning("ignoring peer auto TLS since certs given") }
            settings.autoTLS = false
        }
        if settings.clientCertAuth && settings.trustedCAFile.isEmpty {
            logger.warning("--peer-client-cert-auth without --peer-trusted-ca-file: peer certificates are verified against the system's CA certificates; give --peer-trusted-ca-file to trust only your CA")
        }
        if !settings.clientCertAuth && !settings.autoTLS {
            logger.warning("peer TLS without --peer-client-cert-auth: peer traffic is encrypted, but anyone who can reach the peer port can act as a member; keep it on a private network or enable --peer-client-cert-auth")
        }
        return try PeerTLS(config: config, settings: settings, logger: logger, refusals: refusals)
    }

    init(config: ServerConfig, settings: TLSSettings, logger: Logger, refusals: PeerRefusals) throws {
        self.settings = settings
        self.logger = logger
        self.refusals = refusals
        if settings.crlFile.isEmpty {
            revocation = nil
        } else {
            do {
                revocation = try CertificateRevocation(crlFile: settings.crlFile, caFile: settings.trustedCAFile, logger: logger)
            } catch {
                throw ServerStartError("--peer-crl-file: \(error)")
            }
            logger.info("peer certificates are checked against the revocation list", metadata: ["crl-file": "\(settings.crlFile)"])
        }
        server = try ClientTLSContextSource(config: config, settings: settings, logger: logger, side: "peer") {
            try PeerTLS.makeContext(role: .server, settings: $0, ciphers: $1, min: $2, max: $3)
        }
        client = try ClientTLSContextSource(config: config, settings: settings, logger: logger, side: "peer dialler") {
            try PeerTLS.makeContext(role: .client, settings: $0, ciphers: $1, min: $2, max: $3)
        }
    }

    /// The one place a peer TLS context is made (listener and dialler alike), from the files
    /// as they are now.
    static func makeContext(role: Role, settings: TLSSettings, ciphers: [NIOTLSCipher],
                            min: TLSVersion, max: TLSVersion?) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(settings.certFile).map { NIOSSLCertificateSource.certificate($0) }
        let key = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(file: settings.keyFile, format: .pem))
        var tls: TLSConfiguration
        switch role {
        case .server:
            tls = .makeServerConfiguration(certificateChain: chain, privateKey: key)
            // With client-cert-auth a peer must present a certificate signed by a trusted CA;
            // its names are checked after the handshake (PeerCertificateHandler) and per call.
            tls.certificateVerification = settings.clientCertAuth ? .noHostnameVerification : .none
        case .client:
            tls = .makeClientConfiguration()
            tls.certificateChain = chain
            tls.privateKey = key
            // The server must be signed by the trusted CA and valid for the dialled host (the
            // peer URL's name or IP address). Generated certificates have no CA to check
            // against (etcd skips verification with --peer-auto-tls too).
            tls.certificateVerification = settings.autoTLS ? .none : .fullVerification
        }
        tls.applicationProtocols = ["h2"]
        tls.minimumTLSVersion = min
        tls.maximumTLSVersion = max
        if !ciphers.isEmpty { tls.cipherSuiteValues = ciphers }
        if !settings.trustedCAFile.isEmpty {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(settings.trustedCAFile))
        }
        return try NIOSSLContext(configuration: tls)
    }

    /// Whether `host` is an IP literal (not sent as SNI; the certificate's IP names are checked).
    static func isIPAddress(_ host: String) -> Bool { SelfSignedCertificate.ipBytes(host) != nil }
}

/// Counts refused peer connections and calls by reason (metric
/// `swetcd_network_peer_refused_total{reason}`).
public final class PeerRefusals: Sendable {
    private let sink = Mutex<(@Sendable (String) -> Void)?>(nil)

    public init() {}

    /// Where counts go (the server's metrics).
    func setSink(_ s: @escaping @Sendable (String) -> Void) { sink.withLock { $0 = s } }

    func count(_ reason: String) { sink.withLock { $0 }?(reason) }
}

/// The verified certificate of an inbound peer connection.
struct PeerIdentity: Sendable, Equatable {
    var commonName: String?
    /// DNS and IP subject alternative names, lower-cased.
    var names: Set<String>
}

/// The verified certificates of open inbound peer connections, by gRPC's remote and local
/// address spelling (as `ServerContext` has them); an entry lives as long as its connection.
final class PeerIdentities: Sendable {
    private let entries = Mutex<[String: PeerIdentity]>([:])

    func set(_ identity: PeerIdentity, for key: String) { entries.withLock { $0[key] = identity } }
    func remove(_ key: String) { _ = entries.withLock { $0.removeValue(forKey: key) } }
    func identity(remote: String, local: String) -> PeerIdentity? {
        entries.withLock { $0[ClientCertificateNames.key(remote: remote, local: local)] }
    }
}

/// After the TLS handshake of an inbound peer connection: closes it when its certificate is
/// missing (with client-cert-auth) or its CN / names are not the allowed ones, before any
/// HTTP/2 byte is read; records the verified certificate otherwise. A failed handshake (no
/// certificate, untrusted CA, expired) is counted and logged.
final class PeerCertificateHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let tls: PeerTLS
    private var key: String?
    private var refused = false

    init(tls: PeerTLS) { self.tls = tls }

    private func refuse(_ context: ChannelHandlerContext, code: String, _ reason: String) {
        if !refused {
            refused = true
            tls.refusals.count(code)
            tls.logger.warning("refused peer connection", metadata: [
                "remote-addr": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(reason)",
            ])
        }
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted? = event as? TLSUserEvent {
            let settings = tls.settings
            let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
            if let certificate {
                let identity = PeerIdentity(commonName: ClientCertificateHandler.commonName(certificate),
                                            names: ClientCertificateHandler.names(certificate))
                if !settings.allowedCN.isEmpty && identity.commonName != settings.allowedCN {
                    refuse(context, code: "certificate_cn",
                           "certificate CN \"\(identity.commonName ?? "")\" is not --peer-cert-allowed-cn \"\(settings.allowedCN)\"")
                    return
                }
                if !settings.allowedHostname.isEmpty && !identity.names.contains(settings.allowedHostname.lowercased()) {
                    refuse(context, code: "certificate_hostname",
                           "certificate names \(identity.names.sorted()) do not include --peer-cert-allowed-hostname \"\(settings.allowedHostname)\"")
                    return
                }
                if settings.clientCertAuth {
                    let channel = context.channel
                    let key = ClientCertificateNames.key(
                        remote: ClientCertificateNames.describe(channel.remoteAddress, fallback: channel.localAddress),
                        local: ClientCertificateNames.describe(channel.localAddress, fallback: channel.remoteAddress))
                    self.key = key
                    tls.identities.set(identity, for: key)
                }
            } else if settings.clientCertAuth {
                refuse(context, code: "no_certificate", "no client certificate (--peer-client-cert-auth)")
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if key == nil && (error is NIOSSLError || error is BoringSSLError) {
            refuse(context, code: "tls_handshake", "TLS handshake failed: \(error)")
            return
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let key { tls.identities.remove(key) }
        key = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let key { tls.identities.remove(key) }
        key = nil
    }
}

/// Binds one peer listen URL: plaintext, or TLS with the peer context of each new connection
/// and the certificate check, then gRPC's HTTP/2 pipeline. At most `maxConnections` are open
/// at once; one accepted beyond that is closed at once, before anything is read from it.
struct PeerListener: HTTP2ServerTransport.ListenerFactory {
    let address: NIOCore.SocketAddress
    let tls: PeerTLS?
    let handshakeTimeout: TimeAmount
    let admission: ConnectionAdmission
    let refusals: PeerRefusals?
    /// Where accepted connections live (nil: with the listener, on NIO's shared group).
    var connectionGroup: (any EventLoopGroup)?
    var eventLoopGroup: any EventLoopGroup { MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup }

    func makeListeningChannel(
        listenerConfigurator: HTTP2ServerTransport.ListenerConfigurator,
        connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
    ) async throws -> NIOAsyncChannel<HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never> {
        let tls = self.tls
        let timeout = handshakeTimeout
        let admission = self.admission
        let refusals = self.refusals
        return try await ServerBootstrap(group: eventLoopGroup, childGroup: connectionGroup ?? eventLoopGroup)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in listenerConfigurator.configure(channel: channel) }
            .bind(to: address) { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard admission.admit() else {
                        refusals?.count("too_many_connections")
                        try channel.pipeline.syncOperations.addHandler(RefusedConnectionHandler())
                        return
                    }
                    channel.closeFuture.whenComplete { _ in admission.release() }
                    if let tls {
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(CertificateRevocation.serverHandler(context: tls.server.current(), revocation: tls.revocation))
                        try sync.addHandler(TLSHandshakeDeadline(timeout: timeout))
                        try sync.addHandler(PeerCertificateHandler(tls: tls))
                    }
                }.flatMap {
                    connectionConfigurator.configure(channel: channel, tls: tls == nil ? .none : .configured(requireALPN: false))
                }
            }
    }
}
