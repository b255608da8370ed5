import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A process started with posix_spawn and reaped by polling `waitpid` on its own PID.
/// Foundation's `Process` missed the exit of short-lived children (they stayed zombies) while
/// children started through `ip netns exec` were running, so this file does not use it.
final class Spawned: @unchecked Sendable {
    let pid: pid_t
    let outPath: String
    let errPath: String
    private var status: Int32?
    private let lock = NSLock()

    init(_ path: String, _ arguments: [String]) throws {
        let base = NSTemporaryDirectory() + "swetcd-e2e-sp-\(UUID().uuidString.prefix(12))"
        outPath = base + ".out"
        errPath = base + ".err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Children start with no blocked signals and default dispositions.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, path, &actions, &attr, argv, environ)
        guard rc == 0 else { throw E2EError("posix_spawn \(path): \(String(validatingCString: strerror(rc)) ?? "\(rc)")") }
        pid = child
    }

    deinit {
        try? FileManager.default.removeItem(atPath: outPath)
        try? FileManager.default.removeItem(atPath: errPath)
    }

    var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

    /// The exit status (128 + signal when killed) once the process ended, else nil.
    var exitStatus: Int32? {
        lock.lock()
        defer { lock.unlock() }
        if status == nil {
            var raw: Int32 = 0
            if waitpid(pid, &raw, WNOHANG) == pid {
                let sig = raw & 0x7f
                status = sig == 0 ? (raw >> 8) & 0xff : 128 + sig
            }
        }
        return status
    }

    func signal(_ sig: Int32 = SIGTERM) {
        if exitStatus == nil { kill(pid, sig) }
    }

    @discardableResult
    func waitExit(limit: Duration = .seconds(20)) async throws -> Int32 {
        try await E2E.waitUntil("process \(pid) to exit", limit: limit) { exitStatus != nil }
        return exitStatus ?? -1
    }
}

/// Runs `path args` to completion, killed after `limit` seconds at most.
func runCommand(_ path: String, _ args: [String], limit: Int = 20) async throws -> CommandOutput {
    let child = try Spawned("/usr/bin/timeout", ["-s", "KILL", "\(limit)", path] + args)
    let status = try await child.waitExit(limit: .seconds(Int64(limit + 5)))
    return CommandOutput(status: status, stdout: child.stdout, stderr: child.stderr)
}

