#if canImport(Glibc)
import Glibc
#endif
import LMDBBackend

/// Tuning of a `WAL`.
public struct WALOptions: Sendable {
    /// Segment size: files are preallocated to it and a new segment is cut once it is reached.
    public var segmentSize: Int64
    /// How many segment files `releaseLockTo` keeps at least (etcd's `--max-wals`); 0 keeps all.
    public var maxSegmentFiles: Int

    /// Defaults as etcd: 64 MiB segments, keep 5 segment files.
    public init(segmentSize: Int64 = 64 << 20, maxSegmentFiles: Int = 5) {
        self.segmentSize = segmentSize
        self.maxSegmentFiles = maxSegmentFiles
    }
}

/// What a WAL holds after a given snapshot.
public struct WALContents: Sendable, Equatable {
    /// The metadata given to `WAL.create` (the same in every segment).
    public var metadata: [UInt8]
    /// The last hard state written (empty if none).
    public var hardState: WALHardState
    /// The entries after the snapshot, with later writes of an index replacing earlier ones
    /// and everything after them.
    public var entries: [WALEntry]
    /// The marker matching the requested snapshot, with its conf state; nil without one.
    public var snapshot: WALSnapshotMarker?
    /// Set when the last segment ended in a torn write that was cut off (or, read-only, ignored).
    public var tornTail: WALTornTail?
}

/// A torn tail found at the end of the last segment.
public struct WALTornTail: Sendable, Equatable {
    /// Path of the last segment.
    public var file: String
    /// Where the valid records end: the WAL continues from here.
    public var offset: Int64
    /// Why the first byte after `offset` is not a valid record.
    public var reason: String
}

/// The write-ahead log: CRC-protected records in preallocated segment files
/// (`<seq:016x>-<firstIndex:016x>.wal`) in one directory, usually `<data-dir>/member/wal`.
///
/// Create it once with `create`; afterwards `open` reads it back from a snapshot, repairs a
/// torn tail and returns a WAL ready to append. The directory is locked (`flock`) while open.
/// Not thread-safe: one owner drives it. After a failed write or sync every call throws
/// `WALError.failed`, since what reached the disk is unknown; reopen to continue.
public final class WAL {
    /// The WAL directory.
    public let directory: String
    /// The options it was opened with.
    public let options: WALOptions
    /// The metadata written at the head of every segment.
    public let metadata: [UInt8]
    /// Index of the last entry written (or of a later snapshot marker).
    public private(set) var lastIndex: UInt64
    /// The last hard state written.
    public private(set) var hardState: WALHardState

    private var segments: [WALSegmentName]
    private var tail: FileIOHandle
    private var writeOffset: Int64
    /// The tail is written (records, or zeros by ``zeroAhead(of:)``) up to here; beyond it the
    /// preallocated space may still be unwritten extents.
    private var writtenTo: Int64
    private var lockHandle: FileIOHandle?
    private var buffer: [UInt8] = []
    private var failure: String?

    private init(directory: String, options: WALOptions, metadata: [UInt8], lastIndex: UInt64,
                 hardState: WALHardState, segments: [WALSegmentName], tail: FileIOHandle,
                 writeOffset: Int64, lock: FileIOHandle) {
        self.directory = directory
        self.options = options
        self.metadata = metadata
        self.lastIndex = lastIndex
        self.hardState = hardState
        self.segments = segments
        self.tail = tail
        self.writeOffset = writeOffset
        self.writtenTo = writeOffset
        self.lockHandle = lock
    }

    deinit { try? close() }

    // MARK: Creating and opening

    /// Creates a new WAL in `directory`, which must not exist: the first segment is written in
    /// `<directory>.tmp`, synced, and the directory renamed into place, so a crash leaves
    /// either no WAL or a complete one.
    public static func create(directory: String, metadata: [UInt8], options: WALOptions = WALOptions()) throws -> WAL {
        try checkOptions(options)
        guard metadata.count <= WALFrame.maxPayload else { throw WALError.invalidArgument("metadata too large") }
        if FileIO.exists(directory) { throw WALError.alreadyExists(directory) }
        let parent = FileIO.parent(directory)
        let tmp = directory + ".tmp"
        if FileIO.exists(tmp) { try removeTempDirectory(tmp) }
        try FileIO.makeDirectory(tmp)
        let first = WALSegmentName(sequence: 0, firstIndex: 0)
        let file = try FileIOHandle.open(FileIO.join(tmp, first.fileName), flags: O_RDWR | O_CREAT | O_EXCL)
        try file.preallocate(to: options.segmentSize)
        let head = segmentHead(first, metadata: metadata, hardState: WALHardState())
        try file.write(head, at: 0)
        try file.sync()
        try FileIO.syncDirectory(tmp)
        try FileIO.rename(tmp, directory)
        try FileIO.syncDirectory(parent)
        let lock = try lockDirectory(directory)
        let tail = try FileIOHandle.open(FileIO.join(directory, first.fileName), flags: O_RDWR)
        file.close()
        return WAL(directory: directory, options: options, metadata: metadata, lastIndex: 0,
                   hardState: WALHardState(), segments: [first], tail: tail,
                   writeOffset: Int64(head.count), lock: lock)
    }

