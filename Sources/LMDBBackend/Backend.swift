import CLMDB
import Foundation
import Synchronization

/// The named databases ("buckets") of the backend, as etcd names them.
public enum BackendBucket: Int, CaseIterable, Sendable {
    case key, meta, lease, members, membersRemoved, alarm, auth, authUsers, authRoles

    /// The LMDB database name.
    public var name: String {
        switch self {
        case .key: "key"
        case .meta: "meta"
        case .lease: "lease"
        case .members: "members"
        case .membersRemoved: "members_removed"
        case .alarm: "alarm"
        case .auth: "auth"
        case .authUsers: "authUsers"
        case .authRoles: "authRoles"
        }
    }
}

/// The LMDB-backed store under the MVCC keyspace, at `<data-dir>/member/snap/db`.
///
/// Writes go to an in-memory batch (the "batch transaction") that is written to LMDB in one
/// write transaction when it holds `batchLimit` operations, when `commitIfDue(now:)` finds it
/// older than `batchInterval`, or on `commit()`/`close()`. Reads (`read`) see LMDB's last
/// committed state overlaid with the batch, so a read that follows a write sees it at once.
/// The consistent (applied) index set with `setConsistentIndex` travels in the same batch, so
/// after a crash LMDB holds exactly the writes of the entries up to the stored index.
///
/// Durability: the WAL is the durable record. By default LMDB syncs at each batch commit (so a
/// power loss never leaves the db older than the index it claims); `sync: false` opens the env
/// with MDB_NOSYNC|MDB_NOMETASYNC for tests and benchmarks.
///
/// Threading: every method may be called from any thread or task; all state is guarded by one
/// lock. LMDB write transactions are begun and committed inside one locked call (LMDB ties
/// them to a thread); read transactions use MDB_NOTLS and run outside the lock, from a pool,
/// so reads proceed in parallel. `copy(to:)` runs outside the lock on LMDB's own read
/// transaction, so batches keep committing while it streams.
public final class Backend: @unchecked Sendable {
    /// Tunables; the defaults are etcd's.
    public struct Options: Sendable {
        /// Age after which `commitIfDue` writes the batch (etcd: 100 ms).
        public var batchInterval: Duration = .milliseconds(100)
        /// Operations after which a batch is written at once (etcd: 10000).
        public var batchLimit: Int = 10_000
        /// Initial LMDB map size; doubled whenever LMDB reports MDB_MAP_FULL.
        public var initialMapSize: Int = 1 << 30
        /// Let LMDB fsync at each batch commit.
        public var sync: Bool = true
        /// Called after each batch is written to LMDB with how long the write took (metrics).
        public var onCommit: (@Sendable (Duration) -> Void)?
        public init() {}
    }

    enum Pending { case put([UInt8]), delete }

    /// Path of the db file (a lock file `<path>-lock` sits next to it).
    public let path: String
    public let options: Options
    let lock = NSCondition()
    /// Open `batch` scopes; no batch is written while one is open.
    var scopes = 0
    /// Copies running outside the lock.
    var copies = 0
    /// Copies streamed to a reader (`openCopyStream`), aborted when the map must grow.
    var copyStreams: [ObjectIdentifier: BackendCopyStream] = [:]
    var lmdb: LMDBEnv?
    /// Idle (reset) read transactions for reuse, and the number of reads running.
    var readers: [LMDBReadTxn] = []
    var activeReads = 0
    var buffer: [[[UInt8]: Pending]]
    /// While a defragmentation copy runs: every batch committed since it began, in order, to
    /// be replayed into the copy (see Backend+Defrag.swift). Nil otherwise.
    var defragLog: [[[[UInt8]: Pending]]]?
    /// Whether a defragmentation is running (one at a time).
    var defragRunning = false
    /// Test hook: called at each defragmentation step; returning true stops the procedure
    /// there, leaving the files as a process killed at that point would.
    var defragStepHook: (@Sendable (DefragmentStep) -> Bool)?
    private var pendingOps = 0
    private var batchStarted: ContinuousClock.Instant?
    private var commits = 0
    /// The db file's size as of the last open, commit or swap (-1 when a stat failed): only
    /// those change it. ``committedFileSize()`` reads it without a system call.
    private let knownFileSize = Atomic<Int64>(-1)