/// A private network for one test: network namespaces ("hosts") joined by a bridge in a hub
/// namespace, where dnsmasq answers for `swetcd.test`; each host resolves through it
/// (`/etc/netns/NS/resolv.conf`, bind-mounted by `ip netns exec`). Nothing is changed in the
/// test process's own namespace. `cleanUp()` kills what it started and deletes the namespaces.
final class NetnsLab: @unchecked Sendable {
    static let ip = "/usr/sbin/ip"
    static let dnsmasq = "/usr/sbin/dnsmasq"
    /// Needs root, iproute2 and dnsmasq (Debian `dnsmasq-base`; scripts/ensure-deps).
    static var available: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: ip)
            && FileManager.default.isExecutableFile(atPath: dnsmasq)
    }

    let tag: String
    let subnet: String
    var hub: String { "\(tag)-hub" }
    private(set) var namespaces: [String] = []
    private var children: [Spawned] = []

    init() async throws {
        tag = "swb" + String(UInt32.random(in: 0x10000..<0xFFFFF), radix: 16)
        subnet = "10.\(Int.random(in: 100...250)).\(Int.random(in: 1...250))"
        try await addNamespace(hub)
        try await ip(["-n", hub, "link", "add", "br0", "type", "bridge"])
        try await ip(["-n", hub, "addr", "add", "\(dnsAddress)/24", "dev", "br0"])
        try await ip(["-n", hub, "link", "set", "br0", "up"])
    }

    var dnsAddress: String { "\(subnet).1" }
    /// The address of host `index`.
    func address(_ index: Int) -> String { "\(subnet).\(10 + index)" }
    func namespace(_ index: Int) -> String { "\(tag)-h\(index)" }

    /// Adds host `index` (namespace, veth to the bridge, address, resolver); returns its namespace.
    @discardableResult
    func addHost(_ index: Int) async throws -> String {
        let ns = namespace(index)
        try await addNamespace(ns)
        let hubSide = "\(tag)h\(index)"
        try await ip(["-n", hub, "link", "add", hubSide, "type", "veth", "peer", "name", "eth0", "netns", ns])
        try await ip(["-n", hub, "link", "set", hubSide, "master", "br0"])
        try await ip(["-n", hub, "link", "set", hubSide, "up"])
        try await ip(["-n", ns, "addr", "add", "\(address(index))/24", "dev", "eth0"])
        try await ip(["-n", ns, "link", "set", "eth0", "up"])
        let dir = "/etc/netns/\(ns)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "nameserver \(dnsAddress)\noptions timeout:1 attempts:3\n"
            .write(toFile: dir + "/resolv.conf", atomically: true, encoding: .utf8)
        return ns
    }

    private func addNamespace(_ ns: String) async throws {
        try await ip(["netns", "add", ns])
        namespaces.append(ns)
        try await ip(["-n", ns, "link", "set", "lo", "up"])
    }

    func ip(_ args: [String]) async throws {
        let out = try await runCommand(Self.ip, args)
        guard out.status == 0 else { throw E2EError("ip \(args.joined(separator: " ")): \(out.stderr)") }
    }

    /// Starts dnsmasq in the hub, authoritative for swetcd.test (other names there: NXDOMAIN),
    /// with `records` (`--srv-host=...`, `--host-record=...`); returns once it serves.
    @discardableResult
    func startDNS(_ records: [String]) async throws -> Spawned {
        let c = try spawn(in: hub, Self.dnsmasq, [
            "--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts", "--user=root", "--pid-file",
            "--bind-interfaces", "--listen-address=\(dnsAddress)", "--local=/swetcd.test/",
        ] + records)
        try await E2E.waitUntil("dnsmasq to start") {
            if let s = c.exitStatus { throw E2EError("dnsmasq exited with \(s): \(c.stderr)") }
            return c.stderr.contains("started")
        }
        return c
    }

    /// Starts `path args` inside namespace `ns`; killed by `cleanUp()` at the latest.
    func spawn(in ns: String, _ path: String, _ args: [String]) throws -> Spawned {
        let c = try Spawned(Self.ip, ["netns", "exec", ns, path] + args)
        children.append(c)
        return c
    }

    /// Runs `path args` inside `ns` to completion (killed after `limit` seconds at most).
    func run(in ns: String, _ path: String, _ args: [String], limit: Int = 20) async throws -> CommandOutput {
        try await runCommand(Self.ip, ["netns", "exec", ns, "/usr/bin/timeout", "-s", "KILL", "\(limit)", path] + args,
                             limit: limit + 5)
    }

    /// etcdctl (v3) inside `ns`.
    func etcdctl(in ns: String, _ args: [String]) async throws -> CommandOutput {
        try await run(in: ns, try #require(E2E.etcdctlPath), ["--dial-timeout=3s", "--command-timeout=5s"] + args)
    }

    func cleanUp() async {
        for c in children {
            c.signal(SIGKILL)
            _ = try? await c.waitExit()
        }
        for ns in namespaces.reversed() {
            _ = try? await runCommand(Self.ip, ["netns", "del", ns])
            try? FileManager.default.removeItem(atPath: "/etc/netns/\(ns)")
        }
    }
}

/// Debian's etcd 3.4 with the v2 API (`--enable-v2`) on loopback, and Debian's discovery
/// service (`discovery.etcd.io`, package etcd-discovery) in front of it, as a public discovery
/// service runs.
final class DiscoveryService: @unchecked Sendable {
    static let etcdPath = "/usr/bin/etcd"
    static let servicePath = "/usr/bin/discovery.etcd.io"
    static let curlPath = "/usr/bin/curl"
    static var available: Bool {
        [etcdPath, servicePath, curlPath].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }

    let dataDir: String
    let etcdPort: Int
    let servicePort: Int
    private var children: [Spawned] = []
    var serviceURL: String { "http://127.0.0.1:\(servicePort)" }
    var etcdURL: String { "http://127.0.0.1:\(etcdPort)" }

