import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Errors of the end-to-end harness.
struct E2EError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Paths and helpers shared by the end-to-end tests.
enum E2E {
    /// The `swetcd` executable built next to this test bundle (or `$SWETCD_BIN`).
    static let swetcdPath: String? = {
        if let p = ProcessInfo.processInfo.environment["SWETCD_BIN"] { return p }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("swetcd").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }()

    static let etcdctlPath: String? = ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Whether the tests can run at all (the binaries exist).
    static var available: Bool { swetcdPath != nil && etcdctlPath != nil }

    /// A loopback TCP port nobody listens on right now, below the kernel's ephemeral range:
    /// members restart on their ports, and an outgoing connection (whose local port comes from
    /// the ephemeral range) could otherwise hold a stopped member's port ("address already in
    /// use" at its restart).
    /// A port is never handed out twice by one test process: two random picks for one cluster
    /// once came out equal ("has duplicate url"), since a picked port stays free until its
    /// member binds it.
    static func freePort() throws -> Int {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
            .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) } ?? []
        let low = range.first ?? 32768
        for _ in 0..<200 where low > 12000 {
            let pick = Int.random(in: 10000..<(low - 1))
            guard handedOut.withLock({ $0.insert(pick).inserted }) else { continue }
            if let port = try? bindable(pick) { return port }
        }
        for _ in 0..<200 {
            let port = try bindable(0)
            if handedOut.withLock({ $0.insert(port).inserted }) { return port }
        }
        throw E2EError("no free port not handed out before")
    }

    /// Ports `freePort()` returned (or tried) in this process.
    private static let handedOut = Mutex<Set<Int>>([])

    /// Binds `port` (0: any) on 127.0.0.1 and releases it; returns the port, or throws if taken.
    static func bindable(_ port: Int) throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw E2EError("socket() failed") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
                bind(fd, p, len) == 0 && getsockname(fd, p, &len) == 0
            }
        }
        guard bound else { throw E2EError("bind() failed") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Whether something accepts TCP connections on `host`:`port` (IPv4).
    static func isListening(_ port: Int, host: String = "127.0.0.1") -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr(host)
        addr.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    /// A fresh temporary directory.
    static func tempDir(_ tag: String) throws -> String {
        let path = NSTemporaryDirectory() + "swetcd-e2e-\(tag)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Polls `condition` every 20 ms until it holds or `limit` passes (waiting on another
    /// process, which offers no event to await).
    static func waitUntil(_ what: String, limit: Duration = .seconds(15), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + limit
        while try await !condition() {
            if ContinuousClock.now >= deadline { throw E2EError("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// Output of a finished command.
struct CommandOutput: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
    /// Output lines without empty ones.
    var lines: [String] { stdout.split(separator: "\n").map(String.init) }
}

/// A child process whose stdout and stderr go to files (read at any time, complete after exit).
final class Child: @unchecked Sendable {
    let process = Process()
    let outPath: String
    let errPath: String
    private let exited = Mutex<Int32?>(nil)

    init(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws {
        let base = NSTemporaryDirectory() + "swetcd-e2e-out-\(UUID().uuidString.prefix(12))"
        outPath = base + ".out"
        errPath = base + ".err"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        process.terminationHandler = { [weak self] p in self?.exited.withLock { $0 = p.terminationStatus } }
    }

    deinit {
        try? FileManager.default.removeItem(atPath: outPath)
        try? FileManager.default.removeItem(atPath: errPath)
    }

    /// Launches one process at a time: concurrent `Process.run()` calls once crashed the test
    /// process inside Foundation (a memcpy on a bad pointer while a member was started).
    ///
    /// The parent's copies of the output (and input) files are closed once the child runs: kept
    /// open, they piled up (two or three per child, until the Process object went away) and
    /// a long fault run (over a thousand etcdctl calls) crashed in `Process.run()` in that
    /// memcpy, with descriptor numbers above 1350 in its registers.
    func start() throws {
        try Child.launching {
            try process.run()
            for handle in [process.standardInput, process.standardOutput, process.standardError] {
                if let h = handle as? FileHandle, h !== FileHandle.nullDevice { try? h.close() }
            }
        }
    }

    private static let launchLock = NSLock()
    static func launching<T>(_ body: () throws -> T) rethrows -> T {
        launchLock.lock()
        defer { launchLock.unlock() }
        return try body()
    }

    var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }
    var exitStatus: Int32? { exited.withLock { $0 } }

    /// Sends `sig` (SIGTERM by default).
    func signal(_ sig: Int32 = SIGTERM) {
        if process.isRunning { kill(process.processIdentifier, sig) }
    }

    /// Waits (bounded) for the process to exit and returns its status.
    @discardableResult
    func waitExit(limit: Duration = .seconds(20)) async throws -> Int32 {
        try await E2E.waitUntil("process exit", limit: limit) { exitStatus != nil }
        return exitStatus ?? -1
    }

    /// Waits (bounded) until stdout has at least `count` lines; returns them.
    func waitLines(_ count: Int, limit: Duration = .seconds(15)) async throws -> [String] {
        try await E2E.waitUntil("\(count) output lines", limit: limit) {
            stdout.split(separator: "\n").count >= count
        }
        return stdout.split(separator: "\n").map(String.init)
    }
}

/// An etcdctl (API v3) process against `endpoint`, bounded by `timeout(1)`, not started.
func etcdctlProcess(_ endpoint: String, _ args: [String], limit: Int = 20, input: String? = nil,
                    directory: String? = nil) throws -> Child {
    let child = try Child("/usr/bin/timeout", ["-s", "KILL", "\(limit)", try #require(E2E.etcdctlPath),
                                               "--endpoints=\(endpoint)", "--dial-timeout=5s", "--command-timeout=10s"] + args,
                          environment: ["ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"])
    if let input {
        let path = child.outPath + ".in"
        FileManager.default.createFile(atPath: path, contents: Data(input.utf8))
        child.process.standardInput = FileHandle(forReadingAtPath: path)
    }
    // unix:// and unixs:// endpoints name a socket relative to the working directory.
    if let directory { child.process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    return child
}

/// Runs etcdctl (API v3) against `endpoint` to completion.
func etcdctl(_ endpoint: String, _ args: [String], limit: Int = 20, input: String? = nil,
             directory: String? = nil) async throws -> CommandOutput {
    let child = try etcdctlProcess(endpoint, args, limit: limit, input: input, directory: directory)
    try child.start()
    let status = try await child.waitExit(limit: .seconds(Int64(limit + 5)))
    return CommandOutput(status: status, stdout: child.stdout, stderr: child.stderr)
}

/// One `swetcd` member on free loopback ports with its own data directory.
final class Member: @unchecked Sendable {
    let name: String
    /// The data directory (a test may point it elsewhere before `start`).
    var dataDir: String
    let clientPort: Int
    let peerPort: Int
    var extraArgs: [String]
    /// `--initial-cluster` (default: this member alone).
    var initialCluster: String?
    /// Replaces `--initial-cluster ...` when set (e.g. `["--discovery", url]`).
    var bootstrapArgs: [String]?
    /// Extra environment variables for the process (added to this process's environment).
    var environment: [String: String] = [:]
    /// The process's working directory (where unix:// and unixs:// sockets are made), or nil
    /// for the test process's own.
    var workingDirectory: String?
    private(set) var child: Child?
    /// "https" for peer TLS (its flags go in `extraArgs`).
    var peerScheme = "http"
    /// "https" for client TLS (its flags go in `extraArgs`; etcdctl's in `ctlFlags`).
    var clientScheme = "http"
    /// Flags given to every etcdctl run by `ctl` and `watch` (say, `--cacert --cert --key`).
    var ctlFlags: [String] = []
    var peerURL: String { "\(peerScheme)://127.0.0.1:\(peerPort)" }
    var clientURL: String { "\(clientScheme)://127.0.0.1:\(clientPort)" }

    var endpoint: String { clientScheme == "http" ? "127.0.0.1:\(clientPort)" : clientURL }

    init(name: String = "m1", extraArgs: [String] = []) throws {
        self.name = name
        dataDir = try E2E.tempDir(name)
        clientPort = try E2E.freePort()
        peerPort = try E2E.freePort()
        self.extraArgs = extraArgs
    }

    /// Starts the process and waits (bounded) until its client port answers a read.
    func start() async throws {
        let peer = peerURL
        let args = [
            "--name", name, "--data-dir", dataDir,
            "--listen-client-urls", clientURL,
            "--advertise-client-urls", clientURL,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ] + (bootstrapArgs ?? ["--initial-cluster", initialCluster ?? "\(name)=\(peer)"]) + extraArgs
        let env = environment.isEmpty ? nil : ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let c = try Child(try #require(E2E.swetcdPath), args, environment: env)
        if let workingDirectory { c.process.currentDirectoryURL = URL(fileURLWithPath: workingDirectory) }
        try c.start()
        child = c
        try await E2E.waitUntil("swetcd on \(clientPort)") {
            if let s = c.exitStatus { throw E2EError("swetcd exited with \(s): \(c.stderr)") }
            return E2E.isListening(clientPort)
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    @discardableResult
    func stop() async throws -> Int32 {
        guard let c = child else { return 0 }
        c.signal(SIGTERM)
        let s = try await c.waitExit()
        child = nil
        return s
    }

    /// The exit status once the process has exited on its own, else nil.
    var exitStatus: Int32? { child?.exitStatus }
    /// Everything the current (or last) process wrote to stderr: its JSON log.
    var stderrText: String { child?.stderr ?? "" }
    /// Waits (bounded) for the process to exit on its own; returns its status.
    func waitExit(limit: Duration) async throws -> Int32 {
        try await #require(child).waitExit(limit: limit)
    }

    /// kill -9.
    func crash() async throws {
        guard let c = child else { return }
        c.signal(SIGKILL)
        _ = try await c.waitExit()
        child = nil
    }

    func ctl(_ args: String...) async throws -> CommandOutput { try await etcdctl(endpoint, ctlFlags + args) }
    func ctl(_ args: [String], input: String? = nil) async throws -> CommandOutput {
        try await etcdctl(endpoint, ctlFlags + args, input: input)
    }
    /// A running `etcdctl watch ...` (killed after `limit` seconds at most).
    func watch(_ args: [String], limit: Int = 30) throws -> Child {
        let c = try etcdctlProcess(endpoint, ctlFlags + ["watch"] + args, limit: limit)
        try c.start()
        return c
    }

    /// Stops the process if running and removes the data directory.
    func cleanUp() async {
        if let c = child {
            c.signal(SIGKILL)
            _ = try? await c.waitExit()
        }
        try? FileManager.default.removeItem(atPath: dataDir)
    }

    /// This member's ID as logged at start ("member-id" of "starting member"), in hex.
    var memberID: String? {
        guard let log = child?.stderr else { return nil }
        for line in log.split(separator: "\n") where line.contains("\"starting member\"") {
            return Self.field("member-id", in: line)
        }
        return nil
    }

    /// The leader this member last logged ("leader changed"), in hex.
    var lastKnownLeader: String? {
        guard let log = child?.stderr else { return nil }
        return log.split(separator: "\n").last { $0.contains("\"leader changed\"") }.flatMap { Self.field("leader", in: $0) }
    }

    private static func field(_ name: String, in line: Substring) -> String? {
        guard let r = line.range(of: "\"\(name)\":\"") else { return nil }
        return String(line[r.upperBound...].prefix { $0 != "\"" })
    }

    /// Waits (bounded) until every member logged the same leader, one of `members`; returns it.
    static func agreedLeader(of members: [Member]) async throws -> Member {
        var leader: Member?
        try await E2E.waitUntil("members agree on the leader") {
            let seen = Set(members.compactMap(\.lastKnownLeader))
            leader = members.first { $0.memberID != nil && seen == [$0.memberID!] }
            return leader != nil
        }
        return try #require(leader)
    }

    /// Runs `body` with `count` started members forming one cluster, always cleaning up;
    /// `body` starts once every member names the same leader (so a call through any member
    /// finds one). `prepare` adjusts member `i` (1-based) before the cluster list is made and
    /// it starts.
    static func withCluster(_ count: Int, extraArgs: [String] = [], prepare: (Int, Member) -> Void = { _, _ in },
                            _ body: ([Member]) async throws -> Void) async throws {
        var members: [Member] = []
        for i in 1...count {
            let m = try Member(name: "m\(i)", extraArgs: extraArgs)
            prepare(i, m)
            members.append(m)
        }
        let cluster = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        for m in members { m.initialCluster = cluster }
        do {
            for m in members { try await m.start() }
            if count > 1 { _ = try await agreedLeader(of: members) }
            try await body(members)
        } catch {
            for m in members {
                Issue.record("\(m.name) log tail: \((m.child?.stderr ?? "").suffix(2000))")
                // SWETCD_E2E_LOG_DIR: keep each member's whole log for a look afterwards.
                if let dir = ProcessInfo.processInfo.environment["SWETCD_E2E_LOG_DIR"] {
                    FileManager.default.createFile(atPath: "\(dir)/\(m.name).log", contents: Data((m.child?.stderr ?? "").utf8))
                }
                await m.cleanUp()
            }
            throw error
        }
        for m in members { await m.cleanUp() }
    }

    /// Runs `body` with a started member, always cleaning up.
    static func with(extraArgs: [String] = [], _ body: (Member) async throws -> Void) async throws {
        let m = try Member(extraArgs: extraArgs)
        do {
            try await m.start()
            try await body(m)
        } catch {
            let log = m.child?.stderr ?? ""
            await m.cleanUp()
            Issue.record("swetcd log tail: \(log.suffix(3000))")
            throw error
        }
        await m.cleanUp()
    }
}

extension Member {
    /// `raftAppliedIndex` from `etcdctl endpoint status` (0 if missing), as `user` when given.
    func appliedIndex(asUser user: String? = nil) async throws -> UInt64 {
        let out = try await ctl((user.map { ["--user", $0] } ?? []) + ["endpoint", "status", "-w", "json"]).stdout
        guard let r = out.range(of: "\"raftAppliedIndex\":") else { return 0 }
        return UInt64(out[r.upperBound...].prefix { $0.isNumber }) ?? 0
    }
}

extension E2E {
    /// Runs `swetcd-bench` (killed after 120 s at most).
    static func runBench(_ args: [String]) async throws -> CommandOutput {
        let child = try Child("/usr/bin/timeout", ["-s", "KILL", "120", try #require(E2E.benchPath)] + args)
        try child.start()
        let status = try await child.waitExit(limit: .seconds(130))
        return CommandOutput(status: status, stdout: child.stdout, stderr: child.stderr)
    }
}

