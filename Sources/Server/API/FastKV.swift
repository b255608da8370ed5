import EtcdProto
import GRPCCore
import SwiftProtobuf
import Synchronization

/// etcd's unary KV calls (Range, Put, DeleteRange, Txn) for ``FastUnaryHandler``: the same
/// ``EtcdServer`` methods, credentials and errors as ``KVService`` behind grpc-swift, without
/// grpc-swift's per-call work. Compact stays on grpc-swift (rare, admin-only).
final class FastKV: FastUnaryService {
    let server: EtcdServer
    /// Calls served (answered or refused) since start.
    let served = Atomic<Int>(0)

    init(server: EtcdServer) { self.server = server }

    static let range = "/etcdserverpb.KV/Range"
    static let put = "/etcdserverpb.KV/Put"
    static let deleteRange = "/etcdserverpb.KV/DeleteRange"
    static let txn = "/etcdserverpb.KV/Txn"

    func serves(_ path: String) -> Bool {
        path == Self.range || path == Self.put || path == Self.txn || path == Self.deleteRange
    }

    func call(path: String, message: [UInt8], token: String?, commonName: String?) async -> Result<[UInt8], RPCError> {
        served.wrappingAdd(1, ordering: .relaxed)
        do {
            let reply: [UInt8] = try await RequestCredentials.$token.withValue(token) {
                try await RequestCredentials.$certificateCommonName.withValue(commonName) {
                    try await serve(path, message)
                }
            }
            return .success(reply)
        } catch let e as RPCError {
            return .failure(e)
        } catch {
            return .failure(EtcdError.from(error).rpcError)
        }
    }

    private func serve(_ path: String, _ message: [UInt8]) async throws -> [UInt8] {
        switch path {
        case Self.put:
            let r: Etcdserverpb_PutRequest = try Self.decode(message)
            return try await etcdRPC { try await server.put(r) }.serializedBytes()
        case Self.range:
            let r: Etcdserverpb_RangeRequest = try Self.decode(message)
            return try await etcdRPC { try await server.range(r) }.serializedBytes()
        case Self.txn:
            let r: Etcdserverpb_TxnRequest = try Self.decode(message)
            return try await etcdRPC { try await server.txn(r) }.serializedBytes()
        case Self.deleteRange:
            let r: Etcdserverpb_DeleteRangeRequest = try Self.decode(message)
            return try await etcdRPC { try await server.deleteRange(r) }.serializedBytes()
        default:
            throw RPCError(code: .unimplemented, message: "unknown method \(path)")
        }
    }

    /// grpc-go's answer to a request that does not parse.
    private static func decode<M: SwiftProtobuf.Message>(_ bytes: [UInt8]) throws -> M {
        do {
            return try M(serializedBytes: bytes)
        } catch {
            throw RPCError(code: .internalError, message: "grpc: error unmarshalling request: \(error)")
        }
    }
}
