public import EtcdProto
public import GRPCCore

/// What Cluster asks of the server (implemented by `EtcdServer`; fakes in tests).
public protocol ClusterBackend: Sendable {
    /// A response header at the current revision.
    func responseHeader() -> Etcdserverpb_ResponseHeader
    /// The members as this member knows them; when `linearizable`, after a ReadIndex barrier.
    func memberList(linearizable: Bool) async throws -> [Etcdserverpb_Member]
    /// Adds a member (voter or learner) with `peerURLs`; returns it and the new member list.
    func memberAdd(peerURLs: [String], isLearner: Bool) async throws -> (Etcdserverpb_Member, [Etcdserverpb_Member])
    /// Removes member `id`; returns the remaining members.
    func memberRemove(id: UInt64) async throws -> [Etcdserverpb_Member]
    /// Replaces the peer URLs of member `id`; returns the member list.
    func memberUpdate(id: UInt64, peerURLs: [String]) async throws -> [Etcdserverpb_Member]
    /// Turns learner `id` into a voter; returns the member list.
    func memberPromote(id: UInt64) async throws -> [Etcdserverpb_Member]
}

extension ClusterBackend {
    public func memberAdd(peerURLs: [String], isLearner: Bool) async throws -> (Etcdserverpb_Member, [Etcdserverpb_Member]) {
        throw ClusterService.unsupported("member add")
    }
    public func memberRemove(id: UInt64) async throws -> [Etcdserverpb_Member] { throw ClusterService.unsupported("member remove") }
    public func memberUpdate(id: UInt64, peerURLs: [String]) async throws -> [Etcdserverpb_Member] {
        throw ClusterService.unsupported("member update")
    }
    public func memberPromote(id: UInt64) async throws -> [Etcdserverpb_Member] { throw ClusterService.unsupported("member promote") }
}

/// etcd's Cluster service. On the peer listener (`peerFacing`) it answers only MemberList
/// (how a joining member learns the membership) and MemberPromote (forwarded by a follower to
/// the leader, which alone knows whether the learner is in sync).
public struct ClusterService: Etcdserverpb_Cluster.SimpleServiceProtocol {
    let backend: any ClusterBackend
    let peerFacing: Bool

    /// A service answering from `backend`; `peerFacing` restricts it as described above.
    public init(backend: any ClusterBackend, peerFacing: Bool = false) {
        self.backend = backend
        self.peerFacing = peerFacing
    }

    static func unsupported(_ what: String) -> RPCError {
        RPCError(code: .unimplemented, message: "\(what) is not supported here")
    }

    public func memberAdd(request: Etcdserverpb_MemberAddRequest, context: ServerContext) async throws -> Etcdserverpb_MemberAddResponse {
        if peerFacing { throw Self.unsupported("member add") }
        var out = Etcdserverpb_MemberAddResponse()
        (out.member, out.members) = try await rpc { try await backend.memberAdd(peerURLs: request.peerUrls, isLearner: request.isLearner) }
        out.header = backend.responseHeader()
        return out
    }

    public func memberRemove(request: Etcdserverpb_MemberRemoveRequest, context: ServerContext) async throws -> Etcdserverpb_MemberRemoveResponse {
        if peerFacing { throw Self.unsupported("member remove") }
        var out = Etcdserverpb_MemberRemoveResponse()
        out.members = try await rpc { try await backend.memberRemove(id: request.id) }
        out.header = backend.responseHeader()
        return out
    }

    public func memberUpdate(request: Etcdserverpb_MemberUpdateRequest, context: ServerContext) async throws -> Etcdserverpb_MemberUpdateResponse {
        if peerFacing { throw Self.unsupported("member update") }
        var out = Etcdserverpb_MemberUpdateResponse()
        out.members = try await rpc { try await backend.memberUpdate(id: request.id, peerURLs: request.peerUrls) }
        out.header = backend.responseHeader()
        return out
    }

    public func memberList(request: Etcdserverpb_MemberListRequest, context: ServerContext) async throws -> Etcdserverpb_MemberListResponse {
        var out = Etcdserverpb_MemberListResponse()
        out.members = try await rpc { try await backend.memberList(linearizable: request.linearizable && !peerFacing) }
        out.header = backend.responseHeader()
        return out
    }

    public func memberPromote(request: Etcdserverpb_MemberPromoteRequest, context: ServerContext) async throws -> Etcdserverpb_MemberPromoteResponse {
        var out = Etcdserverpb_MemberPromoteResponse()
        out.members = try await rpc { try await backend.memberPromote(id: request.id) }
        out.header = backend.responseHeader()
        return out
    }
}
