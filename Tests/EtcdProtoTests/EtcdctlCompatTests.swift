import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization
import Testing

/// The generated service code, served by grpc-swift-2 over plaintext HTTP/2, talking
/// to the real Debian `etcdctl` (3.4). The services here are a tiny stand-in (a map
/// and fixed status numbers), only enough to show that etcdctl accepts our wire form.
@Suite("etcdctl against the generated services", .enabled(if: Etcdctl.path != nil, "etcdctl is not installed"))
struct EtcdctlCompatTests {
    static let clusterID: UInt64 = 14_841_639_068_965_178_418
    static let memberID: UInt64 = 10_276_657_743_932_975_437

    /// Serves `services` on 127.0.0.1 (a free port) with the keepalive policy etcd
    /// uses, runs `body` with the endpoint, then shuts the server down.
    static func serving(
        _ services: [any RegistrableRPCService], _ body: (_ endpoint: String) async throws -> Void
    ) async throws {
        let transport = HTTP2ServerTransport.Posix(
            address: .ipv4(host: "127.0.0.1", port: 0),
            transportSecurity: .plaintext,
            config: .defaults { config in
                // etcdctl pings every 10 s; allow it as etcd does (--grpc-keepalive-min-time 5 s).
                config.connection.keepalive.clientBehavior = .init(
                    minPingIntervalWithoutCalls: .seconds(5), allowWithoutCalls: false)
            }
        )
        try await withGRPCServer(transport: transport, services: services) { server in
            let address = try await server.transport.listeningAddress
            try await body("127.0.0.1:\(try #require(address.ipv4?.port))")
        }
    }

    @Test("put, get -w json and endpoint status -w json")
    func putGetStatus() async throws {
        let kv = TinyKV(clusterID: Self.clusterID, memberID: Self.memberID)
        let maintenance = TinyMaintenance(clusterID: Self.clusterID, memberID: Self.memberID)
        try await Self.serving([kv, maintenance]) { endpoint in
            // put
            let put = try await Etcdctl.run(["put", "foo", "bar"], endpoint: endpoint)
            #expect(put.status == 0, "etcdctl put failed: \(put.stderr)")
            #expect(put.stdout == "OK\n")

            // get -w json: etcdctl prints the RangeResponse with Go's JSON encoder
            // (numbers as numbers, bytes as base64).
            let get = try await Etcdctl.run(["get", "foo", "-w", "json"], endpoint: endpoint)
            #expect(get.status == 0, "etcdctl get failed: \(get.stderr)")
            #expect(get.stdout.contains("\"cluster_id\":\(Self.clusterID)"))
            #expect(get.stdout.contains("\"member_id\":\(Self.memberID)"))
            let range = try #require(
                try JSONSerialization.jsonObject(with: Data(get.stdout.utf8)) as? [String: Any])
            let header = try #require(range["header"] as? [String: Any])
            #expect(header["revision"] as? Int == 2)
            #expect(header["raft_term"] as? Int == 3)
            #expect(range["count"] as? Int == 1)
            let kvs = try #require(range["kvs"] as? [[String: Any]])
            #expect(kvs.count == 1)
            #expect(kvs.first?["key"] as? String == "Zm9v")  // "foo"
            #expect(kvs.first?["value"] as? String == "YmFy")  // "bar"
            #expect(kvs.first?["create_revision"] as? Int == 2)
            #expect(kvs.first?["version"] as? Int == 1)

            // The plain form prints key and value lines.
            let plain = try await Etcdctl.run(["get", "foo"], endpoint: endpoint)
            #expect(plain.stdout == "foo\nbar\n")

            // A missing key: a successful empty answer.
            let missing = try await Etcdctl.run(["get", "nope"], endpoint: endpoint)
            #expect(missing.status == 0)
            #expect(missing.stdout.isEmpty)

            // endpoint status -w json
            let status = try await Etcdctl.run(["endpoint", "status", "-w", "json"], endpoint: endpoint)
            #expect(status.status == 0, "etcdctl endpoint status failed: \(status.stderr)")
            let list = try #require(
                try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [[String: Any]])
            let entry = try #require(list.first)
            #expect(entry["Endpoint"] as? String == endpoint)
            let body = try #require(entry["Status"] as? [String: Any])
            #expect(body["version"] as? String == "3.5.0")
            #expect(body["dbSize"] as? Int == 24576)
            #expect(body["dbSizeInUse"] as? Int == 16384)
            #expect(body["raftIndex"] as? Int == 7)
            #expect(body["raftTerm"] as? Int == 3)
            #expect(body["raftAppliedIndex"] as? Int == 7)
            #expect(status.stdout.contains("\"leader\":\(Self.memberID)"))
            #expect(!status.stdout.contains("storageVersion"), "3.4 does not know the 3.6 fields")

