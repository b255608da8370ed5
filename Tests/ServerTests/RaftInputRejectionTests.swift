import Foundation
import Raft
@testable import Server
import Testing

/// Peer input that Raft refuses is counted by reason and logged, and the member goes on
/// serving; it is never swallowed silently, and never stops the member.
@Suite("Raft loop: refused peer input", .serialized)
struct RaftInputRejectionTests {
    static func count(_ s: EtcdServer, _ reason: MessageRejection) -> Int {
        let line = s.metrics.render(sample: MetricsSample()).split(separator: "\n")
            .first { $0.hasPrefix("swetcd_raft_rejected_messages_total{reason=\"\(reason.rawValue)\"}") }
        return line.flatMap { $0.split(separator: " ").last.flatMap { Int($0) } } ?? -1
    }

    @Test func hostileMessagesAreCountedAndTheMemberKeepsServing() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        _ = try await s.put(putRequest("k", "v"))
        #expect(Self.count(s, .misaddressed) == 0)
        #expect(Self.count(s, .beyondLog) == 0)
        let me = s.memberID
        let term = s.term
        s.raftLoop.send(.messages([
            Raft.Message(type: .heartbeat, to: me &+ 1, from: 0xBAD, term: term),
            Raft.Message(type: .heartbeat, to: me, from: 0xBAD, term: term + 5, commit: 1 << 40),
            Raft.Message(type: .append, to: me, from: 0xBAD, term: term + 5, logTerm: 1, index: 1,
                         entries: [Entry(term: 1, index: 9)]),
        ]))
        let deadline = ContinuousClock.now + .seconds(10)
        while Self.count(s, .malformedEntries) < 1, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(Self.count(s, .misaddressed) == 1)
        #expect(Self.count(s, .beyondLog) == 1)
        #expect(Self.count(s, .malformedEntries) == 1)
        // Nothing changed: same term, still the leader, still serving writes.
        #expect(s.term == term)
        #expect(s.isLeader)
        _ = try await s.put(putRequest("k2", "v2"))
        #expect(try await s.range(rangeRequest("k2")).kvs.count == 1)
        await s.stop()
    }
}
