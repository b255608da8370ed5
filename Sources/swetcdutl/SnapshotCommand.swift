import ArgumentParser
import BoltFormat
import EtcdConfig
import EtcdSnapshot
import Foundation
import LMDBBackend
import MVCC
import ServerFormat
import Storage

#if canImport(Glibc)
import Glibc
#endif

/// `swetcdutl snapshot ...`: inspect and restore files written by `etcdctl snapshot save`.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Inspect or restore a backend snapshot file.",
        subcommands: [SnapshotStatusCommand.self, SnapshotRestoreCommand.self]
    )
}

/// Output formats of `snapshot status` (etcdctl's `-w simple|json|table`).
enum SnapshotOutputFormat: String, ExpressibleByArgument, CaseIterable {
    case simple, json, table
}

/// What `snapshot status` reports, with etcdctl's JSON field names.
struct SnapshotStatus: Codable, Equatable {
    /// CRC-32C over every bucket's name, keys and values. For an etcd-format (bbolt) file it
    /// is etcdctl's value; for an old LMDB snapshot it leaves the consistent index out and is
    /// what the Hash RPC returned for the member's backend when the snapshot was taken.
    var hash: UInt32
    /// The keyspace revision the snapshot was taken at.
    var revision: Int64
    /// Entries in all buckets (as etcd counts them).
    var totalKey: Int
    /// Bytes of the db (the file without its hash trailer).
    var totalSize: Int64

    /// Reads the status of an opened backend of `dbSize` bytes.
    static func read(_ backend: Backend, dbSize: Int64) throws -> SnapshotStatus {
        let (revision, total) = try backend.read { r -> (Int64, Int) in
            var total = 0
            var maxRev: UInt64 = 0
            for bucket in BackendBucket.allCases {
                try r.scan(bucket, from: [], to: nil) { k, _ in
                    total += 1
                    if bucket == .key {
                        // Key-bucket keys start with the 8-byte big-endian main revision.
                        guard k.count >= 8 else { throw ToolError("malformed key-bucket key of \(k.count) bytes") }
                        maxRev = max(maxRev, BigEndian.uint64(at: 0, of: k))
                    }
                    return true
                }
            }
            func meta(_ name: String) throws -> UInt64 {
                guard let v = try r.get(.meta, key: Array(name.utf8)) else { return 0 }
                guard let n = BigEndian.uint64(v) else { throw ToolError("meta key \(name) holds \(v.count) bytes, not 8") }
                return n
            }
            let rev = max(maxRev, try meta("currentRevision"), try meta("scheduledCompactRev"))
            return (Int64(bitPattern: rev), total)
        }
        return SnapshotStatus(hash: try backend.hash(), revision: revision, totalKey: total, totalSize: dbSize)
    }
}

struct SnapshotStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print a snapshot file's hash, revision, total keys and size.",
        discussion: """
            The SHA-256 trailer that `etcdctl snapshot save` leaves at the end of the file is \
            checked when present. The file itself is not modified (a private copy is opened).
            """
    )

    @Argument(help: "The snapshot file.")
    var file: String

    @Option(name: [.customShort("w"), .customLong("write-out")], help: "Output format: simple, json or table.")
    var format: SnapshotOutputFormat = .simple

    func run() throws {
        let snapshot = try SnapshotFile(path: file)
        if snapshot.hasHash { try snapshot.verifyHash() }
        let status: SnapshotStatus
        if try snapshot.isBolt() {
            // etcd's format: etcdctl's hash (CRC-32C over bucket names, keys and values).
            let s: EtcdBolt.Status
            do { s = try EtcdBolt.status(try snapshot.boltReader()) } catch let e as ToolError { throw e } catch {
                throw ToolError("snapshot file \(file) is damaged: \(error)")
            }
            status = SnapshotStatus(hash: s.hash, revision: s.revision, totalKey: s.totalKey, totalSize: s.totalSize)
        } else {
            status = try snapshot.withBackend { try SnapshotStatus.read($0, dbSize: snapshot.dbSize) }
        }
        switch format {
        case .json:
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            print(String(decoding: try enc.encode(status), as: UTF8.self))
        case .simple:
            print("\(String(status.hash, radix: 16)), \(status.revision), \(status.totalKey), \(humanBytes(status.totalSize))")
        case .table:
            print(renderTable(header: ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                              rows: [[String(status.hash, radix: 16), String(status.revision), String(status.totalKey),
                                      humanBytes(status.totalSize)]]))
        }
    }
}

