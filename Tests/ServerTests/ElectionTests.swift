import EtcdProto
import Foundation
import GRPCCore
import Synchronization
import Testing
@testable import Server

@Suite struct ElectionTests {
    func campaign(_ service: ElectionService, _ name: String, lease: Int64, value: String) async throws -> V3electionpb_LeaderKey {
        var r = V3electionpb_CampaignRequest()
        r.name = Data(name.utf8)
        r.lease = lease
        r.value = Data(value.utf8)
        return try await inContext { try await service.campaign(request: r, context: $0) }.leader
    }

    func leaderValue(_ service: ElectionService, _ name: String) async throws -> String {
        var r = V3electionpb_LeaderRequest()
        r.name = Data(name.utf8)
        let kv = try await inContext { try await service.leader(request: r, context: $0) }.kv
        return String(decoding: kv.value, as: UTF8.self)
    }

    @Test(.timeLimit(.minutes(1))) func campaignProclaimResignAndHandOver() async throws {
        let kv = FakeCoordinationKV(leases: [1, 2])
        let service = ElectionService(backend: kv)
        var none = V3electionpb_LeaderRequest()
        none.name = Data("e".utf8)
        let noLeader = await #expect(throws: RPCError.self) {
            _ = try await inContext { try await service.leader(request: none, context: $0) }
        }
        #expect(noLeader?.message == "election: no leader")

        let first = try await campaign(service, "e", lease: 1, value: "a")
        #expect(first.key == Data("e/1".utf8))
        #expect(try await leaderValue(service, "e") == "a")

        let second = Task { try await campaign(service, "e", lease: 2, value: "b") }
        try await waitUntil { kv.state.withLock { !$0.waiters.isEmpty } }

        var proclaim = V3electionpb_ProclaimRequest()
        proclaim.leader = first
        proclaim.value = Data("a2".utf8)
        _ = try await inContext { try await service.proclaim(request: proclaim, context: $0) }
        #expect(try await leaderValue(service, "e") == "a2")

        var resign = V3electionpb_ResignRequest()
        resign.leader = first
        _ = try await inContext { try await service.resign(request: resign, context: $0) }
        let next = try await second.value
        #expect(next.key == Data("e/2".utf8))
        #expect(try await leaderValue(service, "e") == "b")

        // The old leader key can no longer proclaim.
        let stale = await #expect(throws: RPCError.self) {
            _ = try await inContext { try await service.proclaim(request: proclaim, context: $0) }
        }
        #expect(stale?.message == "election: not leader")
    }

    @Test(.timeLimit(.minutes(1))) func observeStreamsEachLeaderValue() async throws {
        let kv = FakeCoordinationKV(leases: [1])
        let service = ElectionService(backend: kv)
        let leader = try await campaign(service, "o", lease: 1, value: "v1")
        let seen = Mutex<[String]>([])
        let observer = Task {
            var r = V3electionpb_LeaderRequest()
            r.name = Data("o".utf8)
            let writer = RPCWriter(wrapping: CollectingWriter { (m: V3electionpb_LeaderResponse) in
                seen.withLock { $0.append(String(decoding: m.kv.value, as: UTF8.self)) }
            })
            try await inContext { try await service.observe(request: r, response: writer, context: $0) }
        }
        try await waitUntil { seen.withLock { $0 } == ["v1"] }
        var proclaim = V3electionpb_ProclaimRequest()
        proclaim.leader = leader
        proclaim.value = Data("v2".utf8)
        _ = try await inContext { try await service.proclaim(request: proclaim, context: $0) }
        try await waitUntil { seen.withLock { $0 } == ["v1", "v2"] }
        observer.cancel()
        _ = await observer.result
    }
}

/// An RPC writer handing each message to a closure.
struct CollectingWriter<Element: Sendable>: RPCWriterProtocol {
    let onWrite: @Sendable (Element) -> Void
    func write(_ element: Element) async throws { onWrite(element) }
    func write(contentsOf elements: some Sequence<Element>) async throws { for e in elements { onWrite(e) } }
}
