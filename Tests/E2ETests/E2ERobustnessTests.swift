import Foundation
import Testing

/// Inputs that once took members down (issue 9), now answered, on real processes.
@Suite("E2E robustness", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2ERobustnessTests {
    static let hugeLimit = "--limit=9223372036854775807"

    /// The poison pill: a range with the largest limit, alone and inside a write txn committed
    /// to the log of three members, then a restart of all three. Nobody stops.
    @Test func poisonRangeCannotStopACluster() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "a", "1").status == 0
            }
            #expect(try await ms[1].ctl("put", "b", "2").lines == ["OK"])
            for m in ms {
                let r = try await m.ctl(["get", "a", "--prefix", Self.hugeLimit])
                #expect(r.status == 0 && r.lines == ["a", "1"], "\(m.name): \(r.stderr)")
                let s = try await m.ctl(["get", "", "--from-key", Self.hugeLimit, "--consistency=s", "--keys-only"])
                #expect(s.status == 0 && s.lines.contains("b"), "\(m.name): \(s.stderr)")
            }
            // A write txn holding the range: committed, applied on every member.
            let txn = try await ms[0].ctl(["txn"], input: "\nget a \(Self.hugeLimit)\nput p1 v1\n\n\n")
            #expect(txn.status == 0, "txn: \(txn.stderr)")
            #expect(txn.lines.first == "SUCCESS" && txn.lines.contains("OK"), "txn: \(txn.stdout)")
            for m in ms {
                try await E2E.waitUntil("\(m.name) applied the txn") {
                    try await m.ctl(["get", "p1", "--consistency=s"]).lines == ["p1", "v1"]
                }
            }
            // Every member replays the entry after a restart and serves on.
            for m in ms { #expect(try await m.stop() == 0, "\(m.name) stopped cleanly") }
            for m in ms { try await m.start() }
            try await E2E.waitUntil("cluster back after the restart", limit: .seconds(20)) {
                try await ms[2].ctl("put", "after", "restart").status == 0
            }
            for m in ms {
                #expect(try await m.ctl("get", "p1").lines == ["p1", "v1"], "\(m.name)")
            }
        }
    }

    /// A full disk under the data directory: the member stops with a non-zero exit (it never
    /// keeps serving without its log), and once there is room again it comes back with every
    /// acknowledged write.
    @Test(.enabled(if: getuid() == 0, "needs root to mount a small tmpfs"))
    func fullDiskStopsTheMemberAndLosesNothing() async throws {
        let mountPoint = try E2E.tempDir("fulldisk")
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        guard try runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=80m", "tmpfs", mountPoint]) == 0 else {
            Issue.record("mount -t tmpfs failed; cannot run the disk-full test here")
            return
        }
        defer { _ = try? runTool("/bin/umount", ["-l", mountPoint]) }
        let m = try Member(name: "full")
        let dataDir = mountPoint + "/data"
        m.dataDir = dataDir
        defer { Task { await m.cleanUp() } }
        try await m.start()
        try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
            try await m.ctl("put", "warm", "up").status == 0
        }
        // 1 MiB values (from stdin) until the disk is full: each acknowledged one is remembered.
        let value = String(repeating: "x", count: 1 << 20)
        var acknowledged: [String] = []
        var exit: Int32?
        for i in 0..<200 {
            let r = try await m.ctl(["put", "big\(i)"], input: value)
            if r.status == 0 { acknowledged.append("big\(i)") }
            if let s = m.exitStatus { exit = s; break }
        }
        if exit == nil {
            exit = try await m.waitExit(limit: .seconds(20))
        }
        #expect(exit != 0 && exit != nil, "the member must stop on a full disk, not keep serving")
        #expect(m.stderrText.contains("raft loop failed"), "log: \(m.stderrText.suffix(2000))")
        #expect(acknowledged.count > 5, "some writes were acknowledged before the disk filled")
        // Room again: the member restarts and has every acknowledged write.
        #expect(try runTool("/bin/mount", ["-o", "remount,size=400m", mountPoint]) == 0)
        try await m.start()
        try await E2E.waitUntil("restarted member serves", limit: .seconds(20)) {
            try await m.ctl("get", "warm").status == 0
        }
        let keys = try await m.ctl("get", "big", "--prefix", "--keys-only").lines
        for k in acknowledged { #expect(keys.contains(k), "acknowledged \(k) lost") }
    }
}

/// Runs a system tool to completion; returns its exit status.
func runTool(_ path: String, _ args: [String]) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    try Child.launching { try p.run() }
    p.waitUntilExit()
    return p.terminationStatus
}

extension E2ERobustnessTests {
    /// etcd's disaster recovery: every member but one is lost; `--force-new-cluster` restarts
    /// the survivor as a one-member cluster with all its data, and it stays one after a plain
    /// restart.
    @Test func forceNewClusterKeepsTheDataOfTheSurvivor() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k0", "v0").status == 0
            }
            for i in 1...20 { #expect(try await ms[i % 3].ctl("put", "k\(i)", "v\(i)").lines == ["OK"]) }
            for m in ms { #expect(try await m.stop() == 0) }
            // Only the third member comes back, forced into a cluster of its own.
            let survivor = ms[2]
            survivor.extraArgs += ["--force-new-cluster"]
            try await survivor.start()
            try await E2E.waitUntil("the survivor leads alone", limit: .seconds(20)) {
                try await survivor.ctl("put", "after", "force").status == 0
            }
            #expect(survivor.stderrText.contains("forcing a new one-member cluster"))
            let list = try await survivor.ctl("member", "list")
            #expect(list.lines.count == 1 && list.stdout.contains(survivor.name), "member list: \(list.stdout)")
            #expect(try await survivor.ctl("get", "k", "--prefix", "--keys-only").lines.count == 21)
            // A plain restart keeps the one-member configuration.
            survivor.extraArgs.removeAll { $0 == "--force-new-cluster" }
            #expect(try await survivor.stop() == 0)
            try await survivor.start()
            try await E2E.waitUntil("the survivor serves after a plain restart", limit: .seconds(20)) {
                try await survivor.ctl("put", "again", "ok").status == 0
            }
            #expect(try await survivor.ctl("member", "list").lines.count == 1)
            #expect(try await survivor.ctl("get", "k20").lines == ["k20", "v20"])
        }
    }
}
