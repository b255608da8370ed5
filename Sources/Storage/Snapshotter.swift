#if canImport(Glibc)
import Glibc
import LMDBBackend
#endif

/// A Raft snapshot as stored in a `.snap` file: its position, the encoded configuration, and
/// the encoded state (both opaque here).
public struct StoredSnapshot: Sendable, Equatable {
    public var index: UInt64
    public var term: UInt64
    public var confState: [UInt8]
    public var data: [UInt8]

    public init(index: UInt64, term: UInt64, confState: [UInt8] = [], data: [UInt8]) {
        self.index = index
        self.term = term
        self.confState = confState
        self.data = data
    }

    /// The WAL marker that refers to this snapshot.
    public var marker: WALSnapshotMarker { WALSnapshotMarker(index: index, term: term, confState: confState) }
}

/// Errors of snapshot files.
public enum SnapshotError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file is damaged or not a snapshot file of ours.
    case corrupt(file: String, reason: String)
    /// No usable snapshot file.
    case notFound(String)

    public var description: String {
        switch self {
        case let .corrupt(file, reason): "snap: \(file): \(reason)"
        case let .notFound(m): "snap: \(m)"
        }
    }
}

/// A snapshot file that `loadNewest` passed over, and why.
public struct SkippedSnapshot: Sendable, Equatable {
    public var file: String
    public var reason: String
}

/// Snapshot files in one directory (usually `<data-dir>/member/snap`), named
/// `<term:016x>-<index:016x>.snap` as etcd names them. Each file is
///
///     0   8 bytes  magic "swetcdSN"
///     8   u32      format version (1)
///     12  u32      reserved, zero
///     16  u64      term
///     24  u64      index
///     32  u64      conf state length C
///     40  u64      data length D
///     48  C bytes conf state, D bytes data
///     end u32      CRC-32C of everything before it
///
/// little-endian. Files are written as `<name>.tmp`, synced, renamed and the directory synced.
public struct Snapshotter: Sendable {
    /// The snapshot directory, usually `DataDir.snapDirectory`; it must exist.
    public let directory: String

    static let magic: [UInt8] = Array("swetcdSN".utf8)
    static let headerSize = 48

    public init(directory: String) { self.directory = directory }

    static func fileName(term: UInt64, index: UInt64) -> String { hex16(term) + "-" + hex16(index) + ".snap" }

    static func parse(_ name: String) -> (term: UInt64, index: UInt64)? {
        let u = Array(name.utf8)
        guard u.count == 38, u[16] == UInt8(ascii: "-"), name.hasSuffix(".snap"),
              let t = parseHex16(u[0..<16]), let i = parseHex16(u[17..<33]) else { return nil }
        return (t, i)
    }

    /// Snapshot file names, oldest (lowest term, then index) first.
    public func fileNames() throws -> [String] {
        try FileIO.list(directory)
            .compactMap { n in Self.parse(n).map { (n, $0) } }
            .sorted { ($0.1.term, $0.1.index) < ($1.1.term, $1.1.index) }
            .map(\.0)
    }

    /// Writes `snapshot` durably; returns the file's path.
    @discardableResult
    public func save(_ snapshot: StoredSnapshot) throws -> String {
        var b: [UInt8] = Self.magic
        b.appendLE(UInt32(1))
        b.appendLE(UInt32(0))
        b.appendLE(snapshot.term)
        b.appendLE(snapshot.index)
        b.appendLE(UInt64(snapshot.confState.count))
        b.appendLE(UInt64(snapshot.data.count))
        b += snapshot.confState
        b += snapshot.data
        b.appendLE(CRC32C.checksum(b))
        let path = FileIO.join(directory, Self.fileName(term: snapshot.term, index: snapshot.index))
        let tmp = path + ".tmp"
        let f = try FileIOHandle.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC)
        try f.write(b, at: 0)
        try f.sync()
        f.close()
        try FileIO.rename(tmp, path)
        try FileIO.syncDirectory(directory)
        return path
    }

    /// Reads and verifies one snapshot file.
    public func load(fileName: String) throws -> StoredSnapshot {
        let path = FileIO.join(directory, fileName)
        guard let (term, index) = Self.parse(fileName) else { throw SnapshotError.corrupt(file: path, reason: "not a snapshot file name") }
        let b = try FileIOHandle.open(path, flags: O_RDONLY).readAll()
        func bad(_ why: String) -> SnapshotError { .corrupt(file: path, reason: why) }
        guard b.count >= Self.headerSize + 4 else { throw bad("file too short (\(b.count) bytes)") }
        guard Array(b[0..<8]) == Self.magic else { throw bad("not a swetcd snapshot file") }
        return try b.withUnsafeBytes { raw in
            let version = raw.loadLE(UInt32.self, at: 8)
            guard version == 1 else { throw bad("unsupported snapshot format version \(version)") }
            let confLen = raw.loadLE(UInt64.self, at: 32)
            let dataLen = raw.loadLE(UInt64.self, at: 40)
            let body = UInt64(b.count - Self.headerSize - 4)
            guard confLen <= body, dataLen == body - confLen else { throw bad("lengths do not match the file size") }
            let stored = raw.loadLE(UInt32.self, at: b.count - 4)
            guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[0..<(b.count - 4)])) == stored else { throw bad("CRC mismatch") }
            let t = raw.loadLE(UInt64.self, at: 16)
            let i = raw.loadLE(UInt64.self, at: 24)
            guard t == term, i == index else { throw bad("contents (term \(t), index \(i)) do not match the file name") }
            let c = Self.headerSize + Int(confLen)
            return StoredSnapshot(index: i, term: t, confState: Array(b[Self.headerSize..<c]), data: Array(b[c..<(b.count - 4)]))
        }
    }

    /// The newest snapshot file that loads cleanly and, when `markers` is given, matches one
    /// of them by index and term (pass `WAL.snapshotMarkers(directory:)` so the snapshot is
    /// one the WAL knows). Damaged or unmatched files are skipped and listed with the reason.
    public func loadNewest(matching markers: [WALSnapshotMarker]? = nil) throws -> (snapshot: StoredSnapshot?, skipped: [SkippedSnapshot]) {
        var skipped: [SkippedSnapshot] = []
        let wanted = markers.map { Set($0.map { [$0.index, $0.term] }) }
        for name in try fileNames().reversed() {
            let (term, index) = Self.parse(name)!
            if let wanted, !wanted.contains([index, term]) {
                skipped.append(SkippedSnapshot(file: name, reason: "no WAL snapshot marker for index \(index), term \(term)"))
                continue
            }
            do {
                return (try load(fileName: name), skipped)
            } catch let SnapshotError.corrupt(_, reason) {
                skipped.append(SkippedSnapshot(file: name, reason: reason))
            }
        }
        return (nil, skipped)
    }

    /// Deletes the oldest snapshot files beyond the newest `keep` (etcd's `--max-snapshots`,
    /// default 5; 0 keeps all), and leftover temp files. Returns the names removed.
    @discardableResult
    public func purge(keep: Int = 5) throws -> [String] {
        var removed = try FileIO.list(directory).filter { $0.hasSuffix(".snap.tmp") }
        let names = try fileNames()
        if keep > 0 && names.count > keep { removed += names[..<(names.count - keep)] }
        for n in removed { try FileIO.remove(FileIO.join(directory, n)) }
        if !removed.isEmpty { try FileIO.syncDirectory(directory) }
        return removed
    }
}
