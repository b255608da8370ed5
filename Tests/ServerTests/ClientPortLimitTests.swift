import Foundation
import GRPCCore
import NIOCore
import NIOHPACK
import Testing
@testable import Server

#if canImport(Glibc)
import Glibc
#endif

/// A raw HTTP/2 client over ``RawClient``: frames by hand, header blocks through NIO's HPACK.
private final class RawHTTP2: @unchecked Sendable {
    struct Frame {
        var type: UInt8
        var flags: UInt8
        var stream: UInt32
        var payload: [UInt8]
    }

    let client: RawClient
    private var buffered: [UInt8] = []
    private var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
    private var decoder = HPACKDecoder(allocator: ByteBufferAllocator())

    private init(client: RawClient) {
        self.client = client
    }

    /// Connects, sends the preface and empty SETTINGS; returns the client and the server's
    /// SETTINGS parameters (acknowledged).
    static func connect(port: Int, timeoutSeconds: Int = 10) async throws -> (RawHTTP2, [UInt16: UInt32]) {
        let h2 = RawHTTP2(client: try await RawClient.connect(port: port, timeoutSeconds: timeoutSeconds))
        try await h2.client.send(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + frame(type: 0x4, flags: 0, stream: 0, []))
        let settings = try #require(try await h2.next(type: 0x4) { $0.flags & 0x1 == 0 }, "no SETTINGS from the server")
        var parameters: [UInt16: UInt32] = [:]
        let p = settings.payload
        for i in stride(from: 0, to: p.count - 5, by: 6) {
            parameters[UInt16(p[i]) << 8 | UInt16(p[i + 1])] =
                UInt32(p[i + 2]) << 24 | UInt32(p[i + 3]) << 16 | UInt32(p[i + 4]) << 8 | UInt32(p[i + 5])
        }
        try await h2.client.send(frame(type: 0x4, flags: 0x1, stream: 0, []))
        return (h2, parameters)
    }

    static func frame(type: UInt8, flags: UInt8, stream: UInt32, _ payload: [UInt8]) -> [UInt8] {
        let n = payload.count
        return [UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), type, flags,
                UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)] + payload
    }

    /// Sends the request HEADERS of a gRPC call to Maintenance.Status on `stream`; `changes`
    /// replace (or with nil remove) headers or add more, `end` ends the request with them.
    func startCall(stream: UInt32, _ changes: KeyValuePairs<String, String?> = [:], end: Bool = false) async throws {
        var list: [(String, String)] = [
            (":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
        ]
        for (name, value) in changes {
            // In place: pseudo-headers must stay in front.
            if let i = list.firstIndex(where: { $0.0 == name }) {
                if let value { list[i].1 = value } else { list.remove(at: i) }
            } else if let value {
                list.append((name, value))
            }
        }
        var block = ByteBufferAllocator().buffer(capacity: 256)
        try encoder.encode(headers: HPACKHeaders(list), to: &block)
        try await client.send(Self.frame(type: 0x1, flags: end ? 0x5 : 0x4, stream: stream, Array(buffer: block)))
    }

    func sendData(stream: UInt32, _ bytes: [UInt8], end: Bool) async throws {
        try await client.send(Self.frame(type: 0x0, flags: end ? 0x1 : 0, stream: stream, bytes))
    }

    func send(_ bytes: [UInt8]) async throws {
        try await client.send(bytes)
    }

    /// The next frame of `type` matching `accept` (others are skipped; header blocks are
    /// decoded in order to keep HPACK state). Nil when the connection ends or times out.
    func next(type: UInt8, _ accept: (Frame) -> Bool = { _ in true }) async throws -> Frame? {
        try await next { $0.type == type && accept($0) }
    }

    /// The next frame matching `accept`, as ``next(type:_:)``.
    func next(where accept: (Frame) -> Bool) async throws -> Frame? {
        while true {
            while buffered.count >= 9 {
                let length = Int(buffered[0]) << 16 | Int(buffered[1]) << 8 | Int(buffered[2])
                guard buffered.count >= 9 + length else { break }
                let stream = (UInt32(buffered[5]) << 24 | UInt32(buffered[6]) << 16 | UInt32(buffered[7]) << 8 | UInt32(buffered[8])) & 0x7FFF_FFFF
                let frame = Frame(type: buffered[3], flags: buffered[4], stream: stream, payload: Array(buffered[9..<(9 + length)]))
                buffered.removeFirst(9 + length)
                if accept(frame) { return frame }
                if frame.type == 0x1 { _ = try decode(frame) }
            }
            let more = try await client.read(atLeast: 1)
            if more.isEmpty { return nil }
            buffered += more
        }
    }

    /// The header list of a HEADERS frame (no padding or priority expected from the server).
    func decode(_ frame: Frame) throws -> [String: String] {
        var block = ByteBufferAllocator().buffer(bytes: frame.payload)
        let headers = try decoder.decodeHeaders(from: &block)
        var out: [String: String] = [:]
        for (name, value, _) in headers { out[name] = value }
        return out
    }
}

