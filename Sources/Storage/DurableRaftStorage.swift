import LMDBBackend
import Raft

/// Errors of ``DurableRaftStorage`` beyond those of the WAL (`WALError`) and snapshot files
/// (`SnapshotError`), which it passes through unchanged.
public enum DurableRaftError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The WAL's metadata record is not the 16-byte member/cluster ID pair we write.
    case badMetadata(directory: String, byteCount: Int)
    /// A CRC-valid WAL entry record whose payload is not a Raft entry matching the record.
    case corruptEntry(file: String, offset: Int64, index: UInt64, reason: String)
    /// A snapshot file whose conf state is not a Raft `ConfState`.
    case corruptSnapshot(file: String, reason: String)
    /// The recovered pieces contradict each other (e.g. the hard state commits entries the
    /// log does not hold).
    case inconsistent(String)
    /// The WAL no longer reaches back to index 0 and no snapshot file that it has a marker
    /// for could be loaded.
    case noUsableSnapshot(walDirectory: String, skipped: [SkippedSnapshot])
    /// The newest snapshot the WAL refers to was received from the leader in place of the log
    /// up to it, and its file is damaged or missing: the entries before it in the WAL are not
    /// the committed ones, so no older snapshot can stand in. Restore the file or rejoin.
    case snapshotMissing(index: UInt64, term: UInt64, skipped: [SkippedSnapshot])
    /// Used after ``DurableRaftStorage/close()``.
    case closed

    public var description: String {
        switch self {
        case let .badMetadata(dir, n):
            "raft storage: WAL in \(dir) has \(n) bytes of metadata, expected 16 (member ID, cluster ID)"
        case let .corruptEntry(file, offset, index, reason):
            "raft storage: entry \(index) in \(file) at offset \(offset) is not a valid Raft entry: \(reason)"
        case let .corruptSnapshot(file, reason):
            "raft storage: snapshot \(file): \(reason)"
        case let .inconsistent(m):
            "raft storage: \(m)"
        case let .noUsableSnapshot(dir, skipped):
            "raft storage: WAL \(dir) needs a snapshot and none is usable"
                + (skipped.isEmpty ? "" : " (" + skipped.map { "\($0.file): \($0.reason)" }.joined(separator: "; ") + ")")
        case let .snapshotMissing(index, term, skipped):
            "raft storage: the snapshot at index \(index), term \(term) replaced the log before it and cannot be loaded"
                + (skipped.isEmpty ? " (no file)" : " (" + skipped.map { "\($0.file): \($0.reason)" }.joined(separator: "; ") + ")")
        case .closed:
            "raft storage: closed"
        }
    }
}

/// Tuning of a ``DurableRaftStorage``.
public struct DurableRaftOptions: Sendable {
    /// WAL segment size and how many segments to keep (etcd's `--max-wals`).
    public var wal: WALOptions
    /// How many snapshot files to keep (etcd's `--max-snapshots`, default 5; 0 keeps all).
    public var maxSnapshotFiles: Int
    /// Counts what a restart reads (WAL records, the snapshot, entries), step by step; nil: none.
    public var progress: StartupProgress?

    /// etcd's defaults: 64 MiB segments, 5 WAL files, 5 snapshot files.
    public init(wal: WALOptions = WALOptions(), maxSnapshotFiles: Int = 5) {
        self.wal = wal
        self.maxSnapshotFiles = maxSnapshotFiles
    }
}

/// What ``DurableRaftStorage/open(_:newMember:options:)`` found on disk.
public struct DurableRaftRecovery: Sendable, Equatable {
    /// True when the data directory was empty and a new WAL was created.
    public var isNew: Bool
    /// The snapshot the log was rebuilt from (empty when none).
    public var snapshot: Snapshot
    /// The recovered hard state.
    public var hardState: HardState
    /// Index of the last recovered entry (the snapshot index when there are none).
    public var lastIndex: UInt64
    /// A torn tail of the last WAL segment that was cut off, if any.
    public var tornTail: WALTornTail?
    /// Snapshot files passed over (damaged, or without a WAL marker), with the reason.
    public var skippedSnapshots: [SkippedSnapshot]
    /// Entries after the snapshot dropped because their term is below the snapshot's or their
    /// predecessor's: a stale tail that a crash after a snapshot's marker and before its
    /// truncation mark left in the WAL (see ``DurableRaftStorage/persist(_:)``).
    public var droppedStaleEntries: Int
}

