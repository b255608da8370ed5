import EtcdProto
import Foundation
import ServerFormat

extension EtcdServer {
    /// Publishes this member's name and client URLs through the log (etcd's attributes
    /// update), retrying until it is applied or the server stops.
    func publishAttributes() async {
        var attrs = Swetcd_Internal_MemberAttributes()
        attrs.memberID = memberID
        attrs.name = name
        attrs.clientUrls = config.advertiseClientURLs.map(\.description)
        var req = Swetcd_Internal_InternalRequest()
        req.memberAttributes = attrs
        while !closing.isFired, !Task.isCancelled {
            do {
                // A learner's publish goes through too, as in etcd (else its client URLs
                // never reach `member list`).
                _ = try await propose(req, internalFromLearner: true)
                logger.info("published local member to cluster through raft", metadata: [
                    "name": "\(name)", "client-urls": "\(attrs.clientUrls)",
                ])
                return
            } catch let e as EtcdError where e == .stopped {
                return
            } catch {
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    /// Applies a member's published attributes (apply thread, inside the entry's batch):
    /// the member's record (memory and the backend's members bucket) gets the name and client
    /// URLs; a member that is not part of the membership is ignored.
    func applyMemberAttributes(_ a: Swetcd_Internal_MemberAttributes) throws {
        guard let record = membership.setAttributes(a.memberID, name: a.name, clientURLs: a.clientUrls) else { return }
        try MembershipStore.record(MembershipChange(operation: .update, member: record), result: record, in: backend)
    }
}
