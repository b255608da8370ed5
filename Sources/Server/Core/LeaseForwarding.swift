import EtcdProto

/// The leader's side of lease calls forwarded by followers over the peer protocol.
extension EtcdServer: PeerLeaseHandler {
    func peerLeaseRenew(_ id: Int64) async throws -> Int64 {
        try renewLocally(id)
    }

    /// Each lease's own answer; not being the leader fails the whole batch (the follower then
    /// finds the new leader).
    func peerLeaseRenewBatch(_ ids: [Int64]) async throws -> [Result<Int64, EtcdError>] {
        try ids.map { id in
            do {
                return .success(try renewLocally(id))
            } catch let e as EtcdError where e != .notLeader {
                return .failure(e)
            }
        }
    }

    func peerLeaseTimeToLive(_ request: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        try await timeToLiveLocally(request)
    }
}
