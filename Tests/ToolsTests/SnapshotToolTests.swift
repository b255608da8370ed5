import Foundation
import LMDBBackend
import MVCC
import Storage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `swetcdutl snapshot status|restore` and `swetcdutl defrag`, run as processes.
@Suite struct SnapshotToolTests {
    /// A snapshot file as `etcdctl snapshot save` leaves it, and what it holds.
    struct MadeSnapshot {
        var dir: TempDir
        var file: String
        var dbSize: Int64
        var revision: Int64
        var liveKeys: Int
        var totalEntries: Int
        var hash: UInt32
        var leases: [(key: [UInt8], value: [UInt8])]
    }

    static func sha256(_ path: String) async throws -> Data {
        let r = try await Tools.run(try #require(Tools.which("sha256sum")), [path])
        let hexText = try #require(r.stdout.split(separator: " ").first)
        var out = Data()
        var i = hexText.startIndex
        while i < hexText.endIndex {
            let j = hexText.index(i, offsetBy: 2)
            out.append(try #require(UInt8(hexText[i..<j], radix: 16)))
            i = j
        }
        return out
    }

    /// A backend with keys, overwrites, a delete, leases and old membership, copied to a file
    /// with the SHA-256 trailer appended (`trailer: false` leaves it off).
    static func makeSnapshot(trailer: Bool = true) async throws -> MadeSnapshot {
        let dir = TempDir("snap")
        var o = Backend.Options()
        o.sync = false
        let backend = try Backend(path: dir.sub("source.db"), options: o)
        let store = try MVCCStore(backend: backend)
        for i in 0..<30 { _ = try store.put(PutRequest(key: Array("key\(i % 25)".utf8), value: Array("value\(i)".utf8))) }
        _ = try store.deleteRange(DeleteRangeRequest(key: Array("key7".utf8)))
        try backend.put(.lease, key: BigEndian.bytes(0x1234), value: [1, 2, 3, 4])
        try backend.put(.members, key: BigEndian.bytes(42), value: Array("{\"old\":true}".utf8))
        try backend.put(.membersRemoved, key: BigEndian.bytes(43), value: Array("removed".utf8))
        try backend.setConsistentIndex(77, term: 5)
        try backend.commit()
        let total = try backend.read { r in
            try BackendBucket.allCases.reduce(0) { $0 + (try r.range($1, from: [], to: nil).count) }
        }
        let leases = try backend.read { try $0.range(.lease, from: [], to: nil) }
        let hash = try backend.hash()
        let file = dir.sub("snapshot.db")
        try backend.copy(toPath: file)
        let revision = store.currentRevision
        try backend.close()
        let dbSize = try #require(try FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber).int64Value
        if trailer {
            let digest = try await sha256(file)
            let h = try #require(FileHandle(forWritingAtPath: file))
            try h.seekToEnd()
            try h.write(contentsOf: digest)
            try h.close()
        }
        return MadeSnapshot(dir: dir, file: file, dbSize: dbSize, revision: revision, liveKeys: 24,
                            totalEntries: total, hash: hash, leases: leases)
    }

    struct StatusJSON: Decodable { var hash: UInt32; var revision: Int64; var totalKey: Int; var totalSize: Int64 }

    @Test func statusPrintsHashRevisionKeysAndSize() async throws {
        let made = try await Self.makeSnapshot()
        let util = try Tools.binary("swetcdutl")
        let before = try Data(contentsOf: URL(fileURLWithPath: made.file))
        let json = try await Tools.run(util, ["snapshot", "status", made.file, "-w", "json"])
        #expect(json.status == 0, "\(json.stderr)")
        let s = try JSONDecoder().decode(StatusJSON.self, from: Data(json.stdout.utf8))
        #expect(s.hash == made.hash)
        #expect(s.revision == made.revision)
        #expect(s.totalKey == made.totalEntries)
        #expect(s.totalSize == made.dbSize)

        let simple = try await Tools.run(util, ["snapshot", "status", made.file])
        #expect(simple.status == 0)
        #expect(simple.stdout.hasPrefix("\(String(made.hash, radix: 16)), \(made.revision), \(made.totalEntries), "))
        #expect(simple.stdout.contains(" kB"))
        let table = try await Tools.run(util, ["snapshot", "status", made.file, "-w", "table"])
        #expect(table.stdout.contains("| HASH"))
        #expect(table.stdout.contains("| TOTAL KEYS"))
        // The file is untouched and no lock file appeared beside it.
        #expect(try Data(contentsOf: URL(fileURLWithPath: made.file)) == before)
        #expect(!FileManager.default.fileExists(atPath: made.file + "-lock"))
    }

    @Test func damagedTruncatedAndForeignFilesGiveClearErrors() async throws {
        let made = try await Self.makeSnapshot()
        let util = try Tools.binary("swetcdutl")
        let good = try Data(contentsOf: URL(fileURLWithPath: made.file))
        func attempt(_ name: String, _ bytes: Data?, _ extra: [String] = [], status: Bool = true) async throws -> String {
            let path = made.dir.sub(name)
            if let bytes { try bytes.write(to: URL(fileURLWithPath: path)) }
            let args = status ? ["snapshot", "status", path] : ["snapshot", "restore", path, "--data-dir", made.dir.sub(name + ".restored")] + extra
            let r = try await Tools.run(util, args)
            #expect(r.status == 1, "\(name): \(r.stdout) \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: made.dir.sub(name + ".restored")), "\(name): nothing restored")
            return r.stderr
        }
        var flipped = good
        flipped[4096 + 100] ^= 0x40
        #expect(try await attempt("flipped", flipped).contains("is damaged: its SHA-256 trailer is"))
        #expect(try await attempt("flipped", nil, status: false).contains("is damaged"))
        #expect(try await attempt("cut", good.prefix(good.count - 100)).contains("truncated or not a snapshot"))
        #expect(try await attempt("empty", Data()).contains("is empty"))
        #expect(try await attempt("missing", nil).contains("cannot open snapshot file"))
        // No trailer: restore insists on --skip-hash-check.
        let bare = good.prefix(Int(made.dbSize))
        #expect(try await attempt("bare", bare, status: false).contains("--skip-hash-check"))
        // Cut at a page boundary, without trailer: LMDB would fault on the missing pages.
        let half = bare.prefix((bare.count / 2) / 4096 * 4096)
        #expect(try await attempt("half", half, ["--skip-hash-check"], status: false).contains("truncated"))
        #expect(try await attempt("half", nil).contains("truncated"))
        // Garbage with a matching trailer: a correct hash of something that is not a backend.
        let garbagePath = made.dir.sub("garbage")
        try Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }).write(to: URL(fileURLWithPath: garbagePath))
        let digest = try await Self.sha256(garbagePath)
        let h = try #require(FileHandle(forWritingAtPath: garbagePath))
        try h.seekToEnd()
        try h.write(contentsOf: digest)
        try h.close()
        #expect(try await attempt("garbage", nil).contains("does not hold a swetcd backend"))
        #expect(try await attempt("garbage", nil, status: false).contains("does not hold a swetcd backend"))
    }

