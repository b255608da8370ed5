import Foundation
import LMDBBackend

/// How the keyspace talks to the lease store (implemented by the lessor; wired by the server).
/// Called with the keyspace's lock held: implementations must not call back into the store,
/// and a lessor must not hold its own lock while calling the store (lock order store -> lessor).
public protocol MVCCLeaseHooks: AnyObject, Sendable {
    /// Whether `id` is a granted lease (a put naming another lease fails with leaseNotFound).
    func leaseExists(_ id: Int64) -> Bool
    func attach(key: [UInt8], lease: Int64)
    func detach(key: [UInt8], lease: Int64)
}

/// The multi-version keyspace on a `Backend`, with watches (see `WatchStream`).
///
/// Every Put, DeleteRange and Txn with changes takes one main revision; the changes inside it
/// take sub revisions 0, 1, ... Each change is written to the backend's key bucket under its
/// revision (a tombstone for a delete); an in-memory index maps each key to its generations of
/// revisions. All methods are thread-safe: a readers-writer lock lets ranges and hashes run
/// in parallel while writes, watch changes and compaction steps run alone (compaction and
/// watch catch-up release it between bounded steps).
public final class MVCCStore: @unchecked Sendable {
    public struct Options: Sendable {
        /// Backend key-bucket entries removed per locked compaction step.
        public var compactionBatchLimit = 1000
        /// Main revisions read from the backend per watch catch-up step.
        public var watchCatchUpBatch: Int64 = 1000
        /// Buffered responses per `WatchStream` before its watchers are parked as victims.
        public var watchStreamBuffer = 128
        /// Approximate event bytes (keys and values) buffered per `WatchStream` before its
        /// watchers are parked as victims; one response is always accepted into an empty
        /// buffer, so a stream pins at most this plus one response and one parked response
        /// per watcher.
        public var watchStreamBufferBytes = 4 << 20
        /// Approximate event bytes read from the backend per watch catch-up step: the step
        /// ends at the first revision boundary past it (so it also bounds one catch-up
        /// response).
        public var watchCatchUpBytes = 2 << 20
        /// Counts the backend records read while the index is rebuilt at open; nil: none.
        public var progress: StartupProgress?
        public init() {}
    }

    public let backend: Backend
    public let options: Options
    let lock = StoreLock()
    let compactionLock = NSLock()
    var index = OrderedKeyMap()
    /// An empty keyspace is at revision 1, as etcd's is, so the first change is revision 2.
    var currentRev: Int64 = 1
    /// The revision of the last compaction; -1 before the first, as in etcd (which reports it
    /// in HashKV and its compact-revision gauge). A compaction to 0 is possible once.
    var compactMainRev: Int64 = -1
    var leaseHooks: MVCCLeaseHooks?
    /// Set when a write failed half-way (see `MVCCError.stopped`).
    var failure: String?
    /// Watch state (see Watch*.swift), guarded by `lock`.
    var watch = WatchGroups()
    /// Bumped by `restore`: compaction jobs of older contents stop.
    var generation = 0

    static let scheduledCompactKey = Array("scheduledCompactRev".utf8)
    static let finishedCompactKey = Array("finishedCompactRev".utf8)
    static let currentRevKey = Array("currentRevision".utf8)

    /// Opens the keyspace on `backend`, rebuilding the index from it and finishing a
    /// compaction that a restart interrupted.
    public init(backend: Backend, options: Options = Options()) throws {
        self.backend = backend
        self.options = options
        options.progress?.begin("rebuilding the key index", unit: "revisions")
        let (scheduled, finished) = try lock.withLock { try loadLocked(progress: options.progress) }
        if scheduled > finished { try physicallyCompact(scheduled) }
    }

    /// The revision of the last change.
    public var currentRevision: Int64 { lock.withReadLock { currentRev } }
    /// The revision of the last compaction (-1 if none).
    public var compactRevision: Int64 { lock.withReadLock { compactMainRev } }
    /// Number of keys in the index (live or with retained history).
    public var indexedKeys: Int { lock.withReadLock { index.count } }

    /// Installs the lease store's hooks.
    public func setLeaseHooks(_ hooks: MVCCLeaseHooks?) { lock.withLock { leaseHooks = hooks } }

