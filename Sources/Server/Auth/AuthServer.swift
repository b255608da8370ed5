import EtcdProto
import Foundation
import GRPCCore
import Synchronization

/// Who sent the request being served: set per call by ``TokenInterceptor`` (gRPC metadata
/// `token`, as etcd's clients send it) and by the JSON gateway (`Authorization` header).
enum RequestCredentials {
    @TaskLocal static var token: String?
    /// The common name of the verified client certificate of the call's connection (https://
    /// with `--client-cert-auth`), the user of a call without a token (as etcd).
    @TaskLocal static var certificateCommonName: String?
}

/// Puts the call's `token` metadata in ``RequestCredentials`` for the handler, streaming
/// handlers included (their producer runs after `next` returns, so it is wrapped too).
struct TokenInterceptor: ServerInterceptor {
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let token = request.metadata[stringValues: "token"].first(where: { _ in true })
        let commonName = ClientCertificateNames.shared.name(
            for: ClientCertificateNames.key(remote: context.remotePeer, local: context.localPeer))
        guard token != nil || commonName != nil else { return try await next(request, context) }
        func scoped<T>(_ body: () async throws -> T) async throws -> T {
            try await RequestCredentials.$token.withValue(token) {
                try await RequestCredentials.$certificateCommonName.withValue(commonName) { try await body() }
            }
        }
        var response = try await scoped { try await next(request, context) }
        if case .success(var contents) = response.accepted {
            let producer = contents.producer
            contents.producer = { writer in
                try await RequestCredentials.$token.withValue(token) {
                    try await RequestCredentials.$certificateCommonName.withValue(commonName) { try await producer(writer) }
                }
            }
            response.accepted = .success(contents)
        }
        return response
    }
}

/// etcd's "simple" tokens: random, kept in this member's memory only (a client that moves to
/// another member authenticates again, as with etcd), valid for `--auth-token-ttl` after their
/// last use, dropped when their user's password changes or the user is deleted.
final class SimpleTokens: Sendable {
    struct Entry: Sendable {
        var user: String
        var expires: ContinuousClock.Instant
    }

    private let ttl: Duration
    private let state = Mutex<(tokens: [String: Entry], counter: UInt64)>(([:], 0))
    /// At most this many live tokens (a client cannot make the member hold more).
    static let limit = 100_000

    init(ttl: Duration) { self.ttl = ttl }

    func issue(for user: String) -> String {
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        var rng = SystemRandomNumberGenerator()
        let random = String((0..<16).map { _ in letters[Int(rng.next() % UInt64(letters.count))] })
        let now = ContinuousClock.now
        return state.withLock { s in
            if s.tokens.count >= Self.limit { s.tokens = s.tokens.filter { $0.value.expires > now } }
            if s.tokens.count >= Self.limit, let oldest = s.tokens.min(by: { $0.value.expires < $1.value.expires }) {
                s.tokens.removeValue(forKey: oldest.key)
            }
            s.counter &+= 1
            let token = "\(random).\(s.counter)"
            s.tokens[token] = Entry(user: user, expires: now + ttl)
            return token
        }
    }

    /// The token's user (and its validity extended), or nil when unknown or expired.
    func user(of token: String) -> String? {
        let now = ContinuousClock.now
        return state.withLock { s in
            guard var e = s.tokens[token] else { return nil }
            guard e.expires > now else {
                s.tokens.removeValue(forKey: token)
                return nil
            }
            e.expires = now + ttl
            s.tokens[token] = e
            return e.user
        }
    }

    func invalidate(user: String) { state.withLock { s in s.tokens = s.tokens.filter { $0.value.user != user } } }
    func invalidateAll() { state.withLock { $0.tokens.removeAll() } }
}

extension JWTTokens {
    /// The caller of a request carrying JWT `token`, checked against the current auth state
    /// (`authRevision`, and `access` for the user's existence and permissions) at time `now`.
    /// A JWT carries the auth revision it was issued at: after any auth change the client must
    /// authenticate again (clientv3 does so on this error), as with etcd. The signature is
    /// verified once per token (``verifiedClaims(_:now:)``); these checks run every time.
    func caller(of token: String, authRevision: UInt64,
                access: (String) -> (isRoot: Bool, permissions: KeyPermissions)?, now: Date) throws -> AuthInfo {
        guard let claims = verifiedClaims(token, now: now), let a = access(claims.user) else {
            throw EtcdError.invalidAuthToken
        }
        if claims.revision < authRevision { throw EtcdError.authOldRevision }
        return AuthInfo(user: claims.user, revision: claims.revision, isRoot: a.isRoot, permissions: a.permissions)
    }
}

