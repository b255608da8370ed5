import EtcdProto
import GRPCCore
import SwiftProtobuf
import Synchronization

/// etcd's unary KV calls (Range, Put, DeleteRange, Txn) for ``FastStreamRouter``: the same
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
        } catch {
            return .failure(grpcStatus(of: error))
        }
    }

    func start(path: String, message: [UInt8], token: String?, commonName: String?,
               onLoop: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void,
               done: @escaping @Sendable (Result<[UInt8], RPCError>) -> Void) -> Bool {
        do {
            // Binding a task-local value allocates; a call without credentials (auth off, the
            // usual case) on a thread where none are bound needs no binding.
            if token == nil, commonName == nil, RequestCredentials.token == nil,
               RequestCredentials.certificateCommonName == nil {
                return try startNow(path, message, onLoop: onLoop, done: done)
            }
            return try RequestCredentials.$token.withValue(token) {
                try RequestCredentials.$certificateCommonName.withValue(commonName) {
                    try startNow(path, message, onLoop: onLoop, done: done)
                }
            }
        } catch {
            served.wrappingAdd(1, ordering: .relaxed)
            done(.failure(grpcStatus(of: error)))
            return true
        }
    }

    /// The task-free paths; false where the call needs ``call(path:message:token:commonName:)``.
    private func startNow(_ path: String, _ message: [UInt8],
                          onLoop: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void,
                          done: @escaping @Sendable (Result<[UInt8], RPCError>) -> Void) throws -> Bool {
        let server = self.server
        /// Answers a write from its apply result (handed from the Raft loop to the event loop
        /// before anything is encoded).
        func propose<R: SwiftProtobuf.Message>(_ req: Swetcd_Internal_InternalRequest,
                                               _ extract: @escaping @Sendable (ApplyResult) -> R?) throws -> Bool {
            try server.proposeNow(req) { result in
                onLoop {
                    done(Result {
                        guard let resp = extract(try result.get()) else { throw EtcdError.internal("unexpected apply result") }
                        return try resp.serializedBytes()
                    }.mapError(grpcStatus(of:)))
                }
            }
        }
        /// Answers a read on the event loop once this member may serve it.
        func read(linearizable: Bool, _ body: @escaping @Sendable () throws -> [UInt8]) throws -> Bool {
            let run: @Sendable () -> Void = { done(Result { try body() }.mapError(grpcStatus(of:))) }
            guard linearizable else {
                run()
                return true
            }
            return try server.linearizableBarrierNow { result in
                switch result {
                case .success: onLoop(run)
                case .failure(let e): done(.failure(grpcStatus(of: e)))
                }
            }
        }
        let started: Bool
        switch path {
        case Self.put:
            let req = try server.putRequest(try decodeRequest(message))
            started = try propose(req) { if case .put(let r) = $0 { r } else { nil } }
        case Self.deleteRange:
            let req = try server.deleteRangeRequest(try decodeRequest(message))
            started = try propose(req) { if case .deleteRange(let r) = $0 { r } else { nil } }
        case Self.txn:
            let t: Etcdserverpb_TxnRequest = try decodeRequest(message)
            if let req = try server.txnRequest(t) {
                started = try propose(req) { if case .txn(let r) = $0 { r } else { nil } }
            } else {
                started = try read(linearizable: true) { try server.readOnlyTxnNow(t).serializedBytes() }
            }
        case Self.range:
            let r: Etcdserverpb_RangeRequest = try decodeRequest(message)
            try server.checkRange(r)
            if EtcdServer.isLargeRange(r) { return false }
            started = try read(linearizable: !r.serializable) { try server.rangeNow(r).serializedBytes() }
        default:
            return false
        }
        if started { served.wrappingAdd(1, ordering: .relaxed) }
        return started
    }

    private func serve(_ path: String, _ message: [UInt8]) async throws -> [UInt8] {
        switch path {
        case Self.put:
            let r: Etcdserverpb_PutRequest = try decodeRequest(message)
            return try await server.put(r).serializedBytes()
        case Self.range:
            let r: Etcdserverpb_RangeRequest = try decodeRequest(message)
            return try await server.range(r).serializedBytes()
        case Self.txn:
            let r: Etcdserverpb_TxnRequest = try decodeRequest(message)
            return try await server.txn(r).serializedBytes()
        case Self.deleteRange:
            let r: Etcdserverpb_DeleteRangeRequest = try decodeRequest(message)
            return try await server.deleteRange(r).serializedBytes()
        default:
            throw RPCError(code: .unimplemented, message: "unknown method \(path)")
        }
    }
}
