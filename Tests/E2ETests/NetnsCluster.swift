import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A swetcd cluster whose members each run in their own network namespace, wired to one Linux
/// bridge: member i has 10.88.S.i inside its namespace, and the bridge itself (in the test's
/// namespace) has 10.88.S.254, so the test and its etcdctl clients reach every member directly.
/// Faults are iptables rules inside a member's namespace (partitions, one-way loss of a link,
/// random loss), delays (iptables NFQUEUE to a small user-space delayer in the namespace, as
/// the kernel has no sch_netem), and signals to the member's process (SIGSTOP, SIGCONT, SIGKILL).
/// Names are unique per run; `remove()` deletes the namespaces (their veths go with them), the
/// bridge and the data directories.
final class NetnsCluster: @unchecked Sendable {
    /// Root, `ip`, `iptables` and the binaries: what the fault tests need.
    static var available: Bool {
        getuid() == 0 && E2E.available
            && FileManager.default.isExecutableFile(atPath: ip)
            && FileManager.default.isExecutableFile(atPath: iptables)
            && FileManager.default.isExecutableFile(atPath: python3)
    }
    static let ip = "/usr/sbin/ip"
    static let iptables = "/usr/sbin/iptables"

    final class Node: @unchecked Sendable {
        let index: Int
        let name: String
        let namespace: String
        let address: String
        var dataDir: String
        fileprivate(set) var child: Child?
        var endpoint: String { "\(address):2379" }
        var peerURL: String { "http://\(address):2380" }
        /// Whether the process was stopped with SIGSTOP and not continued.
        fileprivate(set) var paused = false

        init(index: Int, name: String, namespace: String, address: String, dataDir: String) {
            self.index = index
            self.name = name
            self.namespace = namespace
            self.address = address
            self.dataDir = dataDir
        }

        var isRunning: Bool { child != nil && child?.exitStatus == nil }
        var log: String { child?.stderr ?? "" }
        func signal(_ sig: Int32) { child?.signal(sig) }
        /// `raftAppliedIndex` etc. come from `etcdctl endpoint status`.
        func ctl(_ args: [String], limit: Int = 15, input: String? = nil) async throws -> CommandOutput {
            try await etcdctl(endpoint, args, limit: limit, input: input)
        }
    }

    let tag: String
    let subnet: Int
    let bridge: String
    let hostAddress: String
    private(set) var nodes: [Node] = []
    private var created: [String] = []   // namespaces made so far
    private var bridgeMade = false
    /// Raft timing of the members: slower than the loopback tests', as the fault tests run
    /// many etcdctl processes on a small, busy machine.
    let heartbeat = 100
    let electionTimeout = 1000

    /// Makes the bridge and `count` namespaces; starts nothing.
    init(count: Int) async throws {
        let id = UInt32.random(in: 0..<0xFFFFFF)
        tag = String(id, radix: 36)
        // A /24 no interface of this machine uses yet.
        let used = (try? await Self.run(Self.ip, ["-4", "-o", "addr"]).stdout) ?? ""
        var s = Int(id % 200) + 20
        while used.contains("10.88.\(s).") { s = s % 240 + 1 }
        subnet = s
        bridge = "swf\(tag)"
        hostAddress = "10.88.\(subnet).254"
        do {
            try await sh(Self.ip, "link", "add", bridge, "type", "bridge")
            bridgeMade = true
            try await sh(Self.ip, "addr", "add", "\(hostAddress)/24", "dev", bridge)
            try await sh(Self.ip, "link", "set", bridge, "up")
            for i in 1...count { try await addNode(i) }
        } catch {
            await remove()
            throw error
        }
    }

    /// A namespace with a veth into the bridge, and a node for it (not started).
    @discardableResult
    func addNode(_ i: Int) async throws -> Node {
        let ns = "swf\(tag)-\(i)"
        let host = "swf\(tag)h\(i)"
        try await sh(Self.ip, "netns", "add", ns)
        created.append(ns)
        try await sh(Self.ip, "link", "add", host, "type", "veth", "peer", "name", "eth\(i)")
        try await sh(Self.ip, "link", "set", "eth\(i)", "netns", ns)
        try await sh(Self.ip, "link", "set", host, "master", bridge)
        try await sh(Self.ip, "link", "set", host, "up")
        let address = "10.88.\(subnet).\(i)"
        try await sh(Self.ip, "-n", ns, "addr", "add", "\(address)/24", "dev", "eth\(i)")
        try await sh(Self.ip, "-n", ns, "link", "set", "eth\(i)", "up")
        try await sh(Self.ip, "-n", ns, "link", "set", "lo", "up")
        let node = Node(index: i, name: "n\(i)", namespace: ns, address: address, dataDir: try E2E.tempDir("netns-n\(i)"))
        nodes.append(node)
        return node
    }

    /// `--initial-cluster` of the given nodes (default: all).
    func initialCluster(_ of: [Node]? = nil) -> String {
        (of ?? nodes).map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
    }