/// The authenticated caller of a request while auth is enabled.
struct AuthInfo: Sendable {
    var user: String
    var revision: UInt64
    var isRoot: Bool
    var permissions: KeyPermissions
}

extension EtcdServer {
    /// The caller, or nil when auth is disabled (everything is allowed then). Enabled: no
    /// token is "user name is empty", an unknown or expired one "invalid auth token".
    func authInfo() throws -> AuthInfo? {
        let status = auth.status
        guard status.enabled else { return nil }
        guard let token = RequestCredentials.token, !token.isEmpty else {
            // etcd: without a token, a verified client certificate's CN is the user (who must exist).
            guard let user = RequestCredentials.certificateCommonName, !user.isEmpty else { throw EtcdError.userEmpty }
            guard let access = auth.access(of: user) else { throw EtcdError.permissionDenied }
            return AuthInfo(user: user, revision: status.revision, isRoot: access.isRoot, permissions: access.permissions)
        }
        if let jwt {
            return try jwt.caller(of: token, authRevision: status.revision, access: auth.access(of:), now: Date())
        }
        guard let user = tokens.user(of: token), let access = auth.access(of: user) else { throw EtcdError.invalidAuthToken }
        return AuthInfo(user: user, revision: status.revision, isRoot: access.isRoot, permissions: access.permissions)
    }

    /// Refuses callers without the root role (admin operations), when auth is enabled.
    func requireRoot() throws {
        if let info = try authInfo(), !info.isRoot { throw EtcdError.permissionDenied }
    }

    /// Refuses a caller who may not read (or write) every key of `[key, rangeEnd)`.
    func authorize(key: Data, rangeEnd: Data, write: Bool, _ info: AuthInfo?) throws {
        guard let info, !info.isRoot else { return }
        if !info.permissions.permits(key: [UInt8](key), rangeEnd: [UInt8](rangeEnd), write: write) {
            throw EtcdError.permissionDenied
        }
    }

    /// Every key a txn touches: compares and ranges are reads, puts and deletes writes, nested
    /// txns included (both branches: the branch taken is decided at apply).
    func authorize(txn t: Etcdserverpb_TxnRequest, _ info: AuthInfo?) throws {
        guard let info, !info.isRoot else { return }
        for c in t.compare { try authorize(key: c.key, rangeEnd: c.rangeEnd, write: false, info) }
        for op in t.success + t.failure {
            switch op.request {
            case .requestRange(let r)?: try authorize(key: r.key, rangeEnd: r.rangeEnd, write: false, info)
            case .requestPut(let p)?:
                try authorize(key: p.key, rangeEnd: Data(), write: true, info)
                if p.prevKv { try authorize(key: p.key, rangeEnd: Data(), write: false, info) }
            case .requestDeleteRange(let d)?:
                try authorize(key: d.key, rangeEnd: d.rangeEnd, write: true, info)
                if d.prevKv { try authorize(key: d.key, rangeEnd: d.rangeEnd, write: false, info) }
            case .requestTxn(let inner)?: try authorize(txn: inner, info)
            case nil: break
            }
        }
    }

    /// Stamps a write proposal with its caller, so apply can refuse it if the auth store
    /// changed in between.
    func stamp(_ req: inout Swetcd_Internal_InternalRequest, _ info: AuthInfo?) {
        guard let info else { return }
        req.header.username = info.user
        req.header.authRevision = info.revision
    }

    // MARK: the Auth service