/// The Raft log made durable the way etcd does it: the ``RaftNode`` reads a `MemoryStorage`,
/// and this type keeps that storage rebuildable from the WAL and snapshot files of a
/// `DataDir`.
///
/// For every `Ready`, call ``persist(_:)`` before sending its messages: it writes a snapshot
/// (file, then WAL marker, then `MemoryStorage.applySnapshot`), then the hard state and
/// entries with one WAL write and at most one `fdatasync` (when `Ready.mustSync`), then
/// releases what a snapshot made unnecessary, then appends the entries to the `MemoryStorage`. The server takes periodic snapshots with
/// ``createSnapshot(index:confState:data:)`` and trims memory with ``compact(keeping:)``.
///
/// On restart, create the `RaftNode` on ``raftStorage``: it hands out the committed entries
/// after the recovered snapshot again (or set `RaftConfig.applied` to the state machine's
/// durable applied index to skip those it already has; ``committedEntries(after:)`` lists
/// them for a replay outside the node).
///
/// Entries are stored as `Entry.encode()` bytes in `WALEntry.data`, snapshot markers carry
/// `ConfState.encode()`, the WAL metadata is `WALMetadata`. Not thread-safe: one owner
/// (the Raft loop) drives it; the `MemoryStorage` itself may be read from anywhere.
public final class DurableRaftStorage {
    /// The data directory.
    public let dataDir: DataDir
    /// Member and cluster ID stored in the WAL.
    public let metadata: WALMetadata
    /// The in-memory log the Raft node reads (pass it, or ``raftStorage``, to `RaftNode`).
    public let memory: MemoryStorage
    /// What was found on disk when opened.
    public let recovery: DurableRaftRecovery
    /// The options it was opened with.
    public let options: DurableRaftOptions

    private var wal: WAL?
    private let snapshotter: Snapshotter

    /// `memory` as the storage protocol the Raft core reads.
    public var raftStorage: any RaftStorage { memory }

    private init(dataDir: DataDir, metadata: WALMetadata, memory: MemoryStorage, recovery: DurableRaftRecovery,
                 options: DurableRaftOptions, wal: WAL) {
        self.dataDir = dataDir
        self.metadata = metadata
        self.memory = memory
        self.recovery = recovery
        self.options = options
        self.wal = wal
        self.snapshotter = Snapshotter(directory: dataDir.snapDirectory)
    }

    deinit { try? wal?.close() }

    // MARK: Opening

    /// Opens the Raft log of `dataDir`. An empty directory gets a new WAL whose metadata is
    /// `newMember`; otherwise `newMember` is ignored (compare ``metadata`` with what you
    /// expect) and the log is rebuilt: the newest snapshot file that loads cleanly and has a
    /// WAL marker, the WAL read from that marker (a torn tail is cut), the hard state and the
    /// entries after the snapshot. A foreign directory is refused untouched.
    public static func open(_ dataDir: DataDir, newMember: WALMetadata,
                            options: DurableRaftOptions = DurableRaftOptions()) throws -> DurableRaftStorage {
        let before = try dataDir.prepare()
        if before == .empty {
            let wal = try WAL.create(directory: dataDir.walDirectory, metadata: newMember.encoded, options: options.wal)
            let rec = DurableRaftRecovery(isNew: true, snapshot: Snapshot(), hardState: HardState(), lastIndex: 0,
                                          tornTail: nil, skippedSnapshots: [], droppedStaleEntries: 0)
            return DurableRaftStorage(dataDir: dataDir, metadata: newMember, memory: MemoryStorage(),
                                      recovery: rec, options: options, wal: wal)
        }
        return try recover(dataDir, options: options)
    }

