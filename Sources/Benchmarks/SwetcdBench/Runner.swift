import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2

typealias Transport = HTTP2ClientTransport.Posix

/// M gRPC clients (one HTTP/2 connection each), spread round-robin over the endpoints.
/// `run` keeps their connections running while `body` uses them.
struct ConnectionPool {
    let clients: [GRPCClient<Transport>]

    init(endpoints: [Endpoint], count: Int) throws {
        // Server PINGs are answered before NIO's HTTP/2 handler sees them (see PingResponder).
        let config = Transport.Config.defaults { $0.channelDebuggingCallbacks.onCreateTCPConnection = PingResponder.install }
        clients = try (0..<count).map { i in
            let e = endpoints[i % endpoints.count]
            let transport: Transport
            if e.host.split(separator: ".").count == 4, e.host.allSatisfy({ $0.isNumber || $0 == "." }) {
                transport = try Transport(target: .ipv4(address: e.host, port: e.port), transportSecurity: .plaintext, config: config)
            } else if e.host.contains(":") {
                transport = try Transport(target: .ipv6(address: e.host, port: e.port), transportSecurity: .plaintext, config: config)
            } else {
                transport = try Transport(target: .dns(host: e.host, port: e.port), transportSecurity: .plaintext, config: config)
            }
            return GRPCClient(transport: transport)
        }
    }

    /// Client `i`'s connection.
    func client(_ i: Int) -> GRPCClient<Transport> { clients[i % clients.count] }

    func run<R: Sendable>(_ body: @Sendable (ConnectionPool) async throws -> R) async throws -> R {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for c in clients { group.addTask { try await c.runConnections() } }
            defer { for c in clients { c.beginGracefulShutdown() } }
            return try await body(self)
        }
    }
}

/// Monotonic nanoseconds.
@inline(__always)
func nowNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// What one client measured.
struct ClientResult: Sendable {
    var latencies: [UInt64] = []
    var errors = 0
    var firstError: String?
    /// Txn-put compare failures (the key was changed by another client).
    var conflicts = 0

    mutating func fail(_ error: any Error) {
        errors += 1
        if firstError == nil { firstError = "\(error)" }
    }
}

/// Runs `clients` concurrent loops; client `c` performs requests `c, c + clients, ...` below
/// `total`, timing each call of `request(n)` (which returns whether the compare held, for
/// txn-put; true otherwise). Returns the merged results and the elapsed wall time.
func runClosedLoop(
    clients: Int, total: Int, pool: ConnectionPool,
    request: @escaping @Sendable (_ client: Int, _ n: Int, _ grpc: GRPCClient<Transport>) async throws -> Bool
) async throws -> (ClientResult, Double) {
    let start = nowNanos()
    let results = try await withThrowingTaskGroup(of: ClientResult.self) { group in
        for c in 0..<min(clients, total) {
            let grpc = pool.client(c)
            group.addTask {
                var r = ClientResult()
                r.latencies.reserveCapacity(total / clients + 1)
                var n = c
                while n < total {
                    let t0 = nowNanos()
                    do {
                        if try await !request(c, n, grpc) { r.conflicts += 1 }
                        r.latencies.append(nowNanos() - t0)
                    } catch {
                        r.fail(error)
                    }
                    n += clients
                }
                return r
            }
        }
        var all = ClientResult()
        for try await r in group {
            all.latencies += r.latencies
            all.errors += r.errors
            all.conflicts += r.conflicts
            if all.firstError == nil { all.firstError = r.firstError }
        }
        return all
    }
    return (results, Double(nowNanos() - start) / 1e9)
}
