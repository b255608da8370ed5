public import EtcdProto
public import GRPCCore

/// What Cluster asks of the server (implemented by `EtcdServer`; fakes in tests).
public protocol ClusterBackend: Sendable {
    /// A response header at the current revision.
    func responseHeader() -> Etcdserverpb_ResponseHeader
    /// The members as this member knows them; when `linearizable`, after a ReadIndex barrier.
    func memberList(linearizable: Bool) async throws -> [Etcdserverpb_Member]
}

/// etcd's Cluster service: MemberList; membership changes answer Unimplemented until they are
/// supported (never a fake success).
public struct ClusterService: Etcdserverpb_Cluster.SimpleServiceProtocol {
    let backend: any ClusterBackend

    /// A service answering from `backend`.
    public init(backend: any ClusterBackend) { self.backend = backend }

    static func unsupported(_ what: String) -> RPCError {
        RPCError(code: .unimplemented, message: "\(what) is not supported yet: membership changes come with runtime reconfiguration")
    }

    public func memberAdd(request: Etcdserverpb_MemberAddRequest, context: ServerContext) async throws -> Etcdserverpb_MemberAddResponse {
        throw Self.unsupported("member add")
    }

    public func memberRemove(request: Etcdserverpb_MemberRemoveRequest, context: ServerContext) async throws -> Etcdserverpb_MemberRemoveResponse {
        throw Self.unsupported("member remove")
    }

    public func memberUpdate(request: Etcdserverpb_MemberUpdateRequest, context: ServerContext) async throws -> Etcdserverpb_MemberUpdateResponse {
        throw Self.unsupported("member update")
    }

    public func memberList(request: Etcdserverpb_MemberListRequest, context: ServerContext) async throws -> Etcdserverpb_MemberListResponse {
        var out = Etcdserverpb_MemberListResponse()
        out.members = try await rpc { try await backend.memberList(linearizable: request.linearizable) }
        out.header = backend.responseHeader()
        return out
    }

    public func memberPromote(request: Etcdserverpb_MemberPromoteRequest, context: ServerContext) async throws -> Etcdserverpb_MemberPromoteResponse {
        throw Self.unsupported("member promote")
    }
}
