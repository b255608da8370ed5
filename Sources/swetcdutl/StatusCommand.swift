import ArgumentParser
import Foundation
import LMDBBackend
import Storage

#if canImport(Glibc)
import Glibc
#endif

/// `swetcdutl status`: what a data directory holds, from the WAL, the snapshot files and the
/// backend, without modifying any of them.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Summarise a data directory: IDs, WAL, snapshots and backend.",
        discussion: """
            Refuses a directory in use by a running member (its WAL is locked). Damage found \
            in the WAL, a snapshot file or the backend is reported and makes the command exit 1.
            """
    )

    @OptionGroup var dir: DataDirOptions

    @Option(name: [.customShort("w"), .customLong("write-out")], help: "Output format: table or json.")
    var format: OutputFormat = .table

    func run() throws {
        let dataDir = try dir.checkedDataDir()
        let walDir = dir.walDir ?? dataDir.walDirectory
        try checkNotInUse(walDir)
        let status = try DataDirStatus.read(dataDir: dataDir, walDir: walDir)
        switch format {
        case .json: try printJSON(status)
        case .table: print(status.table())
        }
        if !status.problems.isEmpty {
            throw ToolError(status.problems.joined(separator: "; "))
        }
    }

    /// A running member holds an exclusive `flock` on its WAL directory.
    private func checkNotInUse(_ walDir: String) throws {
        let fd = open(walDir, O_RDONLY | O_DIRECTORY)
        guard fd >= 0 else { throw ToolError("cannot open WAL directory \(walDir): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            throw ToolError("\(walDir) is locked: the data directory is in use by a running member")
        }
        flock(fd, LOCK_UN)
    }
}

/// Everything `status` reports (its `-w json` form).
struct DataDirStatus: Encodable {
    struct HardState: Encodable { var term: UInt64; var vote: UInt64; var commit: UInt64 }
    struct WALStatus: Encodable {
        var directory: String
        var segments: [String]
        var snapshotIndex: UInt64
        var snapshotTerm: UInt64
        var lastIndex: UInt64
        var lastTerm: UInt64
        var entries: Int
        var hardState: HardState
        var tornTail: String?
    }
    struct SnapshotFile: Encodable {
        var file: String
        var size: Int64
        var index: UInt64?
        var term: UInt64?
        var error: String?
    }
    struct BackendStatus: Encodable {
        var path: String
        var size: Int64
        var sizeInUse: Int64
        var consistentIndex: UInt64
        var consistentTerm: UInt64
        var currentRevision: Int64
        var compactRevision: Int64
        /// Live keys at the current revision.
        var keys: Int
        /// Entries in the key bucket (every retained revision, tombstones included).
        var revisions: Int
        /// CRC-32C of the whole backend, as the Hash RPC.
        var hash: UInt32
    }

    var dataDir: String
    var memberID: UInt64
    var clusterID: UInt64
    var wal: WALStatus
    var snapshots: [SnapshotFile]
    var backend: BackendStatus?
    var problems: [String]

    static func read(dataDir: DataDir, walDir: String) throws -> DataDirStatus {
        var problems: [String] = []
        let markers: [WALSnapshotMarker]
        let contents: WALContents
        do {
            markers = try WAL.snapshotMarkers(directory: walDir)
        } catch {
            throw ToolError("cannot read the WAL: \(error)")
        }

        // Snapshot files: each checked; the newest one the WAL knows is where the WAL is read from.
        let snapper = Snapshotter(directory: dataDir.snapDirectory)
        var snapshots: [SnapshotFile] = []
        let names = FileManager.default.fileExists(atPath: dataDir.snapDirectory) ? try snapper.fileNames() : []
        for name in names {
            let path = (dataDir.snapDirectory as NSString).appendingPathComponent(name)
            var f = SnapshotFile(file: path, size: fileSize(path))
            do {
                let s = try snapper.load(fileName: name)
                f.index = s.index
                f.term = s.term
            } catch {
                f.error = "\(error)"
                problems.append("snapshot file \(path) is damaged: \(error)")
            }
            snapshots.append(f)
        }
        let newest: StoredSnapshot?
        do {
            newest = try snapper.loadNewest(matching: markers).snapshot
        } catch {
            throw ToolError("cannot read snapshot files: \(error)")
        }
        do {
            contents = try WAL.read(directory: walDir, snapshot: newest?.marker)
        } catch {
            throw ToolError("cannot read the WAL: \(error)")
        }
        let meta = WALMetadata(decoding: contents.metadata)
        if meta == nil { problems.append("WAL metadata is not swetcd's (\(contents.metadata.count) bytes)") }
        let segments = ((try? FileManager.default.contentsOfDirectory(atPath: walDir)) ?? [])
            .filter { $0.hasSuffix(".wal") }.sorted()
        let last = contents.entries.last
        let wal = WALStatus(
            directory: walDir, segments: segments,
            snapshotIndex: newest?.index ?? 0, snapshotTerm: newest?.term ?? 0,
            lastIndex: last?.index ?? newest?.index ?? 0, lastTerm: last?.term ?? newest?.term ?? 0,
            entries: contents.entries.count,
            hardState: HardState(term: contents.hardState.term, vote: contents.hardState.vote,
                                 commit: contents.hardState.commit),
            tornTail: contents.tornTail.map { "\($0.file) at offset \($0.offset): \($0.reason)" })

        var backend: BackendStatus?
        if FileManager.default.fileExists(atPath: dataDir.backendPath) {
            do {
                backend = try readBackend(dataDir.backendPath)
            } catch {
                problems.append("backend \(dataDir.backendPath) cannot be read: \(error)")
            }
        }
        return DataDirStatus(dataDir: dataDir.path, memberID: meta?.memberID ?? 0, clusterID: meta?.clusterID ?? 0,
                             wal: wal, snapshots: snapshots, backend: backend, problems: problems)
    }

