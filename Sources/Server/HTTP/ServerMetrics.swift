public import Prometheus
import Synchronization

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
    public var leases: Int = 0
    /// The backend quota in force (0 when disabled), and auto-compactions proposed so far.
    public var quotaBackendBytes: Int64 = 0
    public var autoCompactions: Int = 0

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
    private let leases: Gauge
    private let quotaBackendBytes: Gauge
    private let autoCompactions: Counter
    private let autoCompactionsRendered = Mutex(0)

    /// etcd's disk latency buckets: 1 ms doubling 14 times (up to about 8 s).
    static let diskBuckets: [Duration] = (0..<14).map { .microseconds(1000 << $0) }

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
        leases = registry.makeGauge(descriptor: .etcd("swetcd_server_leases", "The number of granted leases on this member."))
        quotaBackendBytes = registry.makeGauge(descriptor: .etcd("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes."))
        autoCompactions = registry.makeCounter(descriptor: .etcd("swetcd_server_auto_compactions_total", "The number of compactions proposed by auto-compaction on this member."))
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

    /// A leader change was observed (including the first leader).
    public func leaderChanged() { leaderChanges.increment() }
    /// A proposal failed (timeout, no leader, dropped).
    public func proposalFailed() { proposalsFailed.increment() }
    /// One WAL fsync took `duration`.
    public func walFsync(_ duration: Duration) { walFsyncDuration.record(duration) }
    /// One backend commit took `duration`.
    public func backendCommit(_ duration: Duration) { backendCommitDuration.record(duration) }

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
        leases.set(Int64(sample.leases))
        quotaBackendBytes.set(sample.quotaBackendBytes)
        let newCompactions = autoCompactionsRendered.withLock { seen in
            defer { seen = max(seen, sample.autoCompactions) }
            return max(0, sample.autoCompactions - seen)
        }
        if newCompactions > 0 { autoCompactions.increment(by: Int64(newCompactions)) }
        return registry.emitToString()
    }
}

extension MetricNameDescriptor {
    /// A descriptor for a metric whose full name is `name` (etcd's names carry their unit).
    static func etcd(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }
}
