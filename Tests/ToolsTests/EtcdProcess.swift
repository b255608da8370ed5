import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A real Debian `etcd` 3.4 on free loopback ports in a temporary directory, killed on `stop()`.
final class EtcdProcess: @unchecked Sendable {
    let dir = TempDir("etcd")
    let process = Process()
    let clientPort: Int
    var endpoint: String { "127.0.0.1:\(clientPort)" }

    /// A free loopback TCP port (bound to port 0, then released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp in
                bind(fd, sp, len) == 0 && getsockname(fd, sp, &len) == 0
            }
        }
        try #require(ok)
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Starts etcd and waits (at most `timeout`) for its "ready to serve client requests" log line.
    init(executable: String, timeout: Duration = .seconds(30)) async throws {
        clientPort = try Self.freePort()
        let peerPort = try Self.freePort()
        let client = "http://127.0.0.1:\(clientPort)", peer = "http://127.0.0.1:\(peerPort)"
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [
            "--name", "bench", "--data-dir", dir.sub("data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "bench=\(peer)", "--initial-cluster-token", "swetcd-bench-test",
        ]
        let log = Pipe()
        process.standardError = log
        process.standardOutput = FileHandle.nullDevice
        let (lines, cont) = AsyncStream<String>.makeStream()
        log.fileHandleForReading.readabilityHandler = { h in
            let data = h.availableData
            if data.isEmpty { h.readabilityHandler = nil; cont.finish(); return }
            cont.yield(String(decoding: data, as: UTF8.self))
        }
        process.terminationHandler = { _ in cont.finish() }
        try process.run()
        let watchdog = Task { try await Task.sleep(for: timeout); cont.finish() }
        defer { watchdog.cancel() }
        var seen = ""
        for await chunk in lines {
            seen += chunk
            if seen.contains("ready to serve client requests") { return }
        }
        stop()
        Issue.record("etcd did not become ready within \(timeout); log tail: \(seen.suffix(2000))")
        throw CancellationError()
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}
