import Crypto
import EtcdConfig
import Foundation
import Logging
import NIOCore
import NIOSSL
import NIOTLS
import Synchronization
import SwiftASN1
import X509

/// The client port's TLS: builds the server context from `--cert-file --key-file
/// --trusted-ca-file --client-cert-auth --cipher-suites --tls-min-version --tls-max-version`,
/// and rebuilds it for new connections when one of the files changed (etcd re-reads them per
/// handshake): certificates are rotated by replacing the files, without a restart. A file set
/// that does not load (say, the new certificate written but not its key yet) keeps the last
/// good context and is retried at the next connection.
final class ClientTLSContextSource: Sendable {
    let settings: TLSSettings
    let cipherSuites: [NIOTLSCipher]
    let minVersion: TLSVersion
    let maxVersion: TLSVersion?
    private let logger: Logger
    private let state: Mutex<(stamp: [FileStamp], context: NIOSSLContext)>
    /// Builds a context from the files (the client port's server context by default; the
    /// peer side passes its own, see PeerTLS.swift).
    typealias Builder = @Sendable (TLSSettings, [NIOTLSCipher], TLSVersion, TLSVersion?) throws -> NIOSSLContext
    private let build: Builder
    /// "client" or "peer": names the side in logs and errors.
    private let side: String

    /// Identity of a file's current contents as far as `stat` tells (replacement or rewrite).
    struct FileStamp: Equatable {
        var device: UInt64, inode: UInt64, size: Int64, mtimeSeconds: Int, mtimeNanoseconds: Int

        static func of(_ path: String) -> FileStamp? {
            var s = stat()
            guard stat(path, &s) == 0 else { return nil }
            return FileStamp(device: UInt64(s.st_dev), inode: UInt64(s.st_ino), size: Int64(s.st_size),
                             mtimeSeconds: Int(s.st_mtim.tv_sec), mtimeNanoseconds: Int(s.st_mtim.tv_nsec))
        }
    }

    /// Loads the files once; throws a start error naming what is wrong.
    init(config: ServerConfig, settings: TLSSettings, logger: Logger, side: String = "client",
         build: @escaping Builder = ClientTLSContextSource.makeContext) throws {
        self.settings = settings
        self.logger = logger
        self.side = side
        self.build = build
        self.cipherSuites = try Self.ciphers(config.cipherSuites)
        self.minVersion = try Self.version(config.tlsMinVersion, flag: "--tls-min-version") ?? .tlsv12
        self.maxVersion = try Self.version(config.tlsMaxVersion, flag: "--tls-max-version")
        let stamp = Self.stamps(settings)
        let context: NIOSSLContext
        do {
            context = try build(settings, cipherSuites, minVersion, maxVersion)
        } catch {
            let p = side.hasPrefix("peer") ? "peer-" : ""
            throw ServerStartError("\(side) TLS: cannot load --\(p)cert-file \(settings.certFile), --\(p)key-file \(settings.keyFile)"
                + (settings.trustedCAFile.isEmpty ? "" : ", --\(p)trusted-ca-file \(settings.trustedCAFile)") + ": \(error)")
        }
        state = Mutex((stamp, context))
    }

    /// The context for a new connection: rebuilt first if a file changed since the last build.
    func current() -> NIOSSLContext {
        let stamp = Self.stamps(settings)
        return state.withLock { state in
            guard stamp != state.stamp else { return state.context }
            do {
                state.context = try build(settings, cipherSuites, minVersion, maxVersion)
                state.stamp = stamp
                logger.info("\(side) TLS certificate files changed; new connections use them",
                            metadata: ["cert-file": "\(settings.certFile)", "key-file": "\(settings.keyFile)"])
            } catch {
                // Kept: the stamp is not updated, so the next connection tries again.
                logger.warning("\(side) TLS files changed but do not load; keeping the previous certificate",
                               metadata: ["error": "\(error)"])
            }
            return state.context
        }
    }

    private static func stamps(_ s: TLSSettings) -> [FileStamp] {
        [s.certFile, s.keyFile, s.trustedCAFile].map { $0.isEmpty ? FileStamp(device: 0, inode: 0, size: -1, mtimeSeconds: 0, mtimeNanoseconds: 0)
            : FileStamp.of($0) ?? FileStamp(device: 0, inode: 0, size: -2, mtimeSeconds: 0, mtimeNanoseconds: 0) }
    }

