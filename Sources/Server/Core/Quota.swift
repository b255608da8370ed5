import EtcdProto
import Foundation
import Logging

/// The backend space quota (`--quota-backend-bytes`), with etcd's cost estimate.
///
/// A change is admitted while `backend file size + estimated cost < limit`; the file size
/// counts free pages, as etcd counts bbolt's, so only compaction plus defragmentation (or a
/// larger quota) lowers it. Requests that cannot grow the keyspace cost 0 and always pass.
struct BackendQuota: Sendable, Equatable {
    /// etcd's default quota: 2 GiB.
    static let defaultBytes: Int64 = 2 << 30
    /// etcd's estimate of the metadata stored with each put (revision, index entry, ...).
    static let kvOverhead = 256
    /// etcd's estimate of the space a lease takes.
    static let leaseOverhead = 64

    /// The limit in bytes; nil when the quota is disabled (a negative flag value).
    let limit: Int64?

    /// The quota for a `--quota-backend-bytes` value: 0 is the default, negative disables.
    init(flag: Int64) {
        if flag < 0 {
            limit = nil
        } else {
            limit = flag == 0 ? Self.defaultBytes : flag
        }
    }

    /// Whether a request costing `cost` bytes may be proposed when the backend file is
    /// `size` bytes.
    func admits(cost: Int, size: Int64) -> Bool {
        guard cost > 0, let limit else { return true }
        return size + Int64(cost) < limit
    }

    /// The estimated backend growth of a proposal: puts count key, value and overhead; a txn
    /// counts the costlier of its two branches; a lease grant counts a lease; anything else
    /// (reads, deletes, compactions, alarms, revokes) costs nothing.
    static func cost(_ request: Swetcd_Internal_InternalRequest.OneOf_Request?) -> Int {
        switch request {
        case .put(let p)?: return putCost(p)
        case .txn(let t)?: return txnCost(t)
        case .leaseGrant?: return leaseOverhead
        default: return 0
        }
    }

    static func putCost(_ p: Etcdserverpb_PutRequest) -> Int {
        kvOverhead + p.key.count + p.value.count
    }

    /// The costlier branch of `t`. Unlike etcd (which looks at the top level only) the puts of
    /// nested txns count too, so a nested put cannot slip past the quota or a NOSPACE alarm.
    static func txnCost(_ t: Etcdserverpb_TxnRequest) -> Int {
        max(branchCost(t.success), branchCost(t.failure))
    }

    private static func branchCost(_ ops: [Etcdserverpb_RequestOp]) -> Int {
        ops.reduce(0) { sum, op in
            switch op.request {
            case .requestPut(let p)?: return sum + putCost(p)
            case .requestTxn(let n)?: return sum + txnCost(n)
            default: return sum
            }
        }
    }
}

extension EtcdServer {
    /// The quota this member enforces.
    var quota: BackendQuota { BackendQuota(flag: config.quotaBackendBytes) }

    /// Before proposing `request`: if its cost would take the backend over the quota, raise
    /// NOSPACE for this member through the log (unless it is already raised) and fail with
    /// "etcdserver: mvcc: database space exceeded", as etcd's quota check does.
    func checkQuota(_ request: Swetcd_Internal_InternalRequest) async throws {
        if quotaAdmits(request) { return }
        let cost = BackendQuota.cost(request.request)
        let limit = quota.limit ?? 0
        let size = (try? backend.fileSize()) ?? 0
        if !alarms.isActive(memberID: memberID, type: .nospace) {
            logger.warning("backend quota exceeded; raising NOSPACE", metadata: [
                "quota-size-bytes": "\(limit)", "current-db-size-bytes": "\(size)", "request-cost": "\(cost)",
            ])
            var alarm = Etcdserverpb_AlarmRequest()
            alarm.action = .activate
            alarm.memberID = memberID
            alarm.alarm = .nospace
            var req = Swetcd_Internal_InternalRequest()
            req.alarm = alarm
            // The client's answer is NOSPACE whether or not the alarm got through (etcd too).
            _ = try? await propose(req)
        }
        throw EtcdError.noSpace
    }

    /// Whether the quota lets `request` in as things stand (no side effect: a refusal raises
    /// the NOSPACE alarm in ``checkQuota(_:)``).
    func quotaAdmits(_ request: Swetcd_Internal_InternalRequest) -> Bool {
        let cost = BackendQuota.cost(request.request)
        let quota = self.quota
        guard cost > 0, quota.limit != nil else { return true }
        return quota.admits(cost: cost, size: (try? backend.committedFileSize()) ?? 0)
    }

    /// Logs the quota in force (once, at start), as etcd does.
    func logQuota() {
        guard let limit = quota.limit else {
            logger.warning("disabled backend quota", metadata: ["quota-backend-bytes": "\(config.quotaBackendBytes)"])
            return
        }
        logger.info("enabled backend quota", metadata: [
            "quota-name": "\(config.quotaBackendBytes == 0 ? "v3-applier-default" : "v3-applier")",
            "quota-size-bytes": "\(limit)",
        ])
    }
}
