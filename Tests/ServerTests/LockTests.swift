import EtcdProto
import Foundation
import GRPCCore
import Synchronization
import Testing
@testable import Server

/// A tiny in-memory keyspace answering exactly the requests Lock and Election send.
final class FakeCoordinationKV: LockElectionBackend {
    struct State {
        var revision: Int64 = 1
        var kvs: [Data: Mvccpb_KeyValue] = [:]
        var history: [Mvccpb_Event] = []
        var waiters: [(id: Int, key: [UInt8], end: [UInt8], after: Int64, cont: CheckedContinuation<[Mvccpb_Event], any Error>)] = []
        var nextWaiter = 0
    }
    let state = Mutex(State())
    let knownLeases: Set<Int64>

    init(leases: Set<Int64>) { knownLeases = leases }

    func responseHeader() -> Etcdserverpb_ResponseHeader {
        var h = Etcdserverpb_ResponseHeader()
        h.revision = state.withLock { $0.revision }
        return h
    }

    static func inRange(_ key: [UInt8], _ start: [UInt8], _ end: [UInt8]) -> Bool {
        end.isEmpty ? key == start : (key.lexicographicallyPrecedes(start) == false && key.lexicographicallyPrecedes(end))
    }

    func range(_ r: Etcdserverpb_RangeRequest) async throws -> Etcdserverpb_RangeResponse {
        state.withLock { s in
            var kvs = s.kvs.values.filter { Self.inRange(Array($0.key), Array(r.key), Array(r.rangeEnd)) }
            if r.maxCreateRevision > 0 { kvs = kvs.filter { $0.createRevision <= r.maxCreateRevision } }
            kvs.sort { $0.createRevision < $1.createRevision }
            if r.sortOrder == .descend { kvs.reverse() }
            if r.limit > 0 { kvs = Array(kvs.prefix(Int(r.limit))) }
            var out = Etcdserverpb_RangeResponse()
            out.kvs = kvs
            out.count = Int64(kvs.count)
            out.header.revision = s.revision
            return out
        }
    }

    func txn(_ t: Etcdserverpb_TxnRequest) async throws -> Etcdserverpb_TxnResponse {
        for op in t.success + t.failure where op.requestPut.lease != 0 && !knownLeases.contains(op.requestPut.lease) {
            throw RPCError(code: .notFound, message: "etcdserver: requested lease not found")
        }
        let (ok, ops, events): (Bool, [Etcdserverpb_RequestOp], [Mvccpb_Event]) = state.withLock { s in
            let ok = t.compare.allSatisfy { c in (s.kvs[c.key]?.createRevision ?? 0) == c.createRevision }
            return (ok, ok ? t.success : t.failure, [])
        }
        _ = events
        var out = Etcdserverpb_TxnResponse()
        out.succeeded = ok
        for op in ops {
            var r = Etcdserverpb_ResponseOp()
            switch op.request {
            case .requestPut(let p): apply(put: p); r.responsePut = .init()
            case .requestRange(let g): r.responseRange = try await range(g)
            case .requestDeleteRange(let d): _ = try await deleteRange(d); r.responseDeleteRange = .init()
            default: break
            }
            out.responses.append(r)
        }
        out.header = responseHeader()
        return out
    }

    func apply(put p: Etcdserverpb_PutRequest) {
        record { s in
            s.revision += 1
            var kv = s.kvs[p.key] ?? Mvccpb_KeyValue()
            if kv.createRevision == 0 { kv.createRevision = s.revision; kv.key = p.key }
            kv.modRevision = s.revision
            kv.value = p.value
            kv.lease = p.lease
            s.kvs[p.key] = kv
            var e = Mvccpb_Event()
            e.type = .put
            e.kv = kv
            return [e]
        }
    }

    func deleteRange(_ d: Etcdserverpb_DeleteRangeRequest) async throws -> Etcdserverpb_DeleteRangeResponse {
        record { s in
            guard var kv = s.kvs.removeValue(forKey: d.key) else { return [] }
            s.revision += 1
            kv.modRevision = s.revision
            var e = Mvccpb_Event()
            e.type = .delete
            e.kv = kv
            return [e]
        }
        var out = Etcdserverpb_DeleteRangeResponse()
        out.header = responseHeader()
        return out
    }

    /// Applies a change and wakes the waiters it concerns.
    func record(_ change: (inout State) -> [Mvccpb_Event]) {
        let wake: [(CheckedContinuation<[Mvccpb_Event], any Error>, [Mvccpb_Event])] = state.withLock { s in
            let events = change(&s)
            s.history += events
            var wake: [(CheckedContinuation<[Mvccpb_Event], any Error>, [Mvccpb_Event])] = []
            s.waiters.removeAll { w in
                let mine = events.filter { Self.inRange(Array($0.kv.key), w.key, w.end) && $0.kv.modRevision > w.after }
                if mine.isEmpty { return false }
                wake.append((w.cont, mine))
                return true
            }
            return wake
        }
        for (c, e) in wake { c.resume(returning: e) }
    }

