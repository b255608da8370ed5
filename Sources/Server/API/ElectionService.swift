public import EtcdProto
public import GRPCCore
import Foundation

/// etcd's v3election service. A candidate's key is `<name>/<lease hex>`; the leader is the key
/// under `<name>/` with the lowest create revision, and its value is the proclaimed value.
public struct ElectionService: V3electionpb_Election.SimpleServiceProtocol {
    let backend: any LockElectionBackend

    /// A service over `backend`.
    public init(backend: any LockElectionBackend) { self.backend = backend }

    static let notLeader = RPCError(code: .failedPrecondition, message: "election: not leader")
    static let noLeader = RPCError(code: .notFound, message: "election: no leader")

    public func campaign(request: V3electionpb_CampaignRequest, context: ServerContext) async throws -> V3electionpb_CampaignResponse {
        try await rpc {
            let name = Array(request.name)
            let key = CoordinationKeys.key(prefix: name, lease: request.lease)
            let mine = try await backend.createOrGet(key: key, value: Array(request.value), lease: request.lease)
            guard let kv = mine.kv else {
                throw RPCError(code: .notFound, message: "etcdserver: requested lease not found")
            }
            var leader = V3electionpb_LeaderKey()
            leader.name = request.name
            leader.key = Data(key)
            leader.rev = kv.createRevision
            leader.lease = request.lease
            if !mine.created, kv.value != request.value {
                _ = try await proclaim(leader, value: request.value)
            }
            _ = try await backend.waitForOlderDeleted(prefix: CoordinationKeys.prefix(name), myRevision: kv.createRevision)
            var out = V3electionpb_CampaignResponse()
            out.header = backend.responseHeader()
            out.leader = leader
            return out
        }
    }

    public func proclaim(request: V3electionpb_ProclaimRequest, context: ServerContext) async throws -> V3electionpb_ProclaimResponse {
        try await rpc {
            var out = V3electionpb_ProclaimResponse()
            out.header = try await proclaim(request.leader, value: request.value)
            return out
        }
    }

    /// Sets the value of `leader`'s key if it is still that key (same create revision).
    func proclaim(_ leader: V3electionpb_LeaderKey, value: Data) async throws -> Etcdserverpb_ResponseHeader {
        var put = Etcdserverpb_PutRequest()
        put.key = leader.key
        put.value = value
        put.lease = leader.lease
        var op = Etcdserverpb_RequestOp()
        op.requestPut = put
        var txn = Etcdserverpb_TxnRequest()
        txn.compare = [Self.isSameKey(leader)]
        txn.success = [op]
        let response = try await backend.txn(txn)
        guard response.succeeded else { throw Self.notLeader }
        return response.header
    }

    static func isSameKey(_ leader: V3electionpb_LeaderKey) -> Etcdserverpb_Compare {
        var cmp = Etcdserverpb_Compare()
        cmp.key = leader.key
        cmp.target = .create
        cmp.result = .equal
        cmp.createRevision = leader.rev
        return cmp
    }

    public func leader(request: V3electionpb_LeaderRequest, context: ServerContext) async throws -> V3electionpb_LeaderResponse {
        try await rpc {
            let current = try await currentLeader(Array(request.name))
            guard let kv = current.kvs.first else { throw Self.noLeader }
            var out = V3electionpb_LeaderResponse()
            out.header = current.header
            out.kv = kv
            return out
        }
    }

    /// The oldest key under `<name>/`.
    func currentLeader(_ name: [UInt8]) async throws -> Etcdserverpb_RangeResponse {
        let prefix = CoordinationKeys.prefix(name)
        var get = Etcdserverpb_RangeRequest()
        get.key = Data(prefix)
        get.rangeEnd = Data(CoordinationKeys.prefixEnd(prefix))
        get.sortOrder = .ascend
        get.sortTarget = .create
        get.limit = 1
        return try await backend.range(get)
    }

    public func observe(request: V3electionpb_LeaderRequest, response: RPCWriter<V3electionpb_LeaderResponse>,
                        context: ServerContext) async throws {
        try await rpc {
            let name = Array(request.name)
            let prefix = CoordinationKeys.prefix(name)
            var last: (key: Data, modRevision: Int64)? = nil
            while true {
                try Task.checkCancellation()
                let current = try await currentLeader(name)
                if let kv = current.kvs.first, last?.key != kv.key || last?.modRevision != kv.modRevision {
                    var out = V3electionpb_LeaderResponse()
                    out.header = current.header
                    out.kv = kv
                    try await response.write(out)
                    last = (kv.key, kv.modRevision)
                }
                _ = try await backend.nextEvents(key: prefix, rangeEnd: CoordinationKeys.prefixEnd(prefix),
                                                 afterRevision: current.header.revision)
            }
        }
    }

    public func resign(request: V3electionpb_ResignRequest, context: ServerContext) async throws -> V3electionpb_ResignResponse {
        try await rpc {
            var delete = Etcdserverpb_DeleteRangeRequest()
            delete.key = request.leader.key
            var op = Etcdserverpb_RequestOp()
            op.requestDeleteRange = delete
            var txn = Etcdserverpb_TxnRequest()
            txn.compare = [Self.isSameKey(request.leader)]
            txn.success = [op]
            let response = try await backend.txn(txn)
            var out = V3electionpb_ResignResponse()
            out.header = response.header
            return out
        }
    }
}
