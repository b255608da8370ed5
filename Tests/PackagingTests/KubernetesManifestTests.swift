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
        let pod = try #require(dig(set, "spec", "template", "spec") as? [String: Any])
        let container = try #require(dig(pod, "containers", "0") as? [String: Any])
        // Probes on the metrics port (2381, as kubeadm); a long start (WAL replay) is allowed.
        #expect(dig(container, "readinessProbe", "httpGet", "path") as? String == "/readyz")
        #expect(dig(container, "livenessProbe", "httpGet", "path") as? String == "/livez")
        #expect(dig(container, "startupProbe", "httpGet", "path") as? String == "/livez")
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            #expect(dig(container, probe, "httpGet", "port") as? String == "metrics")
        }
        let startup = (dig(container, "startupProbe", "periodSeconds") as? Int ?? 0) * (dig(container, "startupProbe", "failureThreshold") as? Int ?? 0)
        #expect(startup >= 300, "startupProbe allows \(startup)s")
        let ports = try #require(container["ports"] as? [[String: Any]])
        #expect(ports.contains { $0["name"] as? String == "metrics" && $0["containerPort"] as? Int == 2381 })
        #expect(dig(pod, "securityContext", "seccompProfile", "type") as? String == "RuntimeDefault")
        #expect(dig(container, "securityContext", "readOnlyRootFilesystem") as? Bool == true)
        // Scale-in: the preStop hook, with a service account allowed to read the scale.
        #expect(dig(container, "lifecycle", "preStop", "exec", "command") as? [String] == ["/bin/sh", "/scripts/pre-stop.sh"])
        #expect(dig(pod, "serviceAccountName") as? String == "swetcd")
        let role = try object(docs, kind: "Role", name: "swetcd-read-scale")
        #expect(dig(role, "rules", "0", "resources") as? [String] == ["statefulsets/scale"])
        #expect(dig(role, "rules", "0", "verbs") as? [String] == ["get"])
        let binding = try object(docs, kind: "RoleBinding", name: "swetcd-read-scale")
        #expect(dig(binding, "subjects", "0", "name") as? String == "swetcd")
        _ = try object(docs, kind: "ServiceAccount", name: "swetcd")
        // Learners are promoted by the cluster; the memory limit is sized on an explicit quota.
        let env = try #require(container["env"] as? [[String: Any]])
        func envValue(_ name: String) -> String? { env.first { $0["name"] as? String == name }?["value"] as? String }
        #expect(envValue("ETCD_AUTO_PROMOTE_LEARNERS") == "true")
        let quota = try #require(envValue("ETCD_QUOTA_BACKEND_BYTES").flatMap { Int($0) })
        let limit = try #require(dig(container, "resources", "limits", "memory") as? String)
        #expect(limit.hasSuffix("Gi") && (Int(limit.dropLast(2)) ?? 0) << 30 >= 2 * quota, "limit \(limit) for a quota of \(quota)")
        // A writable /tmp for swetcdutl.
        let volumes = try #require(pod["volumes"] as? [[String: Any]])
        #expect(volumes.contains { $0["name"] as? String == "tmp" && $0["emptyDir"] != nil })
        #expect(dig(set, "spec", "volumeClaimTemplates", "0", "metadata", "name") as? String == "data")
        let mounts = try #require(container["volumeMounts"] as? [[String: Any]])
        #expect(mounts.contains { $0["name"] as? String == "data" })
        #expect(mounts.contains { $0["name"] as? String == "tmp" && $0["mountPath"] as? String == "/tmp" })
        // Every label selector matches the pod template's labels.
        let labels = try #require(dig(set, "spec", "template", "metadata", "labels") as? [String: String])
        for d in docs {
            if let sel = dig(d, "spec", "selector") as? [String: String] { #expect(sel == labels) }
            if let sel = dig(d, "spec", "selector", "matchLabels") as? [String: String] { #expect(sel == labels) }
        }
    }

    /// A ConfigMap script by name.
    private func script(_ name: String) throws -> String {
        let scripts = try object(try documents(), kind: "ConfigMap", name: "swetcd-scripts")
        return try #require(dig(scripts, "data", name) as? String, "no \(name) in the ConfigMap")
    }

    /// A stand-in for etcdctl over a member list kept in a file ("ID, status, name, peer URLs,
    /// client URLs, is-learner" lines, as etcdctl prints them): `member list`, `member add`,
    /// `member remove`; every call is appended to `calls`; with a file `down`, every call fails.
    static let fakeEtcdctl = """
        #!/bin/sh
        while [ $# -gt 0 ]; do case $1 in --*) shift ;; *) break ;; esac; done
        echo "$*" >> "$FAKE_DIR/calls"
        [ -f "$FAKE_DIR/down" ] && { echo "context deadline exceeded" >&2; exit 1; }
        touch "$FAKE_DIR/members"
        case "$1 $2" in
          "member list") cat "$FAKE_DIR/members" ;;
          "member add")
            id=$(printf 'a1%014x' "$(wc -l < "$FAKE_DIR/calls")")
            echo "$id, unstarted, , ${5#--peer-urls=}, , true" >> "$FAKE_DIR/members"
            echo "Member $id added to cluster c0ffee" ;;
          "member remove")
            grep -v "^$3, " "$FAKE_DIR/members" > "$FAKE_DIR/m.new"; mv "$FAKE_DIR/m.new" "$FAKE_DIR/members"
            echo "Member $3 removed from cluster c0ffee" ;;
          *) echo "unexpected: $*" >&2; exit 2 ;;
        esac
        """

    /// A pod's volume and a fake cluster for one run of the scripts.
    final class Pod {
        let dir: URL
        var members: [String] = []
        var down = false
        init() throws { dir = try Repo.tempDir() }
        deinit { try? FileManager.default.removeItem(at: dir) }
        var dataDir: String { dir.appendingPathComponent("pv/data").path }
        var calls: [String] {
            ((try? String(contentsOfFile: dir.appendingPathComponent("calls").path, encoding: .utf8)) ?? "")
                .split(separator: "\n").map(String.init)
        }
        var memberLines: [String] {
            ((try? String(contentsOfFile: dir.appendingPathComponent("members").path, encoding: .utf8)) ?? "")
                .split(separator: "\n").map(String.init)
        }
        static func url(_ n: Int, port: Int = 2380) -> String { "http://swetcd-\(n).swetcd.db.svc.cluster.local:\(port)" }
        /// A started member's line as `etcdctl member list` prints it.
        static func started(_ n: Int, id: String, learner: Bool = false) -> String {
            "\(id), started, swetcd-\(n), \(url(n)), \(url(n, port: 2379)), \(learner)"
        }
    }

    /// Runs a ConfigMap script for `pod` with `echo` in place of swetcd and the fake etcdctl.
    private func run(_ name: String, pod: String, _ state: Pod, extraEnv: [String: String] = [:]) throws -> RunResult {
        let path = state.dir.appendingPathComponent(name)
        try script(name).write(to: path, atomically: true, encoding: .utf8)
        let ctl = state.dir.appendingPathComponent("etcdctl")
        try Self.fakeEtcdctl.write(to: ctl, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: ctl.path)
        try (state.members.map { $0 + "\n" }.joined()).write(to: state.dir.appendingPathComponent("members"), atomically: true, encoding: .utf8)
        if state.down { FileManager.default.createFile(atPath: state.dir.appendingPathComponent("down").path, contents: nil) }
        var env = ["PATH": "/usr/bin:/bin", "POD_NAME": pod, "POD_NAMESPACE": "db", "SERVICE_NAME": "swetcd",
                   "INITIAL_MEMBERS": "3", "SWETCD_BIN": "/bin/echo", "SWETCD_ETCDCTL": ctl.path,
                   "FAKE_DIR": state.dir.path, "DATA_DIR": state.dataDir, "JOIN_TIMEOUT": "0"]
        env.merge(extraEnv) { $1 }
        return try runProcess("/bin/sh", [path.path], environment: env)
    }

    /// The arguments start.sh passes to swetcd for `pod`.
    private func startArguments(pod: String, _ state: Pod, extraEnv: [String: String] = [:]) throws -> [String] {
        let r = try run("start.sh", pod: pod, state, extraEnv: extraEnv)
        try #require(r.status == 0, "start.sh failed: \(r.stderr)")
        return r.stdout.trimmingCharacters(in: .newlines).split(separator: " ").map(String.init)
    }

    private func flag(_ args: [String], _ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }

    private let bootstrapList = (0..<3).map { "swetcd-\($0)=\(Pod.url($0))" }.joined(separator: ",")
    private let running = (0..<3).map { Pod.started($0, id: "10\($0)") }

    @Test func bootstrapMemberFlagsFromPodName() throws {
        let pod = try Pod()
        pod.down = true   // no cluster answers yet: the bootstrap pods create it
        let args = try startArguments(pod: "swetcd-1", pod)
        #expect(flag(args, "--name") == "swetcd-1")
        #expect(flag(args, "--initial-cluster-state") == "new")
        #expect(flag(args, "--initial-advertise-peer-urls") == Pod.url(1))
        #expect(flag(args, "--advertise-client-urls") == Pod.url(1, port: 2379))
        #expect(flag(args, "--initial-cluster") == bootstrapList)
        #expect(flag(args, "--data-dir") == pod.dataDir)
        // IPv4 and IPv6 listeners; metrics and probes on their own port.
        #expect(flag(args, "--listen-client-urls") == "http://[::]:2379")
        #expect(flag(args, "--listen-peer-urls") == "http://[::]:2380")
        #expect(flag(args, "--listen-metrics-urls") == "http://[::]:2381")
        // All bootstrap members compute the same list and token.
        let other = try startArguments(pod: "swetcd-0", try { let p = try Pod(); p.down = true; return p }())
        #expect(flag(other, "--initial-cluster") == flag(args, "--initial-cluster"))
        #expect(flag(other, "--initial-cluster-token") == flag(args, "--initial-cluster-token"))
    }

    /// Scale-out: a pod that is not a member adds itself as a learner and joins the running
    /// cluster with its member list.
    @Test func scaledOutPodAddsItselfAsLearner() throws {
        let pod = try Pod()
        pod.members = running
        let args = try startArguments(pod: "swetcd-3", pod, extraEnv: ["CLUSTER_DOMAIN": "cluster.local"])
        #expect(pod.calls.contains("member add swetcd-3 --learner --peer-urls=\(Pod.url(3))"), "\(pod.calls)")
        #expect(flag(args, "--initial-cluster-state") == "existing")
        let cluster = Set(try #require(flag(args, "--initial-cluster")).split(separator: ",").map(String.init))
        #expect(cluster == Set((0...3).map { "swetcd-\($0)=\(Pod.url($0))" }))
        #expect(pod.memberLines.count == 4)

        // Started again before it ever ran (the pod restarted): no second add.
        let again = try Pod()
        again.members = pod.memberLines
        let args2 = try startArguments(pod: "swetcd-3", again)
        #expect(!again.calls.contains { $0.hasPrefix("member add") }, "\(again.calls)")
        #expect(flag(args2, "--initial-cluster-state") == "existing")
        #expect(again.memberLines.count == 4)
    }

    /// A pod whose member already started but whose volume is new: the stale member is
    /// removed and the pod added again as a learner (a new member ID).
    @Test func lostVolumeIsRemovedAndAddedAgain() throws {
        let pod = try Pod()
        pod.members = running
        let args = try startArguments(pod: "swetcd-1", pod)
        #expect(pod.calls.contains("member remove 101"), "\(pod.calls)")
        #expect(pod.calls.contains("member add swetcd-1 --learner --peer-urls=\(Pod.url(1))"))
        #expect(flag(args, "--initial-cluster-state") == "existing")
        #expect(!pod.memberLines.contains { $0.hasPrefix("101, ") })
        #expect(pod.memberLines.contains { $0.hasSuffix(", \(Pod.url(1)), , true") })
    }

    /// A bootstrap member that never started (it comes up late) bootstraps as itself.
    @Test func lateBootstrapMemberStartsAsNew() throws {
        let pod = try Pod()
        pod.members = Array(running.prefix(2)) + ["102, started, swetcd-2, \(Pod.url(2)), , false"]
        let args = try startArguments(pod: "swetcd-2", pod)
        #expect(flag(args, "--initial-cluster-state") == "new")
        #expect(flag(args, "--initial-cluster") == bootstrapList)
        #expect(!pod.calls.contains { $0.hasPrefix("member add") || $0.hasPrefix("member remove") })
    }

    /// A restart with data asks nothing: swetcd reads its membership from the data.
    @Test func restartWithDataAsksNothing() throws {
        let pod = try Pod()
        try FileManager.default.createDirectory(atPath: pod.dataDir + "/member/wal", withIntermediateDirectories: true)
        let args = try startArguments(pod: "swetcd-4", pod)
        #expect(pod.calls.isEmpty, "\(pod.calls)")
        #expect(flag(args, "--initial-cluster-state") == "existing")
        #expect(FileManager.default.fileExists(atPath: pod.dataDir + "/member/wal"))
    }

    /// A volume left by a scale-in: once the cluster confirms the removal, its data is dropped
    /// and the pod joins again; while the member is still listed, the data is kept.
    @Test func volumeOfARemovedMemberIsReused() throws {
        let pod = try Pod()
        try FileManager.default.createDirectory(atPath: pod.dataDir + "/member/wal", withIntermediateDirectories: true)
        try "1a3\n".write(toFile: pod.dataDir + ".removed-member", atomically: true, encoding: .utf8)
        pod.members = running
        let args = try startArguments(pod: "swetcd-3", pod)
        #expect(!FileManager.default.fileExists(atPath: pod.dataDir + "/member"))
        #expect(!FileManager.default.fileExists(atPath: pod.dataDir + ".removed-member"))
        #expect(pod.calls.contains("member add swetcd-3 --learner --peer-urls=\(Pod.url(3))"))
        #expect(flag(args, "--initial-cluster-state") == "existing")

        let kept = try Pod()
        try FileManager.default.createDirectory(atPath: kept.dataDir + "/member/wal", withIntermediateDirectories: true)
        try "1a3\n".write(toFile: kept.dataDir + ".removed-member", atomically: true, encoding: .utf8)
        kept.members = running + [Pod.started(3, id: "1a3")]
        _ = try startArguments(pod: "swetcd-3", kept)
        #expect(FileManager.default.fileExists(atPath: kept.dataDir + "/member/wal"))
        #expect(!FileManager.default.fileExists(atPath: kept.dataDir + ".removed-member"))
        #expect(!kept.calls.contains { $0.hasPrefix("member add") || $0.hasPrefix("member remove") })
    }

    @Test func scaledOutPodWithoutAClusterGivesUp() throws {
        let pod = try Pod()
        pod.down = true
        let r = try run("start.sh", pod: "swetcd-3", pod)
        #expect(r.status == 1)
        #expect(r.stderr.contains("could not join within 0s"), "\(r.stderr)")
    }

    @Test func badPodNameIsRefused() throws {
        let r = try run("start.sh", pod: "swetcd", try Pod())
        #expect(r.status == 1)
        #expect(r.stderr.contains("does not end in -<ordinal>"))
    }

    /// pre-stop.sh reads the StatefulSet's scale from the API (here a file:// URL): a pod at or
    /// above the replica count removes its member and marks its volume; any other pod, or a
    /// doubt about the answer, keeps the membership.
    @Test func preStopRemovesTheMemberOnlyOnScaleIn() throws {
        func api(_ pod: Pod, _ body: String?) throws -> [String: String] {
            let dir = pod.dir.appendingPathComponent("api/apis/apps/v1/namespaces/db/statefulsets/swetcd")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            if let body { try body.write(to: dir.appendingPathComponent("scale"), atomically: true, encoding: .utf8) }
            try "t0ken".write(to: pod.dir.appendingPathComponent("token"), atomically: true, encoding: .utf8)
            try FileManager.default.createDirectory(atPath: pod.dataDir, withIntermediateDirectories: true)
            return ["KUBERNETES_API": "file://\(pod.dir.path)/api", "SERVICE_ACCOUNT_DIR": pod.dir.path]
        }
        let scale3 = """
            {
              "kind": "Scale",
              "apiVersion": "autoscaling/v1",
              "spec": {
                "replicas": 3
              },
              "status": {"replicas": 4}
            }
            """
        let leaving = try Pod()
        leaving.members = running + [Pod.started(3, id: "1a3")]
        let r = try run("pre-stop.sh", pod: "swetcd-3", leaving, extraEnv: try api(leaving, scale3))
        #expect(r.status == 0)
        #expect(leaving.calls.contains("member remove 1a3"), "\(leaving.calls) \(r.stderr)")
        #expect(leaving.memberLines.count == 3)
        #expect(try String(contentsOfFile: leaving.dataDir + ".removed-member", encoding: .utf8) == "1a3\n")

        let staying = try Pod()
        staying.members = running + [Pod.started(3, id: "1a3")]
        let s = try run("pre-stop.sh", pod: "swetcd-2", staying, extraEnv: try api(staying, scale3))
        #expect(s.status == 0 && s.stderr.contains("not a scale-in"))
        #expect(!staying.calls.contains { $0.hasPrefix("member remove") })
        #expect(!FileManager.default.fileExists(atPath: staying.dataDir + ".removed-member"))

        // Scaled to zero: the API leaves replicas out.
        let zero = try Pod()
        zero.members = running
        _ = try run("pre-stop.sh", pod: "swetcd-0", zero, extraEnv: try api(zero, #"{"kind":"Scale","spec":{},"status":{}}"#))
        #expect(zero.calls.contains("member remove 100"), "\(zero.calls)")

        // No answer, or not a Scale: keep the member.
        for body in [nil, #"{"kind":"Status","status":"Failure","message":"forbidden"}"#] {
            let doubt = try Pod()
            doubt.members = running + [Pod.started(3, id: "1a3")]
            let d = try run("pre-stop.sh", pod: "swetcd-3", doubt, extraEnv: try api(doubt, body))
            #expect(d.status == 0 && d.stderr.contains("keeping the membership"), "\(d.stderr)")
            #expect(!doubt.calls.contains { $0.hasPrefix("member remove") })
        }
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

/// Every manifest passes `kubernetes-validate --strict` (the Kubernetes API's OpenAPI schemas,
/// offline; unknown fields rejected), installed from PyPI into a virtualenv under ~/.cache on
/// first use. Skipped, saying so, only when it cannot be installed (PyPI unreachable).
@Suite(.serialized, .enabled(if: KubernetesValidate.path != nil,
                             "kubernetes-validate is not installed and could not be installed from PyPI (unreachable?)"))
struct KubernetesValidateTests {
    private func validate(_ file: String) throws -> RunResult {
        try runProcess(try #require(KubernetesValidate.path), ["--strict", file])
    }

    @Test func shippedManifestIsValid() throws {
        let r = try validate(Repo.path("deploy/kubernetes/swetcd.yaml"))
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        for kind in ["statefulset/swetcd", "service/swetcd", "service/swetcd-client", "poddisruptionbudget/swetcd",
                     "configmap/swetcd-scripts", "serviceaccount/swetcd", "role/swetcd-read-scale", "rolebinding/swetcd-read-scale"] {
            #expect(r.stdout.contains("passed for resource \(kind)"), "\(kind): \(r.stdout)")
        }
    }

    /// The StatefulSet with anti-affinity-required.yaml's podAntiAffinity (the patch's result)
    /// is valid too, and a manifest with a misspelt field is rejected (the check can fail).
    @Test func requiredAntiAffinityVariantIsValidAndTyposAreNot() throws {
        let text = try Repo.text("deploy/kubernetes/swetcd.yaml")
        let patch = try #require(try Yams.load(yaml: try Repo.text("deploy/kubernetes/anti-affinity-required.yaml")) as? [String: Any])
        var required = try #require(((((patch["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])?["affinity"] as? [String: Any])?["podAntiAffinity"] as? [String: Any])
        required = required.filter { !($0.value is NSNull) }
        #expect(required.keys.sorted() == ["requiredDuringSchedulingIgnoredDuringExecution"])
        let dir = try Repo.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        for doc in try Yams.load_all(yaml: text) {
            guard var set = doc as? [String: Any], set["kind"] as? String == "StatefulSet" else { continue }
            var spec = try #require(set["spec"] as? [String: Any])
            var template = try #require(spec["template"] as? [String: Any])
            var podSpec = try #require(template["spec"] as? [String: Any])
            podSpec["affinity"] = ["podAntiAffinity": required]
            template["spec"] = podSpec
            spec["template"] = template
            set["spec"] = spec
            let file = dir.appendingPathComponent("required.yaml").path
            try Yams.dump(object: set).write(toFile: file, atomically: true, encoding: .utf8)
            let r = try validate(file)
            #expect(r.status == 0 && r.stdout.contains("passed for resource statefulset/swetcd"), "\(r.stdout)\(r.stderr)")
        }
        let typo = dir.appendingPathComponent("typo.yaml").path
        try text.replacingOccurrences(of: "podManagementPolicy:", with: "podManagmentPolicy:")
            .write(toFile: typo, atomically: true, encoding: .utf8)
        #expect(try validate(typo).status != 0)
    }
}

/// The kubernetes-validate command: on PATH, in the cached virtualenv, or installed there now.
enum KubernetesValidate {
    static let path: String? = {
        let venv = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/swetcd-kubernetes-validate").path
        let bin = venv + "/bin/kubernetes-validate"
        if FileManager.default.isExecutableFile(atPath: bin) { return bin }
        let python = executable(["/usr/bin/python3", "/usr/local/bin/python3"]) ?? "python3"
        guard (try? runProcess(python, ["-m", "venv", venv]))?.status == 0,
              (try? runProcess(venv + "/bin/pip", ["install", "-q", "--disable-pip-version-check", "kubernetes-validate"], limit: 600))?.status == 0,
              FileManager.default.isExecutableFile(atPath: bin) else { return nil }
        return bin
    }()
}
