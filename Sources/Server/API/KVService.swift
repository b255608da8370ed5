import EtcdProto
import GRPCCore

/// Runs `body`, turning any error into the gRPC status etcd would send.
func etcdRPC<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let e as RPCError {
        throw e
    } catch {
        throw EtcdError.from(error).rpcError
    }
}

/// etcd's KV service on an ``EtcdServer``.
public struct KVService: Etcdserverpb_KV.SimpleServiceProtocol {
    let server: EtcdServer

    /// The service for `server`.
    public init(server: EtcdServer) { self.server = server }

    public func range(request: Etcdserverpb_RangeRequest, context: ServerContext) async throws -> Etcdserverpb_RangeResponse {
        try await etcdRPC { try await server.range(request) }
    }

    public func put(request: Etcdserverpb_PutRequest, context: ServerContext) async throws -> Etcdserverpb_PutResponse {
        try await etcdRPC { try await server.put(request) }
    }

    public func deleteRange(request: Etcdserverpb_DeleteRangeRequest, context: ServerContext) async throws -> Etcdserverpb_DeleteRangeResponse {
        try await etcdRPC { try await server.deleteRange(request) }
    }

    public func txn(request: Etcdserverpb_TxnRequest, context: ServerContext) async throws -> Etcdserverpb_TxnResponse {
        try await etcdRPC { try await server.txn(request) }
    }

    public func compact(request: Etcdserverpb_CompactionRequest, context: ServerContext) async throws -> Etcdserverpb_CompactionResponse {
        // Compaction is an admin operation while auth is enabled (the auto-compactor calls
        // `server.compact` directly).
        try await etcdRPC {
            try server.requireRoot()
            return try await server.compact(request)
        }
    }
}
