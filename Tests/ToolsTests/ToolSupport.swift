import Foundation
import Testing

/// The output of a finished tool process.
struct ToolRun: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum Tools {
    /// The directory holding the built products: next to the test bundle in `.build/debug`.
    static var productsDirectory: URL {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // On Linux the bundle is an executable `swetcdPackageTests.xctest` in the products dir.
        if dir.pathExtension == "xctest" { dir = dir.deletingLastPathComponent() }
        return dir
    }

    /// Path of a built executable product (`swetcdutl`, `swetcd-bench`).
    static func binary(_ name: String) throws -> String {
        let path = productsDirectory.appendingPathComponent(name).path
        try #require(FileManager.default.isExecutableFile(atPath: path), "no built \(name) at \(path)")
        return path
    }

    /// Runs `executable` with `arguments`, killing it after `timeout`; output goes through files
    /// so a chatty process never blocks on a full pipe.
    static func run(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(120)) async throws -> ToolRun {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swetcd-tool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("out"), err = dir.appendingPathComponent("err")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let outHandle = try FileHandle(forWritingTo: out), errHandle = try FileHandle(forWritingTo: err)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.standardOutput = outHandle
        p.standardError = errHandle
        let (done, cont) = AsyncStream<Int32>.makeStream()
        p.terminationHandler = { cont.yield($0.terminationStatus); cont.finish() }
        try p.run()
        let killer = Task {
            try await Task.sleep(for: timeout)
            p.terminate()
        }
        var status: Int32 = -1
        for await s in done { status = s }
        killer.cancel()
        try outHandle.close()
        try errHandle.close()
        return ToolRun(status: status,
                       stdout: String(decoding: try Data(contentsOf: out), as: UTF8.self),
                       stderr: String(decoding: try Data(contentsOf: err), as: UTF8.self))
    }

    /// Finds an executable on PATH (and in /usr/bin, /usr/sbin).
    static func which(_ name: String) -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/bin:/usr/sbin:/usr/local/bin"
        for d in path.split(separator: ":") {
            let p = "\(d)/\(name)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }
}

/// A temporary directory removed on deinit.
final class TempDir: @unchecked Sendable {
    let path: String
    init(_ tag: String = "tools") {
        path = NSTemporaryDirectory() + "swetcd-\(tag)-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func sub(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}
