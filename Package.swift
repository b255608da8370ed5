// swift-tools-version:6.1
// swetcd: an etcd-compatible control-plane store.
// Targets are layered: Raft (the pure consensus core, no dependencies); LMDBBackend (the
// LMDB backend, no Raft); Storage (WAL, snapshot files, and the durable Raft log on them);
// MVCC on LMDBBackend; EtcdConfig and EtcdProto beside them; the Server joins them all.
// See docs/ARCHITECTURE.md.
import PackageDescription

let package = Package(
    name: "swetcd",
    products: [
        .library(name: "Raft", targets: ["Raft"]),
        .library(name: "LMDBBackend", targets: ["LMDBBackend"]),
        .library(name: "Storage", targets: ["Storage"]),
        .library(name: "MVCC", targets: ["MVCC"]),
        .executable(name: "swetcdutl", targets: ["swetcdutl"]),
        // Benchmarks (Sources/Benchmarks/<Target>): `swift run -c release <product>`.
        .executable(name: "swetcd-bench", targets: ["SwetcdBench"]),
        .executable(name: "raft-bench", targets: ["RaftBench"]),
        .executable(name: "wal-bench", targets: ["WALBench"]),
        .executable(name: "mvcc-bench", targets: ["MVCCBench"]),
        .executable(name: "defrag-bench", targets: ["DefragBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        // gRPC and protobuf, for the etcd wire protocol (EtcdProto).
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        // The server: NIO listeners, HTTP/1.1 and HTTP/2, TLS, logging.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // X.509: --auto-tls certificates and the client certificate's CN for auth.
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // Prometheus metrics at /metrics.
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // Consensus: a deterministic state machine with no I/O, clocks or threads.
        .target(name: "Raft"),
        .testTarget(name: "RaftTests", dependencies: ["Raft"]),

        // LMDB from Debian's liblmdb-dev.
        .systemLibrary(name: "CLMDB", path: "Sources/CLMDB", providers: [.apt(["liblmdb-dev"])]),
        // The backend: one LMDB file with etcd's buckets, batched commits, copies, defrag.
        .target(name: "LMDBBackend", dependencies: ["CLMDB"]),
        .testTarget(name: "LMDBBackendTests", dependencies: ["LMDBBackend"]),
        // Durability: WAL segments, snapshot files; the Raft log kept on them.
        .target(name: "Storage", dependencies: ["LMDBBackend", "Raft"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "LMDBBackend", "Raft"]),

        // The multi-version keyspace, watches and leases on top of the backend.
        .target(name: "MVCC", dependencies: ["LMDBBackend"]),
        .testTarget(name: "MVCCTests", dependencies: ["MVCC", "LMDBBackend", "Raft"]),

        // bbolt's file format (etcd's backend): a writer and a hostile-input-safe reader.
        .target(name: "BoltFormat"),
        // etcd's backend buckets and encodings on bbolt <-> swetcd's backend (snapshots both ways).
        .target(name: "EtcdSnapshot", dependencies: ["BoltFormat", "LMDBBackend", "MVCC"]),
        .testTarget(name: "BoltFormatTests", dependencies: ["BoltFormat", "EtcdSnapshot", "LMDBBackend", "MVCC", "Raft"]),

        // Formats both the server and swetcdutl write: member records, membership conf-change
        // contexts, a new cluster's bootstrap log.
        .target(name: "ServerFormat", dependencies: ["Raft", "Storage"]),
        .testTarget(name: "ServerFormatTests", dependencies: ["ServerFormat", "Raft", "Storage", "LMDBBackend"]),

        // etcd-compatible configuration: flags, ETCD_* environment, YAML file, member IDs.
        .target(name: "EtcdConfig", dependencies: [
            .product(name: "Yams", package: "Yams"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "EtcdConfigTests", dependencies: ["EtcdConfig"]),

        // etcd's v3 wire protocol and swetcd's peer protocol: .proto files and the
        // Swift code generated from them (scripts/generate-protos).
        .target(
            name: "EtcdProto",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["proto"]
        ),
        .testTarget(
            name: "EtcdProtoTests",
            dependencies: [
                "EtcdProto",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),

        // libsystemd's sd_notify / sd_watchdog_enabled (Debian libsystemd-dev).
        .systemLibrary(name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        // glibc's resolver (res_nquery) for --discovery-srv's SRV lookups.
        .systemLibrary(name: "CResolv", path: "Sources/CResolv"),
        // libxcrypt's bcrypt (crypt_gensalt_rn / crypt_rn) for auth passwords (Debian libcrypt-dev).
        .systemLibrary(name: "CCrypt", path: "Sources/CCrypt", providers: [.apt(["libcrypt-dev"])]),
        // The server: Raft loop, apply, client API, peer transport, and its shell (one client
        // port for gRPC and HTTP/1.1, JSON logs, systemd notify). See docs/ARCHITECTURE.md.
        .target(name: "Server", dependencies: [
            "Raft", "Storage", "LMDBBackend", "MVCC", "EtcdProto", "EtcdConfig", "CSystemd", "CCrypt", "CResolv", "EtcdSnapshot", "ServerFormat", "BoltFormat",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "CryptoExtras", package: "swift-crypto"),
        ]),
        .testTarget(name: "ServerTests", dependencies: [
            "Server", "Raft", "Storage", "LMDBBackend", "MVCC", "EtcdProto", "EtcdConfig", "ServerFormat",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The server executable: `swetcd` with etcd's flags.
        .executableTarget(name: "swetcd", dependencies: [
            "Server", "EtcdConfig", .product(name: "Logging", package: "swift-log"),
        ]),
        // End-to-end: real `swetcd` processes driven by Debian's `etcdctl`.
        .testTarget(name: "E2ETests", dependencies: ["Raft"], exclude: ["go", "python"]),
        // Offline tools (`swetcdutl`).
        .executableTarget(name: "swetcdutl", dependencies: [
            "Storage", "LMDBBackend", "MVCC", "ServerFormat", "EtcdConfig", "BoltFormat", "EtcdSnapshot",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),

        // Benchmarks (Sources/Benchmarks): one executable each, products `<name>-bench`
        // (docs/BENCHMARKS.md). The etcd-style load generator against a running server:
        .executableTarget(name: "SwetcdBench", dependencies: [
            "EtcdProto",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
        ], path: "Sources/Benchmarks/SwetcdBench"),
        // Committed proposals per second on an in-memory 3-node Raft group.
        .executableTarget(name: "RaftBench", dependencies: ["Raft"], path: "Sources/Benchmarks/RaftBench"),
        // Fsynced WAL appends per second.
        .executableTarget(name: "WALBench", dependencies: ["Storage"], path: "Sources/Benchmarks/WALBench"),
        // Keyspace and backend throughput and memory.
        .executableTarget(name: "MVCCBench", dependencies: ["MVCC", "LMDBBackend"], path: "Sources/Benchmarks/MVCCBench"),
        // Stalls seen by a writer and a reader during defrag.
        .executableTarget(name: "DefragBench", dependencies: ["LMDBBackend"], path: "Sources/Benchmarks/DefragBench"),

        // Run the built tool binaries; the dependencies make sure they are built first.
        .testTarget(name: "ToolsTests", dependencies: [
            "swetcdutl", "SwetcdBench", "Storage", "LMDBBackend", "MVCC", .product(name: "NIOCore", package: "swift-nio"),
        ]),
        // The deployment files (systemd unit, config example, Kubernetes manifests, tune.sh).
        .testTarget(name: "PackagingTests", dependencies: [
            "EtcdConfig", .product(name: "Yams", package: "Yams"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
