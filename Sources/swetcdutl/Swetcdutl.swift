// swetcdutl: offline tools for swetcd data directories (as etcd's etcdutl).
// Every command here reads only; none needs or contacts a running server.
import ArgumentParser

@main
struct Swetcdutl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swetcdutl",
        abstract: "Offline tools for swetcd data directories.",
        discussion: """
            Commands read a data directory written by swetcd without modifying it. They refuse \
            a directory swetcd did not write (etcd's own format included). Errors exit with code 1.
            """,
        version: ToolVersion.swetcdutl,
        subcommands: [VersionCommand.self, WALCommand.self, StatusCommand.self]
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
