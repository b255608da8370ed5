import ArgumentParser
import Foundation
import LMDBBackend
import Storage

#if canImport(Glibc)
import Glibc
#endif

/// `swetcdutl defrag --data-dir DIR`: compacts a stopped member's backend file.
struct DefragCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "defrag",
        abstract: "Defragment the backend of a data directory no member is using.",
        discussion: """
            Rewrites member/snap/db without its free pages (the same procedure a running member \
            performs for Maintenance.Defragment). Refuses a directory in use by a running \
            member and holds the WAL's lock meanwhile, so none starts on it. A crash leaves the \
            old file in place; the next open removes the unfinished copy.
            """
    )

    @Option(name: .customLong("data-dir"), help: "Path to the data directory.")
    var dataDir: String

    @Option(name: .customLong("wal-dir"), help: "The member's dedicated WAL directory, if it was started with --wal-dir.")
    var walDir: String?

    func run() throws {
        let dir = try DataDirOptions.checked(dataDir, walDir: walDir)
        let lock = try lockUnusedDataDir(dir)
        defer { close(lock) }
        guard FileManager.default.fileExists(atPath: dir.backendPath) else {
            throw ToolError("\(dir.backendPath) does not exist: nothing to defragment")
        }
        let backend: Backend
        do { backend = try Backend(path: dir.backendPath) } catch {
            throw ToolError("cannot open the backend \(dir.backendPath): \(error)")
        }
        let result: DefragmentResult
        do {
            result = try backend.defragment()
            try backend.close()
        } catch {
            backend.abandon()
            throw ToolError("defragmenting \(dir.backendPath) failed: \(error)")
        }
        print("Finished defragmenting etcd data[\(dataDir)]: \(result.sizeBefore) -> \(result.sizeAfter) bytes")
    }
}