    func nextEvents(key: [UInt8], rangeEnd: [UInt8], afterRevision: Int64) async throws -> [Mvccpb_Event] {
        let id = state.withLock { s in s.nextWaiter += 1; return s.nextWaiter }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { cont in
                let past: [Mvccpb_Event]? = state.withLock { s in
                    let past = s.history.filter { Self.inRange(Array($0.kv.key), key, rangeEnd) && $0.kv.modRevision > afterRevision }
                    if !past.isEmpty { return past }
                    s.waiters.append((id, key, rangeEnd, afterRevision, cont))
                    return nil
                }
                if let past { cont.resume(returning: past) }
            }
        } onCancel: {
            let cont = state.withLock { s -> CheckedContinuation<[Mvccpb_Event], any Error>? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: i).cont
            }
            cont?.resume(throwing: CancellationError())
        }
    }

    /// Deletes every key of `lease` (what lease expiry does).
    func expire(lease: Int64) async {
        let keys = state.withLock { $0.kvs.values.filter { $0.lease == lease }.map(\.key) }
        for key in keys {
            var d = Etcdserverpb_DeleteRangeRequest()
            d.key = key
            _ = try? await deleteRange(d)
        }
    }
}

/// Runs `body` with a server context, as the gateway does.
func inContext<T: Sendable>(_ body: (ServerContext) async throws -> T) async throws -> T {
    try await Gateway.withContext("/test/call", body)
}

@Suite struct LockTests {
    func lockRequest(_ name: String, lease: Int64) -> V3lockpb_LockRequest {
        var r = V3lockpb_LockRequest()
        r.name = Data(name.utf8)
        r.lease = lease
        return r
    }

    @Test func keysAreNamePlusLeaseHex() {
        #expect(CoordinationKeys.key(prefix: Array("m".utf8), lease: 0x694d77aa) == Array("m/694d77aa".utf8))
        #expect(CoordinationKeys.prefixEnd(Array("a/".utf8)) == Array("a0".utf8))
        #expect(CoordinationKeys.prefixEnd([0x61, 0xff]) == [0x62])
        #expect(CoordinationKeys.prefixEnd([0xff]) == [0])
    }

    @Test(.timeLimit(.minutes(1))) func secondLockerWaitsForTheFirstToUnlock() async throws {
        let kv = FakeCoordinationKV(leases: [1, 2])
        let service = LockService(backend: kv)
        let first = try await inContext { try await service.lock(request: lockRequest("m", lease: 1), context: $0) }
        #expect(first.key == Data("m/1".utf8))

        let acquired = Mutex(false)
        let second = Task {
            let r = try await inContext { try await service.lock(request: lockRequest("m", lease: 2), context: $0) }
            acquired.withLock { $0 = true }
            return r
        }
        // The waiter is parked on the first key's deletion: it cannot have the lock yet.
        try await waitUntil { kv.state.withLock { !$0.waiters.isEmpty } }
        #expect(acquired.withLock { $0 } == false)

        var unlock = V3lockpb_UnlockRequest()
        unlock.key = first.key
        _ = try await inContext { try await service.unlock(request: unlock, context: $0) }
        let got = try await second.value
        #expect(got.key == Data("m/2".utf8))
    }

    @Test(.timeLimit(.minutes(1))) func lockPassesOnWhenTheHolderLeaseExpires() async throws {
        let kv = FakeCoordinationKV(leases: [1, 2])
        let service = LockService(backend: kv)
        _ = try await inContext { try await service.lock(request: lockRequest("m", lease: 1), context: $0) }
        let second = Task { try await inContext { try await service.lock(request: lockRequest("m", lease: 2), context: $0) } }
        try await waitUntil { kv.state.withLock { !$0.waiters.isEmpty } }
        await kv.expire(lease: 1)
        #expect(try await second.value.key == Data("m/2".utf8))
    }

    @Test func unknownLeaseIsRefused() async throws {
        let service = LockService(backend: FakeCoordinationKV(leases: []))
        let error = await #expect(throws: RPCError.self) {
            _ = try await inContext { try await service.lock(request: lockRequest("m", lease: 9), context: $0) }
        }
        #expect(error?.message == "etcdserver: requested lease not found")
    }
}

/// Polls `condition` (cheap, in-memory) until true; fails after 60 s. The bound is generous:
/// with the suite's CPU-bound tests (simulation, fuzzing) on both of a small machine's pool
/// threads, this task may not run at all for 20-30 s.
func waitUntil(_ condition: @Sendable () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(60)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw FakeError("condition not reached in 60 s") }
        try await Task.sleep(for: .milliseconds(1))
    }
}
