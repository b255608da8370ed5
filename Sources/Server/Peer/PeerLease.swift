// Lease keep-alives and time-to-live queries forwarded from a follower to the leader
// (service `PeerLease` in peer.proto): only the leader tracks lease expiry.

import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// What answers forwarded lease calls on this member (the core). It throws
/// `EtcdError.notLeader` when this member is not the leader, and etcd's lease errors.
protocol PeerLeaseHandler: AnyObject, Sendable {
    func peerLeaseRenew(_ id: Int64) async throws -> Int64
    func peerLeaseRenewBatch(_ ids: [Int64]) async throws -> [Result<Int64, EtcdError>]
    func peerLeaseTimeToLive(_ request: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse
}

/// Holds the lease handler weakly (the core owns the transport).
final class LeaseHandlerSlot: Sendable {
    private struct Ref: @unchecked Sendable { weak var handler: (any PeerLeaseHandler)? }
    private let ref = Mutex(Ref())
    var handler: (any PeerLeaseHandler)? { ref.withLock { $0.handler } }
    func set(_ h: any PeerLeaseHandler) { ref.withLock { $0.handler = h } }
}

extension PeerTransport {
    /// Installs what answers lease calls forwarded by other members.
    func setLeaseHandler(_ handler: any PeerLeaseHandler) { leaseHandler.set(handler) }

    /// The `PeerLease` service; register it on the ``PeerServer`` beside ``makeService()``.
    func makeLeaseService() -> some Swetcd_Peer_PeerLease.ServiceProtocol { PeerLeaseService(transport: self) }

    /// Renews lease `id` on member `leader`; returns the TTL. etcd's lease errors come back as
    /// `EtcdError`; an unreachable leader as a transport error. Renewals that arrive while a
    /// call to the leader is in flight go out together in the next one (``LeaseRenewBatcher``).
    func forwardLeaseRenew(_ id: Int64, to leader: UInt64, timeout: Duration) async throws -> Int64 {
        try await renewBatcher.renew(id, leader: leader, timeout: timeout) { leader, ids, timeout in
            try await self.forwardLeaseRenewBatch(ids, to: leader, timeout: timeout)
        }
    }

    /// Renews `ids` on member `leader` in one call; one outcome per ID. A leader without
    /// `LeaseRenewBatch` (an older member) gets one `LeaseRenew` call per ID instead.
    func forwardLeaseRenewBatch(_ ids: [Int64], to leader: UInt64, timeout: Duration) async throws -> [LeaseRenewBatcher.Outcome] {
        var req = Swetcd_Peer_LeaseRenewBatchForward()
        req.clusterID = clusterID
        req.from = localID
        req.to = leader
        req.leaseIds = ids
        let message = req
        do {
            let reply = try await callPeer(leader, timeout: timeout) { client, options in
                try await Swetcd_Peer_PeerLease.Client(wrapping: client)
                    .leaseRenewBatch(request: ClientRequest(message: message), options: options)
            }
            return reply.results.map { result in
                guard !result.error.isEmpty else { return .success(result.ttl) }
                let code = Status.Code(rawValue: Int(result.code)).flatMap { RPCError.Code($0) } ?? .unknown
                return .failure(EtcdError(result.error, code: code))
            }
        } catch let error as RPCError where error.code == .unimplemented {
            var outcomes: [LeaseRenewBatcher.Outcome] = []
            for id in ids {
                do {
                    outcomes.append(.success(try await forwardOneLeaseRenew(id, to: leader, timeout: timeout)))
                } catch let e as EtcdError where e != .notLeader {
                    outcomes.append(.failure(e))
                }
            }
            return outcomes
        }
    }

    /// One `LeaseRenew` call for lease `id`.
    private func forwardOneLeaseRenew(_ id: Int64, to leader: UInt64, timeout: Duration) async throws -> Int64 {
        var req = Swetcd_Peer_LeaseRenewForward()
        req.clusterID = clusterID
        req.from = localID
        req.to = leader
        req.leaseID = id
        let message = req
        return try await callPeer(leader, timeout: timeout) { client, options in
            try await Swetcd_Peer_PeerLease.Client(wrapping: client)
                .leaseRenew(request: ClientRequest(message: message), options: options).ttl
        }
    }

    /// Asks member `leader` for a lease's time to live.
    func forwardLeaseTimeToLive(_ request: Etcdserverpb_LeaseTimeToLiveRequest, to leader: UInt64,
                                timeout: Duration) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        var req = Swetcd_Peer_LeaseTimeToLiveForward()
        req.clusterID = clusterID
        req.from = localID
        req.to = leader
        req.request = request
        let message = req
        return try await callPeer(leader, timeout: timeout) { client, options in
            try await Swetcd_Peer_PeerLease.Client(wrapping: client)
                .leaseTimeToLive(request: ClientRequest(message: message), options: options)
        }
    }

