import Foundation
import Logging
import NIOSSL
import Raft
import Testing
import X509
import SwiftASN1
@testable import Server

/// Revocation lists made by `openssl ca -revoke` / `openssl ca -gencrl`, read by
/// `CertificateRevocationList` and `CertificateRevocation`.
@Suite struct CRLTests {
    static let opensslPresent = FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")

    /// A CA ("test CA") with an `openssl ca` database, certificates it issued, and a second CA.
    struct Fixture {
        let dir: String
        var ca: String { dir + "/ca.pem" }

        init() async throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("swetcd-crl-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for (name, cn) in [("ca", "test CA"), ("other-ca", "other CA"), ("twin-ca", "test CA")] {
                try await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                   "-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).pem", "-days", "2", "-subj", "/CN=\(cn)"])
                try Data().write(to: URL(fileURLWithPath: "\(dir)/\(name).index"))
                try Data("01\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name).crlnumber"))
                try Data("""
                    [ ca ]
                    default_ca = d
                    [ d ]
                    database = \(dir)/\(name).index
                    crlnumber = \(dir)/\(name).crlnumber
                    default_md = sha256
                    default_crl_days = 1

                    """.utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name).cnf"))
            }
        }

        /// `<name>.pem` with `serial`, signed by `issuer`.
        @discardableResult
        func issue(_ name: String, serial: String, issuer: String = "ca") async throws -> String {
            try await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                               "-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).csr", "-subj", "/CN=\(name)"])
            try await openssl(["x509", "-req", "-in", "\(dir)/\(name).csr", "-CA", "\(dir)/\(issuer).pem",
                               "-CAkey", "\(dir)/\(issuer).key", "-set_serial", serial, "-days", "2", "-out", "\(dir)/\(name).pem"])
            return "\(dir)/\(name).pem"
        }

        func revoke(_ name: String, issuer: String = "ca") async throws {
            try await openssl(["ca", "-config", "\(dir)/\(issuer).cnf", "-keyfile", "\(dir)/\(issuer).key",
                               "-cert", "\(dir)/\(issuer).pem", "-revoke", "\(dir)/\(name).pem"])
        }

        /// A CRL of `issuer`'s database, PEM (or DER), optionally with given update times.
        func crl(issuer: String = "ca", der: Bool = false, lastUpdate: String? = nil, nextUpdate: String? = nil) async throws -> [UInt8] {
            let out = "\(dir)/\(issuer)-\(UUID().uuidString).crl"
            try await openssl(["ca", "-config", "\(dir)/\(issuer).cnf", "-keyfile", "\(dir)/\(issuer).key",
                               "-cert", "\(dir)/\(issuer).pem", "-gencrl", "-out", out]
                              + (lastUpdate.map { ["-crl_lastupdate", $0] } ?? []) + (nextUpdate.map { ["-crl_nextupdate", $0] } ?? []))
            if der { try await openssl(["crl", "-in", out, "-outform", "DER", "-out", out + ".der"]) }
            return [UInt8](try Data(contentsOf: URL(fileURLWithPath: der ? out + ".der" : out)))
        }

        func certificate(_ path: String) throws -> Certificate {
            try Certificate(pemEncoded: String(contentsOfFile: path, encoding: .utf8))
        }

        func signers(_ names: String...) throws -> [Certificate] { try names.map { try certificate("\(dir)/\($0).pem") } }

        func openssl(_ args: [String]) async throws {
            let r = try await run("/usr/bin/openssl", args)
            guard r.status == 0 else { throw CRLError("openssl \(args.prefix(2)): \(r.error)") }
        }

        func cleanUp() { try? FileManager.default.removeItem(atPath: dir) }
    }

    func parseError(_ bytes: [UInt8], _ signers: [Certificate]) -> String? {
        do { _ = try CertificateRevocationList.parse(bytes, signers: signers); return nil } catch let e as CRLError {
            return e.description
        } catch { return "not a CRLError: \(error)" }
    }

    @Test(.enabled(if: opensslPresent))
    func listsRevokedSerialsOfTheirIssuerOnly() async throws {
        let fx = try await Fixture()
        defer { fx.cleanUp() }
        let good = try fx.certificate(try await fx.issue("good", serial: "0x1001"))
        let bad = try fx.certificate(try await fx.issue("bad", serial: "0x00A2B3C4D5E6F7"))
        // The same serial from another CA is a different certificate.
        let otherSameSerial = try fx.certificate(try await fx.issue("other", serial: "0x00A2B3C4D5E6F7", issuer: "other-ca"))

        // An empty list: parses, signed by the CA, nothing revoked, current.
        let empty = try CertificateRevocationList.parse(try await fx.crl(), signers: try fx.signers("ca"))
        #expect(empty.count == 1 && empty[0].revoked.isEmpty && empty[0].nextUpdate != nil)
        #expect(empty[0].issuer == good.issuer)
        #expect(CertificateRevocation.refusal(bad, lists: empty, now: Date()) == nil)

        try await fx.revoke("bad")
        for der in [false, true] {
            let lists = try CertificateRevocationList.parse(try await fx.crl(der: der), signers: try fx.signers("other-ca", "ca"))
            #expect(lists.count == 1 && lists[0].revoked.count == 1, "der \(der)")
            let why = CertificateRevocation.refusal(bad, lists: lists, now: Date())
            #expect(why?.contains("is revoked") == true, "der \(der): \(why ?? "nil")")
            #expect(CertificateRevocation.refusal(good, lists: lists, now: Date()) == nil)
            #expect(CertificateRevocation.refusal(otherSameSerial, lists: lists, now: Date()) == nil)
        }
        // Two lists in one PEM file: both apply.
        try await fx.revoke("other", issuer: "other-ca")
        let both = try await fx.crl() + fx.crl(issuer: "other-ca")
        let lists = try CertificateRevocationList.parse(both, signers: try fx.signers("ca", "other-ca"))
        #expect(lists.count == 2)
        #expect(CertificateRevocation.refusal(otherSameSerial, lists: lists, now: Date()) != nil)
        #expect(CertificateRevocation.refusal(good, lists: lists, now: Date()) == nil)
    }

    @Test(.enabled(if: opensslPresent))
    func listNotSignedByTheTrustedCAIsRefused() async throws {
        let fx = try await Fixture()
        defer { fx.cleanUp() }
        let crl = try await fx.crl()
        // Issuer not among the trusted CAs.
        #expect(parseError(crl, try fx.signers("other-ca"))?.contains("is not a certificate in the trusted CA file") == true)
        // A CA with the same name but another key: the signature does not verify.
        #expect(parseError(crl, try fx.signers("twin-ca"))?.contains("signature does not verify") == true)
        // A changed byte of the signed part, or of the signature itself.
        var der = try await fx.crl(der: true)
        #expect(parseError(der, try fx.signers("ca")) == nil)
        let tbsDate = der.count / 3
        der[tbsDate] ^= 0x01
        #expect(parseError(der, try fx.signers("ca")) != nil)
        der[tbsDate] ^= 0x01
        der[der.count - 1] ^= 0x01
        #expect(parseError(der, try fx.signers("ca"))?.contains("signature does not verify") == true)
    }

    @Test(.enabled(if: opensslPresent))
    func staleListRefusesItsIssuersCertificates() async throws {
        let fx = try await Fixture()
        defer { fx.cleanUp() }
        let good = try fx.certificate(try await fx.issue("good", serial: "7"))
        let other = try fx.certificate(try await fx.issue("other", serial: "7", issuer: "other-ca"))
        let lists = try CertificateRevocationList.parse(
            try await fx.crl(lastUpdate: "20200101000000Z", nextUpdate: "20200102000000Z"), signers: try fx.signers("ca"))
        #expect(lists[0].nextUpdate == Date(timeIntervalSince1970: 1_577_923_200))
        #expect(lists[0].thisUpdate == Date(timeIntervalSince1970: 1_577_836_800))
        #expect(CertificateRevocation.refusal(good, lists: lists, now: Date())?.contains("expired") == true)
        #expect(CertificateRevocation.refusal(good, lists: lists, now: Date(timeIntervalSince1970: 1_577_900_000)) == nil)
        // Certificates of a CA without a list are not affected.
        #expect(CertificateRevocation.refusal(other, lists: lists, now: Date()) == nil)
    }

    @Test(.enabled(if: opensslPresent))
    func garbageGetsAClearErrorNeverATrap() async throws {
        let fx = try await Fixture()
        defer { fx.cleanUp() }
        let signers = try fx.signers("ca")
        #expect(parseError([], signers) == "the file is empty")
        #expect(parseError(Array("hello, world\n".utf8), signers)?.contains("neither DER nor PEM") == true)
        let certPEM = [UInt8](try Data(contentsOf: URL(fileURLWithPath: fx.ca)))
        #expect(parseError(certPEM, signers)?.contains("no \"X509 CRL\" PEM block (found: CERTIFICATE)") == true)
        #expect(parseError([0x30, 0x03, 0x02, 0x01, 0x01], signers) != nil)
        // Every truncation and seeded random damage of a real list: a CRLError or a list.
        try await fx.issue("bad", serial: "99")
        try await fx.revoke("bad")
        let der = try await fx.crl(der: true)
        for n in 0..<der.count {
            #expect(parseError(Array(der.prefix(n)), signers) != nil, "prefix \(n)")
        }
        var rng = SplitMix64(seed: 7)
        var parsed = 0, refused = 0
        for _ in 0..<2000 {
            var damaged = der
            for _ in 0..<Int(rng.next() % 3 + 1) {
                damaged[Int(rng.next() % UInt64(damaged.count))] = UInt8(truncatingIfNeeded: rng.next())
            }
            if let e = parseError(damaged, signers) {
                #expect(!e.hasPrefix("not a CRLError"), "\(e)")
                refused += 1
            } else {
                parsed += 1
            }
        }
        #expect(refused > 1900)
    }

    @Test(.enabled(if: opensslPresent))
    func changedFileIsReloadedAndABrokenOneKeepsThePrevious() async throws {
        let fx = try await Fixture()
        defer { fx.cleanUp() }
        try await fx.issue("bad", serial: "42")
        let path = fx.dir + "/client.crl"
        try Data(try await fx.crl()).write(to: URL(fileURLWithPath: path))
        let revocation = try CertificateRevocation(crlFile: path, caFile: fx.ca, logger: Logger(label: "test"))
        #expect(revocation.lists().first?.revoked.isEmpty == true)
        try await fx.revoke("bad")
        try Data(try await fx.crl()).write(to: URL(fileURLWithPath: path + ".new"))
        #expect(rename(path + ".new", path) == 0)
        #expect(revocation.lists().first?.revoked == [[42]])
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: path))
        #expect(revocation.lists().first?.revoked == [[42]])
        // Start errors name the file and the reason.
        #expect(throws: CRLError.self) { try CertificateRevocation(crlFile: path, caFile: fx.ca, logger: Logger(label: "test")) }
        #expect(throws: CRLError.self) { try CertificateRevocation(crlFile: fx.dir + "/missing", caFile: fx.ca, logger: Logger(label: "test")) }
    }
}