private func grpcMessage(_ payload: [UInt8], declaredLength: Int? = nil) -> [UInt8] {
    let n = declaredLength ?? payload.count
    return [0, UInt8(n >> 24 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] + payload
}

@Suite struct ClientPortLimitTests {
    @Test func advertisesMaxConcurrentStreams() async throws {
        try await withClientPort { port in
            let (_, settings) = try await RawHTTP2.connect(port: port)
            #expect(settings[0x3] == UInt32.max, "etcd's default: 2^32-1, got \(settings)")
        }
        try await withClientPort(configure: { $0.maxConcurrentStreams = 7 }) { port in
            let (_, settings) = try await RawHTTP2.connect(port: port)
            #expect(settings[0x3] == 7)
        }
        #expect(ClientPortTransport.effectiveMaxConcurrentStreams(0) == Int(UInt32.max))
        #expect(ClientPortTransport.effectiveMaxConcurrentStreams(Int(UInt32.max) + 1) == Int(UInt32.max))
    }

    /// More than 100 calls open on one connection at once (NIO's silent default limit) are
    /// served, and the connection stays up.
    @Test func manyConcurrentStreamsOnOneConnection() async throws {
        try await withClientPort { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            let streams = (0..<150).map { UInt32(2 * $0 + 1) }
            // Open all 150 calls before finishing any: no END_STREAM yet.
            for stream in streams {
                try await h2.startCall(stream: stream)
            }
            for stream in streams {
                try await h2.sendData(stream: stream, grpcMessage([]), end: true)
            }
            var finished = Set<UInt32>()
            while finished.count < streams.count {
                let trailers = try #require(try await h2.next(type: 0x1) { $0.flags & 0x1 != 0 },
                                            "connection ended after \(finished.count) calls")
                #expect(try h2.decode(trailers)["grpc-status"] == "0")
                finished.insert(trailers.stream)
            }
            #expect(finished == Set(streams))
        }
    }

    /// A message declaring more than the limit is answered ResourceExhausted from its length
    /// prefix: the server does not wait for (or buffer) the 1 GiB, and the connection goes on.
    @Test func oversizeMessageRefusedFromItsPrefix() async throws {
        try await withClientPort(configure: { $0.maxReceiveMessageBytes = 1024 }) { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            try await h2.startCall(stream: 1)
            try await h2.sendData(stream: 1, grpcMessage(Array(repeating: 7, count: 100), declaredLength: 1 << 30), end: false)
            let refused = try #require(try await h2.next(type: 0x1) { $0.stream == 1 }, "no answer to the oversize call")
            #expect(refused.flags & 0x1 != 0, "trailers-only response with END_STREAM")
            let headers = try h2.decode(refused)
            #expect(headers["grpc-status"] == "8")
            #expect(headers["grpc-message"] == "grpc: received message larger than max (1073741824 vs. 1024)")

            // At the limit: served on the same connection.
            try await h2.startCall(stream: 3)
            try await h2.sendData(stream: 3, grpcMessage(Array(repeating: 0, count: 1024)), end: true)
            let trailers = try #require(try await h2.next(type: 0x1) { $0.stream == 3 && $0.flags & 0x1 != 0 })
            #expect(try h2.decode(trailers)["grpc-status"] == "0")
        }
    }

    /// Graceful stop: a call the client opens before it has seen the first GOAWAY (2^31-1) is
    /// served and named by the second GOAWAY; NIO alone closed the connection with
    /// PROTOCOL_ERROR at that call's DATA frame, failing every call in flight.
    @Test func callOpenedDuringGracefulStopIsServed() async throws {
        try await withClientPortHarness { harness in
            let (h2, _) = try await RawHTTP2.connect(port: harness.port)
            // A call in flight (request not finished) keeps the connection open.
            try await h2.startCall(stream: 1)
            try await h2.sendData(stream: 1, grpcMessage([]), end: false)
            let stopping = Task { try await harness.stop() }

            let first = try #require(try await h2.next(type: 0x7), "no GOAWAY")
            #expect(first.payload[0...3].reduce(0) { $0 << 8 | UInt32($1) } == UInt32(Int32.max))
            let ping = try #require(try await h2.next(type: 0x6) { $0.flags & 0x1 == 0 }, "no PING after the GOAWAY")

            // The client has not answered the PING: it may still open calls.
            try await h2.startCall(stream: 3)
            try await h2.sendData(stream: 3, grpcMessage([]), end: true)
            let served = try #require(try await h2.next(type: 0x1) { $0.stream == 3 && $0.flags & 0x1 != 0 },
                                      "the call opened in the window was not answered (connection closed?)")
            #expect(try h2.decode(served)["grpc-status"] == "0")

            try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0x1, stream: 0, ping.payload))
            let second = try #require(try await h2.next(type: 0x7), "no second GOAWAY")
            #expect(second.payload[0...3].reduce(0) { $0 << 8 | UInt32($1) } == 3)
            #expect(second.payload[4...7].reduce(0) { $0 << 8 | UInt32($1) } == 0)

            try await h2.sendData(stream: 1, [], end: true)
            let last = try #require(try await h2.next(type: 0x1) { $0.stream == 1 && $0.flags & 0x1 != 0 })
            #expect(try h2.decode(last)["grpc-status"] == "0")
            #expect(try await h2.client.readToEnd().closed)
            try await stopping.value
        }
    }

    /// Pings faster than the enforced minimum without calls: GOAWAY ENHANCE_YOUR_CALM
    /// ("too_many_pings", as grpc-go) and the connection closes.
    @Test func tooManyPingsGetGoAway() async throws {
        try await withClientPort { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            for i in 0..<5 {
                try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0, stream: 0, Array(repeating: UInt8(i), count: 8)))
            }
            let goAway = try #require(try await h2.next(type: 0x7), "no GOAWAY")
            let code = goAway.payload[4...7].reduce(0) { $0 << 8 | UInt32($1) }
            #expect(code == 0xB, "ENHANCE_YOUR_CALM")
            #expect(String(decoding: goAway.payload[8...], as: UTF8.self) == "too_many_pings")
            #expect(try await h2.client.readToEnd().closed)
        }
    }

    /// With a call open, pings at the enforced minimum interval are fine and faster ones are
    /// strikes: two are forgiven, the third gets too_many_pings (grpc-go's count).
    @Test func pingStrikesWithAnOpenCall() async throws {
        try await withClientPort(configure: { $0.keepaliveMinClientPingInterval = .seconds(60) }) { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            try await h2.startCall(stream: 1)
            // The first ping is accepted, the next two are strikes: each is still answered.
            for i in 0..<3 {
                try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0, stream: 0, Array(repeating: UInt8(i), count: 8)))
                let ack = try #require(try await h2.next(type: 0x6) { $0.flags & 0x1 != 0 }, "ping \(i) not answered")
                #expect(ack.payload == Array(repeating: UInt8(i), count: 8))
            }
            try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0, stream: 0, Array(repeating: 9, count: 8)))
            let goAway = try #require(try await h2.next(type: 0x7), "no GOAWAY at the third strike")
            #expect(goAway.payload[0...3].reduce(0) { $0 << 8 | UInt32($1) } == 1, "names the open call")
            #expect(goAway.payload[4...7].reduce(0) { $0 << 8 | UInt32($1) } == 0xB)
            #expect(String(decoding: goAway.payload[8...], as: UTF8.self) == "too_many_pings")
            #expect(try await h2.client.readToEnd().closed)
        }
    }

    /// As in grpc-go, a response written forgives the strikes: grpc-go clients send
    /// flow-control (BDP) pings while a large response arrives, which must not count as abuse
    /// (a 1 MB range through the fast path was answered with too_many_pings).
    @Test func responsesForgivePingStrikes() async throws {
        try await withClientPort(configure: { $0.keepaliveMinClientPingInterval = .seconds(60) }) { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            var sent: UInt8 = 0
            func ping() async throws {
                try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0, stream: 0, Array(repeating: sent, count: 8)))
                let ack = try #require(try await h2.next(type: 0x6) { $0.flags & 0x1 != 0 }, "ping \(sent) not answered")
                #expect(ack.payload == Array(repeating: sent, count: 8))
                sent += 1
            }
            // One accepted ping and two strikes.
            for _ in 0..<3 { try await ping() }
            // A call answered: the server wrote HEADERS and DATA.
            try await h2.startCall(stream: 1)
            try await h2.sendData(stream: 1, grpcMessage([]), end: true)
            _ = try #require(try await h2.next(type: 0x1) { $0.stream == 1 && $0.flags & 0x1 != 0 })
            // Forgiven: again one accepted ping and two strikes, no GOAWAY.
            for _ in 0..<3 { try await ping() }
            try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0, stream: 0, Array(repeating: 99, count: 8)))
            let goAway = try #require(try await h2.next(type: 0x7), "no GOAWAY at the third strike")
            #expect(String(decoding: goAway.payload[8...], as: UTF8.self) == "too_many_pings")
        }
    }

    /// A grpc-go client sends a flow-control (BDP) ping per round trip while a large response
    /// arrives (a new one at data received once the last is answered). DATA frames go out
    /// between them, so none is a strike: a 1 MB `etcdctl get --prefix` was once answered
    /// too_many_pings ("transport is closing").
    @Test func pingsDuringALargeResponseAreNotStrikes() async throws {
        let transport = ClientPortTransport(configuration: .init(address: .tcp(host: "127.0.0.1", port: 0)))
        let server = GRPCServer(transport: transport, services: [BigResponseService()])
        let serving = Task { try await server.serve() }
        do {
            let port = try await transport.listeningAddress.ipv4?.port ?? 0
            let (h2, _) = try await RawHTTP2.connect(port: port)
            try await h2.startCall(stream: 1, [":path": "/test.Big/Get"])
            try await h2.sendData(stream: 1, grpcMessage([]), end: true)
            var received = 0
            var pings: UInt8 = 0
            var pingOut = false
            var status: String?
            while status == nil {
                let frame = try #require(try await h2.next { [0x0, 0x1, 0x6, 0x7].contains($0.type) },
                                         "connection ended after \(received) bytes and \(pings) pings")
                switch frame.type {
                case 0x7:
                    Issue.record("GOAWAY after \(received) bytes and \(pings) pings: \(String(decoding: frame.payload.dropFirst(8), as: UTF8.self))")
                    status = "GOAWAY"
                case 0x6:
                    if frame.flags & 0x1 != 0 { pingOut = false }
                case 0x1:
                    let headers = try h2.decode(frame)
                    if frame.flags & 0x1 != 0 { status = headers["grpc-status"] }
                default:
                    received += frame.payload.count
                    guard !frame.payload.isEmpty else { continue }
                    // Give the window back (stream and connection); like grpc-go's BDP
                    // estimator, ping at data received while no ping is unanswered.
                    let n = UInt32(frame.payload.count)
                    let increment = [UInt8(n >> 24 & 0x7F), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
                    var out = RawHTTP2.frame(type: 0x8, flags: 0, stream: 1, increment) + RawHTTP2.frame(type: 0x8, flags: 0, stream: 0, increment)
                    if !pingOut {
                        out += RawHTTP2.frame(type: 0x6, flags: 0, stream: 0, Array(repeating: pings, count: 8))
                        pingOut = true
                        pings &+= 1
                    }
                    try await h2.send(out)
                }
            }
            #expect(status == "0")
            #expect(received >= BigResponseService.size)
            #expect(pings > 3, "enough pings to have been a GOAWAY if they were strikes")
        } catch {
            serving.cancel()
            throw error
        }
        server.beginGracefulShutdown()
        try await serving.value
    }

    /// grpc-go clients send a ping (a BDP probe) after most DATA they receive, so a busy
    /// connection carries a ping per response, hundreds a second. Each follows a response,
    /// which forgives the strikes, and NIO's own control-frame limit is raised so that they do
    /// not count as a flood: the connection must stay up. (With NIO's default, 200 control
    /// frames in 30 s, such connections were closed with ENHANCE_YOUR_CALM every second or two:
    /// watch events were late by up to 100 ms while the client reconnected.)
    @Test func aPingAfterEveryResponseKeepsTheConnection() async throws {
        try await withClientPort { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            for i in 0..<400 {
                let stream = UInt32(2 * i + 1)
                try await h2.startCall(stream: stream)
                try await h2.sendData(stream: stream, grpcMessage([]), end: true)
                let trailers = try #require(
                    try await h2.next(type: 0x1) { $0.stream == stream && $0.flags & 0x1 != 0 },
                    "call \(i) not answered: the connection ended")
                _ = try h2.decode(trailers)
                let payload = (0..<8).map { UInt8(truncatingIfNeeded: i >> ($0 % 4)) }
                try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0, stream: 0, payload))
                let ack = try #require(try await h2.next(type: 0x6) { $0.flags & 0x1 != 0 }, "ping \(i) not answered")
                #expect(ack.payload == payload)
            }
        }
    }

    /// Calls the client cancels (RST_STREAM) do not end the connection at a rate a busy client
    /// reaches: NIO's default, 200 in 30 s, answered the 201st with ENHANCE_YOUR_CALM and
    /// closed the connection with every call on it; etcd keeps it.
    @Test func cancelledCallsKeepTheConnection() async throws {
        try await withClientPort { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            for i in 0..<300 {
                let stream = UInt32(2 * i + 1)
                try await h2.startCall(stream: stream)
                try await h2.send(RawHTTP2.frame(type: 0x3, flags: 0, stream: stream, [0, 0, 0, 8]))  // CANCEL
            }
            let stream = UInt32(601)
            try await h2.startCall(stream: stream)
            try await h2.sendData(stream: stream, grpcMessage([]), end: true)
            let trailers = try #require(
                try await h2.next(type: 0x1) { $0.stream == stream && $0.flags & 0x1 != 0 },
                "the connection ended after the cancelled calls")
            #expect(try h2.decode(trailers)["grpc-status"] == "0")
        }
    }

    /// The server pings a connection that has been quiet for the keepalive time; unanswered
    /// within the keepalive timeout, the connection is closed. An answered ping keeps it.
    @Test func unansweredKeepalivePingClosesTheConnection() async throws {
        try await withClientPort(configure: {
            // A generous timeout: under a loaded machine the test itself may take a while to answer.
            $0.keepaliveTime = .milliseconds(300)
            $0.keepaliveTimeout = .seconds(3)
        }) { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            let first = try #require(try await h2.next(type: 0x6) { $0.flags & 0x1 == 0 }, "no keepalive ping")
            try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0x1, stream: 0, first.payload))
            // Answered: the connection stays, and the next quiet spell brings another ping.
            _ = try #require(try await h2.next(type: 0x6) { $0.flags & 0x1 == 0 }, "no second keepalive ping")
            // This one goes unanswered.
            let (_, closed) = try await h2.client.readToEnd()
            #expect(closed, "an unanswered keepalive ping must close the connection")
        }
    }

    /// A request compressed with an encoding etcd cannot read gets grpc-go's UNIMPLEMENTED
    /// answer, and the connection goes on.
    @Test func compressedRequestIsUnimplemented() async throws {
        try await withClientPort { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            try await h2.startCall(stream: 1, ["grpc-encoding": "gzip"])
            try await h2.sendData(stream: 1, [1, 0, 0, 0, 0], end: true)
            let refused = try #require(try await h2.next(type: 0x1) { $0.stream == 1 }, "no answer")
            #expect(refused.flags & 0x1 != 0)
            let headers = try h2.decode(refused)
            #expect(headers["grpc-status"] == "12")
            #expect(headers["grpc-message"] == "grpc: Decompressor is not installed for grpc-encoding \"gzip\"")

            // identity is no compression: served.
            try await h2.startCall(stream: 3, ["grpc-encoding": "identity"])
            try await h2.sendData(stream: 3, grpcMessage([]), end: true)
            let served = try #require(try await h2.next(type: 0x1) { $0.stream == 3 && $0.flags & 0x1 != 0 })
            #expect(try h2.decode(served)["grpc-status"] == "0")
        }
    }

    /// Requests that are not gRPC calls are answered as grpc-swift answered them: a wrong
    /// content type with HTTP 415, a method other than POST or a missing scheme with
    /// INVALID_ARGUMENT, an unknown method with UNIMPLEMENTED; none ends the connection.
    @Test func malformedCallsAreRefused() async throws {
        try await withClientPort { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            try await h2.startCall(stream: 1, ["content-type": "text/plain"], end: true)
            let media = try #require(try await h2.next(type: 0x1) { $0.stream == 1 })
            #expect(try h2.decode(media)[":status"] == "415")

            try await h2.startCall(stream: 3, [":method": "PUT"], end: true)
            let method = try h2.decode(try #require(try await h2.next(type: 0x1) { $0.stream == 3 }))
            #expect(method["grpc-status"] == "3")
            #expect(method["grpc-message"] == ":method header is expected to be present and have a value of \"POST\".")

            try await h2.startCall(stream: 5, [":path": "/etcdserverpb.Nope/Missing"])
            try await h2.sendData(stream: 5, grpcMessage([]), end: true)
            let unknown = try h2.decode(try #require(try await h2.next(type: 0x1) { $0.stream == 5 && $0.flags & 0x1 != 0 }))
            #expect(unknown["grpc-status"] == "12")

            try await h2.startCall(stream: 7)
            try await h2.sendData(stream: 7, grpcMessage([]), end: true)
            let fine = try h2.decode(try #require(try await h2.next(type: 0x1) { $0.stream == 7 && $0.flags & 0x1 != 0 }))
            #expect(fine["grpc-status"] == "0")
        }
    }

    /// `grpc-timeout` reaches the server as metadata: `GRPCServer` cancels the call's handle at
    /// the deadline (as with grpc-swift's transport, the handler decides what to answer).
    @Test func grpcTimeoutCancelsTheCallAtItsDeadline() async throws {
        let transport = ClientPortTransport(configuration: .init(address: .tcp(host: "127.0.0.1", port: 0)))
        let server = GRPCServer(transport: transport, services: [DeadlineService()])
        let serving = Task { try await server.serve() }
        do {
            let port = try await transport.listeningAddress.ipv4?.port ?? 0
            let (h2, _) = try await RawHTTP2.connect(port: port)
            // The request never ends: only the deadline ends the call.
            try await h2.startCall(stream: 1, [":path": "/test.Deadline/Wait", "grpc-timeout": "200m"])
            let ended = try h2.decode(try #require(try await h2.next(type: 0x1) { $0.stream == 1 && $0.flags & 0x1 != 0 },
                                                   "no status at the deadline"))
            #expect(ended["grpc-status"] == "4")
            #expect(ended["grpc-message"] == "cancelled at the deadline")
        } catch {
            serving.cancel()
            throw error
        }
        server.beginGracefulShutdown()
        try await serving.value
    }

    /// Graceful stop with a call running and no new ones: the running call finishes, the
    /// second GOAWAY names it, and the connection then closes.
    @Test func gracefulStopLetsARunningCallFinish() async throws {
        try await withClientPortHarness { harness in
            let (h2, _) = try await RawHTTP2.connect(port: harness.port)
            try await h2.startCall(stream: 1)
            let stopping = Task { try await harness.stop() }
            _ = try #require(try await h2.next(type: 0x7), "no GOAWAY")
            let ping = try #require(try await h2.next(type: 0x6) { $0.flags & 0x1 == 0 }, "no PING after the GOAWAY")
            try await h2.send(RawHTTP2.frame(type: 0x6, flags: 0x1, stream: 0, ping.payload))
            let second = try #require(try await h2.next(type: 0x7), "no second GOAWAY")
            #expect(second.payload[0...3].reduce(0) { $0 << 8 | UInt32($1) } == 1)
            try await h2.sendData(stream: 1, grpcMessage([]), end: true)
            let done = try h2.decode(try #require(try await h2.next(type: 0x1) { $0.stream == 1 && $0.flags & 0x1 != 0 }))
            #expect(done["grpc-status"] == "0")
            #expect(try await h2.client.readToEnd().closed)
            try await stopping.value
        }
    }

    /// A gRPC connection without calls for the idle time is sent away (GOAWAY NO_ERROR) and closed.
    @Test func idleGRPCConnectionIsClosed() async throws {
        try await withClientPort(configure: { $0.maxConnectionIdle = .milliseconds(300) }) { port in
            let (h2, _) = try await RawHTTP2.connect(port: port)
            let goAway = try #require(try await h2.next(type: 0x7), "no GOAWAY on an idle connection")
            let code = goAway.payload[4...7].reduce(0) { $0 << 8 | UInt32($1) }
            #expect(code == 0)
        }
    }

    @Test func httpIdleAndReadTimeouts() async throws {
        var router = HTTPRouter()
        router.addVersionRoute()
        router.add("/slow") { _ in
            HTTPResponse(status: .ok, body: .stream { writer in
                try await writer.write(Array("first\n".utf8))
                try await Task.sleep(for: .milliseconds(800))
                try await writer.write(Array("second\n".utf8))
            })
        }
        try await withClientPort(configure: {
            $0.router = router
            $0.httpIdleTimeout = .milliseconds(300)
            $0.httpReadTimeout = .milliseconds(300)
        }) { port in
            // Idle after a response: closed.
            let idle = try await RawClient.connect(port: port)
            try await idle.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try await idle.readResponse().status == 200)
            #expect(try await idle.readToEnd().closed)

            // Headers that never end: closed, unanswered.
            let slowHead = try await RawClient.connect(port: port)
            try await slowHead.send("GET /version HTTP/1.1\r\nHost: x\r\n")
            let (bytes, closed) = try await slowHead.readToEnd()
            #expect(closed && bytes.isEmpty)

            // A body that stops short: closed.
            let slowBody = try await RawClient.connect(port: port)
            try await slowBody.send("POST /version HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            #expect(try await slowBody.readToEnd().closed)

            // A response that takes longer than the timeouts is not cut.
            let streamed = try await RawClient.connect(port: port)
            try await streamed.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try await streamed.readResponse().text == "first\nsecond\n")
        }
    }

    @Test func oversizeHTTPHeadersGet400() async throws {
        try await withClientPort(configure: { $0.httpMaxHeaderBytes = 8 * 1024 }) { port in
            let big = try await RawClient.connect(port: port)
            try await big.send("GET /version HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 16 * 1024))\r\n\r\n")
            // The server closes with our unread header bytes in its buffer: the end may come
            // as a reset rather than an orderly close.
            let (bytes, closed) = try await onOwnThread { () -> ([UInt8], Bool) in
                var all: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = recv(big.fd, &chunk, chunk.count, 0)
                    if n == 0 { return (all, true) }
                    if n < 0 { return (all, errno == ECONNRESET) }
                    all += chunk[0..<n]
                }
            }
            #expect(closed)
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 400"))

            let fine = try await RawClient.connect(port: port)
            try await fine.send("GET /version HTTP/1.1\r\nHost: x\r\nX-Fine: \(String(repeating: "a", count: 4 * 1024))\r\n\r\n")
            #expect(try await fine.readResponse().status == 200)
        }
    }

    @Test func connectionCap() async throws {
        try await withClientPort(configure: { $0.maxConnections = 2 }) { port in
            var held: [RawClient] = []
            for _ in 0..<2 {
                let c = try await RawClient.connect(port: port)
                try await c.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(try await c.readResponse().status == 200)
                held.append(c)
            }
            let refused = try await RawClient.connect(port: port)
            let (bytes, closed) = try await refused.readToEnd()
            #expect(closed && bytes.isEmpty, "over the cap: closed at once")

            held.removeAll()  // closing frees the slots (asynchronously)
            var served = false
            for _ in 0..<100 where !served {
                let c = try await RawClient.connect(port: port, timeoutSeconds: 2)
                try await c.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
                served = (try? await c.readResponse().status) == 200
                if !served { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(served, "a slot must come back once a connection closed")
        }
        let admission = ConnectionAdmission(limit: 1)
        #expect(admission.admit())
        #expect(!admission.admit())
        admission.release()
        #expect(admission.admit())
        #expect(admission.current == 1)
    }

    @Test func keepaliveFlagsMapLikeEtcd() {
        var c = ClientPortConfiguration(address: .tcp(host: "127.0.0.1", port: 0))
        c.keepaliveTime = .zero
        c.keepaliveMinClientPingInterval = .zero
        let k = ClientPortTransport.effectiveKeepalive(c)
        #expect(k.time == .seconds(7200) && k.timeout == .seconds(20) && k.minClientPingInterval == .seconds(300))
        c.keepaliveTime = .seconds(30)
        c.keepaliveTimeout = .seconds(3)
        c.keepaliveMinClientPingInterval = .seconds(1)
        let set = ClientPortTransport.effectiveKeepalive(c)
        #expect(set.time == .seconds(30) && set.timeout == .seconds(3) && set.minClientPingInterval == .seconds(1))
    }
}

/// Answers DEADLINE_EXCEEDED once gRPC cancels the call (its `grpc-timeout` passed).
private struct DeadlineService: RegistrableRPCService {
    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: MethodDescriptor(fullyQualifiedService: "test.Deadline", method: "Wait"),
            deserializer: RawBytesCodec(),
            serializer: RawBytesCodec()
        ) { (_: StreamingServerRequest<[UInt8]>, context: ServerContext) -> StreamingServerResponse<[UInt8]> in
            try await context.cancellation.cancelled
            throw RPCError(code: .deadlineExceeded, message: "cancelled at the deadline")
        }
    }
}

/// Answers one 1 MB message (many 64 KiB windows: many DATA frames and round trips).
private struct BigResponseService: RegistrableRPCService {
    static let size = 1_000_000

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: MethodDescriptor(fullyQualifiedService: "test.Big", method: "Get"),
            deserializer: RawBytesCodec(),
            serializer: RawBytesCodec()
        ) { (request: StreamingServerRequest<[UInt8]>, _: ServerContext) -> StreamingServerResponse<[UInt8]> in
            for try await _ in request.messages {}
            return StreamingServerResponse(single: ServerResponse(message: [UInt8](repeating: 7, count: Self.size)))
        }
    }
}