    /// Opens (creating if needed) the db file at `path`; the directory must exist. A copy
    /// left behind by a defragmentation that was interrupted is removed first.
    public init(path: String, options: Options = Options()) throws {
        self.path = path
        self.options = options
        self.buffer = Array(repeating: [:], count: BackendBucket.allCases.count)
        try Backend.removeDefragLeftovers(path)
        let env = try LMDBEnv(path: path, mapSize: max(options.initialMapSize, 1 << 20),
                              names: BackendBucket.allCases.map(\.name), sync: options.sync)
        self.lmdb = env
        noteFileSize()
    }

    deinit { try? close() }

    func env() throws -> LMDBEnv {
        guard let e = lmdb else { throw BackendError(message: "closed") }
        return e
    }

    // MARK: writes

    /// Stages `key = value` in `bucket`. Keys must be 1...maxKeySize bytes.
    public func put(_ bucket: BackendBucket, key: [UInt8], value: [UInt8]) throws {
        try lock.withLock {
            try checkKey(key)
            buffer[bucket.rawValue][key] = .put(value)
            try staged()
        }
    }

    /// Stages the removal of `key` from `bucket` (no error if absent).
    public func delete(_ bucket: BackendBucket, key: [UInt8]) throws {
        try lock.withLock {
            try checkKey(key)
            buffer[bucket.rawValue][key] = .delete
            try staged()
        }
    }

    /// Stages the consistent (applied) index and term in `meta`, in the current batch.
    public func setConsistentIndex(_ index: UInt64, term: UInt64 = 0) throws {
        try put(.meta, key: Backend.consistentIndexKey, value: BigEndian.bytes(index))
        try put(.meta, key: Backend.termKey, value: BigEndian.bytes(term))
    }

    /// `meta` keys of the consistent index and its term.
    public static let consistentIndexKey = Array("consistent_index".utf8)
    public static let termKey = Array("term".utf8)

    /// The consistent index as of the current batch (0 if never set).
    public func consistentIndex() throws -> UInt64 {
        try read { r in
            guard let v = try r.get(.meta, key: Backend.consistentIndexKey) else { return 0 }
            guard let i = BigEndian.uint64(v) else {
                throw BackendError(message: "corrupt consistent_index (\(v.count) bytes)")
            }
            return i
        }
    }

    /// The largest key LMDB accepts.
    public var maxKeySize: Int { lock.withLock { lmdb?.maxKeySize ?? 0 } }

    private func checkKey(_ key: [UInt8]) throws {
        let e = try env()
        if key.isEmpty || key.count > e.maxKeySize {
            throw BackendError(message: "key size \(key.count) outside 1...\(e.maxKeySize)")
        }
    }

    private func staged() throws {
        pendingOps += 1
        if batchStarted == nil { batchStarted = .now }
        if scopes == 0 && pendingOps >= options.batchLimit { try commitLocked() }
    }

    /// Runs `body` as one unit of the batch: no commit (by limit, by interval, or for a copy)
    /// happens while a scope is open, so a committed batch never holds part of it. The apply
    /// loop wraps each log entry, e.g. `batch { apply(entry); setConsistentIndex(entry.index) }`,
    /// so LMDB always holds exactly the entries up to the stored consistent index. Scopes nest.
    public func batch<T>(_ body: () throws -> T) throws -> T {
        lock.withLock { scopes += 1 }
        let result: T
        do {
            result = try body()
        } catch {
            try endScope()
            throw error
        }
        try endScope()
        return result
    }

    private func endScope() throws {
        try lock.withLock {
            scopes -= 1
            if scopes == 0 {
                lock.broadcast()
                if pendingOps >= options.batchLimit { try commitLocked() }
            }
        }
    }

    /// Waits (lock held) until no scope is open.
    func waitForScopes() {
        while scopes > 0 { lock.wait() }
    }

    /// Operations staged since the last commit.
    public var pendingCount: Int { lock.withLock { pendingOps } }

    /// Number of batches written to LMDB since open.
    public var commitCount: Int { lock.withLock { commits } }

