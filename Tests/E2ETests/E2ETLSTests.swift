import Foundation
import Testing

/// Certificates for the TLS tests, made with the openssl command line: a CA, a server
/// certificate for 127.0.0.1 and localhost, client certificates (trusted, from another CA,
/// expired).
struct TLSFixture {
    let dir: String
    var ca: String { dir + "/ca.pem" }

    init() async throws {
        dir = try E2E.tempDir("tls")
        try await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-keyout", dir + "/ca.key", "-out", ca, "-days", "2", "-subj", "/CN=swetcd test CA"])
        try await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-keyout", dir + "/other-ca.key", "-out", dir + "/other-ca.pem", "-days", "2", "-subj", "/CN=other CA"])
        FileManager.default.createFile(atPath: dir + "/server.ext", contents: Data("""
            subjectAltName=IP:127.0.0.1,DNS:localhost
            extendedKeyUsage=serverAuth
            """.utf8))
    }

    /// Issues `<name>.pem` and `<name>.key` signed by `issuer` ("ca" or "other-ca").
    @discardableResult
    func issue(_ name: String, cn: String, serial: Int, issuer: String = "ca", server: Bool = false, days: Int = 2,
               clientDNS: String = "client.example") async throws -> (cert: String, key: String) {
        let cert = "\(dir)/\(name).pem", key = "\(dir)/\(name).key", csr = "\(dir)/\(name).csr"
        if !server {
            FileManager.default.createFile(atPath: "\(dir)/\(name).ext", contents: Data("""
                subjectAltName=DNS:\(clientDNS)
                extendedKeyUsage=clientAuth
                """.utf8))
        }
        try await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-keyout", key, "-out", csr, "-subj", "/CN=\(cn)"])
        try await openssl(["x509", "-req", "-in", csr, "-CA", "\(dir)/\(issuer).pem", "-CAkey", "\(dir)/\(issuer).key",
                           "-set_serial", "\(serial)", "-days", "\(days)", "-out", cert,
                           "-extfile", dir + (server ? "/server.ext" : "/\(name).ext")])
        return (cert, key)
    }

    /// Revokes `<name>.pem` in the CA's `openssl ca` database (made on first use).
    func revoke(_ name: String) async throws {
        try await openssl(["ca", "-config", try caConfig(), "-keyfile", dir + "/ca.key", "-cert", ca, "-revoke", "\(dir)/\(name).pem"])
    }

    /// Writes the CA's revocation list (PEM, by `openssl ca -gencrl`) to `path`, atomically.
    func writeCRL(_ path: String) async throws {
        try await openssl(["ca", "-config", try caConfig(), "-keyfile", dir + "/ca.key", "-cert", ca, "-gencrl", "-out", path + ".new"])
        guard rename(path + ".new", path) == 0 else { throw E2EError("rename \(path): errno \(errno)") }
    }

    private func caConfig() throws -> String {
        let config = dir + "/ca.cnf"
        if !FileManager.default.fileExists(atPath: config) {
            FileManager.default.createFile(atPath: dir + "/ca.index", contents: Data())
            FileManager.default.createFile(atPath: dir + "/ca.crlnumber", contents: Data("01\n".utf8))
            FileManager.default.createFile(atPath: config, contents: Data("""
                [ ca ]
                default_ca = d
                [ d ]
                database = \(dir)/ca.index
                crlnumber = \(dir)/ca.crlnumber
                default_md = sha256
                default_crl_days = 1

                """.utf8))
        }
        return config
    }

    func openssl(_ args: [String]) async throws {
        let c = try Child("/usr/bin/openssl", args)
        try c.start()
        let status = try await c.waitExit(limit: .seconds(20))
        guard status == 0 else { throw E2EError("openssl \(args.prefix(2)) failed: \(c.stderr)") }
    }

    /// etcdctl's TLS flags for client certificate `name` (nil: CA only).
    func ctlFlags(_ name: String?) -> [String] {
        ["--cacert", ca] + (name.map { ["--cert", "\(dir)/\($0).pem", "--key", "\(dir)/\($0).key"] } ?? [])
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: dir) }
}

