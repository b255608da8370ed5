import Testing
@testable import Server

@Suite struct MetricsTests {
    @Test func rendersEtcdNamesWithSampledGauges() {
        let metrics = ServerMetrics(memberID: 0x8e9e05c52164694d)
        var sample = MetricsSample()
        sample.hasLeader = true
        sample.isLeader = true
        sample.committedIndex = 42
        sample.keys = 7
        sample.dbTotalSize = 16384
        let text = metrics.render(sample: sample)
        for name in ["etcd_server_has_leader 1", "etcd_server_is_leader 1", "etcd_server_proposals_committed_total 42",
                     "etcd_debugging_mvcc_keys_total 7", "etcd_mvcc_db_total_size_in_bytes 16384",
                     "etcd_server_leader_changes_seen_total 0", "etcd_server_proposals_pending 0",
                     "etcd_server_proposals_failed_total 0", "etcd_mvcc_db_total_size_in_use_in_bytes 0",
                     "etcd_debugging_mvcc_watcher_total 0", "etcd_server_proposals_applied_total 0",
                     #"etcd_server_id{server_id="8e9e05c52164694d"} 1"#,
                     #"etcd_cluster_version{cluster_version="3.5"} 1"#,
                     "# TYPE etcd_disk_wal_fsync_duration_seconds histogram",
                     "# TYPE etcd_disk_backend_commit_duration_seconds histogram"] {
            #expect(text.contains(name), "missing \(name)")
        }
    }

    @Test func countersAndHistogramsAccumulate() {
        let metrics = ServerMetrics(memberID: 1)
        metrics.leaderChanged()
        metrics.leaderChanged()
        metrics.proposalFailed()
        metrics.walFsync(.microseconds(1500))   // falls in the 2 ms bucket, not the 1 ms one
        metrics.backendCommit(.milliseconds(20))
        let text = metrics.render(sample: MetricsSample())
        #expect(text.contains("etcd_server_leader_changes_seen_total 2"))
        #expect(text.contains("etcd_server_proposals_failed_total 1"))
        #expect(text.contains(#"etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 0"#))
        #expect(text.contains(#"etcd_disk_wal_fsync_duration_seconds_bucket{le="0.002"} 1"#))
        #expect(text.contains("etcd_disk_wal_fsync_duration_seconds_count 1"))
        #expect(text.contains("etcd_disk_backend_commit_duration_seconds_count 1"))
    }

    @Test func clusterVersionLabelIsMajorMinor() {
        #expect(ServerMetrics.majorMinor("3.5.17") == "3.5")
        #expect(ServerMetrics.majorMinor("3") == "3")
    }
}
