import EtcdProto
import Foundation
import LMDBBackend
import Logging
import MVCC
import Raft
import ServerFormat
import Storage

#if canImport(Glibc)
import Glibc
#endif

/// Installing a snapshot received from the leader.
///
/// The peer transport stores the leader's backend copy, size- and hash-checked and synced, at
/// `member/snap/<index:016x>.snap.db` before Raft sees the snapshot message. When the Ready
/// carrying the snapshot is handled on the Raft loop thread, the Raft snapshot is persisted
/// first (snapshot file and WAL marker, `DurableRaftStorage.persist`), then, on the apply thread
/// once everything handed to it is applied (the loop waits), the backend file is
/// renamed over `member/snap/db` and the directory synced, and the backend reopened on it in
/// place (`Backend.replace(withFileAt:)`), the keyspace and lessor restored from it. A crash
/// at any point leaves a usable data directory: before the rename the old backend and the
/// `.snap.db` file are both there, and start-up finishes the swap when the backend's
/// consistent index is behind the Raft snapshot; after it, the new backend is in place with a
/// consistent index at or beyond the snapshot's (the leader copies its backend after taking the
/// snapshot), and the entries after that index come from the log.
enum SnapshotInstaller {
    /// `<dir>/<index:016x>.snap.db`, where the peer transport stores a received backend.
    static func backendFile(in directory: String, index: UInt64) -> String {
        let hex = String(index, radix: 16)
        return directory + "/" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex + ".snap.db"
    }

    /// The index a received backend file is for (nil for any other name).
    static func index(ofBackendFile name: String) -> UInt64? {
        guard name.hasSuffix(".snap.db") else { return nil }
        let hex = name.dropLast(".snap.db".count)
        guard hex.count == 16 else { return nil }
        return UInt64(hex, radix: 16)
    }

    /// The consistent index of the backend file at `path`, opened read-only in effect (nothing
    /// is written; LMDB's lock file beside it is removed afterwards).
    static func consistentIndex(ofBackendAt path: String, options: Backend.Options) throws -> UInt64 {
        let backend = try Backend(path: path, options: options)
        defer {
            try? backend.close()
            unlink(path + "-lock")
        }
        return try backend.consistentIndex()
    }

    /// At start-up, before the backend is opened: when the Raft snapshot at `snapshotIndex` is
    /// newer than the backend (a crash between persisting a leader's snapshot and swapping its
    /// backend in), finishes the swap. Removes received backend files that are not needed.
    /// Throws when the backend is behind the snapshot and no file can bring it forward.
    static func recoverBackend(dataDir: DataDir, snapshotIndex: UInt64, options: Backend.Options, logger: Logger) throws {
        let dir = dataDir.snapDirectory
        let wanted = backendFile(in: dir, index: snapshotIndex)
        let haveBackend = FileManager.default.fileExists(atPath: dataDir.backendPath)
        let current = haveBackend ? try consistentIndex(ofBackendAt: dataDir.backendPath, options: options) : 0
        if snapshotIndex > 0, haveBackend, current < snapshotIndex {
            guard FileManager.default.fileExists(atPath: wanted) else {
                throw ServerStartError("the backend \(dataDir.backendPath) (consistent index \(current)) is older than the Raft snapshot at index \(snapshotIndex), and the snapshot's database \(wanted) is missing")
            }
            let fresh = try consistentIndex(ofBackendAt: wanted, options: options)
            guard fresh >= snapshotIndex else {
                throw ServerStartError("the snapshot database \(wanted) has consistent index \(fresh), older than its Raft snapshot at index \(snapshotIndex)")
            }
            try swapIn(wanted, as: dataDir.backendPath)
            logger.warning("finished installing a snapshot interrupted by a crash", metadata: [
                "snapshot-index": "\(snapshotIndex)", "consistent-index": "\(fresh)",
            ])
        }
        // Files received before the restart: Raft has forgotten their messages.
        removeReceivedFiles(in: dir, upTo: .max)
    }

