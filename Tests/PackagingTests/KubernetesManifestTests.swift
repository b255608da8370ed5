import Foundation
import Testing
import Yams

/// deploy/kubernetes/swetcd.yaml: valid YAML with the objects and settings the deployment needs,
/// and a start script that derives the right flags from the pod name.
struct KubernetesManifestTests {
    /// The manifest's documents as dictionaries, by kind (and name).
    private func documents() throws -> [[String: Any]] {
        let text = try Repo.text("deploy/kubernetes/swetcd.yaml")
        var docs: [[String: Any]] = []
        for doc in try Yams.load_all(yaml: text) {
            if doc is NSNull { continue }
            docs.append(try #require(doc as? [String: Any], "a manifest document is not a mapping"))
        }
        return docs
    }

    private func object(_ docs: [[String: Any]], kind: String, name: String) throws -> [String: Any] {
        try #require(docs.first { $0["kind"] as? String == kind && ($0["metadata"] as? [String: Any])?["name"] as? String == name },
                     "no \(kind) \(name)")
    }

    private func dig(_ value: Any?, _ path: String...) -> Any? {
        var v = value
        for key in path {
            if let i = Int(key), let list = v as? [Any] { v = list.indices.contains(i) ? list[i] : nil } else { v = (v as? [String: Any])?[key] }
        }
        return v
    }