/// A size in SI units as etcdctl prints it: "512 B", "8.2 kB", "25 kB", "1.1 GB".
func humanBytes(_ n: Int64) -> String {
    if n < 10 { return "\(n) B" }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    var exponent = 0
    var scaled = Double(n)
    while scaled >= 1000, exponent < units.count - 1 {
        scaled /= 1000
        exponent += 1
    }
    let rounded = (scaled * 10).rounded() / 10
    return rounded < 10 ? String(format: "%.1f %@", rounded, units[exponent]) : String(format: "%.0f %@", rounded, units[exponent])
}

struct SnapshotRestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Build a new member's data directory from a snapshot file.",
        discussion: """
            Run it once per member of the new cluster, each with its own --name and \
            --initial-advertise-peer-urls and the same --initial-cluster and \
            --initial-cluster-token; then start the members on those data directories. The \
            new cluster gets a new cluster ID and the membership given here; keys, revisions \
            and leases are those of the snapshot. The data directory must not exist or be empty.
            """
    )

    @Argument(help: "The snapshot file (from etcdctl snapshot save).")
    var file: String

    @Option(help: "Human-readable name of this member.")
    var name = "default"

    @Option(name: .customLong("initial-cluster"), help: "The new cluster: name=peerURL,...")
    var initialCluster = "default=http://localhost:2380"

    @Option(name: .customLong("initial-cluster-token"), help: "Token of the new cluster (member and cluster IDs derive from it).")
    var initialClusterToken = "etcd-cluster"

    @Option(name: .customLong("initial-advertise-peer-urls"), help: "This member's peer URLs (comma-separated).")
    var initialAdvertisePeerURLs = "http://localhost:2380"

    @Option(name: .customLong("data-dir"), help: "The data directory to create (default: <name>.etcd).")
    var dataDir: String?

    @Option(name: .customLong("bump-revision"), help: "Add this to the snapshot's revision, so watchers never see revisions go back.")
    var bumpRevision: UInt64 = 0

    @Flag(name: .customLong("mark-compacted"), help: "Compact the keyspace at the bumped revision (needs --bump-revision).")
    var markCompacted = false

    @Flag(name: .customLong("skip-hash-check"), help: "Accept a file without (or with a wrong) SHA-256 trailer.")
    var skipHashCheck = false

    func validate() throws {
        if markCompacted && bumpRevision == 0 { throw ValidationError("--mark-compacted needs --bump-revision") }
        if bumpRevision > UInt64(Int64.max / 2) { throw ValidationError("--bump-revision \(bumpRevision) is too large") }
    }

    func run() throws {
        let target = dataDir ?? "\(name).etcd"
        let plan = try RestorePlan(name: name, initialCluster: initialCluster, token: initialClusterToken,
                                   advertisePeerURLs: initialAdvertisePeerURLs)
        let snapshot = try SnapshotFile(path: file)
        if !skipHashCheck { try snapshot.verifyHash() }
        let result = try plan.restore(snapshot, into: target, bumpRevision: Int64(bumpRevision), markCompacted: markCompacted)
        print("restored snapshot \(file) into \(target): member \(plan.local.name) (\(hexID(plan.local.id))), "
              + "cluster \(hexID(plan.cluster.clusterID)), revision \(result.revision)"
              + (result.compactRevision > 0 ? ", compacted at \(result.compactRevision)" : ""))
    }
}

/// The new member a restore creates, from the `--initial-*` flags.
struct RestorePlan {
    let cluster: InitialCluster
    let local: InitialCluster.Member

    init(name: String, initialCluster: String, token: String, advertisePeerURLs: String) throws {
        do {
            cluster = try InitialCluster(parsing: initialCluster, token: token)
            let urls = try advertisePeerURLs.split(separator: ",").map { try EndpointURL(parsing: String($0)) }
            try cluster.verifyLocalMember(name: name, advertisePeerURLs: urls)
        } catch let e as ToolError {
            throw e
        } catch {
            throw ToolError("\(error)")
        }
        guard let me = cluster.member(named: name) else {
            throw ToolError("--initial-cluster has no member named \"\(name)\"")
        }
        local = me
    }

    /// The members' records (ServerFormat's, as the server writes them), in ID order.
    private var records: [MemberRecord] {
        cluster.members.sorted { $0.id < $1.id }.map { MemberRecord(id: $0.id, name: $0.name, peerURLs: $0.peerURLs.map(\.description)) }
    }

    struct Result { var revision: Int64; var compactRevision: Int64 }