    static func fileSize(_ path: String) -> Int64 {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.int64Value ?? 0
    }

    /// Reads the backend. The db is opened through `Backend`, which stages nothing, so
    /// closing it writes nothing.
    static func readBackend(_ path: String) throws -> BackendStatus {
        guard fileSize(path) > 0 else { throw ToolError("empty db file") }
        var options = Backend.Options()
        options.sync = false
        options.initialMapSize = 1 << 20
        let b = try Backend(path: path, options: options)
        defer { b.abandon() }
        func metaInt(_ r: BackendReader, _ key: String) throws -> UInt64 {
            guard let v = try r.get(.meta, key: Array(key.utf8)) else { return 0 }
            guard let n = BigEndian.uint64(v) else { throw ToolError("meta key \(key) holds \(v.count) bytes, not 8") }
            return n
        }
        var status = try b.read { r in
            // Key bucket: keys are <8-byte main rev>_<8-byte sub rev>[t]; values hold the user
            // key's length at bytes 32..<36 and the key after it.
            var live: [[UInt8]: Bool] = [:]
            var revisions = 0
            var maxRev: Int64 = 0
            try r.scan(.key, from: [], to: nil) { k, v in
                guard k.count == 17 || (k.count == 18 && k[17] == 0x74), k[8] == 0x5F else {
                    throw ToolError("malformed key-bucket key of \(k.count) bytes")
                }
                guard v.count >= 36 else { throw ToolError("malformed key-bucket value of \(v.count) bytes") }
                let n = Int(v[32]) << 24 | Int(v[33]) << 16 | Int(v[34]) << 8 | Int(v[35])
                guard 36 + n <= v.count else { throw ToolError("key length \(n) beyond a value of \(v.count) bytes") }
                live[Array(v[36..<(36 + n)])] = k.count == 17
                revisions += 1
                maxRev = max(maxRev, Int64(bitPattern: BigEndian.uint64(at: 0, of: k)))
                return true
            }
            let scheduled = Int64(bitPattern: try metaInt(r, "scheduledCompactRev"))
            let finished = Int64(bitPattern: try metaInt(r, "finishedCompactRev"))
            let current = Int64(bitPattern: try metaInt(r, "currentRevision"))
            return BackendStatus(
                path: path, size: fileSize(path), sizeInUse: 0,
                consistentIndex: try metaInt(r, "consistent_index"), consistentTerm: try metaInt(r, "term"),
                currentRevision: max(maxRev, current, scheduled), compactRevision: max(scheduled, finished),
                keys: live.values.filter { $0 }.count, revisions: revisions, hash: 0)
        }
        status.sizeInUse = try b.sizeInUse()
        status.hash = try b.hash()
        return status
    }

    func table() -> String {
        var rows: [[String]] = [
            ["data dir", dataDir],
            ["member id", hexID(memberID)],
            ["cluster id", hexID(clusterID)],
            ["wal dir", wal.directory],
            ["wal segments", String(wal.segments.count)],
            ["wal entries", String(wal.entries)],
            ["last index", String(wal.lastIndex)],
            ["last term", String(wal.lastTerm)],
            ["hard state", "term=\(wal.hardState.term) vote=\(hexID(wal.hardState.vote)) commit=\(wal.hardState.commit)"],
            ["snapshot", "index=\(wal.snapshotIndex) term=\(wal.snapshotTerm)"],
        ]
        if let t = wal.tornTail { rows.append(["wal torn tail", t]) }
        for s in snapshots {
            let name = (s.file as NSString).lastPathComponent
            rows.append(["snapshot file", s.error.map { "\(name): DAMAGED: \($0)" } ?? "\(name) (\(s.size) bytes)"])
        }
        if let b = backend {
            rows += [
                ["db size", "\(b.size) bytes"],
                ["db size in use", "\(b.sizeInUse) bytes"],
                ["consistent index", String(b.consistentIndex)],
                ["consistent term", String(b.consistentTerm)],
                ["revision", String(b.currentRevision)],
                ["compact revision", String(b.compactRevision)],
                ["keys", String(b.keys)],
                ["revisions stored", String(b.revisions)],
                ["hash", String(b.hash)],
            ]
        } else {
            rows.append(["backend", "none"])
        }
        for p in problems { rows.append(["PROBLEM", p]) }
        return renderTable(header: ["FIELD", "VALUE"], rows: rows)
    }
}