    struct DataDirJSON: Decodable {
        struct Backend: Decodable {
            var consistentIndex: UInt64, currentRevision: Int64, compactRevision: Int64, keys: Int, hash: UInt32
        }
        var memberID: UInt64, clusterID: UInt64
        var backend: Backend?
        var problems: [String]
    }

    @Test func restoreBuildsOneDataDirPerMember() async throws {
        let made = try await Self.makeSnapshot()
        let util = try Tools.binary("swetcdutl")
        let cluster = "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381"
        var reports: [DataDirJSON] = []
        for (name, port) in [("a", 2380), ("b", 2381)] {
            let target = made.dir.sub("restored-\(name)")
            let r = try await Tools.run(util, [
                "snapshot", "restore", made.file, "--name", name, "--initial-cluster", cluster,
                "--initial-cluster-token", "restored", "--initial-advertise-peer-urls", "http://127.0.0.1:\(port)",
                "--data-dir", target, "--bump-revision", "1000", "--mark-compacted",
            ])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout.contains("revision \(made.revision + 1000)"))
            let st = try await Tools.run(util, ["status", "--data-dir", target, "-w", "json"])
            #expect(st.status == 0, "\(st.stderr)")
            let report = try JSONDecoder().decode(DataDirJSON.self, from: Data(st.stdout.utf8))
            let b = try #require(report.backend)
            #expect(b.consistentIndex == 0)
            #expect(b.currentRevision == made.revision + 1000)
            #expect(b.compactRevision == made.revision + 1000)
            #expect(b.keys == made.liveKeys)
            reports.append(report)
            // The WAL holds the new cluster's bootstrap log: one committed conf-change entry
            // per member, term 1 (as a new cluster's first start writes it).
            let dump = try await Tools.run(util, ["wal", "dump", "--data-dir", target, "-w", "json"])
            #expect(dump.status == 0, "\(dump.stderr)")
            struct Line: Decodable { var type: String; var index: UInt64?; var term: UInt64? }
            let lines = try dump.stdout.split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }
            let entries = lines.filter { $0.type == "entry" }
            #expect(entries.map(\.index) == [1, 2] && entries.allSatisfy { $0.term == 1 }, "\(dump.stdout)")