/// Runs a command to completion (bounded).
func runTool(_ path: String, _ args: [String], limit: Int = 20) async throws -> CommandOutput {
    let c = try Child("/usr/bin/timeout", ["-s", "KILL", "\(limit)", path] + args)
    try c.start()
    let status = try await c.waitExit(limit: .seconds(Int64(limit + 5)))
    return CommandOutput(status: status, stdout: c.stdout, stderr: c.stderr)
}

/// https:// client URLs with the real etcdctl 3.4, curl and openssl.
@Suite("E2E TLS", .serialized, .enabled(if: E2E.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")
    && FileManager.default.isExecutableFile(atPath: "/usr/bin/curl"), "swetcd, etcdctl, openssl or curl not found"))
struct E2ETLSTests {
    /// A member whose client port is https:// with the given TLS flags, plus a plain http://
    /// listener on `plainPort`.
    static func withTLSMember(_ fx: TLSFixture, plainPort: Int, extra: [String] = [],
                              _ body: (Member, String) async throws -> Void) async throws {
        let m = try Member()
        let https = "https://127.0.0.1:\(m.clientPort)"
        m.extraArgs = ["--listen-client-urls", "\(https),http://127.0.0.1:\(plainPort)",
                       "--advertise-client-urls", https] + extra
        do {
            try await m.start()
            try await body(m, https)
        } catch {
            Issue.record("swetcd log tail: \(m.stderrText.suffix(3000))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    @Test func mutualTLSServesEtcdctlAndCurlAndRefusesOthers() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server-1", serial: 101, server: true)
        try await fx.issue("client", cn: "client", serial: 201)
        try await fx.issue("stranger", cn: "client", serial: 301, issuer: "other-ca")
        try await fx.issue("expired", cn: "client", serial: 401, days: -1)
        let plainPort = try E2E.freePort()
        try await Self.withTLSMember(fx, plainPort: plainPort, extra: [
            "--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth",
        ]) { m, https in
            func ctl(_ cert: String?, _ args: [String], endpoint: String? = nil, input: String? = nil) async throws -> CommandOutput {
                try await etcdctl(endpoint ?? https, fx.ctlFlags(cert) + args, input: input)
            }
            // KV, lease, watch, snapshot with a trusted client certificate.
            try await E2E.waitUntil("member serves over TLS") { try await ctl("client", ["put", "k", "v1"]).status == 0 }
            #expect(try await ctl("client", ["get", "k"]).lines == ["k", "v1"])
            let grant = try await ctl("client", ["lease", "grant", "60"])
            let lease = try #require(grant.stdout.split(separator: " ").dropFirst().first.map(String.init), "\(grant)")
            #expect(try await ctl("client", ["put", "leased", "x", "--lease", lease]).lines == ["OK"])
            #expect(try await ctl("client", ["lease", "timetolive", lease, "--keys"]).stdout.contains("leased"))
            let watcher = try etcdctlProcess(https, fx.ctlFlags("client") + ["watch", "w"], limit: 30)
            try watcher.start()
            try await E2E.waitUntil("watch sees a put") {
                _ = try await ctl("client", ["put", "w", "seen"])
                return watcher.stdout.contains("seen")
            }
            watcher.signal(SIGTERM)
            let snapshot = fx.dir + "/snap.db"
            let saved = try await ctl("client", ["snapshot", "save", snapshot])
            #expect(saved.status == 0, "\(saved)")
            #expect(((try? FileManager.default.attributesOfItem(atPath: snapshot)[.size] as? Int) ?? 0) > 0)

            // Refused: plaintext on the TLS port, no client certificate, another CA, expired.
            // (Short timeouts: a refused etcdctl retries until its deadline.)
            let quick = ["--dial-timeout=2s", "--command-timeout=3s", "get", "k"]
            #expect(try await ctl("client", quick).lines == ["k", "v1"])
            #expect(try await etcdctl("http://127.0.0.1:\(m.clientPort)", quick, limit: 15).status != 0)
            #expect(try await ctl(nil, quick).status != 0)
            #expect(try await ctl("stranger", quick).status != 0)
            #expect(try await ctl("expired", quick).status != 0)

            // The HTTP routes and the JSON gateway over TLS, with curl.
            let curlTLS = ["-s", "-m", "10", "--http1.1", "--cacert", fx.ca, "--cert", fx.dir + "/client.pem", "--key", fx.dir + "/client.key"]
            // curl's default (offering h2 and http/1.1) is answered over HTTP/1.1.
            let health = try await runTool("/usr/bin/curl", curlTLS.filter { $0 != "--http1.1" } + ["\(https)/health"])
            #expect(health.stdout.contains(#""health":"true""#), "\(health)")
            let range = try await runTool("/usr/bin/curl", curlTLS + ["-X", "POST", "-d", #"{"key":"aw=="}"#, "\(https)/v3/kv/range"])
            #expect(range.stdout.contains(#""value":"djE=""#), "\(range)")
            let noCert = try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--http1.1", "--cacert", fx.ca, "\(https)/health"])
            #expect(noCert.status != 0 && !noCert.stdout.contains("health"), "\(noCert)")

            // The http:// listener next to it serves plaintext clients.
            #expect(try await etcdctl("http://127.0.0.1:\(plainPort)", ["get", "k"]).lines == ["k", "v1"])
        }
    }

    /// unixs:// in etcd's form (the socket is the file named host:port in the member's working
    /// directory) serves gRPC and the HTTP routes with the client TLS flags, over a Unix-domain
    /// socket: mutual TLS refuses a client without a certificate or with another CA's; a
    /// unix:// socket next to it serves plaintext. Both socket files go away at a clean stop.
    @Test func unixsSocketServesMutualTLS() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server-1", serial: 101, server: true)
        try await fx.issue("client", cn: "client", serial: 201)
        try await fx.issue("stranger", cn: "client", serial: 301, issuer: "other-ca")
        let cwd = try E2E.tempDir("sockets")
        defer { try? FileManager.default.removeItem(atPath: cwd) }
        let m = try Member()
        m.workingDirectory = cwd
        // Socket names only: the port numbers are not bound as TCP ports.
        let tlsSocket = "localhost:\(m.clientPort + 1)", plainSocket = "localhost:\(m.clientPort + 2)"
        let unixs = "unixs://\(tlsSocket)"
        m.extraArgs = ["--listen-client-urls", "\(unixs),unix://\(plainSocket),http://127.0.0.1:\(m.clientPort)",
                       "--advertise-client-urls", unixs,
                       "--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth"]
        func ctl(_ cert: String?, _ args: [String], endpoint: String = unixs) async throws -> CommandOutput {
            try await etcdctl(endpoint, fx.ctlFlags(cert) + args, directory: cwd)
        }
        do {
            try await m.start()
            try await E2E.waitUntil("member serves on \(unixs)") { try await ctl("client", ["put", "k", "v1"]).status == 0 }
            var isDir: ObjCBool = false
            #expect(FileManager.default.fileExists(atPath: "\(cwd)/\(tlsSocket)", isDirectory: &isDir) && !isDir.boolValue)
            #expect(try await ctl("client", ["get", "k"]).lines == ["k", "v1"])
            let watcher = try etcdctlProcess(unixs, fx.ctlFlags("client") + ["watch", "w"], limit: 30, directory: cwd)
            try watcher.start()
            try await E2E.waitUntil("watch over unixs sees a put") {
                _ = try await ctl("client", ["put", "w", "seen"])
                return watcher.stdout.contains("seen")
            }
            watcher.signal(SIGTERM)
            let status = try await ctl("client", ["endpoint", "status", "-w", "json"])
            #expect(status.status == 0 && status.stdout.contains("\"leader\""), "\(status)")

            // Refused: no client certificate, another CA's certificate, plaintext on the TLS socket.
            // Nothing they sent was written.
            let quick = ["--dial-timeout=2s", "--command-timeout=3s"]
            let noCert = try await ctl(nil, quick + ["put", "nocert", "x"])
            #expect(noCert.status != 0, "\(noCert)")
            let stranger = try await ctl("stranger", quick + ["put", "stranger", "x"])
            #expect(stranger.status != 0, "\(stranger)")
            let plain = try await etcdctl("unix://\(tlsSocket)", quick + ["put", "plain", "x"], limit: 15, directory: cwd)
            #expect(plain.status != 0, "\(plain)")
            #expect(try await ctl("client", ["get", "--prefix", ""]).lines == ["k", "v1", "w", "seen"])

            // The HTTP routes and the JSON gateway over the TLS socket, with curl.
            let curl = ["-s", "-m", "10", "--unix-socket", "\(cwd)/\(tlsSocket)", "--cacert", fx.ca]
            let cert = ["--cert", fx.dir + "/client.pem", "--key", fx.dir + "/client.key"]
            let health = try await runTool("/usr/bin/curl", curl + cert + ["https://localhost/health"])
            #expect(health.stdout.contains(#""health":"true""#), "\(health)")
            let range = try await runTool("/usr/bin/curl", curl + cert + ["-X", "POST", "-d", #"{"key":"aw=="}"#, "https://localhost/v3/kv/range"])
            #expect(range.stdout.contains(#""value":"djE=""#), "\(range)")
            let metrics = try await runTool("/usr/bin/curl", curl + cert + ["https://localhost/metrics"])
            #expect(metrics.stdout.contains("etcd_server_has_leader 1"), "\(metrics.stdout.prefix(300))")
            let curlNoCert = try await runTool("/usr/bin/curl", curl + ["https://localhost/health"])
            #expect(curlNoCert.status != 0 && !curlNoCert.stdout.contains("health"), "\(curlNoCert)")

            // unix:// next to it: plaintext, no certificate asked.
            #expect(try await etcdctl("unix://\(plainSocket)", ["get", "k"], directory: cwd).lines == ["k", "v1"])
            let plainHealth = try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--unix-socket", "\(cwd)/\(plainSocket)", "http://localhost/health"])
            #expect(plainHealth.stdout.contains(#""health":"true""#), "\(plainHealth)")

            // With auth on, a certificate's CN is not the user over a Unix socket (gRPC names all
            // its connections alike, so one client could pass for another): a token is needed.
            try await fx.issue("root", cn: "root", serial: 202)
            #expect(try await ctl("root", ["user", "add", "root:pw"]).lines == ["User root created"])
            #expect(try await ctl("root", ["auth", "enable"]).lines == ["Authentication Enabled"])
            let tokenless = try await ctl("root", quick + ["put", "a", "1"])
            #expect(tokenless.stderr.contains("user name is empty"), "\(tokenless)")
            #expect(try await ctl("root", ["--user", "root:pw", "put", "a", "1"]).lines == ["OK"])

            #expect(try await m.stop() == 0)
            #expect(!FileManager.default.fileExists(atPath: "\(cwd)/\(tlsSocket)"))
            #expect(!FileManager.default.fileExists(atPath: "\(cwd)/\(plainSocket)"))
        } catch {
            Issue.record("swetcd log tail: \(m.stderrText.suffix(3000))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    @Test func replacedCertificateFilesServeNewConnections() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let live = (cert: fx.dir + "/live.pem", key: fx.dir + "/live.key")
        let first = try await fx.issue("server1", cn: "server-one", serial: 111, server: true)
        let second = try await fx.issue("server2", cn: "server-two", serial: 222, server: true)
        try FileManager.default.copyItem(atPath: first.cert, toPath: live.cert)
        try FileManager.default.copyItem(atPath: first.key, toPath: live.key)
        try await Self.withTLSMember(fx, plainPort: try E2E.freePort(), extra: [
            "--cert-file", live.cert, "--key-file", live.key,
        ]) { m, https in
            func servedSubject() async throws -> String {
                let out = try await runTool("/usr/bin/curl", ["-sv", "-m", "10", "--http1.1", "--cacert", fx.ca, "\(https)/version"])
                #expect(out.stdout.contains("etcdserver"), "\(out)")
                return out.stderr
            }
            #expect(try await servedSubject().contains("CN=server-one"))
            #expect(try await etcdctl(https, fx.ctlFlags(nil) + ["put", "a", "1"]).lines == ["OK"])
            // Replace both files (each by an atomic rename), as a certificate manager does.
            for (from, to) in [(second.key, live.key), (second.cert, live.cert)] {
                try FileManager.default.copyItem(atPath: from, toPath: to + ".new")
                #expect(rename(to + ".new", to) == 0)
            }
            let after = try await servedSubject()
            #expect(after.contains("CN=server-two") && !after.contains("CN=server-one"), "\(after)")
            #expect(try await etcdctl(https, fx.ctlFlags(nil) + ["get", "a"]).lines == ["a", "1"])
            // A broken replacement keeps the last good certificate.
            FileManager.default.createFile(atPath: live.key, contents: Data("not a key".utf8))
            #expect(try await servedSubject().contains("CN=server-two"))
            #expect(m.stderrText.contains("do not load; keeping the previous certificate"))
        }
    }

    @Test func certificateCommonNameIsTheUserWithoutAToken() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server", serial: 1, server: true)
        try await fx.issue("root", cn: "root", serial: 2)
        try await fx.issue("alice", cn: "alice", serial: 3)
        try await fx.issue("nobody", cn: "nobody", serial: 4)
        try await Self.withTLSMember(fx, plainPort: try E2E.freePort(), extra: [
            "--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth",
            "--bcrypt-cost", "4",
        ]) { _, https in
            func ctl(_ cert: String, _ args: String...) async throws -> CommandOutput {
                try await etcdctl(https, fx.ctlFlags(cert) + args)
            }
            try await E2E.waitUntil("member serves over TLS") { try await ctl("root", "put", "a/1", "x").status == 0 }
            #expect(try await ctl("root", "user", "add", "root:rootpw").status == 0)
            #expect(try await ctl("root", "user", "add", "alice:alicepw").status == 0)
            #expect(try await ctl("root", "role", "add", "a").status == 0)
            #expect(try await ctl("root", "role", "grant-permission", "a", "readwrite", "a/", "--prefix").status == 0)
            #expect(try await ctl("root", "user", "grant-role", "alice", "a").status == 0)
            #expect(try await ctl("root", "auth", "enable").lines == ["Authentication Enabled"])
            // No token: the certificate's CN is the user.
            #expect(try await ctl("root", "get", "a/1").lines == ["a/1", "x"])
            #expect(try await ctl("root", "user", "list").lines == ["alice", "root"])
            #expect(try await ctl("alice", "put", "a/2", "y").lines == ["OK"])
            #expect(try await ctl("alice", "put", "b", "y").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl("alice", "user", "list").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl("nobody", "get", "a/1").stderr.contains("etcdserver: permission denied"))
            // A token wins over the certificate (alice's password on root's certificate).
            let withToken = try await etcdctl(https, fx.ctlFlags("root") + ["--user", "alice:alicepw", "user", "list"])
            #expect(withToken.stderr.contains("etcdserver: permission denied"), "\(withToken)")

            // The JSON gateway over https: no Authorization header, so the CN is the user too.
            #expect(try await ctl("root", "put", "b", "secret").lines == ["OK"])
            func gateway(_ cert: String, _ key: String, header: [String] = []) async throws -> String {
                let body = #"{"key":""# + Data(key.utf8).base64EncodedString() + #""}"#
                return try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--cacert", fx.ca, "--cert", "\(fx.dir)/\(cert).pem",
                                                           "--key", "\(fx.dir)/\(cert).key", "-X", "POST", "-d", body] + header
                                         + ["\(https)/v3/kv/range"]).stdout
            }
            let xValue = #""value":""# + Data("x".utf8).base64EncodedString() + "\""
            let secret = #""value":""# + Data("secret".utf8).base64EncodedString() + "\""
            let aliceOwn = try await gateway("alice", "a/1")
            #expect(aliceOwn.contains(xValue), "\(aliceOwn)")
            let aliceOther = try await gateway("alice", "b")
            #expect(aliceOther.contains("etcdserver: permission denied") && !aliceOther.contains(secret), "\(aliceOther)")
            #expect(try await gateway("root", "b").contains(secret))
            let nobody = try await gateway("nobody", "a/1")
            #expect(nobody.contains("etcdserver: permission denied") && !nobody.contains(xValue), "\(nobody)")
            // A token in the Authorization header wins over the certificate here as well.
            let auth = try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--cacert", fx.ca, "--cert", "\(fx.dir)/root.pem",
                                                           "--key", "\(fx.dir)/root.key", "-X", "POST",
                                                           "-d", #"{"name":"alice","password":"alicepw"}"#, "\(https)/v3/auth/authenticate"])
            let token = try #require(jsonString(auth.stdout, "token"), "\(auth)")
            let rootAsAlice = try await gateway("root", "b", header: ["-H", "Authorization: \(token)"])
            #expect(rootAsAlice.contains("etcdserver: permission denied") && !rootAsAlice.contains(secret), "\(rootAsAlice)")
        }
    }

    @Test func revokedClientCertificateIsRefusedAndTheListIsReloaded() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server", serial: 1, server: true)
        try await fx.issue("good", cn: "good", serial: 201)
        try await fx.issue("revoked", cn: "revoked", serial: 202)
        let crl = fx.dir + "/client.crl"
        let tlsFlags = ["--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth",
                        "--client-crl-file", crl]
        // A list that is not a CRL is a start error naming the file.
        FileManager.default.createFile(atPath: crl, contents: Data("not a revocation list".utf8))
        let broken = try Member(extraArgs: ["--listen-client-urls", "https://127.0.0.1:\(try E2E.freePort())",
                                            "--advertise-client-urls", "https://127.0.0.1:1"] + tlsFlags)
        await #expect(throws: (any Error).self) { try await broken.start() }
        #expect(broken.stderrText.contains("--client-crl-file: \(crl): neither DER nor PEM"), "\(broken.stderrText.suffix(800))")
        await broken.cleanUp()

        try await fx.revoke("revoked")
        try await fx.writeCRL(crl)
        try await Self.withTLSMember(fx, plainPort: try E2E.freePort(), extra: tlsFlags) { m, https in
            let quick = ["--dial-timeout=2s", "--command-timeout=3s"]
            func ctl(_ cert: String, _ args: String...) async throws -> CommandOutput {
                try await etcdctl(https, fx.ctlFlags(cert) + quick + args, limit: 15)
            }
            try await E2E.waitUntil("member serves over TLS") { try await ctl("good", "put", "k", "v").status == 0 }
            #expect(try await ctl("good", "get", "k").lines == ["k", "v"])
            // The revoked certificate fails the handshake, for etcdctl and for curl.
            let refused = try await ctl("revoked", "get", "k")
            #expect(refused.status != 0 && !refused.stdout.contains("v"), "\(refused)")
            #expect(m.stderrText.contains("rejected connection: certificate serial"), "\(m.stderrText.suffix(1500))")
            func curl(_ cert: String) async throws -> CommandOutput {
                try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--cacert", fx.ca, "--cert", "\(fx.dir)/\(cert).pem",
                                                    "--key", "\(fx.dir)/\(cert).key", "\(https)/health"])
            }
            #expect(try await curl("good").stdout.contains(#""health":"true""#))
            let curlRefused = try await curl("revoked")
            #expect(curlRefused.status != 0 && !curlRefused.stdout.contains("health"), "\(curlRefused)")

            // A new list revoking "good" too is read for the next connection, without a restart.
            try await fx.revoke("good")
            try await fx.writeCRL(crl)
            let after = try await ctl("good", "get", "k")
            #expect(after.status != 0 && !after.stdout.contains("v"), "\(after)")
            #expect(m.stderrText.contains("certificate revocation list changed"))
            // A broken replacement keeps the last good list (and says so).
            FileManager.default.createFile(atPath: crl, contents: Data("garbage".utf8))
            #expect(try await ctl("good", "get", "k").status != 0)
            #expect(try await ctl("revoked", "get", "k").status != 0)
            #expect(m.stderrText.contains("changed but does not load; still using the previous one"))
        }
    }