            // etcd's error text with its gRPC code comes through as etcdctl's error.
            let empty = try await Etcdctl.run(["put", "", "bar"], endpoint: endpoint)
            #expect(empty.status == 1)
            #expect(empty.stderr.contains("code = InvalidArgument desc = etcdserver: key is not provided"))
            #expect(empty.stderr.hasSuffix("Error: etcdserver: key is not provided\n"))

            // An RPC the stand-in does not implement: etcdctl reports the gRPC status.
            let delete = try await Etcdctl.run(["del", "foo"], endpoint: endpoint)
            #expect(delete.status != 0)
            #expect(delete.stderr.contains("Unimplemented"))

            // What etcdctl sends with each call.
            let seen = kv.metadataSeen()
            let agent = seen.first { $0.key == "user-agent" }?.value ?? ""
            #expect(agent.hasPrefix("grpc-go/"), "user-agent was \(agent)")
            #expect(seen.contains { $0.key == "client-api-version" && $0.value == "3.4" })
            // --command-timeout=5s arrives as a gRPC deadline (microseconds, a little under 5 s).
            #expect(seen.contains { $0.key == "grpc-timeout" && $0.value.hasSuffix("u") })
            #expect(seen.contains { $0.key == ":authority" && $0.value == endpoint })
            #expect(!seen.contains { $0.key == "token" }, "no token without auth")
        }
    }
}

extension EtcdctlCompatTests {
    /// Seconds `etcdctl watch` is left idle: SWETCD_WATCH_IDLE_SECONDS (default 0). The
    /// issue observed grpc-swift's default keepalive policy dropping an idle etcdctl
    /// watch after about 30 s; run with 40 to check the policy below keeps it.
    static let idleSeconds = Int(ProcessInfo.processInfo.environment["SWETCD_WATCH_IDLE_SECONDS"] ?? "") ?? 0

    @Test("watch: a bidirectional stream etcdctl keeps open, with the hasleader metadata")
    func watch() async throws {
        let watch = TinyWatch(clusterID: Self.clusterID, memberID: Self.memberID)
        try await Self.serving([watch]) { endpoint in
            let etcdctl = try RunningEtcdctl(["watch", "foo"], endpoint: endpoint)
            defer { etcdctl.stop() }

            // The server answers the create request and sends one event; etcdctl prints
            // the event type, key and value.
            let printed = try await etcdctl.waitForOutput(containing: "PUT\nfoo\nbar\n", within: .seconds(20))
            #expect(printed, "etcdctl printed: \(etcdctl.output())")
            let creates = watch.createRequests()
            #expect(creates.count == 1)
            #expect(creates.first?.key == Data("foo".utf8))
            #expect(creates.first?.rangeEnd.isEmpty == true)
            // etcdctl's watch requires a leader (clientv3.WithRequireLeader).
            #expect(watch.metadataSeen().contains { $0.key == "hasleader" && $0.value == "true" })

            if Self.idleSeconds > 0 {
                // Idle far beyond etcdctl's 10 s ping interval; the stream must survive,
                // i.e. etcdctl never had to open a second one.
                try await Task.sleep(for: .seconds(Self.idleSeconds))
                #expect(etcdctl.isRunning)
                #expect(watch.streamsOpened() == 1, "etcdctl reconnected: the connection was dropped")
            }
        }
    }
}

