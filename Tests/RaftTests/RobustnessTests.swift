import Testing
@testable import Raft

/// Hostile input: random (well-formed) messages with extreme field values must make the node
/// throw or ignore them, never crash.
@Suite struct RobustnessTests {
    static func randomMessage(_ rng: inout SplitMix64, to: UInt64) -> Message {
        func v() -> UInt64 {
            switch rng.next() % 4 {
            case 0: return rng.next() % 4
            case 1: return rng.next() % 20
            case 2: return UInt64.max - rng.next() % 3
            default: return rng.next()
            }
        }
        let types = MessageType.allCases.filter { !$0.isLocal }
        var m = Message(type: types[Int(rng.next() % UInt64(types.count))], to: to, from: 1 + rng.next() % 4,
                        term: v(), logTerm: v(), index: v(), commit: v(), reject: rng.next() % 2 == 0,
                        rejectHint: v(), context: rng.next() % 3 == 0 ? campaignTransferContext : [])
        for k in 0..<Int(rng.next() % 3) {
            m.entries.append(Entry(term: v(), index: rng.next() % 2 == 0 ? m.index &+ 1 &+ UInt64(k) : v(),
                                   type: EntryType.allCases[Int(rng.next() % 3)],
                                   data: rng.next() % 2 == 0 ? [] : [UInt8(truncatingIfNeeded: rng.next())]))
        }
        if m.type == .snapshot {
            m.snapshot = Snapshot(metadata: SnapshotMetadata(index: v(), term: v(),
                confState: ConfState(voters: rng.next() % 2 == 0 ? [1, 2, 3] : [v()], learners: rng.next() % 2 == 0 ? [] : [v()])))
        }
        return m
    }

    @Test(arguments: 0..<4) func randomMessagesNeverCrash(chunk: Int) throws {
        var rng = SplitMix64(seed: UInt64(chunk) * 1000 + 5)
        var rejected = 0
        defer { #expect(rejected > 0) }
        for round in 0..<150 {
            let c = try TestCluster(voters: [1, 2, 3], learners: [4])
            // Put the target in some role: follower, leader, candidate.
            switch round % 3 {
            case 0: try c.elect(1)
            case 1: try c.elect(2)
            default: try c[1].campaign()
            }
            for i in 0..<5 { try? c[1].propose([UInt8(i)]) }
            try c.settle()
            for _ in 0..<40 {
                let m = Self.randomMessage(&rng, to: 1)
                // Refused at the top of step() with a reason, or taken: never an internal
                // invariant violation (those stop a server), never a storage error later.
                do {
                    try c[1].step(m)
                } catch RaftError.rejectedMessage {
                    rejected += 1
                } catch {
                    Issue.record("\(m.type) t\(m.term) i\(m.index) lt\(m.logTerm) c\(m.commit) n\(m.entries.count): \(error)")
                }
                do { _ = try c.process(1) } catch {
                    Issue.record("after \(m.type) t\(m.term) i\(m.index) c\(m.commit): \(error)")
                }
            }
        }
    }
}

extension RobustnessTests {
    /// Stored state out of the message bounds (a damaged log whose CRCs pass, found by the WAL
    /// fuzzer: a hard state at term 2^64-1 trapped on the next campaign) is refused at start.
    @Test func storedTermsAndIndexesOutOfRangeAreRefused() throws {
        for hs in [HardState(term: .max, vote: 0, commit: 0), HardState(term: 1 << 62, vote: 1, commit: 0),
                   HardState(term: 3, vote: 0, commit: .max)] {
            let s = MemoryStorage()
            try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: ConfState(voters: [1]))))
            s.setHardState(hs)
            #expect(throws: RaftError.self, "\(hs)") { try RaftNode(config: RaftConfig(id: 1), storage: s) }
        }
    }
}