    private static func recover(_ dataDir: DataDir, options: DurableRaftOptions) throws -> DurableRaftStorage {
        let walDir = dataDir.walDirectory
        let snapshotter = Snapshotter(directory: dataDir.snapDirectory)
        let progress = options.progress
        progress?.begin("scanning WAL for snapshot markers", unit: "records")
        let markers = try WAL.snapshotMarkers(directory: walDir, progress: progress)
        progress?.begin("loading snapshot")
        let (stored, skipped) = try snapshotter.loadNewest(matching: markers)
        try checkFallback(walDir, from: stored?.index ?? 0, passing: markers, skipped: skipped)
        progress?.begin("replaying WAL", unit: "entries")
        let opened: (wal: WAL, contents: WALContents)
        do {
            opened = try WAL.open(directory: walDir, snapshot: stored?.marker, options: options.wal, progress: progress)
        } catch WALError.notFound(_) where stored == nil && FileIO.isDirectory(walDir) {
            throw DurableRaftError.noUsableSnapshot(walDirectory: walDir, skipped: skipped)
        }
        let (wal, contents) = opened
        // From here on a failure must release the WAL lock before it is reported.
        do {
            guard let meta = WALMetadata(decoding: contents.metadata) else {
                throw DurableRaftError.badMetadata(directory: walDir, byteCount: contents.metadata.count)
            }
            let memory = MemoryStorage()
            var snap = Snapshot()
            if let stored {
                let file = FileIO.join(dataDir.snapDirectory, Snapshotter.fileName(term: stored.term, index: stored.index))
                let cs: ConfState
                do { cs = try ConfState(decoding: stored.confState) } catch {
                    throw DurableRaftError.corruptSnapshot(file: file, reason: "conf state does not decode: \(error)")
                }
                snap = Snapshot(metadata: SnapshotMetadata(index: stored.index, term: stored.term, confState: cs),
                                data: stored.data)
                try memory.applySnapshot(snap)
            }
            progress?.begin("decoding WAL entries", unit: "entries")
            var entries: [Entry] = []
            entries.reserveCapacity(contents.entries.count)
            var lastTerm = snap.metadata.term
            var dropped = 0
            for (i, we) in contents.entries.enumerated() {
                if we.data.isEmpty {
                    // A truncation mark (see `persist`): the log ends before it.
                    guard i == contents.entries.count - 1 else {
                        throw try corruptEntry(walDir, we.index, "truncation mark followed by entry \(we.index + 1)")
                    }
                    break
                }
                let e: Entry
                do { e = try Entry(decoding: we.data) } catch {
                    throw try corruptEntry(walDir, we.index, "\(error)")
                }
                guard e.index == we.index, e.term == we.term else {
                    throw try corruptEntry(walDir, we.index, "holds entry \(e.index) of term \(e.term), record says term \(we.term)")
                }
                if e.term < lastTerm {
                    // A stale tail that a crash between a snapshot's marker and its truncation
                    // mark left behind the snapshot: terms never go down along a Raft log.
                    dropped = contents.entries.count - i
                    break
                }
                lastTerm = e.term
                entries.append(e)
                progress?.advance()
            }
            try memory.append(entries)
            let last = try memory.lastIndex()
            var hs = HardState(term: contents.hardState.term, vote: contents.hardState.vote,
                               commit: contents.hardState.commit)
            // A snapshot only ever holds committed state.
            hs.commit = max(hs.commit, snap.metadata.index)
            guard hs.commit <= last else {
                throw DurableRaftError.inconsistent("hard state commits index \(hs.commit) but the log in \(walDir) ends at \(last)")
            }
            if hs.term < lastTerm {
                // The batch that raised the term was torn after its entries and before its
                // hard state: it was never synced, so none of its messages (a vote in
                // particular) went out. The node learnt the term from those entries.
                hs.term = lastTerm
                hs.vote = 0
            }
            memory.setHardState(hs)
            let rec = DurableRaftRecovery(isNew: false, snapshot: snap, hardState: hs, lastIndex: last,
                                          tornTail: contents.tornTail, skippedSnapshots: skipped,
                                          droppedStaleEntries: dropped)
            return DurableRaftStorage(dataDir: dataDir, metadata: meta, memory: memory, recovery: rec,
                                      options: options, wal: wal)
        } catch {
            try? wal.close()
            throw error
        }
    }

