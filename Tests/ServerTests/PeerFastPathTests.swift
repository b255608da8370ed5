import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import Logging
import Raft
@testable import Server
import Synchronization
import Testing

/// The peer fast path: the frame-level `Messages` receiver (``PeerMessagesHandler``), alone and
/// beside grpc-swift's receiver of the same protocol (`SWETCD_NO_FAST_PEER=1`).
@Suite("Peer fast path", .serialized)
struct PeerFastPathTests {
    typealias Service = PeerServiceTests

    @Test("The frame-level receiver: a batch in another member's name ends the stream FAILED_PRECONDITION")
    func senderChanged() async throws {
        try await Service.withReceiver { r in
            // Member 3 is a member too: only the change of sender is wrong.
            r.transport.addPeer(3, urls: [EndpointURL(scheme: "http", host: "127.0.0.1", port: 1)])
            let error = await #expect(throws: RPCError.self) {
                try await r.client.messages { writer in
                    try await writer.write(Service.batch([Service.heartbeat(term: 3)]))
                    _ = await r.delegate.events.wait { !$0.received.isEmpty }
                    try await writer.write(Service.batch([Service.heartbeat(from: 3, term: 4)], from: 3))
                    // Hold the request side open: only the server may end this call.
                    try await Task.sleep(for: .seconds(60))
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(error?.code == .failedPrecondition)
            #expect(error?.message.contains("one stream carries messages of one member") == true, "\(String(describing: error))")
            #expect(r.delegate.events.current.received.map(\.term) == [3])
            #expect(r.transport.frameLevelStreams.load(ordering: .relaxed) == 1)
        }
    }

    @Test("The frame-level receiver: a batch over the message limit ends the stream RESOURCE_EXHAUSTED; the next stream is served")
    func oversizeBatch() async throws {
        try await Service.withReceiver(maxRequestBytes: 1024) { r in
            let big = Data(Raft.Message(type: .append, to: Service.local, from: Service.remote, term: 2,
                                        entries: [Entry(term: 2, index: 1, data: [UInt8](repeating: 1, count: 4096))]).encode())
            let error = await #expect(throws: RPCError.self) {
                try await r.client.messages { writer in
                    try await writer.write(Service.batch([big]))
                    try await Task.sleep(for: .seconds(60))
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(error?.code == .resourceExhausted, "\(String(describing: error))")
            #expect(r.delegate.events.current.received.isEmpty)
            try await r.client.messages { writer in
                try await writer.write(Service.batch([Service.heartbeat(term: 9)]))
            } onResponse: { response in
                for try await _ in response.messages {}
            }
            #expect(await r.delegate.events.wait { $0.received.map(\.term) == [9] })
            #expect(r.transport.frameLevelStreams.load(ordering: .relaxed) == 2)
        }
    }

    @Test("A member on grpc-swift's path (SWETCD_NO_FAST_PEER) and two on the fast path elect, commit and stay connected")
    func mixedCluster() async throws {
        let cluster = try PeerTestCluster()
        cluster.grpcPath = [3]
        try await cluster.start()
        let lead = await cluster.leader()
        try #require(lead != 0, "no leader elected")
        var values: [String] = []
        var repeated: Set<String> = []
        for i in 0..<6 {
            values.append("m\(i)")
            let target = cluster.ids[i % 3]
            try #require(await cluster.propose(values, via: target, among: [lead], repeatable: &repeated), "m\(i) not applied")
        }
        #expect(await cluster.allApplied(values, repeatable: repeated))
        for id in cluster.ids {
            for peer in cluster.ids where peer != id {
                #expect(cluster.transports[id]?.isActive(peer) == true, "\(id) → \(peer) not active")
            }
            // Fast receivers serve both kinds of sender at the frame level; the other none.
            let served = cluster.transports[id]?.frameLevelStreams.load(ordering: .relaxed) ?? -1
            #expect(id == 3 ? served == 0 : served >= 2, "member \(id) served \(served) streams at the frame level")
        }
        await cluster.shutdown()
    }
}
