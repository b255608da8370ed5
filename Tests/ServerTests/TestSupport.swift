import Foundation
import GRPCCore
import Server
#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client with receive/send timeouts, for talking raw bytes to the client port.
final class RawClient: @unchecked Sendable {
    let fd: Int32
    /// Bytes received but not yet consumed (a read may return several pipelined responses).
    fileprivate var pending: [UInt8] = []

    init(port: Int, timeoutSeconds: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RawClientError.socket }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // Each send goes out at once (as gRPC clients do): without it a request split over
        // two sends waits for the server's delayed ACK of the first, 40 ms a time.
        var noDelay: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else {
            close(fd)
            throw RawClientError.connect
        }
    }

    deinit { close(fd) }

    func sendBlocking(_ text: String) throws {
        try sendBlocking(Array(text.utf8))
    }

    func sendBlocking(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw RawClientError.send }
            offset += n
        }
    }

    /// Reads until the peer closes (or the timeout); returns what arrived and whether EOF was seen.
    func readToEndBlocking() -> (bytes: [UInt8], closed: Bool) {
        var out: [UInt8] = pending
        pending = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { return (out, true) }
            // A peer that closes with bytes of ours still unread (say, pings it never got to)
            // resets the connection instead of a FIN: closed all the same.
            if n < 0 { return (out, errno == ECONNRESET) }
            out.append(contentsOf: buffer[..<n])
        }
    }

    /// Reads one HTTP/1.1 response with a content-length body or a chunked body.
    func readResponseBlocking() throws -> RawResponse {
        var data: [UInt8] = pending
        pending = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        func more() throws {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { throw RawClientError.eof(String(decoding: data, as: UTF8.self)) }
            data.append(contentsOf: buffer[..<n])
        }
        let separator = Array("\r\n\r\n".utf8)
        var headEnd = data.firstRange(of: separator)?.upperBound
        while headEnd == nil {
            try more()
            headEnd = data.firstRange(of: separator)?.upperBound
        }
        let head = String(decoding: data[..<headEnd!], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        let statusLine = lines.removeFirst()
        let status = Int(statusLine.split(separator: " ")[1]) ?? 0
        var headers: [String: String] = [:]
        for line in lines {
            if let colon = line.firstIndex(of: ":") {
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        var rest = Array(data[headEnd!...])
        var body: [UInt8] = []
        if let length = headers["content-length"].flatMap({ Int($0) }) {
            while rest.count < length {
                try more()
                rest = Array(data[headEnd!...])
            }
            body = Array(rest[..<length])
            pending = Array(rest[length...])
        } else if headers["transfer-encoding"] == "chunked" {
            var cursor = headEnd!
            while true {
                var lineEnd: Int?
                while lineEnd == nil {
                    lineEnd = data[cursor...].firstRange(of: Array("\r\n".utf8))?.lowerBound
                    if lineEnd == nil { try more() }
                }
                let size = Int(String(decoding: data[cursor..<lineEnd!], as: UTF8.self), radix: 16) ?? 0
                let start = lineEnd! + 2
                while data.count < start + size + 2 { try more() }
                if size == 0 {
                    pending = Array(data[(start + 2)...])
                    break
                }
                body.append(contentsOf: data[start..<(start + size)])
                cursor = start + size + 2
            }
        }
        return RawResponse(status: status, headers: headers, body: body)
    }
}

struct RawResponse {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
}

enum RawClientError: Error {
    case socket, connect, send
    case eof(String)
}

/// Raw bytes in and out: lets a test serve a gRPC method without generated code.
struct RawBytesCodec: MessageSerializer, MessageDeserializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes {
        Bytes(message)
    }

    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> [UInt8] {
        serializedMessageBytes.withUnsafeBytes { Array($0) }
    }
}

/// A minimal protobuf writer for building etcd messages by hand in tests.
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func uint(_ field: Int, _ value: UInt64) {
        varint(UInt64(field << 3))
        varint(value)
    }

    mutating func bytesField(_ field: Int, _ value: [UInt8]) {
        varint(UInt64(field << 3 | 2))
        varint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }
}

/// A test-only `etcdserverpb.Maintenance/Status` answering fixed values.
struct FixedStatusService: RegistrableRPCService {
    static let clusterID: UInt64 = 0x1234_5678_9ABC
    static let memberID: UInt64 = 0x8E9E_05C5_2164_694D
    static let version = "3.5.17"

    static var responseBytes: [UInt8] {
        var header = ProtoWriter()
        header.uint(1, clusterID)
        header.uint(2, memberID)
        header.uint(3, 42)  // revision
        header.uint(4, 7)  // raft term
        var status = ProtoWriter()
        status.bytesField(1, header.bytes)
        status.bytesField(2, Array(version.utf8))
        status.uint(3, 20480)  // db size
        status.uint(4, memberID)  // leader
        status.uint(5, 99)  // raft index
        status.uint(6, 7)  // raft term
        status.uint(7, 99)  // raft applied index
        status.uint(9, 16384)  // db size in use
        return status.bytes
    }

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: MethodDescriptor(fullyQualifiedService: "etcdserverpb.Maintenance", method: "Status"),
            deserializer: RawBytesCodec(),
            serializer: RawBytesCodec()
        ) { request, _ in
            for try await _ in request.messages {}
            return StreamingServerResponse(single: ServerResponse(message: Self.responseBytes))
        }
    }
}

