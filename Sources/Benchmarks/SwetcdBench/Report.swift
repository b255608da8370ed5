import ArgumentParser
import Foundation

/// The summary printed at the end of a run.
struct Report: Codable, Sendable {
    var command: String
    var total: Int
    var succeeded: Int
    var errors: Int
    var firstError: String?
    var conflicts: Int?
    var seconds: Double
    /// Completed operations (requests, or events for watch) per second.
    var throughput: Double
    var averageMs: Double
    var fastestMs: Double
    var p50Ms: Double
    var p90Ms: Double
    var p99Ms: Double
    var p999Ms: Double
    var maxMs: Double

    /// Summarises `latencies` (nanoseconds; sorted here) over `seconds` of wall time.
    init(command: String, total: Int, result: ClientResult, seconds: Double) {
        let sorted = result.latencies.sorted()
        func ms(_ ns: UInt64) -> Double { Double(ns) / 1e6 }
        /// Nearest-rank percentile.
        func pct(_ p: Double) -> Double {
            guard !sorted.isEmpty else { return 0 }
            let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
            return ms(sorted[min(max(rank, 1), sorted.count) - 1])
        }
        self.command = command
        self.total = total
        succeeded = sorted.count
        errors = result.errors
        firstError = result.firstError
        conflicts = command == "txn-put" ? result.conflicts : nil
        self.seconds = seconds
        throughput = seconds > 0 ? Double(sorted.count) / seconds : 0
        averageMs = sorted.isEmpty ? 0 : ms(sorted.reduce(0, +)) / Double(sorted.count)
        fastestMs = sorted.first.map(ms) ?? 0
        p50Ms = pct(50)
        p90Ms = pct(90)
        p99Ms = pct(99)
        p999Ms = pct(99.9)
        maxMs = sorted.last.map(ms) ?? 0
    }

    /// Prints the report; throws (exit code 1) when no request succeeded.
    func printChecked(json: Bool) throws {
        print(json: json)
        if succeeded == 0 { throw ExitCode.failure }
    }

    func print(json: Bool) {
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            Swift.print(String(decoding: (try? enc.encode(self)) ?? Data(), as: UTF8.self))
            return
        }
        func f(_ v: Double) -> String { String(format: "%.3f", v) }
        var lines = [
            "Summary (\(command)):",
            "  Total:\t\(String(format: "%.4f", seconds)) secs.",
            "  Succeeded:\t\(succeeded) of \(total)",
            "  Errors:\t\(errors)" + (firstError.map { " (first: \($0))" } ?? ""),
        ]
        if let c = conflicts { lines.append("  Conflicts:\t\(c)") }
        lines += [
            "  Throughput:\t\(String(format: "%.1f", throughput)) ops/sec",
            "  Average:\t\(f(averageMs)) ms",
            "  Fastest:\t\(f(fastestMs)) ms",
            "Latency:",
            "  p50:\t\(f(p50Ms)) ms",
            "  p90:\t\(f(p90Ms)) ms",
            "  p99:\t\(f(p99Ms)) ms",
            "  p99.9:\t\(f(p999Ms)) ms",
            "  max:\t\(f(maxMs)) ms",
        ]
        Swift.print(lines.joined(separator: "\n"))
    }
}
