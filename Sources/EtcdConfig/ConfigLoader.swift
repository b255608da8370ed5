import Foundation
import Yams

/// A configuration problem, worded for the operator. `swetcd` prints it and exits with status 1.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The result of reading the command line.
public enum LoadOutcome: Sendable {
    case run(LoadedConfig)
    case help(String)
    case version
}

/// A validated configuration with the notes the operator should see.
public struct LoadedConfig: Sendable {
    public var config: ServerConfig
    /// Non-fatal notes: ignored flags, unknown ETCD_ variables, config-file overrides.
    public var warnings: [String]
    /// Flags given explicitly (command line, environment or config file).
    public var explicitlySet: Set<String>
    /// The config file read, if any.
    public var configFile: String?
    /// The parsed bootstrap membership (from --initial-cluster and the token).
    public var initialCluster: InitialCluster
    public var autoCompaction: AutoCompaction
    /// How a new member learns its initial cluster. For DNS SRV and a discovery URL,
    /// `initialCluster` holds only this member until the server resolves the rest at start
    /// (only when its data directory is empty).
    public var bootstrap: BootstrapMode = .staticCluster
}

/// Where a new member's initial cluster comes from.
public enum BootstrapMode: Sendable, Equatable {
    /// `--initial-cluster` (or the default one-member cluster).
    case staticCluster
    /// `--discovery-srv DOMAIN` with `--discovery-srv-name` (may be empty): SRV records.
    case dnsSRV(domain: String, serviceName: String)
    /// `--discovery URL` (etcd's v2 discovery protocol) through `--discovery-proxy` (may be empty).
    case discoveryURL(url: String, proxy: String)
    /// `--discovery-token` on `--discovery-endpoints` (etcd 3.6's v3 discovery).
    case v3Discovery(V3DiscoverySettings)
}

/// Reads etcd-style configuration: command-line flags (Go syntax: `-flag`, `--flag`, `--flag=v`,
/// `--flag v`), then `ETCD_*` environment variables for flags not on the command line; or, when
/// `--config-file` (or `ETCD_CONFIG_FILE`) is given, the YAML file alone, as etcd does.
public enum ConfigLoader {
    public static func load(arguments: [String], environment: [String: String]) throws -> LoadOutcome {
        var config = ServerConfig()
        var warnings: [String] = []
        var fromCommandLine = Set<String>()
        var configFile: String?
        var printVersion = false

        // 1. Command line.
        var i = 0
        while i < arguments.count {
            let arg = arguments[i]
            i += 1
            if arg == "--" { break }
            guard arg.hasPrefix("-"), arg != "-" else {
                throw ConfigError("'\(arg)' is not a valid flag")
            }
            var body = arg.dropFirst()
            if body.hasPrefix("-") { body = body.dropFirst() }
            if body.isEmpty || body.hasPrefix("-") || body.hasPrefix("=") {
                throw ConfigError("bad flag syntax: \(arg)")
            }
            var name = String(body)
            var value: String?
            if let eq = body.firstIndex(of: "=") {
                name = String(body[..<eq])
                value = String(body[body.index(after: eq)...])
            }
            switch name {
            case "h", "help":
                return .help(usage())
            case "version":
                printVersion = try FlagValues.bool(value ?? "true")
                continue
            case "config-file":
                if value == nil {
                    guard i < arguments.count else { throw ConfigError("flag needs an argument: -config-file") }
                    value = arguments[i]
                    i += 1
                }
                configFile = value
                fromCommandLine.insert(name)
                continue
            default:
                break
            }
            guard let spec = FlagTable.spec(named: name) else {
                throw ConfigError("flag provided but not defined: -\(name)")
            }
            if value == nil {
                if spec.kind == .bool {
                    value = "true"
                } else {
                    guard i < arguments.count else { throw ConfigError("flag needs an argument: -\(name)") }
                    value = arguments[i]
                    i += 1
                }
            }
            try apply(spec, value!, to: &config, source: "flag --\(name)")
            fromCommandLine.insert(name)
        }
        if i < arguments.count {
            throw ConfigError("'\(arguments[i])' is not a valid flag")
        }
        if printVersion { return .version }

        // 2. Environment (only for flags not given on the command line).
        var explicitlySet = fromCommandLine
        if configFile == nil, let envFile = environment["ETCD_CONFIG_FILE"], !envFile.isEmpty {
            configFile = envFile
        }
        if configFile == nil {
            var known = Set<String>()
            for spec in FlagTable.all {
                let key = spec.environmentName
                known.insert(key)
                guard let v = environment[key], !v.isEmpty else { continue }
                if fromCommandLine.contains(spec.name) {
                    throw ConfigError("conflicting environment variable \"\(key)\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)")
                }
                do {
                    try spec.apply(&config, v)
                } catch {
                    throw ConfigError("invalid value \"\(v)\" for \(key): \(error)")
                }
                explicitlySet.insert(spec.name)
            }
            known.formUnion(["ETCD_CONFIG_FILE", "ETCD_VERSION", "ETCD_UNSUPPORTED_ARCH"])
            for key in environment.keys.sorted() where key.hasPrefix("ETCD_") && !known.contains(key) {
                warnings.append("unrecognized environment variable \(key)=\(environment[key] ?? "")")
            }
        } else if let path = configFile {
            // 3. Config file: replaces flags and environment entirely, as in etcd.
            let ignored = fromCommandLine.subtracting(["config-file"])
            if !ignored.isEmpty {
                warnings.append("loaded configuration from \(path); command-line flags \(ignored.sorted().map { "--\($0)" }.joined(separator: ", ")) and ETCD_* environment variables are ignored")
            }
            config = ServerConfig()
            explicitlySet = ["config-file"]
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw ConfigError("cannot read config file \(path): \(error.localizedDescription)")
            }
            let fileSet = try applyYAML(text, path: path, to: &config, warnings: &warnings)
            explicitlySet.formUnion(fileSet)
        }

