import EtcdProto
import Foundation
import GRPCCore
import LMDBBackend
import SwiftProtobuf
import Synchronization

/// etcd's auth errors, byte for byte (clientv3 recognises them by text).
extension EtcdError {
    static let authNotEnabled = EtcdError("etcdserver: authentication is not enabled", code: .failedPrecondition)
    static let authFailed = EtcdError("etcdserver: authentication failed, invalid user ID or password", code: .invalidArgument)
    static let invalidAuthToken = EtcdError("etcdserver: invalid auth token", code: .unauthenticated)
    static let permissionDenied = EtcdError("etcdserver: permission denied", code: .permissionDenied)
    static let userEmpty = EtcdError("etcdserver: user name is empty", code: .invalidArgument)
    static let userExists = EtcdError("etcdserver: user name already exists", code: .failedPrecondition)
    static let userNotFound = EtcdError("etcdserver: user name not found", code: .failedPrecondition)
    static let roleEmpty = EtcdError("etcdserver: role name is empty", code: .invalidArgument)
    static let roleExists = EtcdError("etcdserver: role name already exists", code: .failedPrecondition)
    static let roleNotFound = EtcdError("etcdserver: role name not found", code: .failedPrecondition)
    static let rootUserMissing = EtcdError("etcdserver: root user does not exist", code: .failedPrecondition)
    static let rootRoleMissing = EtcdError("etcdserver: root user does not have root role", code: .failedPrecondition)
    static let roleNotGranted = EtcdError("etcdserver: role is not granted to the user", code: .failedPrecondition)
    static let permissionNotGranted = EtcdError("etcdserver: permission is not granted to the role", code: .failedPrecondition)
    static let permissionNotGiven = EtcdError("etcdserver: permission not given", code: .invalidArgument)
    static let invalidAuthManagement = EtcdError("etcdserver: invalid auth management", code: .invalidArgument)
    static let authOldRevision = EtcdError("etcdserver: revision of auth store is old", code: .invalidArgument)
}

/// Users, roles and the enabled flag: etcd's auth store. Changed only by applying auth entries
/// of the replicated log (Raft loop thread, inside the entry's backend batch), so every member
/// holds the same state; kept in the backend's `auth`, `authUsers` and `authRoles` buckets
/// with etcd's keys and authpb encodings, and reloaded at start and after a snapshot install.
/// Readers on any thread see a consistent copy (one Mutex).
final class AuthStore: Sendable {
    static let rootUser = "root"
    static let rootRole = "root"
    static let enabledKey = Array("authEnabled".utf8)
    static let revisionKey = Array("authRevision".utf8)

    struct State: Sendable {
        var enabled = false
        var revision: UInt64 = 0
        var users: [String: Authpb_User] = [:]
        var roles: [String: Authpb_Role] = [:]
    }

    private let state = Mutex(State())

    init() {}

    /// Whether auth is enabled and the current revision, read together (every request asks).
    var status: (enabled: Bool, revision: UInt64) { state.withLock { ($0.enabled, $0.revision) } }
    var isEnabled: Bool { state.withLock { $0.enabled } }
    var revision: UInt64 { state.withLock { $0.revision } }

    /// Replaces the state with the backend's buckets. A malformed record is a clear error.
    func load(from backend: Backend) throws {
        var s = State()
        try backend.read { r in
            if let e = try r.get(.auth, key: Self.enabledKey) { s.enabled = e == [1] }
            if let v = try r.get(.auth, key: Self.revisionKey) {
                guard let rev = BigEndian.uint64(v) else { throw ServerStartError("corrupt auth revision in the backend (\(v.count) bytes)") }
                s.revision = rev
            }
            try r.scan(.authUsers, from: [], to: nil) { k, v in
                let user = try Authpb_User(serializedBytes: [UInt8](v))
                s.users[String(decoding: k, as: UTF8.self)] = user
                return true
            }
            try r.scan(.authRoles, from: [], to: nil) { k, v in
                let role = try Authpb_Role(serializedBytes: [UInt8](v))
                s.roles[String(decoding: k, as: UTF8.self)] = role
                return true
            }
        }
        state.withLock { $0 = s }
    }

    // MARK: reading

    /// The permissions of `user` (nil: no such user). `isRoot`: holds the root role.
    func access(of user: String) -> (isRoot: Bool, permissions: KeyPermissions)? {
        state.withLock { Self.access(of: user, in: $0) }
    }

    static func access(of user: String, in s: State) -> (isRoot: Bool, permissions: KeyPermissions)? {
        guard let u = s.users[user] else { return nil }
        if u.roles.contains(rootRole) { return (true, KeyPermissions([])) }
        let perms = u.roles.compactMap { s.roles[$0] }.flatMap(\.keyPermission)
        return (false, KeyPermissions(perms))
    }

    /// Checks a password (bcrypt) for a user that has one.
    func checkPassword(user: String, password: String) throws {
        guard let u = state.withLock({ $0.users[user] }) else { throw EtcdError.authFailed }
        if u.options.noPassword { throw EtcdError.authFailed }
        guard Bcrypt.verify(password, hash: String(decoding: u.password, as: UTF8.self)) else { throw EtcdError.authFailed }
    }

    func user(_ name: String) -> Authpb_User? { state.withLock { $0.users[name] } }
    func role(_ name: String) -> Authpb_Role? { state.withLock { $0.roles[name] } }
    var userNames: [String] { state.withLock { $0.users.keys.sorted() } }
    var roleNames: [String] { state.withLock { $0.roles.keys.sorted() } }

