import EtcdConfig
import Foundation
import Testing

/// systemd/swetcd.service and systemd/swetcd.env.example.
struct SystemdUnitTests {
    @Test func unitHasTheDirectivesWeRelyOn() throws {
        let d = unitDirectives(try Repo.text("systemd/swetcd.service"))
        func values(_ key: String) -> [String] { d.filter { $0.key == key }.map(\.value) }
        #expect(values("Type") == ["notify"])
        #expect(values("NotifyAccess") == ["main"])
        #expect(values("Restart") == ["on-failure"])
        #expect(values("WatchdogSec").count == 1)
        #expect(values("LimitNOFILE").count == 1)
        #expect(values("EnvironmentFile") == ["-/etc/default/swetcd"])
        #expect(values("ProtectSystem") == ["strict"])
        #expect(values("NoNewPrivileges") == ["yes"])
        #expect(values("IOSchedulingClass") == ["best-effort"])
        #expect(values("IOSchedulingPriority") == ["0"])
        // The data directory the unit defaults to is writable under ProtectSystem=strict.
        let dataDir = try #require(values("Environment").first { $0.hasPrefix("ETCD_DATA_DIR=") })
        let writable = try #require(values("ReadWritePaths").first)
        #expect(dataDir.dropFirst("ETCD_DATA_DIR=".count).hasPrefix(writable + "/"))
        #expect(values("ExecStart").first?.hasPrefix("/usr/local/bin/swetcd") == true)
    }

    /// `systemd-analyze verify` accepts the unit (ExecStart pointed at an existing binary, as
    /// the real one is not installed here). Skipped where systemd-analyze is absent.
    @Test(.enabled(if: executable(["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]) != nil, "no systemd-analyze"))
    func systemdAnalyzeVerify() throws {
        let tool = try #require(executable(["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]))
        let dir = try Repo.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let unit = dir.appendingPathComponent("swetcd.service")
        let text = try Repo.text("systemd/swetcd.service")
        #expect(text.contains("ExecStart=/usr/local/bin/swetcd "))
        try text.replacingOccurrences(of: "ExecStart=/usr/local/bin/swetcd ", with: "ExecStart=/bin/true ")
            .write(to: unit, atomically: true, encoding: .utf8)
        let r = try runProcess(tool, ["verify", "--man=no", unit.path])
        #expect(r.status == 0, "\(r.stderr)")
        // Unknown or malformed directives are only warnings (exit 0): none may be printed.
        let complaints = (r.stdout + r.stderr).split(separator: "\n").filter { $0.contains("swetcd.service") }
        #expect(complaints.isEmpty, "\(complaints)")

        // The check itself notices a broken directive.
        try text.replacingOccurrences(of: "ExecStart=/usr/local/bin/swetcd ", with: "ExecStart=/bin/true ")
            .replacingOccurrences(of: "Type=notify", with: "Type=notifyy")
            .write(to: unit, atomically: true, encoding: .utf8)
        let bad = try runProcess(tool, ["verify", "--man=no", unit.path])
        #expect((bad.stdout + bad.stderr).contains("swetcd.service"))
    }

    /// Every ETCD_* variable in the example environment file (commented out or not) is one
    /// swetcd knows, and together they form a valid configuration.
    @Test func environmentExampleNamesKnownVariables() throws {
        var env: [String: String] = [:]
        for raw in try Repo.text("systemd/swetcd.env.example").split(separator: "\n") {
            var line = Substring(raw)
            if line.hasPrefix("#") { line = line.dropFirst() }
            guard line.hasPrefix("ETCD_"), let eq = line.firstIndex(of: "=") else { continue }
            let key = String(line[..<eq])
            if key == "ETCD_CONFIG_FILE" { continue }   // the alternative to the variables
            env[key] = String(line[line.index(after: eq)...])
        }
        #expect(env.count >= 10)
        guard case .run(let loaded) = try ConfigLoader.load(arguments: [], environment: env) else {
            Issue.record("expected a runnable configuration")
            return
        }
        #expect(loaded.warnings.isEmpty, "\(loaded.warnings)")
        #expect(loaded.config.name == "node1")
        #expect(loaded.initialCluster.members.count == 3)
    }
}

/// config/swetcd.conf.yml: the commented example `swetcd --config-file` reads.
struct ConfigFileExampleTests {
    @Test func exampleLoadsWithoutWarnings() throws {
        let path = Repo.path("config/swetcd.conf.yml")
        guard case .run(let loaded) = try ConfigLoader.load(arguments: ["--config-file", path], environment: [:]) else {
            Issue.record("expected a runnable configuration")
            return
        }
        #expect(loaded.warnings.isEmpty, "\(loaded.warnings)")
        #expect(loaded.configFile == path)
        let c = loaded.config
        #expect(c.name == "node1")
        #expect(c.dataDir == "/var/lib/swetcd/node1")
        #expect(c.listenClientURLs.map(\.description) == ["http://0.0.0.0:2379"])
        #expect(c.initialClusterState == "new")
        #expect(c.heartbeatIntervalMs == 100 && c.electionTimeoutMs == 1000)
        #expect(c.logOutputs == ["stderr"])
        #expect(Set(loaded.initialCluster.members.map(\.name)) == ["node1", "node2", "node3"])
        #expect(loaded.explicitlySet.contains("initial-cluster-token"))
    }
}