    /// Starts `node` inside its namespace and waits (bounded) until its client port accepts.
    func start(_ node: Node, initialCluster: String? = nil, state: String = "new", extraArgs: [String] = []) async throws {
        let args = [
            "netns", "exec", node.namespace, try #require(E2E.swetcdPath),
            "--name", node.name, "--data-dir", node.dataDir,
            "--listen-client-urls", "http://\(node.address):2379",
            "--advertise-client-urls", "http://\(node.address):2379",
            "--listen-peer-urls", node.peerURL, "--initial-advertise-peer-urls", node.peerURL,
            "--initial-cluster", initialCluster ?? self.initialCluster(),
            "--initial-cluster-state", state,
            "--heartbeat-interval", "\(heartbeat)", "--election-timeout", "\(electionTimeout)",
        ] + extraArgs
        // `ip netns exec` execs swetcd in place: the child's pid is swetcd's, so signals reach it.
        let c = try Child(Self.ip, args)
        try c.start()
        node.child = c
        node.paused = false
        try await E2E.waitUntil("\(node.name) listening", limit: .seconds(30)) {
            if let s = c.exitStatus { throw E2EError("\(node.name) exited with \(s): \(c.stderr.suffix(2000))") }
            return E2E.isListening(2379, host: node.address)
        }
    }

    func startAll() async throws {
        for n in nodes { try await start(n) }
    }

    /// kill -9 and wait for the exit.
    func crash(_ node: Node) async throws {
        guard let c = node.child else { return }
        if node.paused { c.signal(SIGCONT) }
        c.signal(SIGKILL)
        _ = try await c.waitExit()
        node.paused = false
    }

    func pause(_ node: Node) { node.signal(SIGSTOP); node.paused = true }
    func resume(_ node: Node) { node.signal(SIGCONT); node.paused = false }

    // MARK: network faults (iptables inside the namespaces)

    /// Drops everything `node` receives from `from` (a one-way cut: `from` still hears `node`).
    func dropIncoming(at node: Node, from: Node) async throws {
        try await iptables(node, ["-A", "INPUT", "-s", from.address, "-j", "DROP"])
    }

    /// Cuts both directions between two nodes.
    func cut(_ a: Node, _ b: Node) async throws {
        try await dropIncoming(at: a, from: b)
        try await dropIncoming(at: b, from: a)
    }

    /// Cuts `node` from every other node (clients on the bridge still reach it).
    func isolate(_ node: Node) async throws {
        for other in nodes where other !== node { try await cut(node, other) }
    }

    /// Drops each packet between members with `probability` (both directions, every node).
    func randomLoss(_ probability: Double) async throws {
        for n in nodes {
            for other in nodes where other !== n {
                try await iptables(n, ["-A", "INPUT", "-s", other.address, "-m", "statistic", "--mode", "random",
                                       "--probability", String(format: "%.3f", probability), "-j", "DROP"])
            }
        }
    }

    // MARK: delay (NFQUEUE and a user-space delayer: this kernel has no sch_netem)

    static let python3 = "/usr/bin/python3"
    static let delayer = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/python/nfqueue_delay.py"
    /// Running delayers: one per namespace that has one.
    private var delayers: [Child] = []

    /// Delays every packet `node` receives from each of `from` by `milliseconds` plus a uniform
    /// 0..`jitter` ms; packets are released by due time, so a jitter above the gap between
    /// packets reorders them. The rule passes packets on (`--queue-bypass`) if the delayer is gone.
    func delayIncoming(at node: Node, from: [Node], milliseconds: Int, jitter: Int) async throws {
        let c = try Child(Self.ip, ["netns", "exec", node.namespace, Self.python3, Self.delayer, "0", "\(milliseconds)", "\(jitter)"])
        try c.start()
        delayers.append(c)
        try await E2E.waitUntil("the delayer in \(node.name) bound", limit: .seconds(15)) {
            if let s = c.exitStatus { throw E2EError("delayer exited with \(s): \(c.stderr)") }
            return c.stdout.hasPrefix("ready")
        }
        for other in from {
            try await iptables(node, ["-A", "INPUT", "-s", other.address, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"])
        }
    }

    /// Delays every link between members, in both directions.
    func delayAll(milliseconds: Int, jitter: Int) async throws {
        for n in nodes { try await delayIncoming(at: n, from: nodes.filter { $0 !== n }, milliseconds: milliseconds, jitter: jitter) }
    }

    /// Packets the delayers held so far (their last report), summed over the running ones.
    var delayedPackets: Int {
        delayers.reduce(0) { sum, c in
            sum + (c.stdout.split(separator: "\n").last.flatMap { $0.hasPrefix("delayed ") ? Int($0.dropFirst(8)) : nil } ?? 0)
        }
    }

    /// Removes every rule in every namespace and stops the delayers (they release what they hold).
    func heal() async throws {
        for n in nodes { try await iptables(n, ["-F", "INPUT"]) }
        let running = delayers
        delayers = []
        for c in running {
            c.signal(SIGTERM)
            let status = try? await c.waitExit(limit: .seconds(10))
            if status != 0 {
                c.signal(SIGKILL)
                throw E2EError("the delayer did not stop cleanly (\(status.map { "\($0)" } ?? "still running")): \(c.stderr)")
            }
        }
    }

    private func iptables(_ node: Node, _ args: [String]) async throws {
        try await sh(Self.ip, ["netns", "exec", node.namespace, Self.iptables, "-w", "5"] + args)
    }

    // MARK: cluster state

    /// `etcdctl endpoint status` of one node: (member ID, leader ID, raft term, revision).
    func status(_ node: Node) async -> (id: UInt64, leader: UInt64, term: UInt64, revision: Int64)? {
        guard let out = try? await node.ctl(["endpoint", "status", "-w", "json"], limit: 8), out.status == 0,
              let data = out.stdout.data(using: .utf8),
              let arr = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]],
              let st = arr.first?["Status"] as? [String: Any],
              let header = st["header"] as? [String: Any] else { return nil }
        func u(_ v: Any?) -> UInt64 { (v as? NSNumber)?.uint64Value ?? 0 }
        return (u(header["member_id"]), u(st["leader"]), u(st["raftTerm"]), Int64(u(header["revision"])))
    }