extension EtcdctlCompatTests {
    /// `etcdctl snapshot save` writes the streamed blobs to a file and accepts the
    /// result only if its length is 32 more than a multiple of 512 (a SHA-256 trailer
    /// after a page-aligned database). It checks the length only; `snapshot restore`
    /// checks the hash.
    @Test("snapshot save: accepted with a 32-byte trailer after 512-byte pages, refused without", arguments: [true, false])
    func snapshotSave(withTrailer: Bool) async throws {
        var body = Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        if withTrailer {
            body.append(Data(repeating: 0x5a, count: 32))  // stands in for the SHA-256
        }
        var maintenance = TinyMaintenance(clusterID: Self.clusterID, memberID: Self.memberID)
        maintenance.snapshotBytes = body
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("swetcd-snapshot-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("snap.db")

        try await Self.serving([maintenance]) { endpoint in
            let save = try await Etcdctl.run(["snapshot", "save", file.path], endpoint: endpoint)
            if withTrailer {
                #expect(save.status == 0, "etcdctl snapshot save failed: \(save.stderr)")
                #expect(save.stdout.contains("Snapshot saved at \(file.path)"))
                #expect(try Data(contentsOf: file) == body)
            } else {
                #expect(save.status != 0)
                #expect(save.stderr.contains("sha256 checksum not found [bytes: 4096]"), "stderr: \(save.stderr)")
                #expect(!FileManager.default.fileExists(atPath: file.path))
            }
        }
    }
}

// MARK: - A tiny test-only KV, Watch and Maintenance

/// The header every stand-in response carries (raft term 3).
func testHeader(cluster: UInt64, member: UInt64, revision: Int64) -> Etcdserverpb_ResponseHeader {
    var header = Etcdserverpb_ResponseHeader()
    header.clusterID = cluster
    header.memberID = member
    header.revision = revision
    header.raftTerm = 3
    return header
}

/// Request metadata as (key, text) pairs.
func pairs(_ metadata: Metadata) -> [(key: String, value: String)] {
    metadata.map { (key: $0.key, value: $0.value.description) }
}

/// Range and Put over an in-memory map; every other KV call is unimplemented.
final class TinyKV: Etcdserverpb_KV.SimpleServiceProtocol {
    struct State {
        var revision: Int64 = 1
        var records: [Data: Mvccpb_KeyValue] = [:]
        var metadata: [(key: String, value: String)] = []
    }
    let clusterID: UInt64
    let memberID: UInt64
    let state = Mutex(State())

    init(clusterID: UInt64, memberID: UInt64) {
        self.clusterID = clusterID
        self.memberID = memberID
    }

    func metadataSeen() -> [(key: String, value: String)] {
        state.withLock { $0.metadata }
    }

    private func header(revision: Int64) -> Etcdserverpb_ResponseHeader {
        testHeader(cluster: clusterID, member: memberID, revision: revision)
    }

    private func record(_ metadata: Metadata) {
        let seen = pairs(metadata)
        state.withLock { $0.metadata.append(contentsOf: seen) }
    }

    // The metadata-aware forms, to see what etcdctl sends.
    func put(
        request: ServerRequest<Etcdserverpb_PutRequest>, context: ServerContext
    ) async throws -> ServerResponse<Etcdserverpb_PutResponse> {
        record(request.metadata)
        return ServerResponse(message: try await put(request: request.message, context: context))
    }

    func range(
        request: ServerRequest<Etcdserverpb_RangeRequest>, context: ServerContext
    ) async throws -> ServerResponse<Etcdserverpb_RangeResponse> {
        record(request.metadata)
        return ServerResponse(message: try await range(request: request.message, context: context))
    }

    func put(request: Etcdserverpb_PutRequest, context: ServerContext) async throws -> Etcdserverpb_PutResponse {
        guard !request.key.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "etcdserver: key is not provided")
        }
        let revision = state.withLock { state in
            state.revision += 1
            var kv = state.records[request.key] ?? Mvccpb_KeyValue()
            if kv.version == 0 { kv.createRevision = state.revision }
            kv.key = request.key
            kv.value = request.value
            kv.modRevision = state.revision
            kv.version += 1
            kv.lease = request.lease
            state.records[request.key] = kv
            return state.revision
        }
        var response = Etcdserverpb_PutResponse()
        response.header = header(revision: revision)
        return response
    }

    func range(request: Etcdserverpb_RangeRequest, context: ServerContext) async throws -> Etcdserverpb_RangeResponse {
        let (revision, found) = state.withLock { ($0.revision, $0.records[request.key]) }
        var response = Etcdserverpb_RangeResponse()
        response.header = header(revision: revision)
        if let found, request.rangeEnd.isEmpty {
            response.kvs = [found]
            response.count = 1
        }
        return response
    }

    func deleteRange(request: Etcdserverpb_DeleteRangeRequest, context: ServerContext) async throws
        -> Etcdserverpb_DeleteRangeResponse
    { throw RPCError(code: .unimplemented, message: "not in this test") }

    func txn(request: Etcdserverpb_TxnRequest, context: ServerContext) async throws -> Etcdserverpb_TxnResponse {
        throw RPCError(code: .unimplemented, message: "not in this test")
    }

    func compact(request: Etcdserverpb_CompactionRequest, context: ServerContext) async throws
        -> Etcdserverpb_CompactionResponse
    { throw RPCError(code: .unimplemented, message: "not in this test") }
}