/// A running test server.
struct ClientPortHarness: Sendable {
    /// The bound TCP port (0 for a Unix-domain socket).
    let port: Int
    fileprivate let server: GRPCServer<ClientPortTransport>
    fileprivate let serving: Task<Void, any Error>

    /// Begins a graceful shutdown and waits (at most 10 s) until the server has stopped.
    func stop() async throws {
        server.beginGracefulShutdown()
        let serving = self.serving
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await serving.value
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                return false
            }
            let stopped = try await group.next() ?? false
            group.cancelAll()
            if !stopped {
                serving.cancel()
                throw HarnessError.gracefulShutdownTimedOut
            }
        }
    }
}

enum HarnessError: Error {
    case gracefulShutdownTimedOut
}

/// Runs `body` with a started `GRPCServer` on a ClientPortTransport bound to 127.0.0.1:0
/// (unless `configure` changes the address), then shuts it down gracefully; the test fails if
/// that takes more than 10 s.
func withClientPortHarness<T: Sendable>(
    configure: (inout ClientPortConfiguration) -> Void = { _ in },
    _ body: @Sendable (ClientPortHarness) async throws -> T
) async throws -> T {
    var configuration = ClientPortConfiguration(address: .tcp(host: "127.0.0.1", port: 0))
    configure(&configuration)
    let transport = ClientPortTransport(configuration: configuration)
    let server = GRPCServer(transport: transport, services: [FixedStatusService()])
    let serving = Task { try await server.serve() }
    let harness: ClientPortHarness
    do {
        let address = try await transport.listeningAddress
        harness = ClientPortHarness(port: address.ipv4?.port ?? 0, server: server, serving: serving)
    } catch {
        serving.cancel()
        throw error
    }
    let result: T
    do {
        result = try await body(harness)
    } catch {
        serving.cancel()
        throw error
    }
    try await harness.stop()
    return result
}

/// ``withClientPortHarness`` for bodies that only need the port.
func withClientPort<T: Sendable>(
    configure: (inout ClientPortConfiguration) -> Void = { _ in },
    _ body: @Sendable (_ port: Int) async throws -> T
) async throws -> T {
    try await withClientPortHarness(configure: configure) { harness in
        try await body(harness.port)
    }
}

/// Runs a program with a deadline; returns its exit status and standard output.
func runBlocking(_ executable: String, _ arguments: [String], timeoutSeconds: Double = 20) throws -> (status: Int32, output: String, error: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment["ETCDCTL_API"] = "3"
    process.environment = environment
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let done = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in done.signal() }
    try process.run()
    if done.wait(timeout: .now() + timeoutSeconds) == .timedOut {
        process.terminate()
        done.wait()
    }
    let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let error = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return (process.terminationStatus, output, error)
}

/// Runs blocking work on a new thread and awaits its result.
func onOwnThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            continuation.resume(with: Result { try work() })
        }
        thread.start()
    }
}

// Blocking socket I/O and process waits run on their own threads: blocking the few
// cooperative-pool threads would starve the route handlers and gRPC handlers under test.
extension RawClient {
    static func connect(port: Int, timeoutSeconds: Int = 10) async throws -> RawClient {
        try await onOwnThread { try RawClient(port: port, timeoutSeconds: timeoutSeconds) }
    }

    func send(_ text: String) async throws {
        try await onOwnThread { try self.sendBlocking(text) }
    }

    func send(_ bytes: [UInt8]) async throws {
        try await onOwnThread { try self.sendBlocking(bytes) }
    }

    func readResponse() async throws -> RawResponse {
        try await onOwnThread { try self.readResponseBlocking() }
    }

    /// Reads until at least `count` bytes arrived in total (or EOF/timeout); returns them.
    func read(atLeast count: Int) async throws -> [UInt8] {
        try await onOwnThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while self.pending.count < count {
                let n = recv(self.fd, &buffer, buffer.count, 0)
                if n <= 0 { break }
                self.pending.append(contentsOf: buffer[..<n])
            }
            defer { self.pending = [] }
            return self.pending
        }
    }

    func readToEnd() async throws -> (bytes: [UInt8], closed: Bool) {
        try await onOwnThread { self.readToEndBlocking() }
    }
}

func run(_ executable: String, _ arguments: [String], timeoutSeconds: Double = 20) async throws -> (status: Int32, output: String, error: String) {
    try await onOwnThread { try runBlocking(executable, arguments, timeoutSeconds: timeoutSeconds) }
}
