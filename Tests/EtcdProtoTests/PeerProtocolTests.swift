import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization
import Testing

/// The generated peer service and client over real HTTP/2 on loopback: the three
/// call shapes (unary handshake, bidirectional batches, client-streaming snapshot)
/// and the refusal of a peer from another cluster. `TestPeer` is a stand-in that
/// follows the rules written in peer.proto; the real transport lives in the server.
@Suite("Peer protocol")
struct PeerProtocolTests {
    static let cluster: UInt64 = 0x1c4f_7a2b_9d3e_0011
    static let receiver: UInt64 = 2

    /// Runs a TestPeer server and hands a connected client to `body`.
    static func withPeer<R: Sendable>(
        _ body: (Swetcd_Peer_Peer.Client<HTTP2ClientTransport.Posix>) async throws -> R
    ) async throws -> R {
        let server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext),
            services: [TestPeer(clusterID: cluster, memberID: receiver)]
        )
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.serve() }
            defer { server.beginGracefulShutdown() }
            let port = try #require(try await server.transport.listeningAddress.ipv4?.port)
            let transport = try HTTP2ClientTransport.Posix(
                target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
            return try await withGRPCClient(transport: transport) { client in
                try await body(Swetcd_Peer_Peer.Client(wrapping: client))
            }
        }
    }

    static func hello(cluster: UInt64, to: UInt64 = receiver) -> Swetcd_Peer_Hello {
        var hello = Swetcd_Peer_Hello()
        hello.clusterID = cluster
        hello.from = 1
        hello.to = to
        hello.protocolVersion = PeerProtocol.version
        hello.serverVersion = "swetcd test"
        return hello
    }

    @Test("Handshake: accepted in the same cluster, refused with a reason otherwise")
    func handshake() async throws {
        try await Self.withPeer { peer in
            let accepted = try await peer.handshake(Self.hello(cluster: Self.cluster))
            #expect(accepted.accepted)
            #expect(accepted.reason.isEmpty)
            #expect(accepted.memberID == Self.receiver)
            #expect(accepted.protocolVersion == PeerProtocol.version)

            let foreign = try await peer.handshake(Self.hello(cluster: 42))
            #expect(!foreign.accepted)
            #expect(foreign.reason.contains("cluster"))
            #expect(foreign.clusterID == Self.cluster)

            let misdirected = try await peer.handshake(Self.hello(cluster: Self.cluster, to: 9))
            #expect(!misdirected.accepted)
        }
    }

    @Test("Messages: batches flow both ways in order on one stream")
    func messages() async throws {
        let replies = try await Self.withPeer { peer in
            try await peer.messages { writer in
                for round in 0..<3 {
                    var batch = Swetcd_Peer_MessageBatch()
                    batch.clusterID = Self.cluster
                    batch.from = 1
                    batch.to = Self.receiver
                    batch.messages = (0...round).map { Data("m\(round).\($0)".utf8) }
                    try await writer.write(batch)
                }
            } onResponse: { response in
                var received: [Swetcd_Peer_MessageBatch] = []
                for try await batch in response.messages { received.append(batch) }
                return received
            }
        }
        // TestPeer answers each batch with one whose messages are the count it got.
        #expect(replies.map(\.messages) == [[Data([1])], [Data([2])], [Data([3])]])
        #expect(replies.allSatisfy { $0.from == Self.receiver && $0.to == 1 && $0.clusterID == Self.cluster })
    }

    @Test("Messages: a batch from another cluster ends the stream with FAILED_PRECONDITION")
    func messagesFromAnotherCluster() async throws {
        let error = await #expect(throws: RPCError.self) {
            try await Self.withPeer { peer in
                try await peer.messages { writer in
                    var batch = Swetcd_Peer_MessageBatch()
                    batch.clusterID = 42
                    batch.from = 1
                    batch.to = Self.receiver
                    batch.messages = [Data("x".utf8)]
                    try await writer.write(batch)
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
        }
        #expect(error?.code == .failedPrecondition)
        #expect(error?.message.contains("cluster") == true)
    }

    @Test("SendSnapshot: header then chunks, one ack with the byte count; no header is refused")
    func sendSnapshot() async throws {
        let body = Data((0..<5000).map { UInt8(truncatingIfNeeded: $0) })
        let (ack, refused) = try await Self.withPeer { peer in
            let ack = try await peer.sendSnapshot { writer in
                var header = Swetcd_Peer_SnapshotHeader()
                header.clusterID = Self.cluster
                header.from = 1
                header.to = Self.receiver
                header.index = 100
                header.term = 2
                header.size = UInt64(body.count)
                var first = Swetcd_Peer_SnapshotPart()
                first.header = header
                try await writer.write(first)
                for start in stride(from: 0, to: body.count, by: 1024) {
                    var part = Swetcd_Peer_SnapshotPart()
                    part.chunk = Data(body[start..<min(start + 1024, body.count)])
                    try await writer.write(part)
                }
            }
            let refused = try await peer.sendSnapshot { writer in
                var part = Swetcd_Peer_SnapshotPart()
                part.chunk = Data("orphan".utf8)
                try await writer.write(part)
            }
            return (ack, refused)
        }
        #expect(ack.accepted, "refused: \(ack.reason)")
        #expect(ack.receivedBytes == 5000)
        #expect(!refused.accepted)
        #expect(refused.reason.contains("header"))
    }
}