    init() async throws {
        dataDir = try E2E.tempDir("discovery-etcd")
        etcdPort = try E2E.freePort()
        servicePort = try E2E.freePort()
        let peerPort = try E2E.freePort()
        do {
            let etcd = try Spawned(Self.etcdPath, [
                "--name", "disc", "--data-dir", dataDir, "--enable-v2",
                "--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
                "--listen-peer-urls", "http://127.0.0.1:\(peerPort)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPort)",
                "--initial-cluster", "disc=http://127.0.0.1:\(peerPort)",
            ])
            children.append(etcd)
            try await E2E.waitUntil("etcd with the v2 API") {
                if let s = etcd.exitStatus { throw E2EError("etcd exited with \(s): \(etcd.stderr.suffix(1500))") }
                return try await self.curl(["\(self.etcdURL)/v2/keys/"]).status == 0
            }
            let service = try Spawned(Self.servicePath, ["--etcd", etcdURL, "--host", serviceURL, "--addr", "127.0.0.1:\(servicePort)"])
            children.append(service)
            try await E2E.waitUntil("the discovery service") {
                if let s = service.exitStatus { throw E2EError("discovery.etcd.io exited with \(s): \(service.stderr)") }
                return try await self.curl(["\(self.serviceURL)/health"]).status == 0
            }
        } catch {
            await cleanUp()
            throw error
        }
    }

    /// curl -sf (fails on HTTP errors), bounded.
    func curl(_ args: [String]) async throws -> CommandOutput {
        try await runCommand(Self.curlPath, ["-sf", "--max-time", "5"] + args, limit: 10)
    }

    /// A new token URL for a cluster of `size` (GET /new?size=N).
    func newToken(size: Int) async throws -> String {
        let out = try await curl(["\(serviceURL)/new?size=\(size)"])
        let url = out.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard out.status == 0, url.hasPrefix(serviceURL + "/") else { throw E2EError("no token: \(out.stdout) \(out.stderr)") }
        return url
    }

    /// The member keys (IDs in hex) registered under `token`.
    func registered(_ token: String) async throws -> [String] {
        let out = try await curl([token])
        struct Node: Decodable { var key: String; var nodes: [Node]? }
        struct Answer: Decodable { var node: Node }
        let answer = try JSONDecoder().decode(Answer.self, from: Data(out.stdout.utf8))
        return (answer.node.nodes ?? []).map { String($0.key.split(separator: "/").last ?? "") }.filter { $0 != "_config" }
    }

    func cleanUp() async {
        for c in children.reversed() {
            c.signal(SIGKILL)
            _ = try? await c.waitExit()
        }
        children = []
        try? FileManager.default.removeItem(atPath: dataDir)
    }
}