    /// Live keys with a lease, for the lessor to re-attach after a restart.
    public func leasedKeys() throws -> [(key: [UInt8], lease: Int64)] {
        try lock.withReadLock {
            var out: [(key: [UInt8], lease: Int64)] = []
            try backend.read { r in
                try index.scan(from: [], to: nil) { ki in
                    if ki.isLive, let kv = try fetch(r, ki.modified), kv.lease != 0 { out.append((kv.key, kv.lease)) }
                    return true
                }
            }
            return out
        }
    }

    // MARK: load and restore

    /// Rebuilds the index, the current and the compact revision from the backend (lock held;
    /// the index must be empty). Returns the scheduled and finished compaction revisions.
    private func loadLocked(progress: StartupProgress?) throws -> (scheduled: Int64, finished: Int64) {
        func metaInt(_ r: BackendReader, _ k: [UInt8], missing: Int64 = 0) throws -> Int64 {
            guard let v = try r.get(.meta, key: k) else { return missing }
            guard let n = BigEndian.uint64(v) else { throw MVCCError.corrupt("meta \(String(decoding: k, as: UTF8.self))") }
            return Int64(bitPattern: n)
        }
        return try backend.read { r in
            try r.scan(.key, from: [], to: nil) { k, v in
                progress?.advance()
                guard let (rev, tomb) = Revision.fromBucketKey(k) else {
                    throw MVCCError.corrupt("key-bucket key of \(k.count) bytes")
                }
                let kv = try KeyValue.decodeHeader(v)
                if tomb {
                    index.get(kv.key)?.tombstone(rev)
                } else {
                    index.getOrInsert(kv.key).put(rev, version: kv.version, created: Revision(main: kv.create))
                }
                currentRev = max(currentRev, rev.main)
                return true
            }
            // -1 when absent: never compacted (a compaction to 0 is recorded as 0).
            let scheduled = try metaInt(r, MVCCStore.scheduledCompactKey, missing: -1)
            let finished = try metaInt(r, MVCCStore.finishedCompactKey, missing: -1)
            currentRev = max(currentRev, try metaInt(r, MVCCStore.currentRevKey), scheduled)
            compactMainRev = max(scheduled, finished)
            if compactMainRev > 0 { compactIndexLocked(compactMainRev) }
            return (scheduled, finished)
        }
    }

    /// Reloads the keyspace in place after its backend's contents were replaced (a snapshot
    /// from the leader, as etcd's watchable store `Restore`). `replaceBackend` (say,
    /// `backend.replace(withFileAt:)`) runs under the store's write lock with the index, so no
    /// read, write, hash or watch step sees the new contents with the old index, or the reverse.
    ///
    /// Watchers are kept, with their IDs, streams and the revision each needs next: every one
    /// that was synced and needs a revision the new keyspace has becomes unsynced, so the
    /// ordinary catch-up delivers from that revision out of the new backend; one behind the
    /// new compact revision gets the compacted response (compact revision set, then cancelled)
    /// exactly as a new watch from there would; parked (victim) watchers keep their parked
    /// response. Nothing is delivered twice or skipped, given the new history extends what the
    /// watchers saw (Raft's guarantee). A compaction job running on the old contents stops at
    /// its next step; one the new backend records as unfinished is finished here.
    ///
    /// On error the keyspace stops (`MVCCError.stopped`): its index may no longer match the
    /// backend.
    public func restore(replacingBackend replaceBackend: () throws -> Void) throws {
        let (scheduled, finished): (Int64, Int64) = try lock.withLock {
            do {
                try replaceBackend()
                index = OrderedKeyMap()
                currentRev = 1
                compactMainRev = -1
                generation += 1
                let loaded = try loadLocked(progress: nil)
                failure = nil
                watch.restore(currentRevision: currentRev)
                return loaded
            } catch {
                failure = "restoring from a new backend failed: \(error)"
                throw error
            }
        }
        if scheduled > finished { try physicallyCompact(scheduled) }
    }

    // MARK: reads

    func fetch(_ r: BackendReader, _ rev: Revision) throws -> KeyValue? {
        guard let v = try r.get(.key, key: rev.bucketKey()) else { return nil }
        return try v.withUnsafeBytes { try KeyValue.decode($0) }
    }

    /// Validates `revision` against the store (0 means `readRev`).
    func resolve(_ revision: Int64, readRev: Int64) throws -> Int64 {
        if revision > readRev { throw MVCCError.futureRevision }
        let rev = revision <= 0 ? readRev : revision
        if rev < compactMainRev { throw MVCCError.compacted }
        return rev
    }

