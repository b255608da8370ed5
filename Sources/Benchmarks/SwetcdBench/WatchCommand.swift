import ArgumentParser
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf

/// `watch`: N watch streams on one key prefix, one writer putting --total keys under it. Each
/// value starts with the writer's send time, so every watcher measures each event's latency
/// from Put sent to event received.
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch", abstract: "Benchmark watch event latency (N watchers, one writer).")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Number of watch streams (spread over the connections).")
    var watchers: Int = 10

    @Option(help: "Number of puts the writer makes (each watcher receives as many events).")
    var total: Int = 1000

    @Option(help: "Prefix watched and written under.")
    var keyPrefix: String = "swetcd-bench-watch/"

    @Option(help: "Value size in bytes (at least 8: the send time).")
    var valSize: Int = 8

    @Option(help: "Give up after this many seconds.")
    var timeout: Int = 600

    func validate() throws {
        guard watchers >= 1, total >= 1 else { throw ValidationError("--watchers and --total must be at least 1") }
        guard valSize >= 8 else { throw ValidationError("--val-size must be at least 8") }
        guard timeout >= 1 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        let prefix = Data(keyPrefix.utf8)
        var end = prefix
        if let i = end.lastIndex(where: { $0 < 0xFF }) {
            end[i] += 1
            end = end.prefix(through: i)
        } else {
            end = Data([0])
        }
        var create = Etcdserverpb_WatchCreateRequest()
        create.key = prefix
        create.rangeEnd = end
        var createReq = Etcdserverpb_WatchRequest()
        createReq.createRequest = create
        let request = createReq
        let (total, watchers, valSize, timeout) = (self.total, self.watchers, self.valSize, self.timeout)
        let pool = try ConnectionPool(endpoints: try connection.parsedEndpoints(), count: connection.conns)

        let (events, writer, secs) = try await pool.run { pool in
            let (ready, readyCont) = AsyncStream<Void>.makeStream()
            return try await withThrowingTaskGroup(of: ClientResult?.self) { group in
                @Sendable func watchOne(_ client: Etcdserverpb_Watch.Client<Transport>) async throws -> ClientResult {
                    try await client.watch(requestProducer: { writer in
                        try await writer.write(request)
                        // Keep the request side open until the response side is done
                        // (which cancels this producer).
                        while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
                    }, onResponse: { response in
                        var r = ClientResult()
                        r.latencies.reserveCapacity(total)
                        for try await msg in response.messages {
                            if msg.created { readyCont.yield() }
                            if msg.canceled { throw ToolFailure("watch canceled: \(msg.cancelReason)") }
                            let now = nowNanos()
                            for ev in msg.events {
                                let sent = ev.kv.value.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                                r.latencies.append(now &- sent)
                            }
                            if r.latencies.count >= total { return r }
                        }
                        throw ToolFailure("watch stream ended after \(r.latencies.count) of \(total) events")
                    })
                }
                for w in 0..<watchers {
                    let client = Etcdserverpb_Watch.Client(wrapping: pool.client(w))
                    group.addTask {
                        // A watcher that fails ends the wait for readiness; the error then
                        // surfaces from group.next().
                        do { return try await watchOne(client) } catch { readyCont.finish(); throw error }
                    }
                }
                group.addTask {
                    try await Task.sleep(for: .seconds(timeout))
                    readyCont.finish()
                    throw ToolFailure("timed out after \(timeout) s")
                }
                var created = 0
                for await _ in ready {
                    created += 1
                    if created == watchers { break }
                }
                if created < watchers {
                    while try await group.next() != nil {}
                    throw ToolFailure("watchers failed to start")
                }
                let start = nowNanos()
                // The writer: sequential puts, each value carrying its send time.
                let kv = Etcdserverpb_KV.Client(wrapping: pool.client(0))
                var w = ClientResult()
                for n in 0..<total {
                    var put = Etcdserverpb_PutRequest()
                    put.key = prefix + Data(String(n).utf8)
                    let t0 = nowNanos()
                    var v = Data((0..<8).map { UInt8(truncatingIfNeeded: t0 >> (56 - 8 * UInt64($0))) })
                    v.append(Data(repeating: UInt8(ascii: "v"), count: valSize - 8))
                    put.value = v
                    do {
                        _ = try await kv.put(put)
                        w.latencies.append(nowNanos() - t0)
                    } catch {
                        w.fail(error)
                    }
                }
                var all = ClientResult()
                var finished = 0
                while finished < watchers, let r = try await group.next() {
                    guard let r else { continue }
                    all.latencies += r.latencies
                    finished += 1
                }
                group.cancelAll()
                return (all, w, Double(nowNanos() - start) / 1e9)
            }
        }
        let puts = Report(command: "watch-put", total: total, result: writer, seconds: secs)
        let received = Report(command: "watch", total: total * watchers, result: events, seconds: secs)
        if connection.json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(WatchReport(puts: puts, events: received)), as: UTF8.self))
        } else {
            print("Writer puts:")
            puts.print(json: false)
            print("Watch events (\(watchers) watchers):")
            received.print(json: false)
        }
        if received.succeeded == 0 { throw ExitCode.failure }
    }
}

/// `watch --json`: the writer's puts and the events all watchers received.
struct WatchReport: Codable {
    var puts: Report
    var events: Report
}

struct ToolFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
