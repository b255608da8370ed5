import CLMDB
#if canImport(Glibc)
import Glibc
#endif

/// An error reported by LMDB or by the backend on top of it.
public struct BackendError: Error, CustomStringConvertible, Equatable {
    /// LMDB's (or errno's) return code, 0 when the error is the backend's own.
    public let code: Int32
    /// What was being done, plus LMDB's text for `code`.
    public let description: String

    init(_ code: Int32, _ what: String) {
        self.code = code
        let text = mdb_strerror(code).map { String(cString: $0) } ?? "code \(code)"
        self.description = "backend: \(what): \(text)"
    }

    init(message: String) {
        self.code = 0
        self.description = "backend: \(message)"
    }
}

extension BackendError {
    /// A failed LMDB write to the file at `path`. LMDB reports a short `pwrite` as EIO, so on a
    /// file system that fills up mid-write the real cause (ENOSPC) is lost and the member would
    /// stop with "Input/output error". When the file system has (almost) nothing left, the
    /// error says so, with code ENOSPC.
    static func write(_ code: Int32, _ what: String, path: String) -> BackendError {
        guard code == EIO, let free = freeBytes(path), free < 1 << 20 else { return BackendError(code, what) }
        return BackendError(ENOSPC, "\(what) (LMDB reported a short write as an I/O error; the file system of \(path) has \(free / 1024) KiB free)")
    }

    /// Bytes an unprivileged writer may still use on the file system holding `path`.
    static func freeBytes(_ path: String) -> UInt64? {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return nil }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }
}

@inline(__always)
func lmdbCheck(_ rc: Int32, _ what: @autoclosure () -> String) throws {
    if rc != MDB_SUCCESS { throw BackendError(rc, what()) }
}

/// Owns one `MDB_env` and its named databases. Not thread-safe by itself: `Backend`
/// serialises every use under its lock.
final class LMDBEnv {
    let env: OpaquePointer
    private(set) var dbis: [UInt32]
    private(set) var mapSize: Int
    let path: String

    init(path: String, mapSize: Int, names: [String], sync: Bool) throws {
        var e: OpaquePointer?
        try lmdbCheck(mdb_env_create(&e), "mdb_env_create")
        guard let env = e else { throw BackendError(message: "mdb_env_create returned no env") }
        self.env = env
        self.path = path
        self.mapSize = mapSize
        self.dbis = []
        do {
            try lmdbCheck(mdb_env_set_maxdbs(env, UInt32(names.count + 4)), "mdb_env_set_maxdbs")
            try lmdbCheck(mdb_env_set_maxreaders(env, 1024), "mdb_env_set_maxreaders")
            try lmdbCheck(mdb_env_set_mapsize(env, mapSize), "mdb_env_set_mapsize")
            // NOTLS: read transactions are not tied to a thread (Swift tasks hop threads).
            // NORDAHEAD: random access pattern; the OS read-ahead only pollutes the cache.
            var flags = UInt32(MDB_NOSUBDIR | MDB_NOTLS | MDB_NORDAHEAD)
            if !sync { flags |= UInt32(MDB_NOSYNC | MDB_NOMETASYNC) }
            try lmdbCheck(mdb_env_open(env, path, flags, 0o600), "open \(path)")
            // A file shorter than the pages its meta page claims (truncated, e.g. a partial
            // copy) would fault when LMDB touches the missing pages: refuse it first.
            var info = MDB_envinfo()
            var st = MDB_stat()
            mdb_env_info(env, &info)
            mdb_env_stat(env, &st)
            var fd: mdb_filehandle_t = -1
            var fileStat = Glibc.stat()
            if mdb_env_get_fd(env, &fd) == MDB_SUCCESS, fstat(fd, &fileStat) == 0 {
                let needed = (Int(info.me_last_pgno) + 1) * Int(st.ms_psize)
                if info.me_last_pgno > 1, Int(fileStat.st_size) < needed {
                    throw BackendError(message: "\(path) is truncated: \(fileStat.st_size) bytes, its pages need \(needed)")
                }
            }
            // Create every named database up front in one write transaction.
            var txn: OpaquePointer?
            try lmdbCheck(mdb_txn_begin(env, nil, 0, &txn), "begin")
            for name in names {
                var dbi: MDB_dbi = 0
                let rc = mdb_dbi_open(txn, name, UInt32(MDB_CREATE), &dbi)
                if rc != MDB_SUCCESS {
                    mdb_txn_abort(txn)
                    throw BackendError(rc, "open bucket \(name)")
                }
                dbis.append(dbi)
            }
            try lmdbCheck(mdb_txn_commit(txn), "commit bucket creation")
        } catch {
            // All stored properties are set, so deinit runs and closes the env.
            throw error
        }
    }

