import EtcdProto

/// The leader's side of lease calls forwarded by followers over the peer protocol.
extension EtcdServer: PeerLeaseHandler {
    func peerLeaseRenew(_ id: Int64) async throws -> Int64 {
        try renewLocally(id)
    }

    func peerLeaseTimeToLive(_ request: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        try await timeToLiveLocally(request)
    }
}
