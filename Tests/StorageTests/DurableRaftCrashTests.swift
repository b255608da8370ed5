import Foundation
import Raft
import Testing
@testable import Storage

/// Crash recovery of the durable Raft log. Per seed, a 3-node cluster runs with member 1
/// durable (a follower; later briefly the leader) while proposals, heartbeats (commit-only
/// hard states, not synced), elections and local snapshots happen. After every durable write
/// the WAL tail offset, whether it was synced and the snapshot files present are recorded.
/// Each trial then simulates a crash during write c: the WAL keeps every byte up to the last
/// sync before c, the rest of what was written up to c is cut at a random byte (the torn
/// record may also get flipped bits), and the snapshot files are those of before c (plus,
/// sometimes, the orphan file of a snapshot whose marker never made it).
///
/// Reopening must rebuild exactly the Raft state described by the surviving WAL records, never
/// lose a synced entry or hard state (term and vote never go backwards, committed entries never
/// change), and a node restarted on it must accept it.
///
/// DURABLE_RAFT_CRASH_SEED=<n> replays a seed; DURABLE_RAFT_CRASH_TRIALS sets trials per seed.
@Suite struct DurableRaftCrashTests {
    let meta = WALMetadata(memberID: 1, clusterID: 5)
    /// One segment holds the whole history, so cuts only ever hit the last segment.
    let options = DurableRaftOptions(wal: WALOptions(segmentSize: 1 << 20), maxSnapshotFiles: 3)

    struct Point {
        var offset: Int64
        var synced: Bool
        var hardState: HardState
        var snapFiles: Set<String>
        /// A snapshot file saved by this write (before its marker).
        var newSnapFile: String?
    }

