/// Every setting of a swetcd member, with etcd's defaults. Filled from command-line flags,
/// `ETCD_*` environment variables or a YAML config file by `ConfigLoader`; the flag table in
/// `FlagTable.swift` names each field's flag, environment variable and YAML key.
public struct ServerConfig: Sendable, Equatable {
    // Member
    public var name = "default"
    /// Empty means `<name>.swetcd` in the working directory (see `effectiveDataDir`).
    public var dataDir = ""
    public var walDir = ""
    public var snapshotCount: UInt64 = 100_000
    public var heartbeatIntervalMs: UInt64 = 100
    public var electionTimeoutMs: UInt64 = 1000
    public var initialElectionTickAdvance = true
    public var listenPeerURLs = [EndpointURL(scheme: "http", host: "localhost", port: 2380)]
    public var listenClientURLs = [EndpointURL(scheme: "http", host: "localhost", port: 2379)]
    public var listenClientHTTPURLs: [EndpointURL] = []
    public var listenMetricsURLs: [EndpointURL] = []
    public var maxSnapshots: UInt64 = 5
    public var maxWALs: UInt64 = 5
    /// 0 means the default quota (2 GiB); negative disables the quota.
    public var quotaBackendBytes: Int64 = 0
    /// 0 means the default (100 ms).
    public var backendBatchInterval: Duration = .zero
    /// 0 means the default (10000 operations).
    public var backendBatchLimit: Int64 = 0
    public var maxTxnOps: UInt64 = 128
    public var maxRequestBytes: UInt64 = 1_572_864
    public var maxConcurrentStreams: UInt64 = UInt64(UInt32.max)
    public var grpcKeepaliveMinTime: Duration = .seconds(5)
    public var grpcKeepaliveInterval: Duration = .seconds(7200)
    public var grpcKeepaliveTimeout: Duration = .seconds(20)
    /// swetcd's cap on open client connections per client URL (`--experimental-max-client-connections`).
    public var maxClientConnections: UInt64 = 4096
    public var socketReuseAddress = false
    public var socketReusePort = false

    // Clustering
    public var initialAdvertisePeerURLs = [EndpointURL(scheme: "http", host: "localhost", port: 2380)]
    public var advertiseClientURLs = [EndpointURL(scheme: "http", host: "localhost", port: 2379)]
    public var discovery = ""
    public var discoveryFallback = "proxy"
    public var discoveryProxy = ""
    public var discoverySrv = ""
    public var discoverySrvName = ""
    /// etcd 3.6's v3 discovery (`--discovery-token`, `--discovery-endpoints` and their flags).
    public var v3Discovery = V3DiscoverySettings()
    /// Empty means `default=<initial-advertise-peer-urls>`: like etcd, the implicit list names
    /// the default member, so `--name x` alone needs `--initial-cluster` too.
    public var initialCluster = ""
    public var initialClusterToken = "etcd-cluster"
    public var initialClusterState = "new"
    public var strictReconfigCheck = true
    public var preVote = true
    public var autoCompactionMode = "periodic"
    public var autoCompactionRetention = "0"
    public var maxLearners: UInt64 = 1
    /// swetcd only: promote a learner as soon as it is in sync with the leader.
    public var autoPromoteLearners = false
    public var forceNewCluster = false

    // Security
    public var clientTLS = TLSSettings()
    public var peerTLS = TLSSettings()
    public var cipherSuites: [String] = []
    public var tlsMinVersion = "TLS1.2"
    public var tlsMaxVersion = ""
    public var selfSignedCertValidity: UInt64 = 1

    // Auth
    public var authToken = "simple"
    public var bcryptCost: UInt64 = 10
    public var authTokenTTL: UInt64 = 300

    // Logging and profiling
    public var logger = "zap"
    public var logLevel = "info"
    public var logOutputs = ["default"]
    public var logFormat = "json"
    public var metrics = "basic"
    public var enableGRPCGateway = true
    public var enablePprof = false

    // Checks and tuning
    public var initialCorruptCheck = false
    public var corruptCheckTime: Duration = .zero
    public var compactHashCheckEnabled = false
    public var compactHashCheckTime: Duration = .seconds(60)
    public var compactionBatchLimit: Int64 = 1000
    public var watchProgressNotifyInterval: Duration = .seconds(600)
    public var warningApplyDuration: Duration = .milliseconds(100)
    public var enableLeaseCheckpoint = false
    public var enableLeaseCheckpointPersist = false
    public var unsafeNoFsync = false

    public init() {}

    /// The data directory actually used: `--data-dir`, else `<name>.swetcd`.
    public var effectiveDataDir: String { dataDir.isEmpty ? "\(name).swetcd" : dataDir }

    /// The `--initial-cluster` actually used: as given, else the default member alone.
    public var effectiveInitialCluster: String {
        if !initialCluster.isEmpty { return initialCluster }
        return initialAdvertisePeerURLs.map { "default=\($0)" }.joined(separator: ",")
    }

    /// The quota the server enforces, or nil when disabled (etcd: 0 → 2 GiB, negative → off).
    public var effectiveQuotaBytes: Int64? {
        if quotaBackendBytes < 0 { return nil }
        return quotaBackendBytes == 0 ? Int64(2) << 30 : quotaBackendBytes
    }

    /// gRPC receive limit: the request limit plus etcd's 512 KiB allowance for gRPC overhead.
    public var maxReceiveMessageBytes: Int { Int(min(maxRequestBytes, FlagTable.maxRequestBytes)) + 512 * 1024 }
}

/// TLS settings for one side (clients or peers), as etcd's `--cert-file`/`--peer-cert-file` etc.
public struct TLSSettings: Sendable, Equatable {
    public var certFile = ""
    public var keyFile = ""
    public var clientCertAuth = false
    public var trustedCAFile = ""
    public var crlFile = ""
    public var allowedCN = ""
    public var allowedHostname = ""
    public var autoTLS = false
    public var skipClientSANVerify = false
    public init() {}

    /// True when this side serves TLS (certificates given or generated).
    public var isEnabled: Bool { autoTLS || (!certFile.isEmpty && !keyFile.isEmpty) }
}

/// etcd 3.6's v3 discovery client settings: a token and an etcd (or swetcd) cluster's client
/// endpoints, with etcd's defaults.
public struct V3DiscoverySettings: Sendable, Equatable {
    public var token = ""
    public var endpoints: [String] = []
    public var dialTimeout: Duration = .seconds(2)
    public var requestTimeout: Duration = .seconds(5)
    public var keepaliveTime: Duration = .seconds(2)
    public var keepaliveTimeout: Duration = .seconds(6)
    public var insecureTransport = true
    public var insecureSkipTLSVerify = false
    public var certFile = ""
    public var keyFile = ""
    public var caFile = ""
    public var user = ""
    public var password = ""
    public init() {}

    public var isSet: Bool { !token.isEmpty || !endpoints.isEmpty }
}
