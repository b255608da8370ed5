import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
import ServerFormat
import Storage

// Online membership: MemberAdd/Remove/Update/Promote go through Raft conf-change entries whose
// context is a `MembershipChange`; applying one updates Raft's configuration, the member list
// (memory and the backend's members bucket, in the entry's batch) and the peer transport.

extension MemberRecord {
    /// The member as etcd's API shows it; `clientURLs` only when known.
    func proto(clientURLs: [String] = []) -> Etcdserverpb_Member {
        var out = Etcdserverpb_Member()
        out.id = id
        out.name = name
        out.peerUrls = peerURLs
        out.clientUrls = clientURLs
        out.isLearner = isLearner
        return out
    }
}

extension EtcdServer: ClusterBackend {
    /// The members as this member knows them, with the client URLs each published through the
    /// log (MemberAttributes.swift); this member's own are always current.
    public func members() -> [Etcdserverpb_Member] {
        membership.members.map { m in
            if m.id == memberID {
                var own = m
                if own.name.isEmpty { own.name = name }
                return own.proto(clientURLs: config.advertiseClientURLs.map(\.description))
            }
            return m.proto(clientURLs: m.clientURLs)
        }
    }

    public func memberList(linearizable: Bool) async throws -> [Etcdserverpb_Member] {
        if linearizable { try await readBarrier() }
        return members()
    }

    public func memberAdd(peerURLs: [String], isLearner: Bool) async throws -> (Etcdserverpb_Member, [Etcdserverpb_Member]) {
        try requireRoot()
        try refuseOnLearner()
        let current = membership.members
        let urls = try MembershipRules.checkAdd(peerURLs: peerURLs, isLearner: isLearner, members: current,
                                                maxLearners: Int(clamping: config.maxLearners),
                                                strict: config.strictReconfigCheck, startedVoters: startedVoters())
        let endpoints = urls.compactMap { try? EndpointURL(parsing: $0) }
        let id = MemberIdentity.memberID(peerURLs: endpoints, clusterToken: "", unixTime: Int64(Date().timeIntervalSince1970))
        if membership.member(id) != nil { throw MembershipRules.memberExists }
        if membership.removed.contains(id) { throw MembershipRules.memberExists }
        let record = MemberRecord(id: id, name: "", peerURLs: urls, isLearner: isLearner)
        try await proposeMembership(MembershipChange(operation: .add, member: record))
        logger.info("added member", metadata: ["added-member-id": "\(MemberIdentity.hex(id))",
                                                "peer-urls": "\(urls)", "is-learner": "\(isLearner)"])
        return (record.proto(), members())
    }

    public func memberRemove(id: UInt64) async throws -> [Etcdserverpb_Member] {
        try requireRoot()
        try refuseOnLearner()
        guard let target = membership.member(id) else { throw MembershipRules.memberNotFound }
        if config.strictReconfigCheck && !target.isLearner { try checkVoterRemoval(id) }
        if id == leaderID { try await moveLeadershipAway(from: id) }
        try await proposeMembership(MembershipChange(operation: .remove, member: target))
        logger.info("removed member", metadata: ["removed-member-id": "\(MemberIdentity.hex(id))"])
        return members()
    }

    public func memberUpdate(id: UInt64, peerURLs: [String]) async throws -> [Etcdserverpb_Member] {
        try requireRoot()
        try refuseOnLearner()
        guard var target = membership.member(id) else { throw MembershipRules.memberNotFound }
        let urls = try MembershipRules.parsePeerURLs(peerURLs)
        try MembershipRules.checkURLsFree(urls, members: membership.members, except: id)
        target.peerURLs = urls
        try await proposeMembership(MembershipChange(operation: .update, member: target))
        logger.info("updated member", metadata: ["updated-member-id": "\(MemberIdentity.hex(id))", "peer-urls": "\(urls)"])
        return members()
    }

