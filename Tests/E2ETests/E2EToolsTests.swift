import Foundation
import Testing

/// Runs curl (bounded) to completion; `-s -S` so errors reach stderr only.
func curl(_ args: [String], limit: Int = 15) async throws -> CommandOutput {
    let child = try Child("/usr/bin/timeout", ["-s", "KILL", "\(limit)", "/usr/bin/curl", "-s", "-S"] + args)
    try child.start()
    let status = try await child.waitExit(limit: .seconds(Int64(limit + 5)))
    return CommandOutput(status: status, stdout: child.stdout, stderr: child.stderr)
}

/// Every unsigned number written as `"field":N` in `json`, in order (etcdctl's `-w json` is Go's
/// encoding/json: 64-bit IDs are plain numbers, too large for Int or a Double).
func uints(_ field: String, _ json: String) -> [UInt64] {
    var out: [UInt64] = []
    var rest = json[...]
    while let r = rest.range(of: "\"\(field)\":") {
        rest = rest[r.upperBound...]
        if let n = UInt64(rest.prefix { $0.isNumber }) { out.append(n) }
    }
    return out
}

/// Sends `sig` to the processes whose parent is `child`'s process (etcdctl under timeout(1):
/// a signal for timeout itself is not passed on when the test runner started it with the
/// signal blocked).
func signalChildren(of child: Child, _ sig: Int32) {
    let parent = child.process.processIdentifier
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return }
    for entry in entries {
        guard let pid = Int32(entry),
              let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { continue }
        // After "pid (comm)": state, then the parent's pid.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        if fields.count > 1, Int32(fields[1]) == parent { kill(pid, sig) }
    }
}

