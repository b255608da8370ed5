// swetcdutl: offline tools for swetcd data directories (as etcd's etcdutl).
// None needs or contacts a running server. `wal`, `status` and `snapshot status` only read;
// `defrag` rewrites a stopped member's backend and `snapshot restore` creates a new data dir.
import ArgumentParser

@main
struct Swetcdutl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swetcdutl",
        abstract: "Offline tools for swetcd data directories.",
        discussion: """
            Commands work on data directories written by swetcd and refuse any other (etcd's \
            own format included). Only `defrag` modifies one (a stopped member's); `snapshot \
            restore` creates a new one. Snapshot files may be etcd's or swetcd's; `migrate` \
            writes etcd's format. Errors exit with code 1.
            """,
        version: ToolVersion.swetcdutl,
        subcommands: [VersionCommand.self, WALCommand.self, StatusCommand.self, SnapshotCommand.self, DefragCommand.self, MigrateCommand.self]
    )
}

/// Versions printed by `swetcdutl version`.
enum ToolVersion {
    static let swetcdutl = "0.1.0"
    /// The etcd API version swetcd speaks.
    static let api = "3.5"
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version.")

    func run() {
        print("swetcdutl version: \(ToolVersion.swetcdutl)")
        print("API version: \(ToolVersion.api)")
    }
}

/// `swetcdutl wal ...`: WAL inspection (room for more WAL subcommands later).
struct WALCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wal", abstract: "Inspect the write-ahead log.",
        subcommands: [WALDumpCommand.self]
    )
}
