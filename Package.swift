// swift-tools-version:6.1
// swetcd: an etcd-compatible control-plane store.
// Targets are layered: Raft (pure consensus core) and Storage (WAL, snapshot
// files, LMDB backend) are independent; MVCC builds on Storage; the server
// joins them. See docs/ARCHITECTURE.md.
import PackageDescription

let package = Package(
    name: "swetcd",
    products: [
        .library(name: "Raft", targets: ["Raft"]),
        .library(name: "Storage", targets: ["Storage"]),
        .library(name: "MVCC", targets: ["MVCC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
    ],
    targets: [
        // Consensus: a deterministic state machine with no I/O, clocks or threads.
        .target(name: "Raft"),
        .testTarget(name: "RaftTests", dependencies: ["Raft"]),
        .executableTarget(name: "raft-bench", dependencies: ["Raft"], path: "Sources/RaftBench"),

        // LMDB from Debian's liblmdb-dev.
        .systemLibrary(name: "CLMDB", path: "Sources/CLMDB", providers: [.apt(["liblmdb-dev"])]),
        // Durability: WAL segments, snapshot files, the LMDB backend; the Raft log kept on them.
        .target(name: "Storage", dependencies: ["CLMDB", "Raft"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "Raft"]),
        // `swift run -c release wal-bench`: fsynced WAL appends per second.
        .executableTarget(name: "wal-bench", dependencies: ["Storage"], path: "Sources/WALBench"),

        // The multi-version keyspace, watches and leases on top of the backend.
        .target(name: "MVCC", dependencies: ["Storage"]),
        .testTarget(name: "MVCCTests", dependencies: ["MVCC", "Storage"]),

        // etcd-compatible configuration: flags, ETCD_* environment, YAML file, member IDs.
        .target(name: "EtcdConfig", dependencies: [
            .product(name: "Yams", package: "Yams"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "EtcdConfigTests", dependencies: ["EtcdConfig"]),
    ],
    swiftLanguageModes: [.v6]
)