    @Test(arguments: drSeeds("DURABLE_RAFT_CRASH_SEED", [11, 12, 13]))
    func crashAtRandomOffsets(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let tmp = try WALTempDir("draftcrash")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let d = try DurableRaftStorage.open(dd, newMember: meta, options: options)
        let ids: [UInt64] = [1, 2, 3, 4, 5]
        let c = try DRCluster(ids: ids, durableID: 1, durable: d)
        let start = try #require(d.walTail).offset
        var snapBytes: [String: [UInt8]] = [:]
        var committed: [UInt64: Entry] = [:]
        func snapFiles() throws -> Set<String> {
            let names = try Snapshotter(directory: dd.snapDirectory).fileNames()
            for n in names where snapBytes[n] == nil { snapBytes[n] = try walFileBytes(dd.snapDirectory + "/" + n) }
            return Set(names)
        }
        var points: [Point] = [Point(offset: start, synced: true, hardState: HardState(),
                                     snapFiles: try snapFiles(), newSnapFile: nil)]
        func record(synced: Bool) throws {
            let files = try snapFiles()
            let made = files.subtracting(try #require(points.last).snapFiles).first
            points.append(Point(offset: try #require(c.durable!.walTail).offset, synced: synced,
                                hardState: d.memory.hardState, snapFiles: files, newSnapFile: made))
        }
        var received = 0
        c.onPersist = { rd, synced in
            #expect(synced || !rd.mustSync, "a Ready that must sync was not synced, seed \(seed)")
            for e in rd.committedEntries { committed[e.index] = e }
            if rd.snapshot != nil { received += 1 }
            try record(synced: synced)
        }

        func snapshotOthers() throws {
            for id in ids where id != 1 {
                let snapIndex = try c.mem[id]!.snapshot().metadata.index
                if c.applied[id]! > snapIndex { try c.snapshot(id, keeping: 0) }
            }
        }

        try c.nodes[2]!.campaign()
        try c.settle()
        for step in 0..<160 {
            let snapIndex = try d.memory.snapshot().metadata.index
            let canSnapshot = step > 20 && c.applied[1]! > snapIndex
            switch Int.random(in: 0..<20, using: &rng) {
            case 0:
                // A leadership change (sometimes to the durable member).
                let to = UInt64.random(in: 1...5, using: &rng)
                if let l = c.leader, l != to { try c.nodes[l]!.transferLeadership(to: to); try c.settle() }
            case 1 where canSnapshot:
                try c.snapshot(1, keeping: 8)
                try record(synced: true)
            case 5:
                // The durable member falls behind a compacted leader and gets its snapshot.
                guard let l = c.leader, l != 1 else { break }
                c.isolated = [1]
                for _ in 0..<Int.random(in: 5...15, using: &rng) { try c.nodes[l]!.propose(drPayload(&rng, max: 100)) }
                try c.settle()
                try snapshotOthers()
                c.isolated = []
                try c.tick(l, 2)
            case 6:
                // The durable member is cut off with the leader, which appends entries that never
                // commit; the majority elects a leader, commits a little and compacts; on healing
                // the durable member's longer stale tail is replaced by a snapshot.
                guard let l = c.leader, l != 1 else { break }
                let rest = Set(ids).subtracting([1, l])
                c.groups = [[1, l], rest]
                for _ in 0..<Int.random(in: 8...16, using: &rng) { try c.nodes[l]!.propose(drPayload(&rng, max: 100)) }
                try c.settle()
                for _ in 0..<60 where !rest.contains(c.leader ?? 0) { try c.tickAll(1) }
                let nl = try #require(c.leader.flatMap { rest.contains($0) ? $0 : nil }, "seed \(seed)")
                for _ in 0..<Int.random(in: 0...3, using: &rng) { try c.nodes[nl]!.propose(drPayload(&rng, max: 100)) }
                try c.settle()
                try snapshotOthers()
                c.groups = []
                try c.tick(nl, 2)
            case 2...4:
                if let l = c.leader { try c.tick(l) }
            default:
                if let l = c.leader {
                    for _ in 0..<Int.random(in: 1...3, using: &rng) { try c.nodes[l]!.propose(drPayload(&rng, max: 200)) }
                    try c.settle()
                }
            }
        }
        #expect(points.contains { !$0.synced }, "history has unsynced writes, seed \(seed)")
        #expect(received > 0, "the durable member received a snapshot, seed \(seed)")
        try c.durable!.close()
        let walFiles = try FileIO.list(dd.walDirectory).filter { $0.hasSuffix(".wal") }
        try #require(walFiles.count == 1, "history fits one segment, seed \(seed)")
        let walFile = walFiles[0]
        let image = try walFileBytes(dd.walDirectory + "/" + walFile)
        // Every record of the full history with its position.
        var records: [WALDumpRecord] = []
        try WAL.dump(directory: dd.walDirectory) { ev in
            if case let .record(r) = ev { records.append(r) }
        }

        let trials = Int(ProcessInfo.processInfo.environment["DURABLE_RAFT_CRASH_TRIALS"] ?? "") ?? 40
        // What the trials covered: torn tails cut, bits flipped, unsynced records lost,
        // recoveries from a snapshot, orphan snapshot files.
        var seen = (torn: 0, flipped: 0, lost: 0, fromSnapshot: 0, orphans: 0, marks: 0)
        for t in 0..<trials {
            let crash = Int.random(in: 1..<points.count, using: &rng)
            let durableAt = points[..<crash].lastIndex { $0.synced } ?? 0
            let lo = Int(points[durableAt].offset), hi = Int(points[crash].offset)
            let cutAt = Int.random(in: lo...hi, using: &rng)
            var bytes = image
            for i in cutAt..<bytes.count { bytes[i] = 0 }
            // Flip bits in the torn record (the one the cut falls into), if any.
            if let torn = records.first(where: { Int($0.offset) < cutAt && cutAt < Int($0.offset) + $0.size }),
               Int(torn.offset) >= lo, Bool.random(using: &rng) {
                let p = Int.random(in: Int(torn.offset)..<cutAt, using: &rng)
                bytes[p] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
                seen.flipped += 1
            }
            // The records that survive: those before the first one the crash changed.
            let kept = records.prefix { r in
                let range = Int(r.offset)..<(Int(r.offset) + r.size)
                return bytes[range] == image[range]
            }
            // A snapshot file saved during the crashed write exists if its marker survived
            // (the file is synced first), and may exist as an orphan otherwise.
            var snaps = points[crash - 1].snapFiles
            if let made = points[crash].newSnapFile, let (term, index) = Snapshotter.parse(made) {
                let marked = kept.contains { if case let .snapshot(m) = $0.record { m.index == index && m.term == term } else { false } }
                if marked {
                    snaps.insert(made)
                } else if Bool.random(using: &rng) {
                    snaps.insert(made)
                    seen.orphans += 1
                }
            }

            let trialDir = DataDir(path: tmp.sub("trial\(t)"))
            try FileManager.default.createDirectory(atPath: trialDir.walDirectory, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: trialDir.snapDirectory, withIntermediateDirectories: true)
            try walWriteFile(trialDir.walDirectory + "/" + walFile, bytes)
            for s in snaps { try walWriteFile(trialDir.snapDirectory + "/" + s, try #require(snapBytes[s])) }

            let ctx = "seed \(seed) trial \(t) crash \(crash) durable \(durableAt) cut \(cutAt)"
            let r = try DurableRaftStorage.open(trialDir, newMember: meta, options: options)
            let want = try expected(Array(kept), snapDirectory: trialDir.snapDirectory)
            #expect(r.recovery.snapshot.metadata == want.snapshot, "\(ctx)")
            #expect(r.recovery.hardState == want.hardState, "\(ctx)")
            let log = try c.log(1, using: r)
            #expect(log == want.entries, "\(ctx)")
            if r.recovery.tornTail != nil { seen.torn += 1 }
            // Writes completed before the crash but never synced, then lost.
            if let end = kept.last.map({ Int($0.offset) + $0.size }), end < Int(points[crash - 1].offset) { seen.lost += 1 }
            if r.recovery.snapshot.metadata.index > 0 { seen.fromSnapshot += 1 }
            if kept.contains(where: { if case let .entry(e) = $0.record { e.data.isEmpty } else { false } }) {
                seen.marks += 1
            }

            // Raft's promises against what was synced before the crash.
            let synced = points[durableAt]
            let hs = r.recovery.hardState
            #expect(hs.term >= synced.hardState.term, "\(ctx)")
            if hs.term == synced.hardState.term && synced.hardState.vote != 0 {
                #expect(hs.vote == synced.hardState.vote, "\(ctx)")
            }
            #expect(hs.commit >= synced.hardState.commit, "\(ctx)")
            let snapIndex = r.recovery.snapshot.metadata.index
            for e in log where e.index <= synced.hardState.commit && e.index > snapIndex {
                #expect(committed[e.index] == nil || committed[e.index] == e, "committed entry \(e.index) changed, \(ctx)")
            }
            #expect(try r.memory.lastIndex() >= synced.hardState.commit, "\(ctx)")
            // The node accepts the recovered state.
            let node = try RaftNode(config: DRCluster.config(1), storage: r.raftStorage)
            #expect(node.hardState.term >= synced.hardState.term, "\(ctx)")
            try r.close()
            try? FileManager.default.removeItem(atPath: trialDir.path)
        }
        print("durable raft crash seed \(seed): \(points.count) writes, \(trials) trials, \(seen)")
        if trials >= 40 {
            #expect(seen.torn > 0 && seen.lost > 0 && seen.fromSnapshot > 0 && seen.marks > 0, "coverage \(seen), seed \(seed)")
        }
    }

    struct Expected {
        var snapshot: SnapshotMetadata
        var hardState: HardState
        var entries: [Entry]
    }

    /// The Raft state the surviving records describe: the newest snapshot file that has a
    /// marker at or below the final commit index, the last hard state, and the entries after
    /// the snapshot (a later write of an index replacing it and everything after it).
    func expected(_ recs: [WALDumpRecord], snapDirectory: String) throws -> Expected {
        var log: [UInt64: Entry] = [:]
        var last: UInt64 = 0
        var hs = HardState()
        var markers: Set<[UInt64]> = []
        for r in recs {
            switch r.record {
            case let .entry(e):
                for i in e.index...max(e.index, last) { log[i] = nil }
                // Empty data: a truncation mark, which only ends the log.
                if !e.data.isEmpty { log[e.index] = try Entry(decoding: e.data) }
                last = e.index
            case let .hardState(h):
                hs = HardState(term: h.term, vote: h.vote, commit: h.commit)
            case let .snapshot(m):
                markers.insert([m.index, m.term])
            default:
                break
            }
        }
        var snap = SnapshotMetadata()
        let snapper = Snapshotter(directory: snapDirectory)
        for name in try snapper.fileNames().reversed() {
            let p = try #require(Snapshotter.parse(name))
            guard markers.contains([p.index, p.term]) && p.index <= hs.commit else { continue }
            let s = try snapper.load(fileName: name)
            snap = SnapshotMetadata(index: s.index, term: s.term, confState: try ConfState(decoding: s.confState))
            break
        }
        var entries = log.values.filter { $0.index > snap.index }.sorted { $0.index < $1.index }
        // A stale tail (terms going down) left by a crash before a truncation mark is dropped.
        var lastTerm = snap.term
        if let cut = entries.firstIndex(where: { e in defer { lastTerm = max(lastTerm, e.term) }; return e.term < lastTerm }) {
            entries.removeSubrange(cut...)
        }
        hs.commit = max(hs.commit, snap.index)
        if let lt = entries.last?.term ?? (snap.index > 0 ? snap.term : nil), lt > hs.term {
            hs.term = lt
            hs.vote = 0
        }
        return Expected(snapshot: snap, hardState: hs, entries: entries)
    }
}
