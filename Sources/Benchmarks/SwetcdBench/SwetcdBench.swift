// swetcd-bench: an etcd-style load generator for any etcd v3 gRPC endpoint (swetcd or etcd).
import ArgumentParser

@main
struct SwetcdBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swetcd-bench",
        abstract: "Load generator for the etcd v3 gRPC API (swetcd or etcd).",
        discussion: """
            N clients (--clients) share M gRPC connections (--conns) and together send --total \
            requests as fast as the server answers them, each waiting for its previous answer. \
            Prints throughput and latency percentiles (or JSON with --json).
            """,
        subcommands: [PutCommand.self, RangeCommand.self, TxnPutCommand.self, WatchCommand.self, KubeFillCommand.self]
    )
}
