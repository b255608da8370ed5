import Testing
@testable import Raft

/// The leader's own write pipelined with its appends (Raft thesis 10.2.1): what may be sent
/// before a Ready is durable, and when the leader's own log counts toward commit.
@Suite struct PersistenceTests {
    /// Node 1 leads a three-voter cluster at term 2 with everything persisted; returns it and
    /// its storage.
    static func leader() throws -> (RaftNode, MemoryStorage) {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1, 2, 3]))))
        s.setHardState(HardState(term: 1))
        var cfg = RaftConfig(id: 1)
        cfg.preVote = false
        let n = try RaftNode(config: cfg, storage: s)
        try n.campaign()
        try persist(n, s)
        try n.step(Message(type: .requestVoteResponse, to: 1, from: 2, term: 2))
        #expect(n.role == .leader)
        try persist(n, s)
        try n.step(Message(type: .appendResponse, to: 1, from: 2, term: 2, index: 1))
        try persist(n, s)
        #expect(n.log.committed == 1)
        return (n, s)
    }

    @discardableResult
    static func persist(_ n: RaftNode, _ s: MemoryStorage) throws -> Ready {
        let rd = try n.ready()
        if let snap = rd.snapshot { try s.applySnapshot(snap) }
        try s.append(rd.entries)
        if let hs = rd.hardState { s.setHardState(hs) }
        try n.advance(rd)
        return rd
    }

    @Test func leaderCountsItsOwnEntriesOnlyOnceAdvanced() throws {
        let (n, s) = try Self.leader()
        try n.propose([7])
        let rd = try n.ready()
        #expect(rd.entries.map(\.index) == [2])
        // The append leaves before the write; nothing that claims durability does.
        let early = rd.messagesBeforePersist
        #expect(!early.isEmpty && early.allSatisfy { $0.type == .append })
        #expect(rd.messagesAfterPersist.isEmpty)
        // Follower 2 acknowledges while the leader's write is in flight: one durable copy of
        // three is no quorum, so nothing commits.
        try n.step(Message(type: .appendResponse, to: 1, from: 2, term: 2, index: 2))
        #expect(n.log.committed == 1)
        #expect(n.status.progress[1]?.match == 1)
        // The write completes: now two durable copies.
        try s.append(rd.entries)
        if let hs = rd.hardState { s.setHardState(hs) }
        try n.advance(rd)
        #expect(n.status.progress[1]?.match == 2)
        #expect(n.log.committed == 2)
        // The commit goes out to the followers at once, and is applied from the next Ready.
        let next = try n.ready()
        #expect(next.committedEntries.map(\.index) == [2])
        #expect(next.messages.contains { $0.type == .append && $0.to == 2 && $0.commit == 2 })
    }

    @Test func singleVoterCommitsAtAdvance() throws {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1], learners: [2]))))
        let n = try RaftNode(config: RaftConfig(id: 1), storage: s)
        try n.campaign()
        #expect(n.role == .leader)
        let rd = try n.ready()
        // Leader at a term not yet durable: even its appends to the learner wait for the write.
        #expect(rd.hardState?.term == 1)
        #expect(rd.messagesBeforePersist.isEmpty)
        #expect(rd.messagesAfterPersist.count == rd.messages.count)
        #expect(n.log.committed == 0)
        try s.append(rd.entries)
        if let hs = rd.hardState { s.setHardState(hs) }
        try n.advance(rd)
        #expect(n.log.committed == 1)
    }

    @Test func followerAnswersOnlyAfterPersisting() throws {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1, 2, 3]))))
        var cfg = RaftConfig(id: 2)
        cfg.checkQuorum = false // no leader lease: the vote request below is granted
        let n = try RaftNode(config: cfg, storage: s)
        try n.step(Message(type: .append, to: 2, from: 1, term: 1, logTerm: 0, index: 0,
                           entries: [Entry(term: 1, index: 1)], commit: 0))
        try n.step(Message(type: .requestVote, to: 2, from: 3, term: 2, logTerm: 1, index: 1))
        let rd = try n.ready()
        #expect(rd.messages.contains { $0.type == .appendResponse })
        #expect(rd.messages.contains { $0.type == .requestVoteResponse && !$0.reject })
        #expect(rd.messagesBeforePersist.isEmpty)
        #expect(rd.messagesAfterPersist.count == rd.messages.count)
    }

    @Test func leaderStepsDownWhileItsWriteIsInFlight() throws {
        let (n, s) = try Self.leader()
        try n.propose([1])
        let rd = try n.ready()
        // A newer leader replaces the unpersisted entry before the write completes.
        try n.step(Message(type: .append, to: 1, from: 3, term: 3, logTerm: 2, index: 1,
                           entries: [Entry(term: 3, index: 2, data: [9])], commit: 1))
        #expect(n.role == .follower)
        try s.append(rd.entries)
        try n.advance(rd)
        let next = try Self.persist(n, s)
        #expect(next.entries.map(\.term) == [3])
        #expect(try s.term(2) == 3)
        #expect(next.messagesAfterPersist.contains { $0.type == .appendResponse && $0.index == 2 && !$0.reject })
    }

    @Test func hostileInputIsRefusedWithAReason() throws {
        let (n, _) = try Self.leader()
        let cases: [(Message, MessageRejection)] = [
            (Message(type: .hup, to: 1, from: 2, term: 2), .localType),
            (Message(type: .heartbeat, to: 1, from: 2, term: 1 << 62), .outOfRange),
            (Message(type: .heartbeat, to: 5, from: 2, term: 2), .misaddressed),
            (Message(type: .append, to: 1, from: 2, term: 0), .badTerm),
            (Message(type: .propose, to: 1, from: 2, term: 2, entries: [Entry(term: 0, index: 0)]), .badTerm),
            (Message(type: .appendResponse, to: 1, from: 9, term: 2, index: 1), .unknownPeer),
            (Message(type: .append, to: 1, from: 2, term: 3, logTerm: 2, index: 1,
                     entries: [Entry(term: 3, index: 3)]), .malformedEntries),
            (Message(type: .append, to: 1, from: 2, term: 3, logTerm: 2, index: 1,
                     entries: [Entry(term: 4, index: 2)]), .malformedEntries),
            (Message(type: .heartbeat, to: 1, from: 2, term: 2, entries: [Entry(term: 2, index: 2)]), .malformedEntries),
            (Message(type: .appendResponse, to: 1, from: 2, term: 2, index: 50), .beyondLog),
            (Message(type: .heartbeat, to: 1, from: 2, term: 3, commit: 50), .beyondLog),
            (Message(type: .snapshot, to: 1, from: 2, term: 3), .badSnapshot),
            (Message(type: .snapshot, to: 1, from: 2, term: 3, snapshot: Snapshot(metadata:
                SnapshotMetadata(index: 5, term: 4, confState: ConfState(voters: [1, 2, 3])))), .badSnapshot),
            (Message(type: .snapshot, to: 1, from: 2, term: 3, snapshot: Snapshot(metadata:
                SnapshotMetadata(index: 5, term: 3, confState: ConfState(voters: [1], learners: [1])))), .badSnapshot),
            (Message(type: .propose, to: 1, from: 2, entries: [Entry(term: 0, index: 0, type: .confChangeV2, data: [0xff])]), .badConfChange),
        ]
        for (m, reason) in cases {
            let before = n.status
            #expect(throws: RaftError.self, "\(m.type) -> \(reason)") {
                do { try n.step(m) } catch RaftError.rejectedMessage(let r, _) {
                    #expect(r == reason, "\(m.type)")
                    throw RaftError.rejectedMessage(r, "")
                }
            }
            #expect(n.status == before, "\(m.type) changed the node")
        }
    }
}
