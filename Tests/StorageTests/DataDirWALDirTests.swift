import Foundation
import Testing
@testable import Storage

#if canImport(Glibc)
import Glibc
#endif

/// A data directory with a dedicated WAL directory (`--wal-dir`), and permission repair.
@Suite struct DataDirWALDirTests {
    @Test func dedicatedWALLayout() throws {
        let tmp = try WALTempDir("waldir")
        defer { tmp.cleanup() }
        let d = DataDir(path: tmp.sub("data"), walDirectory: tmp.sub("wal") + "/")
        #expect(d.walDirectory == tmp.sub("wal"))
        #expect(DataDir(path: "/d", walDirectory: "/d/member/wal").dedicatedWALDirectory == nil)
        #expect(DataDir(path: "/d", walDirectory: "").dedicatedWALDirectory == nil)
        #expect(try d.inspect() == .empty)
        // An empty WAL directory made by the operator is fine (replaced by the created WAL).
        try FileIO.makeDirectory(d.walDirectory)
        #expect(try d.prepare() == .empty)
        let wal = try WAL.create(directory: d.walDirectory, metadata: [1])
        try wal.close()
        #expect(try d.inspect() == .ours)
        #expect(!FileIO.exists(d.memberDirectory + "/wal"))
        try walWriteFile(d.backendPath, [0])
        #expect(try d.inspect() == .ours)

        // The same data dir without the WAL dir: member data but no WAL.
        guard case let .foreign(r1) = try DataDir(path: d.path).inspect() else { Issue.record("not refused"); return }
        #expect(r1.contains("no WAL"))
        // The WAL dir with another (empty) data dir: refused, naming both.
        let other = DataDir(path: tmp.sub("other"), walDirectory: d.walDirectory)
        guard case let .foreign(r2) = try other.inspect() else { Issue.record("not refused"); return }
        #expect(r2.contains("holds a WAL but the data directory"))
        #expect(throws: WALError.self) { try other.prepare() }
        // A data dir with its own WAL given a --wal-dir elsewhere: refused.
        let own = DataDir(path: tmp.sub("own"))
        _ = try own.prepare()
        try WAL.create(directory: own.walDirectory, metadata: [1]).close()
        guard case let .foreign(r3) = try DataDir(path: own.path, walDirectory: tmp.sub("wal2")).inspect() else {
            Issue.record("not refused"); return
        }
        #expect(r3.contains("--wal-dir"))
    }

    @Test func widePermissionsAreTightened() throws {
        let tmp = try WALTempDir("perm")
        defer { tmp.cleanup() }
        let d = DataDir(path: tmp.sub("data"), walDirectory: tmp.sub("wal"))
        #expect(try d.tightenPermissions().isEmpty) // nothing exists yet
        try FileIO.makeDirectory(d.path)
        try FileIO.makeDirectory(d.walDirectory)
        chmod(d.path, 0o755)
        chmod(d.walDirectory, 0o770)
        let changed = try d.tightenPermissions()
        #expect(changed.map(\.path) == [d.path, d.walDirectory])
        #expect(changed.map(\.oldMode) == [0o755, 0o770])
        var st = stat()
        stat(d.path, &st)
        #expect(UInt32(st.st_mode) & 0o777 == 0o700)
        stat(d.walDirectory, &st)
        #expect(UInt32(st.st_mode) & 0o777 == 0o700)
        #expect(try d.tightenPermissions().isEmpty)
    }
}