    @Test func manifestHasTheObjects() throws {
        let docs = try documents()
        for d in docs {
            #expect(d["apiVersion"] is String && d["kind"] is String && dig(d, "metadata", "name") is String)
        }
        let headless = try object(docs, kind: "Service", name: "swetcd")
        #expect(dig(headless, "spec", "clusterIP") as? String == "None")
        #expect(dig(headless, "spec", "publishNotReadyAddresses") as? Bool == true)
        let client = try object(docs, kind: "Service", name: "swetcd-client")
        #expect(dig(client, "spec", "ports", "0", "port") as? Int == 2379)
        let pdb = try object(docs, kind: "PodDisruptionBudget", name: "swetcd")
        #expect(dig(pdb, "spec", "maxUnavailable") as? Int == 1)

        let set = try object(docs, kind: "StatefulSet", name: "swetcd")
        #expect(dig(set, "spec", "serviceName") as? String == "swetcd")
        #expect(dig(set, "spec", "replicas") as? Int == 3)
        #expect(dig(set, "spec", "podManagementPolicy") as? String == "Parallel")
        let container = try #require(dig(set, "spec", "template", "spec", "containers", "0") as? [String: Any])
        #expect(dig(container, "readinessProbe", "httpGet", "path") as? String == "/readyz")
        #expect(dig(container, "livenessProbe", "httpGet", "path") as? String == "/livez")
        #expect(dig(set, "spec", "volumeClaimTemplates", "0", "metadata", "name") as? String == "data")
        let mounts = try #require(container["volumeMounts"] as? [[String: Any]])
        #expect(mounts.contains { $0["name"] as? String == "data" })
        // Every label selector matches the pod template's labels.
        let labels = try #require(dig(set, "spec", "template", "metadata", "labels") as? [String: String])
        for d in docs {
            if let sel = dig(d, "spec", "selector") as? [String: String] { #expect(sel == labels) }
            if let sel = dig(d, "spec", "selector", "matchLabels") as? [String: String] { #expect(sel == labels) }
        }
    }

    /// Runs the ConfigMap's start.sh with `echo` in place of swetcd.
    private func runStart(pod: String, extraEnv: [String: String] = [:]) throws -> RunResult {
        let docs = try documents()
        let scripts = try object(docs, kind: "ConfigMap", name: "swetcd-scripts")
        let script = try #require(dig(scripts, "data", "start.sh") as? String)
        let dir = try Repo.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("start.sh")
        try script.write(to: path, atomically: true, encoding: .utf8)
        var env = ["PATH": "/usr/bin:/bin", "POD_NAME": pod, "POD_NAMESPACE": "db", "SERVICE_NAME": "swetcd",
                   "INITIAL_MEMBERS": "3", "SWETCD_BIN": "/bin/echo"]
        env.merge(extraEnv) { $1 }
        return try runProcess("/bin/sh", [path.path], environment: env)
    }

    /// The arguments start.sh passes to swetcd for `pod`.
    private func startArguments(pod: String, extraEnv: [String: String] = [:]) throws -> [String] {
        let r = try runStart(pod: pod, extraEnv: extraEnv)
        try #require(r.status == 0, "start.sh failed: \(r.stderr)")
        return r.stdout.trimmingCharacters(in: .newlines).split(separator: " ").map(String.init)
    }

    private func flag(_ args: [String], _ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }

    @Test func bootstrapMemberFlagsFromPodName() throws {
        let args = try startArguments(pod: "swetcd-1")
        #expect(flag(args, "--name") == "swetcd-1")
        #expect(flag(args, "--initial-cluster-state") == "new")
        #expect(flag(args, "--initial-advertise-peer-urls") == "http://swetcd-1.swetcd.db.svc.cluster.local:2380")
        #expect(flag(args, "--advertise-client-urls") == "http://swetcd-1.swetcd.db.svc.cluster.local:2379")
        #expect(flag(args, "--initial-cluster") == (0..<3).map { "swetcd-\($0)=http://swetcd-\($0).swetcd.db.svc.cluster.local:2380" }.joined(separator: ","))
        #expect(flag(args, "--data-dir") == "/var/lib/swetcd/data")
        // All bootstrap members compute the same list and token.
        let other = try startArguments(pod: "swetcd-0")
        #expect(flag(other, "--initial-cluster") == flag(args, "--initial-cluster"))
        #expect(flag(other, "--initial-cluster-token") == flag(args, "--initial-cluster-token"))
    }

    @Test func scaledUpMemberJoinsAsExisting() throws {
        let args = try startArguments(pod: "swetcd-3", extraEnv: ["CLUSTER_DOMAIN": "k8s.example"])
        #expect(flag(args, "--initial-cluster-state") == "existing")
        let cluster = try #require(flag(args, "--initial-cluster")).split(separator: ",")
        #expect(cluster.count == 4)
        #expect(cluster.last == "swetcd-3=http://swetcd-3.swetcd.db.svc.k8s.example:2380")
    }

    @Test func badPodNameIsRefused() throws {
        let r = try runStart(pod: "swetcd")
        #expect(r.status == 1)
        #expect(r.stderr.contains("does not end in -<ordinal>"))
    }
}

/// deploy/tune.sh: the dry run prints the ionice and tc commands and changes nothing.
struct TuneScriptTests {
    private func tune(_ args: [String]) throws -> RunResult {
        try runProcess("/bin/sh", [Repo.path("deploy/tune.sh")] + args, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"])
    }

    @Test func dryRunPrintsTheCommands() throws {
        let r = try tune(["--dry-run", "--pid", "4242", "--interface", "eth7"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "ionice -c2 -n0 -p 4242")
        #expect(lines.contains("tc qdisc replace dev eth7 root handle 5e7d: prio bands 3 priomap 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2"))
        for dir in ["sport", "dport"] {
            #expect(lines.contains("tc filter add dev eth7 parent 5e7d: protocol ip prio 1 u32 match ip \(dir) 2380 0xffff flowid 5e7d:1"))
            #expect(lines.contains("tc filter add dev eth7 parent 5e7d: protocol ip prio 2 u32 match ip \(dir) 2379 0xffff flowid 5e7d:2"))
            #expect(lines.contains("tc filter add dev eth7 parent 5e7d: protocol ipv6 prio 3 u32 match ip6 \(dir) 2380 0xffff flowid 5e7d:1"))
            #expect(lines.contains("tc filter add dev eth7 parent 5e7d: protocol ipv6 prio 4 u32 match ip6 \(dir) 2379 0xffff flowid 5e7d:2"))
        }
        // Idempotent: the qdisc is replaced, never added, and old filters go before new ones.
        #expect(!lines.contains { $0.hasPrefix("tc qdisc add") })
        let del = try #require(lines.firstIndex { $0.hasPrefix("tc filter del") })
        let add = try #require(lines.firstIndex { $0.hasPrefix("tc filter add") })
        #expect(del < add)
        // The same output every time.
        #expect(try tune(["--dry-run", "--pid", "4242", "--interface", "eth7"]).stdout == r.stdout)
    }

    /// An I/O priority belongs to a thread: every thread of the process gets one (swetcd's WAL
    /// fsyncs run on its Raft thread). This test process is multi-threaded.
    @Test func everyThreadOfTheProcessGetsThePriority() throws {
        let pid = getpid()
        let tids = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        let r = try tune(["--dry-run", "--pid", "\(pid)", "--interface", "lo"])
        #expect(r.status == 0, "\(r.stderr)")
        let ionice = r.stdout.split(separator: "\n").filter { $0.hasPrefix("ionice") }.map(String.init)
        #expect(tids.count > 1)
        // Threads may come and go while the script runs; the main thread is always there.
        #expect(ionice.count >= 2 && ionice.contains("ionice -c2 -n0 -p \(pid)"), "\(ionice)")
    }

    @Test func customPortsAndRemove() throws {
        let r = try tune(["--dry-run", "--pid", "1", "--interface", "lo", "--peer-port", "12380", "--client-port", "12379"])
        #expect(r.stdout.contains("match ip dport 12380 0xffff flowid 5e7d:1"))
        #expect(r.stdout.contains("match ip sport 12379 0xffff flowid 5e7d:2"))
        #expect(r.stdout.contains("match ip6 dport 12380 0xffff flowid 5e7d:1"))
        let remove = try tune(["--dry-run", "--remove", "--interface", "lo"])
        #expect(remove.stdout == "tc qdisc del dev lo root\n")
    }

    @Test func badArgumentsExitTwo() throws {
        #expect(try tune(["--dry-run", "--pid", "abc", "--interface", "lo"]).status == 2)
        #expect(try tune(["--frobnicate"]).status == 2)
    }
}

/// deploy/tune.sh for real, in two network namespaces joined by a veth pair: the qdisc and its
/// IPv4 and IPv6 filters are made (prio where the kernel has it, htb otherwise, said so), peer
/// and client packets land in their own classes, a rerun changes nothing, a foreign root qdisc
/// is kept, and --remove says what it removed.
@Suite(.serialized, .enabled(if: getuid() == 0 && executable(["/usr/sbin/tc", "/sbin/tc"]) != nil, "needs root and tc"))
struct TuneScriptNetnsTests {
    let ns = "swetcd-tune-\(getpid())"
    var peerNS: String { ns + "-b" }

    private func sh(_ script: String) throws -> RunResult {
        try runProcess("/bin/sh", ["-c", script], environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"])
    }

    private func tune(_ args: String) throws -> RunResult {
        try sh("ip netns exec \(ns) /bin/sh \(Repo.path("deploy/tune.sh")) --interface v0 --data-dir /nonexistent \(args)")
    }

    /// Packets sent so far in class `minor` of the qdisc 5e7d: on v0.
    private func packets(_ minor: Int) throws -> Int {
        let out = try sh("ip netns exec \(ns) tc -s class show dev v0").stdout
        var inClass = false
        for line in out.split(separator: "\n") {
            if line.hasPrefix("class ") { inClass = line.contains(" 5e7d:\(minor) ") }
            if inClass, let r = line.range(of: " pkt") {
                let before = line[..<r.lowerBound].split(separator: " ").last.map(String.init) ?? ""
                return Int(before) ?? -1
            }
        }
        return -1
    }

    /// Connects from the first namespace to the second on `port` (a refused connection still
    /// sends its SYN through v0).
    private func knock(_ host: String, _ port: Int) throws {
        _ = try runProcess("/usr/bin/ip", ["netns", "exec", ns, "/bin/bash", "-c", "exec 3<>/dev/tcp/\(host)/\(port)"])
    }

    @Test func tunesAnInterfaceForReal() throws {
        let setup = """
        set -e
        ip netns add \(ns); ip netns add \(peerNS)
        ip link add v0 netns \(ns) type veth peer name v1 netns \(peerNS)
        ip -n \(ns) addr add 10.77.0.1/24 dev v0; ip -n \(ns) addr add fd77::1/64 dev v0 nodad
        ip -n \(peerNS) addr add 10.77.0.2/24 dev v1; ip -n \(peerNS) addr add fd77::2/64 dev v1 nodad
        ip -n \(ns) link set v0 up; ip -n \(peerNS) link set v1 up
        ip -n \(ns) link set lo up; ip -n \(peerNS) link set lo up
        """
        defer { _ = try? sh("ip netns del \(ns); ip netns del \(peerNS)") }
        let made = try sh(setup)
        try #require(made.status == 0, "\(made.stderr)")

        // The process to prioritise: this test process (best-effort 0 harms nothing here).
        let pid = getpid()
        let first = try tune("--pid \(pid)")
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains("v0: ") && first.stdout.contains("root qdisc 5e7d:"), "\(first.stdout)")
        let qdisc = try sh("ip netns exec \(ns) tc qdisc show dev v0 root").stdout
        let kind = qdisc.contains("qdisc prio 5e7d:") ? "prio" : "htb"
        #expect(qdisc.contains("qdisc \(kind) 5e7d:"), "\(qdisc)")
        if kind == "htb" { #expect(first.stderr.contains("no prio qdisc"), "\(first.stderr)") }
        let ionice = try sh("ionice -p \(pid)").stdout
        #expect(ionice.contains("best-effort: prio 0"), "\(ionice)")

        // Eight filters: two ports, two directions, IPv4 and IPv6.
        let filters = try sh("ip netns exec \(ns) tc filter show dev v0 parent 5e7d:").stdout
        #expect(filters.components(separatedBy: "flowid 5e7d:1").count - 1 == 4, "\(filters)")
        #expect(filters.components(separatedBy: "flowid 5e7d:2").count - 1 == 4, "\(filters)")

        // Packets go where the filters say.
        let (peer0, client0) = (try packets(1), try packets(2))
        try knock("10.77.0.2", 2380)
        try knock("fd77::2", 2380)
        #expect(try packets(1) >= peer0 + 2, "peer class")
        #expect(try packets(2) == client0, "client class")
        try knock("10.77.0.2", 2379)
        try knock("fd77::2", 2379)
        #expect(try packets(2) >= client0 + 2, "client class")

        // A rerun leaves the same qdisc and the same filters.
        #expect(try tune("--pid \(pid)").status == 0)
        #expect(try sh("ip netns exec \(ns) tc filter show dev v0 parent 5e7d:").stdout == filters)

        // --remove says what it removed, and a second one that there is nothing.
        let removed = try tune("--remove")
        #expect(removed.stdout.contains("removed the \(kind) root qdisc 5e7d:"), "\(removed.stdout)")
        #expect(try tune("--remove").stdout.contains("nothing to remove"))

        // A root qdisc made by somebody else is kept with a warning, and replaced with --force.
        #expect(try sh("ip netns exec \(ns) tc qdisc add dev v0 root handle 1: htb default 1").status == 0)
        let kept = try tune("--pid \(pid)")
        #expect(kept.status == 0 && kept.stderr.contains("did not make; keeping it"), "\(kept.stderr)")
        #expect(try sh("ip netns exec \(ns) tc qdisc show dev v0 root").stdout.contains("htb 1:"))
        #expect(try tune("--remove").stdout.contains("nothing to remove"))
        let forced = try tune("--pid \(pid) --force")
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(try sh("ip netns exec \(ns) tc qdisc show dev v0 root").stdout.contains(" 5e7d:"))
    }
}
