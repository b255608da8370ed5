import Foundation
import Raft
import Testing
@testable import Storage

/// Hostile WAL content that still passes the CRC: a real log whose records are rewritten with
/// extreme or inconsistent values (indexes, terms, commit, vote, snapshot markers, entry and
/// conf-state bytes), re-framed with valid CRCs; in a third of the trials the newest snapshot
/// file too (its configuration or state bytes, behind a valid CRC). Opening it and starting a `RaftNode` on it
/// either works or throws a clear error; it never traps.
///
/// `WAL_FUZZ_SEED` replays one seed; `WAL_FUZZ_TRIALS` (150) sets the trials per seed.
@Suite("WAL: hostile records with valid CRCs")
struct WALFuzzTests {
    let meta = WALMetadata(memberID: 1, clusterID: 5)
    let options = DurableRaftOptions(wal: WALOptions(segmentSize: 16384, maxSegmentFiles: 2), maxSnapshotFiles: 2)

    static var trials: Int { ProcessInfo.processInfo.environment["WAL_FUZZ_TRIALS"].flatMap(Int.init) ?? 150 }

    @Test(arguments: drSeeds("WAL_FUZZ_SEED", [1]))
    func rewrittenRecordsOpenOrFail(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let tmp = try WALTempDir("walfuzz")
        defer { tmp.cleanup() }
        // A real log: a leader's entries, a snapshot and its marker, hard states.
        let origin = DataDir(path: tmp.sub("origin"))
        let c = try DRCluster.singleLeader(origin, meta, options)
        for i in 0..<40 {
            try c.nodes[1]!.propose(drPayload(&rng, max: 60))
            try c.settle()
            if i == 20 { try c.snapshot(1, keeping: 5) }
        }
        try c.durable!.close()

        var opened = 0, refused = 0
        for trial in 0..<Self.trials {
            let dir = tmp.sub("t\(trial)")
            try FileManager.default.copyItem(atPath: origin.path, toPath: dir)
            let dd = DataDir(path: dir)
            // A third of the trials also rewrite the newest snapshot file behind a valid CRC:
            // same position (so the WAL's marker still matches), hostile configuration or state.
            if rng.next() % 3 == 0 {
                let snaps = Snapshotter(directory: dd.snapDirectory)
                if let name = try snaps.fileNames().filter({ $0.hasSuffix(".snap") }).sorted().last {
                    var stored = try snaps.load(fileName: name)
                    if rng.next() & 1 == 0 { stored.confState = Self.bytes(stored.confState, &rng) } else { stored.data = Self.bytes(stored.data, &rng) }
                    _ = try snaps.save(stored)
                }
            }
            let segments = try FileManager.default.contentsOfDirectory(atPath: dd.walDirectory)
                .filter { $0.hasSuffix(".wal") }.sorted()
            let file = dd.walDirectory + "/" + segments[Int(rng.next() % UInt64(segments.count))]
            let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            var records = Self.records(original)
            guard !records.isEmpty else { continue }
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let i = Int(rng.next() % UInt64(records.count))
                records[i] = Self.mutate(records[i], &rng)
            }
            var rewritten: [UInt8] = []
            for r in records { WALFrame.append(r, to: &rewritten) }
            if rewritten.count < original.count {
                rewritten += [UInt8](repeating: 0, count: original.count - rewritten.count)
            }
            try Data(rewritten).write(to: URL(fileURLWithPath: file))
            do {
                let d = try DurableRaftStorage.open(dd, newMember: meta, options: options)
                var cfg = DRCluster.config(1)
                cfg.applied = d.recovery.snapshot.metadata.index
                if let node = try? RaftNode(config: cfg, storage: d.memory) {
                    // Run it a little: elect itself, read its log, propose.
                    for _ in 0..<30 { try? node.tick() }
                    if node.hasReady, let rd = try? node.ready() {
                        _ = try? d.persist(rd)
                        try? node.advance(rd)
                    }
                    try? node.propose([1, 2, 3])
                    _ = try? d.committedEntries(after: 0)
                }
                try? d.close()
                opened += 1
            } catch {
                #expect(!"\(error)".isEmpty)
                refused += 1
            }
            try? FileManager.default.removeItem(atPath: dir)
        }
        // Both outcomes occur: the damage reaches past the decoder into recovery and Raft.
        #expect(opened > 0 && refused > 0, "opened \(opened), refused \(refused)")
        if ProcessInfo.processInfo.environment["WAL_FUZZ_VERBOSE"] != nil { print("wal fuzz seed \(seed): opened \(opened), refused \(refused)") }
    }

    /// The records of a segment, in order, up to the first that does not decode.
    static func records(_ bytes: [UInt8]) -> [WALRecord] {
        var out: [WALRecord] = []
        bytes.withUnsafeBytes { raw in
            var p = 0
            while case .record(let r, let end) = WALFrame.decode(raw, at: p) {
                out.append(r)
                p = end
            }
        }
        return out
    }

    static func extreme(_ v: UInt64, _ rng: inout SplitMix64) -> UInt64 {
        switch rng.next() % 8 {
        case 0: return 0
        case 1: return .max
        case 2: return v &+ 1
        case 3: return v &- 1
        case 4: return v &+ 1000
        case 5: return UInt64(Int64.max)
        case 6: return UInt64(Int64.max) &+ 1
        default: return rng.next()
        }
    }

    static func bytes(_ b: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        switch rng.next() % 4 {
        case 0: return []
        case 1: return Array(b.prefix(Int(rng.next() % UInt64(b.count + 1))))
        case 2: return (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        default:
            var m = b
            if !m.isEmpty { m[Int(rng.next() % UInt64(m.count))] ^= 0xFF }
            return m
        }
    }

    static func mutate(_ r: WALRecord, _ rng: inout SplitMix64) -> WALRecord {
        switch r {
        case let .segmentHeader(seq, first):
            return rng.next() & 1 == 0 ? .segmentHeader(sequence: extreme(seq, &rng), firstIndex: first)
                : .segmentHeader(sequence: seq, firstIndex: extreme(first, &rng))
        case let .metadata(m):
            return .metadata(bytes(m, &rng))
        case var .entry(e):
            switch rng.next() % 3 {
            case 0: e.index = extreme(e.index, &rng)
            case 1: e.term = extreme(e.term, &rng)
            default: e.data = bytes(e.data, &rng)
            }
            return .entry(e)
        case var .hardState(h):
            switch rng.next() % 3 {
            case 0: h.term = extreme(h.term, &rng)
            case 1: h.vote = extreme(h.vote, &rng)
            default: h.commit = extreme(h.commit, &rng)
            }
            return .hardState(h)
        case var .snapshot(s):
            switch rng.next() % 3 {
            case 0: s.index = extreme(s.index, &rng)
            case 1: s.term = extreme(s.term, &rng)
            default: s.confState = bytes(s.confState, &rng)
            }
            return .snapshot(s)
        }
    }
}
