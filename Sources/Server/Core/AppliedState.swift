import EtcdProto
import Foundation
import MVCC
import Raft
import Storage
import SwiftProtobuf

// What the Raft loop and its apply thread call on the member (see `AppliedStateMachine`). Applying entries lives in
// Apply.swift and MembershipServer.swift, installing a leader's snapshot in SnapshotInstall.swift.

extension EtcdServer: AppliedStateMachine {
    func snapshotData() throws -> [UInt8] {
        try backend.commit()
        return membershipData()
    }

    /// The membership as stored in Raft snapshots (see `ClusterMembership.encodedForSnapshot`).
    func membershipData() -> [UInt8] { membership.encodedForSnapshot() }

    func commitIfDue() throws {
        _ = try backend.commitIfDue()
    }

    /// The leader's lessor is the primary one: it tracks expiry and checkpoints.
    func leadershipChanged(isLeader: Bool) {
        if isLeader {
            lessor.promote(extension: electionTimeout)
        } else {
            lessor.demote()
        }
    }

    var autoPromotesLearners: Bool { config.autoPromoteLearners }

    /// Proposes revocations of expired leases and one checkpoint entry for the due checkpoints.
    func leaseHousekeeping() {
        let expired = lessor.expiredLeases()
        if !expired.isEmpty { metrics.leasesExpired(expired.count) }
        for id in expired {
            var req = Swetcd_Internal_InternalRequest()
            var revoke = Etcdserverpb_LeaseRevokeRequest()
            revoke.id = id
            req.leaseRevoke = revoke
            proposeDetached(req)
        }
        let due = lessor.dueCheckpoints()
        if !due.isEmpty {
            var req = Swetcd_Internal_InternalRequest()
            req.leaseCheckpoint = Self.checkpointRequest(due)
            proposeDetached(req)
        }
    }

    static func checkpointRequest(_ cps: [LeaseCheckpoint]) -> Etcdserverpb_LeaseCheckpointRequest {
        var r = Etcdserverpb_LeaseCheckpointRequest()
        r.checkpoints = cps.map { cp in
            var c = Etcdserverpb_LeaseCheckpoint()
            c.id = cp.id
            c.remainingTtl = cp.remainingTTL
            return c
        }
        return r
    }
}

extension EtcdServer: RaftLoopRequests {
    /// Tells the waiter of a dropped proposal (if it has one) why.
    func proposalFailed(_ data: [UInt8], _ error: EtcdError) {
        guard let req = try? Swetcd_Internal_InternalRequest(serializedBytes: data) else { return }
        waiters.trigger(req.header.id, .failure(error))
    }

    func confChangeFailed(_ id: UInt64, _ error: EtcdError) {
        waiters.trigger(id, .failure(error))
    }

    func readsDone(_ readers: [UInt64], _ result: Result<Void, any Error>) {
        for r in readers { readWaiters.trigger(r, result) }
    }

    /// Fails every waiting proposal and fires ``fatal``.
    func loopFailed(_ error: any Error) {
        fatalReasonSlot.withLock { $0 = "\(error)" }
        waiters.failAll(EtcdError.stopped)
        fatal.fire()
    }
}