/// A peer that checks identities as peer.proto prescribes, answers each batch with
/// the number of messages it carried, and counts snapshot bytes (without storing
/// them or checking the hash).
struct TestPeer: Swetcd_Peer_Peer.SimpleServiceProtocol {
    let clusterID: UInt64
    let memberID: UInt64

    func handshake(request: Swetcd_Peer_Hello, context: ServerContext) async throws -> Swetcd_Peer_HelloReply {
        var reply = Swetcd_Peer_HelloReply()
        reply.clusterID = clusterID
        reply.memberID = memberID
        reply.protocolVersion = PeerProtocol.version
        reply.serverVersion = "swetcd test"
        reply.reason = refusal(cluster: request.clusterID, to: request.to) ?? ""
        reply.accepted = reply.reason.isEmpty
        return reply
    }

    func messages(
        request: RPCAsyncSequence<Swetcd_Peer_MessageBatch, any Error>,
        response: RPCWriter<Swetcd_Peer_MessageBatch>,
        context: ServerContext
    ) async throws {
        for try await batch in request {
            if let reason = refusal(cluster: batch.clusterID, to: batch.to) {
                throw RPCError(code: .failedPrecondition, message: reason)
            }
            var reply = Swetcd_Peer_MessageBatch()
            reply.clusterID = clusterID
            reply.from = memberID
            reply.to = batch.from
            reply.messages = [Data([UInt8(truncatingIfNeeded: batch.messages.count)])]
            try await response.write(reply)
        }
    }

    func sendSnapshot(
        request: RPCAsyncSequence<Swetcd_Peer_SnapshotPart, any Error>, context: ServerContext
    ) async throws -> Swetcd_Peer_SnapshotAck {
        var ack = Swetcd_Peer_SnapshotAck()
        var header: Swetcd_Peer_SnapshotHeader?
        for try await part in request {
            switch part.part {
            case .header(let first) where header == nil:
                if let reason = refusal(cluster: first.clusterID, to: first.to) {
                    ack.reason = reason
                    return ack
                }
                header = first
            case .chunk(let bytes) where header != nil:
                ack.receivedBytes += UInt64(bytes.count)
            default:
                ack.reason = header == nil ? "the first part must be the header" : "a second header"
                return ack
            }
        }
        guard let header else {
            ack.reason = "the first part must be the header"
            return ack
        }
        guard ack.receivedBytes == header.size else {
            ack.reason = "expected \(header.size) bytes, received \(ack.receivedBytes)"
            return ack
        }
        ack.accepted = true
        return ack
    }

    private func refusal(cluster: UInt64, to: UInt64) -> String? {
        if cluster != clusterID {
            return "peer belongs to cluster \(String(cluster, radix: 16)), this member to \(String(clusterID, radix: 16))"
        }
        if to != memberID {
            return "this is member \(String(memberID, radix: 16)), not \(String(to, radix: 16))"
        }
        return nil
    }
}
