import Testing
@testable import Raft

@Suite struct CodecTests {
    static func sampleMessage() -> Message {
        Message(type: .append, to: 2, from: 1, term: 7, logTerm: 6, index: 41,
                entries: [Entry(term: 7, index: 42, data: [1, 2, 3]),
                          Entry(term: 7, index: 43, type: .confChangeV2, data: [])],
                commit: 40,
                snapshot: Snapshot(metadata: SnapshotMetadata(index: 30, term: 5,
                    confState: ConfState(voters: [1, 2, 3], learners: [4], votersOutgoing: [1, 2, 5],
                                         learnersNext: [5], autoLeave: true)), data: [9, 9]),
                reject: true, rejectHint: UInt64.max, context: Array("ctx".utf8))
    }

    @Test func roundTripsEveryType() throws {
        let m = Self.sampleMessage()
        #expect(try Message(decoding: m.encode()) == m)
        let e = Entry(term: UInt64.max, index: 1 << 40, type: .confChange, data: [0, 255])
        #expect(try Entry(decoding: e.encode()) == e)
        let hs = HardState(term: 3, vote: 2, commit: 1 << 63)
        #expect(try HardState(decoding: hs.encode()) == hs)
        let s = try #require(m.snapshot)
        #expect(try Snapshot(decoding: s.encode()) == s)
        #expect(try SnapshotMetadata(decoding: s.metadata.encode()) == s.metadata)
        #expect(try ConfState(decoding: s.metadata.confState.encode()) == s.metadata.confState)
        let cc = ConfChange(id: 5, type: .addLearnerNode, nodeID: 9, context: [1])
        #expect(try ConfChange(decoding: cc.encode()) == cc)
        let v2 = ConfChangeV2(transition: .jointExplicit,
                              changes: [.init(type: .addNode, nodeID: 4), .init(type: .removeNode, nodeID: 1)],
                              context: [7])
        #expect(try ConfChangeV2(decoding: v2.encode()) == v2)
        #expect(try ConfChangeV2(decoding: ConfChangeV2().encode()).leavesJoint)
    }

    @Test func encodingIsStable() {
        // Pinned bytes: a format change must bump the version byte.
        #expect(HardState(term: 300, vote: 2, commit: 1).encode() == [1, 0xAC, 0x02, 2, 1])
        #expect(Entry(term: 1, index: 2, type: .normal, data: [0xFF]).encode() == [1, 0, 1, 2, 1, 0xFF])
    }

    @Test func rejectsMalformedInput() {
        let good = Self.sampleMessage().encode()
        #expect(throws: RaftCodecError.unsupportedVersion(9)) { try Message(decoding: [9] + good.dropFirst()) }
        #expect(throws: RaftCodecError.truncated) { try Message(decoding: Array(good.dropLast())) }
        #expect(throws: RaftCodecError.trailingBytes(1)) { try Message(decoding: good + [0]) }
        #expect(throws: RaftCodecError.self) { try Message(decoding: [1, 200]) }
        #expect(throws: RaftCodecError.badVarint) {
            try HardState(decoding: [1] + [UInt8](repeating: 0xFF, count: 11))
        }
        #expect(throws: RaftCodecError.truncated) { try HardState(decoding: []) }
        // A huge entry count with few bytes must not allocate or crash.
        #expect(throws: RaftCodecError.self) {
            try Message(decoding: [1, 3, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
        }
    }

    @Test(arguments: 0..<4) func randomBytesNeverCrash(chunk: Int) {
        var rng = SplitMix64(seed: UInt64(chunk) &+ 77)
        let good = Self.sampleMessage().encode()
        var decoded = 0
        for i in 0..<5_000 {
            var b: [UInt8]
            if i % 2 == 0 {
                b = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                if !b.isEmpty && i % 4 == 0 { b[0] = 1 }
            } else {
                b = good
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
                if rng.next() % 3 == 0 { b = Array(b.prefix(Int(rng.next() % UInt64(b.count)))) }
            }
            if (try? Message(decoding: b)) != nil { decoded += 1 }
            _ = try? Entry(decoding: b)
            _ = try? HardState(decoding: b)
            _ = try? Snapshot(decoding: b)
            _ = try? ConfState(decoding: b)
            _ = try? ConfChange(decoding: b)
            _ = try? ConfChangeV2(decoding: b)
        }
        #expect(decoded < 5_000)
    }
}

@Suite struct MemoryStorageTests {
    func filled() throws -> MemoryStorage {
        let s = MemoryStorage()
        try s.append((1...5).map { Entry(term: $0 < 3 ? 1 : 2, index: $0) })
        return s
    }

    @Test func appendOverwritesConflictingSuffix() throws {
        let s = try filled()
        try s.append([Entry(term: 3, index: 4), Entry(term: 3, index: 5), Entry(term: 3, index: 6)])
        #expect(try s.lastIndex() == 6)
        #expect(try s.term(3) == 2)
        #expect(try s.term(4) == 3)
        try s.append([Entry(term: 4, index: 2)])
        #expect(try s.lastIndex() == 2)
        #expect(throws: RaftStorageError.unavailable) { try s.append([Entry(term: 4, index: 9)]) }
    }

    @Test func entriesRespectBoundsAndSize() throws {
        let s = try filled()
        #expect(try s.entries(2, 5, maxBytes: .max).map(\.index) == [2, 3, 4])
        #expect(try s.entries(2, 5, maxBytes: 0).map(\.index) == [2])
        #expect(throws: RaftStorageError.unavailable) { try s.entries(2, 7, maxBytes: .max) }
        #expect(throws: RaftStorageError.compacted) { try s.entries(0, 2, maxBytes: .max) }
    }

    @Test func snapshotAndCompaction() throws {
        let s = try filled()
        let cs = ConfState(voters: [1, 2, 3])
        let snap = try s.createSnapshot(index: 3, confState: cs, data: [42])
        #expect(snap.metadata.term == 2)
        try s.compact(3)
        #expect(try s.firstIndex() == 4)
        #expect(try s.term(3) == 2)
        #expect(throws: RaftStorageError.compacted) { try s.term(2) }
        #expect(throws: RaftStorageError.compacted) { try s.compact(2) }
        #expect(throws: RaftStorageError.snapshotOutOfDate) { try s.createSnapshot(index: 2, confState: cs, data: []) }
        #expect(try s.initialState().1 == cs)
        // Appending entries that are partly compacted keeps only the new tail.
        try s.append([Entry(term: 2, index: 3), Entry(term: 2, index: 4), Entry(term: 5, index: 5)])
        #expect(try s.term(5) == 5)
        let newer = Snapshot(metadata: SnapshotMetadata(index: 10, term: 6, confState: cs))
        try s.applySnapshot(newer)
        #expect(try s.firstIndex() == 11)
        #expect(try s.lastIndex() == 10)
        #expect(throws: RaftStorageError.snapshotOutOfDate) { try s.applySnapshot(snap) }
    }
}

@Suite struct ConfigTests {
    @Test func validation() {
        var c = RaftConfig(id: 0)
        #expect(throws: RaftConfigError.zeroID) { try c.validate() }
        c.id = 1
        c.electionTick = 1
        #expect(throws: RaftConfigError.electionTickTooSmall) { try c.validate() }
        c.electionTick = 10
        c.maxInflightBytes = 10
        c.maxSizePerMsg = 100
        #expect(throws: RaftConfigError.maxInflightBytesTooSmall) { try c.validate() }
        c.maxInflightBytes = 0
        #expect(throws: Never.self) { try c.validate() }
    }
}
