import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a client can make a member hold: a watch client that stops reading pins a bounded
/// amount of memory and nothing once it leaves; heavy Maintenance calls leave health checks
/// and lease keep-alives answering; snapshot streams write no file and are limited in number.
/// Figures printed here are recorded in docs/BENCHMARKS.md.
@Suite("E2E resource bounds", .serialized, .enabled(if: E2E.available && E2E.benchPath != nil, "swetcd, swetcd-bench or etcdctl not found"))
struct E2EResourceBoundsTests {
    /// Megabytes written while the watchers stall (1 MiB values).
    static let stallMiB = Int(ProcessInfo.processInfo.environment["SWETCD_E2E_STALL_MIB"] ?? "") ?? 100

    @Test func stalledWatchClientsPinBoundedMemory() async throws {
        try await Member.with { m in
            let pid = try #require(m.child?.process.processIdentifier)
            // Phase A, the reference: the same writes with no watcher (the Raft log and the
            // backend's batch take their share of memory in both phases).
            try await Self.bench(m, ["put", "--total", "20", "--val-size", "1048576", "--key-prefix", "warm/", "--key-space-size", "20", "--sequential-keys"])
            let (baseA, peakA) = try await Self.peakRSS(pid) {
                try await Self.bench(m, ["put", "--clients", "4", "--total", "\(Self.stallMiB)", "--val-size", "1048576",
                                         "--key-prefix", "other/", "--key-space-size", "\(Self.stallMiB)", "--sequential-keys"])
            }

            // Phase B: a gRPC watch client (etcdctl writing to a pipe nobody reads) and a
            // /v3/watch client (a socket nobody reads) on the keys written next.
            let grpcWatcher = try StalledProcess(try #require(E2E.etcdctlPath), [
                "--endpoints=\(m.endpoint)", "watch", "--prefix", "big/",
            ])
            let body = #"{"create_request":{"key":"YmlnLw==","range_end":"YmlnMA=="}}"#
            let http = try RawConnection(port: m.clientPort, receiveBuffer: 4096)
            defer { http.close() }
            try http.send("POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            try await E2E.waitUntil("two watchers") { try await Self.metric(m, "etcd_debugging_mvcc_watcher_total") == 2 }

            let (baseB, peakB) = try await Self.peakRSS(pid) {
                try await Self.bench(m, ["put", "--clients", "4", "--total", "\(Self.stallMiB)", "--val-size", "1048576",
                                         "--key-prefix", "big/", "--key-space-size", "\(Self.stallMiB)", "--sequential-keys"])
            }
            let slow = (try? await Self.metric(m, "etcd_debugging_mvcc_slow_watcher_total")) ?? -1
            // Both streams are still open (a dropped client would trivially pin nothing).
            #expect(try await Self.metric(m, "etcd_debugging_mvcc_watcher_total") == 2)
            let growthA = peakA - baseA
            let growthB = peakB - baseB
            print("stalled watchers: \(Self.stallMiB) MiB written; anonymous RSS growth without watchers \(growthA / 1024) MiB, with two stalled watchers \(growthB / 1024) MiB (peak \(peakB / 1024) MiB); slow watchers \(slow)")
            // Documented bound (docs/MVCC.md): a stalled stream pins about 4 MiB of MVCC buffer,
            // one parked response per watcher, two outstanding responses and the HTTP/2
            // window. Two streams: well under 64 MiB more than the same writes unwatched.
            #expect(growthB - growthA < 64 * 1024, "RSS growth \(growthB) KiB with stalled watchers vs \(growthA) KiB without")
            #expect(slow >= 1, "a stalled watcher should be parked (slow)")

            // The gRPC watcher reads again: it gets every event, once.
            let seen = try await grpcWatcher.countOccurrences(of: Array("PUT\nbig/".utf8), until: Self.stallMiB)
            #expect(seen == Self.stallMiB)

            // Both clients leave: every watcher is gone.
            grpcWatcher.kill()
            http.close()
            try await E2E.waitUntil("no watchers", limit: .seconds(20)) {
                try await Self.metric(m, "etcd_debugging_mvcc_watcher_total") == 0
            }
            let after = try Self.rssAnonKiB(pid)
            print("after the watch clients left: anonymous RSS \(after / 1024) MiB")
        }
    }

