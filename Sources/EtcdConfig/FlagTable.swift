/// One setting as etcd spells it: the flag `--name`, the environment variable `ETCD_NAME`, the
/// YAML key `name`. The table below is the single source for parsing, help and validation of
/// the spelling; `ConfigLoader` applies it.
public struct FlagSpec: Sendable {
    public enum Kind: Sendable, Equatable {
        case bool
        case value
        /// A duration: Go syntax on the command line; in YAML a bare integer means nanoseconds
        /// (etcd decodes its config file into Go's time.Duration).
        case duration
    }

    public let name: String
    public let kind: Kind
    public let defaultText: String
    public let help: String
    /// Accepted for compatibility with etcd but without effect in swetcd; the text says why.
    public let ignoredBecause: String?
    let apply: @Sendable (inout ServerConfig, String) throws -> Void

    /// The environment variable etcd reads for this flag.
    public var environmentName: String {
        "ETCD_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
    }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

/// A value a flag refused.
public struct FlagValueError: Error, CustomStringConvertible, Equatable {
    public let description: String
}

enum FlagValues {
    /// Go's strconv.ParseBool.
    static func bool(_ s: String) throws -> Bool {
        switch s {
        case "1", "t", "T", "TRUE", "true", "True": return true
        case "0", "f", "F", "FALSE", "false", "False": return false
        default: throw FlagValueError(description: "parse error: invalid syntax (\(s) is not a boolean)")
        }
    }

    static func uint(_ s: String) throws -> UInt64 {
        guard let v = UInt64(s) else { throw FlagValueError(description: "parse error: \(s) is not an unsigned integer") }
        return v
    }

    static func int(_ s: String) throws -> Int64 {
        guard let v = Int64(s) else { throw FlagValueError(description: "parse error: \(s) is not an integer") }
        return v
    }

    /// The longest duration any flag takes: 10 years (87600h). Longer values are refused: no
    /// timer needs them, and they come near the limits of the clocks they are added to.
    static let maxDuration: Duration = .seconds(87600 * 3600)

    static func duration(_ s: String) throws -> Duration {
        let d = try GoDuration.parse(s)
        guard d >= .zero else { throw FlagValueError(description: "\(s) must not be negative") }
        guard d <= maxDuration else {
            throw FlagValueError(description: "\(s) is out of range (at most \(GoDuration.format(maxDuration)))")
        }
        return d
    }

    static func list(_ s: String) -> [String] {
        s.split(separator: ",").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
    }
}

public enum FlagTable {
    typealias Setter<T> = @Sendable (inout ServerConfig, T) -> Void

    static func string(_ name: String, _ def: String, _ help: String, _ set: @escaping Setter<String>) -> FlagSpec {
        FlagSpec(name: name, kind: .value, defaultText: def, help: help, ignoredBecause: nil) { c, v in set(&c, v) }
    }

    static func oneOf(_ name: String, _ values: [String], _ def: String, _ help: String,
                      _ set: @escaping Setter<String>) -> FlagSpec {
        FlagSpec(name: name, kind: .value, defaultText: def, help: help + " One of: \(values.joined(separator: ", ")).",
                 ignoredBecause: nil) { c, v in
            guard values.contains(v) else {
                throw FlagValueError(description: "invalid value \"\(v)\": valid values are \(values.map { "\"\($0)\"" }.joined(separator: ", "))")
            }
            set(&c, v)
        }
    }

    static func bool(_ name: String, _ def: Bool, _ help: String, _ set: @escaping Setter<Bool>) -> FlagSpec {
        FlagSpec(name: name, kind: .bool, defaultText: "\(def)", help: help, ignoredBecause: nil) { c, v in set(&c, try FlagValues.bool(v)) }
    }

    static func uint(_ name: String, _ def: UInt64, _ help: String, range: ClosedRange<UInt64> = 0...UInt64.max,
                     _ set: @escaping Setter<UInt64>) -> FlagSpec {
        FlagSpec(name: name, kind: .value, defaultText: "\(def)", help: help, ignoredBecause: nil) { c, v in
            let n = try FlagValues.uint(v)
            guard range.contains(n) else {
                throw FlagValueError(description: "\(n) is out of range (\(range.lowerBound) to \(range.upperBound))")
            }
            set(&c, n)
        }
    }