            var o = Backend.Options()
            o.sync = false
            let backend = try Backend(path: DataDir(path: target).backendPath, options: o)
            defer { backend.abandon() }
            let (members, removed, leases) = try backend.read { r in
                (try r.range(.members, from: [], to: nil), try r.range(.membersRemoved, from: [], to: nil),
                 try r.range(.lease, from: [], to: nil))
            }
            // The server's member record: JSON {id, name, peerURLs} under the ID's 8 bytes.
            let records = try members.map { m in
                try #require(try JSONSerialization.jsonObject(with: Data(m.value)) as? [String: Any])
            }
            #expect(records.count == 2)
            #expect(records.contains { $0["name"] as? String == "a" && $0["peerURLs"] as? [String] == ["http://127.0.0.1:2380"] })
            #expect(records.contains { $0["name"] as? String == "b" && $0["peerURLs"] as? [String] == ["http://127.0.0.1:2381"] })
            for (m, r) in zip(members, records) { #expect(BigEndian.bytes((r["id"] as? NSNumber)?.uint64Value ?? 0) == m.key) }
            #expect(removed.isEmpty)
            #expect(leases.map(\.key) == made.leases.map(\.key) && leases.map(\.value) == made.leases.map(\.value))
            // Compacted at the bumped revision: each live key keeps exactly its latest revision.
            let revisions = try backend.read { try $0.range(.key, from: [], to: nil).count }
            #expect(revisions == made.liveKeys)
        }
        #expect(reports[0].clusterID == reports[1].clusterID)
        #expect(reports[0].memberID != reports[1].memberID)
        #expect(reports[0].memberID != 0 && reports[0].clusterID != 0)

        // Without --bump-revision: the snapshot's revision and history stay.
        let plain = made.dir.sub("plain")
        let r = try await Tools.run(util, ["snapshot", "restore", made.file, "--data-dir", plain])
        #expect(r.status == 0, "\(r.stderr)")
        let st = try await Tools.run(util, ["status", "--data-dir", plain, "-w", "json"])
        let b = try #require(try JSONDecoder().decode(DataDirJSON.self, from: Data(st.stdout.utf8)).backend)
        #expect(b.currentRevision == made.revision && b.compactRevision == 0)
    }

    @Test func restoreRefusesBadFlagsAndAnExistingDirectory() async throws {
        let made = try await Self.makeSnapshot()
        let util = try Tools.binary("swetcdutl")
        let busy = made.dir.sub("busy")
        try FileManager.default.createDirectory(atPath: busy, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: busy + "/file"))
        let cases: [([String], String)] = [
            (["--data-dir", busy], "not empty"),
            (["--data-dir", made.dir.sub("n1"), "--name", "nobody"], "nobody"),
            (["--data-dir", made.dir.sub("n2"), "--initial-advertise-peer-urls", "http://127.0.0.1:9"], "--initial-advertise-peer-urls"),
            (["--data-dir", made.dir.sub("n3"), "--mark-compacted"], "--bump-revision"),
        ]
        for (args, message) in cases {
            let r = try await Tools.run(util, ["snapshot", "restore", made.file] + args)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: busy) == ["file"])
        for n in ["n1", "n2", "n3"] { #expect(!FileManager.default.fileExists(atPath: made.dir.sub(n))) }
        // An existing empty directory is fine.
        let empty = made.dir.sub("empty")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let ok = try await Tools.run(util, ["snapshot", "restore", made.file, "--data-dir", empty])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(FileManager.default.fileExists(atPath: empty + "/member/snap/db"))
    }

    @Test func offlineDefragShrinksAndRefusesADirectoryInUse() async throws {
        let made = try SwetcdutlTests.makeDataDir()
        let util = try Tools.binary("swetcdutl")
        let path = made.dataDir.backendPath
        do {
            var o = Backend.Options()
            o.sync = false
            let be = try Backend(path: path, options: o)
            let value = [UInt8](repeating: 3, count: 2000)
            for i in 0..<2000 { try be.put(.lease, key: Array("filler\(i)".utf8), value: value) }
            try be.commit()
            for i in 0..<2000 { try be.delete(.lease, key: Array("filler\(i)".utf8)) }
            try be.commit()
            try be.close()
        }
        func size() throws -> Int64 { try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber).int64Value }
        let before = try size()

        // In use: the WAL directory locked (a running member), or the db open in a process.
        let fd = open(made.dataDir.walDirectory, O_RDONLY | O_DIRECTORY)
        try #require(fd >= 0)
        #expect(flock(fd, LOCK_EX | LOCK_NB) == 0)
        let locked = try await Tools.run(util, ["defrag", "--data-dir", made.dataDir.path])
        #expect(locked.status == 1)
        #expect(locked.stderr.contains("in use"), "\(locked.stderr)")
        close(fd)
        do {
            var o = Backend.Options()
            o.sync = false
            let open = try Backend(path: path, options: o)
            let r = try await Tools.run(util, ["defrag", "--data-dir", made.dataDir.path])
            #expect(r.status == 1)
            #expect(r.stderr.contains("is open in process"), "\(r.stderr)")
            try open.close()
        }
        #expect(try size() == before)

        let r = try await Tools.run(util, ["defrag", "--data-dir", made.dataDir.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Finished defragmenting etcd data[\(made.dataDir.path)]"))
        #expect(try size() < before / 4)
        let st = try await Tools.run(util, ["status", "--data-dir", made.dataDir.path, "-w", "json"])
        #expect(st.status == 0, "\(st.stderr)")
        let b = try #require(try JSONDecoder().decode(DataDirJSON.self, from: Data(st.stdout.utf8)).backend)
        #expect(b.hash == made.hash)
        #expect(b.keys == made.liveKeys)
    }
}
