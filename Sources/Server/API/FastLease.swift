import EtcdProto
import GRPCCore
import SwiftProtobuf
import Synchronization

/// etcd's LeaseKeepAlive stream for ``FastKeepAliveHandler``: the same renewal as
/// ``LeaseService`` behind grpc-swift (the leader renews from memory, a follower forwards to the
/// leader; an unknown lease answers TTL 0), without grpc-swift's per-stream work. On the
/// leader a renewal is answered on the event loop, without a task.
final class FastLease: FastKeepAliveService {
    let server: EtcdServer
    /// Requests served since start.
    let served = Atomic<Int>(0)

    init(server: EtcdServer) { self.server = server }

    func renew(message: [UInt8], done: @escaping @Sendable (Result<[UInt8], RPCError>) -> Void) {
        served.wrappingAdd(1, ordering: .relaxed)
        let server = self.server
        let id: Int64
        do {
            id = try (decodeRequest(message) as Etcdserverpb_LeaseKeepAliveRequest).id
            if let resp = try server.leaseKeepAliveNow(id) {
                done(.success(try resp.serializedBytes()))
                return
            }
        } catch {
            done(.failure(grpcStatus(of: error)))
            return
        }
        Task {
            do {
                done(.success(try await server.leaseKeepAlive(id).serializedBytes()))
            } catch {
                done(.failure(grpcStatus(of: error)))
            }
        }
    }

    func onStop(_ body: @escaping @Sendable () -> Void) -> UInt64? { server.closing.onFire(body) }
    func cancelOnStop(_ id: UInt64) { server.closing.removeCallback(id) }
}