    /// Authenticate: after a read barrier (so this member has applied every auth change
    /// committed before the call), checks the password with bcrypt and issues a token.
    func authenticate(_ r: Etcdserverpb_AuthenticateRequest) async throws -> Etcdserverpb_AuthenticateResponse {
        try await readBarrier()
        guard auth.isEnabled else { throw EtcdError.authNotEnabled }
        try auth.checkPassword(user: r.name, password: r.password)
        var out = Etcdserverpb_AuthenticateResponse()
        out.header = header()
        if let jwt {
            do { out.token = try jwt.issue(user: r.name, revision: auth.revision) } catch {
                throw EtcdError.internal("cannot issue a JWT: \(error)")
            }
        } else {
            out.token = tokens.issue(for: r.name)
        }
        return out
    }

    func authStatus() throws -> Etcdserverpb_AuthStatusResponse {
        var out = Etcdserverpb_AuthStatusResponse()
        out.header = header()
        let s = auth.status
        out.enabled = s.enabled
        out.authRevision = s.revision
        return out
    }

    /// Proposes an auth change (root only while auth is enabled) and waits for it.
    func proposeAuth(_ set: (inout Swetcd_Internal_InternalRequest) -> Void) async throws {
        try requireRoot()
        var req = Swetcd_Internal_InternalRequest()
        set(&req)
        _ = try await propose(req)
    }

    func hashPassword(_ password: String) throws -> String {
        do { return try Bcrypt.hash(password, cost: Int(clamping: config.bcryptCost)) } catch {
            throw EtcdError.internal("failed to hash the password: \(error)")
        }
    }

    func userGet(_ name: String) throws -> Etcdserverpb_AuthUserGetResponse {
        if let info = try authInfo(), !info.isRoot, info.user != name { throw EtcdError.permissionDenied }
        guard let u = auth.user(name) else { throw EtcdError.userNotFound }
        var out = Etcdserverpb_AuthUserGetResponse()
        out.header = header()
        out.roles = u.roles
        return out
    }

    func roleGet(_ name: String) throws -> Etcdserverpb_AuthRoleGetResponse {
        if let info = try authInfo(), !info.isRoot, !(auth.user(info.user)?.roles.contains(name) ?? false) {
            throw EtcdError.permissionDenied
        }
        guard let r = auth.role(name) else { throw EtcdError.roleNotFound }
        var out = Etcdserverpb_AuthRoleGetResponse()
        out.header = header()
        out.perm = r.keyPermission
        return out
    }

    // MARK: apply

    /// Applies an auth entry (Raft loop thread, inside the entry's batch).
    func applyAuth(_ change: AuthChange) throws {
        try auth.apply(change, backend: backend)
        // Every change bumps the auth revision, which ends every JWT issued before it.
        jwt?.cache.removeAll()
        switch change {
        case .disable: tokens.invalidateAll()
        case .userDelete(let u), .userChangePassword(let u, _): tokens.invalidate(user: u)
        default: break
        }
    }

    /// The auth change an entry holds, if any.
    static func authChange(_ req: Swetcd_Internal_InternalRequest) -> AuthChange? {
        switch req.request {
        case .authEnable?: return .enable
        case .authDisable?: return .disable
        case .authUserAdd(let r)?: return .userAdd(name: r.name, hash: r.hashedPassword, noPassword: r.options.noPassword)
        case .authUserDelete(let r)?: return .userDelete(r.name)
        case .authUserChangePassword(let r)?: return .userChangePassword(name: r.name, hash: r.hashedPassword)
        case .authUserGrantRole(let r)?: return .userGrantRole(user: r.user, role: r.role)
        case .authUserRevokeRole(let r)?: return .userRevokeRole(user: r.name, role: r.role)
        case .authRoleAdd(let r)?: return .roleAdd(r.name)
        case .authRoleDelete(let r)?: return .roleDelete(r.role)
        case .authRoleGrantPermission(let r)?: return .roleGrantPermission(role: r.name, r.perm)
        case .authRoleRevokePermission(let r)?: return .roleRevokePermission(role: r.role, key: r.key, rangeEnd: r.rangeEnd)
        default: return nil
        }
    }

    /// At apply: a write stamped with an auth revision older than the store's is refused
    /// (its permissions were checked against state that has changed since), as etcd does.
    func checkAuthRevision(_ header: Swetcd_Internal_RequestHeader) throws {
        guard header.authRevision != 0 || !header.username.isEmpty else { return }
        if header.authRevision < auth.revision { throw EtcdError.authOldRevision }
    }
}