/// etcdctl's tools and the HTTP side (curl) against real `swetcd` processes.
@Suite("E2E tools and HTTP", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2EToolsTests {
    static let curlAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")

    /// One member for every single-member check (sharing its start-up): endpoint and member
    /// commands, snapshot save, lock, elect, the request limits, and curl on the HTTP routes.
    @Test(.enabled(if: curlAvailable, "curl not found"))
    func oneMemberToolsHTTPAndLimits() async throws {
        try await Member.with(extraArgs: ["--max-request-bytes", "100000", "--max-txn-ops", "4"]) { m in
            #expect(try await m.ctl("put", "k", "v").lines == ["OK"])
            try await endpointAndMemberCommands(m)
            try await snapshotSave(m)
            try await limits(m)
            try await httpRoutes(m)
            try await gatewayStreams(m)
            try await lockContenders(m)
            try await election(m)
        }
    }

    func endpointAndMemberCommands(_ m: Member) async throws {
        let status = try await m.ctl("endpoint", "status", "-w", "json")
        #expect(status.status == 0, "\(status)")
        let memberID = try #require(uints("member_id", status.stdout).first, "\(status)")
        #expect(uints("leader", status.stdout) == [memberID])
        #expect(status.stdout.contains("\"Endpoint\":\"\(m.endpoint)\""), "\(status)")
        #expect(status.stdout.contains("\"version\":\"3.5.17\""), "\(status)")
        #expect((uints("dbSize", status.stdout).first ?? 0) > 0)
        #expect((uints("raftAppliedIndex", status.stdout).first ?? 0) > 0)
        #expect((uints("raft_term", status.stdout).first ?? 0) >= 1)
        #expect(String(memberID, radix: 16) == m.memberID)

        let health = try await m.ctl("endpoint", "health", "-w", "json")
        #expect(health.stdout.contains("\"endpoint\":\"\(m.endpoint)\""), "\(health)")
        #expect(health.stdout.contains("\"health\":true"), "\(health)")

        let hash1 = try await m.ctl("endpoint", "hashkv", "-w", "json")
        let hash2 = try await m.ctl("endpoint", "hashkv", "-w", "json")
        let h = try #require(uints("hash", hash1.stdout).first, "\(hash1)")
        #expect(h != 0)
        #expect(uints("hash", hash2.stdout) == [h], "the hash of an unchanged store is stable")
        #expect(hash1.stdout.contains("\"Endpoint\":\"\(m.endpoint)\""), "\(hash1)")
        // etcd reports -1 until the first compaction (tools poll this field).
        #expect(hash1.stdout.contains("\"compact_revision\":-1"), "\(hash1)")
        _ = try await m.ctl("put", "k", "v2")
        let hash3 = try await m.ctl("endpoint", "hashkv", "-w", "json")
        #expect(uints("hash", hash3.stdout) != [h], "a write changes the hash")

        let members = try await m.ctl("member", "list", "-w", "json")
        #expect(uints("ID", members.stdout) == [memberID], "\(members)")
        #expect(members.stdout.contains("\"name\":\"m1\""))
        #expect(members.stdout.contains("\"peerURLs\":[\"\(m.peerURL)\"]"), "\(members)")
        #expect(members.stdout.contains("\"clientURLs\":[\"http://\(m.endpoint)\"]"), "\(members)")
        let table = try await m.ctl("member", "list")
        #expect(table.lines == ["\(String(memberID, radix: 16)), started, m1, \(m.peerURL), http://\(m.endpoint), false"], "\(table)")
    }

    func snapshotSave(_ m: Member) async throws {
        let file = m.dataDir + "-backup.db"
        defer { try? FileManager.default.removeItem(atPath: file) }
        let save = try await m.ctl("snapshot", "save", file)
        #expect(save.status == 0, "\(save)")
        #expect(save.stdout.contains("Snapshot saved at \(file)"), "\(save)")
        let size = try #require(try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int)
        #expect(size % 512 == 32, "a page-aligned database plus its SHA-256")
        // The trailer is the SHA-256 of the bytes before it (what `snapshot restore` checks).
        let check = try Child("/bin/sh", ["-c", "head -c \(size - 32) '\(file)' | sha256sum | cut -c1-64; tail -c 32 '\(file)' | od -An -tx1 | tr -d ' \\n'"])
        try check.start()
        #expect(try await check.waitExit() == 0)
        let digests = check.stdout.split(separator: "\n")
        #expect(digests.count == 2 && digests[0] == digests[1], "\(digests)")
        // The file is in etcd's format (bbolt): etcdctl's `snapshot status` reads it and agrees
        // with swetcdutl's.
        let revision = try #require(uints("revision", try await m.ctl("endpoint", "status", "-w", "json").stdout).first)
        let status = try await E2EDefragSnapshotTests.run(try E2EDefragSnapshotTests.swetcdutl(), ["snapshot", "status", file, "-w", "json"])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains("\"revision\":\(revision)"), "\(status.stdout)")
        let etcdStatus = try await E2EDefragSnapshotTests.run(try #require(E2E.etcdctlPath), ["snapshot", "status", file, "-w", "json"])
        #expect(etcdStatus.status == 0, "\(etcdStatus.stderr)")
        #expect(etcdStatus.stdout == status.stdout, "etcdctl: \(etcdStatus.stdout) swetcdutl: \(status.stdout)")
    }

    func limits(_ m: Member) async throws {
        // Over --max-request-bytes + 512 KiB: refused by the gRPC layer, with grpc-go's status.
        let huge = try await m.ctl(["put", "huge"], input: String(repeating: "x", count: 700_000))
        #expect(huge.status != 0)
        #expect(huge.stderr.contains("code = ResourceExhausted"), "\(huge.stderr.prefix(300))")
        #expect(huge.stderr.contains("grpc: received message larger than max ("), "\(huge.stderr.prefix(300))")
        // Within the gRPC limit but over --max-request-bytes.
        let big = try await m.ctl(["put", "big"], input: String(repeating: "y", count: 200_000))
        #expect(big.status != 0)
        #expect(big.stderr.contains("Error: etcdserver: request is too large"), "\(big.stderr.prefix(300))")
        // More than --max-txn-ops operations in one branch.
        let script = "\n" + (1...5).map { "put t\($0) v" }.joined(separator: "\n") + "\n\n\n"
        let txn = try await m.ctl(["txn", "--interactive=false"], input: script)
        #expect(txn.status != 0)
        #expect(txn.stderr.contains("etcdserver: too many operations in txn request"), "\(txn)")
        // Still serving; nothing of the refused requests was written.
        #expect(try await m.ctl(["put", "after"], input: String(repeating: "z", count: 90_000)).lines == ["OK"])
        #expect(try await m.ctl("get", "huge", "--keys-only").lines.isEmpty)
        #expect(try await m.ctl("get", "big", "--keys-only").lines.isEmpty)
        #expect(try await m.ctl("get", "t1", "--keys-only").lines.isEmpty)
    }

    func httpRoutes(_ m: Member) async throws {
        let base = "http://\(m.endpoint)"
        #expect(try await curl([base + "/health"]).stdout == #"{"health":"true","reason":""}"#)
        #expect(try await curl([base + "/livez"]).stdout == "ok")
        let ready = try await curl([base + "/readyz?verbose"])
        #expect(ready.stdout.split(separator: "\n") == ["[+]data_corruption ok", "[+]serializable_read ok",
                                                        "[+]linearizable_read ok", "readyz check passed"], "\(ready)")
        #expect(try await curl([base + "/version"]).stdout == #"{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}"#)
        let metrics = try await curl([base + "/metrics"]).stdout.split(separator: "\n")
        #expect(metrics.contains("etcd_server_has_leader 1"))
        #expect(metrics.contains("etcd_server_is_leader 1"))
        #expect(metrics.contains { $0.hasPrefix("etcd_disk_wal_fsync_duration_seconds_count ") && !$0.hasSuffix(" 0") })
        #expect(metrics.contains { $0.hasPrefix("etcd_debugging_mvcc_keys_total ") && !$0.hasSuffix(" 0") })

        // foo = bar, then read back, then a compare-and-swap txn.
        let put = try await curl(["-X", "POST", "-d", #"{"key":"Zm9v","value":"YmFy"}"#, base + "/v3/kv/put"])
        #expect(put.stdout.hasPrefix(#"{"header":{"cluster_id":""#), "\(put)")
        let range = try await curl(["-X", "POST", "-d", #"{"key":"Zm9v"}"#, base + "/v3/kv/range"])
        #expect(range.stdout.contains(#""kvs":[{"key":"Zm9v","create_revision":""#), "\(range)")
        #expect(range.stdout.contains(#""value":"YmFy""#) && range.stdout.contains(#""count":"1""#), "\(range)")
        let txn = #"{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}]}"#
        let swapped = try await curl(["-X", "POST", "-d", txn, base + "/v3/kv/txn"])
        #expect(swapped.stdout.contains(#""succeeded":true"#), "\(swapped)")
        #expect(try await m.ctl("get", "foo").lines == ["foo", "baz"])
        let again = try await curl(["-X", "POST", "-d", txn, base + "/v3/kv/txn"])
        #expect(!again.stdout.contains("succeeded"), "\(again)")
        let bad = try await curl(["-X", "POST", "-d", "{not json", "-w", "%{http_code}", base + "/v3/kv/range"])
        #expect(bad.stdout.hasSuffix("400"), "\(bad)")
    }

    func gatewayStreams(_ m: Member) async throws {
        let base = "http://\(m.endpoint)"
        // curl -N: a watch over the gateway streams until curl goes away.
        // curl itself (no timeout(1) around it), so that killing it closes the connection.
        let watch = try Child("/usr/bin/curl", ["-s", "-N", "--max-time", "30", "-X", "POST",
                                                "-d", #"{"create_request":{"key":"Z3c=","prev_kv":true}}"#, base + "/v3/watch"])
        try watch.start()
        _ = try await watch.waitLines(1)
        #expect(watch.stdout.hasPrefix(#"{"result":{"header":{"cluster_id":"#), "\(watch.stdout)")
        #expect(watch.stdout.contains(#""created":true"#), "\(watch.stdout)")
        _ = try await m.ctl("put", "gw", "one")
        _ = try await m.ctl("put", "gw", "two")
        try await E2E.waitUntil("both events over the gateway") { watch.stdout.contains(#""value":"dHdv""#) }
        let events = watch.stdout.split(separator: "\n").dropFirst()
        #expect(events.allSatisfy { $0.hasPrefix(#"{"result":{"header":{"#) && $0.contains(#""events":[{"kv":{"key":"Z3c=","#) }, "\(events)")
        #expect(watch.stdout.contains(#""value":"b25l""#), "\(watch.stdout)")
        #expect(watch.stdout.contains(#""prev_kv":{"key":"Z3c=","#), "\(watch.stdout)")
        watch.signal(SIGKILL)
        try await watch.waitExit()
        // The server ends the watch once curl's connection is gone.
        try await E2E.waitUntil("the gateway watch ends") {
            try await curl([base + "/metrics"]).stdout.split(separator: "\n").contains("etcd_debugging_mvcc_watcher_total 0")
        }

        let grant = try await m.ctl("lease", "grant", "60")
        let hex = try #require(grant.stdout.split(separator: " ").dropFirst().first.map(String.init))
        let id = try #require(Int64(hex, radix: 16))
        let keepAlive = try await curl(["-N", "-X", "POST", "-d", "{\"ID\":\"\(id)\"}", base + "/v3/lease/keepalive"])
        #expect(keepAlive.stdout.hasPrefix(#"{"result":{"header":"#), "\(keepAlive)")
        #expect(keepAlive.stdout.contains("\"ID\":\"\(id)\",\"TTL\":\"60\"}}\n"), "\(keepAlive)")
        #expect(try await m.ctl("endpoint", "health").status == 0)
    }

    func lockContenders(_ m: Member) async throws {
        let first = try etcdctlProcess(m.endpoint, ["lock", "mylock"], limit: 40)
        try first.start()
        let held = try await first.waitLines(1)
        #expect(held.first?.hasPrefix("mylock/") == true, "\(held)")
        let second = try etcdctlProcess(m.endpoint, ["lock", "mylock"], limit: 40)
        try second.start()
        // The second contender has queued once its key exists; it must not hold the lock yet.
        try await E2E.waitUntil("second contender queued") {
            try await m.ctl("get", "mylock/", "--prefix", "--keys-only").lines.count == 2
        }
        #expect(second.stdout.isEmpty, "\(second.stdout)")
        signalChildren(of: first, SIGTERM)   // etcdctl releases the lock (ends its session) on a signal
        try await first.waitExit()
        let got = try await second.waitLines(1)
        #expect(got.first?.hasPrefix("mylock/") == true && got.first != held.first, "\(got) after \(held)")
        signalChildren(of: second, SIGTERM)
        try await second.waitExit()
        #expect(try await m.ctl("get", "mylock/", "--prefix", "--keys-only").lines.isEmpty)
    }

    func election(_ m: Member) async throws {
        let observer = try etcdctlProcess(m.endpoint, ["elect", "-l", "myelection"], limit: 40)
        try observer.start()
        let one = try etcdctlProcess(m.endpoint, ["elect", "myelection", "p1"], limit: 40)
        try one.start()
        let won = try await one.waitLines(2)
        #expect(won.first?.hasPrefix("myelection/") == true && won.dropFirst().first == "p1", "\(won)")
        let seen = try await observer.waitLines(2)
        #expect(Array(seen.prefix(2)) == Array(won.prefix(2)), "the observer sees the leader and its proclamation")
        let two = try etcdctlProcess(m.endpoint, ["elect", "myelection", "p2"], limit: 40)
        try two.start()
        try await E2E.waitUntil("second candidate queued") {
            try await m.ctl("get", "myelection/", "--prefix", "--keys-only").lines.count == 2
        }
        #expect(two.stdout.isEmpty, "\(two.stdout)")
        signalChildren(of: one, SIGTERM)
        try await one.waitExit()
        let next = try await two.waitLines(2)
        #expect(next.dropFirst().first == "p2", "\(next)")
        let later = try await observer.waitLines(4)
        #expect(later.suffix(2) == next.prefix(2), "\(later)")
        signalChildren(of: two, SIGTERM)
        signalChildren(of: observer, SIGTERM)
        try await two.waitExit()
        try await observer.waitExit()
    }
}

extension E2EToolsTests {
    /// Three members: member list and endpoint status agree, move-leader hands leadership to
    /// the named member, and hashkv agrees everywhere.
    @Test func threeMembersMoveLeaderAgreeLockAndElect() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k", "v").status == 0
            }
            let all = ms.map(\.endpoint).joined(separator: ",")
            let members = try await etcdctl(ms[0].endpoint, ["member", "list", "-w", "json"])
            let ids = uints("ID", members.stdout)
            #expect(ids.count == 3, "\(members)")
            for m in ms { #expect(members.stdout.contains("\"name\":\"\(m.name)\""), "\(members)") }

            // The last member started may not have heard from the leader yet (it reports
            // leader 0 until then): wait until every member names the same one.
            var status = try await etcdctl(all, ["endpoint", "status", "-w", "json"])
            try await E2E.waitUntil("every member knows the leader") {
                status = try await etcdctl(all, ["endpoint", "status", "-w", "json"])
                let leaders = Set(uints("leader", status.stdout))
                return leaders.count == 1 && !leaders.contains(0)
            }
            let memberIDs = uints("member_id", status.stdout)
            let leaders = Set(uints("leader", status.stdout))
            #expect(Set(memberIDs) == Set(ids), "\(status)")
            #expect(leaders.count == 1, "\(status)")
            let leader = try #require(leaders.first)
            let leaderIndex = try #require(memberIDs.firstIndex(of: leader))
            let target = try #require(memberIDs.first { $0 != leader })

            // Asked of a follower, move-leader is refused; asked of the leader, it works.
            let follower = ms[(leaderIndex + 1) % 3].endpoint
            let refused = try await etcdctl(follower, ["move-leader", String(target, radix: 16)])
            #expect(refused.status != 0, "\(refused)")
            let moved = try await etcdctl(ms[leaderIndex].endpoint, ["move-leader", String(target, radix: 16)])
            #expect(moved.stdout.contains("Leadership transferred from \(String(leader, radix: 16)) to \(String(target, radix: 16))"), "\(moved)")
            try await E2E.waitUntil("every member reports the new leader") {
                Set(uints("leader", try await etcdctl(all, ["endpoint", "status", "-w", "json"]).stdout)) == [target]
            }

            _ = try await etcdctl(all, ["put", "after-move", "x"])
            try await E2E.waitUntil("hashkv agrees on every member") {
                let hashes = uints("hash", try await etcdctl(all, ["endpoint", "hashkv", "-w", "json"]).stdout)
                return hashes.count == 3 && Set(hashes).count == 1
            }
            let health = try await etcdctl(all, ["endpoint", "health"])
            #expect(health.status == 0 && health.stderr.components(separatedBy: " is healthy: ").count == 4, "\(health)")

            // Lock and election on the three-member cluster, through two of its members.
            try await lockContenders(ms[(leaderIndex + 1) % 3])
            try await election(ms[(leaderIndex + 2) % 3])
        }
    }
}