    /// Writes the batch if it is older than `batchInterval` at `now`; returns whether it did.
    @discardableResult
    public func commitIfDue(now: ContinuousClock.Instant = .now) throws -> Bool {
        try lock.withLock {
            guard scopes == 0, let start = batchStarted, now - start >= options.batchInterval else { return false }
            try commitLocked()
            return true
        }
    }

    /// Calls `commitIfDue` every `batchInterval` until the task is cancelled (an owner that
    /// has its own tick can call `commitIfDue` instead). Commit errors end the loop and are
    /// returned by the task.
    public func runCommitLoop() -> Task<Void, Error> {
        let interval = options.batchInterval
        return Task.detached { [weak self] in
            while !Task.isCancelled {
                guard let self else { return }
                try self.commitIfDue()
                try? await Task.sleep(for: interval)
            }
        }
    }

    /// Writes the batch to LMDB now (no-op when empty), after any open scope ends.
    public func commit() throws {
        try lock.withLock {
            waitForScopes()
            try commitLocked()
        }
    }

    func commitLocked() throws {
        guard pendingOps > 0 else { return }
        let started = ContinuousClock.now
        while true {
            let e = try env()
            let rc = Backend.write(buffer, to: e)
            if rc == MDB_SUCCESS { break }
            if rc == MDB_MAP_FULL {
                // LMDB resizes only with no transaction open in the process. A streamed
                // copy goes at its reader's pace, which may be never: abort those.
                abortCopyStreamsLocked()
                while copies > 0 || activeReads > 0 { lock.wait() }
                // A defragmentation may have swapped the env while this waited: then the
                // batch goes to the new one (it was not recorded for replay).
                if lmdb === e {
                    readers.removeAll()
                    try e.grow()
                }
                continue
            }
            throw BackendError.write(rc, "commit batch", path: path)
        }
        // A defragmentation copy in progress replays this batch into the copy later.
        defragLog?.append(buffer)
        for i in buffer.indices { buffer[i].removeAll(keepingCapacity: true) }
        pendingOps = 0
        batchStarted = nil
        commits += 1
        noteFileSize()
        options.onCommit?(ContinuousClock.now - started)
    }

    /// One attempt to write a whole batch to `e` in one write transaction; returns LMDB's code
    /// (the txn is aborted on error).
    static func write(_ buffer: [[[UInt8]: Pending]], to e: LMDBEnv) -> Int32 {
        var t: OpaquePointer?
        var rc = mdb_txn_begin(e.env, nil, 0, &t)
        if rc != MDB_SUCCESS { return rc }
        for b in BackendBucket.allCases where !buffer[b.rawValue].isEmpty {
            let dbi = e.dbis[b.rawValue]
            // Sorted keys make LMDB's page writes mostly appends for revision keys.
            let ops = buffer[b.rawValue].sorted(by: { compareBytes($0.key, $1.key) < 0 })
            for (k, op) in ops {
                switch op {
                case .put(let v):
                    rc = withVal(k) { kv in withVal(v) { vv in mdb_put(t, dbi, &kv, &vv, 0) } }
                case .delete:
                    rc = withVal(k) { kv in mdb_del(t, dbi, &kv, nil) }
                    if rc == MDB_NOTFOUND { rc = MDB_SUCCESS }
                }
                if rc != MDB_SUCCESS { mdb_txn_abort(t); return rc }
            }
        }
        return mdb_txn_commit(t)
    }

    // MARK: reads

    /// Runs `body` with a consistent view: LMDB's committed state overlaid with the batch, both
    /// taken at the same instant. Reads run in parallel with each other and with writes (the
    /// batch is copied on write if a reader still holds it). The reader is valid only inside
    /// `body`.
    public func read<T>(_ body: (BackendReader) throws -> T) throws -> T {
        let snap = try snapshot()
        defer { snap.release() }
        return try snap.read(body)
    }

    /// A consistent view kept open until `release()` (or deinit), for long scans that should
    /// not hold the caller's locks. While any view is open LMDB cannot grow its map, so a
    /// commit needing a bigger map waits: release views promptly.
    public func snapshot() throws -> BackendSnapshot {
        try lock.withLock {
            let e = try env()
            let r: LMDBReadTxn
            if let idle = readers.popLast(), idle.env === e {
                try idle.renew()
                r = idle
            } else {
                r = try LMDBReadTxn(env: e)
            }
            activeReads += 1
            return BackendSnapshot(backend: self, txn: r, buffer: buffer)
        }
    }

