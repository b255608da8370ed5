import Foundation
import Testing

@testable import MVCC

/// Throughput of the lessor's hot paths. Off by default; prints figures, asserts none:
/// `LEASE_BENCH=100000 swift test -c release -Xswiftc -enable-testing --filter LeaseBenchmark`.
@Suite struct LeaseBenchmarkTests {
    static let count = Int(ProcessInfo.processInfo.environment["LEASE_BENCH"] ?? "") ?? 0

    @Test(.enabled(if: count > 0)) func leaseThroughput() throws {
        let n = Self.count
        let f = try LeaseFixture()
        f.lessor.promote(extension: .zero)
        var figures: [String] = []
        func measure(_ name: String, _ body: () throws -> Void) rethrows {
            let start = ContinuousClock.now
            try body()
            let elapsed = ContinuousClock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            figures.append("\(name): \(Int(Double(n) / seconds)) ops/s")
        }
        try measure("grant") { for i in 1...n { try f.lessor.grant(id: Int64(i), ttl: 60 + Int64(i % 600)) } }
        let keys = (1...n).map { leaseKey("/registry/events/default/event-\($0)") }
        try measure("attach") { for i in 1...n { try f.lessor.attach(keys: [keys[i - 1]], to: Int64(i)) } }
        try measure("renew") { for i in 1...n { _ = try f.lessor.renew(id: Int64(i)) } }
        try measure("timeToLive+keys") { for i in 1...n { _ = try f.lessor.timeToLive(id: Int64(i), includeKeys: true) } }
        f.clock.advance(by: .seconds(700))
        var expired: [Int64] = []
        measure("expiredLeases") {
            while true {
                let batch = f.lessor.expiredLeases(limit: 500)
                if batch.isEmpty { break }
                expired += batch
            }
        }
        try measure("revoke (1 key)") { for id in expired { try f.lessor.revoke(id: id) } }
        #expect(expired.count == n)
        print("lease benchmark, \(n) leases: " + figures.joined(separator: ", "))
    }
}
