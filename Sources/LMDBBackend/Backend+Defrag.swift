import CLMDB
import Foundation

/// The points of a defragmentation at which a test may stop it as if the process died.
enum DefragmentStep: Sendable, CaseIterable {
    /// The compact copy is written (not yet synced), nothing replayed.
    case copied
    /// Batches committed during the copy have been replayed and the copy synced; the final
    /// pause has not begun.
    case caughtUp
    /// Inside the final pause: the last batches are replayed and the copy synced, not renamed.
    case synced
    /// Inside the final pause: the copy has replaced the db file; the directory is not synced
    /// and the backend still uses the old file.
    case renamed
}

/// What a defragmentation did.
public struct DefragmentResult: Sendable {
    /// Size of the db file before and after.
    public var sizeBefore: Int64
    public var sizeAfter: Int64
    /// Time taken by LMDB's compacting copy (writes and reads went on meanwhile).
    public var copyDuration: Duration
    /// Batches committed during the copy and replayed into it (catch-up rounds plus the pause).
    public var replayedBatches: Int
    /// How long the backend's lock was held for the final replay and the swap: the only time
    /// writes, commits and new reads waited on the defragmentation.
    public var pause: Duration
    /// The whole run.
    public var total: Duration
}

extension Backend {
    /// Installs the test hook called at each step (see `DefragmentStep`).
    func setDefragStepHook(_ hook: (@Sendable (DefragmentStep) -> Bool)?) {
        lock.withLock { defragStepHook = hook }
    }

    /// The temporary file a defragmentation writes its copy to; removed at open if left over.
    var defragTempPath: String { path + ".defrag" }

    /// Removes the copy (and its LMDB lock file) of a defragmentation that a crash interrupted.
    static func removeDefragLeftovers(_ path: String) throws {
        for p in [path + ".defrag", path + ".defrag-lock"] where unlink(p) != 0 && errno != ENOENT {
            throw BackendError(errno, "remove stale defragmentation file \(p)")
        }
    }

