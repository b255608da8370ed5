import ArgumentParser
import BoltFormat
import Crypto
import EtcdSnapshot
import Foundation
import LMDBBackend
import MVCC
import Storage

#if canImport(Glibc)
import Glibc
#endif

/// `swetcdutl migrate`: rewrites a snapshot as an etcd-format snapshot whose revision jumped by
/// `--bump-revision` and which is compacted there, for the switch of a live cluster between
/// etcd and swetcd (docs/MIGRATION.md). etcd 3.4's `etcdctl snapshot restore` has no
/// `--bump-revision`; restoring this file with it gives the same result as etcd 3.5's
/// `etcdutl snapshot restore --bump-revision N --mark-compacted`.
struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Write a snapshot with its revision bumped and compacted, for moving a cluster between etcd and swetcd.",
        discussion: """
            Reads a snapshot file (from `etcdctl snapshot save` against etcd or swetcd) and \
            writes a new one in etcd's format, with the SHA-256 trailer, whose revision is the \
            snapshot's plus --bump-revision and whose keyspace is compacted at that revision \
            (--mark-compacted). Restore it on every member of the target cluster with the \
            same cluster layout: `etcdctl snapshot restore` (etcd, or swetcd started on the \
            result) or `swetcdutl snapshot restore`. Watchers that resume from a revision of \
            the old cluster then get "required revision has been compacted" and list again, \
            instead of missing events or seeing revisions used twice. The procedure is in \
            docs/MIGRATION.md.
            """
    )

    @Argument(help: "The snapshot file.")
    var file: String

    @Option(name: [.customShort("o"), .customLong("output")], help: "The snapshot file to write (must not exist).")
    var output: String

    @Option(name: .customLong("bump-revision"), help: "Add this to the snapshot's revision (at least the writes the old cluster may take after the snapshot).")
    var bumpRevision: UInt64 = 0

    @Flag(name: .customLong("mark-compacted"), help: "Compact the keyspace at the bumped revision (required with --bump-revision).")
    var markCompacted = false

    @Flag(name: .customLong("skip-hash-check"), help: "Accept a file without (or with a wrong) SHA-256 trailer.")
    var skipHashCheck = false

    func validate() throws {
        if markCompacted && bumpRevision == 0 { throw ValidationError("--mark-compacted needs --bump-revision") }
        if bumpRevision > 0 && !markCompacted {
            // etcd 3.4 takes its revision from its newest key or its compaction, so a bump
            // without a compaction cannot be written in its format.
            throw ValidationError("--bump-revision needs --mark-compacted: an etcd snapshot can carry a bumped revision only as its compaction revision")
        }
        if bumpRevision > UInt64(Int64.max / 4) { throw ValidationError("--bump-revision \(bumpRevision) is too large") }
    }

    func run() throws {
        if FileManager.default.fileExists(atPath: output) { throw ToolError("\(output) exists; refusing to overwrite it") }
        let snapshot = try SnapshotFile(path: file)
        if !skipHashCheck { try snapshot.verifyHash() }
        let dir = NSTemporaryDirectory() + "swetcdutl-migrate-\(UUID().uuidString)"
        guard mkdir(dir, 0o700) == 0 else { throw ToolError("cannot create \(dir): \(String(cString: strerror(errno)))") }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let db = dir + "/db"
        var options = Backend.Options()
        options.sync = false
        let backend: Backend
        if try snapshot.isBolt() {
            backend = try Backend(path: db, options: options)
            do { try EtcdBolt.importFile(try snapshot.boltReader(), into: backend) } catch {
                backend.abandon()
                if let e = error as? ToolError { throw e }
                throw ToolError("snapshot file \(file) cannot be read: \(error)")
            }
        } else {
            try snapshot.copyDB(to: db)
            do { backend = try Backend(path: db, options: options) } catch {
                throw ToolError("snapshot file \(file) does not hold a swetcd backend: \(error)")
            }
        }
        defer { backend.abandon() }
        let old: Int64
        var revision: Int64
        do {
            old = try MVCCStore(backend: backend).currentRevision
            revision = old
            if bumpRevision > 0 {
                revision += Int64(bumpRevision)
                try backend.batch {
                    try backend.put(.meta, key: Array("currentRevision".utf8), value: BigEndian.bytes(UInt64(revision)))
                    try backend.put(.meta, key: Array("scheduledCompactRev".utf8), value: BigEndian.bytes(UInt64(revision)))
                }
                try backend.commit()
                // Reopening the keyspace carries out the compaction just scheduled.
                let store = try MVCCStore(backend: backend)
                guard store.compactRevision == revision else {
                    throw ToolError("the keyspace was compacted at \(store.compactRevision), not \(revision)")
                }
                try backend.commit()
            }
        } catch let e as ToolError {
            throw e
        } catch {
            throw ToolError("the snapshot's keyspace is damaged: \(error)")
        }
        let partial = output + ".part"
        unlink(partial)
        defer { unlink(partial) }
        let status: EtcdBolt.Status
        do { status = try EtcdBolt.export(backend, to: partial) } catch {
            throw ToolError("cannot write \(partial): \(error)")
        }
        try appendSHA256(partial)
        guard rename(partial, output) == 0 else {
            throw ToolError("cannot rename \(partial) to \(output): \(String(cString: strerror(errno)))")
        }
        let parent = (output as NSString).deletingLastPathComponent
        try syncPath(parent.isEmpty ? "." : parent)
        print("wrote \(output): revision \(old) -> \(revision)" + (bumpRevision > 0 ? ", compacted at \(revision)" : "")
              + ", \(status.totalKey) keys, \(humanBytes(status.totalSize)), hash \(String(status.hash, radix: 16))")
    }

    /// Appends the SHA-256 of the file's bytes, as etcd's snapshot stream ends, and syncs it.
    private func appendSHA256(_ path: String) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw ToolError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var hasher = SHA256()
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = read(fd, buffer.baseAddress, chunk)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw ToolError("cannot read \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[..<n]))
        }
        let digest = Array(hasher.finalize())
        let written = digest.withUnsafeBytes { write(fd, $0.baseAddress, 32) }
        guard written == 32 else { throw ToolError("cannot write \(path): \(String(cString: strerror(errno)))") }
        guard fsync(fd) == 0 else { throw ToolError("cannot sync \(path): \(String(cString: strerror(errno)))") }
    }
}