    func release(_ r: LMDBReadTxn) {
        r.reset()
        lock.withLock {
            activeReads -= 1
            if lmdb === r.env && readers.count < 64 { readers.append(r) }
            if activeReads == 0 { lock.broadcast() }
        }
    }

    // MARK: size, hash, copy

    /// Size of the db file in bytes (free pages included), as etcd's Status `dbSize`.
    /// One stat(2): the quota check calls it for every write request (FileManager's attribute
    /// lookup also resolves owner names, reading /etc/passwd each time).
    public func fileSize() throws -> Int64 {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw BackendError(message: "stat \(path): \(String(cString: strerror(errno)))")
        }
        return Int64(st.st_size)
    }

    /// ``fileSize()`` as of the last open, commit or swap of the file (the only times it
    /// changes), read from memory: for checks made on every request (the space quota).
    public func committedFileSize() throws -> Int64 {
        let known = knownFileSize.load(ordering: .relaxed)
        return known >= 0 ? known : try fileSize()
    }

    private func noteFileSize() {
        knownFileSize.store((try? fileSize()) ?? -1, ordering: .relaxed)
    }

    /// Bytes of the db file holding live data: pages up to LMDB's last used page minus the
    /// pages on LMDB's freelist (etcd's Status `dbSizeInUse`). Committed state only.
    public func sizeInUse() throws -> Int64 {
        try lock.withLock {
            let e = try env()
            let r = try LMDBReadTxn(env: e)
            var free = 0
            // FREE_DBI (0) maps txn ids to page-number lists whose first word is the count.
            try lmdbScan(txn: r.txn, dbi: 0, from: []) { _, v in
                if v.count >= MemoryLayout<Int>.size { free += v.loadUnaligned(as: Int.self) }
                return true
            }
            let pages = e.lastPage() + 1
            return Int64(max(0, pages - free) * e.pageSize())
        }
    }

    /// CRC-32C over every bucket (name, then each key and value in key order), batch included,
    /// leaving out the `meta` keys in `ignoring` (by default the consistent index and term,
    /// which members reach at different log positions; etcd ignores the index too).
    public func hash(ignoring: Set<[UInt8]> = [Backend.consistentIndexKey, Backend.termKey]) throws -> UInt32 {
        try read { r in
            var crc = CRC32C()
            for b in BackendBucket.allCases {
                crc.update(Array(b.name.utf8))
                try r.scan(b, from: [], to: nil) { k, v in
                    if b == .meta, !ignoring.isEmpty, ignoring.contains(Array(k)) { return true }
                    crc.update(k)
                    crc.update(v)
                    return true
                }
            }
            return crc.value
        }
    }

    /// Writes a consistent point-in-time copy of the committed db (the batch is committed
    /// first) to the open file descriptor `fd` (a file or a pipe). With `compact`, free pages
    /// are left out and pages renumbered (the basis for defragmentation). Writes continue
    /// during the copy; they are not part of it.
    public func copy(to fd: Int32, compact: Bool = false) throws {
        try withCopy { e in
            try lmdbCheck(mdb_env_copyfd2(e.env, fd, compact ? UInt32(MDB_CP_COMPACT) : 0), "copy")
        }
    }

    /// Like `copy(to:)` into a new file at `path` (which must not exist).
    public func copy(toPath path: String, compact: Bool = false) throws {
        try withCopy { e in
            try lmdbCheck(mdb_env_copy2(e.env, path, compact ? UInt32(MDB_CP_COMPACT) : 0), "copy to \(path)")
        }
    }

    /// Commits, then runs `body` outside the lock; the map is not resized meanwhile (LMDB
    /// forbids it while a transaction, such as the copy's, is open).
    private func withCopy(_ body: (LMDBEnv) throws -> Void) throws {
        let e: LMDBEnv = try lock.withLock {
            waitForScopes()
            try commitLocked()
            copies += 1
            return try env()
        }
        defer {
            lock.withLock {
                copies -= 1
                lock.broadcast()
            }
        }
        try body(e)
    }

    // MARK: lifecycle

    /// Commits the batch and closes the env. Further calls throw.
    public func close() throws {
        try lock.withLock {
            guard lmdb != nil else { return }
            waitForScopes()
            try commitLocked()
            // Streamed copies end with an error (each keeps the old env open until its
            // thread is done).
            abortCopyStreamsLocked()
            while activeReads > 0 { lock.wait() }
            readers.removeAll()
            lmdb = nil
        }
    }

    /// Replaces the db file, in place, with the complete backend file at `file` (a leader's
    /// snapshot): the staged batch is committed to the old file, `file` is opened, renamed over
    /// ``path`` and the directory synced, and from then on every read and write uses it. The
    /// object stays the same, so everything holding it keeps working; its caller reloads what
    /// it derived from the old contents. Views and copies opened before keep reading the old
    /// file until released (as after a defragmentation, which this aborts). A failure before the
    /// rename leaves the old file in use and `file` in place; after it, the backend uses the new
    /// file and the error is the directory sync's.
    ///
    /// The new env keeps the lock file it was opened with (`<file>-lock`, whose name is then
    /// removed) so that it never shares LMDB's lock file with an old env still open in this
    /// process.
    public func replace(withFileAt file: String) throws {
        try lock.withLock {
            let old = try env()
            // LMDB would create a missing file: an empty db must never replace the data.
            var st = stat()
            guard stat(file, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size > 0 else {
                throw BackendError(message: "replace: \(file) is not a backend file")
            }
            waitForScopes()
            try commitLocked()
            let fresh: LMDBEnv
            do {
                fresh = try LMDBEnv(path: file, mapSize: max(options.initialMapSize, old.mapSize, 1 << 20),
                                    names: BackendBucket.allCases.map(\.name), sync: options.sync)
            } catch {
                unlink(file + "-lock")
                throw error
            }
            guard rename(file, path) == 0 else {
                let error = BackendError(errno, "replace: rename \(file) to \(path)")
                unlink(file + "-lock")
                throw error
            }
            // A defragmentation running now copied the old file: its final pause sees the env
            // changed and gives up.
            try adopt(fresh, renamedFrom: file)
        }
    }

    /// Makes `fresh`, just renamed from `file` over the db, the environment commits go to
    /// (with the lock held): old readers stay on the old one, a running defragmentation's
    /// catch-up log is dropped, `file`'s lock file name freed and the directory synced.
    func adopt(_ fresh: LMDBEnv, renamedFrom file: String) throws {
        lmdb = fresh
        noteFileSize()
        readers.removeAll()
        defragLog = nil
        unlink(file + "-lock")
        let dir = (path as NSString).deletingLastPathComponent
        try syncDirectory(dir.isEmpty ? "." : dir)
    }

    /// Closes WITHOUT committing the batch, as a crash would (for crash tests).
    public func abandon() {
        lock.withLock {
            for i in buffer.indices { buffer[i].removeAll() }
            pendingOps = 0
            batchStarted = nil
            readers.removeAll()
            lmdb = nil
        }
    }
}