    /// Opens an existing WAL for appending. Reads it from the segment holding `snapshot`
    /// (nil: from the start), cuts off a torn tail of the last segment (zero-filling it again)
    /// and returns what it holds. Throws `WALError.corrupt` for damage anywhere else, and
    /// `snapshotNotFound` if `snapshot` has a nonzero index and no marker for it is found.
    /// `progress` (optional) counts the entries read.
    public static func open(directory: String, snapshot: WALSnapshotMarker? = nil,
                            options: WALOptions = WALOptions(),
                            progress: StartupProgress? = nil) throws -> (wal: WAL, contents: WALContents) {
        try checkOptions(options)
        let lock = try lockDirectory(directory)
        let names = try segmentNames(directory, removeTemps: true)
        let loaded = try load(directory: directory, names: names, snapshot: snapshot, progress: progress)
        guard let last = names.last else { throw WALError.notFound("no segments in \(directory)") }
        let path = FileIO.join(directory, last.fileName)
        let tail = try FileIOHandle.open(path, flags: O_RDWR)
        if loaded.tailDamaged {
            // Cut the torn bytes and zero-fill the rest again, so no stale record can follow.
            try tail.truncate(to: loaded.tailEnd)
        }
        if try loaded.tailDamaged || tail.size() < options.segmentSize {
            try tail.preallocate(to: options.segmentSize)
            try tail.sync()
        }
        let wal = WAL(directory: directory, options: options, metadata: loaded.contents.metadata,
                      lastIndex: loaded.lastIndex, hardState: loaded.contents.hardState,
                      segments: names, tail: tail, writeOffset: loaded.tailEnd, lock: lock)
        return (wal, loaded.contents)
    }

    /// Reads a WAL without modifying or locking it: as `open`, but a torn tail is only
    /// reported (`WALContents.tornTail`), not cut.
    public static func read(directory: String, snapshot: WALSnapshotMarker? = nil) throws -> WALContents {
        let names = try segmentNames(directory, removeTemps: false)
        return try load(directory: directory, names: names, snapshot: snapshot).contents
    }

    /// The snapshot markers in the WAL whose index is at most the last hard state's commit
    /// index (those a snapshot file may legitimately exist for), oldest first. Read-only.
    /// `progress` (optional) counts the records read.
    public static func snapshotMarkers(directory: String, progress: StartupProgress? = nil) throws -> [WALSnapshotMarker] {
        let names = try segmentNames(directory, removeTemps: false)
        var markers: [WALSnapshotMarker] = []
        var hs = WALHardState()
        for (i, name) in names.enumerated() {
            let path = FileIO.join(directory, name.fileName)
            let bytes = try FileIOHandle.open(path, flags: O_RDONLY).readAll()
            let scan = try name.scan(bytes, file: path, isLast: i == names.count - 1) { _, rec in
                progress?.advance()
                switch rec {
                case let .snapshot(m): markers.append(m)
                case let .hardState(h): hs = h
                default: break
                }
            }
            if scan.damage == .corrupt { throw WALError.corrupt(file: path, offset: Int64(scan.validEnd), reason: scan.reason) }
        }
        return markers.filter { $0.index <= hs.commit }
    }

    private struct Loaded {
        var contents: WALContents
        var lastIndex: UInt64
        var tailEnd: Int64
        var tailDamaged: Bool
    }