    /// Four HashKV calls at once on a loaded store run on the heavy-work threads: /health
    /// and lease keep-alives keep answering meanwhile. Latencies are recorded, and only
    /// bounded generously: each probe answers faster than one HashKV alone takes.
    @Test func concurrentHashKVLeavesHealthAndKeepAliveAnswering() async throws {
        try await Member.with { m in
            let keys = Int(ProcessInfo.processInfo.environment["SWETCD_E2E_HASH_KEYS"] ?? "") ?? 60000
            try await Self.bench(m, ["put", "--clients", "16", "--conns", "2", "--total", "\(keys)", "--val-size", "2048",
                                     "--key-space-size", "\(keys)", "--sequential-keys", "--key-prefix", "h/"])
            let grant = try await m.ctl("lease", "grant", "600")
            let lease = try #require(grant.stdout.split(separator: " ").dropFirst().first.map(String.init), "\(grant.stderr)")
            let clock = ContinuousClock()
            // One HashKV alone, for reference.
            let single = try await clock.measure {
                let out = try await m.ctl("endpoint", "hashkv")
                try #require(out.status == 0, "\(out.stderr)")
            }
            let done = Mutex(false)
            let started = clock.now
            let hashing = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<4 {
                        group.addTask {
                            for _ in 0..<3 {
                                let out = try await etcdctl(m.endpoint, ["endpoint", "hashkv"], limit: 120)
                                try #require(out.status == 0, "\(out.stderr)")
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                done.withLock { $0 = true }
            }
            var health: [Duration] = []
            var keepAlive: [Duration] = []
            while !done.withLock({ $0 }) {
                var ok = false
                health.append(try await clock.measure {
                    let out = try await Self.run("/usr/bin/curl", ["-s", "--max-time", "30", "http://\(m.endpoint)/health"])
                    ok = out.stdout.contains("\"health\":\"true\"")
                })
                #expect(ok, "/health during HashKV")
                keepAlive.append(try await clock.measure {
                    let out = try await m.ctl("lease", "keep-alive", "--once", lease)
                    ok = out.status == 0 && out.stdout.contains("keepalived with TTL(")
                })
                #expect(ok, "keep-alive during HashKV")
            }
            try await hashing.value
            let total = clock.now - started
            let ms = { (d: Duration) in Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000) }
            print("HashKV on \(keys) keys: one alone \(ms(single)) ms; 12 in 4 parallel loops \(ms(total)) ms; during them \(health.count) /health probes (max \(ms(health.max() ?? .zero)) ms) and \(keepAlive.count) keep-alives (max \(ms(keepAlive.max() ?? .zero)) ms, etcdctl start-up included)")
            #expect(health.count >= 2)
            #expect((health.max() ?? .zero) < max(single, .milliseconds(500)), "health answered in \(health.max() ?? .zero)")
            #expect((keepAlive.max() ?? .zero) < max(single, .milliseconds(500)) + .milliseconds(500), "keep-alive in \(keepAlive.max() ?? .zero)")
        }
    }

    /// Maintenance.Snapshot streams from LMDB without a temporary file: `etcdctl snapshot
    /// save` (which checks the SHA-256 trailer) succeeds, `swetcdutl snapshot status` reads
    /// the result, the data directory holds no extra file while slow streams are open, and
    /// a fifth concurrent stream is refused until one ends.
    @Test func snapshotStreamsLeaveNoFileAndAreLimited() async throws {
        try await Member.with { m in
            try await Self.bench(m, ["put", "--clients", "8", "--total", "3000", "--val-size", "8192",
                                     "--key-space-size", "3000", "--sequential-keys", "--key-prefix", "s/"])
            let snapDir = m.dataDir + "/member/snap"
            let before = try FileManager.default.contentsOfDirectory(atPath: snapDir).sorted()
            let file = m.dataDir + "-saved.db"
            defer { try? FileManager.default.removeItem(atPath: file) }
            let saved = try await m.ctl("snapshot", "save", file)
            #expect(saved.status == 0, "\(saved.stderr)")
            let status = try await Self.run(try E2EDefragSnapshotTests.swetcdutl(), ["snapshot", "status", file, "-w", "json"])
            #expect(status.status == 0, "\(status.stderr)")
            #expect(status.stdout.contains("\"totalKey\""), "\(status.stdout)")

            // Four slow readers (/v3/maintenance/snapshot on sockets nobody reads).
            var slow: [RawConnection] = []
            defer { for c in slow { c.close() } }
            for i in 0..<4 {
                let c = try RawConnection(port: m.clientPort, receiveBuffer: 4096)
                try c.send("POST /v3/maintenance/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                slow.append(c)
                // Its stream holds a slot once its first chunk arrives (read a little of it; the
                // rest stays unread). Without this wait, etcdctl below could take a slot first
                // and one of these four be refused instead.
                let start = c.receive(untilAnyOf: ["\"blob\"", "\"error\""], timeout: .seconds(60))
                try #require(start?.contains("\"blob\"") == true, "slow reader \(i) got no snapshot chunk: \(start ?? "nothing")")
            }
            var refusal = ""
            try await E2E.waitUntil("a fifth snapshot refused", limit: .seconds(30)) {
                let out = try await m.ctl("snapshot", "save", file + ".5")
                refusal = out.stderr
                return out.status != 0
            }
            #expect(refusal.contains("too many snapshot requests"), "\(refusal)")
            // Each stream's file is unlinked once it is built (the open descriptor serves it).
            try await E2E.waitUntil("no snapshot file left in member/snap", limit: .seconds(30)) {
                try FileManager.default.contentsOfDirectory(atPath: snapDir).sorted() == before
            }
            // The slow readers leave: snapshots are served again.
            for c in slow { c.close() }
            slow = []
            try await E2E.waitUntil("a snapshot after the slow readers left", limit: .seconds(30)) {
                try await m.ctl("snapshot", "save", file + ".6").status == 0
            }
            try? FileManager.default.removeItem(atPath: file + ".6")
            try? FileManager.default.removeItem(atPath: file + ".5")
            #expect(try FileManager.default.contentsOfDirectory(atPath: snapDir).sorted() == before)
        }
    }

    // MARK: helpers

    /// Runs `body` while sampling the process's anonymous RSS; returns (before, peak) in KiB.
    static func peakRSS(_ pid: Int32, _ body: () async throws -> Void) async throws -> (Int, Int) {
        let before = try rssAnonKiB(pid)
        let sampler = Task.detached { () -> Int in
            var peak = 0
            while !Task.isCancelled {
                peak = max(peak, (try? rssAnonKiB(pid)) ?? 0)
                try? await Task.sleep(for: .milliseconds(20))
            }
            return peak
        }
        do { try await body() } catch {
            sampler.cancel()
            throw error
        }
        sampler.cancel()
        let peak = max(await sampler.value, try rssAnonKiB(pid))
        return (before, peak)
    }

    /// RssAnon of `pid` in KiB (/proc/<pid>/status): heap and stacks, not the mapped db file.
    static func rssAnonKiB(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("RssAnon:") })
        return try #require(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
    }

