#if canImport(Glibc)
import Glibc
#endif

/// One valid record found by `WAL.dump`.
public struct WALDumpRecord: Sendable, Equatable {
    /// Path of the segment file.
    public var file: String
    /// Byte offset of the record's frame in the file.
    public var offset: Int64
    /// Size of the frame in bytes (header, payload, padding).
    public var size: Int
    public var record: WALRecord

    public var kind: WALRecordKind { record.kind }

    /// Index of an entry or snapshot marker.
    public var index: UInt64? {
        switch record {
        case let .entry(e): e.index
        case let .snapshot(s): s.index
        default: nil
        }
    }

    /// Term of an entry, snapshot marker or hard state.
    public var term: UInt64? {
        switch record {
        case let .entry(e): e.term
        case let .snapshot(s): s.term
        case let .hardState(h): h.term
        default: nil
        }
    }
}

/// A damaged stretch found by `WAL.dump`.
public struct WALDumpDamage: Sendable, Equatable {
    public var file: String
    public var offset: Int64
    /// Bytes up to the next valid record (or the end of the file).
    public var length: Int64
    public var reason: String
    /// True when no valid record follows in this file (what `WAL.open` cuts off when it is
    /// the last segment).
    public var atEnd: Bool
}

/// What `WAL.dump` reports, in file and offset order.
public enum WALDumpEvent: Sendable, Equatable {
    case record(WALDumpRecord)
    case damage(WALDumpDamage)
}

extension WAL {
    /// Walks every record of every segment file in `directory` (read-only, no lock), for
    /// inspection tools. Damage does not stop it: it is reported with its file and offset and
    /// the walk resumes at the next valid record. Zero-filled preallocated space at the end of
    /// the last segment is not reported. Throws only when files cannot be read.
    public static func dump(directory: String, _ visit: (WALDumpEvent) throws -> Void) throws {
        let files = try FileIO.list(directory).filter { WALSegmentName(parsing: $0) != nil }
        for (i, name) in files.enumerated() {
            let path = FileIO.join(directory, name)
            let bytes = try FileIOHandle.open(path, flags: O_RDONLY).readAll()
            let isLast = i == files.count - 1
            try bytes.withUnsafeBytes { buf in
                var pos = 0
                while pos < buf.count {
                    switch WALFrame.decode(buf, at: pos) {
                    case let .record(rec, end):
                        try visit(.record(WALDumpRecord(file: path, offset: Int64(pos), size: end - pos, record: rec)))
                        pos = end
                    case let .invalid(reason):
                        if isLast && pos > 0 && WALFrame.allZero(buf, pos..<buf.count) { return }
                        let next = WALFrame.nextValid(buf, from: pos + 8)
                        let stop = next ?? buf.count
                        try visit(.damage(WALDumpDamage(file: path, offset: Int64(pos), length: Int64(stop - pos),
                                                        reason: reason, atEnd: next == nil)))
                        pos = stop
                    }
                }
            }
        }
    }
}
