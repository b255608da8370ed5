import EtcdProto
import EtcdSnapshot
import Foundation
import LMDBBackend
public import GRPCCore
import MVCC

// The server side of Maintenance, Cluster, Lock, Election and the health checks, plus the
// services and HTTP routes built on them (the API layer's entry points for the listener).

extension EtcdServer: MaintenanceBackend {
    public func responseHeader() -> Etcdserverpb_ResponseHeader { header() }

    public func status() async throws -> Etcdserverpb_StatusResponse {
        var out = Etcdserverpb_StatusResponse()
        out.header = header()
        out.version = EtcdVersion.server
        out.dbSize = try backend.fileSize()
        out.dbSizeInUse = try backend.sizeInUse()
        out.leader = leaderID
        out.raftIndex = committedIndex
        out.raftTerm = term
        out.raftAppliedIndex = appliedIndex
        out.isLearner = isLearner
        out.errors = statusErrors()
        return out
    }

    public func alarm(_ request: Etcdserverpb_AlarmRequest) async throws -> Etcdserverpb_AlarmResponse {
        try requireRoot()
        return try await proposeAlarm(request)
    }

    public func hash() async throws -> Etcdserverpb_HashResponse {
        try requireRoot()
        var out = Etcdserverpb_HashResponse()
        out.header = header()
        let backend = self.backend
        out.hash = try await HeavyWorkPool.shared.run { try backend.hash() }
        return out
    }

    public func hashKV(_ request: Etcdserverpb_HashKVRequest) async throws -> Etcdserverpb_HashKVResponse {
        try requireRoot()
        let result: (hash: UInt32, revision: Int64, compactRevision: Int64)
        let store = self.store
        let revision = request.revision
        do {
            result = try await HeavyWorkPool.shared.run { try store.hashKV(revision: revision) }
        } catch { throw EtcdError.from(error) }
        var out = Etcdserverpb_HashKVResponse()
        out.header = header(revision: result.revision)
        out.hash = result.hash
        out.compactRevision = result.compactRevision
        out.hashRevision = result.revision
        return out
    }

    /// A consistent copy of the backend in etcd's format (a bbolt file with etcd's buckets
    /// and encodings, see `EtcdBolt`), so `etcdctl snapshot status` and `snapshot restore`
    /// (and a real etcd) take it. Built in a temporary file beside the db, after a disk-space
    /// check, on the I/O pool (not the two heavy-work threads, so Hash, HashKV and compaction
    /// never wait behind a long conversion); the file is unlinked once open. At most
    /// ``SnapshotStreams/limit`` run at once; more are refused.
    public func openSnapshot() async throws -> any SnapshotReader {
        try requireRoot()
        guard snapshotStreams.acquire() else { throw EtcdError.tooManySnapshots }
        do {
            let backend = self.backend
            let directory = (backend.path as NSString).deletingLastPathComponent
            let logger = self.logger
            let started = ContinuousClock.now
            let (path, status) = try await HeavyWorkPool.io.run {
                do { return try EtcdBolt.makeSnapshot(of: backend, in: directory) } catch let e as EtcdSnapshotError {
                    throw EtcdError("etcdserver: \(e.message)", code: .resourceExhausted)
                }
            }
            logger.info("sending database snapshot to client", metadata: [
                "size-bytes": "\(status.totalSize)", "revision": "\(status.revision)", "hash": "\(status.hash)",
                "took-ms": "\(milliseconds(ContinuousClock.now - started))",
            ])
            let reader = try FileSnapshotReader(path: path, removeOnClose: true, onClose: snapshotStreams.release)
            return reader
        } catch {
            snapshotStreams.release()
            throw error
        }
    }

    /// Defragments this member's backend (as etcd: on this member only, not through Raft).
    /// Unlike etcd, reads and writes go on during the copy; they wait only for the short final
    /// swap (see `Backend.defragment()`). The blocking work runs on its own thread.
    public func defragment() async throws {
        try requireRoot()
        if raftLoop.hasExited { throw EtcdError.stopped }
        let backend = self.backend
        let logger = self.logger
        logger.info("defragmenting", metadata: ["path": "\(backend.path)"])
        let result: DefragmentResult = try await withCheckedThrowingContinuation { c in
            let thread = Thread {
                nameCurrentThread("swetcd-defrag")
                do { c.resume(returning: try backend.defragment()) } catch { c.resume(throwing: error) }
            }
            thread.name = "swetcd-defrag"
            thread.start()
        }
        logger.info("defragmented", metadata: [
            "size-before": "\(result.sizeBefore)", "size-after": "\(result.sizeAfter)",
            "copy-ms": "\(milliseconds(result.copyDuration))", "pause-ms": "\(milliseconds(result.pause))",
            "replayed-batches": "\(result.replayedBatches)", "took-ms": "\(milliseconds(result.total))",
        ])
    }

