import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import Logging
import NIOCore
import NIOPosix
import Raft
@testable import Server
import Synchronization
import Testing

/// The peer fast paths: the frame-level `Messages` receiver (``PeerMessagesHandler``) and the
/// raw HTTP/2 sender (``PeerRawStream``), against each other and against grpc-swift's side of
/// the same protocol (`SWETCD_NO_FAST_PEER=1`).
@Suite("Peer fast path", .serialized)
struct PeerFastPathTests {
    typealias Service = PeerServiceTests

    /// A transport for member `Service.remote` (the senders here), never started.
    static func sender(cluster: UInt64 = Service.cluster, queueCapacity: Int = 4096,
                       keepalive: Duration = .seconds(10)) throws -> (PeerTransport, RecordingDelegate, String) {
        let directory = NSTemporaryDirectory() + "peer-sender-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let delegate = RecordingDelegate()
        var options = PeerTransport.Options()
        options.queueCapacity = queueCapacity
        options.keepaliveInterval = keepalive
        options.keepaliveTimeout = keepalive
        let transport = PeerTransport(localID: Service.remote, clusterID: cluster, snapshotDirectory: directory + "/snap",
                                      delegate: delegate, snapshots: try FakeBackend(directory: directory, size: 16),
                                      logger: Logger(label: "sender", factory: { _ in SwiftLogNoOpLogHandler() }),
                                      options: options)
        return (transport, delegate, directory)
    }

    static func heartbeats(_ terms: ClosedRange<UInt64>) -> [Raft.Message] {
        terms.map { Raft.Message(type: .heartbeat, to: Service.local, from: Service.remote, term: $0) }
    }

    @Test("The raw sender delivers every message in order to both receivers (frame-level and grpc-swift)",
          arguments: [true, false])
    func rawSenderDelivers(fastMessages: Bool) async throws {
        try await Service.withReceiver(fastMessages: fastMessages) { r in
            let (transport, _, directory) = try Self.sender()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let raw = try await PeerRawStream.open(r.url, peer: Service.local, transport: transport)
            defer { raw.close() }
            for start in stride(from: UInt64(1), through: 1000, by: 50) {
                #expect(raw.send(Self.heartbeats(start...(start + 49))) == 0)
            }
            #expect(await r.delegate.events.wait { $0.received.count >= 1000 })
            #expect(r.delegate.events.current.received.map(\.term) == Array(1...1000))
            #expect((r.transport.frameLevelStreams.load(ordering: .relaxed) == 1) == fastMessages)
        }
    }

    @Test("The raw sender reports the receiver's refusal status (another cluster: FAILED_PRECONDITION)",
          arguments: [true, false])
    func rawSenderSeesRefusal(fastMessages: Bool) async throws {
        try await Service.withReceiver(fastMessages: fastMessages) { r in
            let (transport, _, directory) = try Self.sender(cluster: 0xbad)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let raw = try await PeerRawStream.open(r.url, peer: Service.local, transport: transport)
            #expect(raw.send(Self.heartbeats(1...1)) == 0)
            let error = await raw.closed()
            #expect((error as? RPCError)?.code == .failedPrecondition, "\(String(describing: error))")
            #expect(String(describing: error).contains("cluster ID mismatch"))
            #expect(raw.send(Self.heartbeats(2...2)) == 1, "a closed stream drops what it is given")
            #expect(r.delegate.events.current.received.isEmpty)
        }
    }

    @Test("The frame-level receiver: undecodable batch bytes end the stream INVALID_ARGUMENT, nothing delivered")
    func garbageBatch() async throws {
        try await Service.withReceiver { r in
            let (transport, _, directory) = try Self.sender()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let raw = try await PeerRawStream.open(r.url, peer: Service.local, transport: transport)
            // A field with wire type 7 does not exist: not a MessageBatch.
            raw.write([0x0f, 0xff, 0xff, 0x00], messages: 0)
            let error = await raw.closed()
            #expect((error as? RPCError)?.code == .invalidArgument, "\(String(describing: error))")
            #expect(r.delegate.events.current.received.isEmpty)
            #expect(r.transport.frameLevelStreams.load(ordering: .relaxed) == 1)
        }
    }

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

    @Test("The raw sender holds at most queueCapacity unwritten messages; more are dropped")
    func rawSenderBound() async throws {
        // A peer that accepts the connection and never reads: HTTP/2 flow control (64 KiB
        // before the peer's first window update) stops the writes.
        let silent = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup)
            .childChannelOption(.autoRead, value: false)
            .bind(host: "127.0.0.1", port: 0).get()
        defer { silent.close(promise: nil) }
        let port = try #require(silent.localAddress?.port)
        let (transport, _, directory) = try Self.sender(queueCapacity: 3)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let raw = try await PeerRawStream.open(EndpointURL(scheme: "http", host: "127.0.0.1", port: port),
                                               peer: Service.local, transport: transport)
        defer { raw.close() }
        func big(_ term: UInt64) -> [Raft.Message] {
            [Raft.Message(type: .append, to: Service.local, from: Service.remote, term: term,
                          entries: [Entry(term: term, index: 1, data: [UInt8](repeating: 2, count: 100_000))])]
        }
        // The first message alone is over the window, so no write completes.
        #expect(raw.send(big(1)) == 0)
        #expect(raw.send(big(2) + big(3)) == 0)
        #expect(raw.send(big(4)) == 1)
        #expect(raw.send(big(5) + big(6)) == 2)
    }

    @Test("The raw sender closes its connection when its pings go unanswered; close() ends it without an error")
    func rawSenderPings() async throws {
        let silent = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup)
            .childChannelOption(.autoRead, value: false)
            .bind(host: "127.0.0.1", port: 0).get()
        defer { silent.close(promise: nil) }
        let url = EndpointURL(scheme: "http", host: "127.0.0.1", port: try #require(silent.localAddress?.port))
        let (transport, _, directory) = try Self.sender(keepalive: .milliseconds(100))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let error: (any Error)?
        do {
            let unanswered = try await PeerRawStream.open(url, peer: Service.local, transport: transport)
            try await waitUntil { !unanswered.isOpen }
            error = await unanswered.closed()
        } catch let e as RPCError {
            // On a loaded machine the pings can run out while the stream is still opening;
            // open then fails the same way.
            error = e
        }
        #expect((error as? RPCError)?.code == .unavailable, "\(String(describing: error))")

        // Closed here before any ping is due (the default interval): no error.
        let (patient, _, patientDirectory) = try Self.sender()
        defer { try? FileManager.default.removeItem(atPath: patientDirectory) }
        let closed = try await PeerRawStream.open(url, peer: Service.local, transport: patient)
        closed.close()
        #expect(await closed.closed() == nil)
    }

    @Test("A member on grpc-swift's path (SWETCD_NO_FAST_PEER) and two on the fast paths elect, commit and stay connected")
    func mixedCluster() async throws {
        let cluster = try PeerTestCluster()
        cluster.grpcPath = [3]
        try await cluster.start()
        let lead = await cluster.leader()
        try #require(lead != 0, "no leader elected: \(cluster.describe())")
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
