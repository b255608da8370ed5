import Foundation
import LMDBBackend
import Raft
import Testing
@testable import Storage

/// "Kill during a backend batch, then WAL replay restores it", on the real LMDB `Backend`:
/// every applied entry goes into the backend's pending batch together with the consistent
/// index (one `batch` scope per entry, as the server's apply loop does), committed every few
/// operations; the crash abandons the pending batch, then the backend is reopened from its file
/// and the WAL entries after its stored consistent index are replayed.
@Suite struct DurableRaftReplayTests {
    let meta = WALMetadata(memberID: 3, clusterID: 4)

    /// Backend options that never commit on their own: the test decides when a batch commits.
    static let backendOptions: Backend.Options = {
        var o = Backend.Options()
        o.batchLimit = .max
        o.batchInterval = .seconds(3600)
        o.sync = false
        return o
    }()

    /// Our put encoding in entry data: key length, key, value.
    static func encodePut(_ key: [UInt8], _ value: [UInt8]) -> [UInt8] { [UInt8(key.count)] + key + value }

    static func apply(_ e: Entry, to backend: Backend) throws {
        try backend.batch {
            if e.type == .normal, let n = e.data.first.map(Int.init) {
                try #require(e.data.count >= 1 + n)
                try backend.put(.key, key: Array(e.data[1...n]), value: Array(e.data[(1 + n)...]))
            }
            try backend.setConsistentIndex(e.index, term: e.term)
        }
    }

    static func contents(_ backend: Backend) throws -> [[UInt8]: [UInt8]] {
        try backend.read { r in
            var all: [[UInt8]: [UInt8]] = [:]
            try r.scan(.key, from: [0], to: nil) { k, v in
                all[Array(k)] = Array(v)
                return true
            }
            return all
        }
    }

    @Test(arguments: drSeeds("DURABLE_RAFT_REPLAY_SEED", [31, 32, 33]))
    func killDuringBackendBatchThenReplay(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let tmp = try WALTempDir("draftreplay")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let options = DurableRaftOptions(wal: WALOptions(segmentSize: 32768, maxSegmentFiles: 2), maxSnapshotFiles: 2)
        let c = try DRCluster.singleLeader(dd, meta, options)
        let dbPath = tmp.sub("db")
        var store = try Backend(path: dbPath, options: Self.backendOptions)
        var model: [[UInt8]: [UInt8]] = [:]
        var appliedUpTo: UInt64 = 0
        // Each applied entry stages three backend operations (the put, the consistent index and
        // its term); batches hold 3...12 entries, and the kill lands after 1...limit-1 of them.
        let opsPerEntry = 3
        let batchLimit = Int.random(in: 3...12, using: &rng) * opsPerEntry
        let killAfter = Int.random(in: 1..<(batchLimit / opsPerEntry), using: &rng) * opsPerEntry
        // Feed the store from the durable member's applied entries.
        c.onPersist = { rd, _ in
            for e in rd.committedEntries {
                try Self.apply(e, to: store)
                appliedUpTo = e.index
                if store.pendingCount >= batchLimit { try store.commit() }
            }
        }
        // Run a random number of rounds, then on until the kill lands inside a batch.
        let rounds = Int.random(in: 150...250, using: &rng)
        for i in 0..<(rounds + 50) {
            if i >= rounds && store.pendingCount >= killAfter { break }
            let key = Array("k\(Int.random(in: 0..<40, using: &rng))".utf8)
            let value = drPayload(&rng, max: 64)
            model[key] = value
            try c.nodes[1]!.propose(Self.encodePut(key, value))
            try c.settle()
            if i % 60 == 59 {
                // As etcd: the backend commits (and so stores its consistent index) before a
                // snapshot lets the log be compacted.
                try store.commit()
                try c.durable!.createSnapshot(index: appliedUpTo, confState: ConfState(voters: [1]), data: [])
                try c.durable!.compact(keeping: 5)
            }
        }
        // Reads see the pending batch before it commits.
        #expect(try Self.contents(store) == model, "seed \(seed)")
        let lost = store.pendingCount / opsPerEntry
        #expect(lost > 0, "seed \(seed)")
        // The crash: the pending batch is dropped, the WAL is reopened.
        store.abandon()
        try c.durable!.close()
        store = try Backend(path: dbPath, options: Self.backendOptions)
        defer { try? store.close() }
        #expect(try Self.contents(store) != model, "seed \(seed): the pending batch must be lost")
        let ci = try store.consistentIndex()
        #expect(ci <= appliedUpTo)

        let r = try DurableRaftStorage.open(dd, newMember: meta, options: options)
        let replay = try r.committedEntries(after: ci)
        #expect(replay.first.map { $0.index == ci + 1 } ?? true, "seed \(seed)")
        #expect(replay.last?.index ?? ci == appliedUpTo, "seed \(seed)")
        for e in replay { try Self.apply(e, to: store) }
        try store.commit()
        #expect(try Self.contents(store) == model, "seed \(seed), \(lost) entries were pending")

        // An older state machine than the snapshot cannot be replayed from the log.
        let snapIndex = r.recovery.snapshot.metadata.index
        if snapIndex > 1 {
            #expect(throws: RaftStorageError.compacted) { try r.committedEntries(after: snapIndex - 2) }
        }
        #expect(try r.committedEntries(after: .max).isEmpty)
        print("durable raft replay seed \(seed): \(lost) pending entries lost, replayed \(replay.count) entries after \(ci)")
        try r.close()
    }
}