    /// Rewrites the db into a compact file (no free pages) and swaps it in, while reads and
    /// writes go on.
    ///
    /// 1. The batch is committed and recording starts: from now on every committed batch is
    ///    also kept in memory. LMDB's compacting copy (under its own read transaction) writes
    ///    `<path>.defrag` and it is synced; the member serves as usual meanwhile.
    /// 2. Catch-up: the recorded batches are replayed into the copy in rounds, outside the
    ///    lock, until a round finds few enough to replay; the copy is synced.
    /// 3. The pause: under the lock (after any open `batch` scope ends), the last recorded
    ///    batches are replayed, the copy is synced and renamed over the db file, the directory
    ///    synced, and the backend switches to the new env. Staged (uncommitted) writes stay
    ///    staged and are committed to the new file later.
    ///
    /// Replaying a batch the copy already holds changes nothing (each batch sets final values),
    /// so where the copy's read transaction began among the recorded batches does not matter.
    /// Views and copies opened before the swap keep reading the old file (its inode lives on
    /// until the last of them is released). A crash before the rename leaves the old file in
    /// place and a stale `.defrag` file, removed at the next open; after it, the new file holds
    /// every batch committed up to the pause. Throws if a defragmentation is already running
    /// or the backend is closed meanwhile (the temporary file is removed).
    @discardableResult
    public func defragment() throws -> DefragmentResult {
        let started = ContinuousClock.now
        let stepHook = lock.withLock { defragStepHook }
        func hook(_ step: DefragmentStep) -> Bool { stepHook?(step) ?? false }
        let sizeBefore = (try? fileSize()) ?? 0
        let old: LMDBEnv = try lock.withLock {
            let e = try env()
            if defragRunning { throw BackendError(message: "a defragmentation is already running") }
            waitForScopes()
            try commitLocked()
            // The copy keeps a read transaction open, which stops the map from growing until
            // it ends: grow now if the data fills more than half the map and nothing is open.
            if (e.lastPage() + 1) * e.pageSize() > e.mapSize / 2, copies == 0, activeReads == 0 {
                readers.removeAll()
                try e.grow()
            }
            defragRunning = true
            defragLog = []
            copies += 1
            return e
        }
        var copyHeld = true
        func endCopy() {
            guard copyHeld else { return }
            copyHeld = false
            lock.withLock {
                copies -= 1
                lock.broadcast()
            }
        }
        var keepFiles = false
        defer {
            endCopy()
            lock.withLock {
                defragRunning = false
                defragLog = nil
            }
            if !keepFiles { try? Backend.removeDefragLeftovers(path) }
        }
        let temp = defragTempPath
        try Backend.removeDefragLeftovers(path)

        // 1. The compacting copy, outside the lock.
        let copyStart = ContinuousClock.now
        try lmdbCheck(mdb_env_copy2(old.env, temp, UInt32(MDB_CP_COMPACT)), "defragment: copy to \(temp)")
        let copyDuration = ContinuousClock.now - copyStart
        endCopy()
        if hook(.copied) { keepFiles = true; throw BackendError(message: "defragmentation stopped at copied (test)") }
        // Replays run unsynced; the copy is synced explicitly before it can replace the db.
        let fresh = try LMDBEnv(path: temp, mapSize: old.mapSize,
                                names: BackendBucket.allCases.map(\.name), sync: false)
        try fresh.sync()

        // 2. Catch-up rounds outside the lock, until one finds little to do.
        var replayed = 0
        for _ in 0..<16 {
            let batches: [[[[UInt8]: Pending]]] = try lock.withLock {
                guard lmdb === old else { throw BackendError(message: "backend closed or replaced during defragmentation") }
                defer { defragLog = [] }
                return defragLog ?? []
            }
            replayed += batches.count
            try replay(batches, into: fresh)
            if batches.reduce(0, { $0 + $1.reduce(0) { $0 + $1.count } }) < 1_000 { break }
        }
        try fresh.sync()
        if hook(.caughtUp) { keepFiles = true; throw BackendError(message: "defragmentation stopped at caughtUp (test)") }

        // 3. The pause.
        let pause: Duration = try lock.withLock {
            waitForScopes()
            let pauseStart = ContinuousClock.now
            guard lmdb === old else { throw BackendError(message: "backend closed or replaced during defragmentation") }
            let rest = defragLog ?? []
            replayed += rest.count
            if !rest.isEmpty {
                try replay(rest, into: fresh)
                try fresh.sync()
            }
            if options.sync { try fresh.setSync(true) }
            if hook(.synced) { keepFiles = true; throw BackendError(message: "defragmentation stopped at synced (test)") }
            guard rename(temp, path) == 0 else { throw BackendError(errno, "defragment: rename \(temp) to \(path)") }
            keepFiles = true
            if hook(.renamed) { throw BackendError(message: "defragmentation stopped at renamed (test)") }
            // From the rename on, commits must go to the new file: swap before anything else
            // can fail.
            // The new env keeps its lock file open; its name is free for the next copy.
            try adopt(fresh, renamedFrom: temp)
            return ContinuousClock.now - pauseStart
        }
        return DefragmentResult(sizeBefore: sizeBefore, sizeAfter: (try? fileSize()) ?? 0,
                                copyDuration: copyDuration, replayedBatches: replayed, pause: pause,
                                total: ContinuousClock.now - started)
    }

    /// Writes recorded batches, in order, to `e` (whose map grows as needed: nothing else
    /// uses it yet).
    private func replay(_ batches: [[[[UInt8]: Pending]]], into e: LMDBEnv) throws {
        for batch in batches {
            while true {
                let rc = Backend.write(batch, to: e)
                if rc == MDB_SUCCESS { break }
                if rc == MDB_MAP_FULL { try e.grow(); continue }
                throw BackendError(rc, "defragment: replay a batch")
            }
        }
    }
}

/// fsync of the directory itself, so the rename of a new file over the db survives a crash.
func syncDirectory(_ path: String) throws {
    var fd: Int32
    repeat { fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } while fd < 0 && errno == EINTR
    guard fd >= 0 else { throw BackendError(errno, "open directory \(path)") }
    defer { close(fd) }
    var r: Int32
    repeat { r = fsync(fd) } while r != 0 && errno == EINTR
    guard r == 0 else { throw BackendError(errno, "fsync directory \(path)") }
}
