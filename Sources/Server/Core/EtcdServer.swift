import EtcdConfig
import EtcdProto
import EtcdSnapshot
import Foundation
import LMDBBackend
import Logging
import MVCC
import Raft
import ServerFormat
import Storage
import SwiftProtobuf
import Synchronization

/// Why the server could not start (a clear message for the operator).
public struct ServerStartError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// The member was removed from its cluster: restarting it can never help.
    public var memberRemoved = false
    init(_ description: String, memberRemoved: Bool = false) {
        self.description = description
        self.memberRemoved = memberRemoved
    }
}

/// The result of applying one entry, handed to the request that proposed it.
enum ApplyResult: Sendable {
    case put(Etcdserverpb_PutResponse)
    case deleteRange(Etcdserverpb_DeleteRangeResponse)
    case txn(Etcdserverpb_TxnResponse)
    case compaction(Etcdserverpb_CompactionResponse, MVCCStore.CompactionJob)
    case leaseGrant(Etcdserverpb_LeaseGrantResponse)
    case leaseRevoke(Etcdserverpb_LeaseRevokeResponse)
    case alarm(Etcdserverpb_AlarmResponse)
    case none
}

/// One swetcd member: the async façade over its `RaftLoop` (which alone owns the Raft node and
/// the durable log, on its own thread) and the applied state (MVCC keyspace, lessor,
/// membership, alarms on the LMDB backend) that the loop applies committed entries to in log
/// order, through `AppliedStateMachine`. The API services call the async methods; each change
/// is proposed as an `InternalRequest` and answered with its own apply result.
public final class EtcdServer: Sendable {
    /// This member's ID.
    public let memberID: UInt64
    /// The cluster's ID.
    public let clusterID: UInt64
    /// The member's name (--name).
    public let name: String
    /// The configuration it runs with.
    public let config: ServerConfig

    let logger: Logger
    /// Backend, keyspace and lessor; a leader's snapshot is installed into them in place.
    let machine: StateMachine
    var store: MVCCStore { machine.store }
    var lessor: Lessor { machine.lessor }
    var backend: Backend { machine.backend }
    /// The peer transport and its listener (nil only in a failed start).
    let peers: PeerTransport
    let peerServer: PeerServer
    let waiters = Waiters<ApplyResult>()
    let readWaiters = Waiters<Void>()
    let ids: RequestIDGenerator
    let leaseIDs: LeaseIDGenerator
    let requestTimeout: Duration
    let electionTimeout: Duration
    /// Snapshots from the leader installed since start.
    let snapshotsInstalled = Atomic<UInt64>(0)
    let backgroundTasks = Mutex<[Task<Void, Never>]>([])
    /// Raised alarms (NOSPACE, CORRUPT), loaded from the backend at start.
    let alarms = AlarmStore()
    /// Users, roles and the enabled flag (loaded from the backend; changed by applied entries).
    let auth = AuthStore()
    /// This member's simple auth tokens.
    let tokens: SimpleTokens
    /// JWT tokens, with `--auth-token jwt,...` (then simple tokens are not issued).
    let jwt: JWTTokens?
    /// Fired when the server begins to stop: streaming RPCs end on it.
    public let closing = ShutdownSignal()
    /// Maintenance.Snapshot streams open now, at most 4 (see `openSnapshot`).
    public let snapshotStreams = SnapshotStreams(limit: 4)
    /// This member's Prometheus metrics (served at /metrics).
    public let metrics: ServerMetrics
    /// The member list (changed by applied conf changes).
    let membership: ClusterMembership
    /// Fired when this member applies its own removal: the process should stop.
    public let removal = ShutdownSignal()
    /// Fired when the Raft loop stops on an error it cannot recover from (a WAL or backend
    /// write or fsync failure, a broken invariant): the process must stop, as etcd does, rather
    /// than keep serving reads of a member that no longer follows the log. `fatalError` says why.
    public let fatal = ShutdownSignal()
    /// The error that fired ``fatal``.
    public var fatalReason: String? { fatalReasonSlot.withLock { $0 } }
    let fatalReasonSlot = Mutex<String?>(nil)
    /// The Raft loop: its thread alone owns the Raft node and the durable log.
    let raftLoop: RaftLoop