    /// Removes received backend files for indexes up to `index`.
    static func removeReceivedFiles(in dir: String, upTo index: UInt64) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            if let i = Self.index(ofBackendFile: name), i <= index {
                unlink(dir + "/" + name)
                unlink(dir + "/" + name + "-lock")
            }
        }
    }

    /// Renames `file` over `target` atomically and syncs the directory.
    static func swapIn(_ file: String, as target: String) throws {
        guard rename(file, target) == 0 else {
            throw EtcdError.internal("cannot rename \(file) to \(target): \(String(cString: strerror(errno)))")
        }
        unlink(file + "-lock")
        let directory = (target as NSString).deletingLastPathComponent
        let fd = open(directory, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw EtcdError.internal("cannot open \(directory): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw EtcdError.internal("fsync \(directory): \(String(cString: strerror(errno)))") }
    }
}

extension EtcdServer {
    /// Swaps in the leader's backend for the Raft snapshot `snap`, just persisted, and restores
    /// the keyspace, lessor and membership from it in place; watch streams stay open and catch
    /// up from the new keyspace (apply thread, while the Raft loop waits). An error stops the loop: the data directory
    /// stays usable (see ``SnapshotInstaller``). Returns the new backend's consistent index.
    func installSnapshot(_ snap: Snapshot, dataDir: DataDir, appliedIndex: UInt64) throws -> UInt64 {
        let index = snap.metadata.index
        let file = SnapshotInstaller.backendFile(in: dataDir.snapDirectory, index: index)
        guard FileManager.default.fileExists(atPath: file) else {
            throw EtcdError.internal("no backend file \(file) for the snapshot at index \(index)")
        }
        let fresh = try SnapshotInstaller.consistentIndex(ofBackendAt: file, options: backend.options)
        guard fresh >= index else {
            throw EtcdError.internal("the leader's backend \(file) has consistent index \(fresh), older than its snapshot at \(index)")
        }
        logger.info("installing snapshot from the leader", metadata: [
            "snapshot-index": "\(index)", "snapshot-term": "\(snap.metadata.term)", "consistent-index": "\(fresh)",
            "applied-index": "\(appliedIndex)",
        ])
        // Nothing is applied meanwhile (this thread). The backend renames the file over the db,
        // syncs the directory and reopens (the order SnapshotInstaller relies on); the keyspace
        // reloads under its lock and keeps its watchers; the lessor reloads with its keys.
        lessor.demote()
        try machine.restore(fromFileAt: file)
        if isLeader { lessor.promote(extension: electionTimeout) }
        try adoptMembership(from: backend)
        try alarms.load(from: backend)
        try auth.load(from: backend)
        tokens.invalidateAll()
        jwt?.cache.removeAll()
        // Older received files are of no use now.
        SnapshotInstaller.removeReceivedFiles(in: dataDir.snapDirectory, upTo: index)
        snapshotsInstalled.add(1, ordering: .relaxed)
        logger.info("installed snapshot from the leader", metadata: [
            "snapshot-index": "\(index)", "consistent-index": "\(fresh)", "revision": "\(store.currentRevision)",
        ])
        return fresh
    }

    /// Makes the member list and the peer transport match the membership recorded in a newly
    /// installed backend.
    private func adoptMembership(from backend: Backend) throws {
        let members = try MembershipStore.load(from: backend)
        guard !members.isEmpty else { return }
        let removed = try MembershipStore.loadRemoved(from: backend)
        let known = Set(members.map(\.id))
        for m in membership.members where !known.contains(m.id) {
            membership.apply(MembershipChange(operation: .remove, member: m))
            if m.id != memberID { peers.removePeer(m.id) }
        }
        for id in removed where membership.member(id) != nil || !membership.removed.contains(id) {
            membership.apply(MembershipChange(operation: .remove, member: MemberRecord(id: id, name: "", peerURLs: [])))
            if id != memberID { peers.removePeer(id) }
        }
        for m in members {
            membership.apply(MembershipChange(operation: .add, member: m))
            if m.id != memberID { peers.addPeer(m.id, urls: m.endpoints) }
        }
    }
}
