import Foundation
import LMDBBackend
import MVCC
import Storage
import Testing

/// `swetcdutl` run as a process on data directories made here with the Storage and MVCC APIs.
@Suite struct SwetcdutlTests {
    static let memberID: UInt64 = 0x8e9e05c52164694d
    static let clusterID: UInt64 = 0xcdf818194e3a8c32

    /// What `makeDataDir` wrote, to compare with the tool's report.
    struct Made {
        var dir: TempDir
        var dataDir: DataDir
        var lastIndex: UInt64
        var hardState: WALHardState
        var snapshotIndex: UInt64
        var revision: Int64
        var compactRevision: Int64
        var liveKeys: Int
        var hash: UInt32
    }

    /// A data directory as a member would leave it: a WAL with entries, hard states and a
    /// snapshot marker, a snapshot file, and a backend with keys, a delete and a compaction.
    static func makeDataDir() throws -> Made {
        let dir = TempDir("util")
        let dataDir = DataDir(path: dir.sub("data"))
        try dataDir.prepare()
        let wal = try WAL.create(directory: dataDir.walDirectory,
                                 metadata: WALMetadata(memberID: memberID, clusterID: clusterID).encoded,
                                 options: WALOptions(segmentSize: 64 << 10))
        var hs = WALHardState()
        for i in UInt64(1)...40 {
            hs = WALHardState(term: i < 20 ? 2 : 3, vote: memberID, commit: i)
            _ = try wal.save(hardState: hs, entries: [WALEntry(index: i, term: hs.term, data: Array(repeating: UInt8(i), count: Int(i) * 10))])
            if i == 30 {
                try Snapshotter(directory: dataDir.snapDirectory).save(StoredSnapshot(index: 30, term: 3, data: [1, 2, 3]))
                try wal.saveSnapshot(WALSnapshotMarker(index: 30, term: 3))
            }
        }
        try wal.sync()
        try wal.close()

        var o = Backend.Options()
        o.sync = false
        let backend = try Backend(path: dataDir.backendPath, options: o)
        let store = try MVCCStore(backend: backend)
        for i in 0..<25 { _ = try store.put(PutRequest(key: Array("k\(i % 20)".utf8), value: Array("v\(i)".utf8))) }
        _ = try store.deleteRange(DeleteRangeRequest(key: Array("k3".utf8)))
        try store.compact(10)
        try backend.batch { try backend.setConsistentIndex(40, term: 3) }
        try backend.commit()
        let revision = store.currentRevision
        let hash = try backend.hash()
        try backend.close()
        return Made(dir: dir, dataDir: dataDir, lastIndex: 40, hardState: hs, snapshotIndex: 30,
                    revision: revision, compactRevision: 10, liveKeys: 19, hash: hash)
    }