    public func moveLeader(to target: UInt64) async throws {
        try requireRoot()
        guard isLeader else { throw EtcdError.notLeader }
        guard target != memberID, members().contains(where: { $0.id == target }) else {
            throw EtcdError("etcdserver: bad leader transferee", code: .failedPrecondition)
        }
        requestLeadershipTransfer(to: target)
        let deadline = ContinuousClock.now + requestTimeout
        while leaderID != target {
            guard ContinuousClock.now < deadline else {
                throw EtcdError("etcdserver: request timed out, leader transfer took too long", code: .deadlineExceeded)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

extension EtcdServer: LockElectionBackend {
    public func nextEvents(key: [UInt8], rangeEnd: [UInt8], afterRevision: Int64) async throws -> [Mvccpb_Event] {
        // Lock and Election watch with the caller's rights (their ranges and txns are checked
        // by range/txn themselves).
        try authorize(key: Data(key), rangeEnd: Data(rangeEnd), write: false, try authInfo())
        let stream = makeWatchStream()
        defer { stream.close() }
        do {
            try stream.watch(key: key, rangeEnd: rangeEnd, startRevision: afterRevision + 1)
        } catch {
            throw EtcdError.from(error)
        }
        return try await withTaskCancellationHandler {
            while let response = await stream.next() {
                if response.canceled { throw EtcdError.compacted }
                if !response.events.isEmpty { return response.events.map(Mvccpb_Event.init) }
            }
            throw CancellationError()
        } onCancel: {
            stream.close()
        }
    }
}

extension EtcdServer: HealthSource {
    public var hasLeader: Bool { leaderID != 0 }

    public func activeAlarms() -> [Etcdserverpb_AlarmType] { alarms.types }

    /// A serializable read of this member's keyspace, as the health check's own (it carries no
    /// user, so it does not go through the API's auth check).
    public func serializableRead() async throws {
        do { _ = try store.range(RangeRequest(key: Array("health".utf8), limit: 1)) } catch { throw EtcdError.from(error) }
    }

    public func linearizableRead() async throws { try await linearizableBarrier() }
}

extension EtcdServer {
    /// The Maintenance, Cluster, Auth, Lock and Election gRPC services of this server.
    public func coordinationServices() -> [any RegistrableRPCService] {
        [
            MaintenanceService(backend: self), ClusterService(backend: self),
            AuthService(server: self),
            LockService(backend: self), ElectionService(backend: self),
        ]
    }

    /// Adds /health, /livez, /readyz, /metrics and the /v3 gateway (KV, Lease, Watch,
    /// Maintenance, Cluster, Auth, Lock, Election) to `router`.
    /// `metrics` defaults to this server's own (``metrics``).
    public func registerHTTPRoutes(in router: inout HTTPRouter, metrics: ServerMetrics? = nil, gateway: Bool = true) {
        let metrics = metrics ?? self.metrics
        HealthEndpoints(source: self).register(in: &router)
        router.add("/metrics") { [self] _ in
            .text(.ok, metrics.render(sample: metricsSample()), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        // --enable-grpc-gateway=false: no /v3/ JSON routes (they answer 404).
        guard gateway else { return }
        let kv = KVService(server: self)
        Gateway.addUnary(&router, "/v3/kv/range", kv.range(request:context:))
        Gateway.addUnary(&router, "/v3/kv/put", kv.put(request:context:))
        Gateway.addUnary(&router, "/v3/kv/deleterange", kv.deleteRange(request:context:))
        Gateway.addUnary(&router, "/v3/kv/txn", kv.txn(request:context:))
        Gateway.addUnary(&router, "/v3/kv/compaction", kv.compact(request:context:))
        let lease = LeaseService(server: self)
        Gateway.addUnary(&router, "/v3/lease/grant", lease.leaseGrant(request:context:))
        for path in ["/v3/lease/revoke", "/v3/kv/lease/revoke"] {
            Gateway.addUnary(&router, path, lease.leaseRevoke(request:context:))
        }
        for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
            Gateway.addUnary(&router, path, lease.leaseTimeToLive(request:context:))
        }
        for path in ["/v3/lease/leases", "/v3/kv/lease/leases"] {
            Gateway.addUnary(&router, path, lease.leaseLeases(request:context:))
        }
        router.add("/v3/lease/keepalive", methods: [.POST], handler: Gateway.leaseKeepAlive(lease))
        router.add("/v3/watch", methods: [.POST], handler: Gateway.watch(WatchService(server: self)))
        Gateway.register(maintenance: MaintenanceService(backend: self), in: &router)
        Gateway.register(cluster: ClusterService(backend: self), in: &router)
        Gateway.register(auth: AuthService(server: self), in: &router)
        Gateway.register(lock: LockService(backend: self), in: &router)
        Gateway.register(election: ElectionService(backend: self), in: &router)
    }

    /// The gauges /metrics reports, read now.
    func metricsSample() -> MetricsSample {
        var s = MetricsSample()
        s.hasLeader = hasLeader
        s.isLeader = isLeader
        s.committedIndex = committedIndex
        s.appliedIndex = appliedIndex
        s.dbTotalSize = (try? backend.fileSize()) ?? 0
        s.dbTotalSizeInUse = (try? backend.sizeInUse()) ?? 0
        let watchers = store.watcherCounts
        s.watchers = watchers.synced + watchers.unsynced + watchers.victims
        s.slowWatchers = watchers.unsynced + watchers.victims
        s.keys = store.indexedKeys
        s.leases = lessor.leases().count
        s.proposalsPending = waiters.count
        s.isLearner = isLearner
        s.currentRevision = store.currentRevision
        s.compactRevision = store.compactRevision
        s.quotaBackendBytes = quota.limit ?? 0
        return s
    }
}

/// `d` in milliseconds with one decimal, for logs.
private func milliseconds(_ d: Duration) -> String {
    let ms = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
    return String(format: "%.1f", ms)
}
