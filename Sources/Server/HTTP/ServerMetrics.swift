public import Prometheus
public import Raft

/// Values sampled when /metrics is scraped (gauges the server reads from its own state rather
/// than updating on every change).
public struct MetricsSample: Sendable, Equatable {
    /// Whether this member currently knows a leader.
    public var hasLeader: Bool = false
    /// Whether this member is the leader.
    public var isLeader: Bool = false
    /// Proposals waiting for their apply result.
    public var proposalsPending: Int = 0
    /// Raft log index committed / applied on this member.
    public var committedIndex: UInt64 = 0
    public var appliedIndex: UInt64 = 0
    /// Backend size on disk and in use, in bytes.
    public var dbTotalSize: Int64 = 0
    public var dbTotalSizeInUse: Int64 = 0
    /// Keys in the keyspace (latest revision), watchers, granted leases.
    public var keys: Int = 0
    public var watchers: Int = 0
    /// Watchers behind the current revision (catching up, or parked because their client
    /// does not read fast enough).
    public var slowWatchers: Int = 0
    public var leases: Int = 0
    /// Whether this member is a learner.
    public var isLearner: Bool = false
    /// The keyspace's current and compacted revisions.
    public var currentRevision: Int64 = 0
    public var compactRevision: Int64 = 0
    /// The backend quota in force (0 when disabled).
    public var quotaBackendBytes: Int64 = 0

    /// A sample with everything zero.
    public init() {}
}

/// etcd's Prometheus metrics (names as in etcd 3.5), rendered in the text exposition format.
///
/// Counters and histograms are updated by the server as things happen (`leaderChanged()`,
/// `proposalCommitted()`, `walFsync(_:)`, ...); gauges are set from a `MetricsSample` taken at
/// scrape time (`render(sample:)`).
public final class ServerMetrics: Sendable {
    /// The registry behind /metrics (other components may add their own metrics to it).
    public let registry: PrometheusCollectorRegistry

    private let hasLeader: Gauge
    private let isLeader: Gauge
    private let leaderChanges: Counter
    private let proposalsCommitted: Gauge
    private let proposalsApplied: Gauge
    private let proposalsPending: Gauge
    private let proposalsFailed: Counter
    private let walFsyncDuration: DurationHistogram
    private let backendCommitDuration: DurationHistogram
    private let dbTotalSize: Gauge
    private let dbTotalSizeInUse: Gauge
    private let mvccKeys: Gauge
    private let mvccWatchers: Gauge
    private let mvccSlowWatchers: Gauge
    private let leases: Gauge
    private let isLearner: Gauge
    private let currentRevision: Gauge
    private let compactRevision: Gauge
    private let leaseGrantedTotal: Counter
    private let leaseRevokedTotal: Counter
    private let leaseRenewedTotal: Counter
    private let leaseExpiredTotal: Counter
    private let leaseTTL: ValueHistogram
    private let quotaBackendBytes: Gauge
    private let autoCompactions: Counter
    private let raftRejected: [MessageRejection: Counter]

    /// etcd's disk latency buckets: 1 ms doubling 14 times (up to about 8 s).
    static let diskBuckets: [Duration] = (0..<14).map { .microseconds(1000 << $0) }
    /// etcd's lease TTL buckets: 1 s doubling 24 times (about three months).
    static let leaseTTLBuckets: [Double] = (0..<24).map { Double(1 << $0) }

