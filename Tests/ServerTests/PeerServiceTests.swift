import Crypto
import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
@testable import Server
import Testing

/// The receiving side of one PeerTransport, driven by a raw gRPC client: what it accepts,
/// what it refuses, and that refused input never reaches the delegate or the disk.
@Suite("Peer service")
struct PeerServiceTests {
    static let cluster: UInt64 = 0xc1
    static let local: UInt64 = 2
    static let remote: UInt64 = 1

    struct Receiver {
        let transport: PeerTransport
        let delegate: RecordingDelegate
        let directory: String
        let logs: Watched<[CapturedLog.Record]>
        let client: Swetcd_Peer_Peer.Client<HTTP2ClientTransport.Posix>
        let url: EndpointURL
    }

    static func withReceiver(options: PeerTransport.Options = PeerTransport.Options(), maxConnections: Int = 4096,
                             maxRequestBytes: Int = 64 << 20, fastMessages: Bool = true,
                             _ body: (Receiver) async throws -> Void) async throws {
        let directory = NSTemporaryDirectory() + "peer-service-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logs = Watched<[CapturedLog.Record]>([])
        let logger = CapturedLog.logger("receiver", into: logs)
        let delegate = RecordingDelegate()
        let transport = PeerTransport(localID: local, clusterID: cluster, snapshotDirectory: directory + "/snap",
                                      delegate: delegate, snapshots: try FakeBackend(directory: directory, size: 16),
                                      logger: logger, options: options)
        // The sender is a member (never dialled: the transport is not started).
        transport.addPeer(remote, urls: [EndpointURL(scheme: "http", host: "127.0.0.1", port: 1)])
        let server = PeerServer(logger: logger, maxRequestBytes: maxRequestBytes, maxConnections: maxConnections,
                                fastMessages: fastMessages)
        try await server.start(urls: [EndpointURL(scheme: "http", host: "127.0.0.1", port: 0)],
                               services: [transport.makeService()])
        let url = try #require(server.boundAddresses.first)
        #expect(url.port != 0)
        let clientTransport = try HTTP2ClientTransport.Posix(target: .ipv4(address: url.host, port: url.port),
                                                             transportSecurity: .plaintext)
        do {
            try await withGRPCClient(transport: clientTransport) { client in
                try await body(Receiver(transport: transport, delegate: delegate, directory: directory + "/snap",
                                        logs: logs, client: Swetcd_Peer_Peer.Client(wrapping: client), url: url))
            }
        } catch {
            await transport.stop()
            await server.stop()
            throw error
        }
        await transport.stop()
        await server.stop()
    }

    static func batch(_ messages: [Data], cluster: UInt64 = cluster, from: UInt64 = remote) -> Swetcd_Peer_MessageBatch {
        var batch = Swetcd_Peer_MessageBatch()
        batch.clusterID = cluster
        batch.from = from
        batch.to = local
        batch.messages = messages
        return batch
    }

    static func heartbeat(from: UInt64 = remote, to: UInt64 = local, term: UInt64 = 3) -> Data {
        Data(Raft.Message(type: .heartbeat, to: to, from: from, term: term).encode())
    }

    @Test("Valid messages are delivered in order; misaddressed or local-only ones are dropped")
    func delivers() async throws {
        try await Self.withReceiver { r in
            try await r.client.messages { writer in
                try await writer.write(Self.batch([Self.heartbeat(term: 3), Self.heartbeat(to: 7, term: 4)]))
                try await writer.write(Self.batch([Data(Raft.Message(type: .hup, to: Self.local, from: Self.remote).encode())]))
                try await writer.write(Self.batch([Self.heartbeat(term: 5), Self.heartbeat(from: 9, term: 6)]))
            } onResponse: { response in
                for try await _ in response.messages {}
            }
            #expect(await r.delegate.events.wait { $0.received.count >= 2 })
            #expect(r.delegate.events.current.received.map(\.term) == [3, 5])
        }
    }

