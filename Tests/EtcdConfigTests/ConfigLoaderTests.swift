import Foundation
import Testing
@testable import EtcdConfig

private func load(_ args: [String], env: [String: String] = [:]) throws -> LoadedConfig {
    guard case .run(let loaded) = try ConfigLoader.load(arguments: args, environment: env) else {
        Issue.record("expected a configuration to run with")
        throw ConfigError("no config")
    }
    return loaded
}

private func loadError(_ args: [String], env: [String: String] = [:]) -> String? {
    do {
        _ = try ConfigLoader.load(arguments: args, environment: env)
        return nil
    } catch {
        return "\(error)"
    }
}

@Suite struct ConfigLoaderTests {
    @Test func defaultsServeOneLocalMember() throws {
        let l = try load([])
        let c = l.config
        #expect(c.name == "default")
        #expect(c.effectiveDataDir == "default.swetcd")
        #expect(c.listenClientURLs.map(\.description) == ["http://localhost:2379"])
        #expect(c.listenPeerURLs.map(\.description) == ["http://localhost:2380"])
        #expect(c.maxRequestBytes == 1_572_864 && c.maxTxnOps == 128)
        #expect(c.maxReceiveMessageBytes == 1_572_864 + 524_288)
        #expect(c.effectiveQuotaBytes == Int64(2) << 30)
        #expect(c.preVote && c.strictReconfigCheck)
        #expect(l.initialCluster.members.map(\.name) == ["default"])
        // etcd's well-known IDs for its default single-member cluster.
        #expect(MemberIdentity.hex(l.initialCluster.members[0].id) == "8e9e05c52164694d")
        #expect(MemberIdentity.hex(l.initialCluster.clusterID) == "cdf818194e3a8c32")
        #expect(l.warnings.isEmpty)
        #expect(l.autoCompaction == .disabled)
    }

