import Foundation
import Logging
@testable import Server
import Storage
import Testing

/// The swap that puts an imported member directory in place is finished or undone at the next
/// start whatever step a crash interrupted.
@Suite("etcd data directory import: interrupted swaps")
struct EtcdDataDirImportTests {
    private func makeDir() throws -> String {
        let path = NSTemporaryDirectory() + "swetcd-import-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private func write(_ path: String, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    private func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    @Test func crashBetweenTheRenamesIsFinished() throws {
        let path = try makeDir()
        defer { try? FileManager.default.removeItem(atPath: path) }
        // etcd's member directory moved aside, ours not yet moved in.
        try write(path + "/.etcd-member-imported/snap/db", "etcd")
        try write(path + "/.swetcd-import/member/snap/db", "ours")
        try EtcdDataDirImport.recover(DataDir(path: path), logger: Logger(label: "test"))
        #expect(read(path + "/member/snap/db") == "ours")
        #expect(try FileManager.default.contentsOfDirectory(atPath: path) == ["member"])
    }

    @Test func crashAfterTheSwapRemovesEtcdsFiles() throws {
        let path = try makeDir()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try write(path + "/.etcd-member-imported/snap/db", "etcd")
        try write(path + "/member/snap/db", "ours")
        try FileManager.default.createDirectory(atPath: path + "/.swetcd-import", withIntermediateDirectories: true)
        try EtcdDataDirImport.recover(DataDir(path: path), logger: Logger(label: "test"))
        #expect(read(path + "/member/snap/db") == "ours")
        #expect(try FileManager.default.contentsOfDirectory(atPath: path) == ["member"])
    }

    @Test func crashWhileBuildingLeavesEtcdsFiles() throws {
        let path = try makeDir()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try write(path + "/member/snap/db", "etcd")
        try write(path + "/.swetcd-import/member/snap/db", "half")
        try EtcdDataDirImport.recover(DataDir(path: path), logger: Logger(label: "test"))
        #expect(read(path + "/member/snap/db") == "etcd")
        #expect(try FileManager.default.contentsOfDirectory(atPath: path) == ["member"])
    }
}