    static func makeContext(settings: TLSSettings, ciphers: [NIOTLSCipher], min: TLSVersion, max: TLSVersion?) throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(settings.certFile).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: settings.keyFile, format: .pem))
        )
        // HTTP/1.1 first: HTTP clients (curl, browsers, Go's net/http) offer both and get the
        // HTTP routes, whose server speaks HTTP/1.1 only; gRPC clients offer h2 alone (grpc-go)
        // or with grpc-exp, and get h2. A connection that negotiated http/1.1 but sends the
        // HTTP/2 preface is still recognised as gRPC by the sniffer.
        tls.applicationProtocols = ["http/1.1", "h2"]
        tls.minimumTLSVersion = min
        tls.maximumTLSVersion = max
        if !ciphers.isEmpty { tls.cipherSuiteValues = ciphers }
        if !settings.trustedCAFile.isEmpty {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(settings.trustedCAFile))
        }
        if settings.clientCertAuth {
            // A client must present a certificate signed by a trusted CA (etcd:
            // RequireAndVerifyClientCert); its name is not compared with anything.
            tls.certificateVerification = .noHostnameVerification
        }
        return try NIOSSLContext(configuration: tls)
    }

    /// etcd's `--tls-min-version`/`--tls-max-version` values; TLS 1.0 and 1.1 are refused.
    static func version(_ value: String, flag: String) throws -> TLSVersion? {
        switch value {
        case "": return nil
        case "TLS1.2": return .tlsv12
        case "TLS1.3": return .tlsv13
        default: throw ServerStartError("\(flag) \(value): only TLS1.2 and TLS1.3 are supported")
        }
    }

    /// Go's cipher suite names (etcd's `--cipher-suites`) that TLS 1.2 offers here.
    static let cipherNames: [String: NIOTLSCipher] = [
        "TLS_RSA_WITH_AES_128_CBC_SHA": .TLS_RSA_WITH_AES_128_CBC_SHA,
        "TLS_RSA_WITH_AES_256_CBC_SHA": .TLS_RSA_WITH_AES_256_CBC_SHA,
        "TLS_RSA_WITH_AES_128_GCM_SHA256": .TLS_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_RSA_WITH_AES_256_GCM_SHA384": .TLS_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": .TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": .TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": .TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": .TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]

    /// `--cipher-suites`: Go names, each known (etcd: "unexpected TLS cipher suite").
    static func ciphers(_ names: [String]) throws -> [NIOTLSCipher] {
        try names.filter { !$0.isEmpty }.map { name in
            guard let c = cipherNames[name] else {
                throw ServerStartError("unexpected TLS cipher suite \"\(name)\" in --cipher-suites (TLS 1.2 suites only: \(cipherNames.keys.sorted().joined(separator: ", ")))")
            }
            return c
        }
    }
}

