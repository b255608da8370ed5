import EtcdProto
import Foundation
import MVCC

/// The operations the KV and Lease services call. Changes go through the Raft log and return
/// their own apply result; reads are linearizable (ReadIndex) unless `serializable` is set.
extension EtcdServer {
    // MARK: KV

    /// Range: linearizable unless `serializable`.
    /// Ranges with a larger (or no) limit run on ``HeavyWorkPool/shared``.
    static let largeRangeLimit: Int64 = 1000

    public func range(_ r: Etcdserverpb_RangeRequest) async throws -> Etcdserverpb_RangeResponse {
        try checkRange(r)
        if !r.serializable { try await linearizableBarrier() }
        return Self.isLargeRange(r) ? try await HeavyWorkPool.shared.run { try self.rangeNow(r) } : try rangeNow(r)
    }

    /// Range's checks: a key, and the caller may read it.
    func checkRange(_ r: Etcdserverpb_RangeRequest) throws {
        if r.key.isEmpty { throw EtcdError.keyNotProvided }
        try authorize(key: r.key, rangeEnd: r.rangeEnd, write: false, try authInfo())
    }

    /// A range that may read many keys (no limit, or one above `largeRangeLimit`): it runs on
    /// the heavy-work threads, so a few of them cannot hold up every other call on Swift's
    /// shared pool; a single key or a small page runs where the call is.
    static func isLargeRange(_ r: Etcdserverpb_RangeRequest) -> Bool {
        !r.rangeEnd.isEmpty && (r.limit <= 0 || r.limit > largeRangeLimit) && !r.countOnly
    }

    /// Reads the range from this member's keyspace now (checks and barrier done by the caller).
    func rangeNow(_ r: Etcdserverpb_RangeRequest) throws -> Etcdserverpb_RangeResponse {
        do {
            let res = try store.range(RangeRequest(r))
            var resp = Etcdserverpb_RangeResponse(res)
            resp.header = header(revision: res.revision)
            return resp
        } catch {
            throw EtcdError.from(error)
        }
    }

