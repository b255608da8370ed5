import Foundation
import Raft
import Testing
@testable import Storage

/// "Kill during a backend batch, then WAL replay restores it", against a stand-in for the LMDB
/// `Backend` (not on `main` yet): writes go to a pending batch with the consistent index,
/// committed every few operations; a crash abandons the pending batch. The stand-in has the
/// same calls as `Backend` (put, setConsistentIndex, commit, abandon, consistentIndex), so the
/// test moves to the real backend by swapping the type.
@Suite struct DurableRaftReplayTests {
    let meta = WALMetadata(memberID: 3, clusterID: 4)

    final class BatchedStore {
        private(set) var committed: [[UInt8]: [UInt8]] = [:]
        private(set) var committedIndex: UInt64 = 0
        private var pending: [[UInt8]: [UInt8]] = [:]
        private var pendingIndex: UInt64?
        var pendingCount: Int { pending.count }

        func put(key: [UInt8], value: [UInt8]) { pending[key] = value }
        func setConsistentIndex(_ i: UInt64) { pendingIndex = i }
        func consistentIndex() -> UInt64 { pendingIndex ?? committedIndex }
        func commit() {
            committed.merge(pending) { $1 }
            if let i = pendingIndex { committedIndex = i }
            abandon()
        }
        /// The crash: what was not committed is gone.
        func abandon() {
            pending = [:]
            pendingIndex = nil
        }
        /// What a read sees (pending writes included).
        func get(_ key: [UInt8]) -> [UInt8]? { pending[key] ?? committed[key] }
    }

    /// Our put encoding in entry data: key length, key, value.
    static func encodePut(_ key: [UInt8], _ value: [UInt8]) -> [UInt8] { [UInt8(key.count)] + key + value }

    static func apply(_ e: Entry, to store: BatchedStore) throws {
        if e.type == .normal, let n = e.data.first.map(Int.init) {
            try #require(e.data.count >= 1 + n)
            store.put(key: Array(e.data[1...n]), value: Array(e.data[(1 + n)...]))
        }
        store.setConsistentIndex(e.index)
    }

    @Test(arguments: drSeeds("DURABLE_RAFT_REPLAY_SEED", [31, 32, 33]))
    func killDuringBackendBatchThenReplay(seed: UInt64) throws {
        var rng = SeededRNG(seed: seed)
        let tmp = try WALTempDir("draftreplay")
        defer { tmp.cleanup() }
        let dd = DataDir(path: tmp.sub("data"))
        let options = DurableRaftOptions(wal: WALOptions(segmentSize: 32768, maxSegmentFiles: 2), maxSnapshotFiles: 2)
        let c = try DRCluster.singleLeader(dd, meta, options)
        let store = BatchedStore()
        var model: [[UInt8]: [UInt8]] = [:]
        var appliedUpTo: UInt64 = 0
        let batchLimit = Int.random(in: 3...12, using: &rng)
        // Feed the store from the durable member's applied entries.
        c.onPersist = { rd, _ in
            for e in rd.committedEntries {
                try Self.apply(e, to: store)
                appliedUpTo = e.index
                if store.pendingCount >= batchLimit { store.commit() }
            }
        }
        // Run a random number of rounds, then on until the kill lands inside a batch.
        let rounds = Int.random(in: 150...250, using: &rng)
        for i in 0..<(rounds + 50) {
            if i >= rounds && store.pendingCount > 0 { break }
            let key = Array("k\(Int.random(in: 0..<40, using: &rng))".utf8)
            let value = drPayload(&rng, max: 64)
            model[key] = value
            try c.nodes[1]!.propose(Self.encodePut(key, value))
            try c.settle()
            if i % 60 == 59 {
                // As etcd: the backend commits (and so stores its consistent index) before a
                // snapshot lets the log be compacted.
                store.commit()
                try c.durable!.createSnapshot(index: appliedUpTo, confState: ConfState(voters: [1]), data: [])
                try c.durable!.compact(keeping: 5)
            }
        }
        for (k, v) in model { #expect(store.get(k) == v, "seed \(seed)") }
        let lost = store.pendingCount
        #expect(lost > 0, "seed \(seed)")
        // The crash: the pending batch is dropped, the WAL is reopened.
        store.abandon()
        try c.durable!.close()
        let ci = store.consistentIndex()
        #expect(ci <= appliedUpTo)

        let r = try DurableRaftStorage.open(dd, newMember: meta, options: options)
        let replay = try r.committedEntries(after: ci)
        #expect(replay.first.map { $0.index == ci + 1 } ?? true, "seed \(seed)")
        #expect(replay.last?.index ?? ci == appliedUpTo, "seed \(seed)")
        for e in replay { try Self.apply(e, to: store) }
        store.commit()
        #expect(store.committed == model, "seed \(seed), \(lost) puts were pending")

        // An older state machine than the snapshot cannot be replayed from the log.
        let snapIndex = r.recovery.snapshot.metadata.index
        if snapIndex > 1 {
            #expect(throws: RaftStorageError.compacted) { try r.committedEntries(after: snapIndex - 2) }
        }
        #expect(try r.committedEntries(after: .max).isEmpty)
        print("durable raft replay seed \(seed): \(lost) pending puts lost, replayed \(replay.count) entries after \(ci)")
        try r.close()
    }
}