extension CRLTests {
    /// The handshake hook on a real client port, with curl: a client certificate issued by an
    /// intermediate CA is served until the root's list revokes the intermediate (the whole
    /// verified chain is checked, not only the leaf), and the list is re-read for that.
    @Test(.enabled(if: opensslPresent && FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")))
    func revokedIntermediateFailsTheHandshake() async throws {
        let fx = try await Fixture()
        defer { fx.cleanUp() }
        let d = fx.dir
        try Data("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n".utf8)
            .write(to: URL(fileURLWithPath: d + "/int.ext"))
        try Data("extendedKeyUsage=clientAuth\n".utf8).write(to: URL(fileURLWithPath: d + "/leaf.ext"))
        try Data("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n".utf8).write(to: URL(fileURLWithPath: d + "/server.ext"))
        for (name, issuer, ext, serial) in [("int", "ca", "int.ext", 11), ("leaf", "int", "leaf.ext", 12), ("server", "ca", "server.ext", 13)] {
            try await fx.openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                  "-keyout", "\(d)/\(name).key", "-out", "\(d)/\(name).csr", "-subj", "/CN=\(name)"])
            try await fx.openssl(["x509", "-req", "-in", "\(d)/\(name).csr", "-CA", "\(d)/\(issuer).pem", "-CAkey", "\(d)/\(issuer).key",
                                  "-set_serial", "\(serial)", "-days", "2",
                                  "-out", "\(d)/\(name).pem", "-extfile", "\(d)/\(ext)"])
        }
        let chain = try String(contentsOfFile: d + "/leaf.pem", encoding: .utf8) + String(contentsOfFile: d + "/int.pem", encoding: .utf8)
        try Data(chain.utf8).write(to: URL(fileURLWithPath: d + "/chain.pem"))
        let crl = d + "/ca.crl"
        try Data(try await fx.crl()).write(to: URL(fileURLWithPath: crl))
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(d + "/server.pem").map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: d + "/server.key", format: .pem)))
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(fx.ca))
        tls.certificateVerification = .noHostnameVerification
        tls.applicationProtocols = ["http/1.1", "h2"]
        let context = try NIOSSLContext(configuration: tls)
        let revocation = try CertificateRevocation(crlFile: crl, caFile: fx.ca, logger: Logger(label: "test"))
        try await withClientPort(configure: { $0.tls = context; $0.revocation = revocation }) { port in
            func curl() async throws -> (status: Int32, output: String, error: String) {
                try await run("/usr/bin/curl", ["-s", "-m", "10", "--cacert", fx.ca, "--cert", d + "/chain.pem", "--key", d + "/leaf.key",
                                                "https://127.0.0.1:\(port)/version"])
            }
            let served = try await curl()
            #expect(served.output.contains("etcdserver"), "\(served)")
            try await fx.revoke("int")
            try Data(try await fx.crl()).write(to: URL(fileURLWithPath: crl + ".new"))
            #expect(rename(crl + ".new", crl) == 0)
            let refused = try await curl()
            #expect(refused.status != 0 && !refused.output.contains("etcdserver"), "\(refused)")
        }
    }
}

