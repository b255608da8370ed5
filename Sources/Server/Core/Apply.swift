import EtcdProto
import Foundation
import LMDBBackend
import Logging
import MVCC
import Raft
import SwiftProtobuf

extension EtcdServer {
    /// Applies one committed normal entry above the backend's consistent index (apply
    /// thread): its changes and its index go into one backend batch, and its proposer (if it
    /// waits) gets the result.
    func apply(normal entry: Entry) throws {
        let req: Swetcd_Internal_InternalRequest
        do {
            req = try Swetcd_Internal_InternalRequest(serializedBytes: entry.data)
        } catch {
            logger.error("skipping an undecodable log entry", metadata: ["index": "\(entry.index)", "error": "\(error)"])
            try markApplied(entry)
            return
        }
        let id = req.header.id
        var outcome: Result<ApplyResult, any Error> = .success(.none)
        try backend.batch {
            do {
                outcome = .success(try applyRequest(req, waited: id != 0 && waiters.isRegistered(id)))
            } catch let e where Self.isRequestError(e) {
                outcome = .failure(EtcdError.from(e))
            }
            try backend.setConsistentIndex(entry.index, term: entry.term)
        }
        if id != 0 { waiters.trigger(id, outcome) }
    }

    /// A put, a lease grant, a no-op or an empty entry: read from the request's first field
    /// after its header, without decoding it.
    func appliesQuickly(_ entry: Entry) -> Bool { Self.appliesQuickly(entry.data) }

    static func appliesQuickly(_ data: [UInt8]) -> Bool {
        guard let field = requestField(data) else { return data.isEmpty }
        return field == 2 || field == 6 || field == 10  // put, lease_grant, noop (internal.proto)
    }

    /// The field number of an encoded `InternalRequest`'s request (its first top-level field
    /// other than the header, 1), or nil if there is none or the bytes do not parse.
    static func requestField(_ data: [UInt8]) -> Int? {
        var i = 0
        func varint() -> UInt64? {
            var v: UInt64 = 0
            var shift: UInt64 = 0
            while i < data.count, shift < 64 {
                let b = data[i]
                i += 1
                v |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return v }
                shift += 7
            }
            return nil
        }
        while i < data.count {
            guard let tag = varint() else { return nil }
            let field = Int(tag >> 3)
            if field != 1 { return field }
            guard tag & 7 == 2, let len = varint(), len <= UInt64(data.count - i) else { return nil }
            i += Int(len)
        }
        return nil
    }

    func markApplied(_ entry: Entry) throws {
        try backend.batch { try backend.setConsistentIndex(entry.index, term: entry.term) }
    }

    /// Errors that belong to one request (the client gets them); anything else stops the loop.
    static func isRequestError(_ e: any Error) -> Bool {
        switch e {
        case let m as MVCCError:
            if case .corrupt = m { return false }
            if case .stopped = m { return false }
            return true
        case let l as LeaseError:
            switch l {
            case .corruptRecord, .noKeyDeleter: return false
            default: return true
            }
        case is EtcdError: return true
        default: return false
        }
    }

    private func applyRequest(_ req: Swetcd_Internal_InternalRequest, waited: Bool) throws -> ApplyResult {
        if let refusal = alarmRefusal(req.request) { throw refusal }
        try checkAuthRevision(req.header)
        if let change = Self.authChange(req) {
            try applyAuth(change)
            return .none
        }
        switch req.request {
        case .put(let p)?:
            let r = try store.put(PutRequest(p))
            var resp = Etcdserverpb_PutResponse(r)
            resp.header = header(revision: r.revision)
            return .put(resp)
        case .deleteRange(let d)?:
            let r = try store.deleteRange(DeleteRangeRequest(d))
            var resp = Etcdserverpb_DeleteRangeResponse(r)
            resp.header = header(revision: r.revision)
            return .deleteRange(resp)
        case .txn(let t)?:
            let r = try store.txn(TxnRequest(t))
            return .txn(Etcdserverpb_TxnResponse(r, header: header(revision: r.revision)))
        case .compaction(let c)?:
            let job = try store.scheduleCompaction(c.revision)
            var resp = Etcdserverpb_CompactionResponse()
            resp.header = header()
            if waited && c.physical { return .compaction(resp, job) }
            runCompaction(job)
            return .compaction(resp, job)
        case .leaseGrant(let g)?:
            let ttl = try lessor.grant(id: g.id, ttl: g.ttl)
            metrics.leaseGranted(ttl: ttl)
            var resp = Etcdserverpb_LeaseGrantResponse()
            resp.id = g.id
            resp.ttl = ttl
            resp.header = header()
            return .leaseGrant(resp)
        case .leaseRevoke(let r)?:
            try lessor.revoke(id: r.id)
            metrics.leaseRevoked()
            var resp = Etcdserverpb_LeaseRevokeResponse()
            resp.header = header()
            return .leaseRevoke(resp)
        case .leaseCheckpoint(let c)?:
            try lessor.applyCheckpoints(c.checkpoints.map { LeaseCheckpoint(id: $0.id, remainingTTL: $0.remainingTtl) })
            return .none
        case .alarm(let a)?:
            return .alarm(try applyAlarm(a))
        case .memberAttributes(let a)?:
            try applyMemberAttributes(a)
            return .none
        case .noop?, nil:
            return .none
        case .authEnable?, .authDisable?, .authUserAdd?, .authUserDelete?, .authUserChangePassword?,
             .authUserGrantRole?, .authUserRevokeRole?, .authRoleAdd?, .authRoleDelete?,
             .authRoleGrantPermission?, .authRoleRevokePermission?:
            return .none  // handled above
        }
    }

    /// Removes compacted entries from the backend off the Raft loop.
    func runCompaction(_ job: MVCCStore.CompactionJob) {
        let logger = self.logger
        Task.detached {
            do { try await HeavyWorkPool.shared.run { try job.run() } } catch {
                logger.error("compaction failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
