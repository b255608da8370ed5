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

    /// A put, a lease grant, a no-op, a small put-only txn or an empty entry: read from the
    /// encoded request without decoding it.
    func appliesQuickly(_ entry: Entry) -> Bool { Self.appliesQuickly(entry.data) }

    static func appliesQuickly(_ data: [UInt8]) -> Bool {
        guard let (field, payload) = request(data) else { return data.isEmpty }
        switch field {
        case 2, 6, 10: return true  // put, lease_grant, noop (internal.proto)
        case 4: return payload.map { isSmallPutTxn(data, $0) } ?? false
        default: return false
        }
    }

    /// The most operations (compares, then ops of either branch) of a txn applied quickly.
    static let quickTxnOperations = 16

    /// Whether the encoded `TxnRequest` at `data[range]` costs a bounded few key lookups and
    /// writes: at most ``quickTxnOperations`` compares, each on one key (no `range_end`), and as
    /// many ops per branch, each a put. Any range, delete or nested txn, or bytes that do not
    /// parse, make it slow.
    static func isSmallPutTxn(_ data: [UInt8], _ range: Range<Int>) -> Bool {
        var compares = 0, success = 0, failure = 0
        return eachField(data, range) { field, wire, payload in
            guard wire == 2 else { return false }
            switch field {
            case 1:  // compare; its range_end is field 64
                compares += 1
                return compares <= quickTxnOperations && eachField(data, payload) { f, _, p in f != 64 || p.isEmpty }
            case 2, 3:  // success, failure: RequestOp with request_put = 2
                if field == 2 { success += 1 } else { failure += 1 }
                return max(success, failure) <= quickTxnOperations
                    && eachField(data, payload) { f, w, _ in f == 2 && w == 2 }
            default:
                return true
            }
        }
    }

    /// The field number of an encoded `InternalRequest`'s request (its first top-level field
    /// other than the header, 1), or nil if there is none or the bytes do not parse.
    static func requestField(_ data: [UInt8]) -> Int? { request(data)?.field }

    /// The request's field number and, when length-delimited, its payload's range in `data`.
    private static func request(_ data: [UInt8]) -> (field: Int, payload: Range<Int>?)? {
        var found: (field: Int, payload: Range<Int>?)?
        let parsed = eachField(data, data.indices) { field, wire, payload in
            guard field != 1 else { return wire == 2 }
            found = (field, wire == 2 ? payload : nil)
            return false
        }
        return parsed || found != nil ? found : nil
    }

    /// Walks the protobuf fields of `data[range]` in order: `body` gets each one's number, wire
    /// type and payload range (length-delimited fields; empty for the others) and returns
    /// whether to go on. Returns true when every field was walked, false when `body` stopped or
    /// the bytes do not parse.
    static func eachField(_ data: [UInt8], _ range: Range<Int>, _ body: (Int, Int, Range<Int>) -> Bool) -> Bool {
        var i = range.lowerBound
        let end = min(range.upperBound, data.count)
        func varint() -> UInt64? {
            var v: UInt64 = 0
            var shift: UInt64 = 0
            while i < end, shift < 64 {
                let b = data[i]
                i += 1
                v |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return v }
                shift += 7
            }
            return nil
        }
        while i < end {
            guard let tag = varint() else { return false }
            let field = Int(truncatingIfNeeded: tag >> 3), wire = Int(tag & 7)
            var payload = i..<i
            switch wire {
            case 0:
                guard varint() != nil else { return false }
            case 1, 5:
                let size = wire == 1 ? 8 : 4
                guard end - i >= size else { return false }
                i += size
            case 2:
                guard let len = varint(), len <= UInt64(end - i) else { return false }
                payload = i..<(i + Int(len))
                i += Int(len)
            default:
                return false
            }
            guard body(field, wire, payload) else { return false }
        }
        return true
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
