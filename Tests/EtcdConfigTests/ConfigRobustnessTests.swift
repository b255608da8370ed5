import Foundation
import Testing
@testable import EtcdConfig

/// Loads a configuration; returns the error text, or nil when it loads.
private func refusal(_ args: [String], env: [String: String] = [:]) -> String? {
    do {
        _ = try ConfigLoader.load(arguments: args, environment: env)
        return nil
    } catch {
        return "\(error)"
    }
}

private func loaded(_ args: [String], env: [String: String] = [:]) throws -> LoadedConfig {
    guard case .run(let l) = try ConfigLoader.load(arguments: args, environment: env) else {
        throw ConfigError("expected a configuration to run with")
    }
    return l
}

/// Writes `yaml` to a temporary file and returns its path.
private func yamlFile(_ yaml: String) throws -> String {
    let path = NSTemporaryDirectory() + "swetcd-config-\(UUID().uuidString.prefix(8)).yaml"
    try yaml.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

private let huge = "18446744073709551615"        // UInt64.max
private let tooHuge = "18446744073709551616"     // UInt64.max + 1
private let int64Max = "9223372036854775807"

/// Out-of-range values, unsupported flags and the seeded random driver for the loader: every
/// input ends in a configuration or a `ConfigError` naming the setting, never in a trap.
@Suite struct ConfigRobustnessTests {
    /// Each of these trapped or was accepted before; now each is refused naming its flag.
    @Test(arguments: [
        ("max-request-bytes", huge), ("max-request-bytes", "0"), ("max-request-bytes", "-1"),
        ("max-request-bytes", "1e30"), ("max-request-bytes", "2147483648"),
        ("max-txn-ops", huge), ("max-txn-ops", "0"), ("max-txn-ops", int64Max),
        ("max-wals", huge), ("max-wals", int64Max), ("max-wals", tooHuge), ("max-wals", "-1"),
        ("max-snapshots", huge), ("max-snapshots", "9223372036854775808"),
        ("snapshot-count", huge), ("snapshot-count", "0"),
        ("heartbeat-interval", huge), ("heartbeat-interval", "4611686018427387904"), ("heartbeat-interval", "0"),
        ("election-timeout", huge), ("election-timeout", "50001"), ("election-timeout", "0"),
        ("quota-backend-bytes", "9223372036854775808"), ("quota-backend-bytes", "1e30"),
        ("max-concurrent-streams", huge), ("max-concurrent-streams", "4294967296"),
        ("max-learners", huge), ("experimental-max-learners", "0"),
        ("auto-compaction-retention", int64Max), ("auto-compaction-retention", "2562048"),
        ("auto-compaction-retention", "87601"), ("auto-compaction-retention", "-1"),
        ("auto-compaction-retention", "2562047h"), ("auto-compaction-retention", "1e30h"),
        ("auto-compaction-retention", "99999999999999999999h"),
        ("grpc-keepalive-min-time", "-1s"), ("grpc-keepalive-interval", "2562047h"),
        ("grpc-keepalive-timeout", "1e30s"), ("grpc-keepalive-interval", "87601h"),
        ("backend-batch-interval", "-5ms"), ("experimental-corrupt-check-time", "99999999999h"),
        ("experimental-watch-progress-notify-interval", "-1ns"),
        ("bcrypt-cost", "3"), ("bcrypt-cost", "32"), ("self-signed-cert-validity", huge),
    ])
    func outOfRangeFlagIsRefusedNamingIt(flag: String, value: String) {
        let text = refusal(["--\(flag)=\(value)"])
        #expect(text?.contains(flag) == true, "--\(flag)=\(value): \(text ?? "accepted")")
    }

    @Test func theSameValuesThroughTheEnvironment() {
        for (name, value) in [("ETCD_MAX_WALS", huge), ("ETCD_MAX_REQUEST_BYTES", "0"),
                              ("ETCD_HEARTBEAT_INTERVAL", huge), ("ETCD_AUTO_COMPACTION_RETENTION", int64Max),
                              ("ETCD_GRPC_KEEPALIVE_TIMEOUT", "-3s")] {
            let text = refusal([], env: [name: value])
            #expect(text?.contains(name) == true || text?.contains("auto-compaction-retention") == true,
                    "\(name)=\(value): \(text ?? "accepted")")
        }
    }

    /// YAML numbers etcd's decoder would refuse: infinities, NaN, 1e30, negatives.
    @Test(arguments: [
        ("heartbeat-interval", ".inf"), ("election-timeout", "1e30"), ("max-request-bytes", "-1"),
        ("max-wals", "1.0e+30"), ("snapshot-count", ".nan"), ("grpc-keepalive-interval", ".inf"),
        ("grpc-keepalive-timeout", "-.inf"), ("grpc-keepalive-min-time", "1e30"),
        ("backend-batch-interval", ".nan"), ("experimental-corrupt-check-time", "9.3e18"),
        ("quota-backend-bytes", ".inf"), ("max-txn-ops", "18446744073709551616"),
        ("auto-compaction-retention", "1e30"), ("max-snapshots", "-.inf"),
    ])
    func yamlOutOfRangeIsRefusedNamingTheKey(key: String, value: String) throws {
        let path = try yamlFile("\(key): \(value)\n")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let text = refusal(["--config-file", path])
        #expect(text?.contains(key) == true, "\(key): \(value): \(text ?? "accepted")")
    }

    @Test func boundsThemselvesAreAccepted() throws {
        let l = try loaded([
            "--max-request-bytes=\(FlagTable.maxRequestBytes)", "--max-txn-ops=\(FlagTable.maxCount)",
            "--max-wals=0", "--max-snapshots=\(FlagTable.maxCount)", "--snapshot-count=1",
            "--heartbeat-interval=10000", "--election-timeout=50000", "--quota-backend-bytes=\(int64Max)",
            "--grpc-keepalive-interval=87600h", "--grpc-keepalive-timeout=0", "--auto-compaction-retention=87600",
            "--max-concurrent-streams=4294967295",
        ])
        #expect(l.config.maxReceiveMessageBytes == Int(Int32.max))
        #expect(l.autoCompaction == .periodic(.seconds(87600 * 3600)))
        let path = try yamlFile("grpc-keepalive-interval: 1000000000\nheartbeat-interval: 200\nelection-timeout: 2000\n")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let y = try loaded(["--config-file", path])
        #expect(y.config.grpcKeepaliveInterval == .seconds(1))
        #expect(y.config.electionTimeoutMs == 2000)
    }

    @Test func derivedValuesNeverTrapEvenWhenSetDirectly() {
        var c = ServerConfig()
        c.maxRequestBytes = .max
        #expect(c.maxReceiveMessageBytes == Int(FlagTable.maxRequestBytes) + 512 * 1024)
    }

    /// Flags whose feature swetcd lacks are refused loudly when they ask for it, and accepted
    /// at etcd's default value.
    @Test(arguments: [
        (["--listen-client-http-urls=http://127.0.0.1:2399"], "--listen-client-http-urls"),
        (["--discovery=https://discovery.etcd.io/x", "--discovery-fallback=proxy"], "--discovery-fallback"),
        (["--enable-pprof"], "--enable-pprof"),
        (["--socket-reuse-port"], "--socket-reuse-port"),
        (["--socket-reuse-address=true"], "--socket-reuse-address"),
        (["--experimental-compact-hash-check-enabled"], "--experimental-compact-hash-check-enabled"),
        (["--metrics=extensive"], "--metrics"),
        (["--log-format=console"], "--log-format"),
        (["--experimental-warning-apply-duration=1s"], "--experimental-warning-apply-duration"),
        (["--listen-metrics-urls=https://127.0.0.1:2381"], "--listen-metrics-urls"),
        (["--listen-metrics-urls=unix://m:1"], "--listen-metrics-urls"),
    ])
    func unsupportedFeaturesAreRefused(args: [String], flag: String) {
        let text = refusal(args)
        #expect(text?.contains(flag) == true, "\(args): \(text ?? "accepted")")
    }

    @Test func unsupportedFlagsAtTheirDefaultAreAccepted() throws {
        let l = try loaded([
            "--force-new-cluster=false", "--listen-client-http-urls=", "--enable-pprof=false",
            "--socket-reuse-port=false", "--metrics=basic", "--log-format=json",
            "--experimental-warning-apply-duration=100ms", "--experimental-compact-hash-check-enabled=false",
        ])
        #expect(l.warnings.isEmpty, "\(l.warnings)")
    }

    @Test func implementedFlagsLoad() throws {
        let l = try loaded(["--wal-dir=/var/lib/wal", "--listen-metrics-urls=http://127.0.0.1:2381,http://[::1]:2382",
                            "--enable-grpc-gateway=false"])
        #expect(l.config.walDir == "/var/lib/wal")
        #expect(l.config.listenMetricsURLs.count == 2)
        #expect(!l.config.enableGRPCGateway)
    }

    @Test func tlsFlagsOnPlainURLsAreWarnedAboutByName() throws {
        let l = try loaded(["--cert-file=/c.pem", "--key-file=/k.pem", "--peer-trusted-ca-file=/ca.pem",
                            "--cipher-suites=TLS_AES_128_GCM_SHA256"])
        let text = l.warnings.joined(separator: "\n")
        for flag in ["--cert-file", "--key-file", "--peer-trusted-ca-file", "--cipher-suites"] {
            #expect(text.contains(flag), "\(flag) not in \(l.warnings)")
        }
        #expect(l.warnings.count == 3)
    }

    @Test func flagsSwetcdCannotTurnOffAreWarnedAbout() throws {
        let l = try loaded(["--experimental-enable-lease-checkpoint=false", "--initial-election-tick-advance=true"])
        let text = l.warnings.joined(separator: "\n")
        #expect(text.contains("--experimental-enable-lease-checkpoint=false has no effect"))
        #expect(text.contains("--initial-election-tick-advance has no effect"))
        #expect(try loaded(["--experimental-enable-lease-checkpoint", "--initial-election-tick-advance=false"]).warnings.isEmpty)
    }

    @Test func ignoredFlagsAreWarnedAboutAndTokenTypesChecked() throws {
        let l = try loaded(["--enable-v2=false", "--proxy=off", "--auth-token=simple", "--bcrypt-cost=4"])
        let text = l.warnings.joined(separator: "\n")
        #expect(text.contains("--enable-v2 has no effect"))
        #expect(text.contains("--proxy has no effect"))
        #expect(!text.contains("auth-token") && !text.contains("bcrypt"))
        #expect(throws: ConfigError.self) { try loaded(["--auth-token=other"]) }
    }

    // MARK: Seeded random driver

    /// Values chosen to hit edges: extremes of every integer width, signs, floats, infinities,
    /// durations at and past the limits, empty and odd strings.
    static let extremes: [String] = [
        "0", "1", "-1", "5", "100", "1000", "127", "128", "255", "65535", "65536",
        "2147483647", "2147483648", "4294967295", "4294967296", int64Max, "-9223372036854775808",
        "9223372036854775808", huge, tooHuge, "99999999999999999999999999", "1e30", "-1e30",
        "1.5", ".5", "0x10", "inf", "-inf", "NaN", "+5", "", " ", "true", "false", "t", "0s", "1ns",
        "-1ns", "300ms", "1.5h", "2562047h", "2562048h", "87600h", "87601h", "9223372036s",
        "1e30h", "1h-1s", "µs", "5µs", "1..5s", "h", "http://127.0.0.1:2379", "https://[::1]:0",
        "unix://x:1", "a=http://127.0.0.1:1", "default=http://localhost:2380", "x,y,,z", "\u{0}",
        "periodic", "revision", "new", "existing", "basic", "json", "zap",
    ]

    static let yamlScalars: [String] = [
        ".inf", "-.inf", ".nan", "1e30", "-1e30", "1.0e+400", "9.3e18", "-9.3e18", "null", "~",
        "true", "0", "-1", int64Max, huge, tooHuge, "1.5", "\"1h\"", "'-5s'", "[1, 2]", "{a: 1}",
        "[]", "\"\"", "0x7fffffffffffffff", "0o777", "1_000", "2001-01-01",
    ]

    /// A generator that replays: splitmix64.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func randomValue(_ rng: inout SplitMix) -> String {
        switch rng.next() % 4 {
        case 0: return String(rng.next())
        case 1: return String(Int64(bitPattern: rng.next()) >> Int64(rng.next() % 64))
        case 2: return extremes.randomElement(using: &rng)! + (rng.next() % 5 == 0 ? ["h", "ms", "s", "ns"].randomElement(using: &rng)! : "")
        default: return extremes.randomElement(using: &rng)!
        }
    }

    /// Feeds random flag sets, environments and YAML documents to the loader (`CONFIG_FUZZ_SEED`
    /// replays one seed, `CONFIG_FUZZ_ITERATIONS` sets the budget, 3000 by default). A trap
    /// would kill the test process; a thrown error must be a `ConfigError` (a clear message).
    @Test func randomInputsLoadOrFailCleanly() throws {
        let env = ProcessInfo.processInfo.environment
        let seed = env["CONFIG_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5eed_c0f1
        let iterations = env["CONFIG_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 3000
        var rng = SplitMix(state: seed)
        let specs = FlagTable.all
        let path = NSTemporaryDirectory() + "swetcd-config-fuzz-\(UUID().uuidString.prefix(8)).yaml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var loadedCount = 0
        for iteration in 0..<iterations {
            var args: [String] = []
            var environment: [String: String] = [:]
            let mode = rng.next() % 3
            for _ in 0..<(1 + rng.next() % 4) {
                let spec = specs.randomElement(using: &rng)!
                let value = Self.randomValue(&rng)
                switch mode {
                case 0: args.append(rng.next() % 2 == 0 ? "--\(spec.name)=\(value)" : "-\(spec.name)=\(value)")
                case 1: environment[spec.environmentName] = value
                default:
                    let scalar = rng.next() % 2 == 0 ? Self.yamlScalars.randomElement(using: &rng)! : "\"\(value)\""
                    let doc = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "")
                    try (doc + "\(spec.name): \(scalar)\n").write(toFile: path, atomically: false, encoding: .utf8)
                }
            }
            if mode == 2 { args = ["--config-file", path] }
            do {
                if case .run(let l) = try ConfigLoader.load(arguments: args, environment: environment) {
                    loadedCount += 1
                    // What the server derives from a loaded configuration must not trap either.
                    _ = l.config.maxReceiveMessageBytes
                    _ = l.config.effectiveQuotaBytes
                    _ = Int(exactly: l.config.maxWALs)!
                    _ = Int(exactly: l.config.maxSnapshots)!
                    _ = Int(exactly: l.config.maxTxnOps)!
                    _ = Int64(exactly: l.config.electionTimeoutMs * 2)!
                    #expect(l.config.grpcKeepaliveInterval >= .zero && l.config.grpcKeepaliveInterval <= FlagValues.maxDuration)
                }
            } catch let e as ConfigError {
                #expect(!e.description.isEmpty)
            } catch {
                Issue.record("seed \(seed) iteration \(iteration): \(args) \(environment): not a ConfigError: \(error)")
            }
            if mode == 2 { try? FileManager.default.removeItem(atPath: path) }
        }
        // The generator must reach configurations that load, or it tests only refusals.
        #expect(loadedCount > iterations / 20, "only \(loadedCount) of \(iterations) loaded (seed \(seed))")
    }
}