    public func memberPromote(id: UInt64) async throws -> [Etcdserverpb_Member] {
        try requireRoot()
        try refuseOnLearner()
        try await waitForLeader()
        guard let target = membership.member(id) else { throw MembershipRules.memberNotFound }
        guard target.isLearner else { throw MembershipRules.notLearner }
        if !isLeader {
            // Only the leader knows how far the learner is: ask it (over its peer URLs).
            try await forwardPromote(id)
            try await readBarrier()
            return members()
        }
        if config.strictReconfigCheck {
            let voters = membership.members.filter { !$0.isLearner }.count
            if !MembershipRules.canPromote(voters: voters, startedVoters: startedVoters()) {
                throw MembershipRules.notEnoughStarted
            }
        }
        let (match, progress) = raftLoop.withStatus { ($0.lastIndex, $0.progress) }
        guard let learnerMatch = progress[id],
              MembershipRules.learnerInSync(learnerMatch: learnerMatch, leaderMatch: match) else {
            throw MembershipRules.learnerNotReady
        }
        var promoted = target
        promoted.isLearner = false
        try await proposeMembership(MembershipChange(operation: .promote, member: promoted))
        logger.info("promoted member", metadata: ["promoted-member-id": "\(MemberIdentity.hex(id))"])
        return members()
    }

    // MARK: Helpers

    /// Learners serve only serializable reads, Status and MemberList.
    func refuseOnLearner() throws {
        if isLearner { throw EtcdError.notSupportedForLearner }
    }

    /// Voters this member sees started: itself and the voters its transport is connected to.
    func startedVoters() -> Int {
        membership.members.filter { !$0.isLearner && ($0.id == memberID || peers.isActive($0.id)) }.count
    }

    /// etcd's checks before removing a voter: enough started members remain for a quorum, and
    /// (unless the member is down anyway) removing it does not leave too few active ones.
    func checkVoterRemoval(_ id: UInt64) throws {
        let voters = membership.members.filter { !$0.isLearner }.count
        let started = startedVoters()
        let removingStarted = id == memberID || peers.isActive(id)
        if !MembershipRules.canRemoveVoter(voters: voters, started: started, removingStarted: removingStarted) {
            throw MembershipRules.notEnoughStarted
        }
        if !removingStarted { return }
        if started - 1 < 1 + (voters - 1) / 2 { throw EtcdError.unhealthyCluster }
    }