    private static func load(directory: String, names: [WALSegmentName], snapshot: WALSnapshotMarker?,
                             progress: StartupProgress? = nil) throws -> Loaded {
        guard !names.isEmpty else { throw WALError.notFound("no segments in \(directory)") }
        let snapIndex = snapshot?.index ?? 0
        guard let start = names.lastIndex(where: { $0.firstIndex <= snapIndex }) else {
            throw WALError.notFound("no segment in \(directory) reaches back to index \(snapIndex)")
        }
        var contents = WALContents(metadata: [], hardState: WALHardState(), entries: [], snapshot: nil, tornTail: nil)
        var metadata: [UInt8]?
        var lastIndex: UInt64 = 0
        var tailEnd: Int64 = 0
        var tailDamaged = false
        for i in start..<names.count {
            let name = names[i]
            let isLast = i == names.count - 1
            let path = FileIO.join(directory, name.fileName)
            progress?.touch()
            let bytes = try FileIOHandle.open(path, flags: O_RDONLY).readAll()
            progress?.touch()
            let scan = try name.scan(bytes, file: path, isLast: isLast) { offset, rec in
                func corrupt(_ why: String) -> WALError { .corrupt(file: path, offset: Int64(offset), reason: why) }
                switch rec {
                case .segmentHeader:
                    break
                case let .metadata(m):
                    if let metadata, metadata != m { throw corrupt("metadata differs from earlier segments") }
                    metadata = m
                case let .entry(e):
                    progress?.advance()
                    lastIndex = e.index
                    guard e.index > snapIndex else { break }
                    let pos = e.index - snapIndex - 1
                    guard pos <= UInt64(contents.entries.count) else {
                        let have = snapIndex + UInt64(contents.entries.count)
                        throw corrupt("entry \(e.index) leaves a gap after index \(have)")
                    }
                    contents.entries.removeSubrange(Int(pos)...)
                    contents.entries.append(e)
                case let .hardState(h):
                    progress?.touch()
                    contents.hardState = h
                case let .snapshot(m):
                    lastIndex = max(lastIndex, m.index)
                    if let snapshot, m.index == snapIndex, snapIndex != 0 {
                        guard m.term == snapshot.term else {
                            throw WALError.snapshotMismatch(index: m.index, walTerm: m.term, wantedTerm: snapshot.term)
                        }
                        contents.snapshot = m
                    }
                }
            }
            switch scan.damage {
            case nil:
                break
            case .corrupt?:
                throw WALError.corrupt(file: path, offset: Int64(scan.validEnd), reason: scan.reason)
            case .tornTail?, .tornWrite?:
                contents.tornTail = WALTornTail(file: path, offset: Int64(scan.validEnd), reason: scan.reason)
                tailDamaged = true
            }
            if isLast { tailEnd = Int64(scan.validEnd) }
        }
        if let snapshot, snapIndex != 0, contents.snapshot == nil {
            throw WALError.snapshotNotFound(index: snapIndex, term: snapshot.term)
        }
        guard let metadata else {
            throw WALError.corrupt(file: FileIO.join(directory, names[start].fileName), offset: 0, reason: "no metadata record")
        }
        contents.metadata = metadata
        return Loaded(contents: contents, lastIndex: max(lastIndex, snapIndex), tailEnd: tailEnd, tailDamaged: tailDamaged)
    }

    // MARK: Writing

    /// Whether a batch must be synced before it is acknowledged: it has entries, or the term
    /// or vote changed (a commit index change alone may be lost and relearned).
    public static func mustSync(_ hardState: WALHardState, previous: WALHardState, entryCount: Int) -> Bool {
        entryCount != 0 || hardState.term != previous.term || hardState.vote != previous.vote
    }

    /// Appends `entries` (each replacing any entry at its index and after) and then
    /// `hardState` as one write, followed by ONE `fdatasync` when `mustSync` says so.
    /// Entries must be consecutive and start at most at `lastIndex + 1` (else
    /// `invalidArgument`, nothing written).
    /// Returns whether the batch is on disk (synced, or the segment was cut, which syncs).
    @discardableResult
    public func save(hardState: WALHardState?, entries: [WALEntry]) throws -> Bool {
        try checkUsable()
        let hs = hardState.flatMap { $0.isEmpty || $0 == self.hardState ? nil : $0 }
        if entries.isEmpty && hs == nil { return false }
        if let first = entries.first {
            guard first.index >= 1, first.index <= lastIndex + 1 else {
                throw WALError.invalidArgument("entry \(first.index) does not follow the last index \(lastIndex)")
            }
            for (a, b) in zip(entries, entries.dropFirst()) where b.index != a.index + 1 {
                throw WALError.invalidArgument("entries \(a.index) and \(b.index) are not consecutive")
            }
        }
        buffer.removeAll(keepingCapacity: true)
        for e in entries {
            guard 16 + e.data.count <= WALFrame.maxPayload else { throw WALError.invalidArgument("entry \(e.index) too large") }
            WALFrame.append(.entry(e), to: &buffer)
        }
        if let hs { WALFrame.append(.hardState(hs), to: &buffer) }
        let sync = WAL.mustSync(hs ?? self.hardState, previous: self.hardState, entryCount: entries.count)
        try guarded {
            try tail.write(buffer, at: writeOffset)
            try zeroAhead(of: writeOffset + Int64(buffer.count))
        }
        writeOffset += Int64(buffer.count)
        if let last = entries.last { lastIndex = last.index }
        if let hs { self.hardState = hs }
        if writeOffset >= options.segmentSize {
            try cut()
            return true
        }
        if sync { try guarded { try tail.dataSync() } }
        return sync
    }