/// A consistent read view that stays open until released (see `Backend.snapshot()`).
public final class BackendSnapshot: @unchecked Sendable {
    private let backend: Backend
    private let txn: LMDBReadTxn
    private let buffer: [[[UInt8]: Backend.Pending]]
    private let lock = NSLock()
    private var released = false

    init(backend: Backend, txn: LMDBReadTxn, buffer: [[[UInt8]: Backend.Pending]]) {
        self.backend = backend
        self.txn = txn
        self.buffer = buffer
    }

    /// Runs `body` on the view (one caller at a time); throws once released.
    public func read<T>(_ body: (BackendReader) throws -> T) throws -> T {
        try lock.withLock {
            if released { throw BackendError(message: "snapshot released") }
            return try body(BackendReader(txn: txn.txn, dbis: txn.env.dbis, buffer: buffer))
        }
    }

    /// Ends the view (idempotent).
    public func release() {
        let first: Bool = lock.withLock {
            defer { released = true }
            return !released
        }
        if first { backend.release(txn) }
    }

    deinit { release() }
}

/// A consistent read view given to `Backend.read`'s closure.
public struct BackendReader {
    let txn: OpaquePointer
    let dbis: [UInt32]
    let buffer: [[[UInt8]: Backend.Pending]]

    /// The value of `key`, or nil.
    public func get(_ bucket: BackendBucket, key: [UInt8]) throws -> [UInt8]? {
        if let p = buffer[bucket.rawValue][key] {
            if case .put(let v) = p { return v }
            return nil
        }
        if key.isEmpty { return nil }
        var v = MDB_val()
        let rc = withVal(key) { kv in mdb_get(txn, dbis[bucket.rawValue], &kv, &v) }
        if rc == MDB_NOTFOUND { return nil }
        try lmdbCheck(rc, "get")
        return bytes(of: v)
    }

