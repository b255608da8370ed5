import Foundation
import LMDBBackend
import Storage
import Synchronization
import Testing
@testable import Server
#if canImport(Glibc)
import Glibc
#endif

/// A unix datagram socket standing in for systemd's notification socket.
final class FakeNotifySocket {
    let path: String
    let fd: Int32

    init() throws {
        path = "/tmp/swetcd-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(fd >= 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        try #require(rc == 0)
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// The next datagram, waiting at most `timeoutMs`; nil if none arrived.
    func receive(timeoutMs: Int32 = 5000) -> String? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeoutMs) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n >= 0 else { return nil }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }
}

/// These tests change NOTIFY_SOCKET / WATCHDOG_* in this process, so they run one at a time and
/// restore the environment.
@Suite(.serialized) struct SystemdNotifierTests {
    private func withEnvironment<T>(_ values: [String: String?], _ body: () async throws -> T) async rethrows -> T {
        let saved = values.keys.map { ($0, getenv($0).map { String(cString: $0) }) }
        for (key, value) in values {
            if let value { setenv(key, value, 1) } else { unsetenv(key) }
        }
        defer {
            for (key, value) in saved {
                if let value { setenv(key, value, 1) } else { unsetenv(key) }
            }
        }
        return try await body()
    }

    @Test func sendsEachMessageToTheNotifySocket() async throws {
        let socket = try FakeNotifySocket()
        await withEnvironment(["NOTIFY_SOCKET": socket.path]) {
            let notifier = SystemdNotifier()
            #expect(notifier.isEnabled)
            #expect(notifier.ready(status: "serving"))
            #expect(socket.receive() == "READY=1\nSTATUS=serving")
            #expect(notifier.status("applied 5\nentries"))
            #expect(socket.receive() == "STATUS=applied 5 entries")
            #expect(notifier.watchdog())
            #expect(socket.receive() == "WATCHDOG=1")
            #expect(notifier.extendTimeout(by: .milliseconds(1500)))
            #expect(socket.receive() == "EXTEND_TIMEOUT_USEC=1500000")
            #expect(notifier.stopping())
            #expect(socket.receive() == "STOPPING=1")
        }
    }

    /// The start timeout is extended only while the progress counter moves: a start that stops
    /// making progress sends nothing more, so systemd's timeout still ends it.
    @Test func startExtenderSendsOnlyWhileProgressMoves() {
        let progress = StartupProgress()
        let sent = Mutex<[[String]]>([])
        progress.begin("replaying WAL", unit: "entries")
        var extender = SystemdStartExtender(extendBy: .seconds(10), progress: { progress.count },
                                            status: { progress.description },
                                            send: { a in sent.withLock { $0.append(a) } })
        // The counter's value at creation is the baseline.
        var moved = extender.check()
        #expect(!moved)
        progress.advance(by: 3)
        moved = extender.check()
        #expect(moved)
        #expect(sent.withLock { $0 } == [["EXTEND_TIMEOUT_USEC=10000000", "STATUS=replaying WAL: 3 entries"]])
        // Stuck: no message however often it looks.
        for _ in 0..<5 {
            moved = extender.check()
            #expect(!moved)
        }
        #expect(sent.withLock { $0.count } == 1)
        progress.begin("opening the backend")
        moved = extender.check()
        #expect(moved)
        #expect(sent.withLock { $0.last } == ["EXTEND_TIMEOUT_USEC=10000000", "STATUS=opening the backend"])
        moved = extender.check()
        #expect(!moved)
    }

    /// The session's extender reaches the real socket while the counter moves, and stops once
    /// the start is over.
    @Test func sessionExtendsStartWhileProgressMoves() async throws {
        let socket = try FakeNotifySocket()
        await withEnvironment(["NOTIFY_SOCKET": socket.path, "WATCHDOG_USEC": nil]) {
            let session = SystemdSession(extendCheckInterval: .milliseconds(10), extendBy: .milliseconds(1500))
            session.progress.begin("replaying WAL", unit: "entries")
            session.starting(dataDir: "/d")
            #expect(socket.receive() == "STATUS=recovering data in /d")
            // One move (a single add): one message.
            session.progress.advance(by: 42)
            #expect(socket.receive() == "EXTEND_TIMEOUT_USEC=1500000\nSTATUS=replaying WAL: 42 entries")
            // No move: nothing within 30 check intervals.
            #expect(socket.receive(timeoutMs: 300) == nil)
            session.progress.advance()
            #expect(socket.receive() == "EXTEND_TIMEOUT_USEC=1500000\nSTATUS=replaying WAL: 43 entries")
            session.finish()
            // Finished: a later move sends nothing.
            session.progress.advance()
            #expect(socket.receive(timeoutMs: 300) == nil)
        }
    }

    @Test func noOpWithoutNotifySocket() async throws {
        let socket = try FakeNotifySocket()
        await withEnvironment(["NOTIFY_SOCKET": nil]) {
            let notifier = SystemdNotifier()
            #expect(!notifier.isEnabled)
            #expect(!notifier.ready())
            #expect(!notifier.watchdog())
        }
        #expect(socket.receive(timeoutMs: 50) == nil)
    }

    @Test func watchdogIntervalFromEnvironment() async {
        await withEnvironment(["WATCHDOG_USEC": "3000000", "WATCHDOG_PID": String(getpid())]) {
            #expect(SystemdNotifier().watchdogInterval == .seconds(3))
        }
        await withEnvironment(["WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"]) {
            // Meant for another process.
            #expect(SystemdNotifier().watchdogInterval == nil)
        }
        await withEnvironment(["WATCHDOG_USEC": nil, "WATCHDOG_PID": nil]) {
            #expect(SystemdNotifier().watchdogInterval == nil)
        }
    }
}
