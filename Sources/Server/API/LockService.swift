public import EtcdProto
public import GRPCCore
import Foundation

/// etcd's v3lock service: Lock creates `<name>/<lease hex>` under the caller's lease and
/// returns once that key has the lowest create revision under `<name>/` (waiting on watches);
/// Unlock deletes the key. The lock lives as long as the lease.
public struct LockService: V3lockpb_Lock.SimpleServiceProtocol {
    let backend: any LockElectionBackend

    /// A service over `backend`.
    public init(backend: any LockElectionBackend) { self.backend = backend }

    public func lock(request: V3lockpb_LockRequest, context: ServerContext) async throws -> V3lockpb_LockResponse {
        try await rpc {
            let prefix = CoordinationKeys.prefix(Array(request.name))
            let key = CoordinationKeys.key(prefix: Array(request.name), lease: request.lease)
            let mine = try await backend.createOrGet(key: key, value: [], lease: request.lease)
            guard let kv = mine.kv else {
                throw RPCError(code: .notFound, message: "etcdserver: requested lease not found")
            }
            var header = try await backend.waitForOlderDeleted(prefix: prefix, myRevision: kv.createRevision)
            // The key may have gone with its lease while we waited: then we do not hold the lock.
            var check = Etcdserverpb_RangeRequest()
            check.key = Data(key)
            let now = try await backend.range(check)
            guard now.kvs.first?.createRevision == kv.createRevision else {
                throw RPCError(code: .notFound, message: "etcdserver: requested lease not found")
            }
            header = now.header
            var out = V3lockpb_LockResponse()
            out.header = header
            out.key = Data(key)
            return out
        }
    }

    public func unlock(request: V3lockpb_UnlockRequest, context: ServerContext) async throws -> V3lockpb_UnlockResponse {
        try await rpc {
            var delete = Etcdserverpb_DeleteRangeRequest()
            delete.key = request.key
            let response = try await backend.deleteRange(delete)
            var out = V3lockpb_UnlockResponse()
            out.header = response.header
            return out
        }
    }
}