    @Test func allowedHostnameAndTLSVersionsAreEnforced() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server", serial: 1, server: true)
        try await fx.issue("named", cn: "c1", serial: 2, clientDNS: "client.example")
        try await fx.issue("misnamed", cn: "c2", serial: 3, clientDNS: "other.example")
        try await Self.withTLSMember(fx, plainPort: try E2E.freePort(), extra: [
            "--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth",
            "--client-cert-allowed-hostname", "client.example", "--tls-min-version", "TLS1.3",
        ]) { _, https in
            let quick = ["--dial-timeout=2s", "--command-timeout=3s"]
            try await E2E.waitUntil("member serves over TLS") {
                try await etcdctl(https, fx.ctlFlags("named") + quick + ["put", "k", "v"]).status == 0
            }
            // A trusted certificate without the allowed hostname is refused.
            #expect(try await etcdctl(https, fx.ctlFlags("misnamed") + quick + ["get", "k"]).status != 0)
            // TLS 1.2 is refused below --tls-min-version TLS1.3; 1.3 is served.
            func curl(_ cert: String, _ extra: [String]) async throws -> CommandOutput {
                try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--http1.1", "--cacert", fx.ca, "--cert", "\(fx.dir)/\(cert).pem",
                                                    "--key", "\(fx.dir)/\(cert).key"] + extra + ["\(https)/health"])
            }
            #expect(try await curl("named", ["--tlsv1.3"]).stdout.contains(#""health":"true""#))
            let old = try await curl("named", ["--tlsv1.2", "--tls-max", "1.2"])
            #expect(old.status != 0 && !old.stdout.contains("health"), "\(old)")
            #expect(!(try await curl("misnamed", []).stdout.contains("health")))
        }
    }

    @Test func cipherSuitesLimitTLS12() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server", serial: 1, server: true)
        try await Self.withTLSMember(fx, plainPort: try E2E.freePort(), extra: [
            "--cert-file", server.cert, "--key-file", server.key,
            "--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "--tls-max-version", "TLS1.2",
        ]) { _, https in
            func curl(_ extra: [String]) async throws -> CommandOutput {
                try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--cacert", fx.ca] + extra + ["\(https)/health"])
            }
            try await E2E.waitUntil("member serves over TLS") {
                try await curl(["--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"]).stdout.contains(#""health":"true""#)
            }
            let other = try await curl(["--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"])
            #expect(other.status != 0 && !other.stdout.contains("health"), "\(other)")
            // TLS 1.3 is above --tls-max-version.
            let tls13 = try await curl(["--tlsv1.3"])
            #expect(tls13.status != 0 && !tls13.stdout.contains("health"), "\(tls13)")
        }
    }

    @Test func autoTLSGeneratesACertificate() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        try await Self.withTLSMember(fx, plainPort: try E2E.freePort(), extra: ["--auto-tls"]) { m, https in
            try await E2E.waitUntil("member serves over TLS") {
                try await etcdctl(https, ["--insecure-skip-tls-verify", "--insecure-transport=false", "put", "k", "v"]).status == 0
            }
            let cert = m.dataDir + "/fixtures/client/cert.pem"
            #expect(FileManager.default.fileExists(atPath: cert))
            // The generated certificate verifies for 127.0.0.1 when trusted as its own CA.
            let out = try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--http1.1", "--cacert", cert, "\(https)/version"])
            #expect(out.stdout.contains("etcdserver"), "\(out)")
            // A restart reuses it (as etcd), so clients that pinned it keep working.
            let before = try String(contentsOfFile: cert, encoding: .utf8)
            #expect(try await m.stop() == 0)
            try await m.start()
            #expect(try String(contentsOfFile: cert, encoding: .utf8) == before)
            try await E2E.waitUntil("member serves over TLS after restart") {
                try await runTool("/usr/bin/curl", ["-s", "-m", "10", "--cacert", cert, "\(https)/version"]).stdout.contains("etcdserver")
            }
        }
    }

    @Test func httpsWithoutCertificateAndOldTLSAreRefused() async throws {
        let port = try E2E.freePort()
        for (args, message) in [
            (["--listen-client-urls", "https://127.0.0.1:\(port)", "--advertise-client-urls", "https://127.0.0.1:\(port)"],
             "must be provided for client url https://127.0.0.1:\(port)"),
            (["--tls-min-version", "TLS1.1"], "--tls-min-version"),
            (["--listen-client-urls", "https://127.0.0.1:\(port)", "--advertise-client-urls", "https://127.0.0.1:\(port)",
              "--auto-tls", "--client-crl-file", "/nonexistent"], "--client-crl-file needs --trusted-ca-file"),
            (["--listen-client-urls", "https://127.0.0.1:\(port)", "--advertise-client-urls", "https://127.0.0.1:\(port)",
              "--auto-tls", "--cipher-suites", "TLS_NOPE"], "unexpected TLS cipher suite \"TLS_NOPE\""),
            (["--listen-client-urls", "unixs://localhost:\(port),http://127.0.0.1:\(port)", "--advertise-client-urls", "unixs://localhost:\(port)"],
             "must be provided for client url unixs://localhost:\(port) with HTTPS scheme"),
        ] {
            let m = try Member(extraArgs: args)
            defer { try? FileManager.default.removeItem(atPath: m.dataDir) }
            await #expect(throws: (any Error).self) { try await m.start() }
            #expect(m.stderrText.contains(message), "\(args): \(m.stderrText.suffix(500))")
            await m.cleanUp()
        }
    }
}