    /// Builds the data directory in a temporary sibling and renames it into place, so an
    /// interrupted restore leaves nothing that looks like a data directory at `target`.
    func restore(_ snapshot: SnapshotFile, into target: String, bumpRevision: Int64, markCompacted: Bool) throws -> Result {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: target, isDirectory: &isDir) {
            guard isDir.boolValue else { throw ToolError("data directory \(target) exists and is not a directory") }
            let entries = try FileManager.default.contentsOfDirectory(atPath: target)
            if !entries.isEmpty { throw ToolError("data directory \(target) exists and is not empty; refusing to overwrite it") }
        }
        let parent = (target as NSString).deletingLastPathComponent
        let base = (target as NSString).lastPathComponent
        let temp = (parent.isEmpty ? "." : parent) + "/.\(base).restoring-\(UUID().uuidString.prefix(8))"
        var moved = false
        defer { if !moved { try? FileManager.default.removeItem(atPath: temp) } }
        guard mkdir(temp, 0o700) == 0 else { throw ToolError("cannot create \(temp): \(String(cString: strerror(errno)))") }
        let dir = DataDir(path: temp)

        // The Raft log: a new WAL for this member holding what a new cluster's first start
        // writes (the server's bootstrap): one committed conf-change entry per member, term 1,
        // so a member joining later learns the configuration from the log.
        let raft = try DurableRaftStorage.open(dir, newMember: WALMetadata(memberID: local.id, clusterID: cluster.clusterID))
        try BootstrapLog.write(raft, members: records)
        try raft.close()

        // The backend: the snapshot's data with the new membership and no applied index. An
        // etcd-format (bbolt) snapshot is converted into a new backend; an LMDB one is copied.
        if try snapshot.isBolt() {
            let reader = try snapshot.boltReader()
            var options = Backend.Options()
            options.sync = false
            let backend = try Backend(path: dir.backendPath, options: options)
            do {
                try EtcdBolt.importFile(reader, into: backend)
                try backend.close()
            } catch {
                backend.abandon()
                if let e = error as? ToolError { throw e }
                throw ToolError("snapshot file \(snapshot.path) cannot be restored: \(error)")
            }
        } else {
            try snapshot.copyDB(to: dir.backendPath)
        }
        let result = try rewriteBackend(dir.backendPath, bumpRevision: bumpRevision, markCompacted: markCompacted)

        try syncTree(temp)
        if FileManager.default.fileExists(atPath: target) {
            // An empty directory: rename(2) replaces it.
            guard rmdir(target) == 0 || errno == ENOENT else {
                throw ToolError("cannot replace \(target): \(String(cString: strerror(errno)))")
            }
        }
        guard rename(temp, target) == 0 else {
            throw ToolError("cannot rename \(temp) to \(target): \(String(cString: strerror(errno)))")
        }
        moved = true
        try syncPath(parent.isEmpty ? "." : parent)
        return result
    }

    private func rewriteBackend(_ path: String, bumpRevision: Int64, markCompacted: Bool) throws -> Result {
        let backend: Backend
        do {
            backend = try Backend(path: path)
        } catch {
            throw ToolError("the snapshot does not hold a swetcd backend: \(error)")
        }
        defer { try? backend.close() }
        // Opening the keyspace checks every key-bucket entry.
        var revision: Int64
        do { revision = try MVCCStore(backend: backend).currentRevision } catch {
            throw ToolError("the snapshot's keyspace is damaged: \(error)")
        }
        try backend.batch {
            for bucket in [BackendBucket.members, .membersRemoved] {
                let keys = try backend.read { r in try r.range(bucket, from: [], to: nil).map(\.key) }
                for k in keys { try backend.delete(bucket, key: k) }
            }
            for m in records {
                try backend.put(.members, key: MemberRecord.key(m.id), value: try m.encoded())
            }
            // The new cluster's log starts at index 1: every entry of it must be applied.
            try backend.setConsistentIndex(0, term: 0)
            if bumpRevision > 0 {
                revision += bumpRevision
                try backend.put(.meta, key: Array("currentRevision".utf8), value: BigEndian.bytes(UInt64(revision)))
                if markCompacted {
                    try backend.put(.meta, key: Array("scheduledCompactRev".utf8), value: BigEndian.bytes(UInt64(revision)))
                }
            }
        }
        try backend.commit()
        var compacted: Int64 = 0
        if markCompacted {
            // Reopening the keyspace carries out the compaction just scheduled.
            do { compacted = try MVCCStore(backend: backend).compactRevision } catch {
                throw ToolError("compacting the restored keyspace failed: \(error)")
            }
            try backend.commit()
        }
        return Result(revision: revision, compactRevision: compacted)
    }
}