    /// Records that a snapshot at `marker` exists, and syncs. Write the marker before the
    /// snapshot file, and call `releaseLockTo(marker.index)` after the snapshot file is saved.
    public func saveSnapshot(_ marker: WALSnapshotMarker) throws {
        try checkUsable()
        guard 16 + marker.confState.count <= WALFrame.maxPayload else { throw WALError.invalidArgument("conf state too large") }
        buffer.removeAll(keepingCapacity: true)
        WALFrame.append(.snapshot(marker), to: &buffer)
        try guarded {
            try tail.write(buffer, at: writeOffset)
            try zeroAhead(of: writeOffset + Int64(buffer.count))
        }
        writeOffset += Int64(buffer.count)
        lastIndex = max(lastIndex, marker.index)
        if writeOffset >= options.segmentSize { try cut() } else { try guarded { try tail.dataSync() } }
    }

    /// How far ahead of the records the tail is written with zeros at a time.
    static let zeroAheadBytes: Int64 = 1 << 20

    /// Keeps the tail written with zeros ahead of the records: once less than a quarter of
    /// ``zeroAheadBytes`` is left after `end` (the end of the records just written), writes
    /// zeros up to ``zeroAheadBytes`` past it (at most to the segment's size), before the
    /// `fdatasync` that follows. Preallocated space is a file system's unwritten extents: a
    /// sync after writing into them also writes the extent map (on ext4 and XFS a metadata
    /// update, with a journal a journal commit), every time. Zeros written ahead cost that once
    /// per MiB of log instead of once per sync, and they are what preallocated space reads as,
    /// so readers see no difference.
    private func zeroAhead(of end: Int64) throws {
        guard writtenTo - end < Self.zeroAheadBytes / 4 else { return }
        let from = max(end, writtenTo)
        let to = min(options.segmentSize, end + Self.zeroAheadBytes)
        if to > from { try tail.writeZeros(count: to - from, at: from) }
        writtenTo = max(to, end)
    }

    /// `fdatasync` of the segment being written.
    public func sync() throws {
        try checkUsable()
        try guarded { try tail.dataSync() }
    }

    /// Ends the current segment (trimmed to its records and synced) and starts the next one,
    /// named after `lastIndex + 1` and headed by the metadata and hard state. The new segment
    /// is written and preallocated as a temp file, synced, renamed, and the directory synced.
    private func cut() throws {
        try guarded {
            try tail.truncate(to: writeOffset)
            try tail.sync()
            guard let current = segments.last else { throw WALError.failed("no segment") }
            let next = WALSegmentName(sequence: current.sequence + 1, firstIndex: lastIndex + 1)
            let path = FileIO.join(directory, next.fileName)
            let tmp = path + ".tmp"
            if FileIO.exists(tmp) { try FileIO.remove(tmp) }
            let file = try FileIOHandle.open(tmp, flags: O_RDWR | O_CREAT | O_EXCL)
            try file.preallocate(to: options.segmentSize)
            let head = WAL.segmentHead(next, metadata: metadata, hardState: hardState)
            try file.write(head, at: 0)
            try file.sync()
            try FileIO.rename(tmp, path)
            file.path = path
            try FileIO.syncDirectory(directory)
            tail.close()
            tail = file
            writeOffset = Int64(head.count)
            writtenTo = writeOffset
            segments.append(next)
        }
    }

