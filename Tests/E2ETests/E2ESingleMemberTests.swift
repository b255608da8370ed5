import Foundation
import Testing

/// One `swetcd` member driven by Debian's `etcdctl` 3.4.
@Suite("E2E single member", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2ESingleMemberTests {
    @Test func putGetDeleteWithRangeOptions() async throws {
        try await Member.with { m in
            for (k, v) in [("a", "1"), ("b", "2"), ("foo1", "x"), ("foo2", "yy"), ("foo3", "zzz")] {
                let r = try await m.ctl("put", k, v)
                #expect(r.status == 0 && r.lines == ["OK"], "\(r)")
            }
            #expect(try await m.ctl("get", "a").lines == ["a", "1"])
            #expect(try await m.ctl("get", "foo", "--prefix", "--keys-only").lines == ["foo1", "foo2", "foo3"])
            #expect(try await m.ctl("get", "foo", "--prefix", "--limit=2").lines == ["foo1", "x", "foo2", "yy"])
            #expect(try await m.ctl("get", "foo", "--prefix", "--keys-only", "--sort-by=VALUE", "--order=DESCEND").lines
                    == ["foo3", "foo2", "foo1"])
            // Range [a, foo2): a, b, foo1.
            #expect(try await m.ctl("get", "a", "foo2", "--keys-only").lines == ["a", "b", "foo1"])
            let count = try await m.ctl("get", "foo", "--prefix", "-w", "json")
            #expect(count.stdout.contains("\"count\":3"), "\(count)")
            let aRev = try #require(Self.number("mod_revision", try await m.ctl("get", "a", "-w", "json").stdout))
            _ = try await m.ctl("put", "a", "changed")
            #expect(try await m.ctl("get", "a", "--rev=\(aRev)").lines == ["a", "1"])
            #expect(try await m.ctl("get", "a").lines == ["a", "changed"])
            let del = try await m.ctl("del", "foo", "--prefix")
            #expect(del.lines == ["3"], "\(del)")
            #expect(try await m.ctl("get", "foo", "--prefix").lines.isEmpty)
            #expect(try await m.ctl("del", "b", "--prev-kv").lines == ["1", "b", "2"])
            let empty = try await m.ctl("put", "", "v")
            #expect(empty.status != 0)
            #expect(empty.stderr.contains("key is not provided"), "\(empty)")
        }
    }

    @Test func txnCompareAndSwap() async throws {
        try await Member.with { m in
            _ = try await m.ctl("put", "k", "v1")
            let script = "value(\"k\") = \"v1\"\n\nput k v2\n\nget k\n\n"
            let ok = try await m.ctl(["txn", "--interactive=false"], input: script)
            #expect(ok.lines.first == "SUCCESS", "\(ok)")
            #expect(try await m.ctl("get", "k").lines == ["k", "v2"])
            let failed = try await m.ctl(["txn", "--interactive=false"], input: script)
            #expect(failed.lines.first == "FAILURE", "\(failed)")
            #expect(try await m.ctl("get", "k").lines == ["k", "v2"])
        }
    }

    @Test func watchLiveHistoricalAndPrefix() async throws {
        try await Member.with { m in
            _ = try await m.ctl("put", "w", "old")
            let live = try m.watch(["--prefix", "w"])
            // The watch is registered once the server has answered its create request; a
            // put after that must be seen. Retry the first put until the watcher reports it.
            try await E2E.waitUntil("watch registration") {
                _ = try await m.ctl("put", "w1", "a")
                return live.stdout.contains("w1")
            }
            _ = try await m.ctl("del", "w")
            try await E2E.waitUntil("the delete event") { live.stdout.contains("DELETE\nw\n") }
            live.signal(SIGTERM)
            // Historical: from revision 1 the whole history of "w" replays.
            let hist = try m.watch(["--rev=1", "w"])
            let h = try await hist.waitLines(5)
            #expect(Array(h.prefix(5)) == ["PUT", "w", "old", "DELETE", "w"], "\(h)")
            hist.signal(SIGTERM)
        }
    }

    @Test func leaseLifecycleAndExpiry() async throws {
        try await Member.with { m in
            let grant = try await m.ctl("lease", "grant", "60")
            let id = try #require(grant.stdout.split(separator: " ").dropFirst().first.map(String.init), "\(grant)")
            #expect(grant.stdout.contains("granted with TTL(60s)"))
            #expect(try await m.ctl("put", "lk", "v", "--lease=\(id)").status == 0)
            let ka = try await m.ctl("lease", "keep-alive", "--once", id)
            #expect(ka.stdout.contains("keepalived with TTL(60)"), "\(ka)")
            let ttl = try await m.ctl("lease", "timetolive", id, "--keys")
            #expect(ttl.stdout.contains("attached keys([lk])"), "\(ttl)")
            #expect(try await m.ctl("lease", "list").stdout.contains(id))
            let revoke = try await m.ctl("lease", "revoke", id)
            #expect(revoke.stdout.contains("revoked"), "\(revoke)")
            #expect(try await m.ctl("get", "lk").lines.isEmpty)
            let gone = try await m.ctl("lease", "timetolive", id)
            #expect(gone.stdout.contains("already expired"), "\(gone)")
            let missing = try await m.ctl("put", "x", "v", "--lease=\(id)")
            #expect(missing.stderr.contains("requested lease not found"), "\(missing)")

            // Expiry: a 1 s lease (the minimum for a 500 ms election timeout) is revoked by the
            // leader; the watch sees the key's deletion.
            let short = try await m.ctl("lease", "grant", "1")
            let sid = try #require(short.stdout.split(separator: " ").dropFirst().first.map(String.init))
            _ = try await m.ctl("put", "ek", "v", "--lease=\(sid)")
            let w = try m.watch(["ek", "--rev=1"])
            let lines = try await w.waitLines(5, limit: .seconds(15))
            #expect(Array(lines.prefix(5)) == ["PUT", "ek", "v", "DELETE", "ek"], "\(lines)")
            w.signal(SIGTERM)
        }
    }

    @Test func compactionThenOldRevision() async throws {
        try await Member.with { m in
            var revs: [Int] = []
            for v in ["1", "2", "3"] {
                _ = try await m.ctl("put", "c", v)
                revs.append(try #require(Self.number("mod_revision", try await m.ctl("get", "c", "-w", "json").stdout)))
            }
            let c = try await m.ctl("compaction", "\(revs[1])")
            #expect(c.stdout.contains("compacted revision \(revs[1])"), "\(c)")
            let old = try await m.ctl("get", "c", "--rev=\(revs[0])")
            #expect(old.status != 0)
            #expect(old.stderr.contains("mvcc: required revision has been compacted"), "\(old)")
            #expect(try await m.ctl("get", "c", "--rev=\(revs[1])").lines == ["c", "2"])
            let future = try await m.ctl("get", "c", "--rev=99")
            #expect(future.stderr.contains("mvcc: required revision is a future revision"), "\(future)")
        }
    }

    @Test func restartKeepsDataAndRevision() async throws {
        let m = try Member()
        do {
            try await m.start()
            for i in 0..<5 { _ = try await m.ctl("put", "r\(i)", "v\(i)") }
            let before = try #require(Self.number("revision", try await m.ctl("get", "r0", "-w", "json").stdout))
            // Open streams (a watch, a keep-alive) must not hold up a graceful stop.
            let watch = try m.watch(["r0", "--rev=1"])
            _ = try await watch.waitLines(3)
            let lease = try await m.ctl("lease", "grant", "100")
            let id = try #require(lease.stdout.split(separator: " ").dropFirst().first.map(String.init))
            let keepAlive = try etcdctlProcess(m.endpoint, ["lease", "keep-alive", id], limit: 30)
            try keepAlive.start()
            _ = try await keepAlive.waitLines(1)
            #expect(try await m.stop() == 0)
            watch.signal(SIGTERM)
            keepAlive.signal(SIGTERM)
            try await m.start()
            #expect(try await m.ctl("get", "r", "--prefix", "--keys-only").lines == ["r0", "r1", "r2", "r3", "r4"])
            let after = try await m.ctl("get", "r0", "-w", "json")
            #expect(Self.number("revision", after.stdout) == before, "\(after)")
            // Writes continue from the restored revision.
            _ = try await m.ctl("put", "r5", "v")
            #expect(Self.number("revision", try await m.ctl("get", "r5", "-w", "json").stdout) == before + 1)
        } catch {
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    @Test func killNineLosesNothingAcknowledged() async throws {
        let m = try Member()
        do {
            try await m.start()
            var acked = 0
            for i in 0..<30 where try await m.ctl("put", "k\(i)", "v\(i)").status == 0 { acked += 1 }
            #expect(acked == 30)
            try await m.crash()
            try await m.start()
            let count = try await m.ctl("get", "k", "--prefix", "--keys-only", "-w", "json")
            #expect(count.stdout.contains("\"count\":30"), "\(count)")
            #expect(try await m.ctl("get", "k29").lines == ["k29", "v29"])
        } catch {
            await m.cleanUp()
            throw error
        }
        await m.cleanUp()
    }

    @Test func badFlagExitsWithOne() async throws {
        let c = try Child(try #require(E2E.swetcdPath), ["--no-such-flag"])
        try c.start()
        #expect(try await c.waitExit() == 1)
        #expect(c.stderr.contains("no-such-flag"), "\(c.stderr)")
    }

    @Test func foreignDataDirIsRefusedUntouched() async throws {
        let dir = try E2E.tempDir("foreign")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/member/wal", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: dir + "/member/wal/0000000000000000-0000000000000000.wal",
                                       contents: Data(repeating: 7, count: 64))
        let port = try E2E.freePort()
        let c = try Child(try #require(E2E.swetcdPath), ["--data-dir", dir, "--listen-client-urls", "http://127.0.0.1:\(port)",
                                                         "--advertise-client-urls", "http://127.0.0.1:\(port)"])
        try c.start()
        #expect(try await c.waitExit() == 1)
        #expect(c.stderr.contains("not written by swetcd"), "\(c.stderr)")
        let files = try FileManager.default.subpathsOfDirectory(atPath: dir).sorted()
        #expect(files == ["member", "member/wal", "member/wal/0000000000000000-0000000000000000.wal"])
    }

    /// The first number named `field` in etcdctl's JSON output.
    static func number(_ field: String, _ json: String) -> Int? {
        guard let r = json.range(of: "\"\(field)\":") else { return nil }
        return Int(json[r.upperBound...].prefix { $0.isNumber })
    }
}