        for name in explicitlySet.sorted() {
            if let why = FlagTable.spec(named: name)?.ignoredBecause {
                warnings.append("--\(name) has no effect: \(why)")
            }
        }
        if config.logger == "capnslog" {
            warnings.append("--logger=capnslog is deprecated; swetcd writes structured logs")
        }
        let (cluster, autoCompaction, more) = try validate(config, explicitlySet: explicitlySet)
        warnings += more
        var loaded = LoadedConfig(config: config, warnings: warnings, explicitlySet: explicitlySet,
                                  configFile: configFile, initialCluster: cluster, autoCompaction: autoCompaction)
        loaded.bootstrap = bootstrapMode(config)
        return .run(loaded)
    }

    static func apply(_ spec: FlagSpec, _ value: String, to config: inout ServerConfig, source: String) throws {
        do {
            try spec.apply(&config, value)
        } catch {
            throw ConfigError("invalid value \"\(value)\" for \(source): \(error)")
        }
    }

    // MARK: YAML

    /// The nested TLS sections of etcd's config file and the flags their keys stand for.
    private static let tlsSections: [String: [String: String]] = [
        "client-transport-security": [
            "cert-file": "cert-file", "key-file": "key-file", "client-cert-auth": "client-cert-auth",
            "trusted-ca-file": "trusted-ca-file", "auto-tls": "auto-tls", "crl-file": "client-crl-file",
            "allowed-hostname": "client-cert-allowed-hostname",
        ],
        "peer-transport-security": [
            "cert-file": "peer-cert-file", "key-file": "peer-key-file", "client-cert-auth": "peer-client-cert-auth",
            "trusted-ca-file": "peer-trusted-ca-file", "auto-tls": "peer-auto-tls", "crl-file": "peer-crl-file",
            "allowed-cn": "peer-cert-allowed-cn", "allowed-hostname": "peer-cert-allowed-hostname",
        ],
    ]

    static func applyYAML(_ text: String, path: String, to config: inout ServerConfig,
                          warnings: inout [String]) throws -> Set<String> {
        let root: Any?
        do {
            root = try Yams.load(yaml: text)
        } catch {
            throw ConfigError("config file \(path) is not valid YAML: \(error)")
        }
        guard let root else { return [] }
        guard let map = root as? [String: Any] else {
            throw ConfigError("config file \(path) must be a YAML mapping of etcd configuration keys")
        }
        var set = Set<String>()
        for key in map.keys.sorted() {
            let value = map[key]!
            if let section = tlsSections[key] {
                guard let sub = value as? [String: Any] else {
                    if value is NSNull { continue }
                    throw ConfigError("config file \(path): \(key) must be a mapping")
                }
                for subKey in sub.keys.sorted() {
                    guard let flag = section[subKey], let spec = FlagTable.spec(named: flag) else {
                        warnings.append("config file \(path): unknown key \(key).\(subKey) ignored")
                        continue
                    }
                    if try applyYAMLValue(sub[subKey]!, spec: spec, key: "\(key).\(subKey)", path: path, to: &config) {
                        set.insert(flag)
                    }
                }
                continue
            }
            if key == "config-file" || key == "version" { continue }
            guard let spec = FlagTable.spec(named: key) else {
                warnings.append("config file \(path): unknown key \(key) ignored")
                continue
            }
            if try applyYAMLValue(value, spec: spec, key: key, path: path, to: &config) {
                set.insert(key)
            }
        }
        return set
    }

    /// Applies one YAML value; returns false for a null value (left at its default).
    private static func applyYAMLValue(_ value: Any, spec: FlagSpec, key: String, path: String,
                                       to config: inout ServerConfig) throws -> Bool {
        let text: String
        switch value {
        case is NSNull:
            return false
        case let b as Bool:
            text = b ? "true" : "false"
        case let n as Int:
            text = spec.kind == .duration ? "\(n)ns" : "\(n)"
        case let d as Double:
            if spec.kind == .duration {
                // A YAML number for a duration is nanoseconds; refuse what no Int64 holds.
                guard d.isFinite, d.magnitude < 9.2e18 else {
                    throw ConfigError("invalid value \"\(d)\" for \(key) in \(path): duration out of range")
                }
                text = "\(Int64(d.rounded()))ns"
            } else {
                text = String(d)
            }
        case let s as String:
            text = s
        case let list as [Any]:
            text = list.map { "\($0)" }.joined(separator: ",")
        default:
            throw ConfigError("config file \(path): unsupported value for \(key)")
        }
        try apply(spec, text, to: &config, source: "\(key) in \(path)")
        return true
    }

    // MARK: Validation

    static func validate(_ c: ServerConfig, explicitlySet: Set<String>) throws -> (InitialCluster, AutoCompaction, [String]) {
        var warnings: [String] = []
        if c.name.isEmpty { throw ConfigError("--name must not be empty") }
        let bootstrapFlags = ["initial-cluster", "discovery", "discovery-endpoints", "discovery-srv"].filter { explicitlySet.contains($0) }
        if bootstrapFlags.count > 1 {
            throw ConfigError("multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"")
        }
        if c.heartbeatIntervalMs == 0 { throw ConfigError("--heartbeat-interval must be >0 (set to 0ms)") }
        if c.electionTimeoutMs == 0 { throw ConfigError("--election-timeout must be >0 (set to 0ms)") }
        // heartbeat > election / 5 is election < 5 * heartbeat without the overflow.
        if c.heartbeatIntervalMs > c.electionTimeoutMs / 5 {
            throw ConfigError("--election-timeout[\(c.electionTimeoutMs)ms] should be at least as 5 times as --heartbeat-interval[\(c.heartbeatIntervalMs)ms]")
        }
        if c.electionTimeoutMs > 50000 {
            throw ConfigError("--election-timeout[\(c.electionTimeoutMs)ms] is too long, and should be set less than 50000ms")
        }
        if explicitlySet.contains("listen-client-urls") && !explicitlySet.contains("advertise-client-urls") {
            throw ConfigError("--advertise-client-urls is required when --listen-client-urls is set explicitly")
        }
        if c.enableLeaseCheckpointPersist && !c.enableLeaseCheckpoint {
            throw ConfigError("setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint")
        }
        if c.maxRequestBytes == 0 { throw ConfigError("--max-request-bytes must be >0") }
        if c.maxTxnOps == 0 { throw ConfigError("--max-txn-ops must be >0") }
        if c.snapshotCount == 0 { throw ConfigError("--snapshot-count must be >0") }
        if let q = c.effectiveQuotaBytes, q > 8 * 1024 * 1024 * 1024 {
            warnings.append("quota-backend-bytes \(q) exceeds the recommended maximum of 8 GiB")
        }
        if c.clientTLS.certFile.isEmpty != c.clientTLS.keyFile.isEmpty {
            throw ConfigError("--cert-file and --key-file must be given together")
        }
        if c.peerTLS.certFile.isEmpty != c.peerTLS.keyFile.isEmpty {
            throw ConfigError("--peer-cert-file and --peer-key-file must be given together")
        }
        if !c.tlsMaxVersion.isEmpty && c.tlsMaxVersion < c.tlsMinVersion {
            throw ConfigError("--tls-min-version (\(c.tlsMinVersion)) must not be higher than --tls-max-version (\(c.tlsMaxVersion))")
        }
        for u in c.listenClientURLs where u.isSecure && !c.clientTLS.isEnabled {
            throw ConfigError("TLS key/cert (--cert-file, --key-file) must be provided for client url \(u) with HTTPS scheme")
        }
        for u in c.listenPeerURLs where u.isSecure && !c.peerTLS.isEnabled {
            throw ConfigError("TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url \(u) with HTTPS scheme")
        }
        try refuseUnsupported(c)
        for u in c.listenMetricsURLs where u.scheme != "http" {
            throw ConfigError("--listen-metrics-urls \(u): only http:// metrics URLs are supported yet (TLS is served on https:// client URLs)")
        }
        if c.listenClientURLs.contains(where: \.isSecure) {
            if !c.clientTLS.crlFile.isEmpty && c.clientTLS.trustedCAFile.isEmpty {
                throw ConfigError("--client-crl-file needs --trusted-ca-file: the revocation list's signature is checked against the trusted CA")
            }
            if !c.cipherSuites.filter({ !$0.isEmpty }).isEmpty && c.tlsMinVersion == "TLS1.3" {
                throw ConfigError("cipher suites cannot be configured when only TLS1.3 is enabled")
            }
        }
        if c.listenPeerURLs.contains(where: { $0.scheme == "https" }) {
            let t = c.peerTLS
            if !t.crlFile.isEmpty && t.trustedCAFile.isEmpty {
                throw ConfigError("--peer-crl-file needs --peer-trusted-ca-file: the revocation list's signature is checked against the trusted CA")
            }
            if !t.allowedCN.isEmpty && !t.allowedHostname.isEmpty {
                throw ConfigError("AllowedCN and AllowedHostname are mutually exclusive (cn=\"\(t.allowedCN)\", hostname=\"\(t.allowedHostname)\"): give only one of --peer-cert-allowed-cn and --peer-cert-allowed-hostname")
            }
            if (!t.allowedCN.isEmpty || !t.allowedHostname.isEmpty) && !t.clientCertAuth {
                throw ConfigError("--peer-cert-allowed-cn and --peer-cert-allowed-hostname need --peer-client-cert-auth (without it peers present no certificate to check)")
            }
            if t.autoTLS && t.certFile.isEmpty && t.clientCertAuth {
                throw ConfigError("--peer-client-cert-auth cannot be used with --peer-auto-tls: each member's generated certificate is self-signed, so there is no CA to verify peers against; give --peer-cert-file, --peer-key-file and --peer-trusted-ca-file")
            }
            if !c.cipherSuites.filter({ !$0.isEmpty }).isEmpty && c.tlsMinVersion == "TLS1.3" {
                throw ConfigError("cipher suites cannot be configured when only TLS1.3 is enabled")
            }
        }
        warnings += tlsWarnings(c, explicitlySet: explicitlySet)
        // Lease checkpoints are always on and persisted (etcd 3.6 behaviour).
        if explicitlySet.contains("experimental-enable-lease-checkpoint") && !c.enableLeaseCheckpoint {
            warnings.append("--experimental-enable-lease-checkpoint=false has no effect: swetcd always checkpoints and persists lease remaining TTLs (as etcd 3.6)")
        }
        if explicitlySet.contains("experimental-enable-lease-checkpoint-persist") && !c.enableLeaseCheckpointPersist {
            warnings.append("--experimental-enable-lease-checkpoint-persist=false has no effect: swetcd always persists lease checkpoints (as etcd 3.6)")
        }
        if explicitlySet.contains("initial-election-tick-advance") && c.initialElectionTickAdvance {
            warnings.append("--initial-election-tick-advance has no effect: a new or restarted member of a multi-member cluster waits a full election timeout before campaigning (as with false)")
        }
        // Auth tokens: etcd's "simple" tokens are served; JWT is refused until it exists.
        let tokenType = c.authToken.split(separator: ",", maxSplits: 1).first.map(String.init) ?? ""
        switch tokenType {
        case "simple": break
        case "jwt": break  // its options and key files are checked when the server starts
        default: throw ConfigError("--auth-token \(c.authToken): unknown token type (simple or jwt)")
        }
        let autoCompaction = try AutoCompaction(mode: c.autoCompactionMode, retention: c.autoCompactionRetention)
        let cluster: InitialCluster
        switch bootstrapMode(c) {
        case .staticCluster:
            cluster = try InitialCluster(parsing: c.effectiveInitialCluster, token: c.initialClusterToken)
            if c.initialClusterState == "new" {
                try cluster.verifyLocalMember(name: c.name, advertisePeerURLs: c.initialAdvertisePeerURLs)
            }
            if explicitlySet.contains("discovery-srv-name") {
                warnings.append("--discovery-srv-name has no effect without --discovery-srv")
            }
            if explicitlySet.contains("discovery-proxy") {
                warnings.append("--discovery-proxy has no effect without --discovery")
            }
        case .dnsSRV:
            try checkSRVDomain(c.discoverySrv, flag: "--discovery-srv")
            if !c.discoverySrvName.isEmpty { try checkSRVLabel(c.discoverySrvName) }
            if explicitlySet.contains("discovery-proxy") {
                warnings.append("--discovery-proxy has no effect without --discovery")
            }
            // Until the SRV records are read at start: this member alone.
            cluster = try InitialCluster(entries: [(c.name, c.initialAdvertisePeerURLs)], token: c.initialClusterToken)
        case .v3Discovery(let d):
            guard !d.token.isEmpty, !d.endpoints.isEmpty else {
                throw ConfigError("--discovery-token and --discovery-endpoints must be given together (v3 discovery)")
            }
            guard d.token.utf8.count <= 256, !d.token.contains("/"), d.token.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
                throw ConfigError("--discovery-token \"\(d.token)\": a token is at most 256 printable ASCII characters without '/'")
            }
            for e in d.endpoints {
                let text = e.contains("://") ? e : "http://" + e
                guard let u = try? EndpointURL(parsing: text), u.scheme == "http" || u.scheme == "https" else {
                    throw ConfigError("--discovery-endpoints \(e): expected host:port or an http(s):// URL")
                }
            }
            if d.certFile.isEmpty != d.keyFile.isEmpty {
                throw ConfigError("--discovery-cert and --discovery-key must be given together")
            }
            if !d.password.isEmpty && d.user.isEmpty {
                throw ConfigError("--discovery-password needs --discovery-user")
            }
            if c.initialClusterState == "existing" {
                throw ConfigError("discovery endpoints should not be set when joining existing initial cluster")
            }
            // Until the discovery service answers: this member alone; the token is the cluster token.
            cluster = try InitialCluster(entries: [(c.name, c.initialAdvertisePeerURLs)], token: d.token)
        case .discoveryURL(let url, let proxy):
            try checkDiscoveryURL(url)
            if !proxy.isEmpty { try checkDiscoveryProxy(proxy) }
            if c.initialClusterState == "existing" {
                throw ConfigError("discovery URL should not be set when joining existing initial cluster")
            }
            if explicitlySet.contains("discovery-fallback") && c.discoveryFallback == "proxy" {
                throw ConfigError("--discovery-fallback=proxy is not supported by swetcd: there is no v2 proxy mode; use --discovery-fallback=exit (a member that finds the discovery cluster full exits)")
            }
            if explicitlySet.contains("discovery-srv-name") {
                warnings.append("--discovery-srv-name has no effect without --discovery-srv")
            }
            // Until the discovery service answers: this member alone; as in etcd, the
            // discovery URL is the cluster token (member IDs derive from it).
            cluster = try InitialCluster(entries: [(c.name, c.initialAdvertisePeerURLs)], token: url)
        }
        if !c.v3Discovery.isSet {
            let aux = v3DiscoveryOptionFlags.filter { explicitlySet.contains($0) }
            if !aux.isEmpty {
                warnings.append("\(aux.map { "--\($0)" }.joined(separator: ", ")) \(aux.count == 1 ? "has" : "have") no effect without --discovery-token and --discovery-endpoints")
            }
        }
        return (cluster, autoCompaction, warnings)
    }

    /// The v3 discovery flags besides the token and the endpoints.
    static let v3DiscoveryOptionFlags = [
        "discovery-dial-timeout", "discovery-request-timeout", "discovery-keepalive-time", "discovery-keepalive-timeout",
        "discovery-insecure-transport", "discovery-insecure-skip-tls-verify", "discovery-cert", "discovery-key",
        "discovery-cacert", "discovery-user", "discovery-password",
    ]

    static func bootstrapMode(_ c: ServerConfig) -> BootstrapMode {
        if c.v3Discovery.isSet { return .v3Discovery(c.v3Discovery) }
        if !c.discoverySrv.isEmpty { return .dnsSRV(domain: c.discoverySrv, serviceName: c.discoverySrvName) }
        if !c.discovery.isEmpty { return .discoveryURL(url: c.discovery, proxy: c.discoveryProxy) }
        return .staticCluster
    }

    /// A DNS name as `--discovery-srv` takes it: dot-separated labels of letters, digits, '-'
    /// and '_', at most 253 characters (a trailing dot allowed).
    static func checkSRVDomain(_ domain: String, flag: String) throws {
        var d = Substring(domain)
        if d.hasSuffix(".") { d = d.dropLast() }
        let labels = d.split(separator: ".", omittingEmptySubsequences: false)
        guard !d.isEmpty, d.utf8.count <= 253,
              labels.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 63 && $0.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") } })
        else { throw ConfigError("\(flag) \"\(domain)\" is not a valid DNS domain name") }
    }

    static func checkSRVLabel(_ name: String) throws {
        guard name.utf8.count <= 40, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw ConfigError("--discovery-srv-name \"\(name)\" must be a short DNS label (letters, digits, '-', '_')")
        }
    }

    /// `--discovery`: an http(s) URL whose path is the token, e.g. https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579cbf573de.
    static func checkDiscoveryURL(_ url: String) throws {
        guard url.utf8.count <= 2048, let u = URLComponents(string: url), let scheme = u.scheme?.lowercased(),
              scheme == "http" || scheme == "https", let host = u.host, !host.isEmpty else {
            throw ConfigError("--discovery \"\(url)\": discovery: invalid URL (expected http(s)://host[:port]/token)")
        }
        let path = u.path.split(separator: "/")
        guard !path.isEmpty else {
            throw ConfigError("--discovery \"\(url)\": the URL has no token path (expected http(s)://host[:port]/token)")
        }
        guard u.query == nil, u.fragment == nil else {
            throw ConfigError("--discovery \"\(url)\": the URL must not have a query or fragment")
        }
    }

    static func checkDiscoveryProxy(_ proxy: String) throws {
        let text = proxy.contains("://") ? proxy : "http://" + proxy
        guard let u = URLComponents(string: text), u.scheme?.lowercased() == "http", let host = u.host, !host.isEmpty else {
            throw ConfigError("invalid proxy address \"\(proxy)\": swetcd supports http:// proxies for --discovery-proxy")
        }
    }

    /// Flags etcd has whose feature swetcd does not implement: accepted at their etcd default
    /// (so manifests that spell out defaults keep working), refused with a clear message when
    /// they ask for the feature, never accepted and ignored.
    static func refuseUnsupported(_ c: ServerConfig) throws {
        func refuse(_ flag: String, _ why: String) throws -> Never {
            throw ConfigError("\(flag) is not supported by swetcd yet: \(why)")
        }
        if !c.listenClientHTTPURLs.isEmpty {
            try refuse("--listen-client-http-urls", "every --listen-client-urls port already serves both gRPC and HTTP; remove the flag")
        }
        if c.enablePprof { try refuse("--enable-pprof", "swetcd has no Go profiler") }
        if c.socketReuseAddress { try refuse("--socket-reuse-address", "listeners do not set SO_REUSEADDR on request yet") }
        if c.socketReusePort { try refuse("--socket-reuse-port", "listeners do not set SO_REUSEPORT yet") }
        if c.compactHashCheckEnabled {
            try refuse("--experimental-compact-hash-check-enabled", "use --experimental-corrupt-check-time for periodic hash checks between members")
        }
        if c.metrics != "basic" { try refuse("--metrics=\(c.metrics)", "only the basic metrics are exported") }
        if c.logFormat != "json" { try refuse("--log-format=\(c.logFormat)", "logs are always written as JSON") }
        if c.warningApplyDuration != .milliseconds(100) {
            try refuse("--experimental-warning-apply-duration", "the slow-apply warning threshold is fixed at 100ms")
        }
    }

    /// The TLS flags, and whether each is set in `c`.
    private static func tlsFlagsSet(_ c: ServerConfig) -> (client: [String], peer: [String]) {
        func side(_ t: TLSSettings, _ prefix: String) -> [String] {
            var out: [String] = []
            if !t.certFile.isEmpty { out.append("\(prefix)cert-file") }
            if !t.keyFile.isEmpty { out.append("\(prefix)key-file") }
            if !t.trustedCAFile.isEmpty { out.append("\(prefix)trusted-ca-file") }
            if t.clientCertAuth { out.append("\(prefix)client-cert-auth") }
            if t.autoTLS { out.append("\(prefix)auto-tls") }
            if !t.crlFile.isEmpty { out.append(prefix.isEmpty ? "client-crl-file" : "peer-crl-file") }
            if !t.allowedHostname.isEmpty { out.append(prefix.isEmpty ? "client-cert-allowed-hostname" : "peer-cert-allowed-hostname") }
            if !t.allowedCN.isEmpty { out.append("peer-cert-allowed-cn") }
            if t.skipClientSANVerify { out.append("experimental-peer-skip-client-san-verification") }
            return out
        }
        return (side(c.clientTLS, ""), side(c.peerTLS, "peer-"))
    }

    /// TLS flags given while every URL of their side is plain http:// do nothing (etcd ignores
    /// them silently): a warning names them. (Peer https:// URLs are refused at start.)
    static func tlsWarnings(_ c: ServerConfig, explicitlySet: Set<String>) -> [String] {
        var out: [String] = []
        let (client, peer) = tlsFlagsSet(c)
        let clientTLS = c.listenClientURLs.contains(where: \.isSecure)
        let peerTLS = c.listenPeerURLs.contains(where: \.isSecure)
        if !client.isEmpty && !clientTLS {
            out.append("TLS flags \(client.map { "--\($0)" }.joined(separator: ", ")) have no effect: every --listen-client-urls URL is http://")
        }
        if clientTLS && !c.clientTLS.crlFile.isEmpty && !c.clientTLS.clientCertAuth {
            out.append("--client-crl-file has no effect without --client-cert-auth: clients are not asked for certificates")
        }
        if clientTLS && c.clientTLS.clientCertAuth && c.clientTLS.trustedCAFile.isEmpty {
            out.append("--client-cert-auth without --trusted-ca-file: client certificates are verified against the system's CA certificates; give --trusted-ca-file to trust only your CA")
        }
        if !peer.isEmpty && !peerTLS {
            out.append("TLS flags \(peer.map { "--\($0)" }.joined(separator: ", ")) have no effect: every --listen-peer-urls URL is http://")
        }
        let common = ["cipher-suites", "tls-min-version", "tls-max-version", "self-signed-cert-validity"].filter { explicitlySet.contains($0) }
        if !common.isEmpty && !clientTLS && !peerTLS {
            out.append("TLS flags \(common.map { "--\($0)" }.joined(separator: ", ")) have no effect: no client or peer URL is https://")
        }
        return out
    }

    // MARK: Help

    public static func usage() -> String {
        var out = """
        Usage: swetcd [flags]

        Start a swetcd member (an etcd-compatible server). Every flag may also be set by the
        environment variable ETCD_<FLAG> (upper case, '-' as '_'), or all settings by an etcd
        YAML config file given with --config-file (flags and environment are then ignored).

          --config-file PATH
                Path to the server configuration file (etcd's YAML keys).
          --version
                Print the version and exit.

        """
        for spec in FlagTable.all {
            let arg = spec.kind == .bool ? "" : " VALUE"
            let def = spec.defaultText.isEmpty ? "" : " (default \(spec.defaultText))"
            out += "  --\(spec.name)\(arg)\n        \(spec.help)\(def)\n"
        }
        return out
    }
}
