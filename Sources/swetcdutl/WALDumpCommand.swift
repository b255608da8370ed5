import ArgumentParser
import Foundation
import Storage

/// `swetcdutl wal dump`: every record of every segment, with damage reported by file and
/// offset. Reads only (no lock is taken, nothing is repaired).
struct WALDumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump",
        abstract: "List the WAL's records (file, offset, type, index, term).",
        discussion: """
            A torn tail at the end of the last segment (a write cut by a crash, which swetcd \
            cuts off at start) is reported but is not an error. Any other damage is listed \
            where it is found and makes the command exit with code 1 at the end.
            """
    )

    @OptionGroup var dir: DataDirOptions

    @Option(name: [.customShort("w"), .customLong("write-out")], help: "Output format: table or json (one object per line).")
    var format: OutputFormat = .table

    struct Line: Encodable {
        var file: String
        var offset: Int64
        var size: Int64
        var type: String
        var index: UInt64?
        var term: UInt64?
        var detail: String?
        var damaged: Bool?
    }

    func run() throws {
        let walDir = try dir.resolvedWALDir()
        let segments = (try? FileManager.default.contentsOfDirectory(atPath: walDir))?
            .filter { $0.hasSuffix(".wal") }.sorted() ?? []
        guard let lastSegment = segments.last else { throw ToolError("\(walDir) holds no WAL segments") }
        let lastPath = (walDir as NSString).appendingPathComponent(lastSegment)

        var records = 0, entries = 0
        var damage: [WALDumpDamage] = []
        var tornTail: WALDumpDamage?
        if format == .table {
            print("WAL directory: \(walDir)")
            print(pad("FILE", 38) + pad("OFFSET", 12) + pad("TYPE", 15) + pad("INDEX", 12) + pad("TERM", 8) + "DETAIL")
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        try WAL.dump(directory: walDir) { event in
            let line: Line
            switch event {
            case let .record(r):
                records += 1
                if case .entry = r.record { entries += 1 }
                line = Line(file: r.file, offset: r.offset, size: Int64(r.size), type: Self.typeName(r.record),
                            index: r.index, term: r.term, detail: Self.detail(r.record))
            case let .damage(d):
                if d.file == lastPath && d.atEnd { tornTail = d } else { damage.append(d) }
                let what = d.file == lastPath && d.atEnd ? "torn tail" : "DAMAGED"
                line = Line(file: d.file, offset: d.offset, size: d.length, type: what, index: nil, term: nil,
                            detail: "\(d.length) bytes: \(d.reason)", damaged: true)
            }
            if format == .json {
                print(String(decoding: try enc.encode(line), as: UTF8.self))
            } else {
                let name = (line.file as NSString).lastPathComponent
                print(pad(name, 38) + pad(String(line.offset), 12) + pad(line.type, 15)
                      + pad(line.index.map(String.init) ?? "-", 12) + pad(line.term.map(String.init) ?? "-", 8)
                      + (line.detail ?? ""))
            }
        }
        if format == .table {
            print("\(segments.count) segment(s), \(records) record(s), \(entries) entries")
            if let t = tornTail {
                print("torn tail in \(t.file) at offset \(t.offset) (\(t.reason)): cut off when swetcd opens the WAL")
            }
        }
        if !damage.isEmpty {
            let list = damage.map { "\($0.file) at offset \($0.offset): \($0.reason)" }.joined(separator: "; ")
            throw ToolError("WAL is damaged (\(damage.count) stretch(es)): \(list)")
        }
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
    }

    static func typeName(_ r: WALRecord) -> String {
        switch r {
        case .segmentHeader: "segment-header"
        case .metadata: "metadata"
        case .entry: "entry"
        case .hardState: "hard-state"
        case .snapshot: "snapshot"
        }
    }

    static func detail(_ r: WALRecord) -> String? {
        switch r {
        case let .segmentHeader(seq, first):
            return "sequence=\(seq) first-index=\(first)"
        case let .metadata(bytes):
            if let m = WALMetadata(decoding: bytes) {
                return "member-id=\(hexID(m.memberID)) cluster-id=\(hexID(m.clusterID))"
            }
            return "\(bytes.count) bytes"
        case let .entry(e):
            return "\(e.data.count) bytes"
        case let .hardState(h):
            return "term=\(h.term) vote=\(hexID(h.vote)) commit=\(h.commit)"
        case let .snapshot(s):
            return "conf-state=\(s.confState.count) bytes"
        }
    }
}
