import Foundation
import LMDBBackend
import Raft
import Testing
@testable import Storage

@Suite struct DurableRaftTests {
    let meta = WALMetadata(memberID: 0x1111, clusterID: 0x2222)
    let smallWAL = DurableRaftOptions(wal: WALOptions(segmentSize: 16384, maxSegmentFiles: 2), maxSnapshotFiles: 2)

    @Test func freshDirectoryCreatesWALWithMetadata() throws {
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let d = try DurableRaftStorage.open(dd, newMember: meta)
        #expect(d.recovery.isNew)
        #expect(d.metadata == meta)
        #expect(try d.memory.lastIndex() == 0)
        try d.close()
        #expect(throws: DurableRaftError.closed) { try d.createSnapshot(index: 1, confState: ConfState(), data: []) }
        // Reopened: the stored metadata wins over the one offered for a new member.
        let again = try DurableRaftStorage.open(dd, newMember: WALMetadata(memberID: 9, clusterID: 9))
        #expect(!again.recovery.isNew)
        #expect(again.metadata == meta)
        // A second owner is refused while the first holds the WAL lock.
        #expect(throws: WALError.self) { try DurableRaftStorage.open(dd, newMember: meta) }
    }

    /// Reopening counts its progress: every WAL record scanned, every entry replayed and
    /// decoded after the snapshot, and the step it is in.
    @Test func reopenReportsProgress() throws {
        var rng = SplitMix64(seed: 7)
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let c = try DRCluster.singleLeader(dd, meta, smallWAL)
        for i in 0..<60 {
            try c.nodes[1]!.propose(drPayload(&rng))
            try c.settle()
            if i == 39 { try c.snapshot(1, keeping: 5) }
        }
        let d = c.durable!
        let snapIndex = try d.memory.snapshot().metadata.index
        let last = try d.memory.lastIndex()
        try d.close()
        #expect(snapIndex > 0 && last > snapIndex)

        let progress = StartupProgress()
        #expect(progress.count == 0)
        var options = smallWAL
        options.progress = progress
        let r = try DurableRaftStorage.open(dd, newMember: meta, options: options)
        defer { try? r.close() }
        let after = last - snapIndex
        // The last step decoded the entries after the snapshot; the WAL was read twice before
        // (markers, then the replay), each time counting at least those entries.
        #expect(progress.description == "decoding WAL entries: \(after) entries")
        #expect(progress.count >= 3 * after + 4, "\(progress.count)")

        // Without a progress counter nothing is counted (and opening works the same).
        try r.close()
        let plain = try DurableRaftStorage.open(dd, newMember: meta, options: smallWAL)
        #expect(try plain.memory.lastIndex() == last)
        #expect(progress.count >= 3 * after + 4)
        try plain.close()
    }

    /// A single node proposes, snapshots and compacts while persisting every Ready; reopening
    /// rebuilds the same hard state, snapshot and log, and the restarted node carries on.
    @Test(arguments: drSeeds("DURABLE_RAFT_SEED", [1, 2]))
    func singleNodeRoundTrip(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let c = try DRCluster.singleLeader(dd, meta, smallWAL)
        var proposed: [[UInt8]] = []
        for i in 0..<120 {
            let p = drPayload(&rng)
            proposed.append(p)
            try c.nodes[1]!.propose(p)
            try c.settle()
            if i % 25 == 24 { try c.snapshot(1, keeping: 10) }
        }
        #expect(c.state[1] == proposed, "seed \(seed)")
        let d = c.durable!
        #expect(d.walSegmentFiles.count <= 3, "old segments released, seed \(seed)")
        let hs = c.nodes[1]!.hardState
        let snap = try d.memory.snapshot()
        #expect(snap.metadata.index > 0)
        #expect(try d.memory.firstIndex() == snap.metadata.index - 10 + 1)
        let logBefore = try c.log(1)
        try d.close()

        let r = try DurableRaftStorage.open(dd, newMember: meta, options: smallWAL)
        #expect(r.recovery.hardState == hs, "seed \(seed)")
        #expect(r.memory.hardState == hs)
        #expect(r.recovery.snapshot == snap, "seed \(seed)")
        #expect(r.recovery.tornTail == nil)
        let logAfter = try c.log(1, using: r)
        #expect(logAfter.first?.index == snap.metadata.index + 1)
        #expect(logBefore.suffix(logAfter.count) == logAfter[...], "seed \(seed)")
        #expect(logAfter.last?.index == logBefore.last?.index)
        #expect(try r.committedEntries(after: snap.metadata.index).map(\.index) == logAfter.map(\.index))

        // Restart: the state machine is rebuilt from the snapshot plus re-applied entries.
        try c.restartDurable(r)
        try c.settle()
        #expect(c.state[1] == proposed, "seed \(seed)")
        try c.nodes[1]!.campaign()
        try c.settle()
        #expect(c.leader == 1)
        #expect(c.nodes[1]!.hardState.term > hs.term)
        for _ in 0..<10 {
            let p = drPayload(&rng)
            proposed.append(p)
            try c.nodes[1]!.propose(p)
            try c.settle()
        }
        #expect(c.state[1] == proposed, "seed \(seed)")
    }