/// `--auto-tls`: a self-signed certificate and key in `<data-dir>/fixtures/client` (as etcd),
/// made at the first start, valid `--self-signed-cert-validity` years for the listen hosts, and
/// reused by later starts while both files exist.
enum SelfSignedCertificate {
    static func make(directory: String, hosts: [String], validityYears: UInt64) throws -> (cert: String, key: String) {
        let certPath = directory + "/cert.pem", keyPath = directory + "/key.pem"
        if FileManager.default.fileExists(atPath: certPath) && FileManager.default.fileExists(atPath: keyPath) {
            return (certPath, keyPath)
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let key = P256.Signing.PrivateKey()
        let now = Date()
        var names: [GeneralName] = []
        for host in Set(hosts + ["localhost"]).sorted() {
            if let ip = ipBytes(host) { names.append(.ipAddress(ASN1OctetString(contentBytes: ip[...]))) }
            else { names.append(.dnsName(host)) }
        }
        let subject = try DistinguishedName { OrganizationName("swetcd") ; CommonName("swetcd auto-tls") }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-60),
            notValidAfter: now.addingTimeInterval(Double(validityYears) * 365 * 24 * 3600),
            issuer: subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(names)
            },
            issuerPrivateKey: .init(key)
        )
        let certPEM = try certificate.serializeAsPEM().pemString
        guard FileManager.default.createFile(atPath: keyPath, contents: Data(key.pemRepresentation.utf8), attributes: [.posixPermissions: 0o600]),
              FileManager.default.createFile(atPath: certPath, contents: Data(certPEM.utf8), attributes: [.posixPermissions: 0o644]) else {
            throw ServerStartError("--auto-tls: cannot write the generated certificate to \(directory)")
        }
        return (certPath, keyPath)
    }

    static func ipBytes(_ host: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

/// The verified client certificate's common name of each open TLS connection, by its remote
/// and local address as gRPC's `ServerContext` spells them; bounded by the open connections
/// (an entry is removed when its connection closes).
final class ClientCertificateNames: Sendable {
    static let shared = ClientCertificateNames()
    private let names = Mutex<[String: String]>([:])
    /// Entries held, read without the lock so calls on plaintext ports skip it.
    private let count = Atomic<Int>(0)

    static func key(remote: String, local: String) -> String { remote + "|" + local }

    func set(_ name: String, for key: String) {
        names.withLock {
            if $0.updateValue(name, forKey: key) == nil { count.wrappingAdd(1, ordering: .relaxed) }
        }
    }

    func remove(_ key: String) {
        names.withLock {
            if $0.removeValue(forKey: key) != nil { count.wrappingSubtract(1, ordering: .relaxed) }
        }
    }

    func name(for key: String) -> String? {
        guard count.load(ordering: .relaxed) > 0 else { return nil }
        return names.withLock { $0[key] }
    }

    /// The name recorded for the connection `channel` is on (an HTTP/2 stream answers with its
    /// connection's addresses). On plaintext ports nothing is recorded, and the addresses are
    /// not even spelled: this runs once per request.
    func name(of channel: any Channel) -> String? {
        guard count.load(ordering: .relaxed) > 0 else { return nil }
        return name(for: Self.key(remote: Self.describe(channel.remoteAddress, fallback: channel.localAddress),
                                  local: Self.describe(channel.localAddress, fallback: channel.remoteAddress)))
    }

    /// gRPC's address spelling (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`, `unix:/path`).
    static func describe(_ address: SocketAddress?, fallback: SocketAddress?) -> String {
        switch address {
        case .v4(let a)?: return "ipv4:\(a.host):\(address!.port!)"
        case .v6(let a)?: return "ipv6:[\(a.host)]:\(address!.port!)"
        case .unixDomainSocket?:
            if let p = address!.pathname, !p.isEmpty { return "unix:\(p)" }
            if let p = fallback?.pathname { return "unix:\(p)" }
            return "unix:<unknown>"
        case nil:
            if let p = fallback?.pathname { return "unix:\(p)" }
            return "<unknown>"
        }
    }
}

/// After the TLS handshake of a client connection: refuses a certificate whose names do not
/// include `--client-cert-allowed-hostname` (closing the connection), and records the
/// certificate's CN for auth (etcd: the CN is the user of a request without a token).
final class ClientCertificateHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let allowedHostname: String
    private var key: String?

    init(allowedHostname: String) { self.allowedHostname = allowedHostname }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted? = event as? TLSUserEvent {
            let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
            if let certificate {
                if !allowedHostname.isEmpty && !Self.names(certificate).contains(allowedHostname.lowercased()) {
                    context.close(promise: nil)
                    return
                }
                // Not on a Unix-domain socket: gRPC names every connection of one socket by the
                // same path, so the name could not be told apart from another connection's and
                // a client could act as another certificate's user (there, send a token).
                if let cn = Self.commonName(certificate), !Self.isUnixSocket(context.channel) {
                    let channel = context.channel
                    let key = ClientCertificateNames.key(
                        remote: ClientCertificateNames.describe(channel.remoteAddress, fallback: channel.localAddress),
                        local: ClientCertificateNames.describe(channel.localAddress, fallback: channel.remoteAddress))
                    self.key = key
                    ClientCertificateNames.shared.set(cn, for: key)
                }
            } else if !allowedHostname.isEmpty {
                context.close(promise: nil)
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let key { ClientCertificateNames.shared.remove(key) }
        key = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let key { ClientCertificateNames.shared.remove(key) }
        key = nil
    }

    static func isUnixSocket(_ channel: any Channel) -> Bool {
        if case .unixDomainSocket? = channel.localAddress { return true }
        if case .unixDomainSocket? = channel.remoteAddress { return true }
        return false
    }

    /// The certificate's DNS and IP names (lower-cased), as Go's VerifyHostname checks them.
    static func names(_ certificate: NIOSSLCertificate) -> Set<String> {
        var out: Set<String> = []
        for san in certificate._subjectAlternativeNames() {
            switch san.nameType {
            case .dnsName: out.insert(String(decoding: Array(san.contents), as: UTF8.self).lowercased())
            case .ipAddress:
                let bytes = Array(san.contents)
                var buffer = [CChar](repeating: 0, count: 64)
                if bytes.count == 4 || bytes.count == 16 {
                    let family = bytes.count == 4 ? AF_INET : AF_INET6
                    if bytes.withUnsafeBytes({ inet_ntop(family, $0.baseAddress, &buffer, 64) }) != nil {
                        out.insert(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
                    }
                }
            default: break
            }
        }
        return out
    }

    /// The subject's common name, if any.
    static func commonName(_ certificate: NIOSSLCertificate) -> String? {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return nil }
        for rdn in parsed.subject.reversed() {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                if let value = String(attribute.value) { return value }
            }
        }
        return nil
    }
}
