import Testing
@testable import Raft

@Suite struct ReplicationTests {
    @Test func proposalsCommitEverywhereInOrder() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        for i in 0..<20 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        try c.tickAll(2) // heartbeats carry the final commit index
        for id in [UInt64(1), 2, 3] {
            #expect(c.appliedData(id) == (0..<20).map { [UInt8($0)] })
        }
    }

    @Test func followerRejectsMismatchAndHintsFastBackoff() throws {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1, 2]))))
        // Follower log: terms 1,1,2,2,2,2 (indexes 1...6)
        try s.append([1, 1, 2, 2, 2, 2].enumerated().map { Entry(term: UInt64($1), index: UInt64($0 + 1)) })
        s.setHardState(HardState(term: 3))
        let n = try RaftNode(config: RaftConfig(id: 2), storage: s)
        // Leader (term 4) asks to append after (9, term 4): follower is shorter.
        try n.step(Message(type: .append, to: 2, from: 1, term: 4, logTerm: 4, index: 9))
        var r = try #require(try n.ready().messages.first)
        #expect(r.reject && r.index == 9 && r.rejectHint == 6 && r.logTerm == 2)
        // After (5, term 3): entries of term 2 cannot match term 3 → hint 5 (term 2 <= 3).
        try n.step(Message(type: .append, to: 2, from: 1, term: 4, logTerm: 3, index: 5))
        r = try #require(try n.ready().messages.first)
        #expect(r.reject && r.rejectHint == 5 && r.logTerm == 2)
        // After (4, term 1): the whole term-2 run is skipped → hint 2.
        try n.step(Message(type: .append, to: 2, from: 1, term: 4, logTerm: 1, index: 4))
        r = try #require(try n.ready().messages.first)
        #expect(r.reject && r.rejectHint == 2 && r.logTerm == 1)
        // A matching append replaces the conflicting suffix.
        try n.step(Message(type: .append, to: 2, from: 1, term: 4, logTerm: 1, index: 2,
                           entries: [Entry(term: 4, index: 3)], commit: 3))
        r = try #require(try n.ready().messages.first)
        #expect(!r.reject && r.index == 3)
        #expect(try n.log.lastIndex() == 3 && n.log.committed == 3 && n.log.term(3) == 4)
    }

    @Test func divergentFollowerConvergesInFewRoundTrips() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(3)
        for i in 0..<50 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        // 3 leads alone in a new term and writes a long divergent tail it can never commit.
        try c.nodes[3]!.campaign()
        try c.settle()
        c.heal()
        let before = c.delivered.count
        try c.tickAll(3)
        let rejections = c.delivered[before...].filter { $0.type == .appendResponse && $0.reject }.count
        #expect(c[3].log.committed == c[1].log.committed)
        #expect(rejections <= 3)
    }

    @Test func onlyCurrentTermEntriesCommitByCounting() throws {
        // Leader 1 of term 3 has an uncommitted entry of term 1 at index 1.
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1, 2, 3]))))
        try s.append([Entry(term: 1, index: 1)])
        s.setHardState(HardState(term: 2))
        var cfg = RaftConfig(id: 1)
        cfg.preVote = false
        let n = try RaftNode(config: cfg, storage: s)
        try n.campaign()
        try n.step(Message(type: .requestVoteResponse, to: 1, from: 2, term: 3))
        #expect(n.role == .leader)
        #expect(try n.log.lastIndex() == 2) // empty entry of term 3
        // The leader's own copy counts once persisted.
        let rd = try n.ready()
        try s.append(rd.entries)
        if let hs = rd.hardState { s.setHardState(hs) }
        try n.advance(rd)
        // A majority holds index 1 (term 1), but it must not commit by counting.
        try n.step(Message(type: .appendResponse, to: 1, from: 2, term: 3, index: 1))
        #expect(n.log.committed == 0)
        try n.step(Message(type: .appendResponse, to: 1, from: 2, term: 3, index: 2))
        #expect(n.log.committed == 2)
    }

    @Test func inflightWindowBoundsPipelining() throws {
        let c = try TestCluster(voters: [1, 2]) { $0.maxInflightMsgs = 3; $0.maxSizePerMsg = 1 }
        try c.elect(1)
        c.cut.insert([2, 1]) // responses from 2 are lost
        for i in 0..<10 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        let appends = c.delivered.filter { $0.type == .append && $0.to == 2 && !$0.entries.isEmpty }
        // Replicate state: one append per proposal until the window (3) is full.
        #expect(c[1].progress[2]!.state == .replicate)
        #expect(c[1].progress[2]!.inflights.count == 3)
        #expect(appends.filter { $0.entries.first!.index >= 2 }.count == 3)
    }

    @Test func inflightBytesBoundPipelining() throws {
        let c = try TestCluster(voters: [1, 2]) {
            $0.maxInflightMsgs = 100; $0.maxSizePerMsg = 100; $0.maxInflightBytes = 250
        }
        try c.elect(1)
        c.cut.insert([2, 1])
        for _ in 0..<10 { try c[1].propose([UInt8](repeating: 1, count: 100)) }
        try c.settle()
        #expect(c[1].progress[2]!.inflights.count == 3)
    }

    @Test func probeStateSendsOneAppendAtATime() throws {
        let c = try TestCluster(voters: [1, 2])
        try c.elect(1)
        try c[1].reportUnreachable(2)
        #expect(c[1].progress[2]!.state == .probe)
        c.isolate(2)
        for i in 0..<5 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        let sent = c.dropped.filter { $0.type == .append && $0.to == 2 }
        #expect(sent.count == 1)
        #expect(c[1].progress[2]!.isPaused)
    }

    @Test func heartbeatsCarryCommitIndex() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.cut.insert([1, 3])
        try c[1].propose([1])
        try c.settle()
        let commit = c[1].log.committed
        #expect(c[3].log.committed < commit)
        c.heal()
        c.cut.insert([1, 2]) // 2 already has everything; 3 lags
        let before = c.delivered.count
        try c.tick(1)
        try c.settle()
        let hb = c.delivered[before...].filter { $0.type == .heartbeat }
        // A heartbeat never carries a commit index beyond what the follower is known to hold.
        #expect(hb.allSatisfy { $0.to == 3 && $0.commit <= 1 })
        #expect(c[3].log.committed == commit) // caught up through the heartbeat's answer
        // A follower takes the commit index from a heartbeat.
        let f = try ElectionTestsSupport.follower(log: [Entry(term: 1, index: 1), Entry(term: 1, index: 2)])
        try f.step(Message(type: .heartbeat, to: 1, from: 2, term: 1, commit: 2))
        #expect(f.log.committed == 2)
    }

    @Test func uncommittedSizeLimitDropsProposals() throws {
        let c = try TestCluster(voters: [1, 2, 3]) { $0.maxUncommittedEntriesSize = 100 }
        try c.elect(1)
        c.isolate(1)
        try c[1].propose([UInt8](repeating: 0, count: 60))
        #expect(throws: RaftError.proposalDropped) { try c[1].propose([UInt8](repeating: 0, count: 60)) }
    }
}

enum ElectionTestsSupport {
    /// A follower (ID 1 of voters 1, 2, 3) with the given log, at the term of its last entry.
    static func follower(log: [Entry]) throws -> RaftNode {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1, 2, 3]))))
        try s.append(log)
        s.setHardState(HardState(term: log.last?.term ?? 0))
        return try RaftNode(config: RaftConfig(id: 1), storage: s)
    }
}