    private init(memberID: UInt64, clusterID: UInt64, config: ServerConfig, logger: Logger,
                 machine: StateMachine, raftLoop: RaftLoop,
                 membership: ClusterMembership, peers: PeerTransport,
                 peerServer: PeerServer, metrics: ServerMetrics, jwt: JWTTokens?) {
        self.metrics = metrics
        self.peers = peers
        self.peerServer = peerServer
        self.memberID = memberID
        self.clusterID = clusterID
        self.name = config.name
        self.config = config
        self.logger = logger
        self.machine = machine
        self.raftLoop = raftLoop
        self.membership = membership
        ids = RequestIDGenerator(memberID: memberID)
        leaseIDs = LeaseIDGenerator(memberID: memberID, startMilliseconds: UInt64(Date().timeIntervalSince1970 * 1000))
        electionTimeout = .milliseconds(Int64(clamping: config.electionTimeoutMs))
        requestTimeout = .seconds(5) + .milliseconds(Int64(clamping: min(config.electionTimeoutMs, 1 << 40)) * 2)
        tokens = SimpleTokens(ttl: .seconds(Int64(clamping: max(1, config.authTokenTTL))))
        self.jwt = jwt
    }

    /// Opens (or creates) the data directory and starts the Raft loop. An empty directory
    /// bootstraps the member from `--initial-cluster`; an existing swetcd directory restarts
    /// (the `--initial-*` flags are ignored); anything else is refused untouched.
    /// `progress` (optional) is bumped as a restart reads the WAL, snapshot and backend (for
    /// systemd's start timeout: see ``SystemdSession``).
    public static func start(_ loaded: LoadedConfig, logger: Logger,
                             progress: StartupProgress? = nil) async throws -> EtcdServer {
        let cfg = loaded.config
        // JWT keys are loaded before anything on disk is touched, so a bad key is a clean refusal.
        var jwt: JWTTokens?
        if cfg.authToken.hasPrefix("jwt") {
            do {
                jwt = try JWTTokens(options: String(cfg.authToken.dropFirst(3).drop { $0 == "," }),
                                    defaultTTL: .seconds(Int64(clamping: max(1, cfg.authTokenTTL))))
            } catch {
                throw ServerStartError("\(error)")
            }
        }
        let dataDir = DataDir(path: cfg.effectiveDataDir, walDirectory: cfg.walDir)
        // A data directory from `etcdctl snapshot restore` is converted on the first start.
        try EtcdDataDirImport.recover(dataDir, logger: logger)
        if case .foreign = try dataDir.inspect(), EtcdDataDirImport.looksLikeEtcd(dataDir) {
            let s = try EtcdDataDirImport.run(dataDir, logger: logger)
            logger.notice("imported an etcd data directory (etcdctl snapshot restore): keys, revisions, leases, auth and alarms are the snapshot's, the membership is the restore's; etcd's files were replaced", metadata: [
                "data-dir": "\(dataDir.path)", "member-id": "\(MemberIdentity.hex(s.memberID))",
                "cluster-id": "\(MemberIdentity.hex(s.clusterID))",
                "members": "\(s.members.map { "\($0.name)=\($0.peerURLs.joined(separator: ","))" })",
                "keys": "\(s.stats.keys)", "revision": "\(s.revision)", "compact-revision": "\(s.compactRevision)",
                "leases": "\(s.stats.leases)", "users": "\(s.stats.users)", "roles": "\(s.stats.roles)", "alarms": "\(s.stats.alarms)",
            ])
            if let me = s.members.first(where: { $0.id == s.memberID }), me.name != cfg.name {
                logger.warning("--name differs from the member name the restore gave this data directory; the restore's is kept", metadata: [
                    "name": "\(cfg.name)", "restored-name": "\(me.name)",
                ])
            }
        }
        let found = try dataDir.inspect()
        if case let .foreign(reason) = found {
            if let wal = dataDir.dedicatedWALDirectory {
                throw ServerStartError("data directory \(dataDir.path) with WAL directory \(wal) cannot be used (\(reason)); refusing to use or modify them")
            }
            throw ServerStartError("data directory \(dataDir.path) was not written by swetcd (\(reason)); refusing to use or modify it")
        }
        // etcd refuses a data directory others may read; swetcd repairs it and says so.
        for (path, mode) in try dataDir.tightenPermissions() {
            logger.warning("directory had permissions wider than 0700; changed to 0700", metadata: [
                "path": "\(path)", "old-mode": "\(String(mode, radix: 8))",
            ])
        }
        // Peer TLS (the generated certificate of --peer-auto-tls lives in the data directory).
        let peerRefusals = PeerRefusals()
        let peerTLS = try PeerTLS.make(config: cfg, logger: logger, refusals: peerRefusals)
        var newMember = WALMetadata(memberID: 0, clusterID: 0)
        // Joining a running cluster: the membership read from its members' peer URLs.
        var joined: RemoteMembership.Found?
        // A new member whose initial cluster comes from DNS SRV records or a discovery URL
        // learns it now (an existing data directory ignores them, as --initial-cluster).
        var loaded = loaded
        if found == .empty && loaded.bootstrap != .staticCluster {
            loaded.initialCluster = try await Bootstrap.initialCluster(loaded, logger: logger)
        }
        if found == .empty {
            guard let local = loaded.initialCluster.member(named: cfg.name) else {
                throw ServerStartError("--initial-cluster has no member named \"\(cfg.name)\"")
            }
            if cfg.initialClusterState == "existing" {
                let (remote, id) = try await joinExisting(loaded, local: local, tls: peerTLS, logger: logger)
                joined = remote
                newMember = WALMetadata(memberID: id, clusterID: remote.clusterID)
            } else {
                try await refuseIfBootstrapped(loaded, local: local, logger: logger)
                newMember = WALMetadata(memberID: local.id, clusterID: loaded.initialCluster.clusterID)
            }
        }
        var walOptions = WALOptions()
        walOptions.maxSegmentFiles = Int(clamping: cfg.maxWALs)
        var raftOptions = DurableRaftOptions(wal: walOptions, maxSnapshotFiles: Int(clamping: cfg.maxSnapshots))
        raftOptions.progress = progress
        let raftStorage = try DurableRaftStorage.open(dataDir, newMember: newMember, options: raftOptions)
        let isNew = raftStorage.recovery.isNew
        if isNew && joined == nil {
            try BootstrapLog.write(raftStorage, members: loaded.initialCluster.members.map(MemberRecord.init))
        }
        let memberID = raftStorage.metadata.memberID
        let clusterID = raftStorage.metadata.clusterID
        if cfg.forceNewCluster && !isNew {
            let removed = try forceNewClusterLog(raftStorage, memberID: memberID)
            logger.warning("forcing a new one-member cluster: the other members are removed from the log", metadata: [
                "member-id": "\(MemberIdentity.hex(memberID))", "removed": "\(removed.map(MemberIdentity.hex))",
            ])
        }

        let metrics = ServerMetrics(memberID: memberID)
        peerRefusals.setSink { metrics.peerRefused($0) }
        var backendOptions = Backend.Options()
        backendOptions.onCommit = { metrics.backendCommit($0) }
        if cfg.backendBatchInterval > .zero { backendOptions.batchInterval = cfg.backendBatchInterval }
        if cfg.backendBatchLimit > 0 { backendOptions.batchLimit = Int(cfg.backendBatchLimit) }
        if cfg.unsafeNoFsync { backendOptions.sync = false }
        let snapIndex = raftStorage.recovery.snapshot.metadata.index
        progress?.begin("opening the backend")
        // A snapshot from the leader whose backend file was not swapped in before a crash.
        try SnapshotInstaller.recoverBackend(dataDir: dataDir, snapshotIndex: snapIndex, options: backendOptions, logger: logger)
        let backend = try Backend(path: dataDir.backendPath, options: backendOptions)
        // Maintenance.Snapshot files a crash left beside the db.
        EtcdBolt.removeStaleSnapshots(in: (dataDir.backendPath as NSString).deletingLastPathComponent)

        let heartbeat = Duration.milliseconds(Int64(clamping: max(1, cfg.heartbeatIntervalMs)))
        let electionTicks = max(2, Int(clamping: cfg.electionTimeoutMs / max(1, cfg.heartbeatIntervalMs)))
        let lessorConfig = LessorConfig(minTTL: LessorConfig.minimumTTL(electionTicks: electionTicks, heartbeat: heartbeat))
        var storeOptions = MVCCStore.Options()
        storeOptions.compactionBatchLimit = Int(max(1, cfg.compactionBatchLimit))
        storeOptions.progress = progress
        let machine = try StateMachine.open(backend, lessor: lessorConfig, store: storeOptions)
        progress?.begin("starting the Raft loop")

        let consistent = try backend.consistentIndex()
        let hs = raftStorage.recovery.hardState
        var raftConfig = RaftConfig(id: memberID)
        raftConfig.electionTick = electionTicks
        raftConfig.heartbeatTick = 1
        raftConfig.preVote = cfg.preVote
        raftConfig.checkQuorum = true
        raftConfig.maxInflightMsgs = 512
        // Entries after the snapshot are re-applied: conf changes to Raft, normal entries only
        // when above the backend's consistent index.
        raftConfig.applied = snapIndex
        let node = try RaftNode(config: raftConfig, storage: raftStorage.raftStorage)
        var initialStatus = LoopStatus()
        initialStatus.applied = raftConfig.applied
        initialStatus.committed = hs.commit
        initialStatus.term = hs.term
        // A joining learner is one from the start (etcd: it has the remote membership).
        initialStatus.isLearner = joined?.members.first(where: { m in m.id == memberID })?.isLearner ?? false
        let raftLoop = RaftLoop(node: node, storage: raftStorage, memberID: memberID, heartbeat: heartbeat,
                                snapshotCount: max(1, cfg.snapshotCount), appliedIndex: raftConfig.applied,
                                snapshotIndex: snapIndex, consistentIndex: consistent, status: initialStatus,
                                logger: logger, metrics: metrics)
        // Membership: recorded at bootstrap, read back on restart (--initial-* are ignored then).
        var members = try MembershipStore.load(from: backend)
        let removed = try MembershipStore.loadRemoved(from: backend)
        if removed.contains(memberID) {
            try? backend.close()
            try? raftStorage.close()
            throw ServerStartError("the member has been permanently removed from the cluster (member \(MemberIdentity.hex(memberID)), data directory \(dataDir.path)); start it with a new, empty data directory after adding it again", memberRemoved: true)
        }
        if isNew || members.isEmpty {
            members = joined?.members ?? loaded.initialCluster.members.map(MemberRecord.init)
            try MembershipStore.save(members, in: backend)
        }
        let transportBridge = TransportBridge(loop: raftLoop, backend: backend, snapDirectory: dataDir.snapDirectory, logger: logger)
        // The peer connections live on the Raft loop's own event loop (see RaftLoop).
        var transportOptions = PeerTransport.Options()
        transportOptions.eventLoopGroup = raftLoop.eventLoopGroup
        let transport = PeerTransport(localID: memberID, clusterID: clusterID, snapshotDirectory: dataDir.snapDirectory,
                                      delegate: transportBridge, snapshots: transportBridge, logger: logger,
                                      options: transportOptions, tls: peerTLS, refusals: peerRefusals)
        for m in members where m.id != memberID {
            transport.addPeer(m.id, urls: m.endpoints)
        }
        let peerServer = PeerServer(logger: logger, tls: peerTLS, refusals: peerRefusals,
                                    connectionGroup: raftLoop.eventLoopGroup)
        let server = EtcdServer(memberID: memberID, clusterID: clusterID, config: cfg, logger: logger,
                                machine: machine, raftLoop: raftLoop,
                                membership: ClusterMembership(members: members, removed: removed),
                                peers: transport, peerServer: peerServer, metrics: metrics, jwt: jwt)
        transportBridge.raftStatus.withLock { [weak server] status in
            status = { [weak server] in server.map { ($0.leaderID, $0.committedIndex) } ?? (0, 0) }
        }
        // Without peer TLS, say what that means, as etcd's documentation does.
        if cfg.listenPeerURLs.contains(where: { $0.scheme == "http" }) {
            logger.warning("peer traffic is neither encrypted nor authenticated: anyone who can reach the peer port can act as a member; keep it on a private network", metadata: [
                "listen-peer-urls": "\(cfg.listenPeerURLs.filter { $0.scheme == "http" }.map(\.description))",
            ])
        }
        do {
            try await peerServer.start(urls: cfg.listenPeerURLs, services: [
                transport.makeService(), ClusterService(backend: server, peerFacing: true),
                transport.makeLeaseService(),
                PeerCorruptCheckService(transport: transport, currentStore: { [machine] in machine.store }),
            ])
        } catch {
            try? backend.close()
            try? raftStorage.close()
            throw ServerStartError("cannot listen on the peer URLs \(cfg.listenPeerURLs.map(\.description)): \(error)")
        }
        await transport.start()
        transport.setLeaseHandler(server)
        logger.info("starting member", metadata: [
            "member-id": "\(MemberIdentity.hex(memberID))", "cluster-id": "\(MemberIdentity.hex(clusterID))",
            "data-dir": "\(dataDir.path)", "new": "\(isNew)", "consistent-index": "\(consistent)",
            "commit-index": "\(hs.commit)", "snapshot-index": "\(snapIndex)",
        ])
        do {
            try server.alarms.load(from: backend)
            try server.auth.load(from: backend)
            server.logQuota()
            if cfg.initialCorruptCheck { try await server.initialCorruptCheck() }
        } catch {
            await server.abandonBeforeLoop()
            throw error
        }
        raftLoop.start(transport: transport, machine: server, requests: server)
        machine.startWatchLoop()
        server.startAutoCompaction(loaded.autoCompaction)
        server.startCorruptionMonitor(every: cfg.corruptCheckTime)
        // Watches created with progress_notify get an empty response every interval (etcd:
        // --experimental-watch-progress-notify-interval, 10 minutes).
        let interval = cfg.watchProgressNotifyInterval > .zero ? cfg.watchProgressNotifyInterval : .seconds(600)
        let progressTask = Task { [machine] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                if Task.isCancelled { break }
                machine.store.notifyProgress()
            }
        }
        let publishTask = Task { [weak server] in
            guard let server else { return }
            await server.publishAttributes()
        }
        server.backgroundTasks.withLock { $0.append(contentsOf: [progressTask, server.publishNameWhenJoined(), publishTask]) }
        // A single voter campaigns at once instead of waiting out an election timeout (once
        // its configuration is applied).
        if joined == nil { raftLoop.send(.campaign) }
        return server
    }

    // MARK: State seen by the API

    /// The current leader (0 when none is known).
    public var leaderID: UInt64 { raftLoop.withStatus { $0.leader } }
    /// The current Raft term.
    public var term: UInt64 { raftLoop.withStatus { $0.term } }
    /// The index of the last applied entry.
    public var appliedIndex: UInt64 { raftLoop.withStatus { $0.applied } }
    /// The index of the last committed entry known to this member.
    public var committedIndex: UInt64 { raftLoop.withStatus { $0.committed } }
    /// Whether this member is the leader.
    public var isLeader: Bool { raftLoop.withStatus { $0.isLeader } }
    /// Whether this member is a learner.
    public var isLearner: Bool { raftLoop.withStatus { $0.isLearner } }
    /// The keyspace's current revision.
    public var currentRevision: Int64 { store.currentRevision }

    /// A response header for this member: cluster and member ID, Raft term, and `revision`
    /// (the current revision when nil).
    public func header(revision: Int64? = nil) -> Etcdserverpb_ResponseHeader {
        var h = Etcdserverpb_ResponseHeader()
        h.clusterID = clusterID
        h.memberID = memberID
        h.raftTerm = term
        h.revision = revision ?? store.currentRevision
        return h
    }

    // MARK: Proposals

    /// Waits (bounded by about two election timeouts) for a leader to be known.
    func waitForLeader() async throws {
        let deadline = ContinuousClock.now + electionTimeout * 2
        while leaderID == 0 {
            if raftLoop.hasExited { throw EtcdError.stopped }
            if ContinuousClock.now >= deadline { throw EtcdError.noLeader }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Proposes `request` and waits for its apply result. A learner refuses client proposals;
    /// `internalFromLearner` lets its own internal requests (its attribute publish) through:
    /// Raft forwards them to the leader like any follower's.
    func propose(_ request: Swetcd_Internal_InternalRequest, internalFromLearner: Bool = false) async throws -> ApplyResult {
        if raftLoop.hasExited { throw EtcdError.stopped }
        if !internalFromLearner { try refuseOnLearner() }
        try await waitForLeader()
        let (id, data) = try logEntry(for: request)
        try await checkQuota(request)
        waiters.register(id)
        raftLoop.send(.propose(data))
        do {
            return try await waiters.wait(id, timeout: requestTimeout, timeoutError: EtcdError.timeout)
        } catch let e as EtcdError where Self.countsAsFailedProposal(e) {
            metrics.proposalFailed()
            throw e
        }
    }

    /// `request` as a log entry under a fresh proposal ID; refused when larger than
    /// `--max-request-bytes`.
    private func logEntry(for request: Swetcd_Internal_InternalRequest) throws -> (id: UInt64, data: [UInt8]) {
        var req = request
        let id = ids.next()
        req.header.id = id
        let data: [UInt8] = try req.serializedBytes()
        if data.count > Int(clamping: config.maxRequestBytes) { throw EtcdError.requestTooLarge }
        return (id, data)
    }

    /// The outcomes counted as failed proposals (etcd_server_proposals_failed_total).
    private static func countsAsFailedProposal(_ e: EtcdError) -> Bool {
        e == .timeout || e == .noLeader || e == .stopped
    }

    /// Proposes `request` without a task (the client port's fast path): `done` gets the apply
    /// result on the apply thread (or the Raft loop's, if Raft drops it), or the timeout from the waiters' sweep. Returns false,
    /// having done nothing, when the request needs ``propose(_:internalFromLearner:)``: no leader
    /// known yet (that waits for one) or the quota refuses it (that raises the alarm). Throws
    /// what ``propose(_:internalFromLearner:)`` would throw at once.
    func proposeNow(_ request: Swetcd_Internal_InternalRequest,
                    done: @escaping @Sendable (Result<ApplyResult, any Error>) -> Void) throws -> Bool {
        if raftLoop.hasExited { throw EtcdError.stopped }
        try refuseOnLearner()
        guard leaderID != 0, quotaAdmits(request) else { return false }
        let (id, data) = try logEntry(for: request)
        let metrics = self.metrics
        waiters.register(id, timeout: requestTimeout, timeoutError: EtcdError.timeout) { result in
            if case .failure(let e as EtcdError) = result, Self.countsAsFailedProposal(e) {
                metrics.proposalFailed()
            }
            done(result)
        }
        raftLoop.send(.propose(data))
        return true
    }

    /// ``linearizableBarrier()`` without a task: `done` runs on the apply or Raft loop thread once this
    /// member has applied what the leader confirmed (keep it short). Returns false when the
    /// barrier needs the async path (no leader known yet).
    func linearizableBarrierNow(done: @escaping @Sendable (Result<Void, any Error>) -> Void) throws -> Bool {
        if raftLoop.hasExited { throw EtcdError.stopped }
        try refuseOnLearner()
        guard leaderID != 0 else { return false }
        let id = ids.next()
        readWaiters.register(id, timeout: requestTimeout, timeoutError: EtcdError.timeout, callback: done)
        raftLoop.send(.read(id))
        return true
    }

    /// Proposes without waiting (lease expiry, checkpoints); from the loop thread or anywhere.
    func proposeDetached(_ request: Swetcd_Internal_InternalRequest) {
        guard let data: [UInt8] = try? request.serializedBytes() else { return }
        raftLoop.send(.propose(data))
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by the leader (ReadIndex): what a linearizable read must see.
    /// A learner refuses it ("rpc not supported for learner").
    public func linearizableBarrier() async throws {
        try refuseOnLearner()
        try await readBarrier()
    }

    /// Asks the Raft loop to hand leadership to `transferee` (returns at once).
    func requestLeadershipTransfer(to transferee: UInt64) {
        raftLoop.send(.transferLeadership(transferee))
    }

    // MARK: Stop

    /// Stops gracefully: a leader of a multi-member cluster first hands leadership over; then the
    /// loop stops, pending requests fail with "server stopped", the backend is committed and
    /// closed and the WAL synced and closed.
    public func stop() async {
        closing.fire()
        if isLeader, raftLoop.withStatus({ $0.voters }) > 1 {
            // 0: the loop picks the most up-to-date voter.
            requestLeadershipTransfer(to: 0)
            let deadline = ContinuousClock.now + electionTimeout * 2
            while isLeader, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        await raftLoop.stop()
        for t in backgroundTasks.withLock({ $0 }) { t.cancel() }
        machine.stopWatchLoop()
        await peers.stop()
        await peerServer.stop()
        await raftLoop.shutDownEventLoop()
        waiters.failAll(EtcdError.stopped)
        readWaiters.failAll(EtcdError.stopped)
        do {
            try backend.commit()
            try backend.close()
        } catch {
            logger.error("closing backend failed", metadata: ["error": "\(error)"])
        }
        logger.info("stopped member", metadata: ["member-id": "\(MemberIdentity.hex(memberID))"])
    }
}