    /// Metrics for member `memberID` (hex in `etcd_server_id`'s label) running server version
    /// `serverVersion` in a cluster at `clusterVersion`.
    public init(memberID: UInt64, serverVersion: String = EtcdVersion.server,
                clusterVersion: String = EtcdVersion.cluster,
                registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        hasLeader = registry.makeGauge(descriptor: .etcd("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."))
        isLeader = registry.makeGauge(descriptor: .etcd("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."))
        leaderChanges = registry.makeCounter(descriptor: .etcd("etcd_server_leader_changes_seen_total", "The number of leader changes seen."))
        proposalsCommitted = registry.makeGauge(descriptor: .etcd("etcd_server_proposals_committed_total", "The total number of consensus proposals committed."))
        proposalsApplied = registry.makeGauge(descriptor: .etcd("etcd_server_proposals_applied_total", "The total number of consensus proposals applied."))
        proposalsPending = registry.makeGauge(descriptor: .etcd("etcd_server_proposals_pending", "The current number of pending proposals to commit."))
        proposalsFailed = registry.makeCounter(descriptor: .etcd("etcd_server_proposals_failed_total", "The total number of failed proposals seen."))
        walFsyncDuration = registry.makeDurationHistogram(descriptor: .etcd("etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL."), buckets: Self.diskBuckets)
        backendCommitDuration = registry.makeDurationHistogram(descriptor: .etcd("etcd_disk_backend_commit_duration_seconds", "The latency distributions of commit called by backend."), buckets: Self.diskBuckets)
        dbTotalSize = registry.makeGauge(descriptor: .etcd("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."))
        dbTotalSizeInUse = registry.makeGauge(descriptor: .etcd("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes."))
        mvccKeys = registry.makeGauge(descriptor: .etcd("etcd_debugging_mvcc_keys_total", "Total number of keys."))
        mvccWatchers = registry.makeGauge(descriptor: .etcd("etcd_debugging_mvcc_watcher_total", "Total number of watchers."))
        mvccSlowWatchers = registry.makeGauge(descriptor: .etcd("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers."))
        leases = registry.makeGauge(descriptor: .etcd("swetcd_server_leases", "The number of granted leases on this member."))
        isLearner = registry.makeGauge(descriptor: .etcd("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise."))
        currentRevision = registry.makeGauge(descriptor: .etcd("etcd_debugging_mvcc_current_revision", "The current revision of store."))
        compactRevision = registry.makeGauge(descriptor: .etcd("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store."))
        leaseGrantedTotal = registry.makeCounter(descriptor: .etcd("etcd_debugging_lease_granted_total", "The total number of granted leases."))
        leaseRevokedTotal = registry.makeCounter(descriptor: .etcd("etcd_debugging_lease_revoked_total", "The total number of revoked leases."))
        leaseRenewedTotal = registry.makeCounter(descriptor: .etcd("etcd_debugging_lease_renewed_total", "The number of renewed leases seen by the leader."))
        leaseExpiredTotal = registry.makeCounter(descriptor: .etcd("etcd_server_lease_expired_total", "The total number of expired leases."))
        leaseTTL = registry.makeValueHistogram(descriptor: .etcd("etcd_debugging_lease_ttl_total", "Bucketed histogram of lease TTLs."), buckets: Self.leaseTTLBuckets)
        quotaBackendBytes = registry.makeGauge(descriptor: .etcd("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes."))
        autoCompactions = registry.makeCounter(descriptor: .etcd("swetcd_server_auto_compactions_total", "The number of compactions proposed by auto-compaction on this member."))
        var rejected: [MessageRejection: Counter] = [:]
        for r in MessageRejection.allCases {
            rejected[r] = registry.makeCounter(descriptor: .etcd("swetcd_raft_rejected_messages_total", "Raft messages from peers refused before Raft acted on them, by reason."), labels: [("reason", r.rawValue)])
        }
        raftRejected = rejected
        registry.makeGauge(descriptor: .etcd("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID."), labels: [("server_id", String(memberID, radix: 16))])
            .set(to: 1)
        registry.makeGauge(descriptor: .etcd("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version."), labels: [("server_version", serverVersion)])
            .set(to: 1)
        registry.makeGauge(descriptor: .etcd("etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version"), labels: [("cluster_version", Self.majorMinor(clusterVersion))])
            .set(to: 1)
    }

    /// "3.5.0" → "3.5" (etcd labels the cluster version with major.minor).
    static func majorMinor(_ version: String) -> String {
        version.split(separator: ".").prefix(2).joined(separator: ".")
    }

    /// Raft refused a peer's message (`reason` says why).
    public func raftMessageRejected(_ reason: MessageRejection) { raftRejected[reason]?.increment() }
    /// A leader change was observed (including the first leader).
    public func leaderChanged() { leaderChanges.increment() }
    /// A proposal failed (timeout, no leader, dropped).
    public func proposalFailed() { proposalsFailed.increment() }
    /// One WAL fsync took `duration`.
    public func walFsync(_ duration: Duration) { walFsyncDuration.record(duration) }
    /// One backend commit took `duration`.
    public func backendCommit(_ duration: Duration) { backendCommitDuration.record(duration) }
    /// A lease with `ttl` seconds was granted (applied on this member).
    public func leaseGranted(ttl: Int64) {
        leaseGrantedTotal.increment()
        leaseTTL.record(Double(ttl))
    }
    /// A lease was revoked (applied on this member), by a client or by expiry.
    public func leaseRevoked() { leaseRevokedTotal.increment() }
    /// The leader renewed a lease (a keep-alive).
    public func leaseRenewed() { leaseRenewedTotal.increment() }
    /// The leader found `count` leases expired and proposed their revocation.
    public func leasesExpired(_ count: Int) { leaseExpiredTotal.increment(by: Int64(count)) }
    /// Auto-compaction completed a compaction proposed by this member.
    public func autoCompacted() { autoCompactions.increment() }
    /// A peer connection or call was refused (`reason`: a short code such as
    /// `tls_handshake`, `certificate_cn`, `identity_mismatch`, `not_member`, `removed`).
    public func peerRefused(_ reason: String) {
        registry.makeCounter(descriptor: .etcd("swetcd_network_peer_refused_total", "Peer connections and calls refused, by reason."),
                             labels: [("reason", reason)]).increment()
    }