/// Status with fixed numbers and a canned snapshot stream; every other Maintenance
/// call is unimplemented.
struct TinyMaintenance: Etcdserverpb_Maintenance.SimpleServiceProtocol {
    let clusterID: UInt64
    let memberID: UInt64
    var snapshotBytes = Data()

    func status(request: Etcdserverpb_StatusRequest, context: ServerContext) async throws
        -> Etcdserverpb_StatusResponse
    {
        var response = Etcdserverpb_StatusResponse()
        response.header = testHeader(cluster: clusterID, member: memberID, revision: 2)
        response.version = "3.5.0"
        response.dbSize = 24576
        response.dbSizeInUse = 16384
        response.leader = memberID
        response.raftIndex = 7
        response.raftTerm = 3
        response.raftAppliedIndex = 7
        // 3.6 fields, unknown to etcdctl 3.4: it must skip them.
        response.storageVersion = "3.6.0"
        response.dbSizeQuota = 2 << 30
        response.downgradeInfo.enabled = true
        response.downgradeInfo.targetVersion = "3.5.0"
        return response
    }

    func alarm(request: Etcdserverpb_AlarmRequest, context: ServerContext) async throws -> Etcdserverpb_AlarmResponse {
        throw RPCError(code: .unimplemented, message: "not in this test")
    }

    func defragment(request: Etcdserverpb_DefragmentRequest, context: ServerContext) async throws
        -> Etcdserverpb_DefragmentResponse
    { throw RPCError(code: .unimplemented, message: "not in this test") }

    func hash(request: Etcdserverpb_HashRequest, context: ServerContext) async throws -> Etcdserverpb_HashResponse {
        throw RPCError(code: .unimplemented, message: "not in this test")
    }

    func hashKV(request: Etcdserverpb_HashKVRequest, context: ServerContext) async throws -> Etcdserverpb_HashKVResponse {
        throw RPCError(code: .unimplemented, message: "not in this test")
    }

    /// Streams `snapshotBytes` in 1000-byte chunks, counting `remaining_bytes` down.
    func snapshot(
        request: Etcdserverpb_SnapshotRequest,
        response: RPCWriter<Etcdserverpb_SnapshotResponse>,
        context: ServerContext
    ) async throws {
        var offset = 0
        while offset < snapshotBytes.count {
            let end = min(offset + 1000, snapshotBytes.count)
            var chunk = Etcdserverpb_SnapshotResponse()
            chunk.header = testHeader(cluster: clusterID, member: memberID, revision: 2)
            chunk.remainingBytes = UInt64(snapshotBytes.count - end)
            chunk.blob = Data(snapshotBytes[offset..<end])
            try await response.write(chunk)
            offset = end
        }
    }

    func moveLeader(request: Etcdserverpb_MoveLeaderRequest, context: ServerContext) async throws
        -> Etcdserverpb_MoveLeaderResponse
    { throw RPCError(code: .unimplemented, message: "not in this test") }

    func downgrade(request: Etcdserverpb_DowngradeRequest, context: ServerContext) async throws
        -> Etcdserverpb_DowngradeResponse
    { throw RPCError(code: .unimplemented, message: "not in this test") }
}

/// Answers each create request with `created` and one PUT event for the watched key
/// (value "bar" at revision 2); keeps the stream open until the client ends it.
final class TinyWatch: Etcdserverpb_Watch.ServiceProtocol {
    struct State {
        var streams = 0
        var creates: [Etcdserverpb_WatchCreateRequest] = []
        var metadata: [(key: String, value: String)] = []
    }
    let clusterID: UInt64
    let memberID: UInt64
    let state = Mutex(State())

    init(clusterID: UInt64, memberID: UInt64) {
        self.clusterID = clusterID
        self.memberID = memberID
    }

    func streamsOpened() -> Int { state.withLock { $0.streams } }
    func createRequests() -> [Etcdserverpb_WatchCreateRequest] { state.withLock { $0.creates } }
    func metadataSeen() -> [(key: String, value: String)] { state.withLock { $0.metadata } }

