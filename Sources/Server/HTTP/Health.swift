public import EtcdProto
import NIOHTTP1

/// What the health endpoints ask of the server (implemented by `EtcdServer`; a fake in tests).
public protocol HealthSource: Sendable {
    /// Whether this member knows a leader.
    var hasLeader: Bool { get }
    /// Whether this member is a learner (it serves serializable reads only).
    var isLearner: Bool { get }
    /// Alarms active in the cluster.
    func activeAlarms() -> [Etcdserverpb_AlarmType]
    /// A serializable read of the local store (fails when the store is unusable).
    func serializableRead() async throws
    /// Completes when a linearizable read would be served (ReadIndex barrier); throws if not.
    func linearizableRead() async throws
}

/// etcd 3.5's /health, /livez and /readyz.
public struct HealthEndpoints: Sendable {
    let source: any HealthSource
    /// How long the read checks may take before the member counts as unhealthy.
    let timeout: Duration

    /// Health checks over `source`, each read bounded by `timeout` (etcd: 2 s for /health).
    public init(source: any HealthSource, timeout: Duration = .seconds(2)) {
        self.source = source
        self.timeout = timeout
    }

    /// Adds GET /health, /livez and /readyz to `router`.
    public func register(in router: inout HTTPRouter) {
        let me = self
        router.add("/health") { await me.health($0) }
        router.add("/livez") { await me.probe($0, name: "livez", checks: me.livezChecks) }
        router.add("/readyz") { await me.probe($0, name: "readyz", checks: me.readyzChecks) }
    }

    // MARK: /health

    /// etcd's /health: `{"health":"true","reason":""}` (200) or `"false"` with a reason (503).
    func health(_ request: HTTPRequest) async -> HTTPResponse {
        let excluded = Set(request.queryValues("exclude"))
        let serializable = request.queryValues("serializable").contains("true")
        let reason = await healthProblem(excludedAlarms: excluded, serializable: serializable)
        let healthy = reason == nil
        let body = "{\"health\":\"\(healthy)\",\"reason\":\"\(Self.jsonEscaped(reason ?? ""))\"}"
        return .json(healthy ? .ok : .serviceUnavailable, body)
    }

    /// nil when healthy, else etcd's reason text.
    func healthProblem(excludedAlarms: Set<String>, serializable: Bool) async -> String? {
        for alarm in source.activeAlarms() {
            let name = Self.alarmName(alarm)
            // A corrupt member is never healthy, whatever the caller excludes.
            if alarm != .corrupt, excludedAlarms.contains(name) { continue }
            return "ALARM \(name)"
        }
        guard source.hasLeader else { return "RAFT NO LEADER" }
        let source = self.source
        let failure: String?
        if serializable {
            failure = await bounded { try await source.serializableRead() }
        } else {
            failure = await bounded { try await source.linearizableRead() }
        }
        if let error = failure {
            return serializable ? "RANGE ERROR:\(error)" : "QGET ERROR:\(error)"
        }
        return nil
    }

    // MARK: /livez, /readyz

    struct Check: Sendable {
        let name: String
        /// nil: ok; else the failure reason.
        let run: @Sendable () async -> String?
        /// When it returns a reason, the check is skipped (passes) with that reason instead of running.
        var skip: @Sendable () -> String? = { nil }
    }

    var livezChecks: [Check] {
        [Check(name: "serializable_read") { [self] in await bounded { try await source.serializableRead() } }]
    }

    var readyzChecks: [Check] {
        [
            Check(name: "data_corruption") { [source] in
                source.activeAlarms().contains(.corrupt) ? "alarm activated: CORRUPT" : nil
            },
            Check(name: "serializable_read") { [self] in await bounded { try await source.serializableRead() } },
            // A learner cannot serve linearizable reads (etcd refuses them on a learner), so it
            // would never be ready and a rolling StatefulSet would wait forever for it. On a
            // learner, ready means ready for what a learner serves: serializable reads of its
            // copy, with a leader it follows (no CORRUPT alarm, checked above).
            Check(name: "linearizable_read",
                  run: { [self] in
                      if source.isLearner { return source.hasLeader ? nil : "RAFT NO LEADER" }
                      return await bounded { try await source.linearizableRead() }
                  },
                  skip: { [source] in source.isLearner && source.hasLeader ? "learner" : nil }),
        ]
    }

    /// The Kubernetes-style probe etcd 3.5 serves: plain "ok", or per-check lines with
    /// `?verbose`; `?exclude=<check>` skips a check; 503 with "<name> check failed" on failure.
    func probe(_ request: HTTPRequest, name: String, checks: [Check]) async -> HTTPResponse {
        let verbose = request.query.split(separator: "&").contains { $0 == "verbose" || $0.hasPrefix("verbose=") }
        var excluded = Set(request.queryValues("exclude"))
        var lines: [String] = []
        var failed = false
        for check in checks {
            if excluded.remove(check.name) != nil {
                lines.append("[+]\(check.name) excluded: ok")
                continue
            }
            if let why = check.skip() {
                lines.append("[+]\(check.name) skipped: \(why)")
                continue
            }
            if let reason = await check.run() {
                failed = true
                lines.append("[-]\(check.name) failed: \(reason)")
            } else {
                lines.append("[+]\(check.name) ok")
            }
        }
        if failed {
            return .text(.serviceUnavailable, lines.joined(separator: "\n") + "\n\(name) check failed\n")
        }
        if !excluded.isEmpty {
            lines.append("warn: some health checks cannot be excluded: no matches for \(excluded.sorted().map { "\"\($0)\"" }.joined(separator: ","))")
        }
        if verbose {
            return .text(.ok, lines.joined(separator: "\n") + "\n\(name) check passed\n")
        }
        return .text(.ok, "ok")
    }

    // MARK: Helpers

    /// Runs `body` with the timeout; nil on success, else the error text.
    func bounded(_ body: @escaping @Sendable () async throws -> Void) async -> String? {
        let timeout = self.timeout
        return await withTaskGroup(of: String?.self) { group in
            group.addTask {
                do { try await body(); return nil } catch { return "\(error)" }
            }
            group.addTask {
                do { try await Task.sleep(for: timeout) } catch { return nil }
                return "context deadline exceeded"
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    static func alarmName(_ alarm: Etcdserverpb_AlarmType) -> String {
        switch alarm {
        case .none: return "NONE"
        case .nospace: return "NOSPACE"
        case .corrupt: return "CORRUPT"
        case .UNRECOGNIZED(let n): return "UNRECOGNIZED(\(n))"
        }
    }

    static func jsonEscaped(_ s: String) -> String {
        var out = ""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where ch.value < 0x20:
                let hex = String(ch.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }
}
