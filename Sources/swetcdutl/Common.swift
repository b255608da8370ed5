import ArgumentParser
import Foundation
import Storage

#if canImport(Glibc)
import Glibc
#endif

/// A failure the tool reports as `Error: <message>` with exit code 1.
struct ToolError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

/// Output format (`-w`, as etcdctl's `--write-out`).
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

/// `--data-dir` / `--wal-dir`, shared by the commands that read a data directory (and by
/// the snapshot/defrag commands to come).
struct DataDirOptions: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: "Path to the data directory.")
    var dataDir: String?

    @Option(name: .customLong("wal-dir"), help: "Path to the WAL directory (default: <data-dir>/member/wal).")
    var walDir: String?

    func validate() throws {
        if dataDir == nil && walDir == nil { throw ValidationError("--data-dir (or --wal-dir) is required") }
    }

    /// The data directory, checked to be one swetcd wrote (never modified).
    func checkedDataDir() throws -> DataDir {
        guard let path = dataDir else { throw ToolError("--data-dir is required") }
        return try DataDirOptions.checked(path, walDir: walDir)
    }

    /// `path` (with its dedicated WAL directory `walDir`, if any) checked to be a data
    /// directory swetcd wrote.
    static func checked(_ path: String, walDir: String? = nil) throws -> DataDir {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ToolError("data directory \(path) does not exist")
        }
        guard isDir.boolValue else { throw ToolError("\(path) is not a directory") }
        let dir = DataDir(path: path, walDirectory: walDir)
        switch try dir.inspect() {
        case .ours: return dir
        case .empty: throw ToolError("\(path) holds no swetcd data (no WAL)")
        case let .foreign(reason): throw ToolError("\(path) is not a swetcd data directory: \(reason)")
        }
    }

    /// The WAL directory: `--wal-dir`, else the data directory's.
    func resolvedWALDir() throws -> String {
        if let w = walDir {
            guard FileManager.default.fileExists(atPath: w) else { throw ToolError("WAL directory \(w) does not exist") }
            return w
        }
        return try checkedDataDir().walDirectory
    }
}

/// Lower-case 16-digit hex, as etcd prints member and cluster IDs.
func hexID(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 16 - s.count)) + s
}

/// Renders rows as an ASCII table with a header row, in etcdctl's style.
func renderTable(header: [String], rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    let rule = "+" + widths.map { String(repeating: "-", count: $0 + 2) }.joined(separator: "+") + "+"
    func line(_ cells: [String]) -> String {
        "|" + cells.enumerated().map { i, c in " " + c + String(repeating: " ", count: widths[i] - c.count) + " " }
            .joined(separator: "|") + "|"
    }
    return ([rule, line(header), rule] + rows.map(line) + [rule]).joined(separator: "\n")
}

/// Writes `value` as pretty JSON with sorted keys.
func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try enc.encode(value), as: UTF8.self))
}

/// fsync of one file or directory.
func syncPath(_ path: String) throws {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ToolError("cannot open \(path) to sync it: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw ToolError("cannot sync \(path): \(String(cString: strerror(errno)))") }
}

/// fsync of every file and directory under `root` (deepest first), then of `root` itself.
func syncTree(_ root: String) throws {
    let entries = (FileManager.default.enumerator(atPath: root)?.allObjects as? [String]) ?? []
    for entry in entries.sorted(by: { $0.count > $1.count }) { try syncPath(root + "/" + entry) }
    try syncPath(root)
}

/// Refuses a data directory a running member uses: its WAL directory is `flock`ed, and its
/// LMDB backend's lock file carries a lock while the db is open. On success the returned
/// descriptor holds the WAL directory's lock until closed, so no member starts meanwhile.
func lockUnusedDataDir(_ dataDir: DataDir) throws -> Int32 {
    let walDir = dataDir.walDirectory
    let fd = open(walDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw ToolError("cannot open WAL directory \(walDir): \(String(cString: strerror(errno)))") }
    if flock(fd, LOCK_EX | LOCK_NB) != 0 {
        close(fd)
        throw ToolError("\(walDir) is locked: the data directory is in use by a running member")
    }
    let lockFile = dataDir.backendPath + "-lock"
    let lfd = open(lockFile, O_RDWR | O_CLOEXEC)
    if lfd >= 0 {
        defer { close(lfd) }
        var probe = flock()
        probe.l_type = Int16(F_WRLCK)
        probe.l_whence = Int16(SEEK_SET)
        probe.l_start = 0
        probe.l_len = 1
        if fcntl(lfd, F_GETLK, &probe) == 0, probe.l_type != Int16(F_UNLCK) {
            close(fd)
            throw ToolError("\(dataDir.backendPath) is open in process \(probe.l_pid): the data directory is in use")
        }
    }
    return fd
}