    func watch(
        request: StreamingServerRequest<Etcdserverpb_WatchRequest>, context: ServerContext
    ) async throws -> StreamingServerResponse<Etcdserverpb_WatchResponse> {
        let seen = pairs(request.metadata)
        state.withLock {
            $0.streams += 1
            $0.metadata.append(contentsOf: seen)
        }
        return StreamingServerResponse { writer in
            var nextID: Int64 = 0
            for try await message in request.messages {
                guard case .createRequest(let create)? = message.requestUnion else { continue }
                self.state.withLock { $0.creates.append(create) }
                var created = Etcdserverpb_WatchResponse()
                created.header = self.header()
                created.watchID = nextID
                created.created = true
                try await writer.write(created)

                var event = Mvccpb_Event()
                event.type = .put
                event.kv.key = create.key
                event.kv.value = Data("bar".utf8)
                event.kv.createRevision = 2
                event.kv.modRevision = 2
                event.kv.version = 1
                var update = Etcdserverpb_WatchResponse()
                update.header = self.header()
                update.watchID = nextID
                update.events = [event]
                try await writer.write(update)
                nextID += 1
            }
            return [:]
        }
    }

    private func header() -> Etcdserverpb_ResponseHeader {
        testHeader(cluster: clusterID, member: memberID, revision: 2)
    }
}

// MARK: - Running etcdctl

enum Etcdctl {
    static let path: String? = ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    struct Output: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// An etcdctl process (API v3, a clean environment) for one endpoint, not started.
    static func makeProcess(_ arguments: [String], endpoint: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(path))
        process.arguments = ["--endpoints=\(endpoint)", "--dial-timeout=5s"] + arguments
        process.environment = [
            "ETCDCTL_API": "3",
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            "HOME": NSTemporaryDirectory(),
        ]
        return process
    }

    /// Runs etcdctl (API v3) against one endpoint. etcdctl bounds each command with
    /// --command-timeout; the process is also killed if it outlives `limit`.
    static func run(_ arguments: [String], endpoint: String, limit: Duration = .seconds(30)) async throws
        -> Output
    {
        let process = try makeProcess(["--command-timeout=5s"] + arguments, endpoint: endpoint)
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice

        let box = ProcessBox(process)
        let status: Int32 = try await withThrowingTaskGroup(of: Int32?.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    box.process.terminationHandler = { finished in
                        continuation.resume(returning: finished.terminationStatus)
                    }
                    do {
                        try box.process.run()
                    } catch {
                        box.process.terminationHandler = nil
                        continuation.resume(returning: -1)
                    }
                }
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            let first = try await group.next() ?? nil
            if first == nil {
                box.process.terminate()  // the limit passed first
            }
            group.cancelAll()
            return first ?? -2
        }
        let out = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let err = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return Output(status: status, stdout: out, stderr: err)
    }
}

/// A long-running etcdctl (e.g. `watch`) whose output is collected as it arrives.
final class RunningEtcdctl: Sendable {
    private final class Buffer: Sendable {
        let data = Mutex(Data())
    }
    private let process: ProcessBox
    private let buffer = Buffer()

    init(_ arguments: [String], endpoint: String) throws {
        let process = try Etcdctl.makeProcess(arguments, endpoint: endpoint)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        self.process = ProcessBox(process)
        let buffer = self.buffer
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let chunk = handle.availableData
            if chunk.isEmpty {
                handle.readabilityHandler = nil
            } else {
                buffer.data.withLock { $0.append(chunk) }
            }
        }
        try process.run()
    }

    var isRunning: Bool { process.process.isRunning }

    func output() -> String {
        buffer.data.withLock { String(decoding: $0, as: UTF8.self) }
    }

    /// Polls the collected output (every 50 ms) until it contains `text` or `limit` passes.
    func waitForOutput(containing text: String, within limit: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if output().contains(text) { return true }
            if !isRunning { return output().contains(text) }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Ends etcdctl and waits for it to exit.
    func stop() {
        guard process.process.isRunning else { return }
        process.process.terminate()
        process.process.waitUntilExit()
    }
}

/// Process is not Sendable; it is only touched by one task at a time here.
final class ProcessBox: @unchecked Sendable {
    let process: Process
    init(_ process: Process) { self.process = process }
}