    /// When the snapshot loaded is older than markers in the WAL (their files are damaged or
    /// missing), the WAL stands in for those snapshots, which is only right for snapshots taken
    /// locally: the log held their last entry, with their term, before the marker. A snapshot
    /// received from the leader replaced a log that did not (Raft only sends one on a
    /// mismatch), so the entries before it are not the committed ones. Reads the whole WAL,
    /// only on this rare path.
    private static func checkFallback(_ walDir: String, from index: UInt64, passing markers: [WALSnapshotMarker],
                                      skipped: [SkippedSnapshot]) throws {
        let wanted = Set(markers.filter { $0.index > index }.map(\.index))
        guard !wanted.isEmpty else { return }
        var termAt: [UInt64: UInt64] = [:]
        var received: WALSnapshotMarker?
        try WAL.dump(directory: walDir) { ev in
            guard received == nil, case let .record(r) = ev else { return }
            switch r.record {
            case let .entry(e):
                // An entry replaces the log from its index on; a truncation mark only cuts it.
                for k in termAt.keys where k >= e.index { termAt[k] = nil }
                if wanted.contains(e.index) && !e.data.isEmpty { termAt[e.index] = e.term }
            case let .snapshot(m) where wanted.contains(m.index) && termAt[m.index] != m.term:
                received = m
            default:
                break
            }
        }
        if let m = received { throw DurableRaftError.snapshotMissing(index: m.index, term: m.term, skipped: skipped) }
    }

    /// Finds the file and offset of the last WAL record for entry `index` (slow: only used to
    /// report damage).
    private static func corruptEntry(_ walDir: String, _ index: UInt64, _ reason: String) throws -> DurableRaftError {
        var file = walDir
        var offset: Int64 = -1
        try WAL.dump(directory: walDir) { ev in
            if case let .record(r) = ev, r.kind == .entry, r.index == index {
                file = r.file
                offset = r.offset
            }
        }
        return .corruptEntry(file: file, offset: offset, index: index, reason: reason)
    }

