import Foundation
import Raft
import Testing
@testable import Storage

/// A fresh directory under /tmp, removed by `cleanup()`.
struct WALTempDir {
    let path: String

    init(_ label: String = "wal") throws {
        var template = Array((NSTemporaryDirectory() + "swetcd-\(label)-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard let made else { throw FileIOError(operation: "mkdtemp", path: label, code: errno) }
        path = String(cString: made)
    }

    func sub(_ name: String) -> String { path + "/" + name }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}


func walBytes(_ n: Int, _ rng: inout SplitMix64) -> [UInt8] {
    (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
}

func walFileBytes(_ path: String) throws -> [UInt8] {
    Array(try Data(contentsOf: URL(fileURLWithPath: path)))
}

func walWriteFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

func walFileSize(_ path: String) throws -> Int {
    (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? -1
}

/// The byte ranges of `path` that are preallocated but unwritten extents, as `filefrag -v`
/// (e2fsprogs) reports them; nil when filefrag is missing or cannot map the file (a file
/// system without extent maps).
func walUnwrittenExtents(_ path: String) throws -> [Range<Int64>]? {
    let tool = "/usr/sbin/filefrag"
    guard FileManager.default.isExecutableFile(atPath: tool) else { return nil }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = ["-v", path]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { return nil }
    let text = String(decoding: data, as: UTF8.self)
    // "File size of X is N (B blocks of S bytes)", then "ext: logical_offset: ... flags:" rows.
    guard let r = text.range(of: "blocks of "),
          let blockSize = Int64(text[r.upperBound...].prefix { $0.isNumber }) else { return nil }
    var ranges: [Range<Int64>] = []
    for line in text.split(separator: "\n") where line.contains("unwritten") {
        let fields = line.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
        guard fields.count >= 2 else { continue }
        let logical = fields[1].split(separator: ".").compactMap { Int64($0.trimmingCharacters(in: .whitespaces)) }
        guard logical.count == 2 else { continue }
        ranges.append(logical[0] * blockSize..<(logical[1] + 1) * blockSize)
    }
    return ranges
}
