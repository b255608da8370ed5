import Foundation
import LMDBBackend
@testable import MVCC

/// A temporary data directory holding one backend file; removed on deinit.
final class StoreDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "swetcd-mvcc-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    var db: String { path + "/db" }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func open(batchLimit: Int = 10_000, options: MVCCStore.Options = MVCCStore.Options()) throws -> MVCCStore {
        var o = Backend.Options()
        o.sync = false
        o.batchLimit = batchLimit
        return try MVCCStore(backend: Backend(path: db, options: o), options: options)
    }
}

func b(_ s: String) -> [UInt8] { Array(s.utf8) }
func s(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

extension MVCCStore {
    @discardableResult
    func put(_ k: String, _ v: String, lease: Int64 = 0) throws -> Int64 {
        try put(PutRequest(key: b(k), value: b(v), lease: lease)).revision
    }
    func get(_ k: String, rev: Int64 = 0) throws -> KeyValue? {
        try range(RangeRequest(key: b(k), revision: rev)).kvs.first
    }
    @discardableResult
    func del(_ k: String, _ end: String = "") throws -> Int64 {
        try deleteRange(DeleteRangeRequest(key: b(k), rangeEnd: b(end))).deleted
    }
    func keys(_ from: String, _ end: String, rev: Int64 = 0) throws -> [String] {
        try range(RangeRequest(key: b(from), rangeEnd: b(end), revision: rev)).kvs.map { s($0.key) }
    }
}