    /// Records the initial configuration of a brand-new cluster member, as a snapshot at
    /// index 0 (file and WAL marker), so it survives restarts. Create the `RaftNode` on
    /// ``raftStorage`` afterwards (it starts from that configuration). Only valid on a
    /// storage that holds no log yet.
    public func bootstrap(_ confState: ConfState) throws {
        guard try memory.lastIndex() == 0, memory.hardState.isEmpty,
              try memory.snapshot().metadata.confState.voters.isEmpty else {
            throw DurableRaftError.inconsistent("bootstrap needs a storage without log or configuration")
        }
        try saveSnapshot(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: confState)), usableWAL())
    }

    // MARK: Persisting

    /// Persists a `Ready` in the order that keeps Raft safe, before its messages are sent:
    /// 1. a snapshot: file saved, then WAL marker written and synced, then applied to
    ///    ``memory``;
    /// 2. the hard state and entries: one WAL write, and one `fdatasync` if `rd.mustSync`
    ///    (or if the segment was cut, which syncs) or if a snapshot came with them, so the
    ///    commit index covering the snapshot is on disk before anything is released;
    /// 3. with a snapshot, WAL segments and snapshot files it makes unnecessary are released;
    /// 4. the entries appended to ``memory`` and the hard state recorded there.
    /// Returns whether everything written is on disk. After a thrown error the WAL refuses
    /// further writes; reopen the storage.
    @discardableResult
    public func persist(_ rd: Ready) throws -> Bool {
        let wal = try usableWAL()
        let snap = rd.snapshot.flatMap { $0.isEmpty ? nil : $0 }
        if let snap { try saveSnapshot(snap, wal) }
        let hs = rd.hardState.map { WALHardState(term: $0.term, vote: $0.vote, commit: $0.commit) }
        let walEntries = rd.entries.map { WALEntry(index: $0.index, term: $0.term, data: $0.encode()) }
        var synced = try wal.save(hardState: hs, entries: walEntries)
        if let snap, walEntries.isEmpty {
            // The log now ends at the snapshot. The mark goes after the hard state: a mark
            // without the commit index that makes the marker usable would leave a gap for a
            // reader falling back to an older snapshot.
            synced = try wal.save(hardState: nil, entries: [Self.truncationMark(after: snap.metadata)])
        }
        if (rd.mustSync || snap != nil) && !synced {
            try wal.sync()
            synced = true
        }
        if let snap { try release(to: snap.metadata.index) }
        try memory.append(rd.entries)
        if let h = rd.hardState { memory.setHardState(h) }
        return synced
    }

    /// An entry record with no data (never a valid encoded entry) at the index after a
    /// snapshot's, written after its marker (and after the hard state that commits it) when the
    /// log ends at the snapshot. Reading the WAL from a marker ignores entry records at or
    /// below the snapshot index, so without the mark it would hand back any entry records past
    /// the snapshot written before the marker: the stale tail of a log that a snapshot from the
    /// leader replaced, or, after that, of an older one. By the WAL's rule (an entry at index i
    /// replaces everything from i on) the mark cuts them; recovery drops it, and the next entry
    /// at that index replaces it.
    static func truncationMark(after s: SnapshotMetadata) -> WALEntry {
        WALEntry(index: s.index + 1, term: s.term, data: [])
    }

    /// Makes a snapshot durable and installs it in ``memory``. The file comes first: a crash
    /// before the marker leaves an orphan file that recovery skips, never a marker without its
    /// file.
    private func saveSnapshot(_ snap: Snapshot, _ wal: WAL) throws {
        let stored = StoredSnapshot(index: snap.metadata.index, term: snap.metadata.term,
                                    confState: snap.metadata.confState.encode(), data: snap.data)
        try snapshotter.save(stored)
        try wal.saveSnapshot(stored.marker)
        try memory.applySnapshot(snap)
    }

    // MARK: Snapshots and compaction

    /// Takes a snapshot of the application state `data` at applied index `index` (in the
    /// log): records it in ``memory``, saves the snapshot file and the WAL marker (synced), then
    /// releases WAL segments before the one holding `index` beyond `options.wal.maxSegmentFiles`
    /// and purges snapshot files beyond `options.maxSnapshotFiles`. Returns the snapshot.
    @discardableResult
    public func createSnapshot(index: UInt64, confState: ConfState, data: [UInt8]) throws -> Snapshot {
        let wal = try usableWAL()
        guard index <= memory.hardState.commit else {
            throw DurableRaftError.inconsistent("snapshot at \(index) beyond the commit index \(memory.hardState.commit)")
        }
        let snap = try memory.createSnapshot(index: index, confState: confState, data: data)
        let stored = StoredSnapshot(index: index, term: snap.metadata.term, confState: confState.encode(), data: data)
        try snapshotter.save(stored)
        try wal.saveSnapshot(stored.marker)
        if try memory.lastIndex() == index { try wal.save(hardState: nil, entries: [Self.truncationMark(after: snap.metadata)]) }
        try release(to: index)
        return snap
    }

    /// Drops from ``memory`` the entries older than the last `keeping` entries before the
    /// current snapshot (etcd keeps 5000 for slow followers), so memory stays bounded; the WAL
    /// still has them until its segments are released. Returns the new first index.
    @discardableResult
    public func compact(keeping: UInt64) throws -> UInt64 {
        let snapIndex = try memory.snapshot().metadata.index
        let first = try memory.firstIndex()
        if snapIndex > keeping {
            let to = snapIndex - keeping
            if to >= first { try memory.compact(to) }
        }
        return try memory.firstIndex()
    }

    /// The committed entries after `index`, in order: what to re-apply at start-up to a state
    /// machine whose consistent index is `index`. Throws `RaftStorageError.compacted` when
    /// some of them are no longer held (the state machine is older than the snapshot: restore
    /// it from the snapshot first; taking a snapshot only after the state machine has made its
    /// applied index durable avoids this).
    public func committedEntries(after index: UInt64) throws -> [Entry] {
        let commit = memory.hardState.commit
        guard index < commit else { return [] }
        guard index >= (try memory.firstIndex()) - 1 else { throw RaftStorageError.compacted }
        return try memory.entries(index + 1, commit + 1, maxBytes: UInt64.max)
    }

    /// The WAL segment files in use, oldest first.
    public var walSegmentFiles: [String] { wal?.segmentFiles ?? [] }

    /// Syncs and closes the WAL, releasing its lock. Later writes throw ``DurableRaftError/closed``.
    public func close() throws {
        guard let w = wal else { return }
        wal = nil
        try w.close()
    }

    /// Segment sequence and write offset of the WAL (tests).
    var walTail: (sequence: UInt64, offset: Int64)? { wal?.tailPosition }

    private func usableWAL() throws -> WAL {
        guard let wal else { throw DurableRaftError.closed }
        return wal
    }

    private func release(to index: UInt64) throws {
        try usableWAL().releaseLockTo(index)
        try snapshotter.purge(keep: options.maxSnapshotFiles)
    }
}
