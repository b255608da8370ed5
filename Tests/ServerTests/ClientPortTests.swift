import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOHTTP1
import Testing
@testable import Server

private let etcdctlPath = "/usr/bin/etcdctl"

@Suite struct ClientPortTests {
    @Test func etcdctlEndpointStatusAndHTTPOnTheSamePort() async throws {
        try await withClientPort { port in
            let endpoint = "127.0.0.1:\(port)"
            if FileManager.default.isExecutableFile(atPath: etcdctlPath) {
                let result = try await run(etcdctlPath, ["--endpoints", endpoint, "--dial-timeout", "5s", "endpoint", "status", "-w", "json"])
                #expect(result.status == 0, "etcdctl failed: \(result.error)")
                let parsed = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [[String: Any]]
                let status = try #require(parsed?.first?["Status"] as? [String: Any])
                #expect(status["version"] as? String == FixedStatusService.version)
                #expect((status["leader"] as? NSNumber)?.uint64Value == FixedStatusService.memberID)
                let header = try #require(status["header"] as? [String: Any])
                #expect((header["cluster_id"] as? NSNumber)?.uint64Value == FixedStatusService.clusterID)
                #expect((header["revision"] as? NSNumber)?.intValue == 42)
            }

            let client = try await RawClient.connect(port: port)
            try await client.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            let response = try await client.readResponse()
            #expect(response.status == 200)
            #expect(response.headers["content-type"] == "application/json")
            let version = try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: String]
            #expect(version == ["etcdserver": EtcdVersion.server, "etcdcluster": EtcdVersion.cluster])
        }
    }

    @Test func curlGetsVersion() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/curl") else { return }
        try await withClientPort { port in
            let result = try await run("/usr/bin/curl", ["-s", "-m", "10", "http://127.0.0.1:\(port)/version"])
            #expect(result.status == 0)
            #expect(result.output == #"{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}"#)
        }
    }

    @Test func keepAliveConnectionServesSeveralRequestsIncludingPipelined() async throws {
        try await withClientPort { port in
            let client = try await RawClient.connect(port: port)
            try await client.send("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            let notFound = try await client.readResponse()
            #expect(notFound.status == 404)
            try await client.send("POST /version HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            let notAllowed = try await client.readResponse()
            #expect(notAllowed.status == 405)
            #expect(notAllowed.headers["allow"] == "GET")
            let ok = try await client.readResponse()
            #expect(ok.status == 200)
            try await client.send("GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            let last = try await client.readResponse()
            #expect(last.status == 200)
            #expect(try await client.readToEnd().closed)
        }
    }

    @Test func garbageClosesThatConnectionOnly() async throws {
        try await withClientPort { port in
            let bad = try await RawClient.connect(port: port)
            try await bad.send([0x16, 0x03, 0x01, 0x00, 0xFF, 0x00, 0x0D, 0x0A] + Array(repeating: 0xEE, count: 64) + Array("\r\n\r\n".utf8))
            let (bytes, closed) = try await bad.readToEnd()
            #expect(closed)
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 400"))

            let almostPreface = try await RawClient.connect(port: port)
            try await almostPreface.send("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
            #expect(try await almostPreface.readToEnd().closed)

            let good = try await RawClient.connect(port: port)
            try await good.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try await good.readResponse().status == 200)
        }
    }

    @Test func silentConnectionIsClosedAfterTheDetectionTimeout() async throws {
        try await withClientPort(configure: { $0.protocolDetectionTimeout = .milliseconds(200) }) { port in
            let silent = try await RawClient.connect(port: port, timeoutSeconds: 10)
            #expect(try await silent.readToEnd().closed)
        }
    }

    @Test func oversizeBodyGets413() async throws {
        try await withClientPort(configure: { $0.maxHTTPBodyBytes = 16 }) { port in
            let client = try await RawClient.connect(port: port)
            try await client.send("POST /version HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n" + String(repeating: "a", count: 17))
            let response = try await client.readResponse()
            #expect(response.status == 413)
            #expect(try await client.readToEnd().closed)

            let chunked = try await RawClient.connect(port: port)
            try await chunked.send("POST /version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n")
            #expect(try await chunked.readResponse().status == 413)
        }
    }

    @Test func customRoutesStreamingAndRequestBodies() async throws {
        var router = HTTPRouter()
        router.addVersionRoute(clusterVersion: { "not_decided" })
        router.add("/echo", methods: [.POST]) { request in
            var response = HTTPResponse.text(.ok, String(buffer: request.body))
            response.headers.add(name: "x-query", value: request.queryValues("a").joined(separator: ","))
            return response
        }
        router.addPrefix("/v3/") { request in
            HTTPResponse(status: .ok, body: .stream { writer in
                for i in 0..<3 {
                    try await writer.write(Array("part\(i) \(request.path)\n".utf8))
                }
            })
        }
        try await withClientPort(configure: { $0.router = router }) { port in
            let client = try await RawClient.connect(port: port)
            try await client.send("POST /echo?a=1&b=2&a=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            let echo = try await client.readResponse()
            #expect(echo.text == "hello")
            #expect(echo.headers["x-query"] == "1,3")

            try await client.send("POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            let streamed = try await client.readResponse()
            #expect(streamed.headers["transfer-encoding"] == "chunked")
            #expect(streamed.text == "part0 /v3/watch\npart1 /v3/watch\npart2 /v3/watch\n")

            try await client.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try await client.readResponse().text == #"{"etcdserver":"3.5.17","etcdcluster":"not_decided"}"#)
        }
    }

    @Test func expectContinueAndHead() async throws {
        var router = HTTPRouter()
        router.addVersionRoute()
        router.add("/echo", methods: [.POST]) { request in .text(.ok, String(buffer: request.body)) }
        try await withClientPort(configure: { $0.router = router; $0.maxHTTPBodyBytes = 64 }) { port in
            let client = try await RawClient.connect(port: port)
            try await client.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            let interim = String(decoding: try await client.read(atLeast: 25), as: UTF8.self)
            #expect(interim == "HTTP/1.1 100 Continue\r\n\r\n")
            try await client.send("hello")
            let echoed = try await client.readResponse()
            #expect(echoed.status == 200)
            #expect(echoed.text == "hello")

            // Too large: refused before the body is sent.
            try await client.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\nExpect: 100-continue\r\n\r\n")
            #expect(try await client.readResponse().status == 413)
            #expect(try await client.readToEnd().closed)

            let head = try await RawClient.connect(port: port)
            try await head.send("HEAD /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            let (bytes, closed) = try await head.readToEnd()
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(closed)
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(text.lowercased().contains("content-length: 45\r\n"))
            #expect(text.hasSuffix("\r\n\r\n"), "no body after the headers: \(text)")
        }
    }

    @Test func routerUnitBehaviour() async {
        var router = HTTPRouter()
        router.add("/health") { _ in .json(.ok, #"{"health":"true"}"#) }
        router.addPrefix("/v3/") { _ in .text(.ok, "short") }
        router.addPrefix("/v3/kv/") { _ in .text(.ok, "long") }
        func body(_ response: HTTPResponse) -> String {
            if case .bytes(let buffer) = response.body { return String(buffer: buffer) }
            return "<stream>"
        }
        #expect(await router.respond(to: HTTPRequest(method: .GET, uri: "/health?serializable=true")).status == .ok)
        #expect(await body(router.respond(to: HTTPRequest(method: .POST, uri: "/v3/kv/range"))) == "long")
        #expect(await body(router.respond(to: HTTPRequest(method: .POST, uri: "/v3/lease/grant"))) == "short")
        #expect(await router.respond(to: HTTPRequest(method: .GET, uri: "/v3")).status == .notFound)
        #expect(await router.respond(to: HTTPRequest(method: .DELETE, uri: "/health")).status == .methodNotAllowed)
        let request = HTTPRequest(method: .GET, uri: "/health?serializable=true&exclude=NOSPACE&flag")
        #expect(request.path == "/health")
        #expect(request.queryValues("exclude") == ["NOSPACE"])
        #expect(request.queryValues("flag") == [""])
    }
}

@Suite struct ClientPortLifecycleTests {
    @Test func gracefulStopEndsAStreamedResponse() async throws {
        var router = HTTPRouter()
        router.add("/stream") { _ in
            HTTPResponse(status: .ok, body: .stream { writer in
                try await writer.write(Array("first\n".utf8))
                // A watch-like stream that only ends when cancelled.
                try await Task.sleep(for: .seconds(3600))
            })
        }
        try await withClientPortHarness(configure: { $0.router = router }) { harness in
            let client = try await RawClient.connect(port: harness.port)
            try await client.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            let start = String(decoding: try await client.read(atLeast: 1), as: UTF8.self)
            #expect(start.hasPrefix("HTTP/1.1 200 OK"))
            #expect(start.contains("transfer-encoding: chunked"))
            try await harness.stop()
            #expect(try await client.readToEnd().closed)
        }
    }

    @Test func unixDomainSocket() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/curl") else { return }
        let path = "/tmp/swetcd-client-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(path) }
        try await withClientPort(configure: { $0.address = .unix(path: path) }) { _ in
            let result = try await run("/usr/bin/curl", ["-s", "-m", "10", "--unix-socket", path, "http://localhost/version"])
            #expect(result.status == 0)
            #expect(result.output.contains(#""etcdcluster":"3.5.0""#))
        }
    }
}

@Suite struct ClientPortBindTests {
    @Test func bindingAPortInUseFails() async throws {
        try await withClientPort { port in
            let second = ClientPortTransport(configuration: .init(address: .tcp(host: "127.0.0.1", port: port)))
            let server = GRPCServer(transport: second, services: [FixedStatusService()])
            await #expect(throws: (any Error).self) { try await server.serve() }
            await #expect(throws: ClientPortError.notListening) { _ = try await second.listeningAddress }
        }
    }
}

@Suite struct ClientPortGRPCLimitTests {
    @Test func requestsOverTheReceiveLimitAreRefused() async throws {
        try await withClientPort(configure: { $0.maxReceiveMessageBytes = 1024 }) { port in
            let transport = try HTTP2ClientTransport.Posix(
                target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
            let results: [Result<[UInt8], RPCError>] = try await withGRPCClient(transport: transport) { client in
                var results: [Result<[UInt8], RPCError>] = []
                // At the limit, one over, then again under: the connection keeps serving.
                for size in [1024, 1025, 0] {
                    do {
                        let reply = try await client.unary(
                            request: ClientRequest(message: [UInt8](repeating: 0, count: size)),
                            descriptor: MethodDescriptor(fullyQualifiedService: "etcdserverpb.Maintenance", method: "Status"),
                            serializer: RawBytesCodec(),
                            deserializer: RawBytesCodec(),
                            options: .defaults
                        ) { try $0.message }
                        results.append(.success(reply))
                    } catch let error as RPCError {
                        results.append(.failure(error))
                    }
                }
                return results
            }
            #expect(results.count == 3)
            #expect(try results[0].get() == FixedStatusService.responseBytes)
            // As etcd (grpc-go): a status, ResourceExhausted with grpc-go's text, not a reset.
            let refused = #expect(throws: RPCError.self) { try results[1].get() }
            #expect(refused?.code == .resourceExhausted)
            #expect(refused?.message == "grpc: received message larger than max (1025 vs. 1024)")
            #expect(try results[2].get() == FixedStatusService.responseBytes)
        }
    }
}

@Suite struct ClientPortHTTP2Tests {
    /// gRPC's server keepalive (pings after `keepaliveTime` without reads) must run on sniffed
    /// connections too: a raw HTTP/2 client that stays silent receives a PING frame.
    @Test func serverPingsAnIdleConnection() async throws {
        try await withClientPort(configure: { $0.keepaliveTime = .milliseconds(200) }) { port in
            let client = try await RawClient.connect(port: port)
            let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
            let emptySettings: [UInt8] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0]
            try await client.send(preface + emptySettings)
            var sawPing = false
            var buffered: [UInt8] = []
            // Frames: 3-byte length, type, flags, 4-byte stream id, payload. Bounded by the
            // client's 10 s receive timeout.
            while !sawPing {
                let more = try await client.read(atLeast: 1)
                if more.isEmpty { break }
                buffered += more
                while buffered.count >= 9 {
                    let length = Int(buffered[0]) << 16 | Int(buffered[1]) << 8 | Int(buffered[2])
                    guard buffered.count >= 9 + length else { break }
                    if buffered[3] == 0x6, buffered[4] & 0x1 == 0 { sawPing = true }
                    buffered.removeFirst(9 + length)
                }
            }
            #expect(sawPing, "no PING from the server on an idle HTTP/2 connection")
        }
    }
}
