import EtcdProto
import Foundation
import GRPCCore
import Synchronization
import Testing
@testable import Server

/// A Watch service that answers each create request with `created` and then stays silent,
/// counting the streams clients open (a client whose connection was dropped opens another).
final class SilentWatch: Etcdserverpb_Watch.ServiceProtocol {
    private let streams = Mutex(0)
    private let createdSignal: AsyncStream<Void>.Continuation
    /// Yields once per create request answered.
    let created: AsyncStream<Void>

    init() {
        (created, createdSignal) = AsyncStream.makeStream()
    }

    var streamsOpened: Int { streams.withLock { $0 } }

    func watch(
        request: StreamingServerRequest<Etcdserverpb_WatchRequest>, context: ServerContext
    ) async throws -> StreamingServerResponse<Etcdserverpb_WatchResponse> {
        streams.withLock { $0 += 1 }
        return StreamingServerResponse { writer in
            for try await message in request.messages {
                guard case .createRequest? = message.requestUnion else { continue }
                var response = Etcdserverpb_WatchResponse()
                response.header.clusterID = FixedStatusService.clusterID
                response.header.memberID = FixedStatusService.memberID
                response.header.revision = 1
                response.created = true
                try await writer.write(response)
                self.createdSignal.yield()
            }
            return [:]
        }
    }
}

@Suite struct WatchKeepaliveTests {
    /// Seconds the watch is left idle: SWETCD_WATCH_IDLE_SECONDS (default 0, CI). With
    /// grpc-swift's default policy etcdctl's 10 s pings get an idle watch dropped in about
    /// 30 s; run with 40 to check the client port's etcd-like policy keeps it.
    static let idleSeconds = Int(ProcessInfo.processInfo.environment["SWETCD_WATCH_IDLE_SECONDS"] ?? "") ?? 0

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/etcdctl")))
    func etcdctlWatchStreamThroughTheClientPort() async throws {
        let watch = SilentWatch()
        let transport = ClientPortTransport(configuration: .init(address: .tcp(host: "127.0.0.1", port: 0)))
        let server = GRPCServer(transport: transport, services: [watch])
        let serving = Task { try await server.serve() }
        defer { serving.cancel() }
        let port = try #require(try await transport.listeningAddress.ipv4?.port)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/etcdctl")
        process.arguments = ["--endpoints", "127.0.0.1:\(port)", "watch", "foo"]
        process.environment = ProcessInfo.processInfo.environment.merging(["ETCDCTL_API": "3"]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
        }

        // Wait (bounded) for the server to have answered etcdctl's create request.
        let answered = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                var iterator = watch.created.makeAsyncIterator()
                return await iterator.next() != nil
            }
            group.addTask {
                try await Task.sleep(for: .seconds(20))
                return false
            }
            let first = try await group.next() ?? false
            group.cancelAll()
            return first
        }
        #expect(answered, "etcdctl's watch never reached the server")
        #expect(watch.streamsOpened == 1)

        if Self.idleSeconds > 0 {
            try await Task.sleep(for: .seconds(Self.idleSeconds))
            #expect(process.isRunning)
            #expect(watch.streamsOpened == 1, "etcdctl opened another stream: the connection was dropped")
        }
        server.beginGracefulShutdown()
    }
}
