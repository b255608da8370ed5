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
        let id: Int64
        do {
            id = try Etcdserverpb_LeaseKeepAliveRequest(serializedBytes: message).id
        } catch {
            done(.failure(RPCError(code: .internalError, message: "grpc: error unmarshalling request: \(error)")))
            return
        }
        let server = self.server
        if server.isLeader {
            do {
                try server.refuseOnLearner()
                done(Self.answer(id, .success(try server.renewLocally(id)), server))
                return
            } catch let e as EtcdError where e == .notLeader {
                // Leadership moved just now: the task below finds the new leader.
            } catch {
                done(Self.answer(id, .failure(error), server))
                return
            }
        }
        Task {
            do {
                done(.success(try await server.leaseRenew(id).serializedBytes()))
            } catch {
                done(Self.answer(id, .failure(error), server))
            }
        }
    }

    /// The response for a renewal's outcome: its TTL, TTL 0 for an unknown lease (as etcd), or
    /// the status that ends the stream.
    private static func answer(_ id: Int64, _ outcome: Result<Int64, any Error>, _ server: EtcdServer) -> Result<[UInt8], RPCError> {
        var resp = Etcdserverpb_LeaseKeepAliveResponse()
        resp.id = id
        switch outcome {
        case .success(let ttl):
            resp.ttl = ttl
        case .failure(let e as EtcdError) where e == .leaseNotFound:
            resp.ttl = 0
        case .failure(let e as RPCError):
            return .failure(e)
        case .failure(let e):
            return .failure(EtcdError.from(e).rpcError)
        }
        resp.header = server.header()
        do {
            return .success(try resp.serializedBytes())
        } catch {
            return .failure(EtcdError.from(error).rpcError)
        }
    }

    func onStop(_ body: @escaping @Sendable () -> Void) -> UInt64? { server.closing.onFire(body) }
    func cancelOnStop(_ id: UInt64) { server.closing.removeCallback(id) }
}
