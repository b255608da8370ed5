public import EtcdProto
public import GRPCCore

/// etcd's Auth service while authentication is not supported: AuthStatus says it is disabled,
/// Authenticate answers etcd's "authentication is not enabled", and every other call a clear
/// Unimplemented error (never a fake success).
public struct AuthService: Etcdserverpb_Auth.SimpleServiceProtocol {
    let header: @Sendable () -> Etcdserverpb_ResponseHeader

    /// A service stamping responses with `header()`.
    public init(header: @escaping @Sendable () -> Etcdserverpb_ResponseHeader) { self.header = header }

    /// etcd's error for Authenticate with auth disabled.
    public static let notEnabled = RPCError(code: .failedPrecondition, message: "etcdserver: authentication is not enabled")
    /// The answer to every other auth call.
    public static let unsupported = RPCError(code: .unimplemented, message: "auth is not supported yet")

    public func authStatus(request: Etcdserverpb_AuthStatusRequest, context: ServerContext) async throws -> Etcdserverpb_AuthStatusResponse {
        var out = Etcdserverpb_AuthStatusResponse()
        out.header = header()
        out.enabled = false
        return out
    }

    public func authenticate(request: Etcdserverpb_AuthenticateRequest, context: ServerContext) async throws -> Etcdserverpb_AuthenticateResponse {
        throw Self.notEnabled
    }

    public func authEnable(request: Etcdserverpb_AuthEnableRequest, context: ServerContext) async throws -> Etcdserverpb_AuthEnableResponse {
        throw Self.unsupported
    }

    public func authDisable(request: Etcdserverpb_AuthDisableRequest, context: ServerContext) async throws -> Etcdserverpb_AuthDisableResponse {
        throw Self.unsupported
    }

    public func userAdd(request: Etcdserverpb_AuthUserAddRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserAddResponse {
        throw Self.unsupported
    }

    public func userGet(request: Etcdserverpb_AuthUserGetRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserGetResponse {
        throw Self.unsupported
    }

    public func userList(request: Etcdserverpb_AuthUserListRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserListResponse {
        throw Self.unsupported
    }

    public func userDelete(request: Etcdserverpb_AuthUserDeleteRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserDeleteResponse {
        throw Self.unsupported
    }

    public func userChangePassword(request: Etcdserverpb_AuthUserChangePasswordRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserChangePasswordResponse {
        throw Self.unsupported
    }

    public func userGrantRole(request: Etcdserverpb_AuthUserGrantRoleRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserGrantRoleResponse {
        throw Self.unsupported
    }

    public func userRevokeRole(request: Etcdserverpb_AuthUserRevokeRoleRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserRevokeRoleResponse {
        throw Self.unsupported
    }

    public func roleAdd(request: Etcdserverpb_AuthRoleAddRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleAddResponse {
        throw Self.unsupported
    }

    public func roleGet(request: Etcdserverpb_AuthRoleGetRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleGetResponse {
        throw Self.unsupported
    }

    public func roleList(request: Etcdserverpb_AuthRoleListRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleListResponse {
        throw Self.unsupported
    }

    public func roleDelete(request: Etcdserverpb_AuthRoleDeleteRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleDeleteResponse {
        throw Self.unsupported
    }

    public func roleGrantPermission(request: Etcdserverpb_AuthRoleGrantPermissionRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleGrantPermissionResponse {
        throw Self.unsupported
    }

    public func roleRevokePermission(request: Etcdserverpb_AuthRoleRevokePermissionRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleRevokePermissionResponse {
        throw Self.unsupported
    }
}
