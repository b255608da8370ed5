import Foundation
import NIOSSL
import Testing
@testable import Server

/// A smoke test of the TLS hook (full TLS coverage belongs to the TLS issue): ALPN `h2` reaches
/// gRPC, ALPN `http/1.1` and no ALPN reach the HTTP router, all on one port.
@Suite struct ClientPortTLSTests {
    static let tools = ["/usr/bin/openssl", "/usr/bin/curl", "/usr/bin/etcdctl"]
    static let toolsPresent = tools.allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }

    /// A throw-away self-signed certificate for 127.0.0.1, made with openssl.
    static func makeContext(in directory: URL) async throws -> NIOSSLContext {
        let key = directory.appendingPathComponent("key.pem").path
        let cert = directory.appendingPathComponent("cert.pem").path
        let made = try await run("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        try #require(made.status == 0, "openssl: \(made.error)")
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
        )
        tls.applicationProtocols = ["h2", "http/1.1"]
        return try NIOSSLContext(configuration: tls)
    }

    @Test(.enabled(if: toolsPresent))
    func silentOrStalledTLSHandshakeIsClosed() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swetcd-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let context = try await Self.makeContext(in: directory)
        try await withClientPort(configure: { $0.tls = context; $0.protocolDetectionTimeout = .milliseconds(200) }) { port in
            // Nothing sent: closed by the handshake deadline.
            let silent = try await RawClient.connect(port: port, timeoutSeconds: 10)
            #expect(try await silent.readToEnd().closed)
            // A partial ClientHello record (header promising more bytes than sent): closed too.
            let stalled = try await RawClient.connect(port: port, timeoutSeconds: 10)
            try await stalled.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            #expect(try await stalled.readToEnd().closed)
            // A completed handshake is not cut by the deadline (HTTP/1.1 keeps working after it).
            let url = "https://127.0.0.1:\(port)/version"
            let ok = try await run("/usr/bin/curl", ["-sk", "-m", "10", "--http1.1", url, url])
            #expect(ok.output.contains("etcdserver"), "curl: \(ok.error)")
        }
    }

    @Test(.enabled(if: toolsPresent))
    func alpnRoutesGRPCAndHTTPOnOneTLSPort() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swetcd-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let context = try await Self.makeContext(in: directory)

        try await withClientPort(configure: { $0.tls = context }) { port in
            let url = "https://127.0.0.1:\(port)/version"
            let viaALPN = try await run("/usr/bin/curl", ["-sk", "-m", "10", "--http1.1", url])
            #expect(viaALPN.output == #"{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}"#, "curl: \(viaALPN.error)")
            let noALPN = try await run("/usr/bin/curl", ["-sk", "-m", "10", "--http1.1", "--no-alpn", url])
            #expect(noALPN.output == #"{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}"#, "curl: \(noALPN.error)")

            let status = try await run("/usr/bin/etcdctl", [
                "--endpoints", "https://127.0.0.1:\(port)", "--cacert", directory.appendingPathComponent("cert.pem").path,
                "--dial-timeout", "5s", "endpoint", "status", "-w", "json",
            ])
            #expect(status.status == 0, "etcdctl: \(status.error)")
            #expect(status.output.contains(#""version":"3.5.17""#))
        }
    }
}