    static func int(_ name: String, _ def: Int64, _ help: String, _ set: @escaping Setter<Int64>) -> FlagSpec {
        FlagSpec(name: name, kind: .value, defaultText: "\(def)", help: help, ignoredBecause: nil) { c, v in set(&c, try FlagValues.int(v)) }
    }

    /// A duration flag: between 0 and ``FlagValues/maxDuration`` (a negative or longer value is
    /// refused rather than wrapped or clamped).
    static func duration(_ name: String, _ def: Duration, _ help: String, _ set: @escaping Setter<Duration>) -> FlagSpec {
        FlagSpec(name: name, kind: .duration, defaultText: GoDuration.format(def), help: help, ignoredBecause: nil) { c, v in
            set(&c, try FlagValues.duration(v))
        }
    }

    static func urls(_ name: String, _ def: String, _ help: String, allowEmpty: Bool = false,
                     _ set: @escaping Setter<[EndpointURL]>) -> FlagSpec {
        FlagSpec(name: name, kind: .value, defaultText: def, help: help, ignoredBecause: nil) { c, v in
            if allowEmpty && v.trimmingSpaces().isEmpty { set(&c, []); return }
            set(&c, try EndpointURL.parseList(v))
        }
    }

    static func list(_ name: String, _ def: String, _ help: String, _ set: @escaping Setter<[String]>) -> FlagSpec {
        FlagSpec(name: name, kind: .value, defaultText: def, help: help, ignoredBecause: nil) { c, v in set(&c, FlagValues.list(v)) }
    }

    /// A flag etcd has that swetcd accepts (so existing manifests keep working) and ignores.
    static func ignored(_ name: String, _ kind: FlagSpec.Kind, _ def: String, _ why: String) -> FlagSpec {
        FlagSpec(name: name, kind: kind, defaultText: def, help: "Accepted for etcd compatibility; no effect: \(why)",
                 ignoredBecause: why) { _, v in
            if kind == .bool { _ = try FlagValues.bool(v) }
            if kind == .duration { _ = try GoDuration.parse(v) }
        }
    }

    /// The largest count a count flag takes (Int32.max): far above any useful value, and safe
    /// to convert to `Int` and to add to.
    public static let maxCount: UInt64 = UInt64(Int32.max)
    /// The largest --max-request-bytes: the gRPC receive limit (this plus 512 KiB) stays below 2 GiB.
    public static let maxRequestBytes: UInt64 = UInt64(Int32.max) - 512 * 1024