    @Test func goFlagSyntax() throws {
        let c = try load(["-name", "n1", "--data-dir=/tmp/x", "--pre-vote=false", "--strict-reconfig-check",
                          "--snapshot-count", "5", "-heartbeat-interval=50", "--election-timeout", "500",
                          "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                          "--initial-cluster", "n1=http://127.0.0.1:2380"]).config
        #expect(c.name == "n1" && c.dataDir == "/tmp/x" && !c.preVote && c.strictReconfigCheck)
        #expect(c.snapshotCount == 5 && c.heartbeatIntervalMs == 50 && c.electionTimeoutMs == 500)
        // The last occurrence of a flag wins, as with Go's flag package.
        #expect(try load(["--name", "a", "--name", "b", "--initial-cluster", "b=http://localhost:2380"]).config.name == "b")
    }

    @Test func badFlagsAreRefusedWithEtcdTexts() {
        #expect(loadError(["--no-such-flag"]) == "flag provided but not defined: -no-such-flag")
        #expect(loadError(["--name"]) == "flag needs an argument: -name")
        #expect(loadError(["stray"]) == "'stray' is not a valid flag")
        #expect(loadError(["--name", "x", "stray", "--initial-cluster", "x=http://localhost:2380"]) == "'stray' is not a valid flag")
        #expect(loadError(["---name=x"]) == "bad flag syntax: ---name=x")
        #expect(loadError(["--pre-vote=maybe"])?.contains("invalid value \"maybe\" for flag --pre-vote") == true)
        #expect(loadError(["--snapshot-count=-1"])?.contains("invalid value \"-1\" for flag --snapshot-count") == true)
        #expect(loadError(["--initial-cluster-state=old"])?.contains("valid values are \"new\", \"existing\"") == true)
        #expect(loadError(["--grpc-keepalive-min-time=5 seconds"])?.contains("time: invalid duration") == true)
    }

    @Test func helpAndVersion() throws {
        guard case .help(let text) = try ConfigLoader.load(arguments: ["--help"], environment: [:]) else {
            Issue.record("expected help"); return
        }
        #expect(text.contains("--initial-cluster-token VALUE"))
        #expect(text.contains("--pre-vote\n"))
        guard case .version = try ConfigLoader.load(arguments: ["--version"], environment: [:]) else {
            Issue.record("expected version"); return
        }
    }

    @Test func urlRules() throws {
        #expect(loadError(["--listen-client-urls", "tcp://1.2.3.4:1", "--advertise-client-urls", "http://a:1"])
            == "invalid value \"tcp://1.2.3.4:1\" for flag --listen-client-urls: URL scheme must be http, https, unix, or unixs: tcp://1.2.3.4:1")
        #expect(loadError(["--listen-client-urls", "http://1.2.3.4", "--advertise-client-urls", "http://a:1"])?
            .hasSuffix("URL address does not have the form \"host:port\": http://1.2.3.4") == true)
        #expect(loadError(["--listen-client-urls", "http://1.2.3.4:1/x", "--advertise-client-urls", "http://a:1"])?
            .hasSuffix("URL must not contain a path: http://1.2.3.4:1/x") == true)
        #expect(loadError(["--listen-client-urls", "http://127.0.0.1:1"])
            == "--advertise-client-urls is required when --listen-client-urls is set explicitly")
        #expect(loadError(["--listen-client-urls", "https://127.0.0.1:1", "--advertise-client-urls", "https://a:1"])?
            .contains("must be provided for client url https://127.0.0.1:1") == true)
        // Client TLS: accepted with certificates or --auto-tls; what is not implemented is refused.
        let https = ["--listen-client-urls", "https://127.0.0.1:1,http://127.0.0.1:2", "--advertise-client-urls", "https://a:1"]
        #expect(loadError(https + ["--cert-file", "/c", "--key-file", "/k", "--client-cert-auth", "--trusted-ca-file", "/ca"]) == nil)
        #expect(loadError(https + ["--auto-tls"]) == nil)
        #expect(try load(https + ["--auto-tls", "--client-cert-auth"]).warnings.contains { $0.contains("--client-cert-auth without --trusted-ca-file") })
        #expect(try load(https + ["--auto-tls", "--client-cert-auth", "--trusted-ca-file", "/ca"]).warnings.isEmpty)
        #expect(loadError(https + ["--auto-tls", "--client-crl-file", "/crl"])?.contains("--client-crl-file needs --trusted-ca-file") == true)
        #expect(try load(https + ["--auto-tls", "--client-crl-file", "/crl", "--trusted-ca-file", "/ca"]).warnings
            .contains { $0.contains("--client-crl-file has no effect without --client-cert-auth") })
        #expect(try load(https + ["--auto-tls", "--client-crl-file", "/crl", "--trusted-ca-file", "/ca", "--client-cert-auth"]).warnings.isEmpty)
        let peerHTTPS = ["--listen-peer-urls", "https://127.0.0.1:3", "--initial-advertise-peer-urls", "https://127.0.0.1:3",
                         "--initial-cluster", "default=https://127.0.0.1:3", "--peer-auto-tls"]
        #expect(loadError(peerHTTPS + ["--peer-crl-file", "/crl"])?.contains("--peer-crl-file needs --peer-trusted-ca-file") == true)
        #expect(loadError(https + ["--auto-tls", "--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "--tls-min-version", "TLS1.3"])
            == "cipher suites cannot be configured when only TLS1.3 is enabled")
        #expect(loadError(https + ["--auto-tls", "--tls-min-version", "TLS1.1"])?.contains("--tls-min-version") == true)
        // unixs:// takes the client TLS flags as https:// does; the socket is the file host:port.
        let unixs = ["--listen-client-urls", "unixs://sock:1", "--advertise-client-urls", "unixs://sock:1"]
        #expect(loadError(unixs) == "TLS key/cert (--cert-file, --key-file) must be provided for client url unixs://sock:1 with HTTPS scheme")
        #expect(loadError(unixs + ["--auto-tls"]) == nil)
        #expect(loadError(unixs + ["--cert-file", "/c", "--key-file", "/k", "--client-crl-file", "/crl"])?
            .contains("--client-crl-file needs --trusted-ca-file") == true)
        #expect(try load(unixs + ["--auto-tls"]).config.listenClientURLs.map(\.unixSocketPath) == ["sock:1"])
        #expect(try load(unixs + ["--auto-tls", "--client-cert-auth"]).warnings.contains { $0.contains("--client-cert-auth without --trusted-ca-file") })
        #expect((try? EndpointURL(parsing: "unix://[::1]:5"))?.unixSocketPath == "[::1]:5")
        #expect((try? EndpointURL(parsing: "https://h:5"))?.unixSocketPath == nil)
        let v6 = try? EndpointURL(parsing: " http://[::1]:2379 ")
        #expect(v6?.host == "::1" && v6?.description == "http://[::1]:2379")
        // Lists are sorted as etcd sorts them.
        #expect((try? EndpointURL.parseList("http://b:1,http://a:1"))?.map(\.description) == ["http://a:1", "http://b:1"])
    }

    @Test func timingRules() {
        #expect(loadError(["--heartbeat-interval=300"]) == "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]")
        #expect(loadError(["--election-timeout=60000"]) == "--election-timeout[60000ms] is too long, and should be set less than 50000ms")
        #expect(loadError(["--heartbeat-interval=0"]) == "--heartbeat-interval must be >0 (set to 0ms)")
    }

    @Test func environmentVariables() throws {
        let l = try load([], env: [
            "ETCD_NAME": "envname", "ETCD_INITIAL_CLUSTER": "envname=http://localhost:2380",
            "ETCD_SNAPSHOT_COUNT": "42", "ETCD_PRE_VOTE": "false", "ETCD_WHAT": "x", "PATH": "/bin",
            "ETCD_MAX_LEARNERS": "",
        ])
        #expect(l.config.name == "envname" && l.config.snapshotCount == 42 && !l.config.preVote)
        #expect(l.explicitlySet.contains("initial-cluster"))
        #expect(l.warnings == ["unrecognized environment variable ETCD_WHAT=x"])
        #expect(loadError(["--name", "a"], env: ["ETCD_NAME": "b"])
            == "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)")
        #expect(loadError([], env: ["ETCD_SNAPSHOT_COUNT": "many"])?.hasPrefix("invalid value \"many\" for ETCD_SNAPSHOT_COUNT") == true)
    }

    @Test func configFileReplacesFlagsAndEnvironment() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swetcd-cfg-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("etcd.yaml").path
        try """
        name: 'infra1'
        data-dir: /var/lib/etcd
        snapshot-count: 10000
        heartbeat-interval: 100
        election-timeout: 1000
        quota-backend-bytes: 8589934592
        listen-peer-urls: https://10.0.0.1:2380
        listen-client-urls: https://10.0.0.1:2379,https://127.0.0.1:2379
        initial-advertise-peer-urls: https://10.0.0.1:2380
        advertise-client-urls: https://10.0.0.1:2379
        initial-cluster: infra1=https://10.0.0.1:2380,infra2=https://10.0.0.2:2380
        initial-cluster-token: 'k8s'
        initial-cluster-state: 'new'
        grpc-keepalive-min-time: 3000000000
        backend-batch-interval: 50ms
        log-outputs: [stderr]
        pre-vote: false
        enable-v2: false
        some-future-key: 1
        client-transport-security:
          cert-file: /etc/etcd/server.crt
          key-file: /etc/etcd/server.key
          client-cert-auth: true
          trusted-ca-file: /etc/etcd/ca.crt
        peer-transport-security:
          cert-file: /etc/etcd/peer.crt
          key-file: /etc/etcd/peer.key
          client-cert-auth: true
          trusted-ca-file: /etc/etcd/ca.crt
          allowed-cn: etcd-peer
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let l = try load(["--config-file", file, "--name", "ignored"], env: ["ETCD_NAME": "ignored-too"])
        let c = l.config
        #expect(c.name == "infra1" && c.dataDir == "/var/lib/etcd" && c.snapshotCount == 10000)
        #expect(c.listenClientURLs.map(\.description) == ["https://10.0.0.1:2379", "https://127.0.0.1:2379"])
        #expect(c.grpcKeepaliveMinTime == .seconds(3))
        #expect(c.backendBatchInterval == .milliseconds(50))
        #expect(c.logOutputs == ["stderr"] && !c.preVote)
        #expect(c.clientTLS.certFile == "/etc/etcd/server.crt" && c.clientTLS.clientCertAuth)
        #expect(c.peerTLS.allowedCN == "etcd-peer" && c.peerTLS.trustedCAFile == "/etc/etcd/ca.crt")
        #expect(l.initialCluster.members.count == 2 && l.initialCluster.token == "k8s")
        #expect(l.warnings.contains { $0.contains("command-line flags --name") })
        #expect(l.warnings.contains { $0.contains("unknown key some-future-key") })
        #expect(l.warnings.contains("--enable-v2 has no effect: swetcd serves only the v3 API"))
        // The environment variable ETCD_CONFIG_FILE works too.
        #expect(try load([], env: ["ETCD_CONFIG_FILE": file]).config.name == "infra1")
    }

    @Test func brokenConfigFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swetcd-cfg-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let bad = dir.appendingPathComponent("bad.yaml").path
        try "name: [unclosed".write(toFile: bad, atomically: true, encoding: .utf8)
        #expect(loadError(["--config-file", bad])?.contains("is not valid YAML") == true)
        try "- a\n- b\n".write(toFile: bad, atomically: true, encoding: .utf8)
        #expect(loadError(["--config-file", bad])?.contains("must be a YAML mapping") == true)
        try "snapshot-count: lots\n".write(toFile: bad, atomically: true, encoding: .utf8)
        #expect(loadError(["--config-file", bad])?.contains("invalid value \"lots\" for snapshot-count in") == true)
        #expect(loadError(["--config-file", dir.appendingPathComponent("missing.yaml").path])?.hasPrefix("cannot read config file") == true)
    }

    @Test func bootstrapChecks() {
        #expect(loadError(["--name", "x"]) == "couldn't find local name \"x\" in the initial cluster configuration")
        #expect(loadError(["--initial-cluster", "default=http://10.0.0.9:2380"])
            == "--initial-cluster has default=http://10.0.0.9:2380 but missing from --initial-advertise-peer-urls=http://localhost:2380")
        #expect(loadError(["--initial-cluster", "a=http://h:1,default=http://h:1"]) == "initial cluster a=http://h:1,default=http://h:1 has duplicate url")
        #expect(loadError(["--initial-cluster", "default=http://localhost:2380", "--discovery-srv", "example.com"])
            == "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"")
        // Joining an existing cluster does not require this member in the list.
        #expect(loadError(["--name", "x", "--initial-cluster-state", "existing"]) == nil)
    }

    @Test func autoCompactionSchedules() throws {
        #expect(try AutoCompaction(mode: "periodic", retention: "1") == .periodic(.seconds(3600)))
        #expect(try AutoCompaction(mode: "periodic", retention: "30m") == .periodic(.seconds(1800)))
        #expect(try AutoCompaction(mode: "periodic", retention: "0") == .disabled)
        #expect(try AutoCompaction(mode: "revision", retention: "1000") == .revision(1000))
        #expect(throws: ConfigError.self) { try AutoCompaction(mode: "revision", retention: "1h") }
        #expect(throws: ConfigError.self) { try AutoCompaction(mode: "periodic", retention: "soon") }
        #expect(try load(["--auto-compaction-retention", "5m"]).autoCompaction == .periodic(.seconds(300)))
    }

    @Test func memberAndClusterIDs() throws {
        // Values computed independently (SHA-1 over the same bytes) with Python's hashlib.
        let c = try InitialCluster(parsing: "m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380,m3=http://10.0.0.3:2380", token: "tok-1")
        let byName = Dictionary(uniqueKeysWithValues: c.members.map { ($0.name, MemberIdentity.hex($0.id)) })
        #expect(byName == ["m1": "e765e731bd1bb1a3", "m2": "2c0c6d88bcd586cc", "m3": "54c29dbd063cc6d"])
        #expect(MemberIdentity.hex(c.clusterID) == "60418e96a4f95d7b")
        #expect(c.members.map(\.id) == c.members.map(\.id).sorted())
        let added = MemberIdentity.memberID(peerURLs: [try EndpointURL(parsing: "https://b:2380"), try EndpointURL(parsing: "http://a:2380")],
                                            clusterToken: "t", unixTime: 1_700_000_000)
        #expect(MemberIdentity.hex(added) == "9d67051d3f198ac9")
    }
}

@Suite struct GoDurationTests {
    @Test func parsesGoSyntax() throws {
        #expect(try GoDuration.parse("300ms") == .milliseconds(300))
        #expect(try GoDuration.parse("1.5h") == .seconds(5400))
        #expect(try GoDuration.parse("2h45m") == .seconds(9900))
        #expect(try GoDuration.parse("-5s") == .seconds(-5))
        #expect(try GoDuration.parse("0") == .zero)
        #expect(try GoDuration.parse("10us") == .microseconds(10))
        #expect(try GoDuration.parse(".5s") == .milliseconds(500))
        for bad in ["", "5", "s", "1.2.3s", "5 s", "5x", "-", "1e3s"] {
            #expect(throws: GoDuration.ParseError.self, "\(bad)") { try GoDuration.parse(bad) }
        }
    }

    @Test func formatsLikeGo() {
        #expect(GoDuration.format(.seconds(3600)) == "1h0m0s")
        #expect(GoDuration.format(.milliseconds(1500)) == "1.5s")
        #expect(GoDuration.format(.milliseconds(100)) == "100ms")
        #expect(GoDuration.format(.zero) == "0s")
        #expect(GoDuration.format(.seconds(600)) == "10m0s")
    }
}
