import BoltFormat
import EtcdConfig
import EtcdSnapshot
import Foundation
import LMDBBackend
import Logging
import MVCC
import ServerFormat
import Storage

#if canImport(Glibc)
import Glibc
#endif

/// A member started on a data directory that `etcdctl snapshot restore` made (etcd's layout:
/// `member/snap/db` a bbolt backend, `member/wal/*.wal` etcd's WAL, `member/snap/*.snap`)
/// converts it into a swetcd data directory on its first start, then starts as usual.
///
/// - The member and cluster IDs and the membership come from etcd's WAL (its metadata record
///   and the restore's conf-change entries, i.e. the `--initial-cluster` given to the
///   restore). The db's own `members` bucket is not used: etcd 3.4's restore leaves the old
///   cluster's records in it. A WAL holding client requests is refused (an etcd member that
///   has run: its newest writes may be only in the WAL).
/// - The db is converted as `swetcdutl snapshot restore` does (keys, revisions, compaction,
///   leases, auth, alarms), and a new swetcd WAL is started with the membership.
/// - The new member directory is built in `<data-dir>/.swetcd-import` and swapped in with two
///   renames; `recover` finishes or discards an import a crash interrupted. etcd's files are
///   removed once the swap is done.
enum EtcdDataDirImport {
    static let stagingName = ".swetcd-import"
    static let retiredName = ".etcd-member-imported"

    struct Summary {
        var memberID: UInt64
        var clusterID: UInt64
        var members: [MemberRecord]
        var stats: EtcdBolt.ImportStats
        var revision: Int64
        var compactRevision: Int64
    }

    private static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    private static func rename(_ from: String, _ to: String) throws {
        guard Glibc.rename(from, to) == 0 else {
            throw ServerStartError("cannot rename \(from) to \(to): \(String(cString: strerror(errno)))")
        }
    }

    private static func syncPath(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ServerStartError("cannot open \(path) to sync it: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw ServerStartError("cannot sync \(path): \(String(cString: strerror(errno)))") }
    }

    private static func syncTree(_ root: String) throws {
        let entries = (FileManager.default.enumerator(atPath: root)?.allObjects as? [String]) ?? []
        for entry in entries.sorted(by: { $0.count > $1.count }) { try syncPath(root + "/" + entry) }
        try syncPath(root)
    }

    /// Finishes the swap of an import a crash interrupted, or discards its unfinished staging
    /// directory (the etcd files are then still in place and the import runs again).
    static func recover(_ dataDir: DataDir, logger: Logger) throws {
        let staging = dataDir.path + "/" + stagingName
        let retired = dataDir.path + "/" + retiredName
        let member = dataDir.memberDirectory
        if exists(retired) {
            if !exists(member) {
                if exists(staging + "/member") {
                    try rename(staging + "/member", member)
                    logger.warning("finished an etcd data directory import that a crash interrupted", metadata: ["data-dir": "\(dataDir.path)"])
                } else {
                    try rename(retired, member)
                }
                try syncPath(dataDir.path)
            }
            if exists(retired) { try FileManager.default.removeItem(atPath: retired) }
        }
        if exists(staging) { try FileManager.default.removeItem(atPath: staging) }
    }

    /// Whether the directory looks like etcd's: a bbolt `member/snap/db` and etcd WAL segments
    /// in `member/wal` (only with the WAL in its standard place).
    static func looksLikeEtcd(_ dataDir: DataDir) -> Bool {
        guard dataDir.dedicatedWALDirectory == nil else { return false }
        let fd = open(dataDir.backendPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 64)
        let n = head.withUnsafeMutableBytes { read(fd, $0.baseAddress, 64) }
        guard n == 64, BoltReader.looksLikeBolt(head) else { return false }
        return ((try? EtcdWAL.segments(in: dataDir.walDirectory)) ?? []).isEmpty == false
    }

    /// Converts the etcd data directory in place. Throws (leaving etcd's files untouched) when
    /// anything in it is not what a restore writes.
    static func run(_ dataDir: DataDir, logger: Logger) throws -> Summary {
        func fail(_ why: Any) -> ServerStartError {
            ServerStartError("data directory \(dataDir.path) holds etcd's files but cannot be imported: \(why)")
        }
        let restored: EtcdWAL.Restored
        let reader: BoltReader
        do {
            restored = try EtcdWAL.readRestored(directory: dataDir.walDirectory)
            reader = try BoltReader(path: dataDir.backendPath)
        } catch {
            throw fail(error)
        }
        let members = restored.members.map { MemberRecord(id: $0.id, name: $0.name, peerURLs: $0.peerURLs, isLearner: $0.isLearner) }
        let stagingPath = dataDir.path + "/" + stagingName
        if exists(stagingPath) { try FileManager.default.removeItem(atPath: stagingPath) }
        guard mkdir(stagingPath, 0o700) == 0 else { throw fail("cannot create \(stagingPath): \(String(cString: strerror(errno)))") }
        let staging = DataDir(path: stagingPath)
        var summary: Summary
        do {
            let raft = try DurableRaftStorage.open(staging, newMember: WALMetadata(memberID: restored.memberID, clusterID: restored.clusterID))
            try BootstrapLog.write(raft, members: members)
            try raft.close()
            var options = Backend.Options()
            options.sync = false
            let backend = try Backend(path: staging.backendPath, options: options)
            do {
                let stats = try EtcdBolt.importFile(reader, into: backend)
                try backend.batch {
                    for bucket in [BackendBucket.members, .membersRemoved] {
                        let keys = try backend.read { r in try r.range(bucket, from: [], to: nil).map(\.key) }
                        for k in keys { try backend.delete(bucket, key: k) }
                    }
                    // The new log starts at index 1: every entry of it must be applied.
                    try backend.setConsistentIndex(0, term: 0)
                }
                try MembershipStore.save(members, in: backend)
                // Opening the keyspace checks every entry and finishes a scheduled compaction.
                let store = try MVCCStore(backend: backend)
                summary = Summary(memberID: restored.memberID, clusterID: restored.clusterID, members: members, stats: stats,
                                  revision: store.currentRevision, compactRevision: store.compactRevision)
                try backend.commit()
                try backend.close()
            } catch {
                backend.abandon()
                throw error
            }
            try syncTree(stagingPath)
        } catch {
            try? FileManager.default.removeItem(atPath: stagingPath)
            if error is ServerStartError { throw error }
            throw fail(error)
        }
        // The swap: etcd's member directory out, ours in (recover() completes it after a crash).
        let retired = dataDir.path + "/" + retiredName
        try rename(dataDir.memberDirectory, retired)
        try rename(stagingPath + "/member", dataDir.memberDirectory)
        try syncPath(dataDir.path)
        try FileManager.default.removeItem(atPath: retired)
        try FileManager.default.removeItem(atPath: stagingPath)
        try syncPath(dataDir.path)
        return summary
    }
}