    @Test("Stopping the transport ends inbound streams with UNAVAILABLE")
    func stopEndsInbound() async throws {
        try await Self.withReceiver { r in
            let error = await #expect(throws: RPCError.self) {
                try await r.client.messages { writer in
                    try await writer.write(Self.batch([Self.heartbeat()]))
                    _ = await r.delegate.events.wait { !$0.received.isEmpty }
                    await r.transport.stop()
                    // Hold the request side open: only the server may end this call.
                    try await Task.sleep(for: .seconds(60))
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(error?.code == .unavailable)
        }
    }

    @Test("Undecodable message bytes end the stream with INVALID_ARGUMENT; nothing is delivered")
    func garbage() async throws {
        try await Self.withReceiver { r in
            let error = await #expect(throws: RPCError.self) {
                try await r.client.messages { writer in
                    try await writer.write(Self.batch([Self.heartbeat(), Data([0xff, 0x00, 0x13, 0x37])]))
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(error?.code == .invalidArgument)
            #expect(r.delegate.events.current.received.isEmpty, "a bad batch is refused whole")
        }
    }

    @Test("Handshake refuses another member ID, another protocol version and a removed member")
    func handshakeRefusals() async throws {
        try await Self.withReceiver { r in
            func hello(to: UInt64 = Self.local, from: UInt64 = Self.remote, version: UInt32 = PeerProtocol.version) -> Swetcd_Peer_Hello {
                var hello = Swetcd_Peer_Hello()
                hello.clusterID = Self.cluster
                hello.from = from
                hello.to = to
                hello.protocolVersion = version
                return hello
            }
            let ok = try await r.client.handshake(hello())
            #expect(ok.accepted && ok.memberID == Self.local && ok.clusterID == Self.cluster)
            let wrongMember = try await r.client.handshake(hello(to: 5))
            #expect(!wrongMember.accepted && wrongMember.reason.contains("member ID mismatch"))
            let wrongVersion = try await r.client.handshake(hello(version: 99))
            #expect(!wrongVersion.accepted && wrongVersion.reason.contains("protocol version"))
            r.transport.removePeer(Self.remote)
            let removed = try await r.client.handshake(hello())
            #expect(!removed.accepted && removed.reason.contains("removed"))
            let error = await #expect(throws: RPCError.self) {
                try await r.client.messages { writer in
                    try await writer.write(Self.batch([Self.heartbeat()]))
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(error?.code == .failedPrecondition)
            #expect(r.delegate.events.current.received.isEmpty)
        }
    }

    @Test("A sender that is not a member gets no IDs and no message delivered")
    func nonMember() async throws {
        try await Self.withReceiver { r in
            var hello = Swetcd_Peer_Hello()
            hello.clusterID = Self.cluster
            hello.from = 5
            hello.to = Self.local
            hello.protocolVersion = PeerProtocol.version
            let reply = try await r.client.handshake(hello)
            #expect(!reply.accepted && reply.reason.contains("not a member"), "\(reply)")
            #expect(reply.clusterID == 0 && reply.memberID == 0, "a refused caller learns no IDs")
            let error = await #expect(throws: RPCError.self) {
                try await r.client.messages { writer in
                    try await writer.write(Self.batch([Self.heartbeat(from: 5)], from: 5))
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(error?.code == .failedPrecondition)
            #expect(r.delegate.events.current.received.isEmpty)
            #expect(r.logs.current.contains { $0.message == "refused peer call" && $0.metadata["remote-peer-id"] == "5" })
        }
    }

    @Test("The peer listener holds at most maxConnections connections; one more is closed at once")
    func connectionCap() async throws {
        try await Self.withReceiver(maxConnections: 1) { r in
            var hello = Swetcd_Peer_Hello()
            hello.clusterID = Self.cluster
            hello.from = Self.remote
            hello.to = Self.local
            hello.protocolVersion = PeerProtocol.version
            let request = hello
            #expect(try await r.client.handshake(request).accepted)
            let port = r.url.port
            let second = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
            await #expect(throws: RPCError.self) {
                try await withGRPCClient(transport: second) { client in
                    var options = CallOptions.defaults
                    options.waitForReady = false
                    options.timeout = .seconds(5)
                    _ = try await Swetcd_Peer_Peer.Client(wrapping: client).handshake(request: ClientRequest(message: request), options: options)
                }
            }
            // The first connection still works.
            #expect(try await r.client.handshake(request).accepted)
        }
    }

    @Test("Removing a member ends its open inbound stream with PERMISSION_DENIED")
    func removalEndsInbound() async throws {
        try await Self.withReceiver { r in
            let error = await #expect(throws: RPCError.self) {
                try await r.client.messages { writer in
                    try await writer.write(Self.batch([Self.heartbeat()]))
                    _ = await r.delegate.events.wait { !$0.received.isEmpty }
                    r.transport.removePeer(Self.remote)
                    // Hold the request side open: only the server may end this call.
                    try await Task.sleep(for: .seconds(60))
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(error?.code == .permissionDenied)
        }
    }

    /// Uploads a snapshot body with a header built from `body` and then adjusted by `edit`.
    static func upload(_ client: Swetcd_Peer_Peer.Client<HTTP2ClientTransport.Posix>, body: [UInt8],
                       sendHeader: Bool = true, extra: [UInt8] = [],
                       edit: @escaping @Sendable (inout Swetcd_Peer_SnapshotHeader) -> Void = { _ in }) async throws -> Swetcd_Peer_SnapshotAck {
        try await client.sendSnapshot { writer in
            var header = Swetcd_Peer_SnapshotHeader()
            header.clusterID = cluster
            header.from = remote
            header.to = local
            header.index = 42
            header.term = 2
            header.size = UInt64(body.count)
            header.sha256 = Data(SHA256.hash(data: body))
            let snapshot = Snapshot(metadata: SnapshotMetadata(index: 42, term: 2, confState: ConfState(voters: [1, 2])),
                                    data: Array("membership".utf8))
            header.message = Data(Raft.Message(type: .snapshot, to: local, from: remote, term: 2, snapshot: snapshot).encode())
            edit(&header)
            if sendHeader {
                var part = Swetcd_Peer_SnapshotPart()
                part.header = header
                try await writer.write(part)
            }
            let all = body + extra
            for start in stride(from: 0, to: all.count, by: 1000) {
                var part = Swetcd_Peer_SnapshotPart()
                part.chunk = Data(all[start..<min(start + 1000, all.count)])
                try await writer.write(part)
            }
        }
    }

    @Test("A snapshot body is stored under <index:016x>.snap.db after its size and SHA-256 check")
    func snapshotAccepted() async throws {
        try await Self.withReceiver { r in
            let body = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let ack = try await Self.upload(r.client, body: body)
            #expect(ack.accepted, "\(ack.reason)")
            #expect(ack.receivedBytes == 10_000)
            let got = try #require(r.delegate.events.current.snapshots.first)
            #expect(got.file == r.directory + "/000000000000002a.snap.db")
            #expect(got.message.snapshot?.metadata.index == 42)
            #expect(try Data(contentsOf: URL(fileURLWithPath: got.file)) == Data(body))
        }
    }

    @Test("Snapshot refusals: bad hash, short, long, no header, other cluster, not a snapshot message, larger than the free disk space")
    func snapshotRefusals() async throws {
        try await Self.withReceiver { r in
            let body = [UInt8](repeating: 7, count: 3000)
            let cases: [(String, Swetcd_Peer_SnapshotAck)] = [
                ("SHA-256 mismatch", try await Self.upload(r.client, body: body) { $0.sha256 = Data(SHA256.hash(data: [1])) }),
                ("received 3000 of the announced 3001", try await Self.upload(r.client, body: body) { $0.size = 3001 }),
                ("more than the announced", try await Self.upload(r.client, body: body, extra: [1])),
                ("header", try await Self.upload(r.client, body: body, sendHeader: false)),
                ("cluster ID mismatch", try await Self.upload(r.client, body: body) { $0.clusterID = 0xbad }),
                ("not a snapshot", try await Self.upload(r.client, body: body) { $0.message = Self.heartbeat() }),
                ("SHA-256 has 3 bytes", try await Self.upload(r.client, body: body) { $0.sha256 = Data([1, 2, 3]) }),
                ("not enough disk space", try await Self.upload(r.client, body: body) { $0.size = 1 << 62 }),
            ]
            for (reason, ack) in cases {
                #expect(!ack.accepted, "\(reason)")
                #expect(ack.reason.contains(reason), "expected '\(reason)', got '\(ack.reason)'")
            }
            #expect(r.delegate.events.current.snapshots.isEmpty)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: r.directory)) ?? []
            #expect(files.isEmpty, "left behind: \(files)")

            // Each refusal released index 42: a good body for it is accepted now. While one
            // transfer holds an index, a second one for it is refused.
            #expect(r.transport.claimIncomingSnapshot(42))
            let busy = try await Self.upload(r.client, body: body)
            #expect(!busy.accepted && busy.reason.contains("already being received"), "\(busy.reason)")
            r.transport.releaseIncomingSnapshot(42)
            let good = try await Self.upload(r.client, body: body)
            #expect(good.accepted, "\(good.reason)")
        }
    }

    @Test("A snapshot Raft would ignore, one over the size cap or one the disk cannot hold is refused before a byte is stored")
    func unsolicitedAndOversizedSnapshotsRefused() async throws {
        let body = [UInt8](repeating: 9, count: 5000)
        try await Self.withReceiver { r in
            r.delegate.snapshotRefusal.withLock { $0 = "not this member's leader" }
            let ack = try await Self.upload(r.client, body: body)
            #expect(!ack.accepted && ack.reason.contains("not this member's leader"), "\(ack.reason)")
            #expect(ack.receivedBytes == 0)
            r.delegate.snapshotRefusal.withLock { $0 = nil }
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: r.directory)) ?? []).isEmpty)
            #expect(try await Self.upload(r.client, body: body).accepted)
        }
        var capped = PeerTransport.Options()
        capped.maxSnapshotBytes = 4096
        try await Self.withReceiver(options: capped) { r in
            let ack = try await Self.upload(r.client, body: body)
            #expect(!ack.accepted && ack.reason.contains("over the limit of 4096 bytes"), "\(ack.reason)")
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: r.directory)) ?? []).isEmpty)
        }
        var reserve = PeerTransport.Options()
        reserve.snapshotDiskMargin = UInt64.max / 2
        try await Self.withReceiver(options: reserve) { r in
            let ack = try await Self.upload(r.client, body: body)
            #expect(!ack.accepted && ack.reason.contains("not enough disk space"), "\(ack.reason)")
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: r.directory)) ?? []).isEmpty)
            #expect(r.delegate.events.current.snapshots.isEmpty)
        }
    }

    @Test("Start removes partial snapshot files; sending to a peer that is down drops and reports it")
    func unreachablePeer() async throws {
        let delegate = RecordingDelegate()
        let directory = NSTemporaryDirectory() + "peer-down-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let transport = PeerTransport(localID: 1, clusterID: Self.cluster, snapshotDirectory: directory,
                                      delegate: delegate, snapshots: try FakeBackend(directory: directory, size: 8),
                                      logger: Logger(label: "down", factory: { _ in SwiftLogNoOpLogHandler() }))
        // Partial files of an earlier run go at start; finished ones stay.
        for name in ["0000000000000007.snap.db.tmp", "outgoing-2-7.tmp", "0000000000000006.snap.db"] {
            #expect(FileManager.default.createFile(atPath: "\(directory)/\(name)", contents: Data([1])))
        }
        // Port 1 on loopback: nothing listens there.
        transport.addPeer(2, urls: [EndpointURL(scheme: "http", host: "127.0.0.1", port: 1)])
        await transport.start()
        transport.send([Raft.Message(type: .heartbeat, to: 2, from: 1, term: 1)])
        let left = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0 != "fake-backend.db" }
        #expect(left == ["0000000000000006.snap.db"])
        #expect(delegate.events.current.unreachable == [2])
        #expect(!transport.isActive(2))
        transport.send([Raft.Message(type: .snapshot, to: 2, from: 1, term: 1,
                                     snapshot: Snapshot(metadata: SnapshotMetadata(index: 5, term: 1)))])
        #expect(await delegate.events.wait { $0.snapshotReports.contains { $0.peer == 2 && !$0.success } })
        await transport.stop()
    }

    @Test("PeerServer refuses https and host-name listen URLs with a clear error")
    func serverURLs() async throws {
        let server = PeerServer(logger: Logger(label: "urls", factory: { _ in SwiftLogNoOpLogHandler() }))
        await #expect(throws: PeerTransportError.self) {
            try await server.start(urls: [EndpointURL(scheme: "https", host: "127.0.0.1", port: 0)], services: [])
        }
        await #expect(throws: PeerTransportError.self) {
            try await server.start(urls: [EndpointURL(scheme: "http", host: "example.com", port: 0)], services: [])
        }
        #expect(server.boundAddresses.isEmpty)
    }

    @Test("PeerQueue: closed drops everything, open keeps order up to its capacity")
    func queue() async throws {
        let queue = PeerQueue(capacity: 3)
        let message = { (i: UInt64) in Raft.Message(type: .heartbeat, to: 2, from: 1, term: i) }
        #expect(queue.push([message(1)]) == 1)
        queue.open()
        #expect(queue.push([message(1), message(2)]) == 0)
        #expect(queue.push([message(3), message(4)]) == 1)
        #expect(await queue.next()?.map(\.term) == [1, 2, 3])
        let waiting = Task { await queue.next()?.map(\.term) }
        #expect(queue.push([message(5)]) == 0)
        #expect(await waiting.value == [5])
        #expect(queue.push([message(6)]) == 0)
        #expect(queue.close().map(\.term) == [6])
        #expect(await queue.next() == nil)
    }
}