    /// Visits the index entries of `[key, rangeEnd)` (etcd's range-end conventions).
    func scanRange(_ key: [UInt8], _ rangeEnd: [UInt8], _ body: (KeyIndex) throws -> Bool) rethrows {
        if rangeEnd.isEmpty {
            if let ki = index.get(key) { _ = try body(ki) }
            return
        }
        let end: [UInt8]? = rangeEnd == [0] ? nil : rangeEnd
        if let e = end, compareBytes(e, key) <= 0 { return }
        try index.scan(from: key, to: end, body)
    }

    /// Revisions of the live keys of the range at `rev` (first `limit`, 0 = all) and their count.
    func revisions(_ key: [UInt8], _ end: [UInt8], at rev: Int64, limit: Int) -> ([Revision], Int) {
        var revs: [Revision] = []
        var count = 0
        scanRange(key, end) { ki in
            if let found = ki.get(at: rev) {
                count += 1
                if limit <= 0 || revs.count < limit { revs.append(found.modified) }
            }
            return true
        }
        return (revs, count)
    }

    /// Reads a range (etcd's Range semantics, see `RangeRequest`).
    public func range(_ req: RangeRequest) throws -> RangeResponse {
        try lock.withReadLock {
            if let f = failure { throw MVCCError.stopped(f) }
            if req.key.isEmpty { throw MVCCError.keyNotProvided }
            return try rangeLocked(req, readRev: currentRev)
        }
    }

    func rangeLocked(_ req: RangeRequest, readRev: Int64) throws -> RangeResponse {
        let rev = try resolve(req.revision, readRev: readRev)
        var order = req.sortOrder
        if req.sortTarget != .key && order == .none { order = .ascend }
        if req.sortTarget == .key && order == .ascend { order = .none }
        let filtered = req.minModRevision != 0 || req.maxModRevision != 0
            || req.minCreateRevision != 0 || req.maxCreateRevision != 0
        // One more than the limit tells whether there are more; a limit of Int64.max (or
        // anything at least the key count) is no limit at all.
        var fetchLimit = req.limit > 0 && req.limit < Int64(Int.max) ? Int(req.limit) + 1 : 0
        if order != .none || filtered { fetchLimit = 0 }
        let (revs, count) = revisions(req.key, req.rangeEnd, at: rev, limit: req.countOnly ? 1 : fetchLimit)
        if req.countOnly {
            return RangeResponse(revision: currentRev, kvs: [], more: false, count: Int64(count))
        }
        var kvs = try backend.read { r in
            try revs.map { rv -> KeyValue in
                guard let kv = try fetch(r, rv) else { throw MVCCError.corrupt("revision \(rv) missing from backend") }
                return kv
            }
        }
        if filtered {
            kvs.removeAll { kv in
                (req.minModRevision != 0 && kv.modRevision < req.minModRevision)
                    || (req.maxModRevision != 0 && kv.modRevision > req.maxModRevision)
                    || (req.minCreateRevision != 0 && kv.createRevision < req.minCreateRevision)
                    || (req.maxCreateRevision != 0 && kv.createRevision > req.maxCreateRevision)
            }
        }
        if order != .none { MVCCStore.sort(&kvs, by: req.sortTarget, descending: order == .descend) }
        var more = false
        if req.limit > 0 && kvs.count > req.limit {
            kvs.removeSubrange(Int(req.limit)...)
            more = true
        }
        if req.keysOnly { for i in kvs.indices { kvs[i].value = [] } }
        return RangeResponse(revision: currentRev, kvs: kvs, more: more, count: Int64(count))
    }

    /// Sorts by `target`; ties (and equal targets) stay in ascending key order.
    static func sort(_ kvs: inout [KeyValue], by target: RangeRequest.SortTarget, descending: Bool) {
        func cmp(_ a: KeyValue, _ b: KeyValue) -> Int {
            switch target {
            case .key: compareBytes(a.key, b.key)
            case .version: a.version == b.version ? 0 : (a.version < b.version ? -1 : 1)
            case .create: a.createRevision == b.createRevision ? 0 : (a.createRevision < b.createRevision ? -1 : 1)
            case .mod: a.modRevision == b.modRevision ? 0 : (a.modRevision < b.modRevision ? -1 : 1)
            case .value: compareBytes(a.value, b.value)
            }
        }
        kvs.sort { a, b in
            let c = cmp(a, b)
            if c != 0 { return descending ? c > 0 : c < 0 }
            return compareBytes(a.key, b.key) < 0
        }
    }
}