    /// Waits (bounded) until the running, unpaused nodes among `among` agree on a leader that
    /// is one of them; returns it.
    func leader(among: [Node]? = nil, limit: Duration = .seconds(30)) async throws -> Node {
        let candidates = (among ?? nodes).filter { $0.isRunning && !$0.paused }
        var found: Node?
        try await E2E.waitUntil("an agreed leader", limit: limit) {
            var ids: [Int: UInt64] = [:]
            var leaders = Set<UInt64>()
            for n in candidates {
                guard let s = await status(n), s.leader != 0 else { return false }
                ids[n.index] = s.id
                leaders.insert(s.leader)
            }
            guard leaders.count == 1, let l = leaders.first else { return false }
            found = candidates.first { ids[$0.index] == l }
            return found != nil
        }
        return try #require(found)
    }

    /// `etcdctl endpoint hashkv --rev` of every running node; nil for a node that did not answer.
    func hashKV(at revision: Int64) async -> [Int: UInt64] {
        var result: [Int: UInt64] = [:]
        for n in nodes where n.isRunning {
            guard let out = try? await n.ctl(["endpoint", "hashkv", "--rev", "\(revision)", "-w", "json"], limit: 10),
                  out.status == 0, let data = out.stdout.data(using: .utf8),
                  let arr = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]],
                  let h = arr.first?["HashKV"] as? [String: Any],
                  let hash = (h["hash"] as? NSNumber)?.uint64Value else { continue }
            result[n.index] = hash
        }
        return result
    }

    /// Every member's whole log, for a failure report (SWETCD_E2E_LOG_DIR keeps them).
    func recordLogs() {
        for n in nodes {
            Issue.record("\(n.name) log tail: \(n.log.suffix(2500))")
            if let dir = ProcessInfo.processInfo.environment["SWETCD_E2E_LOG_DIR"] {
                FileManager.default.createFile(atPath: "\(dir)/netns-\(n.name).log", contents: Data(n.log.utf8))
            }
        }
    }

    /// Kills the members and deletes namespaces, bridge and data directories.
    func remove() async {
        for c in delayers { c.signal(SIGKILL) }
        for n in nodes {
            if let c = n.child {
                c.signal(SIGCONT)
                c.signal(SIGKILL)
                _ = try? await c.waitExit(limit: .seconds(10))
            }
            try? FileManager.default.removeItem(atPath: n.dataDir)
        }
        for ns in created { _ = try? await Self.run(Self.ip, ["netns", "del", ns]) }
        if bridgeMade { _ = try? await Self.run(Self.ip, ["link", "del", bridge]) }
    }

    /// Runs `body` with a started cluster of `count` members; always removes it.
    /// `prepare` runs before the members start (to move a data directory, say); `cleanUp`
    /// after they are gone, pass or fail.
    static func with(_ count: Int, prepare: (NetnsCluster) async throws -> Void = { _ in },
                     cleanUp: () async -> Void = {}, _ body: (NetnsCluster) async throws -> Void) async throws {
        let cluster: NetnsCluster
        do {
            cluster = try await NetnsCluster(count: count)
        } catch {
            await cleanUp()
            throw error
        }
        do {
            try await prepare(cluster)
            try await cluster.startAll()
            try await body(cluster)
        } catch {
            cluster.recordLogs()
            await cluster.remove()
            await cleanUp()
            throw error
        }
        await cluster.remove()
        await cleanUp()
    }

    // MARK: commands

    private func sh(_ path: String, _ args: String...) async throws { try await sh(path, args) }
    private func sh(_ path: String, _ args: [String]) async throws {
        let out = try await Self.run(path, args)
        guard out.status == 0 else { throw E2EError("\(path) \(args.joined(separator: " ")): status \(out.status): \(out.stderr)") }
    }

    static func run(_ path: String, _ args: [String]) async throws -> CommandOutput {
        let c = try Child("/usr/bin/timeout", ["-s", "KILL", "30", path] + args)
        try c.start()
        let status = try await c.waitExit(limit: .seconds(35))
        return CommandOutput(status: status, stdout: c.stdout, stderr: c.stderr)
    }
}
