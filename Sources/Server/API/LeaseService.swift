import EtcdProto
import GRPCCore
import Synchronization

/// etcd's Lease service on an ``EtcdServer``.
public struct LeaseService: Etcdserverpb_Lease.SimpleServiceProtocol {
    let server: EtcdServer

    /// The service for `server`.
    public init(server: EtcdServer) { self.server = server }

    public func leaseGrant(request: Etcdserverpb_LeaseGrantRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseGrantResponse {
        try await etcdRPC { try await server.leaseGrant(request) }
    }

    public func leaseRevoke(request: Etcdserverpb_LeaseRevokeRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseRevokeResponse {
        try await etcdRPC { try await server.leaseRevoke(request) }
    }

    /// Each request renews one lease; an unknown lease answers TTL 0, as etcd does.
    public func leaseKeepAlive(
        request: RPCAsyncSequence<Etcdserverpb_LeaseKeepAliveRequest, any Error>,
        response: RPCWriter<Etcdserverpb_LeaseKeepAliveResponse>,
        context: ServerContext
    ) async throws {
        // Requests are read on a task of their own so that a stopping server can end the
        // stream without waiting for the client.
        let done = ShutdownSignal()
        let failure = Mutex<(any Error)?>(nil)
        let reader = Task {
            do { try await keepAlive(request, response) } catch { failure.withLock { $0 = error } }
            done.fire()
        }
        await withTaskGroup(of: Void.self) { race in
            race.addTask { await done.wait() }
            race.addTask { await server.closing.wait() }
            await race.next()
            race.cancelAll()
        }
        reader.cancel()
        if server.closing.isFired { throw EtcdError.stopped.rpcError }
        if let error = failure.withLock({ $0 }) {
            // A stream the client reset ends with grpc-swift's own status: nothing to translate.
            if let e = error as? RPCError { throw e }
            throw EtcdError.from(error).rpcError
        }
    }

    private func keepAlive(
        _ request: RPCAsyncSequence<Etcdserverpb_LeaseKeepAliveRequest, any Error>,
        _ response: RPCWriter<Etcdserverpb_LeaseKeepAliveResponse>
    ) async throws {
        for try await req in request {
            try await response.write(try await server.leaseKeepAlive(req.id))
        }
    }

    public func leaseTimeToLive(request: Etcdserverpb_LeaseTimeToLiveRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        try await etcdRPC { try await server.leaseTimeToLive(request) }
    }

    public func leaseLeases(request: Etcdserverpb_LeaseLeasesRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseLeasesResponse {
        try await etcdRPC { try await server.leaseLeases() }
    }
}
