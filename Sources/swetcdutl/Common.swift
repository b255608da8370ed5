import ArgumentParser
import Foundation
import Storage

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
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ToolError("data directory \(path) does not exist")
        }
        guard isDir.boolValue else { throw ToolError("\(path) is not a directory") }
        let dir = DataDir(path: path)
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