    /// A durable follower that fell behind receives the leader's snapshot: it is saved (file,
    /// marker), survives a reopen, and the member can even take over leadership afterwards.
    @Test func followerInstallsSnapshotFromLeader() throws {
        var rng = SplitMix64(seed: 7)
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let c = try DRCluster(ids: [1, 2, 3], durableID: 1, durable: try DurableRaftStorage.open(dd, newMember: meta))
        try c.nodes[2]!.campaign()
        try c.settle()
        #expect(c.leader == 2)
        var proposed: [[UInt8]] = []
        func propose(_ n: Int, via id: UInt64) throws {
            for _ in 0..<n {
                let p = drPayload(&rng, max: 64)
                proposed.append(p)
                try c.nodes[id]!.propose(p)
                try c.settle()
            }
        }
        try propose(10, via: 2)
        #expect(c.state[1] == proposed)
        c.isolated = [1]
        try propose(30, via: 2)
        try c.snapshot(2, keeping: 0)
        try c.snapshot(3, keeping: 0)
        let leaderSnap = try c.mem[2]!.snapshot()
        c.isolated = []
        try c.tick(2, 3)
        try propose(5, via: 2)
        #expect(c.state[1] == proposed)
        let d = c.durable!
        #expect(try d.memory.snapshot().metadata.index == leaderSnap.metadata.index)
        let snapFiles = try Snapshotter(directory: dd.snapDirectory).fileNames()
        #expect(snapFiles.contains(Snapshotter.fileName(term: leaderSnap.metadata.term, index: leaderSnap.metadata.index)))
        let hs = c.nodes[1]!.hardState
        let logBefore = try c.log(1)
        try d.close()

        let r = try DurableRaftStorage.open(dd, newMember: meta)
        #expect(r.recovery.snapshot == leaderSnap)
        #expect(r.recovery.hardState == hs)
        #expect(try c.log(1, using: r) == logBefore)
        try c.restartDurable(r)
        try c.settle()
        #expect(c.state[1] == proposed)
        try c.nodes[2]!.transferLeadership(to: 1)
        try c.settle()
        #expect(c.leader == 1)
        try propose(5, via: 1)
        #expect(c.state[1] == proposed && c.state[2] == proposed && c.state[3] == proposed)
    }

