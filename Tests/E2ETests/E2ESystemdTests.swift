import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A unix datagram socket standing in for systemd's NOTIFY_SOCKET; a thread collects what
/// arrives.
final class NotifySocketRecorder: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let received = Mutex<[String]>([])
    private let closing = Atomic<Bool>(false)
    private var thread: Thread?

    init() throws {
        path = "/tmp/swetcd-e2e-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw E2EError("socket(AF_UNIX) failed") }
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
        guard rc == 0 else { close(fd); throw E2EError("bind(\(path)) failed") }
        let t = Thread { [self] in readLoop() }
        thread = t
        t.start()
    }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !closing.load(ordering: .acquiring) {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) == 1 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 {
                let text = String(decoding: buffer[..<n], as: UTF8.self)
                received.withLock { $0.append(text) }
            }
        }
    }

    /// Every datagram so far, in arrival order.
    var messages: [String] { received.withLock { $0 } }

    /// Assignments (`KEY=value` lines) of every datagram so far.
    var assignments: [String] { messages.flatMap { $0.split(separator: "\n").map(String.init) } }

    func count(_ assignment: String) -> Int { assignments.filter { $0 == assignment }.count }

    /// Stops the reader thread (within about 100 ms) and removes the socket.
    func shutdown() {
        closing.store(true, ordering: .releasing)
    }

    deinit {
        close(fd)
        unlink(path)
    }
}

/// `swetcd` under a stand-in for systemd (`Type=notify` with `WatchdogSec=`).
@Suite("E2E systemd notify", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2ESystemdTests {
    /// A restart that replays a long WAL asks systemd for more start-up time
    /// (`EXTEND_TIMEOUT_USEC=`) while the replay moves, with a STATUS line saying what it
    /// does; READY=1 follows, and no extension after it.
    @Test(.enabled(if: E2E.benchPath != nil, "swetcd-bench not found"))
    func longReplayExtendsTheStartTimeout() async throws {
        let socket = try NotifySocketRecorder()
        defer { socket.shutdown() }
        // No snapshot: the restart reads every entry from the WAL.
        let m = try Member(extraArgs: ["--snapshot-count", "100000000", "--unsafe-no-fsync"])
        do {
            try await m.start()
            let entries = E2ESystemdTests.replayEntries
            let bench = try await E2E.runBench(["put", "--endpoints", m.endpoint, "--conns", "2", "--clients", "16",
                                                "--total", "\(entries)", "--key-space-size", "500",
                                                "--val-size", "\(E2ESystemdTests.replayValueSize)"])
            try #require(bench.status == 0, "\(bench.stdout)\(bench.stderr)")
            #expect(try await m.stop() == 0)

            m.environment = ["NOTIFY_SOCKET": socket.path]
            try await m.start()
            try await E2E.waitUntil("READY=1", limit: .seconds(60)) { socket.count("READY=1") == 1 }
            let order = socket.assignments
            let ready = try #require(order.firstIndex(of: "READY=1"))
            let extensions = order.indices.filter { order[$0].hasPrefix("EXTEND_TIMEOUT_USEC=") }
            #expect(!extensions.isEmpty, "no extension during the replay: \(socket.messages)")
            #expect(extensions.allSatisfy { $0 < ready }, "an extension after READY=1: \(socket.messages)")
            #expect(extensions.allSatisfy { order[$0] == "EXTEND_TIMEOUT_USEC=10000000" }, "\(socket.messages)")
            // Each extension comes with a status line naming the step and how far it got.
            let replaying = order.filter { $0.hasPrefix("STATUS=") && $0.contains(" entries") }
            #expect(replaying.contains { $0.hasPrefix("STATUS=replaying WAL: ") || $0.hasPrefix("STATUS=decoding WAL entries: ") },
                    "\(socket.messages)")
            // The restarted member serves what was written.
            let got = try await m.ctl("get", "", "--prefix", "--keys-only")
            #expect(got.status == 0 && got.lines.filter { !$0.isEmpty }.count == 500, "\(got.status) \(got.stderr)")
            print("replay of \(entries) entries: \(extensions.count) extensions; \(replaying.suffix(3))")
            #expect(try await m.stop() == 0)
            // Messages after READY=1: STATUS lines, STOPPING=1; never an extension.
            #expect(socket.assignments.suffix(from: ready).allSatisfy { !$0.hasPrefix("EXTEND_TIMEOUT_USEC=") })
        } catch {
            Issue.record("swetcd log tail: \((m.child?.stderr ?? "").suffix(2000)); notify: \(socket.messages.suffix(20))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    /// Entries written before the replay (SWETCD_E2E_REPLAY_ENTRIES): enough that reading them
    /// back takes well over the 250 ms between two looks at the progress counter.
    static let replayEntries = Int(ProcessInfo.processInfo.environment["SWETCD_E2E_REPLAY_ENTRIES"] ?? "") ?? 5000
    static let replayValueSize = 4096

    @Test func readyWatchdogAndStopping() async throws {
        let socket = try NotifySocketRecorder()
        defer { socket.shutdown() }
        let m = try Member()
        // A 600 ms watchdog: swetcd pings every 300 ms while its Raft loop runs.
        m.environment = ["NOTIFY_SOCKET": socket.path, "WATCHDOG_USEC": "600000"]
        do {
            try await m.start()
            try await E2E.waitUntil("READY=1", limit: .seconds(30)) { socket.count("READY=1") == 1 }
            // READY=1 means clients are served: a write (which needs a leader) succeeds now.
            let put = try await m.ctl("put", "k", "v")
            #expect(put.status == 0 && put.lines == ["OK"], "\(put)")
            let status = socket.assignments.filter { $0.hasPrefix("STATUS=") }
            #expect(status.contains { $0.contains("serving clients on http://127.0.0.1:\(m.clientPort)") && $0.contains("leader ") },
                    "\(status)")
            #expect(socket.count("STOPPING=1") == 0)

            // The watchdog keeps pinging.
            let before = socket.count("WATCHDOG=1")
            try await E2E.waitUntil("three more WATCHDOG=1", limit: .seconds(20)) {
                socket.count("WATCHDOG=1") >= before + 3
            }

            // SIGTERM: STOPPING=1, then a clean exit; READY=1 was sent once.
            let code = try await m.stop()
            #expect(code == 0)
            #expect(socket.count("STOPPING=1") == 1)
            #expect(socket.count("READY=1") == 1)
            let order = socket.assignments
            let ready = try #require(order.firstIndex(of: "READY=1"))
            let stopping = try #require(order.firstIndex(of: "STOPPING=1"))
            #expect(ready < stopping)
        } catch {
            Issue.record("swetcd log tail: \((m.child?.stderr ?? "").suffix(2000)); notify: \(socket.messages.suffix(20))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }
}