    /// Visits keys in `[from, to)` (`to == nil`: no upper bound) in order while `body` is true.
    /// The buffers passed to `body` are valid only during the call.
    public func scan(_ bucket: BackendBucket, from: [UInt8], to: [UInt8]?,
                     _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool) throws {
        let staged = buffer[bucket.rawValue].filter { k, _ in
            compareBytes(k, from) >= 0 && (to == nil || compareBytes(k, to!) < 0)
        }.sorted { compareBytes($0.key, $1.key) < 0 }
        var i = 0
        var stopped = false
        // Emits staged puts below `limit` (all when nil); false if body asked to stop.
        func drain(below limit: UnsafeRawBufferPointer?) throws -> Bool {
            while i < staged.count {
                let (k, p) = staged[i]
                if let l = limit, k.withUnsafeBytes({ compareRaw($0, l) }) >= 0 { break }
                i += 1
                if case .put(let v) = p {
                    let go = try k.withUnsafeBytes { kb in try v.withUnsafeBytes { vb in try body(kb, vb) } }
                    if !go { return false }
                }
            }
            return true
        }
        try lmdbScan(txn: txn, dbi: dbis[bucket.rawValue], from: from) { k, v in
            if let t = to, t.withUnsafeBytes({ compareRaw(k, $0) }) >= 0 { return false }
            if try !drain(below: k) { stopped = true; return false }
            if i < staged.count, staged[i].key.withUnsafeBytes({ compareRaw($0, k) }) == 0 {
                let p = staged[i].value
                i += 1
                if case .put(let sv) = p {
                    let go = try staged[i - 1].key.withUnsafeBytes { kb in
                        try sv.withUnsafeBytes { vb in try body(kb, vb) }
                    }
                    if !go { stopped = true; return false }
                }
                return true
            }
            if try !body(k, v) { stopped = true; return false }
            return true
        }
        if !stopped { _ = try drain(below: nil) }
    }

    /// Collects up to `limit` (0: no limit) pairs of `[from, to)`.
    public func range(_ bucket: BackendBucket, from: [UInt8], to: [UInt8]?,
                      limit: Int = 0) throws -> [(key: [UInt8], value: [UInt8])] {
        var out: [(key: [UInt8], value: [UInt8])] = []
        try scan(bucket, from: from, to: to) { k, v in
            out.append((Array(k), Array(v)))
            return limit <= 0 || out.count < limit
        }
        return out
    }
}

/// Lexicographic byte order (memcmp, then length).
@inlinable
public func compareBytes(_ a: [UInt8], _ b: [UInt8]) -> Int {
    a.withUnsafeBytes { ab in b.withUnsafeBytes { bb in compareRaw(ab, bb) } }
}

@inlinable
public func compareRaw(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int {
    let n = min(a.count, b.count)
    if n > 0, let pa = a.baseAddress, let pb = b.baseAddress {
        let c = memcmp(pa, pb, n)
        if c != 0 { return c < 0 ? -1 : 1 }
    }
    return a.count == b.count ? 0 : (a.count < b.count ? -1 : 1)
}

/// Big-endian fixed-width integer helpers for on-disk keys and values.
public enum BigEndian {
    /// The 8 big-endian bytes of `v`.
    public static func bytes(_ v: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) }
    }
    /// Decodes exactly 8 bytes; nil otherwise.
    @inlinable
    public static func uint64(_ b: [UInt8]) -> UInt64? {
        guard b.count == 8 else { return nil }
        return b.withUnsafeBytes { uint64(at: 0, of: $0) }
    }

    /// The big-endian integer at `offset` of `raw` (the caller checks the bounds).
    @inlinable
    public static func uint64(at offset: Int, of raw: UnsafeRawBufferPointer) -> UInt64 {
        UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}