    // MARK: applying (Raft loop thread, inside the entry's backend batch)

    /// Applies one auth change; stages its bucket writes on `backend`; bumps the revision.
    func apply(_ change: AuthChange, backend: Backend) throws {
        try state.withLock { s in
            var next = s
            try Self.change(&next, change)
            next.revision &+= 1
            // Stage the whole difference (small: auth state is a handful of records).
            if next.enabled != s.enabled { try backend.put(.auth, key: Self.enabledKey, value: [next.enabled ? 1 : 0]) }
            try backend.put(.auth, key: Self.revisionKey, value: BigEndian.bytes(next.revision))
            for (name, user) in next.users where s.users[name] != user {
                try backend.put(.authUsers, key: Array(name.utf8), value: try user.serializedBytes())
            }
            for name in s.users.keys where next.users[name] == nil { try backend.delete(.authUsers, key: Array(name.utf8)) }
            for (name, role) in next.roles where s.roles[name] != role {
                try backend.put(.authRoles, key: Array(name.utf8), value: try role.serializedBytes())
            }
            for name in s.roles.keys where next.roles[name] == nil { try backend.delete(.authRoles, key: Array(name.utf8)) }
            s = next
        }
    }

    /// etcd's rules for each change (checks first; nothing changes on an error).
    static func change(_ s: inout State, _ change: AuthChange) throws {
        switch change {
        case .enable:
            if s.enabled { return }
            guard let root = s.users[rootUser] else { throw EtcdError.rootUserMissing }
            guard root.roles.contains(rootRole) else { throw EtcdError.rootRoleMissing }
            s.enabled = true
        case .disable:
            s.enabled = false
        case .userAdd(let name, let hash, let noPassword):
            guard !name.isEmpty else { throw EtcdError.userEmpty }
            guard s.users[name] == nil else { throw EtcdError.userExists }
            var u = Authpb_User()
            u.name = Data(name.utf8)
            if noPassword { u.options.noPassword = true } else { u.password = Data(hash.utf8) }
            s.users[name] = u
        case .userDelete(let name):
            guard !name.isEmpty else { throw EtcdError.userEmpty }
            if s.enabled && name == rootUser { throw EtcdError.invalidAuthManagement }
            guard s.users.removeValue(forKey: name) != nil else { throw EtcdError.userNotFound }
        case .userChangePassword(let name, let hash):
            guard !name.isEmpty else { throw EtcdError.userEmpty }
            guard var u = s.users[name] else { throw EtcdError.userNotFound }
            u.password = Data(hash.utf8)
            u.options.noPassword = false
            s.users[name] = u
        case .userGrantRole(let name, let role):
            guard var u = s.users[name] else { throw EtcdError.userNotFound }
            if role != rootRole && s.roles[role] == nil { throw EtcdError.roleNotFound }
            if u.roles.contains(role) { return }
            u.roles.append(role)
            u.roles.sort()
            s.users[name] = u
        case .userRevokeRole(let name, let role):
            if s.enabled && name == rootUser && role == rootRole { throw EtcdError.invalidAuthManagement }
            guard var u = s.users[name] else { throw EtcdError.userNotFound }
            guard let i = u.roles.firstIndex(of: role) else { throw EtcdError.roleNotGranted }
            u.roles.remove(at: i)
            s.users[name] = u
        case .roleAdd(let name):
            guard !name.isEmpty else { throw EtcdError.roleEmpty }
            guard s.roles[name] == nil else { throw EtcdError.roleExists }
            var r = Authpb_Role()
            r.name = Data(name.utf8)
            s.roles[name] = r
        case .roleDelete(let name):
            if s.enabled && name == rootRole { throw EtcdError.invalidAuthManagement }
            guard s.roles.removeValue(forKey: name) != nil else { throw EtcdError.roleNotFound }
            for (n, var u) in s.users where u.roles.contains(name) {
                u.roles.removeAll { $0 == name }
                s.users[n] = u
            }
        case .roleGrantPermission(let name, let perm):
            guard var r = s.roles[name] else { throw EtcdError.roleNotFound }
            if let i = r.keyPermission.firstIndex(where: { $0.key == perm.key && $0.rangeEnd == perm.rangeEnd }) {
                r.keyPermission[i].permType = perm.permType
            } else {
                r.keyPermission.append(perm)
                r.keyPermission.sort { compareBytesData($0.key, $1.key) }
            }
            s.roles[name] = r
        case .roleRevokePermission(let name, let key, let rangeEnd):
            guard var r = s.roles[name] else { throw EtcdError.roleNotFound }
            guard let i = r.keyPermission.firstIndex(where: { $0.key == key && $0.rangeEnd == rangeEnd }) else {
                throw EtcdError.permissionNotGranted
            }
            r.keyPermission.remove(at: i)
            s.roles[name] = r
        }
    }
}

private func compareBytesData(_ a: Data, _ b: Data) -> Bool { a.lexicographicallyPrecedes(b) }

/// One change to the auth store, as applied from the log.
enum AuthChange: Sendable, Equatable {
    case enable, disable
    case userAdd(name: String, hash: String, noPassword: Bool)
    case userDelete(String)
    case userChangePassword(name: String, hash: String)
    case userGrantRole(user: String, role: String)
    case userRevokeRole(user: String, role: String)
    case roleAdd(String)
    case roleDelete(String)
    case roleGrantPermission(role: String, Authpb_Permission)
    case roleRevokePermission(role: String, key: Data, rangeEnd: Data)
}