    deinit { mdb_env_close(env) }

    var maxKeySize: Int { Int(mdb_env_get_maxkeysize(env)) }

    func grow() throws {
        let next = mapSize * 2
        try lmdbCheck(mdb_env_set_mapsize(env, next), "grow map to \(next) bytes")
        mapSize = next
    }

    func pageSize() -> Int {
        var st = MDB_stat()
        mdb_env_stat(env, &st)
        return Int(st.ms_psize)
    }

    func lastPage() -> Int {
        var info = MDB_envinfo()
        mdb_env_info(env, &info)
        return Int(info.me_last_pgno)
    }

    /// Forces LMDB's data to disk (fdatasync), also when the env was opened without syncing.
    func sync() throws {
        let rc = mdb_env_sync(env, 1)
        if rc != MDB_SUCCESS { throw BackendError.write(rc, "sync", path: path) }
    }

    /// Turns LMDB's sync at each commit on or off.
    func setSync(_ on: Bool) throws {
        try lmdbCheck(mdb_env_set_flags(env, UInt32(MDB_NOSYNC | MDB_NOMETASYNC), on ? 0 : 1), "set sync flags")
    }
}

/// A read-only LMDB transaction; it keeps its env open while it exists.
final class LMDBReadTxn {
    let txn: OpaquePointer
    let env: LMDBEnv
    init(env: LMDBEnv) throws {
        self.env = env
        var t: OpaquePointer?
        try lmdbCheck(mdb_txn_begin(env.env, nil, UInt32(MDB_RDONLY), &t), "begin read")
        guard let txn = t else { throw BackendError(message: "no read txn") }
        self.txn = txn
    }
    func renew() throws { try lmdbCheck(mdb_txn_renew(txn), "renew read") }
    func reset() { mdb_txn_reset(txn) }
    deinit { mdb_txn_abort(txn) }
}

@inline(__always)
func withVal<T>(_ bytes: [UInt8], _ body: (inout MDB_val) throws -> T) rethrows -> T {
    try bytes.withUnsafeBufferPointer { buf in
        var v = MDB_val(mv_size: buf.count, mv_data: UnsafeMutableRawPointer(mutating: buf.baseAddress))
        return try body(&v)
    }
}

@inline(__always)
func bytes(of v: MDB_val) -> [UInt8] {
    guard v.mv_size > 0, let p = v.mv_data else { return [] }
    return Array(UnsafeRawBufferPointer(start: p, count: v.mv_size))
}

/// Forward cursor iteration over `dbi` from `from` (inclusive) while `body` returns true.
func lmdbScan(txn: OpaquePointer, dbi: MDB_dbi, from: [UInt8],
              _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool) throws {
    var cur: OpaquePointer?
    try lmdbCheck(mdb_cursor_open(txn, dbi, &cur), "cursor open")
    defer { mdb_cursor_close(cur) }
    var k = MDB_val(), v = MDB_val()
    var rc: Int32
    if from.isEmpty {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)
    } else {
        rc = from.withUnsafeBufferPointer { buf in
            k = MDB_val(mv_size: buf.count, mv_data: UnsafeMutableRawPointer(mutating: buf.baseAddress))
            return mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
        }
    }
    while rc == MDB_SUCCESS {
        let kb = UnsafeRawBufferPointer(start: k.mv_data, count: k.mv_size)
        let vb = UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size)
        if try !body(kb, vb) { return }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
    }
    if rc != MDB_NOTFOUND { throw BackendError(rc, "cursor next") }
}