    /// One unary call to `peer`: on the connection of the active `Messages` stream to it when
    /// there is one, else trying its URLs in turn on a short-lived connection. (Both calls made
    /// here are safe to repeat: a renewal or a read.)
    private func callPeer<T: Sendable>(
        _ peer: UInt64, timeout: Duration,
        _ body: @Sendable @escaping (GRPCClient<HTTP2ClientTransport.Posix>, CallOptions) async throws -> T
    ) async throws -> T {
        guard let link = link(peer) else { throw PeerTransportError.refused("member \(hexID(peer)) is not a known peer") }
        var options = CallOptions.defaults
        options.waitForReady = false
        options.timeout = timeout
        var lastError: any Error = PeerTransportError.refused("member \(hexID(peer)) has no peer URL")
        if let shared = link.sharedClient {
            do {
                return try await Self.remoteAnswer { try await body(shared.client, options) }
            } catch let e as EtcdError {
                throw e
            } catch {
                // The stream's connection is going away: fall back to a connection of our own.
                lastError = error
            }
        }
        for url in link.callURLs {
            do {
                return try await Self.remoteAnswer {
                    try await withGRPCClient(transport: try clientTransport(url)) { client in try await body(client, options) }
                }
            } catch let e as EtcdError {
                throw e
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// Runs a call; the remote member's own answer (an etcd error, not a transport failure)
    /// comes back as `EtcdError`.
    private static func remoteAnswer<T>(_ call: () async throws -> T) async throws -> T {
        do {
            return try await call()
        } catch let e as RPCError where e.message.hasPrefix("etcdserver: ") {
            throw EtcdError(e.message, code: e.code)
        }
    }
}

/// The receiving side of `PeerLease`.
struct PeerLeaseService: Swetcd_Peer_PeerLease.SimpleServiceProtocol {
    let transport: PeerTransport

    private func handler(cluster: UInt64, from: UInt64, to: UInt64, context: ServerContext) throws -> any PeerLeaseHandler {
        if let reason = transport.callRefusal(cluster: cluster, from: from, to: to, context: context, call: "lease") {
            throw RPCError(code: .failedPrecondition, message: reason)
        }
        guard !transport.isStopped, let h = transport.leaseHandler.handler else {
            throw RPCError(code: .unavailable, message: "member is stopping")
        }
        return h
    }

    func leaseRenew(request: Swetcd_Peer_LeaseRenewForward, context: ServerContext) async throws -> Swetcd_Peer_LeaseRenewForwardReply {
        let h = try handler(cluster: request.clusterID, from: request.from, to: request.to, context: context)
        do {
            var reply = Swetcd_Peer_LeaseRenewForwardReply()
            reply.ttl = try await h.peerLeaseRenew(request.leaseID)
            return reply
        } catch {
            throw EtcdError.from(error).rpcError
        }
    }

    /// The most IDs one batch may carry (a sender sends at most ``LeaseRenewBatcher/maxBatch``).
    static let maxBatchIDs = 10_000

    func leaseRenewBatch(request: Swetcd_Peer_LeaseRenewBatchForward, context: ServerContext) async throws -> Swetcd_Peer_LeaseRenewBatchReply {
        let h = try handler(cluster: request.clusterID, from: request.from, to: request.to, context: context)
        guard request.leaseIds.count <= Self.maxBatchIDs else {
            throw RPCError(code: .invalidArgument, message: "a renew batch carries at most \(Self.maxBatchIDs) leases")
        }
        do {
            var reply = Swetcd_Peer_LeaseRenewBatchReply()
            reply.results = try await h.peerLeaseRenewBatch(request.leaseIds).map { outcome in
                var result = Swetcd_Peer_LeaseRenewBatchReply.Result()
                switch outcome {
                case .success(let ttl):
                    result.ttl = ttl
                case .failure(let error):
                    result.error = error.message
                    result.code = Int32(error.code.rawValue)
                }
                return result
            }
            return reply
        } catch {
            throw EtcdError.from(error).rpcError
        }
    }

    func leaseTimeToLive(request: Swetcd_Peer_LeaseTimeToLiveForward, context: ServerContext) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        let h = try handler(cluster: request.clusterID, from: request.from, to: request.to, context: context)
        do {
            return try await h.peerLeaseTimeToLive(request.request)
        } catch {
            throw EtcdError.from(error).rpcError
        }
    }
}
