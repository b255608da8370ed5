import Foundation
import Testing

/// python-etcd3 (PyPI `etcd3` 0.12, grpcio), installed by scripts/python-etcd3 into a virtual
/// environment under ~/.cache on first use.
enum PythonEtcd3 {
    /// The interpreter with python-etcd3, or nil when it cannot be installed (no python3 venv
    /// module, or PyPI unreachable). Installing is bounded by 5 minutes.
    static let interpreter: String? = {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        p.arguments = ["-s", "KILL", "300", GoChecks.repoRoot + "/scripts/python-etcd3"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let path = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return p.terminationStatus == 0 && FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }()

    static let script = GoChecks.repoRoot + "/Tests/E2ETests/python/etcd3_auth_tls.py"
}

@Suite("E2E python-etcd3", .serialized,
       .enabled(if: E2E.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl"), "swetcd, etcdctl or openssl not found"),
       .enabled("python-etcd3 could not be installed (scripts/python-etcd3: python3 -m venv and pip install etcd3 from PyPI); skipped") {
           PythonEtcd3.interpreter != nil
       })
struct E2EPythonTests {
    /// python-etcd3 over mutual TLS with a user and password (grpcio sends call credentials
    /// only on secure channels): put/get, watch, lease, permission denied, a wrong password,
    /// and an idle token expiring after `--auth-token-ttl` with etcd's "invalid auth token"
    /// while a token in use stays valid.
    @Test func userAndPasswordOverTLS() async throws {
        let python = try #require(PythonEtcd3.interpreter)
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server", serial: 1, server: true)
        try await fx.issue("root", cn: "root", serial: 2)
        let client = try await fx.issue("py", cn: "py-client", serial: 3)
        let ttl = 3
        try await E2ETLSTests.withTLSMember(fx, plainPort: try E2E.freePort(), extra: [
            "--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth",
            "--bcrypt-cost", "4", "--auth-token-ttl", "\(ttl)",
        ]) { m, https in
            func ctl(_ args: String...) async throws -> CommandOutput { try await etcdctl(https, fx.ctlFlags("root") + args) }
            try await E2E.waitUntil("member serves over TLS") { try await ctl("put", "py/a", "0").status == 0 }
            for args in [["user", "add", "root:rootpw"], ["user", "add", "alice:alicepw"], ["role", "add", "py"],
                         ["role", "grant-permission", "py", "readwrite", "py/", "--prefix"],
                         ["user", "grant-role", "alice", "py"], ["auth", "enable"]] {
                let r = try await etcdctl(https, fx.ctlFlags("root") + args)
                #expect(r.status == 0, "\(args): \(r.stderr)")
            }
            #expect(try await ctl("put", "other", "secret").lines == ["OK"])
            let run = try await runTool(python, [PythonEtcd3.script, "127.0.0.1", "\(m.clientPort)", fx.ca, client.cert, client.key, "\(ttl)"],
                                        limit: 120)
            let passed = Set(run.stdout.split(separator: "\n").filter { $0.hasPrefix("ok ") }.map { String($0.dropFirst(3)) })
            for check in ["put-get", "read-denied", "write-denied", "wrong-password", "watch", "lease-ttl", "lease-keys",
                          "lease-revoke", "token-expired-error", "token-expired", "token-in-use"] {
                #expect(passed.contains(check), "python-etcd3 check \(check): \(run.stdout.suffix(1500)) \(run.stderr.suffix(3000))")
            }
            #expect(run.status == 0, "\(run.stdout.suffix(1500)) \(run.stderr.suffix(3000))")
            // What the script wrote through its token is there.
            #expect(try await etcdctl(https, fx.ctlFlags("root") + ["--user", "root:rootpw", "get", "py/a"]).lines == ["py/a", "1"])
        }
    }
}
