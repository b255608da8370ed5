#if canImport(Glibc)
import Glibc
#endif

/// The data directory layout, as etcd's: `<data-dir>/member/wal/` for WAL segments,
/// `<data-dir>/member/snap/` for snapshot files, and the backend at `<data-dir>/member/snap/db`.
public struct DataDir: Sendable, Equatable {
    /// What a directory holds.
    public enum State: Sendable, Equatable {
        /// Missing, empty (a `lost+found` is ignored), or an initialisation interrupted before
        /// the WAL existed.
        case empty
        /// A swetcd data directory: `member/wal` holds segments with our format marker.
        case ours
        /// Anything else (e.g. a directory written by etcd itself): never modify it.
        case foreign(reason: String)
    }

    /// The data directory (`--data-dir`).
    public let path: String

    public init(path: String) { self.path = path }

    public var memberDirectory: String { FileIO.join(path, "member") }
    public var walDirectory: String { FileIO.join(memberDirectory, "wal") }
    public var snapDirectory: String { FileIO.join(memberDirectory, "snap") }
    /// Where the LMDB backend lives.
    public var backendPath: String { FileIO.join(snapDirectory, "db") }

    /// Classifies the directory without modifying anything.
    public func inspect() throws -> State {
        guard FileIO.exists(path) else { return .empty }
        guard FileIO.isDirectory(path) else { return .foreign(reason: "\(path) is not a directory") }
        let top = try FileIO.list(path).filter { $0 != "lost+found" }
        if top.isEmpty { return .empty }
        if let other = top.first(where: { $0 != "member" }) {
            return .foreign(reason: "unexpected entry \(FileIO.join(path, other))")
        }
        guard FileIO.isDirectory(memberDirectory) else { return .foreign(reason: "\(memberDirectory) is not a directory") }
        let member = try FileIO.list(memberDirectory)
        if let other = member.first(where: { !["wal", "snap", "wal.tmp"].contains($0) }) {
            return .foreign(reason: "unexpected entry \(FileIO.join(memberDirectory, other))")
        }
        if member.contains("snap") && !FileIO.isDirectory(snapDirectory) {
            return .foreign(reason: "\(snapDirectory) is not a directory")
        }
        guard member.contains("wal") else {
            // Our initialisation creates the WAL before anything is put in snap/.
            if member.contains("snap"), try !FileIO.list(snapDirectory).isEmpty {
                return .foreign(reason: "\(snapDirectory) has files but there is no WAL")
            }
            return .empty
        }
        guard FileIO.isDirectory(walDirectory) else { return .foreign(reason: "\(walDirectory) is not a directory") }
        let files = try FileIO.list(walDirectory)
        if let other = files.first(where: { WALSegmentName(parsing: $0) == nil && !$0.hasSuffix(".wal.tmp") }) {
            return .foreign(reason: "unexpected file \(FileIO.join(walDirectory, other))")
        }
        guard let first = files.first(where: { WALSegmentName(parsing: $0) != nil }) else {
            return .foreign(reason: "\(walDirectory) holds no WAL segments")
        }
        let file = FileIO.join(walDirectory, first)
        let head = try FileIOHandle.open(file, flags: O_RDONLY).read(at: 0, count: WALFrame.encodedSize(payload: 32))
        switch head.withUnsafeBytes({ WALFrame.decode($0, at: 0) }) {
        case .record(.segmentHeader, _):
            return .ours
        case let .invalid(why) where why.hasPrefix("unsupported WAL format version"):
            return .foreign(reason: "\(file): \(why)")
        default:
            return .foreign(reason: "\(file) is not a swetcd WAL segment (etcd's own WAL format?)")
        }
    }

    /// Creates `member/` and `member/snap/` (mode 0700) when the directory is empty or ours,
    /// and returns the state found before. Throws `WALError.invalidArgument` for a foreign
    /// directory, which is left untouched. The WAL itself is made by `WAL.create(directory:)`
    /// on `walDirectory` (atomically, through `wal.tmp`).
    @discardableResult
    public func prepare() throws -> State {
        let state = try inspect()
        if case let .foreign(reason) = state {
            throw WALError.invalidArgument("refusing to use data directory \(path): \(reason)")
        }
        try FileIO.makeDirectory(path)
        try FileIO.makeDirectory(memberDirectory)
        try FileIO.makeDirectory(snapDirectory)
        try FileIO.syncDirectory(memberDirectory)
        try FileIO.syncDirectory(path)
        try FileIO.syncDirectory(FileIO.parent(path))
        return state
    }
}