    /// Deletes old segments no longer needed once a snapshot at `index` is saved: those
    /// before the segment that may hold `index`, oldest first, while more than
    /// `options.maxSegmentFiles` segments exist. Returns the names of the files removed.
    @discardableResult
    public func releaseLockTo(_ index: UInt64) throws -> [String] {
        try checkUsable()
        guard options.maxSegmentFiles > 0,
              let keepFrom = segments.lastIndex(where: { $0.firstIndex <= index }) else { return [] }
        var removed: [String] = []
        var count = segments.count
        for name in segments[..<keepFrom] where count > options.maxSegmentFiles {
            try FileIO.remove(FileIO.join(directory, name.fileName))
            removed.append(name.fileName)
            count -= 1
        }
        if !removed.isEmpty {
            segments.removeFirst(removed.count)
            try FileIO.syncDirectory(directory)
        }
        return removed
    }

    /// Sequence number of the segment being written and the offset where the next record goes.
    var tailPosition: (sequence: UInt64, offset: Int64) { (segments.last?.sequence ?? 0, writeOffset) }

    /// The segment files currently in use, oldest first.
    public var segmentFiles: [String] { segments.map(\.fileName) }

    /// Syncs and closes the log, releasing the directory lock. Later calls throw `.closed`.
    public func close() throws {
        guard let lock = lockHandle else { return }
        defer {
            tail.close()
            lock.close()
            lockHandle = nil
        }
        if failure == nil { try tail.dataSync() }
    }

    // MARK: Helpers

    private func checkUsable() throws {
        guard lockHandle != nil else { throw WALError.closed }
        if let failure { throw WALError.failed(failure) }
    }

    /// Runs a write or sync; any failure leaves the log unusable.
    private func guarded(_ body: () throws -> Void) throws {
        do { try body() } catch {
            failure = "\(error)"
            throw error
        }
    }

    private static func checkOptions(_ o: WALOptions) throws {
        guard o.segmentSize >= 4096 else { throw WALError.invalidArgument("segment size below 4096 bytes") }
        guard o.maxSegmentFiles >= 0 else { throw WALError.invalidArgument("negative maxSegmentFiles") }
    }

    /// The records every segment starts with.
    static func segmentHead(_ name: WALSegmentName, metadata: [UInt8], hardState: WALHardState) -> [UInt8] {
        var b: [UInt8] = []
        WALFrame.append(.segmentHeader(sequence: name.sequence, firstIndex: name.firstIndex), to: &b)
        WALFrame.append(.metadata(metadata), to: &b)
        if !hardState.isEmpty { WALFrame.append(.hardState(hardState), to: &b) }
        return b
    }

    private static func lockDirectory(_ directory: String) throws -> FileIOHandle {
        guard FileIO.isDirectory(directory) else { throw WALError.notFound("no WAL directory at \(directory)") }
        let h = try FileIOHandle.openDirectory(directory)
        guard try h.tryLock() else { throw WALError.locked(directory) }
        return h
    }

    /// Segment names in order; checks the sequence numbers are consecutive. With
    /// `removeTemps`, deletes `*.wal.tmp` left by a cut that a crash interrupted.
    static func segmentNames(_ directory: String, removeTemps: Bool) throws -> [WALSegmentName] {
        guard FileIO.isDirectory(directory) else { throw WALError.notFound("no WAL directory at \(directory)") }
        var names: [WALSegmentName] = []
        var removed = false
        for f in try FileIO.list(directory) {
            if let n = WALSegmentName(parsing: f) {
                names.append(n)
            } else if removeTemps && f.hasSuffix(".wal.tmp") {
                try FileIO.remove(FileIO.join(directory, f))
                removed = true
            }
        }
        if removed { try FileIO.syncDirectory(directory) }
        names.sort()
        for (a, b) in zip(names, names.dropFirst()) where b.sequence != a.sequence + 1 {
            throw WALError.corrupt(file: FileIO.join(directory, b.fileName), offset: 0,
                                   reason: "segment sequence jumps from \(a.sequence) to \(b.sequence)")
        }
        return names
    }

    private static func removeTempDirectory(_ tmp: String) throws {
        for f in try FileIO.list(tmp) {
            guard WALSegmentName(parsing: f) != nil || f.hasSuffix(".wal.tmp") else {
                throw WALError.invalidArgument("\(tmp) holds a file that is not ours: \(f)")
            }
            try FileIO.remove(FileIO.join(tmp, f))
        }
        try FileIO.removeDirectory(tmp)
    }
}