/// Bootstrapping without `--initial-cluster`: DNS SRV records (`--discovery-srv`) served by
/// dnsmasq in network namespaces, and etcd's v2 discovery protocol (`--discovery`) against
/// Debian's discovery.etcd.io service backed by Debian's etcd with `--enable-v2`.
@Suite(.serialized) struct E2EBootstrapTests {
    /// Starts `members` at once (each waits in discovery until all have registered) and waits
    /// until `listedBy`'s member list shows exactly them, started; returns that list.
    static func startTogether(_ members: ArraySlice<Member>, listedBy: Member) async throws -> CommandOutput {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for m in members { group.addTask { try await m.start() } }
            try await group.waitForAll()
        }
        var list = CommandOutput(status: -1, stdout: "", stderr: "")
        try await E2E.waitUntil("\(members.count) started members in member list", limit: .seconds(30)) {
            list = try await listedBy.ctl("member", "list")
            return list.status == 0 && list.lines.count == members.count
                && members.allSatisfy { m in list.lines.contains { $0.contains(", started, \(m.name), ") } }
        }
        return list
    }

    static let domain = "swetcd.test"

    /// swetcd inside `lab`'s host `i`, advertising its peer URL by address (the SRV targets
    /// name hosts: the member finds itself by resolving them).
    static func startSRVMember(_ lab: NetnsLab, _ i: Int, dataDir: String, extra: [String] = []) throws -> Spawned {
        let addr = lab.address(i)
        return try lab.spawn(in: lab.namespace(i), try #require(E2E.swetcdPath), [
            "--name", "m\(i)", "--data-dir", dataDir,
            "--listen-client-urls", "http://\(addr):2379", "--advertise-client-urls", "http://m\(i).\(domain):2379",
            "--listen-peer-urls", "http://\(addr):2380", "--initial-advertise-peer-urls", "http://\(addr):2380",
            "--discovery-srv", domain, "--heartbeat-interval", "50", "--election-timeout", "500",
        ] + extra)
    }

    @Test(.enabled(if: E2E.available && NetnsLab.available))
    func threeMembersBootstrapFromSRVRecordsAlone() async throws {
        let lab = try await NetnsLab()
        var dirs: [String] = []
        var members: [Spawned] = []
        do {
            // Only the plain _etcd-server._tcp records (no -ssl ones: etcd 3.4 fails there).
            var records: [String] = []
            for i in 1...3 {
                records += [
                    "--srv-host=_etcd-server._tcp.\(Self.domain),m\(i).\(Self.domain),2380",
                    "--srv-host=_etcd-client._tcp.\(Self.domain),m\(i).\(Self.domain),2379",
                    "--host-record=m\(i).\(Self.domain),\(lab.address(i))",
                ]
            }
            for i in 1...5 { try await lab.addHost(i) }
            let dns = try await lab.startDNS(records)
            for i in 1...3 {
                let dir = try E2E.tempDir("srv-m\(i)")
                dirs.append(dir)
                members.append(try Self.startSRVMember(lab, i, dataDir: dir))
            }
            // etcdctl 3.4 finds the members through _etcd-client._tcp itself.
            let ns = lab.namespace(1)
            var list = CommandOutput(status: -1, stdout: "", stderr: "")
            try await E2E.waitUntil("three started members in member list", limit: .seconds(40)) {
                for m in members { if let s = m.exitStatus { throw E2EError("a member exited with \(s): \(m.stderr.suffix(2000))") } }
                list = try await lab.etcdctl(in: ns, ["--discovery-srv", Self.domain, "member", "list"])
                return list.status == 0 && list.lines.count == 3
                    && (1...3).allSatisfy { i in list.lines.contains { $0.contains(", started, m\(i), ") } }
            }
            // Peer URLs are the SRV targets: every member derived the same IDs from them.
            for i in 1...3 {
                #expect(list.lines.contains { $0.contains("http://m\(i).\(Self.domain):2380") }, "\(list.stdout)")
            }
            let put = try await lab.etcdctl(in: ns, ["--discovery-srv", Self.domain, "put", "bootstrapped", "from-srv"])
            #expect(put.status == 0, "\(put.stderr)")
            let get = try await lab.etcdctl(in: lab.namespace(3), ["--endpoints", "http://\(lab.address(3)):2379", "get", "bootstrapped", "--print-value-only"])
            #expect(get.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "from-srv", "\(get.stderr)")

            // A fourth member whose address is no SRV target is refused, before touching its data directory.
            let dir4 = try E2E.tempDir("srv-m4")
            dirs.append(dir4)
            let m4 = try Self.startSRVMember(lab, 4, dataDir: dir4)
            let status = try await m4.waitExit(limit: .seconds(20))
            #expect(status == 1)
            #expect(m4.stderr.contains("couldn't find local name \"m4\" in the initial cluster configuration from DNS SRV records of \(Self.domain)"), "\(m4.stderr.suffix(1500))")
            #expect(m4.stderr.contains("http://\(lab.address(4)):2380"))
            #expect((try? FileManager.default.contentsOfDirectory(atPath: dir4))?.isEmpty ?? true)

            // Growing the cluster later: add the member by its SRV target URL, publish its
            // records, and start it with --initial-cluster-state existing.
            let add = try await lab.etcdctl(in: ns, ["--discovery-srv", Self.domain, "member", "add", "m5",
                                                     "--peer-urls=http://m5.\(Self.domain):2380"])
            #expect(add.status == 0, "\(add.stderr)")
            dns.signal(SIGKILL)
            try await dns.waitExit()
            try await lab.startDNS(records + [
                "--srv-host=_etcd-server._tcp.\(Self.domain),m5.\(Self.domain),2380",
                "--host-record=m5.\(Self.domain),\(lab.address(5))",
            ])
            let dir5 = try E2E.tempDir("srv-m5")
            dirs.append(dir5)
            members.append(try Self.startSRVMember(lab, 5, dataDir: dir5, extra: ["--initial-cluster-state", "existing"]))
            try await E2E.waitUntil("m5 started in member list", limit: .seconds(40)) {
                if let s = members.last?.exitStatus { throw E2EError("m5 exited with \(s)") }
                let l = try await lab.etcdctl(in: ns, ["--endpoints", "http://\(lab.address(1)):2379", "member", "list"])
                return l.lines.count == 4 && l.lines.contains { $0.contains(", started, m5, http://m5.\(Self.domain):2380") }
            }
            let got5 = try await lab.etcdctl(in: lab.namespace(5), ["--endpoints", "http://\(lab.address(5)):2379", "get", "bootstrapped",
                                                                    "--print-value-only", "--consistency=s"])
            #expect(got5.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "from-srv", "\(got5.stderr)")
        } catch {
            for m in members { Issue.record("member log tail: \(m.stderr.suffix(2000))") }
            await lab.cleanUp()
            for d in dirs { try? FileManager.default.removeItem(atPath: d) }
            throw error
        }
        await lab.cleanUp()
        for d in dirs { try? FileManager.default.removeItem(atPath: d) }
    }

    @Test(.enabled(if: E2E.available && DiscoveryService.available))
    func threeMembersBootstrapThroughTheDiscoveryServiceAndAFourthIsRefused() async throws {
        let service = try await DiscoveryService()
        let members = try (1...4).map { try Member(name: "d\($0)") }
        do {
            let token = try await service.newToken(size: 3)
            for m in members { m.bootstrapArgs = ["--discovery", token, "--discovery-fallback", "exit"] }
            // Each waits in discovery until all three registered: start them together.
            let list = try await Self.startTogether(members.prefix(3), listedBy: members[0])
            // The registered keys are the members' IDs (derived from the peer URLs and the token URL).
            let keys = try await service.registered(token)
            #expect(keys.count == 3)
            for k in keys { #expect(list.lines.contains { $0.hasPrefix(k + ",") }, "\(k) not in \(list.stdout)") }
            #expect(try await members[0].ctl("put", "k", "via-discovery").status == 0)
            let got = try await members[2].ctl("get", "k", "--print-value-only")
            #expect(got.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "via-discovery")

            // The fourth finds the cluster full: refused with etcd's text, nothing registered.
            do {
                try await members[3].start()
                Issue.record("a fourth member started on a full discovery token")
            } catch {
                #expect("\(error)".contains("failed to join discovery cluster (discovery: cluster is full)"), "\(error)")
            }
            #expect(members[3].exitStatus == 1)
            #expect(try await service.registered(token).count == 3)

            // A registered member that lost its data directory cannot bootstrap again.
            try await members[1].stop()
            try FileManager.default.removeItem(atPath: members[1].dataDir)
            do {
                try await members[1].start()
                Issue.record("d2 bootstrapped again on its used token")
            } catch {
                #expect("\(error)".contains("failed to join discovery cluster (discovery: found duplicate id)"), "\(error)")
            }

            // A restart uses the data directory: the discovery service is not needed any more.
            await service.cleanUp()
            try await members[0].stop()
            try await members[0].start()
            try await E2E.waitUntil("d1 serving after its restart") {
                try await members[0].ctl("get", "k", "--print-value-only").stdout.contains("via-discovery")
            }
        } catch {
            for m in members { Issue.record("\(m.name) log tail: \(m.stderrText.suffix(2000))") }
            for m in members { await m.cleanUp() }
            await service.cleanUp()
            throw error
        }
        for m in members { await m.cleanUp() }
        await service.cleanUp()
    }

    /// The protocol is plain v2 keys: an etcd with --enable-v2 serves as the discovery URL
    /// directly (`/v2/keys/_etcd/registry/TOKEN`, size key written by hand).
    @Test(.enabled(if: E2E.available && DiscoveryService.available))
    func aDiscoveryURLOnEtcdsV2KeysWorksDirectly() async throws {
        let service = try await DiscoveryService()
        let member = try Member(name: "solo")
        do {
            let token = "\(service.etcdURL)/v2/keys/_etcd/registry/\(UUID().uuidString.lowercased())"
            let size = try await service.curl(["-X", "PUT", "\(token)/_config/size", "-d", "value=1"])
            #expect(size.status == 0, "\(size.stderr)")
            member.bootstrapArgs = ["--discovery", token]
            try await member.start()
            try await E2E.waitUntil("solo in member list") {
                try await member.ctl("member", "list").stdout.contains(", started, solo, \(member.peerURL)")
            }
        } catch {
            Issue.record("log tail: \(member.stderrText.suffix(2000))")
            await member.cleanUp()
            await service.cleanUp()
            throw error
        }
        await member.cleanUp()
        await service.cleanUp()
    }

    /// etcd 3.6's v3 discovery with a swetcd member (auth enabled) as the discovery service:
    /// three members bootstrap, a fourth finds the token full.
    @Test(.enabled(if: E2E.available))
    func threeMembersBootstrapThroughV3DiscoveryOnASwetcdCluster() async throws {
        let service = try Member(name: "registry")
        let members = try (1...4).map { try Member(name: "v\($0)") }
        do {
            try await service.start()
            #expect(try await service.ctl("user", "add", "root", "--new-user-password=secret").status == 0)
            #expect(try await service.ctl("auth", "enable").status == 0)
            let token = "swetcd-\(UUID().uuidString.prefix(8).lowercased())"
            let size = try await service.ctl(["--user", "root:secret", "put", "/_etcd/registry/\(token)/_config/size", "3"])
            #expect(size.status == 0, "\(size.stderr)")
            for m in members {
                m.bootstrapArgs = ["--discovery-token", token, "--discovery-endpoints", service.endpoint,
                                   "--discovery-user", "root", "--discovery-password", "secret"]
            }
            let list = try await Self.startTogether(members.prefix(3), listedBy: members[1])
            // The registered keys name the members' IDs.
            let keys = try await service.ctl(["--user", "root:secret", "get", "--prefix", "/_etcd/registry/\(token)/members/", "--keys-only"])
            let ids = keys.lines.map { String($0.split(separator: "/").last ?? "") }
            #expect(ids.count == 3, "\(keys.stdout)")
            for id in ids { #expect(list.lines.contains { $0.hasPrefix(id + ",") }, "\(id) not in \(list.stdout)") }
            do {
                try await members[3].start()
                Issue.record("a fourth member started on a full discovery token")
            } catch {
                #expect("\(error)".contains("failed to join discovery cluster (discovery: cluster is full)"), "\(error)")
            }
            #expect(members[3].exitStatus == 1)
        } catch {
            for m in members + [service] { Issue.record("\(m.name) log tail: \(m.stderrText.suffix(2000))") }
            for m in members + [service] { await m.cleanUp() }
            throw error
        }
        for m in members + [service] { await m.cleanUp() }
    }

    /// v3 discovery over mutual TLS: the discovery service's client port is https:// and
    /// requires a client certificate signed by the test CA.
    @Test(.enabled(if: E2E.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func v3DiscoveryOverMutualTLS() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "registry", serial: 11, server: true)
        let client = try await fx.issue("client", cn: "client", serial: 12)
        let service = try Member(name: "registry")
        let https = "https://127.0.0.1:\(service.clientPort)"
        let plain = try E2E.freePort()
        service.extraArgs = ["--listen-client-urls", "\(https),http://127.0.0.1:\(plain)", "--advertise-client-urls", https,
                             "--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth"]
        let member = try Member(name: "solo")
        do {
            try await service.start()
            let token = "tls-\(UUID().uuidString.prefix(8).lowercased())"
            let size = try await etcdctl(https, fx.ctlFlags("client") + ["put", "/_etcd/registry/\(token)/_config/size", "1"])
            #expect(size.status == 0, "\(size.stderr)")
            member.bootstrapArgs = ["--discovery-token", token, "--discovery-endpoints", https,
                                    "--discovery-cacert", fx.ca, "--discovery-cert", client.cert, "--discovery-key", client.key]
            try await member.start()
            try await E2E.waitUntil("solo in member list") {
                try await member.ctl("member", "list").stdout.contains(", started, solo, \(member.peerURL)")
            }
            let keys = try await etcdctl(https, fx.ctlFlags("client") + ["get", "--prefix", "/_etcd/registry/\(token)/members/", "--keys-only"])
            #expect(keys.lines.count == 1, "\(keys.stdout)")
        } catch {
            for m in [member, service] { Issue.record("\(m.name) log tail: \(m.stderrText.suffix(2000))") }
            for m in [member, service] { await m.cleanUp() }
            throw error
        }
        for m in [member, service] { await m.cleanUp() }
    }
}