    /// Put through the log.
    public func put(_ p: Etcdserverpb_PutRequest) async throws -> Etcdserverpb_PutResponse {
        guard case .put(let resp) = try await propose(try putRequest(p)) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// Put's checks, and the log entry it proposes.
    func putRequest(_ p: Etcdserverpb_PutRequest) throws -> Swetcd_Internal_InternalRequest {
        if p.key.isEmpty { throw EtcdError.keyNotProvided }
        if p.ignoreValue && !p.value.isEmpty { throw EtcdError.valueProvided }
        if p.ignoreLease && p.lease != 0 { throw EtcdError.leaseProvided }
        let info = try authInfo()
        try authorize(key: p.key, rangeEnd: Data(), write: true, info)
        if p.prevKv { try authorize(key: p.key, rangeEnd: Data(), write: false, info) }
        var req = Swetcd_Internal_InternalRequest()
        stamp(&req, info)
        req.put = p
        return req
    }

    /// DeleteRange through the log.
    public func deleteRange(_ d: Etcdserverpb_DeleteRangeRequest) async throws -> Etcdserverpb_DeleteRangeResponse {
        guard case .deleteRange(let resp) = try await propose(try deleteRangeRequest(d)) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// DeleteRange's checks, and the log entry it proposes.
    func deleteRangeRequest(_ d: Etcdserverpb_DeleteRangeRequest) throws -> Swetcd_Internal_InternalRequest {
        if d.key.isEmpty { throw EtcdError.keyNotProvided }
        let info = try authInfo()
        try authorize(key: d.key, rangeEnd: d.rangeEnd, write: true, info)
        if d.prevKv { try authorize(key: d.key, rangeEnd: d.rangeEnd, write: false, info) }
        var req = Swetcd_Internal_InternalRequest()
        stamp(&req, info)
        req.deleteRange = d
        return req
    }

    /// Txn: a txn without writes is served locally after a read barrier (as etcd does);
    /// anything else goes through the log.
    public func txn(_ t: Etcdserverpb_TxnRequest) async throws -> Etcdserverpb_TxnResponse {
        guard let req = try txnRequest(t) else {
            try await linearizableBarrier()
            return try readOnlyTxnNow(t)
        }
        guard case .txn(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// Txn's checks, and the log entry it proposes; nil for a txn without writes.
    func txnRequest(_ t: Etcdserverpb_TxnRequest) throws -> Swetcd_Internal_InternalRequest? {
        try checkTxn(t, maxOps: Int(clamping: config.maxTxnOps))
        let info = try authInfo()
        try authorize(txn: t, info)
        if Self.isReadOnly(t) { return nil }
        var req = Swetcd_Internal_InternalRequest()
        stamp(&req, info)
        req.txn = t
        return req
    }

    /// Serves a txn without writes from this member's keyspace now (after the read barrier).
    func readOnlyTxnNow(_ t: Etcdserverpb_TxnRequest) throws -> Etcdserverpb_TxnResponse {
        do {
            let r = try store.txn(TxnRequest(t))
            return Etcdserverpb_TxnResponse(r, header: header(revision: r.revision))
        } catch {
            throw EtcdError.from(error)
        }
    }

    /// Compact through the log; with `physical` it returns once the entries are gone.
    public func compact(_ c: Etcdserverpb_CompactionRequest) async throws -> Etcdserverpb_CompactionResponse {
        var req = Swetcd_Internal_InternalRequest()
        req.compaction = c
        guard case .compaction(let resp, let job) = try await propose(req) else {
            throw EtcdError.internal("unexpected apply result")
        }
        if c.physical {
            try await HeavyWorkPool.shared.run { try job.run() }
        }
        return resp
    }

    private func checkTxn(_ t: Etcdserverpb_TxnRequest, maxOps: Int) throws {
        if t.compare.count > maxOps || t.success.count > maxOps || t.failure.count > maxOps {
            throw EtcdError.tooManyOps
        }
        for c in t.compare where c.key.isEmpty { throw EtcdError.keyNotProvided }
        for op in t.success + t.failure {
            switch op.request {
            case .requestRange(let r)?: if r.key.isEmpty { throw EtcdError.keyNotProvided }
            case .requestPut(let p)?: if p.key.isEmpty { throw EtcdError.keyNotProvided }
            case .requestDeleteRange(let d)?: if d.key.isEmpty { throw EtcdError.keyNotProvided }
            case .requestTxn(let n)?: try checkTxn(n, maxOps: maxOps)
            case nil: throw EtcdError.keyNotProvided
            }
        }
    }

    static func isReadOnly(_ t: Etcdserverpb_TxnRequest) -> Bool {
        for op in t.success + t.failure {
            switch op.request {
            case .requestRange?: continue
            case .requestTxn(let n)?: if !isReadOnly(n) { return false }
            default: return false
            }
        }
        return true
    }

    // MARK: Lease

    /// LeaseGrant: an ID of 0 is replaced by a generated one before proposing.
    public func leaseGrant(_ g: Etcdserverpb_LeaseGrantRequest) async throws -> Etcdserverpb_LeaseGrantResponse {
        var grant = g
        grant.id = leaseIDs.resolve(g.id)
        if grant.ttl > Lessor.maxTTL { throw EtcdError.leaseTTLTooLarge }
        var req = Swetcd_Internal_InternalRequest()
        req.leaseGrant = grant
        guard case .leaseGrant(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// LeaseRevoke through the log (the lease's keys are deleted in one revision).
    public func leaseRevoke(_ r: Etcdserverpb_LeaseRevokeRequest) async throws -> Etcdserverpb_LeaseRevokeResponse {
        if !lessor.contains(id: r.id) { throw EtcdError.leaseNotFound }
        // Revoking deletes the lease's keys: the caller needs write permission on each.
        let info = try authInfo()
        if let info, !info.isRoot {
            for key in (try? lessor.keys(of: r.id)) ?? [] { try authorize(key: Data(key), rangeEnd: Data(), write: true, info) }
        }
        var req = Swetcd_Internal_InternalRequest()
        stamp(&req, info)
        req.leaseRevoke = r
        guard case .leaseRevoke(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// One keep-alive: renews on the leader (a follower forwards it there) and returns the
    /// new TTL.
    public func leaseRenew(_ id: Int64) async throws -> Etcdserverpb_LeaseKeepAliveResponse {
        try refuseOnLearner()
        let ttl = try await onLeader(
            local: { try renewLocally(id) },
            forward: { leader, timeout in try await peers.forwardLeaseRenew(id, to: leader, timeout: timeout) })
        return keepAliveResponse(id: id, ttl: ttl)
    }

    /// One LeaseKeepAlive request's answer: the renewed TTL, or TTL 0 for an unknown lease (as
    /// etcd answers on the stream instead of ending it).
    public func leaseKeepAlive(_ id: Int64) async throws -> Etcdserverpb_LeaseKeepAliveResponse {
        do {
            return try await leaseRenew(id)
        } catch let e as EtcdError where e == .leaseNotFound {
            return keepAliveResponse(id: id, ttl: 0)
        }
    }

    /// ``leaseKeepAlive(_:)`` answered now, without a task, when this member leads; nil when the
    /// leader is elsewhere (or leadership moved just now): then the async call finds it.
    func leaseKeepAliveNow(_ id: Int64) throws -> Etcdserverpb_LeaseKeepAliveResponse? {
        guard isLeader else { return nil }
        try refuseOnLearner()
        do {
            return keepAliveResponse(id: id, ttl: try renewLocally(id))
        } catch let e as EtcdError where e == .notLeader {
            return nil
        } catch let e as EtcdError where e == .leaseNotFound {
            return keepAliveResponse(id: id, ttl: 0)
        }
    }

    private func keepAliveResponse(id: Int64, ttl: Int64) -> Etcdserverpb_LeaseKeepAliveResponse {
        var resp = Etcdserverpb_LeaseKeepAliveResponse()
        resp.header = header()
        resp.id = id
        resp.ttl = ttl
        return resp
    }

    /// LeaseTimeToLive as the leader sees it (a follower asks the leader); an unknown lease
    /// answers TTL -1, as etcd.
    public func leaseTimeToLive(_ r: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        var resp = try await onLeader(
            local: { try await timeToLiveLocally(r) },
            forward: { leader, timeout in try await peers.forwardLeaseTimeToLive(r, to: leader, timeout: timeout) })
        resp.header = header()
        return resp
    }

    /// Renews on this member, which must be the leader.
    func renewLocally(_ id: Int64) throws -> Int64 {
        guard isLeader else { throw EtcdError.notLeader }
        do {
            let renewal = try lessor.renew(id: id)
            metrics.leaseRenewed()
            if let clear = renewal.clearCheckpoint {
                var req = Swetcd_Internal_InternalRequest()
                req.leaseCheckpoint = Self.checkpointRequest([clear])
                proposeDetached(req)
            }
            return renewal.ttl
        } catch {
            throw EtcdError.from(error)
        }
    }

    /// Time to live from this member's lessor (after a read barrier), which must be the leader.
    func timeToLiveLocally(_ r: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        guard isLeader else { throw EtcdError.notLeader }
        try await linearizableBarrier()
        var resp = Etcdserverpb_LeaseTimeToLiveResponse()
        resp.id = r.id
        do {
            let t = try lessor.timeToLive(id: r.id, includeKeys: r.keys)
            resp.ttl = t.remainingTTL
            resp.grantedTtl = t.grantedTTL
            resp.keys = t.keys.map { Data($0) }
        } catch LeaseError.leaseNotFound(_), LeaseError.leaseExpired(_) {
            resp.ttl = -1
        } catch {
            throw EtcdError.from(error)
        }
        resp.header = header()
        return resp
    }

    /// Runs `local` when this member leads, else `forward` to the leader; retries (every 50 ms)
    /// while the leader is unreachable or changes, for at most the request timeout, as etcd.
    /// No leader within two election timeouts: "etcdserver: no leader".
    func onLeader<T: Sendable>(local: () async throws -> T,
                               forward: (UInt64, Duration) async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + requestTimeout
        while true {
            try await waitForLeader()
            let leader = leaderID
            do {
                if leader == memberID { return try await local() }
                return try await forward(leader, max(.milliseconds(100), deadline - .now))
            } catch let e as EtcdError where e != .notLeader && e != .stopped && e.code != .unavailable {
                throw e
            } catch let e as EtcdError where e == .stopped {
                throw e
            } catch {
                if raftLoop.hasExited { throw EtcdError.stopped }
            }
            if ContinuousClock.now >= deadline { throw EtcdError.timeout }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// LeaseLeases: every granted lease.
    public func leaseLeases() async throws -> Etcdserverpb_LeaseLeasesResponse {
        try await linearizableBarrier()
        var resp = Etcdserverpb_LeaseLeasesResponse()
        resp.leases = lessor.leases().map { id in
            var s = Etcdserverpb_LeaseStatus()
            s.id = id
            return s
        }
        resp.header = header()
        return resp
    }

    // MARK: Watch

    /// A new watch stream on the keyspace (the Watch service drives it).
    /// It lives through snapshot installs: the keyspace restores in place and keeps its watchers.
    public func makeWatchStream() -> WatchStream {
        store.makeWatchStream()
    }
}
