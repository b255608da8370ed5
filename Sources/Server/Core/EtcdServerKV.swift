import EtcdProto
import Foundation
import MVCC

/// The operations the KV and Lease services call. Changes go through the Raft log and return
/// their own apply result; reads are linearizable (ReadIndex) unless `serializable` is set.
extension EtcdServer {
    // MARK: KV

    /// Range: linearizable unless `serializable`.
    public func range(_ r: Etcdserverpb_RangeRequest) async throws -> Etcdserverpb_RangeResponse {
        if r.key.isEmpty { throw EtcdError.keyNotProvided }
        if !r.serializable { try await linearizableBarrier() }
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
        if p.key.isEmpty { throw EtcdError.keyNotProvided }
        if p.ignoreValue && !p.value.isEmpty { throw EtcdError.valueProvided }
        if p.ignoreLease && p.lease != 0 { throw EtcdError.leaseProvided }
        var req = Swetcd_Internal_InternalRequest()
        req.put = p
        guard case .put(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// DeleteRange through the log.
    public func deleteRange(_ d: Etcdserverpb_DeleteRangeRequest) async throws -> Etcdserverpb_DeleteRangeResponse {
        if d.key.isEmpty { throw EtcdError.keyNotProvided }
        var req = Swetcd_Internal_InternalRequest()
        req.deleteRange = d
        guard case .deleteRange(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// Txn: a txn without writes is served locally after a read barrier (as etcd does);
    /// anything else goes through the log.
    public func txn(_ t: Etcdserverpb_TxnRequest) async throws -> Etcdserverpb_TxnResponse {
        try checkTxn(t, maxOps: Int(config.maxTxnOps))
        if Self.isReadOnly(t) {
            try await linearizableBarrier()
            do {
                let r = try store.txn(TxnRequest(t))
                return Etcdserverpb_TxnResponse(r, header: header(revision: r.revision))
            } catch {
                throw EtcdError.from(error)
            }
        }
        var req = Swetcd_Internal_InternalRequest()
        req.txn = t
        guard case .txn(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// Compact through the log; with `physical` it returns once the entries are gone.
    public func compact(_ c: Etcdserverpb_CompactionRequest) async throws -> Etcdserverpb_CompactionResponse {
        var req = Swetcd_Internal_InternalRequest()
        req.compaction = c
        guard case .compaction(let resp, let job) = try await propose(req) else {
            throw EtcdError.internal("unexpected apply result")
        }
        if c.physical {
            try await Task.detached { try job.run() }.value
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
        var req = Swetcd_Internal_InternalRequest()
        req.leaseRevoke = r
        guard case .leaseRevoke(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// One keep-alive: renews on the leader and returns the new TTL.
    public func leaseRenew(_ id: Int64) async throws -> Etcdserverpb_LeaseKeepAliveResponse {
        try refuseOnLearner()
        try await waitForLeader()
        guard isLeader else { throw EtcdError.notLeader }
        do {
            let renewal = try lessor.renew(id: id)
            metrics.leaseRenewed()
            if let clear = renewal.clearCheckpoint {
                var req = Swetcd_Internal_InternalRequest()
                req.leaseCheckpoint = Self.checkpointRequest([clear])
                proposeDetached(req)
            }
            var resp = Etcdserverpb_LeaseKeepAliveResponse()
            resp.header = header()
            resp.id = id
            resp.ttl = renewal.ttl
            return resp
        } catch {
            throw EtcdError.from(error)
        }
    }

    /// LeaseTimeToLive on the leader; an unknown lease answers TTL -1, as etcd.
    public func leaseTimeToLive(_ r: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
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
    public func makeWatchStream() -> WatchStream { store.makeWatchStream() }
}