    /// Sets the sampled gauges and renders every metric in Prometheus text format.
    public func render(sample: MetricsSample) -> String {
        hasLeader.set(to: sample.hasLeader ? 1 : 0)
        isLeader.set(to: sample.isLeader ? 1 : 0)
        proposalsCommitted.set(Double(sample.committedIndex))
        proposalsApplied.set(Double(sample.appliedIndex))
        proposalsPending.set(Int64(sample.proposalsPending))
        dbTotalSize.set(sample.dbTotalSize)
        dbTotalSizeInUse.set(sample.dbTotalSizeInUse)
        mvccKeys.set(Int64(sample.keys))
        mvccWatchers.set(Int64(sample.watchers))
        mvccSlowWatchers.set(Int64(sample.slowWatchers))
        leases.set(Int64(sample.leases))
        quotaBackendBytes.set(sample.quotaBackendBytes)
        isLearner.set(to: sample.isLearner ? 1 : 0)
        currentRevision.set(sample.currentRevision)
        compactRevision.set(sample.compactRevision)
        return Self.goNumbers(registry.emitToString())
    }

    /// Rewrites every sample value (and histogram `le` label) of exposition text the way
    /// etcd's Go client prints floats: shortest digits, `1` not `1.0`, exponent form from 1e+06
    /// (`2.4576e+07`) and below 1e-04, `+Inf`/`-Inf`/`NaN`.
    static func goNumbers(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            guard !line.isEmpty, line.first != "#", let space = line.lastIndex(of: " ") else { return String(line) }
            var head = String(line[..<space])
            if let le = head.range(of: "le=\""), let close = head[le.upperBound...].firstIndex(of: "\""),
               let bound = Double(head[le.upperBound..<close]) {
                head.replaceSubrange(le.upperBound..<close, with: goFloat(bound))
            }
            let value = line[line.index(after: space)...]
            return head + " " + (Double(value).map(goFloat) ?? String(value))
        }.joined(separator: "\n")
    }

    /// `v` formatted as Go's `strconv.FormatFloat(v, 'g', -1, 64)` (what Prometheus' Go client
    /// writes), with Prometheus' spelling of infinities.
    static func goFloat(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == 0 { return v.sign == .minus ? "-0" : "0" }
        // Swift's description has the shortest round-trip digits; take digits and exponent.
        let text = v.magnitude.description
        let parts = text.split(separator: "e")
        let exponent = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
        let mantissa = parts[0]
        let intPart = mantissa.split(separator: ".", omittingEmptySubsequences: false)[0]
        var digits = Array(mantissa.filter { $0 != "." })
        // The decimal point sits after `point` digits of `digits`.
        var point = intPart.count + exponent
        while digits.first == "0", digits.count > 1 {
            digits.removeFirst()
            point -= 1
        }
        while digits.last == "0", digits.count > 1 { digits.removeLast() }
        let sign = v < 0 ? "-" : ""
        let exp = point - 1
        if exp < -4 || exp >= 6 {
            var s = String(digits[0])
            if digits.count > 1 { s += "." + String(digits[1...]) }
            let e = abs(exp)
            return sign + s + (exp < 0 ? "e-" : "e+") + (e < 10 ? "0" : "") + String(e)
        }
        if point <= 0 {
            return sign + "0." + String(repeating: "0", count: -point) + String(digits)
        }
        if point >= digits.count {
            return sign + String(digits) + String(repeating: "0", count: point - digits.count)
        }
        return sign + String(digits[..<point]) + "." + String(digits[point...])
    }
}

extension MetricNameDescriptor {
    /// A descriptor for a metric whose full name is `name` (etcd's names carry their unit).
    static func etcd(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }
}
