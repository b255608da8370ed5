import LMDBBackend

extension MVCCStore {
    /// Compacts the history to `revision`: afterwards reads below it fail with `compacted`,
    /// and every revision at or below it is dropped except each key's state at it (a key
    /// deleted at or below it is dropped entirely). The index is compacted at once; the
    /// backend entries are removed in steps of `compactionBatchLimit`, releasing the lock
    /// between steps so writes go on. Progress is in `meta`, so a restart finishes the job.
    public func compact(_ revision: Int64) throws {
        try scheduleCompaction(revision).run()
    }

    /// The removal of compacted entries from the backend, to run now or on another task.
    public struct CompactionJob: Sendable {
        let store: MVCCStore
        let revision: Int64
        let keep: Set<Revision>
        /// The store's `generation` when scheduled.
        let generation: Int
        /// Removes the entries in bounded steps; a no-op if a later compaction superseded it or
        /// the store was restored from another backend meanwhile.
        public func run() throws { try store.physicallyCompact(revision, keep: (keep, generation)) }
    }

    /// The logical half of `compact`: checks, records the compaction in `meta` and compacts
    /// the index (reads below `revision` fail from now on). Run the returned job for the rest
    /// (outside the apply loop's `Backend.batch` scope, so batches keep committing).
    public func scheduleCompaction(_ revision: Int64) throws -> CompactionJob {
        try lock.withLock {
            if revision <= compactMainRev { throw MVCCError.compacted }
            if revision > currentRev { throw MVCCError.futureRevision }
            compactMainRev = revision
            try backend.put(.meta, key: MVCCStore.scheduledCompactKey, value: BigEndian.bytes(UInt64(revision)))
            return CompactionJob(store: self, revision: revision, keep: compactIndexLocked(revision), generation: generation)
        }
    }

    /// Compacts the index at `rev`; returns the revisions <= rev it keeps.
    @discardableResult
    func compactIndexLocked(_ rev: Int64) -> Set<Revision> {
        var keep = Set<Revision>()
        var empty: [[UInt8]] = []
        index.scan(from: [], to: nil) { ki in
            ki.compact(rev, keep: &keep)
            if ki.isEmpty { empty.append(ki.key) }
            return true
        }
        for k in empty { index.remove(k) }
        return keep
    }

    /// The revisions <= rev that the index retains (what compaction at `rev` keeps).
    func keepSetLocked(_ rev: Int64) -> Set<Revision> {
        var keep = Set<Revision>()
        index.scan(from: [], to: nil) { ki in
            ki.keep(rev, into: &keep)
            return true
        }
        return keep
    }

    /// Removes the backend entries at or below `rev` that the index no longer holds (`known`:
    /// the keep set and the store generation it was computed in).
    func physicallyCompact(_ rev: Int64, keep known: (Set<Revision>, Int)? = nil) throws {
        compactionLock.lock()
        defer { compactionLock.unlock() }
        let (keep, gen) = known ?? lock.withLock { (keepSetLocked(rev), generation) }
        let end = Revision(main: rev + 1).bucketKey()
        var from: [UInt8] = []
        while true {
            let done: Bool = try lock.withLock {
                // A later compaction supersedes this one (and will cover its range), or the
                // contents were replaced (a restore finishes the new backend's own compaction).
                if compactMainRev != rev || generation != gen { return true }
                var victims: [[UInt8]] = []
                var last: [UInt8]?
                var scanned = 0
                var more = false
                let limit = max(1, options.compactionBatchLimit)
                try backend.read { r in
                    try r.scan(.key, from: from, to: end) { k, _ in
                        guard let (rv, _) = Revision.fromBucketKey(k) else {
                            throw MVCCError.corrupt("key-bucket key of \(k.count) bytes")
                        }
                        scanned += 1
                        if !keep.contains(rv) { victims.append(Array(k)) }
                        // Bounded work per step: victims removed and entries looked at.
                        more = victims.count >= limit || scanned >= 10 * limit
                        if more { last = Array(k) }
                        return !more
                    }
                }
                for k in victims { try backend.delete(.key, key: k) }
                guard more, let l = last else {
                    try backend.put(.meta, key: MVCCStore.finishedCompactKey, value: BigEndian.bytes(UInt64(rev)))
                    return true
                }
                from = l + [0]
                return false
            }
            if done { return }
        }
    }

    /// etcd's HashKV: CRC-32C over "key" and then the key-bucket entries (key bytes then the
    /// value in etcd's encoding, ``KeyValue/etcdEncoded()``, in revision order) with revision
    /// <= `revision` (0: current). Entries at or below the compact revision count only if they
    /// are still a key's live revision at `revision` (its keep set; all of them when that set is
    /// empty), as etcd 3.4 hashes (checked against it by E2EEtcdInteropTests). Members with the
    /// same history and compactions agree, swetcd and etcd members alike.
    /// Returns the hash, the current revision and the compact revision.
    public func hashKV(revision: Int64 = 0) throws -> (hash: UInt32, revision: Int64, compactRevision: Int64) {
        // Fix the revision, the retained set and a backend view together, then scan without
        // the store lock so writes go on meanwhile.
        let (rev, cur, compacted, keep, snap) = try lock.withReadLock {
            let rev = try resolve(revision, readRev: currentRev)
            return (rev, currentRev, compactMainRev, keepSetLocked(rev), try backend.snapshot())
        }
        defer { snap.release() }
        var crc = CRC32C()
        crc.update(Array("key".utf8))
        try snap.read { r in
            try r.scan(.key, from: [], to: Revision(main: rev + 1).bucketKey()) { k, v in
                guard let (rv, _) = Revision.fromBucketKey(k) else {
                    throw MVCCError.corrupt("key-bucket key of \(k.count) bytes")
                }
                if rv.main > compacted || keep.isEmpty || keep.contains(rv) {
                    crc.update(k)
                    crc.update(try KeyValue.decode(v).etcdEncoded())
                }
                return true
            }
        }
        return (crc.value, cur, compacted)
    }
}