    /// A gauge from the member's /metrics.
    static func metric(_ m: Member, _ name: String) async throws -> Int {
        let out = try await run("/usr/bin/curl", ["-s", "--max-time", "5", "http://\(m.endpoint)/metrics"])
        let line = try #require(out.lines.first { $0.hasPrefix(name + " ") }, "no \(name) in /metrics")
        return Int(try #require(Double(line.split(separator: " ")[1])))
    }

    static func bench(_ m: Member, _ args: [String]) async throws {
        let out = try await run("/usr/bin/timeout", ["-s", "KILL", "300", try #require(E2E.benchPath)] + args + ["--endpoints", m.endpoint], limit: 310)
        try #require(out.status == 0, "swetcd-bench \(args): \(out.stderr)")
    }

    static func run(_ path: String, _ args: [String], limit: Int = 60) async throws -> CommandOutput {
        let c = try Child(path, args)
        try c.start()
        let status = try await c.waitExit(limit: .seconds(Int64(limit)))
        return CommandOutput(status: status, stdout: c.stdout, stderr: c.stderr)
    }
}

/// A child process whose stdout is a pipe this test reads only when it chooses to.
final class StalledProcess: @unchecked Sendable {
    let process = Process()
    let pipe = Pipe()

    init(_ path: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = ["ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    /// Reads stdout until `pattern` was seen `count` times or the output ends; returns how
    /// many times it was seen.
    func countOccurrences(of pattern: [UInt8], until count: Int) async throws -> Int {
        let handle = pipe.fileHandleForReading
        return await Task.detached {
            var seen = 0
            var carry: [UInt8] = []
            while seen < count {
                let data = handle.availableData
                if data.isEmpty { break }
                let bytes = carry + [UInt8](data)
                var i = 0
                while i + pattern.count <= bytes.count {
                    if bytes[i] == pattern[0] && Array(bytes[i..<(i + pattern.count)]) == pattern {
                        seen += 1
                        i += pattern.count
                    } else {
                        i += 1
                    }
                }
                carry = Array(bytes.suffix(pattern.count - 1))
            }
            return seen
        }.value
    }

    /// SIGKILL; waits (bounded, polling: Process offers no awaitable exit) until it is gone.
    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        for _ in 0..<500 where process.isRunning { usleep(10_000) }
    }

    deinit { kill() }
}

/// A TCP connection to 127.0.0.1 that sends and never reads (unless asked).
final class RawConnection: @unchecked Sendable {
    private var fd: Int32

    init(port: Int, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw E2EError("socket() failed") }
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard ok else {
            Glibc.close(fd)
            throw E2EError("connect to \(port) failed")
        }
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw E2EError("send failed: errno \(errno)") }
            sent += n
        }
    }

    /// Reads up to `max` bytes (blocking).
    func receive(max: Int = 65536) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        let n = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, max, 0) }
        return n > 0 ? Array(buffer[..<n]) : []
    }

    /// Reads (bounded by `timeout`) until what arrived contains one of `markers`; returns what
    /// arrived, or nil if no marker came in time or the peer closed first.
    func receive(untilAnyOf markers: [String], timeout: Duration) -> String? {
        let deadline = ContinuousClock.now + timeout
        var received: [UInt8] = []
        while ContinuousClock.now < deadline {
            let left = deadline - ContinuousClock.now
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
            guard poll(&p, 1, max(1, ms)) > 0 else { continue }
            let chunk = receive(max: 512)
            if chunk.isEmpty { return nil }
            received += chunk
            let text = String(decoding: received, as: UTF8.self)
            if markers.contains(where: text.contains) { return text }
        }
        return nil
    }

    func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    deinit { close() }
}
