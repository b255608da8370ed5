import Testing
import GRPCNIOTransportHTTP2
import GRPCCore
import EtcdConfig
import EtcdProto
import Foundation
import Logging
@testable import Server

/// An in-process single-member server on a temporary data directory.
struct CoreFixture {
    let dataDir: String
    let args: [String]

    init(extraArgs: [String] = []) {
        dataDir = NSTemporaryDirectory() + "swetcd-core-\(UUID().uuidString.prefix(8))"
        args = ["--name", "n1", "--data-dir", dataDir,
                "--initial-cluster", "n1=http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--listen-peer-urls", "http://127.0.0.1:0",
                "--heartbeat-interval", "20", "--election-timeout", "200"] + extraArgs
    }

    func loaded() throws -> LoadedConfig {
        guard case .run(let l) = try ConfigLoader.load(arguments: args, environment: [:]) else {
            throw ServerStartError("unexpected config outcome")
        }
        return l
    }

    func start() async throws -> EtcdServer {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        return try await EtcdServer.start(try loaded(), logger: logger)
    }

    func remove() { try? FileManager.default.removeItem(atPath: dataDir) }
}

func putRequest(_ key: String, _ value: String, lease: Int64 = 0) -> Etcdserverpb_PutRequest {
    var p = Etcdserverpb_PutRequest()
    p.key = Data(key.utf8)
    p.value = Data(value.utf8)
    p.lease = lease
    return p
}

func rangeRequest(_ key: String, end: String = "", revision: Int64 = 0, serializable: Bool = false) -> Etcdserverpb_RangeRequest {
    var r = Etcdserverpb_RangeRequest()
    r.key = Data(key.utf8)
    r.rangeEnd = Data(end.utf8)
    r.revision = revision
    r.serializable = serializable
    return r
}

/// A started in-process member serving its client port (`ClientListener`) on a free loopback
/// port, and a plaintext gRPC client on it: `body` gets the member, the listener, the client and
/// the port (for other protocols on it).
func withServingMember<T: Sendable>(
    _ body: (EtcdServer, ClientListener, GRPCClient<HTTP2ClientTransport.Posix>, Int) async throws -> T
) async throws -> T {
    let f = CoreFixture(extraArgs: ["--listen-client-urls", "http://127.0.0.1:0",
                                    "--advertise-client-urls", "http://127.0.0.1:2379"])
    defer { f.remove() }
    var logger = Logger(label: "serving-member")
    logger.logLevel = .critical
    let s = try await f.start()
    let listener = try ClientListener(server: s, logger: logger)
    let serving = Task { try await listener.serve() }
    defer { serving.cancel() }
    // Port 0: the listener reports the port it bound once it listens.
    let address = try #require(try await listener.boundAddresses().first)
    let port = try #require(address.split(separator: ":").last.flatMap { Int($0) })
    let transport = try HTTP2ClientTransport.Posix(
        target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
    return try await withGRPCClient(transport: transport) { client in try await body(s, listener, client, port) }
}
