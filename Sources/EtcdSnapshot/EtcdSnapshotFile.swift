import Foundation
public import LMDBBackend
#if canImport(Glibc)
import Glibc
#endif

extension EtcdBolt {
    /// Prefix of the temporary files a snapshot leaves beside the db while it is served.
    public static let tempPrefix = ".etcd-snapshot-"

    /// Builds an etcd-format snapshot of `backend` in a temporary file in `directory` and
    /// returns its path (the caller streams and removes it) and its status.
    ///
    /// A point-in-time copy of the LMDB db (free pages left out) is taken beside the db
    /// (`Backend.copy`, which runs beside ongoing writes), converted to bbolt, and removed.
    /// Refused up front unless the file system has room for both: 2.25 times the db's size in
    /// use (the copy, and the bbolt file, which can be somewhat larger: overflow pages are
    /// rounded up) plus `reserve` bytes, so a snapshot never fills the disk the member writes to.
    public static func makeSnapshot(of backend: Backend, in directory: String,
                                    reserve: Int64 = 64 << 20) throws -> (path: String, status: Status) {
        let inUse = try backend.sizeInUse()
        var fs = statvfs()
        guard statvfs(directory, &fs) == 0 else {
            throw EtcdSnapshotError("cannot stat the file system of \(directory): \(String(cString: strerror(errno)))")
        }
        let free = Int64(fs.f_bavail) * Int64(fs.f_frsize)
        let needed = 2 * inUse + inUse / 4 + reserve
        guard free >= needed else {
            throw EtcdSnapshotError("not enough disk space for a snapshot: need \(needed) bytes in \(directory), \(free) free")
        }
        let id = UUID().uuidString.prefix(8)
        let copy = "\(directory)/\(tempPrefix)\(id).lmdb"
        let out = "\(directory)/\(tempPrefix)\(id).db"
        defer {
            unlink(copy)
            unlink(copy + "-lock")
        }
        try backend.copy(toPath: copy, compact: true)
        var options = Backend.Options()
        options.sync = false
        let source = try Backend(path: copy, options: options)
        defer { source.abandon() }
        let status = try export(source, to: out, sync: false)
        return (out, status)
    }

    /// Removes snapshot files a crashed member left in `directory`.
    public static func removeStaleSnapshots(in directory: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasPrefix(tempPrefix) { unlink("\(directory)/\(name)") }
    }
}
