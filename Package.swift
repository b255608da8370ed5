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
    dependencies: [],
    targets: [
        // Consensus: a deterministic state machine with no I/O, clocks or threads.
        .target(name: "Raft"),
        .testTarget(name: "RaftTests", dependencies: ["Raft"]),
        .executableTarget(name: "raft-bench", dependencies: ["Raft"], path: "Sources/RaftBench"),

        // LMDB from Debian's liblmdb-dev.
        .systemLibrary(name: "CLMDB", path: "Sources/CLMDB", providers: [.apt(["liblmdb-dev"])]),
        // Durability: WAL segments, snapshot files, the LMDB backend.
        .target(name: "Storage", dependencies: ["CLMDB"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage"]),

        // The multi-version keyspace, watches and leases on top of the backend.
        .target(name: "MVCC", dependencies: ["Storage"]),
        .testTarget(name: "MVCCTests", dependencies: ["MVCC", "Storage"]),
    ],
    swiftLanguageModes: [.v6]
)
