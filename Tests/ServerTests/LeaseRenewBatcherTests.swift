import Foundation
import MVCC
@testable import Server
import Synchronization
import Testing

/// A send function for the batcher that records each batch and holds the first call until
/// released.
private final class GatedSend: Sendable {
    let batches = Mutex<[[Int64]]>([])
    private let gate = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let held = Mutex(false)
    private let released = Mutex(false)

    func send(_ ids: [Int64]) async throws -> [LeaseRenewBatcher.Outcome] {
        let first = batches.withLock { b -> Bool in
            b.append(ids)
            return b.count == 1
        }
        if first {
            await withCheckedContinuation { c in
                let resumeNow = released.withLock { r -> Bool in
                    if !r { gate.withLock { $0 = c } }
                    return r
                }
                held.withLock { $0 = true }
                if resumeNow { c.resume() }
            }
        }
        return ids.map { $0 == 5 ? .failure(EtcdError.from(LeaseError.leaseNotFound($0))) : .success($0 * 10) }
    }

    var isHolding: Bool { held.withLock { $0 } }

    func release() {
        released.withLock { $0 = true }
        gate.withLock { $0.take() }?.resume()
    }
}

@Suite("Forwarded keep-alives are batched")
struct LeaseRenewBatcherTests {
    @Test("Renewals arriving while a call is in flight go out together in the next call, each with its own answer")
    func coalescesWhileInFlight() async throws {
        let batcher = LeaseRenewBatcher()
        let sender = GatedSend()
        let send: LeaseRenewBatcher.Send = { _, ids, _ in try await sender.send(ids) }
        try await withThrowingTaskGroup(of: (Int64, Result<Int64, EtcdError>).self) { group in
            // The group waits for its tasks when the body leaves, also on a failed wait: let
            // the held call go first, so a failure ends the test instead of hanging it.
            defer { sender.release() }
            @Sendable func renew(_ id: Int64) async -> (Int64, Result<Int64, EtcdError>) {
                do {
                    return (id, .success(try await batcher.renew(id, leader: 9, timeout: .seconds(60), send: send)))
                } catch {
                    return (id, .failure(EtcdError.from(error)))
                }
            }
            group.addTask { await renew(1) }
            try await waitUntil { sender.isHolding }
            for id in Int64(2)...11 { group.addTask { await renew(id) } }
            try await waitUntil { batcher.waiting(for: 9) == 10 }
            sender.release()
            var answers: [Int64: Result<Int64, EtcdError>] = [:]
            for try await (id, answer) in group { answers[id] = answer }
            #expect(answers.count == 11)
            for id in Int64(1)...11 where id != 5 { #expect(answers[id] == .success(id * 10)) }
            #expect(answers[5] == .failure(EtcdError.from(LeaseError.leaseNotFound(5))))
        }
        let batches = sender.batches.withLock { $0 }
        #expect(batches.count == 2)
        #expect(batches.first == [1])
        #expect(Set(batches.last ?? []) == Set(2...11))
        #expect(batcher.waiting(for: 9) == 0)
    }

    @Test("A failed call fails every renewal in it; the next renewal starts a new call")
    func failureReachesTheWholeBatch() async throws {
        let batcher = LeaseRenewBatcher()
        let calls = Mutex(0)
        let failing: LeaseRenewBatcher.Send = { _, _, _ in
            calls.withLock { $0 += 1 }
            throw EtcdError.notLeader
        }
        await #expect(throws: EtcdError.notLeader) {
            try await batcher.renew(1, leader: 3, timeout: .seconds(5), send: failing)
        }
        let answering: LeaseRenewBatcher.Send = { _, ids, _ in ids.map { .success($0) } }
        #expect(try await batcher.renew(4, leader: 3, timeout: .seconds(5), send: answering) == 4)
        #expect(calls.withLock { $0 } == 1)
    }

    @Test("Beyond the waiting bound a renewal is refused with etcd's too-many-requests")
    func boundedWaiting() async throws {
        let batcher = LeaseRenewBatcher(maxBatch: 1, maxWaiting: 2)
        let sender = GatedSend()
        let send: LeaseRenewBatcher.Send = { _, ids, _ in try await sender.send(ids) }
        try await withThrowingTaskGroup(of: Int64.self) { group in
            defer { sender.release() }
            group.addTask { try await batcher.renew(1, leader: 2, timeout: .seconds(60), send: send) }
            try await waitUntil { sender.isHolding }
            group.addTask { try await batcher.renew(2, leader: 2, timeout: .seconds(60), send: send) }
            group.addTask { try await batcher.renew(3, leader: 2, timeout: .seconds(60), send: send) }
            try await waitUntil { batcher.waiting(for: 2) == 2 }
            await #expect(throws: EtcdError.tooManyRequests) {
                try await batcher.renew(4, leader: 2, timeout: .seconds(60), send: send)
            }
            sender.release()
            var ttls: [Int64] = []
            for try await ttl in group { ttls.append(ttl) }
            #expect(ttls.sorted() == [10, 20, 30])
        }
        // maxBatch 1: one call per renewal.
        #expect(sender.batches.withLock { $0 } .count == 3)
    }
}