    /// A durable follower holding a long uncommitted tail from a deposed minority leader gets
    /// the new leader's snapshot, which ends before that tail. The stale entries stay in the
    /// WAL (before the marker), but recovery must not resurrect them behind the snapshot.
    @Test func staleTailBehindReceivedSnapshotIsNotResurrected() throws {
        var rng = SplitMix64(seed: 9)
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let c = try DRCluster(ids: [1, 2, 3, 4, 5], durableID: 1, durable: try DurableRaftStorage.open(dd, newMember: meta))
        try c.nodes[2]!.campaign()
        try c.settle()
        #expect(c.leader == 2)
        // Leader 2 and follower 1 are cut off: their 40 proposals never commit.
        c.groups = [[1, 2], [3, 4, 5]]
        for _ in 0..<40 { try c.nodes[2]!.propose(drPayload(&rng, max: 32)) }
        try c.settle()
        let staleLast = try c.durable!.memory.lastIndex()
        #expect(staleLast > 40)
        try c.tickAll(40)
        let l = try #require(c.leader.flatMap { [3, 4, 5].contains($0) ? $0 : nil })
        var proposed: [[UInt8]] = []
        for _ in 0..<5 {
            let p = drPayload(&rng, max: 32)
            proposed.append(p)
            try c.nodes[l]!.propose(p)
        }
        try c.settle()
        for id: UInt64 in [3, 4, 5] { try c.snapshot(id, keeping: 0) }
        let snap = try c.mem[l]!.snapshot()
        #expect(snap.metadata.index < staleLast)
        c.groups = []
        try c.tick(l, 3)
        #expect(c.state[1] == proposed)
        #expect(try c.durable!.memory.snapshot() == snap)
        #expect(try c.durable!.memory.lastIndex() == snap.metadata.index)
        let hs = c.nodes[1]!.hardState
        try c.durable!.close()

        let r = try DurableRaftStorage.open(dd, newMember: meta)
        #expect(r.recovery.snapshot == snap)
        #expect(r.recovery.hardState == hs)
        // The stale tail is in the WAL, and so is the mark that ends the log after the snapshot.
        var staleRecords = 0, marks = 0
        try WAL.dump(directory: dd.walDirectory) { ev in
            guard case let .record(rec) = ev, case let .entry(e) = rec.record, e.index > snap.metadata.index else { return }
            if e.data.isEmpty { marks += 1 } else if e.term < snap.metadata.term { staleRecords += 1 }
        }
        #expect(staleRecords == Int(staleLast - snap.metadata.index))
        #expect(marks == 1)
        try r.close()
        // With the received snapshot's file damaged, the older bootstrap snapshot must not
        // stand in: the WAL's entries before the received one include the stale tail.
        let snapPath = dd.snapDirectory + "/" + Snapshotter.fileName(term: snap.metadata.term, index: snap.metadata.index)
        let good = try walFileBytes(snapPath)
        var bad = good
        bad[bad.count - 1] ^= 1
        try walWriteFile(snapPath, bad)
        #expect(throws: DurableRaftError.snapshotMissing(index: snap.metadata.index, term: snap.metadata.term,
                                                         skipped: [SkippedSnapshot(file: FileIO.lastComponent(snapPath), reason: "CRC mismatch")])) {
            try DurableRaftStorage.open(dd, newMember: meta)
        }
        try walWriteFile(snapPath, good)
        let r2 = try DurableRaftStorage.open(dd, newMember: meta)
        #expect(r2.recovery.snapshot == snap)
        #expect(try r.memory.lastIndex() == snap.metadata.index)
        try c.restartDurable(r2)
        for _ in 0..<5 {
            let p = drPayload(&rng, max: 32)
            proposed.append(p)
            try c.nodes[l]!.propose(p)
            try c.settle()
        }
        for id in c.nodes.keys { #expect(c.state[id] == proposed, "node \(id)") }
    }

    @Test func damagedPiecesGiveClearErrors() throws {
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        // A WAL whose metadata is not ours.
        let dd = DataDir(path: tmp.sub("a"))
        try dd.prepare()
        try WAL.create(directory: dd.walDirectory, metadata: [1, 2, 3]).close()
        #expect(throws: DurableRaftError.badMetadata(directory: dd.walDirectory, byteCount: 3)) {
            try DurableRaftStorage.open(dd, newMember: meta)
        }
        // A CRC-valid entry record whose bytes are not a Raft entry: named with file and offset.
        let dd2 = DataDir(path: tmp.sub("b"))
        try dd2.prepare()
        let w = try WAL.create(directory: dd2.walDirectory, metadata: meta.encoded)
        try w.save(hardState: WALHardState(term: 1, vote: 1, commit: 1),
                   entries: [WALEntry(index: 1, term: 1, data: Entry(term: 1, index: 1).encode()),
                             WALEntry(index: 2, term: 1, data: [0xFF, 0xFF])])
        try w.close()
        do {
            _ = try DurableRaftStorage.open(dd2, newMember: meta)
            Issue.record("expected an error")
        } catch let DurableRaftError.corruptEntry(file, offset, index, _) {
            #expect(file.hasSuffix(".wal") && offset > 0 && index == 2)
        }
        // The WAL lock was released by the failed open.
        let again = try WAL.open(directory: dd2.walDirectory)
        try again.wal.close()
        // A truncation mark in the middle of the log is corruption; a tail whose terms go down
        // is stale (what a crash before a truncation mark leaves) and dropped.
        let dd6 = DataDir(path: tmp.sub("f"))
        try dd6.prepare()
        let w6 = try WAL.create(directory: dd6.walDirectory, metadata: meta.encoded)
        try w6.save(hardState: nil, entries: [WALEntry(index: 1, term: 1, data: Entry(term: 1, index: 1).encode()),
                                              WALEntry(index: 2, term: 1, data: []),
                                              WALEntry(index: 3, term: 1, data: Entry(term: 1, index: 3).encode())])
        try w6.close()
        #expect(throws: DurableRaftError.self) { try DurableRaftStorage.open(dd6, newMember: meta) }
        let dd7 = DataDir(path: tmp.sub("g"))
        try dd7.prepare()
        let w7 = try WAL.create(directory: dd7.walDirectory, metadata: meta.encoded)
        try w7.save(hardState: nil, entries: [WALEntry(index: 1, term: 2, data: Entry(term: 2, index: 1).encode()),
                                              WALEntry(index: 2, term: 1, data: Entry(term: 1, index: 2).encode())])
        try w7.close()
        let r7 = try DurableRaftStorage.open(dd7, newMember: meta)
        #expect(r7.recovery.droppedStaleEntries == 1)
        #expect(try r7.memory.lastIndex() == 1)
        try r7.close()
        // Entry bytes that decode to another position.
        let dd3 = DataDir(path: tmp.sub("c"))
        try dd3.prepare()
        let w3 = try WAL.create(directory: dd3.walDirectory, metadata: meta.encoded)
        try w3.save(hardState: nil, entries: [WALEntry(index: 1, term: 2, data: Entry(term: 1, index: 1).encode())])
        try w3.close()
        #expect(throws: DurableRaftError.self) { try DurableRaftStorage.open(dd3, newMember: meta) }
        // A hard state committing beyond the log.
        let dd4 = DataDir(path: tmp.sub("d"))
        try dd4.prepare()
        let w4 = try WAL.create(directory: dd4.walDirectory, metadata: meta.encoded)
        try w4.save(hardState: WALHardState(term: 1, vote: 0, commit: 5), entries: [])
        try w4.close()
        #expect(throws: DurableRaftError.self) { try DurableRaftStorage.open(dd4, newMember: meta) }
        // A foreign directory is refused and left alone.
        let dd5 = DataDir(path: tmp.sub("e"))
        try FileManager.default.createDirectory(atPath: dd5.path + "/other", withIntermediateDirectories: true)
        #expect(throws: WALError.self) { try DurableRaftStorage.open(dd5, newMember: meta) }
        #expect(FileManager.default.fileExists(atPath: dd5.path + "/other"))
    }

    /// Once old segments are released, the WAL needs a snapshot; if every snapshot file is
    /// damaged, start-up fails naming them instead of starting from a partial log.
    @Test func releasedWALWithoutUsableSnapshotIsAnError() throws {
        var rng = SplitMix64(seed: 3)
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let c = try DRCluster.singleLeader(dd, meta, smallWAL)
        for i in 0..<150 {
            try c.nodes[1]!.propose(drPayload(&rng))
            try c.settle()
            if i % 30 == 29 { try c.snapshot(1, keeping: 5) }
        }
        try c.durable!.close()
        #expect(!(try FileIO.list(dd.walDirectory).contains { $0.hasPrefix("0000000000000000-") }))
        for f in try Snapshotter(directory: dd.snapDirectory).fileNames() {
            let p = dd.snapDirectory + "/" + f
            var b = try walFileBytes(p)
            b[b.count / 2] ^= 0x40
            try walWriteFile(p, b)
        }
        do {
            _ = try DurableRaftStorage.open(dd, newMember: meta, options: smallWAL)
            Issue.record("expected an error")
        } catch let DurableRaftError.noUsableSnapshot(dir, skipped) {
            #expect(dir == dd.walDirectory)
            #expect(skipped.count == 2)
        }
    }

    /// An orphan snapshot file (saved, but the crash came before its WAL marker) is skipped.
    @Test func orphanSnapshotFileIsSkipped() throws {
        var rng = SplitMix64(seed: 4)
        let tmp = try WALTempDir("draft")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let c = try DRCluster.singleLeader(dd, meta, DurableRaftOptions())
        for _ in 0..<20 {
            try c.nodes[1]!.propose(drPayload(&rng))
            try c.settle()
        }
        try c.snapshot(1, keeping: 5)
        let snap = try c.durable!.memory.snapshot()
        let hs = c.nodes[1]!.hardState
        try c.durable!.close()
        let orphan = StoredSnapshot(index: hs.commit, term: hs.term + 5, confState: ConfState(voters: [1]).encode(), data: [1])
        try Snapshotter(directory: dd.snapDirectory).save(orphan)
        let r = try DurableRaftStorage.open(dd, newMember: meta)
        #expect(r.recovery.snapshot == snap)
        #expect(r.recovery.skippedSnapshots.count == 1)
        let log = try DRCluster.log(of: r)
        try r.close()
        // A damaged local snapshot: the older (bootstrap) one stands in, with the WAL holding
        // every entry since; the log after the damaged snapshot is the same.
        let name = Snapshotter.fileName(term: snap.metadata.term, index: snap.metadata.index)
        var b = try walFileBytes(dd.snapDirectory + "/" + name)
        b[60] ^= 0x10
        try walWriteFile(dd.snapDirectory + "/" + name, b)
        let older = try DurableRaftStorage.open(dd, newMember: meta)
        #expect(older.recovery.snapshot.metadata.index == 0)
        #expect(older.recovery.skippedSnapshots.count == 2)
        #expect(older.recovery.hardState == hs)
        #expect(try DRCluster.log(of: older).suffix(log.count) == log[...])
    }
}

extension DRCluster {
    /// The entries another storage holds after its snapshot.
    func log(_ id: UInt64, using d: DurableRaftStorage) throws -> [Entry] { try Self.log(of: d) }

    /// The entries a durable storage holds after its snapshot.
    static func log(of d: DurableRaftStorage) throws -> [Entry] {
        let s = d.memory
        let first = try s.firstIndex(), last = try s.lastIndex()
        return first > last ? [] : try s.entries(first, last + 1, maxBytes: .max)
    }
}