    /// Before the leader is removed, leadership moves to another voter (so the removal does not
    /// leave the cluster without a leader for an election timeout).
    func moveLeadershipAway(from id: UInt64) async throws {
        let others = membership.members.filter { !$0.isLearner && $0.id != id }
        guard !others.isEmpty else { return }
        // On the leader the loop picks the most up-to-date voter; elsewhere this member asks
        // for leadership itself.
        requestLeadershipTransfer(to: id == memberID ? 0 : memberID)
        let deadline = ContinuousClock.now + requestTimeout
        while leaderID == id || leaderID == 0 {
            guard ContinuousClock.now < deadline else {
                throw EtcdError("etcdserver: request timed out, leader transfer took too long", code: .deadlineExceeded)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// A read barrier a learner may use too (MemberList with `linearizable`).
    func readBarrier() async throws {
        if raftLoop.hasExited { throw EtcdError.stopped }
        try await waitForLeader()
        let id = ids.next()
        readWaiters.register(id)
        raftLoop.send(.read(id))
        try await readWaiters.wait(id, timeout: requestTimeout, timeoutError: EtcdError.timeout)
    }

    /// Proposes a membership change and waits until this member has applied it.
    func proposeMembership(_ change: MembershipChange) async throws {
        if raftLoop.hasExited { throw EtcdError.stopped }
        try await waitForLeader()
        // Raft takes one membership change at a time, and a new leader takes none until it has
        // applied the changes in its log (right after a cluster starts, its bootstrap entries):
        // such a refusal is retried here until the request timeout, as the client would have to.
        // A follower's change is forwarded to the leader, which turns one it must refuse into an
        // empty entry the follower cannot recognise: a follower therefore waits a shorter while,
        // then checks whether the change took effect and proposes it again if not (a change
        // proposed twice is refused the second time, so it applies once).
        let deadline = ContinuousClock.now + requestTimeout
        while true {
            let id = ids.next()
            waiters.register(id)
            raftLoop.send(.proposeConfChange(change.confChange(requestID: id)))
            let attempt = isLeader ? deadline - ContinuousClock.now
                : min(deadline - ContinuousClock.now, electionTimeout * 2)
            do {
                _ = try await waiters.wait(id, timeout: attempt, timeoutError: EtcdError.timeout)
                return
            } catch let e as EtcdError where e == EtcdError.membershipChangeInProgress && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            } catch let e as EtcdError where e == EtcdError.timeout && ContinuousClock.now < deadline {
                if tookEffect(change) { return }
            }
        }
    }

    /// Whether the member list already shows `change` applied.
    private func tookEffect(_ change: MembershipChange) -> Bool {
        let now = membership.member(change.member.id)
        switch change.operation {
        case .add: return now != nil
        case .remove: return now == nil
        case .promote: return now.map { !$0.isLearner } ?? false
        case .update: return now?.peerURLs == change.member.peerURLs
        }
    }

    /// Asks the leader, over its peer URLs, to promote `id`.
    func forwardPromote(_ id: UInt64) async throws {
        guard let leader = membership.member(leaderID), !leader.endpoints.isEmpty else { throw EtcdError.noLeader }
        var request = Etcdserverpb_MemberPromoteRequest()
        request.id = id
        var lastError: any Error = EtcdError.noLeader
        for url in leader.endpoints {
            do {
                _ = try await withGRPCClient(transport: try peers.clientTransport(url)) { client in
                    try await Etcdserverpb_Cluster.Client(wrapping: client).memberPromote(request)
                }
                return
            } catch let e as RPCError where e.code != .unavailable {
                throw e
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// A member added at run time has no name in the member list until it publishes it (as
    /// etcd's members do): once caught up, it proposes an update carrying its --name.
    func publishNameWhenJoined() -> Task<Void, Never> {
        Task { [self] in
            while !Task.isCancelled && !closing.isFired {
                try? await Task.sleep(for: .milliseconds(300))
                guard let me = membership.member(memberID) else { continue }
                if !me.name.isEmpty { return }
                guard leaderID != 0, appliedIndex >= committedIndex else { continue }
                var named = me
                named.name = name
                do {
                    try await proposeMembership(MembershipChange(operation: .update, member: named))
                    logger.info("published member name", metadata: ["name": "\(name)"])
                    return
                } catch {
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
    }

    // MARK: Apply (apply thread)

    /// Applies a committed conf change (Raft has taken it already): the member list, the
    /// backend and the transport only for entries the backend has not applied yet.
    func apply(confChange cc: ConfChange, entry: Entry, inBackend: Bool) throws {
        let change: MembershipChange?
        if cc.context.isEmpty {
            change = nil
        } else {
            do { change = try MembershipChange.decode(cc.context) } catch {
                logger.error("conf change with an undecodable context", metadata: ["index": "\(entry.index)", "error": "\(error)"])
                change = nil
            }
        }
        guard !inBackend else { return }
        var result: MemberRecord?
        if let change { result = membership.apply(change) }
        try backend.batch {
            if let change { try MembershipStore.record(change, result: result, in: backend) }
            try backend.setConsistentIndex(entry.index, term: entry.term)
        }
        if let change { updateTransport(change, result: result) }
        if cc.id != 0 { waiters.trigger(cc.id, .success(.none)) }
        if let change, change.operation == .remove, change.member.id == memberID {
            logger.critical("the member has been permanently removed from the cluster; stopping",
                            metadata: ["member-id": "\(MemberIdentity.hex(memberID))"])
            removal.fire()
        }
    }

    /// A peer that applied this member's removal refuses it (the removal's commit never
    /// reached it, e.g. it was cut off): record the removal and stop, as etcd does.
    func removedByPeer(_ peer: UInt64) throws {
        guard !removal.isFired else { return }
        logger.critical("the member has been permanently removed from the cluster; stopping", metadata: [
            "member-id": "\(MemberIdentity.hex(memberID))", "refused-by": "\(MemberIdentity.hex(peer))",
        ])
        try backend.batch { try backend.put(.membersRemoved, key: MemberRecord.key(memberID), value: []) }
        try backend.commit()
        removal.fire()
    }

    private func updateTransport(_ change: MembershipChange, result: MemberRecord?) {
        let id = change.member.id
        guard id != memberID else { return }
        switch change.operation {
        case .add:
            peers.addPeer(id, urls: change.member.endpoints)
        case .update:
            peers.updatePeer(id, urls: change.member.endpoints)
        case .promote:
            break
        case .remove:
            // Messages already queued for it (the commit of its own removal among them) still
            // go out; then the link is closed and its calls refused.
            let peers = self.peers
            Task.detached {
                try? await Task.sleep(for: .seconds(1))
                peers.removePeer(id)
            }
        }
    }

    /// On the leader with --auto-promote-learners: the promotion of the first learner in sync
    /// with the leader (`st`), one at a time (Raft refuses a second pending change).
    func learnerPromotion(_ st: RaftStatus) -> ConfChange? {
        let last = st.lastIndex
        for m in membership.members where m.isLearner {
            guard let p = st.progress[m.id], MembershipRules.learnerInSync(learnerMatch: p.match, leaderMatch: last) else {
                continue
            }
            if config.strictReconfigCheck {
                let voters = membership.members.filter { !$0.isLearner }.count
                if !MembershipRules.canPromote(voters: voters, startedVoters: startedVoters()) { continue }
            }
            var promoted = m
            promoted.isLearner = false
            return MembershipChange(operation: .promote, member: promoted).confChange(requestID: 0)
        }
        return nil
    }
}

/// Reads the membership of a running cluster over its members' peer URLs (the restricted
/// Cluster service every member serves there): how a member started with
/// `--initial-cluster-state existing` learns its ID and the cluster's.
enum RemoteMembership {
    struct Found: Sendable {
        var clusterID: UInt64
        var members: [MemberRecord]
    }

    static func fetch(from urls: [EndpointURL], tls: PeerTLS? = nil, limit: Duration = .seconds(30)) async throws -> Found {
        let deadline = ContinuousClock.now + limit
        var errors: [String] = []
        repeat {
            for url in urls {
                do {
                    let transport = try PeerTransport.clientTransport(url, tls: tls)
                    let resp = try await withGRPCClient(transport: transport) { client in
                        var options = CallOptions.defaults
                        options.timeout = .seconds(3)
                        return try await Etcdserverpb_Cluster.Client(wrapping: client).memberList(
                            Etcdserverpb_MemberListRequest(), options: options)
                    }
                    let members = resp.members.map {
                        var m = MemberRecord(id: $0.id, name: $0.name, peerURLs: $0.peerUrls, isLearner: $0.isLearner)
                        m.clientURLs = $0.clientUrls
                        return m
                    }
                    return Found(clusterID: resp.header.clusterID, members: members)
                } catch {
                    errors.append("\(url): \(error)")
                }
            }
            try await Task.sleep(for: .milliseconds(500))
        } while ContinuousClock.now < deadline
        throw ServerStartError("cannot read the cluster membership from the peer URLs \(urls.map(\.description)): \(errors.suffix(3))")
    }

    /// The member of `found` whose peer URLs are `peerURLs`.
    static func localMember(_ found: Found, peerURLs: [EndpointURL]) -> MemberRecord? {
        let want = peerURLs.map(\.description).sorted()
        return found.members.first { m in
            m.peerURLs.compactMap { try? EndpointURL(parsing: $0) }.map(\.description).sorted() == want
        }
    }
}

extension EtcdServer {
    /// Reads the running cluster's membership from the other members named in
    /// --initial-cluster and finds this member in it (added by MemberAdd with these peer URLs):
    /// its ID is the one MemberAdd chose, the cluster ID the running cluster's.
    static func joinExisting(_ loaded: LoadedConfig, local: InitialCluster.Member, tls: PeerTLS?,
                             logger: Logger) async throws -> (RemoteMembership.Found, UInt64) {
        let others = loaded.initialCluster.members.filter { $0.name != local.name }.flatMap(\.peerURLs)
        guard !others.isEmpty else {
            throw ServerStartError("--initial-cluster-state=existing needs the running members in --initial-cluster")
        }
        let found = try await RemoteMembership.fetch(from: others, tls: tls)
        guard let me = RemoteMembership.localMember(found, peerURLs: local.peerURLs) else {
            throw ServerStartError("no member of the running cluster has the peer URLs \(local.peerURLs.map(\.description)); add this member first (etcdctl member add \(local.name) --peer-urls=...)")
        }
        if found.members.count == 0 || found.clusterID == 0 {
            throw ServerStartError("the running cluster answered without a cluster ID or members")
        }
        // The member already ran (it published its client URLs): this empty data directory
        // replaces one that was lost. Starting over its ID with an empty log could undo
        // committed entries; it has to be removed and added again (a new ID).
        if !me.clientURLs.isEmpty { throw alreadyBootstrapped(me.id) }
        logger.info("joining a running cluster", metadata: [
            "member-id": "\(MemberIdentity.hex(me.id))", "cluster-id": "\(MemberIdentity.hex(found.clusterID))",
            "members": "\(found.members.count)", "is-learner": "\(me.isLearner)",
        ])
        return (found, me.id)
    }

    /// etcd's refusal to start a new, empty data directory for a member the running cluster
    /// already knows as started.
    static func alreadyBootstrapped(_ id: UInt64) -> ServerStartError {
        ServerStartError("member \(MemberIdentity.hex(id)) has already been bootstrapped")
    }

    /// With `--initial-cluster-state new` and an empty data directory, as etcd does: asks the
    /// other members named in --initial-cluster (one short try; none answering is the normal
    /// case of a cluster being created) whether this member's ID already ran there, and refuses
    /// to bootstrap over it if so (its data directory was lost; see ``joinExisting``).
    static func refuseIfBootstrapped(_ loaded: LoadedConfig, local: InitialCluster.Member, logger: Logger) async throws {
        let others = loaded.initialCluster.members.filter { $0.name != local.name }.flatMap(\.peerURLs)
        guard !others.isEmpty, let found = try? await RemoteMembership.fetch(from: others, limit: .zero) else { return }
        if let me = found.members.first(where: { $0.id == local.id }), !me.clientURLs.isEmpty {
            throw alreadyBootstrapped(local.id)
        }
    }

    /// etcd's `--force-new-cluster` on a member's existing log: entries after the commit index
    /// are discarded, and committed conf-change entries (term of the hard state) are appended
    /// that remove every other member of the configuration the log ends with, so the member
    /// restarts as a one-member cluster with all its data. Returns the removed member IDs.
    @discardableResult
    static func forceNewClusterLog(_ storage: DurableRaftStorage, memberID: UInt64) throws -> [UInt64] {
        let rec = storage.recovery
        let snapState = rec.snapshot.metadata.confState
        var ids = Set(snapState.voters + snapState.learners + snapState.votersOutgoing)
        for e in try storage.committedEntries(after: rec.snapshot.metadata.index) where e.type == .confChange {
            let cc = try ConfChange(decoding: e.data)
            switch cc.type {
            case .addNode, .addLearnerNode: if cc.nodeID != 0 { ids.insert(cc.nodeID) }
            case .removeNode: ids.remove(cc.nodeID)
            }
        }
        let others = ids.subtracting([memberID]).sorted()
        var hs = rec.hardState
        var rd = Ready()
        var index = hs.commit
        for id in others {
            index += 1
            let change = MembershipChange(operation: .remove, member: MemberRecord(id: id, name: "", peerURLs: []))
            rd.entries.append(Entry(term: hs.term, index: index, type: .confChange, data: change.confChange(requestID: 0).encode()))
        }
        if !ids.contains(memberID) {
            index += 1
            let change = MembershipChange(operation: .add, member: MemberRecord(id: memberID, name: "", peerURLs: []))
            rd.entries.append(Entry(term: hs.term, index: index, type: .confChange, data: change.confChange(requestID: 0).encode()))
        }
        guard !rd.entries.isEmpty else { return [] }
        hs.commit = index
        rd.hardState = hs
        rd.mustSync = true
        try storage.persist(rd)
        return others
    }
}