    /// Every flag swetcd accepts, in help order.
    public static let all: [FlagSpec] = {
        var f: [FlagSpec] = []
        // Member
        f.append(string("name", "default", "Human-readable name for this member.") { $0.name = $1 })
        f.append(string("data-dir", "${name}.swetcd", "Path to the data directory.") { $0.dataDir = $1 })
        f.append(string("wal-dir", "", "Path to a dedicated WAL directory (the WAL segments are kept directly in it; default <data-dir>/member/wal).") { $0.walDir = $1 })
        f.append(uint("snapshot-count", 100_000, "Number of committed transactions that triggers a snapshot to disk.", range: 1...maxCount) { $0.snapshotCount = $1 })
        f.append(uint("heartbeat-interval", 100, "Time (in milliseconds) of a heartbeat interval.", range: 0...maxCount) { $0.heartbeatIntervalMs = $1 })
        f.append(uint("election-timeout", 1000, "Time (in milliseconds) for an election to time out.", range: 0...maxCount) { $0.electionTimeoutMs = $1 })
        f.append(bool("initial-election-tick-advance", true, "Fast-forward initial election ticks on boot for faster election.") { $0.initialElectionTickAdvance = $1 })
        f.append(urls("listen-peer-urls", "http://localhost:2380", "List of URLs to listen on for peer traffic.") { $0.listenPeerURLs = $1 })
        f.append(urls("listen-client-urls", "http://localhost:2379", "List of URLs to listen on for client traffic.") { $0.listenClientURLs = $1 })
        f.append(urls("listen-client-http-urls", "", "Not supported (refused when set): every --listen-client-urls port serves gRPC and HTTP.", allowEmpty: true) { $0.listenClientHTTPURLs = $1 })
        f.append(urls("listen-metrics-urls", "", "List of http:// URLs serving /metrics, /health, /livez, /readyz and /version (https is not supported yet).", allowEmpty: true) { $0.listenMetricsURLs = $1 })
        f.append(uint("max-snapshots", 5, "Maximum number of snapshot files to retain (0 is unlimited).", range: 0...maxCount) { $0.maxSnapshots = $1 })
        f.append(uint("max-wals", 5, "Maximum number of WAL files to retain (0 is unlimited).", range: 0...maxCount) { $0.maxWALs = $1 })
        f.append(int("quota-backend-bytes", 0, "Raise the NOSPACE alarm when the backend size exceeds this quota (0 = 2 GiB default, negative disables).") { $0.quotaBackendBytes = $1 })
        f.append(duration("backend-batch-interval", .zero, "Maximum time before committing the backend transaction (0 = 100ms).") { $0.backendBatchInterval = $1 })
        f.append(int("backend-batch-limit", 0, "Maximum operations before committing the backend transaction (0 = 10000).") { $0.backendBatchLimit = $1 })
        f.append(uint("max-txn-ops", 128, "Maximum number of operations permitted in a transaction.", range: 1...maxCount) { $0.maxTxnOps = $1 })
        f.append(uint("max-request-bytes", 1_572_864, "Maximum client request size in bytes the server will accept.", range: 1...maxRequestBytes) { $0.maxRequestBytes = $1 })
        f.append(uint("max-concurrent-streams", UInt64(UInt32.max), "Maximum concurrent streams that each client can open at a time.", range: 1...UInt64(UInt32.max)) { $0.maxConcurrentStreams = $1 })
        f.append(duration("grpc-keepalive-min-time", .seconds(5), "Minimum interval a client should wait before pinging the server.") { $0.grpcKeepaliveMinTime = $1 })
        f.append(duration("grpc-keepalive-interval", .seconds(7200), "Frequency of server-to-client pings to check a connection is alive (0 disables).") { $0.grpcKeepaliveInterval = $1 })
        f.append(duration("grpc-keepalive-timeout", .seconds(20), "Additional wait before closing a non-responsive connection (0 disables).") { $0.grpcKeepaliveTimeout = $1 })
        f.append(uint("experimental-max-client-connections", 4096, "swetcd: maximum open client connections per client URL (gRPC and HTTP); more are closed at once.") { $0.maxClientConnections = $1 })
        f.append(bool("socket-reuse-address", false, "Not supported yet (refused when true): SO_REUSEADDR on listener sockets.") { $0.socketReuseAddress = $1 })
        f.append(bool("socket-reuse-port", false, "Not supported yet (refused when true): SO_REUSEPORT on listener sockets.") { $0.socketReusePort = $1 })

        // Clustering
        f.append(urls("initial-advertise-peer-urls", "http://localhost:2380", "This member's peer URLs to advertise to the rest of the cluster.") { $0.initialAdvertisePeerURLs = $1 })
        f.append(urls("advertise-client-urls", "http://localhost:2379", "This member's client URLs to advertise to the public.") { $0.advertiseClientURLs = $1 })
        f.append(string("discovery", "", "Discovery URL used to bootstrap the cluster (etcd's v2 discovery protocol, e.g. a discovery.etcd.io token URL).") { $0.discovery = $1 })
        f.append(oneOf("discovery-fallback", ["exit", "proxy"], "proxy", "Behaviour when discovery finds the cluster full: swetcd always exits (proxy is refused when given).") { $0.discoveryFallback = $1 })
        f.append(string("discovery-proxy", "", "HTTP proxy to use for traffic to the discovery service.") { $0.discoveryProxy = $1 })
        f.append(string("discovery-srv", "", "DNS domain used to bootstrap the initial cluster from SRV records (_etcd-server-ssl._tcp, _etcd-server._tcp).") { $0.discoverySrv = $1 })
        f.append(string("discovery-srv-name", "", "Suffix to the DNS SRV service name queried with --discovery-srv (_etcd-server-ssl-NAME._tcp).") { $0.discoverySrvName = $1 })
        // etcd 3.6's v3 discovery.
        f.append(string("discovery-token", "", "v3 discovery: the token identifying the new cluster on the discovery service (etcd 3.6).") { $0.v3Discovery.token = $1 })
        f.append(list("discovery-endpoints", "", "v3 discovery: client endpoints of the etcd or swetcd cluster serving as discovery service.") { $0.v3Discovery.endpoints = $1 })
        f.append(duration("discovery-dial-timeout", .seconds(2), "v3 discovery: dial timeout for a connection to the discovery service.") { $0.v3Discovery.dialTimeout = $1 })
        f.append(duration("discovery-request-timeout", .seconds(5), "v3 discovery: timeout of each request to the discovery service.") { $0.v3Discovery.requestTimeout = $1 })
        f.append(duration("discovery-keepalive-time", .seconds(2), "v3 discovery: keepalive ping interval of the client connection.") { $0.v3Discovery.keepaliveTime = $1 })
        f.append(duration("discovery-keepalive-timeout", .seconds(6), "v3 discovery: keepalive ping timeout.") { $0.v3Discovery.keepaliveTimeout = $1 })
        f.append(bool("discovery-insecure-transport", true, "v3 discovery: plaintext connections unless an endpoint is https:// or TLS files are given.") { $0.v3Discovery.insecureTransport = $1 })
        f.append(bool("discovery-insecure-skip-tls-verify", false, "v3 discovery: do not verify the discovery service's certificate.") { $0.v3Discovery.insecureSkipTLSVerify = $1 })
        f.append(string("discovery-cert", "", "v3 discovery: client certificate file (TLS).") { $0.v3Discovery.certFile = $1 })
        f.append(string("discovery-key", "", "v3 discovery: client key file (TLS).") { $0.v3Discovery.keyFile = $1 })
        f.append(string("discovery-cacert", "", "v3 discovery: CA bundle verifying the discovery service (TLS).") { $0.v3Discovery.caFile = $1 })
        f.append(string("discovery-user", "", "v3 discovery: user[:password] on the discovery service (auth).") { $0.v3Discovery.user = $1 })
        f.append(string("discovery-password", "", "v3 discovery: password of --discovery-user.") { $0.v3Discovery.password = $1 })
        f.append(string("initial-cluster", "default=${initial-advertise-peer-urls}", "Initial cluster configuration for bootstrapping.") { $0.initialCluster = $1 })
        f.append(string("initial-cluster-token", "etcd-cluster", "Initial cluster token for the cluster during bootstrap.") { $0.initialClusterToken = $1 })
        f.append(oneOf("initial-cluster-state", ["new", "existing"], "new", "Initial cluster state.") { $0.initialClusterState = $1 })
        f.append(bool("strict-reconfig-check", true, "Reject reconfiguration requests that would cause quorum loss.") { $0.strictReconfigCheck = $1 })
        f.append(bool("pre-vote", true, "Run the Raft PreVote phase before elections.") { $0.preVote = $1 })
        f.append(oneOf("auto-compaction-mode", ["periodic", "revision"], "periodic", "How auto-compaction-retention is read.") { $0.autoCompactionMode = $1 })
        f.append(string("auto-compaction-retention", "0", "Auto compaction retention: hours or a duration (periodic), revisions (revision). 0 disables.") { $0.autoCompactionRetention = $1 })
        f.append(uint("max-learners", 1, "Maximum number of learner members in the cluster.", range: 1...maxCount) { $0.maxLearners = $1 })
        f.append(uint("experimental-max-learners", 1, "Alias of --max-learners (etcd 3.5 name).", range: 1...maxCount) { $0.maxLearners = $1 })
        f.append(bool("auto-promote-learners", false, "swetcd: promote a learner as soon as it is in sync with the leader.") { $0.autoPromoteLearners = $1 })
        f.append(bool("force-new-cluster", false, "Force to create a new one member cluster (keeps the data; the other members are removed from the log).") { $0.forceNewCluster = $1 })

        // Security
        f.append(string("cert-file", "", "Path to the client server TLS cert file.") { $0.clientTLS.certFile = $1 })
        f.append(string("key-file", "", "Path to the client server TLS key file.") { $0.clientTLS.keyFile = $1 })
        f.append(bool("client-cert-auth", false, "Enable client certificate authentication.") { $0.clientTLS.clientCertAuth = $1 })
        f.append(string("client-crl-file", "", "Path to the client certificate revocation list file.") { $0.clientTLS.crlFile = $1 })
        f.append(string("client-cert-allowed-hostname", "", "Allowed TLS hostname for client certificate authentication.") { $0.clientTLS.allowedHostname = $1 })
        f.append(string("trusted-ca-file", "", "Path to the client server TLS trusted CA cert file.") { $0.clientTLS.trustedCAFile = $1 })
        f.append(bool("auto-tls", false, "Client TLS using generated certificates.") { $0.clientTLS.autoTLS = $1 })
        f.append(string("peer-cert-file", "", "Path to the peer server TLS cert file.") { $0.peerTLS.certFile = $1 })
        f.append(string("peer-key-file", "", "Path to the peer server TLS key file.") { $0.peerTLS.keyFile = $1 })
        f.append(bool("peer-client-cert-auth", false, "Enable peer client certificate authentication.") { $0.peerTLS.clientCertAuth = $1 })
        f.append(string("peer-trusted-ca-file", "", "Path to the peer server TLS trusted CA file.") { $0.peerTLS.trustedCAFile = $1 })
        f.append(bool("peer-auto-tls", false, "Peer TLS using generated certificates.") { $0.peerTLS.autoTLS = $1 })
        f.append(string("peer-crl-file", "", "Path to the peer certificate revocation list file.") { $0.peerTLS.crlFile = $1 })
        f.append(string("peer-cert-allowed-cn", "", "Allowed CN for inter-peer authentication.") { $0.peerTLS.allowedCN = $1 })
        f.append(string("peer-cert-allowed-hostname", "", "Allowed TLS hostname for inter-peer authentication.") { $0.peerTLS.allowedHostname = $1 })
        f.append(bool("experimental-peer-skip-client-san-verification", false, "Skip verification of the SAN field in peer client certificates.") { $0.peerTLS.skipClientSANVerify = $1 })
        f.append(list("cipher-suites", "", "Comma-separated list of supported TLS cipher suites (empty: the library's defaults).") { $0.cipherSuites = $1 })
        f.append(oneOf("tls-min-version", ["TLS1.2", "TLS1.3"], "TLS1.2", "Minimum TLS version.") { $0.tlsMinVersion = $1 })
        f.append(oneOf("tls-max-version", ["", "TLS1.2", "TLS1.3"], "", "Maximum TLS version (empty: no limit).") { $0.tlsMaxVersion = $1 })
        f.append(uint("self-signed-cert-validity", 1, "Validity in years of certificates generated by --auto-tls / --peer-auto-tls.", range: 1...100) { $0.selfSignedCertValidity = $1 })

        // Auth
        f.append(string("auth-token", "simple", "Auth token type and options: simple, or jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...") { $0.authToken = $1 })
        f.append(uint("bcrypt-cost", 10, "Bcrypt cost factor for password hashing.", range: 4...31) { $0.bcryptCost = $1 })
        f.append(uint("auth-token-ttl", 300, "Lifetime in seconds of a simple auth token.", range: 1...maxCount) { $0.authTokenTTL = $1 })

        // Logging, metrics, profiling
        f.append(oneOf("logger", ["zap", "capnslog"], "zap", "Logger; swetcd always writes structured logs (capnslog is accepted as zap).") { $0.logger = $1 })
        f.append(oneOf("log-level", ["debug", "info", "warn", "error", "panic", "fatal"], "info", "Log level.") { $0.logLevel = $1 })
        f.append(list("log-outputs", "default", "Log outputs: stdout, stderr, default (stderr), systemd/journal, or file paths.") { $0.logOutputs = $1 })
        f.append(list("log-output", "default", "Deprecated alias of --log-outputs.") { $0.logOutputs = $1 })
        f.append(oneOf("log-format", ["json", "console"], "json", "Log format (only json is supported; console is refused).") { $0.logFormat = $1 })
        f.append(bool("debug", false, "Deprecated: same as --log-level=debug.") { if $1 { $0.logLevel = "debug" } })
        f.append(oneOf("metrics", ["basic", "extensive"], "basic", "Level of detail of exported metrics (only basic is supported; extensive is refused).") { $0.metrics = $1 })
        f.append(bool("enable-grpc-gateway", true, "Serve the JSON gateway under /v3/ on the client URLs (false: those paths answer 404).") { $0.enableGRPCGateway = $1 })
        f.append(bool("enable-pprof", false, "Not supported (refused when true): swetcd has no Go profiler.") { $0.enablePprof = $1 })

        // Checks and tuning
        f.append(bool("experimental-initial-corrupt-check", false, "Check data corruption before serving clients.") { $0.initialCorruptCheck = $1 })
        f.append(duration("experimental-corrupt-check-time", .zero, "Interval between cluster corruption checks (0 disables).") { $0.corruptCheckTime = $1 })
        f.append(bool("experimental-compact-hash-check-enabled", false, "Not supported yet (refused when true); see --experimental-corrupt-check-time.") { $0.compactHashCheckEnabled = $1 })
        f.append(duration("experimental-compact-hash-check-time", .seconds(60), "Interval of the compaction hash check.") { $0.compactHashCheckTime = $1 })
        f.append(int("experimental-compaction-batch-limit", 1000, "Maximum revisions deleted in each compaction batch.") { $0.compactionBatchLimit = $1 })
        f.append(duration("experimental-watch-progress-notify-interval", .seconds(600), "Interval of watch progress notifications.") { $0.watchProgressNotifyInterval = $1 })
        f.append(duration("experimental-warning-apply-duration", .milliseconds(100), "Apply duration above which a warning is logged (only the default, 100ms, is supported).") { $0.warningApplyDuration = $1 })
        f.append(bool("experimental-enable-lease-checkpoint", false, "Leader sends lease remaining-TTL checkpoints to members.") { $0.enableLeaseCheckpoint = $1 })
        f.append(bool("experimental-enable-lease-checkpoint-persist", false, "Persist lease remaining TTL checkpoints.") { $0.enableLeaseCheckpointPersist = $1 })
        f.append(bool("unsafe-no-fsync", false, "Disables fsync: unsafe, loses data on a crash.") { $0.unsafeNoFsync = $1 })

        // etcd flags accepted and ignored
        f.append(ignored("enable-v2", .bool, "false", "swetcd serves only the v3 API"))
        f.append(ignored("experimental-enable-v2v3", .value, "", "swetcd serves only the v3 API"))
        f.append(ignored("v2-deprecation", .value, "", "swetcd serves only the v3 API"))
        f.append(ignored("experimental-backend-bbolt-freelist-type", .value, "", "the backend is LMDB, not bbolt"))
        f.append(ignored("proxy", .value, "off", "swetcd has no v2 proxy mode"))
        f.append(ignored("proxy-failure-wait", .value, "5000", "swetcd has no v2 proxy mode"))
        f.append(ignored("proxy-refresh-interval", .value, "30000", "swetcd has no v2 proxy mode"))
        f.append(ignored("proxy-dial-timeout", .value, "1000", "swetcd has no v2 proxy mode"))
        f.append(ignored("proxy-write-timeout", .value, "5000", "swetcd has no v2 proxy mode"))
        f.append(ignored("proxy-read-timeout", .value, "0", "swetcd has no v2 proxy mode"))
        f.append(ignored("cors", .value, "*", "the JSON gateway sends no CORS headers"))
        f.append(ignored("host-whitelist", .value, "*", "swetcd serves no v2 HTTP API"))
        f.append(ignored("log-package-levels", .value, "", "deprecated in etcd; use --log-level"))
        f.append(ignored("experimental-enable-distributed-tracing", .bool, "false", "tracing is not implemented"))
        f.append(ignored("experimental-txn-mode-write-with-shared-buffer", .bool, "true", "an etcd-internal buffer option"))
        f.append(ignored("experimental-memory-mlock", .bool, "false", "not implemented"))
        return f
    }()

    /// The spec for a flag name, if swetcd knows it.
    public static func spec(named name: String) -> FlagSpec? { byName[name] }

    private static let byName: [String: FlagSpec] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
}