    static func fileBytes(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: dir)
        while let f = e?.nextObject() as? String {
            let p = dir + "/" + f
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue {
                out[f] = try Data(contentsOf: URL(fileURLWithPath: p))
            }
        }
        return out
    }

    struct StatusJSON: Decodable {
        struct WAL: Decodable {
            struct HS: Decodable { var term: UInt64; var vote: UInt64; var commit: UInt64 }
            var lastIndex: UInt64, lastTerm: UInt64, snapshotIndex: UInt64, entries: Int, hardState: HS
            var segments: [String]
        }
        struct Backend: Decodable {
            var size: Int64, sizeInUse: Int64, consistentIndex: UInt64, consistentTerm: UInt64
            var currentRevision: Int64, compactRevision: Int64, keys: Int, revisions: Int, hash: UInt32
        }
        struct Snap: Decodable { var file: String; var index: UInt64?; var error: String? }
        var memberID: UInt64, clusterID: UInt64
        var wal: WAL
        var backend: Backend?
        var snapshots: [Snap]
        var problems: [String]
    }

    @Test func versionPrintsVersions() async throws {
        let r = try await Tools.run(try Tools.binary("swetcdutl"), ["version"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("swetcdutl version: "))
        #expect(r.stdout.contains("API version: 3.5"))
    }

    @Test func statusReportsWhatWasWrittenAndModifiesNothing() async throws {
        let made = try Self.makeDataDir()
        let before = try Self.fileBytes(made.dataDir.path)
        let util = try Tools.binary("swetcdutl")

        let r = try await Tools.run(util, ["status", "--data-dir", made.dataDir.path, "-w", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let s = try JSONDecoder().decode(StatusJSON.self, from: Data(r.stdout.utf8))
        #expect(s.memberID == Self.memberID)
        #expect(s.clusterID == Self.clusterID)
        #expect(s.wal.lastIndex == made.lastIndex)
        #expect(s.wal.lastTerm == 3)
        #expect(s.wal.snapshotIndex == made.snapshotIndex)
        #expect(s.wal.entries == 10)
        #expect(s.wal.hardState.commit == made.hardState.commit)
        #expect(s.wal.hardState.term == made.hardState.term)
        #expect(s.wal.hardState.vote == Self.memberID)
        #expect(s.snapshots.count == 1 && s.snapshots.first?.index == 30 && s.snapshots.first?.error == nil)
        let b = try #require(s.backend)
        #expect(b.consistentIndex == 40 && b.consistentTerm == 3)
        #expect(b.currentRevision == made.revision)
        #expect(b.compactRevision == made.compactRevision)
        #expect(b.keys == made.liveKeys)
        #expect(b.revisions > 0)
        #expect(b.hash == made.hash)
        #expect(b.size > 0 && b.sizeInUse > 0 && b.sizeInUse <= b.size)
        #expect(s.problems.isEmpty)

        let table = try await Tools.run(util, ["status", "--data-dir", made.dataDir.path])
        #expect(table.status == 0)
        #expect(table.stdout.contains("8e9e05c52164694d"))
        #expect(table.stdout.contains("| compact revision"))

        // Nothing was changed by either run (LMDB's lock file aside, which holds no data).
        let after = try Self.fileBytes(made.dataDir.path)
        #expect(Set(before.keys.filter { !$0.hasSuffix("-lock") }) == Set(after.keys.filter { !$0.hasSuffix("-lock") }))
        for (f, data) in before where !f.hasSuffix("-lock") { #expect(after[f] == data, "\(f) changed") }
    }

    @Test func walDumpListsEveryRecord() async throws {
        let made = try Self.makeDataDir()
        let util = try Tools.binary("swetcdutl")
        let r = try await Tools.run(util, ["wal", "dump", "--data-dir", made.dataDir.path, "-w", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        struct Line: Decodable { var file: String; var offset: Int64; var type: String; var index: UInt64?; var term: UInt64? }
        let lines = try r.stdout.split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }
        let entries = lines.filter { $0.type == "entry" }
        #expect(entries.map(\.index) == (1...40).map { Optional($0) })
        #expect(entries.last?.term == 3)
        #expect(lines.contains { $0.type == "snapshot" && $0.index == 30 })
        #expect(lines.contains { $0.type == "metadata" })
        #expect(lines.filter { $0.type == "hard-state" }.count == 40)
        // Offsets grow within each file.
        for file in Set(lines.map(\.file)) {
            let offs = lines.filter { $0.file == file }.map(\.offset)
            #expect(offs == offs.sorted() && offs.first == 0)
        }

        let table = try await Tools.run(util, ["wal", "dump", "--wal-dir", made.dataDir.walDirectory])
        #expect(table.status == 0)
        #expect(table.stdout.contains("member-id=8e9e05c52164694d cluster-id=cdf818194e3a8c32"))
        #expect(table.stdout.contains("40 entries"))
    }

    @Test func damagedWALIsReportedWithFileAndOffset() async throws {
        let made = try Self.makeDataDir()
        let util = try Tools.binary("swetcdutl")
        // Find entry 5's frame and flip a payload byte.
        let dump = try await Tools.run(util, ["wal", "dump", "--data-dir", made.dataDir.path, "-w", "json"])
        struct Line: Decodable { var file: String; var offset: Int64; var type: String; var index: UInt64? }
        let lines = try dump.stdout.split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }
        let target = try #require(lines.first { $0.type == "entry" && $0.index == 5 })
        let h = try #require(FileHandle(forUpdatingAtPath: target.file))
        try h.seek(toOffset: UInt64(target.offset + 20))
        let byte = try #require(try h.read(upToCount: 1)).first ?? 0
        try h.seek(toOffset: UInt64(target.offset + 20))
        try h.write(contentsOf: Data([byte ^ 0xFF]))
        try h.close()
        let before = try Self.fileBytes(made.dataDir.path)

        let r = try await Tools.run(util, ["wal", "dump", "--data-dir", made.dataDir.path])
        #expect(r.status == 1)
        #expect(r.stdout.contains("DAMAGED"))
        #expect(r.stderr.contains("WAL is damaged"))
        #expect(r.stderr.contains("\(target.file) at offset \(target.offset)"))
        // Records after the damage are still listed.
        #expect(r.stdout.contains("entry") && r.stdout.split(separator: "\n").contains { $0.contains(" 40 ") })

        let st = try await Tools.run(util, ["status", "--data-dir", made.dataDir.path])
        #expect(st.status == 1)
        #expect(st.stderr.contains("cannot read the WAL"))
        #expect(try Self.fileBytes(made.dataDir.path) == before, "the damaged WAL was modified")
    }

    @Test func damagedBackendAndSnapshotAreReported() async throws {
        let made = try Self.makeDataDir()
        let util = try Tools.binary("swetcdutl")
        let snap = try #require(try Snapshotter(directory: made.dataDir.snapDirectory).fileNames().first)
        let snapPath = made.dataDir.snapDirectory + "/" + snap
        var bytes = try Data(contentsOf: URL(fileURLWithPath: snapPath))
        bytes[bytes.count - 6] ^= 0x55
        try bytes.write(to: URL(fileURLWithPath: snapPath))
        try Data(repeating: 0xAB, count: 64 << 10).write(to: URL(fileURLWithPath: made.dataDir.backendPath))

        let r = try await Tools.run(util, ["status", "--data-dir", made.dataDir.path, "-w", "json"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("snapshot file \(snapPath) is damaged"))
        #expect(r.stderr.contains("backend \(made.dataDir.backendPath) cannot be read"))
        let s = try JSONDecoder().decode(StatusJSON.self, from: Data(r.stdout.utf8))
        #expect(s.backend == nil)
        #expect(s.problems.count == 2)
        #expect(s.memberID == Self.memberID)
    }

    @Test func missingAndForeignDirectoriesAreRefused() async throws {
        let util = try Tools.binary("swetcdutl")
        let dir = TempDir("util")
        let missing = try await Tools.run(util, ["status", "--data-dir", dir.sub("nope")])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("does not exist"))

        // The layout etcd writes: member/wal/<seq>-<index>.wal in etcd's own record format.
        let etcd = dir.sub("etcd")
        try FileManager.default.createDirectory(atPath: etcd + "/member/wal", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: etcd + "/member/snap", withIntermediateDirectories: true)
        var etcdRecord = Data([0x0a, 0, 0, 0, 0, 0, 0, 0x84, 0x08, 0x04])
        etcdRecord.append(Data(repeating: 0, count: 4096))
        try etcdRecord.write(to: URL(fileURLWithPath: etcd + "/member/wal/0000000000000000-0000000000000000.wal"))
        let before = try Self.fileBytes(etcd)
        for args in [["status", "--data-dir", etcd], ["wal", "dump", "--data-dir", etcd]] {
            let r = try await Tools.run(util, args)
            #expect(r.status == 1, "\(args)")
            #expect(r.stderr.contains("is not a swetcd data directory"), "\(r.stderr)")
        }
        #expect(try Self.fileBytes(etcd) == before)

        let empty = dir.sub("empty")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let e = try await Tools.run(util, ["status", "--data-dir", empty])
        #expect(e.status == 1)
        #expect(e.stderr.contains("holds no swetcd data"))

        let usage = try await Tools.run(util, ["status"])
        #expect(usage.status != 0)
        #expect(usage.stderr.contains("--data-dir"))
    }
}
