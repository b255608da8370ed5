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
    /// A dedicated WAL directory (`--wal-dir`), or nil for `<data-dir>/member/wal`.
    public let dedicatedWALDirectory: String?

    /// `walDirectory`: a dedicated directory for the WAL segments (etcd's `--wal-dir`; they are
    /// kept directly in it), or nil/empty for `<path>/member/wal`.
    public init(path: String, walDirectory: String? = nil) {
        self.path = path
        var wal = walDirectory ?? ""
        while wal.count > 1 && wal.hasSuffix("/") { wal.removeLast() }
        // The default location given explicitly is no dedicated directory.
        let standard = FileIO.join(FileIO.join(path, "member"), "wal")
        dedicatedWALDirectory = wal.isEmpty || wal == standard ? nil : wal
    }

    public var memberDirectory: String { FileIO.join(path, "member") }
    public var walDirectory: String { dedicatedWALDirectory ?? FileIO.join(memberDirectory, "wal") }
    public var snapDirectory: String { FileIO.join(memberDirectory, "snap") }
    /// Where the LMDB backend lives.
    public var backendPath: String { FileIO.join(snapDirectory, "db") }

    /// Entries of the data directory that are not member data: a file system's `lost+found`,
    /// and `fixtures` (the `--auto-tls` certificates, where etcd keeps them too).
    static let ignoredTopEntries: Set<String> = ["lost+found", "fixtures"]

    /// Classifies the directory without modifying anything.
    public func inspect() throws -> State {
        if let wal = dedicatedWALDirectory { return try inspect(dedicatedWAL: wal) }
        guard FileIO.exists(path) else { return .empty }
        guard FileIO.isDirectory(path) else { return .foreign(reason: "\(path) is not a directory") }
        let top = try FileIO.list(path).filter { !Self.ignoredTopEntries.contains($0) }
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
        return try inspectWAL(walDirectory) ?? .foreign(reason: "\(walDirectory) holds no WAL segments")
    }

    /// The state of a WAL directory that exists: `.ours`, `.foreign`, or nil when it holds
    /// nothing at all.
    private func inspectWAL(_ walDirectory: String) throws -> State? {
        guard FileIO.isDirectory(walDirectory) else { return .foreign(reason: "\(walDirectory) is not a directory") }
        let files = try FileIO.list(walDirectory)
        if files.isEmpty { return nil }
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

    /// `inspect()` with the WAL in its own directory: the data directory then holds only
    /// `member/snap`, and the two must belong together.
    private func inspect(dedicatedWAL wal: String) throws -> State {
        var hasMemberData = false
        if FileIO.exists(path) {
            guard FileIO.isDirectory(path) else { return .foreign(reason: "\(path) is not a directory") }
            let top = try FileIO.list(path).filter { !Self.ignoredTopEntries.contains($0) }
            if let other = top.first(where: { $0 != "member" }) {
                return .foreign(reason: "unexpected entry \(FileIO.join(path, other))")
            }
            if !top.isEmpty {
                guard FileIO.isDirectory(memberDirectory) else { return .foreign(reason: "\(memberDirectory) is not a directory") }
                let member = try FileIO.list(memberDirectory)
                if member.contains("wal") {
                    return .foreign(reason: "\(FileIO.join(memberDirectory, "wal")) holds a WAL but --wal-dir is \(wal); start without --wal-dir, or move the WAL segments there")
                }
                if let other = member.first(where: { $0 != "snap" }) {
                    return .foreign(reason: "unexpected entry \(FileIO.join(memberDirectory, other))")
                }
                if member.contains("snap") {
                    guard FileIO.isDirectory(snapDirectory) else { return .foreign(reason: "\(snapDirectory) is not a directory") }
                    hasMemberData = true
                }
            }
        }
        let walState = FileIO.exists(wal) ? try inspectWAL(wal) : nil
        switch walState {
        case nil:
            if hasMemberData, try !FileIO.list(snapDirectory).isEmpty {
                return .foreign(reason: "\(snapDirectory) has files but the WAL directory \(wal) holds no WAL")
            }
            return .empty
        case .ours?:
            guard hasMemberData else {
                return .foreign(reason: "the WAL directory \(wal) holds a WAL but the data directory \(path) has no member data (\(snapDirectory)); give the --data-dir this WAL belongs to")
            }
            return .ours
        case let other?:
            return other
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
        if let wal = dedicatedWALDirectory, state == .empty {
            // The WAL is created through `<wal>.tmp` renamed to `<wal>`: an empty directory
            // made by the operator is replaced (a mount point cannot be: use a subdirectory).
            try FileIO.makeDirectory(FileIO.parent(wal))
            if FileIO.isDirectory(wal), try FileIO.list(wal).isEmpty {
                do { try FileIO.removeDirectory(wal) } catch {
                    throw WALError.invalidArgument("cannot use the empty WAL directory \(wal) (\(error)); if it is a mount point, give a directory inside it")
                }
            }
        }
        return state
    }

    /// The directories whose permissions ``tightenPermissions()`` checks: the data directory
    /// and the dedicated WAL directory.
    public var privateDirectories: [String] { [path] + (dedicatedWALDirectory.map { [$0] } ?? []) }

    /// Sets each existing directory of ``privateDirectories`` whose mode allows group or
    /// other access to 0700 (etcd refuses such a directory; swetcd repairs it). Returns the
    /// paths changed with their old modes, for the caller to warn about.
    public func tightenPermissions() throws -> [(path: String, oldMode: UInt32)] {
        var changed: [(String, UInt32)] = []
        for dir in privateDirectories {
            var st = stat()
            guard stat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { continue }
            let mode = UInt32(st.st_mode) & 0o7777
            guard mode & 0o077 != 0 else { continue }
            guard chmod(dir, 0o700) == 0 else {
                throw WALError.invalidArgument("cannot set the permissions of \(dir) to 0700: \(String(cString: strerror(errno)))")
            }
            changed.append((dir, mode))
        }
        return changed
    }
}
