import Foundation

/// Paths of the repository's deployment files, and a small process runner.
enum Repo {
    /// The repository root (three levels above this file).
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    static func text(_ relative: String) throws -> String {
        try String(contentsOfFile: path(relative), encoding: .utf8)
    }

    /// A fresh temporary directory.
    static func tempDir() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("swetcd-pkg-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// The first executable of `candidates` that exists.
func executable(_ candidates: [String]) -> String? {
    candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
}

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `path args` to completion with `environment` (nil: inherited), killed after `limit`
/// seconds (default 60) by `timeout(1)`.
func runProcess(_ path: String, _ args: [String], environment: [String: String]? = nil, limit: Int = 60) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    p.arguments = ["-s", "KILL", "\(limit)", path] + args
    if let environment { p.environment = environment }
    let dir = try Repo.tempDir()
    defer { try? FileManager.default.removeItem(at: dir) }
    let out = dir.appendingPathComponent("out"), err = dir.appendingPathComponent("err")
    FileManager.default.createFile(atPath: out.path, contents: nil)
    FileManager.default.createFile(atPath: err.path, contents: nil)
    p.standardInput = FileHandle.nullDevice
    p.standardOutput = try FileHandle(forWritingTo: out)
    p.standardError = try FileHandle(forWritingTo: err)
    try p.run()
    p.waitUntilExit()
    return RunResult(status: p.terminationStatus,
                     stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
                     stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
}

/// The `Key=Value` lines of a systemd unit (comments and section headers dropped).
func unitDirectives(_ text: String) -> [(key: String, value: String)] {
    text.split(separator: "\n").compactMap { raw in
        let line = raw.trimmingCharacters(in: .whitespaces)
        guard !line.isEmpty, !line.hasPrefix("#"), !line.hasPrefix(";"), !line.hasPrefix("["),
              let eq = line.firstIndex(of: "=") else { return nil }
        return (String(line[..<eq]), String(line[line.index(after: eq)...]))
    }
}
