import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Configuration checks of the real `swetcd` binary: bad values exit 1 with the flag named,
/// `--wal-dir`, `--listen-metrics-urls`, `--enable-grpc-gateway=false`, warnings for flags
/// without effect, and data directory permissions.
@Suite("E2E configuration", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2EConfigTests {
    /// Runs swetcd with `args` (plus a private data dir) expecting it to exit by itself.
    private func runToExit(_ args: [String], environment: [String: String]? = nil) async throws -> (Int32, String) {
        let dir = try E2E.tempDir("cfg")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try Child(try #require(E2E.swetcdPath), ["--data-dir", dir + "/data"] + args, environment: environment)
        try c.start()
        do {
            let status = try await c.waitExit(limit: .seconds(20))
            return (status, c.stderr)
        } catch {
            c.signal(SIGKILL) // it started instead of refusing: stop it
            _ = try? await c.waitExit()
            throw E2EError("swetcd \(args) did not exit: \(c.stderr.suffix(2000))")
        }
    }

    /// GET (or POST with `body`) on 127.0.0.1:`port`: (HTTP status, body).
    private func http(_ port: Int, _ path: String, body: String? = nil) async throws -> (Int, String) {
        var args = ["-s", "-m", "10", "-w", "\n%{http_code}"]
        if let body { args += ["-X", "POST", "-d", body] }
        let c = try Child("/usr/bin/curl", args + ["http://127.0.0.1:\(port)\(path)"])
        try c.start()
        _ = try await c.waitExit(limit: .seconds(15))
        let lines = c.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    private static func mode(_ path: String) -> UInt32 {
        var st = stat()
        guard stat(path, &st) == 0 else { return 0 }
        return UInt32(st.st_mode) & 0o7777
    }

    /// Values that trapped (or were accepted and ignored) before: each exits 1 with a message
    /// naming the flag on stderr, before anything is created.
    @Test func badValuesExitOneNamingTheFlag() async throws {
        let cases: [([String], String)] = [
            (["--max-wals", "18446744073709551615"], "--max-wals"),
            (["--max-request-bytes=0"], "--max-request-bytes"),
            (["--max-txn-ops=18446744073709551615"], "--max-txn-ops"),
            (["--heartbeat-interval=18446744073709551615"], "--heartbeat-interval"),
            (["--auto-compaction-retention=9223372036854775807"], "auto-compaction-retention"),
            (["--grpc-keepalive-interval=-1s"], "--grpc-keepalive-interval"),
            (["--snapshot-count=99999999999999999999"], "--snapshot-count"),
            (["--listen-client-http-urls=http://127.0.0.1:1"], "--listen-client-http-urls"),
            (["--listen-metrics-urls=https://127.0.0.1:1"], "--listen-metrics-urls"),
        ]
        for (args, flag) in cases {
            let (status, stderr) = try await runToExit(args)
            #expect(status == 1, "\(args): exit \(status)")
            #expect(stderr.contains(flag), "\(args): \(stderr)")
        }
        // The same through the environment and a YAML file (.inf as a duration).
        let (envStatus, envErr) = try await runToExit([], environment: ProcessInfo.processInfo.environment.merging(
            ["ETCD_MAX_SNAPSHOTS": "18446744073709551615"]) { $1 })
        #expect(envStatus == 1 && envErr.contains("ETCD_MAX_SNAPSHOTS"), "\(envErr)")
        let yaml = try E2E.tempDir("yaml") + "/c.yaml"
        try "grpc-keepalive-timeout: .inf\n".write(toFile: yaml, atomically: true, encoding: .utf8)
        let (yamlStatus, yamlErr) = try await runToExit(["--config-file", yaml])
        #expect(yamlStatus == 1 && yamlErr.contains("grpc-keepalive-timeout"), "\(yamlErr)")
    }

    /// Flags without effect are warned about by name in the log at start.
    @Test func flagsWithoutEffectAreWarnedAbout() async throws {
        try await Member.with(extraArgs: ["--enable-v2=false", "--cert-file", "/nonexistent/c.pem",
                                          "--key-file", "/nonexistent/k.pem"]) { m in
            let log = try #require(m.child).stderr
            let warnings = log.split(separator: "\n").filter { $0.contains("\"level\":\"warn") }
            #expect(warnings.contains { $0.contains("--enable-v2 has no effect") }, "\(log.prefix(3000))")
            #expect(warnings.contains { $0.contains("--cert-file") && $0.contains("--key-file") }, "\(log.prefix(3000))")
        }
    }

    /// A data dir created 0755 by the operator becomes 0700 with a warning; everything swetcd
    /// writes under it (WAL, backend, snapshot files, the backend copy a defrag swaps in) is
    /// private to its user.
    @Test func dataDirPermissionsAreTightened() async throws {
        let m = try Member()
        do {
            chmod(m.dataDir, 0o755)
            #expect(Self.mode(m.dataDir) == 0o755)
            try await m.start()
            #expect(Self.mode(m.dataDir) == 0o700)
            let log = try #require(m.child).stderr
            #expect(log.contains("permissions wider than 0700") && log.contains("\"old-mode\":\"755\""), "\(log.prefix(3000))")
            for i in 0..<20 { #expect(try await m.ctl("put", "k\(i)", "v\(i)").status == 0) }
            #expect(try await m.ctl("defrag").status == 0)
            let snap = m.dataDir + "-saved.db"
            defer { try? FileManager.default.removeItem(atPath: snap) }
            #expect(try await m.ctl("snapshot", "save", snap).status == 0)
            var checked = 0
            let base = URL(fileURLWithPath: m.dataDir)
            for case let url as URL in FileManager.default.enumerator(at: base, includingPropertiesForKeys: nil)! {
                let mode = Self.mode(url.path)
                var st = stat()
                _ = stat(url.path, &st)
                let isDir = (st.st_mode & S_IFMT) == S_IFDIR
                #expect(mode == (isDir ? 0o700 : 0o600), "\(url.path): \(String(mode, radix: 8))")
                checked += 1
            }
            #expect(checked >= 4) // member, wal, snap, db, a WAL segment
            #expect(Self.mode(m.dataDir + "/member/snap/db") == 0o600)
            try await m.stop()
        } catch {
            Issue.record("log: \((m.child?.stderr ?? "").suffix(3000))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    /// --wal-dir: the WAL lives there (not under the data dir), survives a restart, and a
    /// WAL directory paired with an empty data directory is refused with a clear error.
    @Test func walDirHoldsTheLog() async throws {
        let walParent = try E2E.tempDir("waldir")
        defer { try? FileManager.default.removeItem(atPath: walParent) }
        let wal = walParent + "/wal"
        let m = try Member(extraArgs: ["--wal-dir", wal])
        do {
            try await m.start()
            #expect(try await m.ctl("put", "k", "v1").status == 0)
            try await m.stop()
            let segments = try FileManager.default.contentsOfDirectory(atPath: wal).filter { $0.hasSuffix(".wal") }
            #expect(!segments.isEmpty)
            #expect(!FileManager.default.fileExists(atPath: m.dataDir + "/member/wal"))
            #expect(Self.mode(wal) == 0o700)
            // swetcdutl reads and defragments the pair when told the WAL directory.
            let util = try E2EDefragSnapshotTests.swetcdutl()
            let utlStatus = try await E2EDefragSnapshotTests.run(util, ["status", "--data-dir", m.dataDir, "--wal-dir", wal, "-w", "json"])
            #expect(utlStatus.status == 0, "\(utlStatus)")
            let defrag = try await E2EDefragSnapshotTests.run(util, ["defrag", "--data-dir", m.dataDir, "--wal-dir", wal])
            #expect(defrag.status == 0 && defrag.stdout.contains("Finished defragmenting"), "\(defrag)")
            try await m.start()
            #expect(try await m.ctl("get", "k", "--print-value-only").lines == ["v1"])
            try await m.stop()

            // The same WAL with an empty data dir: refused, nothing touched.
            let (status, stderr) = try await runToExit([
                "--wal-dir", wal, "--name", m.name,
                "--listen-client-urls", "http://127.0.0.1:\(try E2E.freePort())",
                "--advertise-client-urls", "http://127.0.0.1:1",
                "--listen-peer-urls", "http://127.0.0.1:\(try E2E.freePort())",
                "--initial-advertise-peer-urls", m.peerURL, "--initial-cluster", "\(m.name)=\(m.peerURL)",
            ])
            #expect(status == 1, "exit \(status): \(stderr)")
            #expect(stderr.contains("holds a WAL but the data directory"), "\(stderr)")
            // And the data dir without its --wal-dir: it has member data but no WAL.
            let without = try Child(try #require(E2E.swetcdPath), ["--data-dir", m.dataDir, "--name", m.name,
                                                                   "--listen-client-urls", "http://127.0.0.1:\(try E2E.freePort())",
                                                                   "--advertise-client-urls", "http://127.0.0.1:1",
                                                                   "--listen-peer-urls", "http://127.0.0.1:\(try E2E.freePort())",
                                                                   "--initial-advertise-peer-urls", m.peerURL,
                                                                   "--initial-cluster", "\(m.name)=\(m.peerURL)"])
            try without.start()
            let withoutStatus = try? await without.waitExit()
            if withoutStatus == nil { without.signal(SIGKILL); _ = try? await without.waitExit() }
            #expect(withoutStatus == 1)
            #expect(without.stderr.contains("no WAL"), "\(without.stderr)")
            // Untouched: the member still starts with its WAL and has the key.
            try await m.start()
            #expect(try await m.ctl("get", "k", "--print-value-only").lines == ["v1"])
        } catch {
            Issue.record("log: \((m.child?.stderr ?? "").suffix(3000))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    /// --listen-metrics-urls serves /metrics and the health endpoints (not the gateway);
    /// --enable-grpc-gateway=false removes /v3/ from the client port while gRPC still works.
    @Test func metricsListenerAndGatewaySwitch() async throws {
        let metricsPort = try E2E.freePort()
        try await Member.with(extraArgs: ["--listen-metrics-urls", "http://127.0.0.1:\(metricsPort)",
                                          "--enable-grpc-gateway=false"]) { m in
            try await E2E.waitUntil("metrics port") { E2E.isListening(metricsPort) }
            let (code, body) = try await http(metricsPort, "/metrics")
            #expect(code == 200 && body.contains("etcd_server_has_leader"), "\(code) \(body.prefix(300))")
            try await E2E.waitUntil("healthy") { try await http(metricsPort, "/health").1.contains("\"health\":\"true\"") }
            #expect(try await http(metricsPort, "/livez").0 == 200)
            #expect(try await http(metricsPort, "/readyz").0 == 200)
            #expect(try await http(metricsPort, "/v3/kv/range", body: #"{"key":"YQ=="}"#).0 == 404)
            // The client port: gRPC works, the gateway is off, /metrics stays.
            #expect(try await m.ctl("put", "a", "1").status == 0)
            #expect(try await http(m.clientPort, "/v3/kv/range", body: #"{"key":"YQ=="}"#).0 == 404)
            #expect(try await http(m.clientPort, "/metrics").0 == 200)
        }
        // The gateway is on by default.
        try await Member.with { m in
            let (code, body) = try await http(m.clientPort, "/v3/kv/range", body: #"{"key":"YQ=="}"#)
            #expect(code == 200 && body.contains("header"), "\(code) \(body)")
        }
    }
}
