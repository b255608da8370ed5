import Foundation
import Testing

/// Quota, alarms and auto-compaction of a real `swetcd` driven by Debian's `etcdctl` 3.4.
@Suite("E2E quota, alarms, auto-compaction", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2EQuotaTests {
    /// GET `path` on the member's client port with curl: (HTTP status, body).
    private func http(_ m: Member, _ path: String) async throws -> (Int, String) {
        let c = try Child("/usr/bin/curl", ["-s", "-m", "10", "-w", "\n%{http_code}", "http://\(m.endpoint)\(path)"])
        try c.start()
        _ = try await c.waitExit(limit: .seconds(15))
        let lines = c.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    @Test func nospaceAlarmListHealthRestartAndRecovery() async throws {
        let m = try Member(extraArgs: ["--quota-backend-bytes", "\(256 * 1024)"])
        do {
            try await m.start()
            let id = try #require(m.memberID.flatMap { UInt64($0, radix: 16) })
            let big = String(repeating: "x", count: 32 * 1024)
            var refused: CommandOutput?
            for i in 0..<60 {
                let r = try await m.ctl("put", "k\(i)", big)
                if r.status != 0 {
                    refused = r
                    break
                }
            }
            let put = try #require(refused, "puts never hit the quota")
            #expect(put.stderr.contains("etcdserver: mvcc: database space exceeded"), "\(put)")

            let list = try await m.ctl("alarm", "list")
            #expect(list.lines == ["memberID:\(id) alarm:NOSPACE "], "\(list)")
            let status = try await m.ctl("endpoint", "status", "-w", "json")
            #expect(status.stdout.contains("\"errors\":[\"memberID:\(id) alarm:NOSPACE \"]"), "\(status)")
            // Reads, deletes and compaction still work.
            #expect(try await m.ctl("get", "k0", "--keys-only").lines == ["k0"])
            #expect(try await m.ctl("del", "k0").lines == ["1"])
            let rev = try #require(E2ESingleMemberTests.number("revision", try await m.ctl("get", "k1", "-w", "json").stdout))
            #expect(try await m.ctl("compaction", "\(rev)").status == 0)
            let grant = try await m.ctl("lease", "grant", "60")
            #expect(grant.stderr.contains("database space exceeded"), "\(grant)")
            // /health reports the alarm unless told to ignore it.
            let health = try await http(m, "/health")
            #expect(health.0 == 503 && health.1.contains("\"health\":\"false\"") && health.1.contains("NOSPACE"), "\(health)")
            let excluded = try await http(m, "/health?exclude=NOSPACE")
            #expect(excluded.0 == 200 && excluded.1.contains("\"health\":\"true\""), "\(excluded)")

            // The alarm survives a restart and still refuses puts.
            #expect(try await m.stop() == 0)
            try await m.start()
            #expect(try await m.ctl("alarm", "list").lines == ["memberID:\(id) alarm:NOSPACE "])
            #expect(try await m.ctl("put", "after", "v").stderr.contains("database space exceeded"))

            // etcd's recovery: delete, compact, defragment (the file shrinks below the quota), disarm.
            _ = try await m.ctl("del", "k", "--prefix")
            let last = try #require(E2ESingleMemberTests.number("revision", try await m.ctl("get", "k", "-w", "json").stdout))
            #expect(try await m.ctl("compaction", "--physical", "\(last)").status == 0)
            let defrag = try await m.ctl("defrag")
            #expect(defrag.status == 0, "\(defrag)")
            let disarm = try await m.ctl("alarm", "disarm")
            #expect(disarm.status == 0 && disarm.stdout.contains("alarm:NOSPACE"), "\(disarm)")
            #expect(try await m.ctl("alarm", "list").lines.isEmpty)
            let after = try await m.ctl("put", "after", "v")
            #expect(after.lines == ["OK"], "\(after)")
            #expect(try await http(m, "/health").0 == 200)
        } catch {
            Issue.record("swetcd log tail: \((m.child?.stderr ?? "").suffix(3000))")
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    /// Periodic mode with a 2 s retention: a sample every 200 ms, a compaction every 2 s to the
    /// revision of 2 s before; an old revision soon reads as compacted.
    @Test func periodicAutoCompaction() async throws {
        try await Member.with(extraArgs: ["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"]) { m in
            _ = try await m.ctl("put", "a", "1")
            let old = try #require(E2ESingleMemberTests.number("mod_revision", try await m.ctl("get", "a", "-w", "json").stdout))
            _ = try await m.ctl("put", "a", "2")
            #expect(try await m.ctl("get", "a", "--rev=\(old)").lines == ["a", "1"])
            try await E2E.waitUntil("revision \(old) compacted", limit: .seconds(20)) {
                try await m.ctl("get", "a", "--rev=\(old)").stderr.contains("required revision has been compacted")
            }
            #expect(try await m.ctl("get", "a").lines == ["a", "2"])
            // HashKV reports the compaction (etcdctl omits the field while it is 0).
            let hashKV = try await m.ctl("endpoint", "hashkv", "-w", "json").stdout
            #expect((E2ESingleMemberTests.number("compact_revision", hashKV) ?? 0) >= old, "\(hashKV)")
            let log = m.child?.stderr ?? ""
            #expect(log.contains("\"completed auto periodic compaction\""), "\(log.suffix(2000))")
            let metrics = try await http(m, "/metrics")
            let line = metrics.1.split(separator: "\n").first { $0.hasPrefix("swetcd_server_auto_compactions_total ") }
            #expect((line?.split(separator: " ").last.flatMap { Double($0) } ?? 0) >= 1, "\(String(describing: line))")
        }
    }
}
