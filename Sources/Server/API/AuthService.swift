public import EtcdProto
public import GRPCCore

/// etcd's Auth service on an ``EtcdServer``: every change goes through the log (passwords
/// hashed with bcrypt first, so the clear text never enters it); while auth is enabled only a
/// root-role user may manage users and roles (a user may read itself and its roles).
public struct AuthService: Etcdserverpb_Auth.SimpleServiceProtocol {
    let server: EtcdServer

    /// The service for `server`.
    public init(server: EtcdServer) { self.server = server }

    /// etcd's error for Authenticate with auth disabled.
    public static let notEnabled = EtcdError.authNotEnabled.rpcError

    private func change<R: Sendable>(_ make: () -> R, _ set: @escaping (inout Swetcd_Internal_InternalRequest) -> Void,
                                     header: (inout R, Etcdserverpb_ResponseHeader) -> Void) async throws -> R {
        try await etcdRPC {
            try await server.proposeAuth(set)
            var out = make()
            header(&out, server.header())
            return out
        }
    }

    public func authStatus(request: Etcdserverpb_AuthStatusRequest, context: ServerContext) async throws -> Etcdserverpb_AuthStatusResponse {
        try await etcdRPC { try server.authStatus() }
    }

    public func authenticate(request: Etcdserverpb_AuthenticateRequest, context: ServerContext) async throws -> Etcdserverpb_AuthenticateResponse {
        try await etcdRPC { try await server.authenticate(request) }
    }

    public func authEnable(request: Etcdserverpb_AuthEnableRequest, context: ServerContext) async throws -> Etcdserverpb_AuthEnableResponse {
        try await change(Etcdserverpb_AuthEnableResponse.init, { $0.authEnable = request }) { $0.header = $1 }
    }

    public func authDisable(request: Etcdserverpb_AuthDisableRequest, context: ServerContext) async throws -> Etcdserverpb_AuthDisableResponse {
        try await change(Etcdserverpb_AuthDisableResponse.init, { $0.authDisable = request }) { $0.header = $1 }
    }

    public func userAdd(request: Etcdserverpb_AuthUserAddRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserAddResponse {
        try await etcdRPC {
            if request.name.isEmpty { throw EtcdError.userEmpty }
            var r = request
            if !r.options.noPassword && r.hashedPassword.isEmpty { r.hashedPassword = try server.hashPassword(r.password) }
            r.password = ""
            let sent = r
            return try await change(Etcdserverpb_AuthUserAddResponse.init, { $0.authUserAdd = sent }) { $0.header = $1 }
        }
    }

    public func userGet(request: Etcdserverpb_AuthUserGetRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserGetResponse {
        try await etcdRPC {
            try await server.readBarrier()
            return try server.userGet(request.name)
        }
    }

    public func userList(request: Etcdserverpb_AuthUserListRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserListResponse {
        try await etcdRPC {
            try server.requireRoot()
            try await server.readBarrier()
            var out = Etcdserverpb_AuthUserListResponse()
            out.header = server.header()
            out.users = server.auth.userNames
            return out
        }
    }

    public func userDelete(request: Etcdserverpb_AuthUserDeleteRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserDeleteResponse {
        try await change(Etcdserverpb_AuthUserDeleteResponse.init, { $0.authUserDelete = request }) { $0.header = $1 }
    }

    public func userChangePassword(request: Etcdserverpb_AuthUserChangePasswordRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserChangePasswordResponse {
        try await etcdRPC {
            var r = request
            if r.hashedPassword.isEmpty { r.hashedPassword = try server.hashPassword(r.password) }
            r.password = ""
            let sent = r
            return try await change(Etcdserverpb_AuthUserChangePasswordResponse.init, { $0.authUserChangePassword = sent }) { $0.header = $1 }
        }
    }

    public func userGrantRole(request: Etcdserverpb_AuthUserGrantRoleRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserGrantRoleResponse {
        try await change(Etcdserverpb_AuthUserGrantRoleResponse.init, { $0.authUserGrantRole = request }) { $0.header = $1 }
    }

    public func userRevokeRole(request: Etcdserverpb_AuthUserRevokeRoleRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserRevokeRoleResponse {
        try await change(Etcdserverpb_AuthUserRevokeRoleResponse.init, { $0.authUserRevokeRole = request }) { $0.header = $1 }
    }

    public func roleAdd(request: Etcdserverpb_AuthRoleAddRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleAddResponse {
        try await change(Etcdserverpb_AuthRoleAddResponse.init, { $0.authRoleAdd = request }) { $0.header = $1 }
    }

    public func roleGet(request: Etcdserverpb_AuthRoleGetRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleGetResponse {
        try await etcdRPC {
            try await server.readBarrier()
            return try server.roleGet(request.role)
        }
    }

    public func roleList(request: Etcdserverpb_AuthRoleListRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleListResponse {
        try await etcdRPC {
            try server.requireRoot()
            try await server.readBarrier()
            var out = Etcdserverpb_AuthRoleListResponse()
            out.header = server.header()
            out.roles = server.auth.roleNames
            return out
        }
    }

    public func roleDelete(request: Etcdserverpb_AuthRoleDeleteRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleDeleteResponse {
        try await change(Etcdserverpb_AuthRoleDeleteResponse.init, { $0.authRoleDelete = request }) { $0.header = $1 }
    }

    public func roleGrantPermission(request: Etcdserverpb_AuthRoleGrantPermissionRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleGrantPermissionResponse {
        try await etcdRPC {
            if !request.hasPerm { throw EtcdError.permissionNotGiven }
            return try await change(Etcdserverpb_AuthRoleGrantPermissionResponse.init, { $0.authRoleGrantPermission = request }) { $0.header = $1 }
        }
    }

    public func roleRevokePermission(request: Etcdserverpb_AuthRoleRevokePermissionRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleRevokePermissionResponse {
        try await change(Etcdserverpb_AuthRoleRevokePermissionResponse.init, { $0.authRoleRevokePermission = request }) { $0.header = $1 }
    }
}
