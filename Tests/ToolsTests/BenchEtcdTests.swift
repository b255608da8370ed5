import Foundation
import Testing

/// `swetcd-bench` against the real Debian etcd 3.4 (skipped when `etcd`/`etcdctl` are absent).
@Suite(.serialized) struct BenchEtcdTests {
    static let etcd = Tools.which("etcd")
    static let etcdctl = Tools.which("etcdctl")

    struct Report: Decodable {
        var command: String, total: Int, succeeded: Int, errors: Int, firstError: String?, conflicts: Int?
        var seconds: Double, throughput: Double
        var p50Ms: Double, p90Ms: Double, p99Ms: Double, maxMs: Double, fastestMs: Double
    }
    struct WatchReport: Decodable { var puts: Report; var events: Report }

    static func bench(_ args: [String]) async throws -> ToolRun {
        try await Tools.run(try Tools.binary("swetcd-bench"), args, timeout: .seconds(120))
    }

    static func checkNumbers(_ r: Report, total: Int) {
        #expect(r.errors == 0, "first error: \(r.firstError ?? "-")")
        #expect(r.succeeded == total)
        #expect(r.seconds > 0 && r.throughput > 0)
        #expect(r.fastestMs > 0)
        #expect(r.fastestMs <= r.p50Ms && r.p50Ms <= r.p90Ms && r.p90Ms <= r.p99Ms && r.p99Ms <= r.maxMs)
    }

    /// `etcdctl get` as JSON.
    struct GetJSON: Decodable {
        struct KV: Decodable { var version: Int64?; var mod_revision: Int64? }
        var count: Int64?
        var kvs: [KV]?
    }

    static func etcdctlGet(_ endpoint: String, _ args: [String]) async throws -> GetJSON {
        let r = try await Tools.run(try #require(etcdctl), ["--endpoints", endpoint, "-w", "json", "get"] + args)
        #expect(r.status == 0, "\(r.stderr)")
        return try JSONDecoder().decode(GetJSON.self, from: Data(r.stdout.utf8))
    }

    @Test(.enabled(if: etcd != nil && etcdctl != nil, "needs etcd and etcdctl (Debian etcd-server, etcd-client)"))
    func benchmarksAgainstEtcd() async throws {
        let server = try await EtcdProcess(executable: try #require(Self.etcd))
        defer { server.stop() }
        let ep = server.endpoint
        let common = ["--endpoints", ep, "--json"]

        // put: 200 distinct sequential keys over 2 connections and 4 clients.
        let put = try await Self.bench(["put"] + common + ["--conns", "2", "--clients", "4", "--total", "200",
                                                           "--key-size", "12", "--val-size", "64", "--key-space-size", "200",
                                                           "--sequential-keys", "--key-prefix", "put/"])
        #expect(put.status == 0, "\(put.stderr)")
        let putReport = try JSONDecoder().decode(Report.self, from: Data(put.stdout.utf8))
        #expect(putReport.command == "put")
        Self.checkNumbers(putReport, total: 200)
        #expect(try await Self.etcdctlGet(ep, ["put/", "--prefix", "--keys-only"]).count == 200)

        // range, linearizable and serializable, over the keys just written.
        for c in ["l", "s"] {
            let r = try await Self.bench(["range", "put/", "put0"] + common + ["--conns", "2", "--clients", "4",
                                                                              "--total", "100", "--consistency", c, "--limit", "10"])
            #expect(r.status == 0, "\(r.stderr)")
            Self.checkNumbers(try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8)), total: 100)
        }

        // txn-put, one client: every compare holds, so each of the 10 keys gets 3 versions.
        let txn = try await Self.bench(["txn-put"] + common + ["--clients", "1", "--total", "30", "--key-space-size", "10",
                                                               "--sequential-keys", "--key-prefix", "txn/", "--key-size", "8"])
        #expect(txn.status == 0, "\(txn.stderr)")
        let txnReport = try JSONDecoder().decode(Report.self, from: Data(txn.stdout.utf8))
        Self.checkNumbers(txnReport, total: 30)
        #expect(txnReport.conflicts == 0)
        let txnKeys = try await Self.etcdctlGet(ep, ["txn/", "--prefix"])
        #expect(txnKeys.kvs?.count == 10)
        #expect(txnKeys.kvs?.allSatisfy { $0.version == 3 } == true)

        // txn-put, clients sharing keys: conflicts happen, no errors, the key space is written.
        let shared = try await Self.bench(["txn-put"] + common + ["--conns", "2", "--clients", "8", "--total", "200",
                                                                  "--key-space-size", "5", "--key-prefix", "cas/"])
        #expect(shared.status == 0, "\(shared.stderr)")
        let sharedReport = try JSONDecoder().decode(Report.self, from: Data(shared.stdout.utf8))
        Self.checkNumbers(sharedReport, total: 200)
        #expect((sharedReport.conflicts ?? -1) >= 0)
        #expect(try await Self.etcdctlGet(ep, ["cas/", "--prefix", "--keys-only"]).count == 5)

        // watch: 3 watchers each see all 50 events.
        let watch = try await Self.bench(["watch"] + common + ["--conns", "2", "--watchers", "3", "--total", "50",
                                                               "--key-prefix", "watch/", "--val-size", "32", "--timeout", "60"])
        #expect(watch.status == 0, "\(watch.stderr)")
        let w = try JSONDecoder().decode(WatchReport.self, from: Data(watch.stdout.utf8))
        Self.checkNumbers(w.puts, total: 50)
        Self.checkNumbers(w.events, total: 150)
        #expect(try await Self.etcdctlGet(ep, ["watch/", "--prefix", "--keys-only"]).count == 50)
    }

    /// etcd (grpc-go) sends a PING after nearly every request it receives; NIO's HTTP/2 handler
    /// closes a connection after 200 inbound PINGs in 30 s. 400 sequential puts on one
    /// connection cross that limit unless swetcd-bench answers the PINGs itself.
    @Test(.enabled(if: etcd != nil, "needs etcd (Debian etcd-server)"))
    func sequentialPutsOnOneConnectionKeepItOpen() async throws {
        let server = try await EtcdProcess(executable: try #require(Self.etcd))
        defer { server.stop() }
        let r = try await Self.bench(["put", "--endpoints", server.endpoint, "--json", "--conns", "1", "--clients", "1",
                                      "--total", "400", "--val-size", "16", "--key-space-size", "50"])
        #expect(r.status == 0, "\(r.stderr)")
        Self.checkNumbers(try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8)), total: 400)
    }

    @Test func unreachableEndpointFailsEveryRequest() async throws {
        let port = try EtcdProcess.freePort()
        let r = try await Self.bench(["put", "--endpoints", "127.0.0.1:\(port)", "--total", "3", "--json"])
        #expect(r.status == 1)
        let report = try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8))
        #expect(report.errors == 3 && report.succeeded == 0)
        #expect(report.firstError?.contains("unavailable") == true)
    }

    @Test func badFlagsFailClearly() async throws {
        let bad = try await Self.bench(["put", "--conns", "0"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("--conns must be at least 1"))
        let ep = try await Self.bench(["range", "k", "--endpoints", "nohostport"])
        #expect(ep.status != 0)
        #expect(ep.stderr.contains("invalid endpoint"))
    }
}
