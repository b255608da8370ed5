/// Errors of the write-ahead log.
public enum WALError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Damage that is not a torn tail: the WAL cannot be trusted past this point.
    case corrupt(file: String, offset: Int64, reason: String)
    /// No snapshot marker with this index was found where the WAL should have one.
    case snapshotNotFound(index: UInt64, term: UInt64)
    /// The WAL has a marker at this index but with another term.
    case snapshotMismatch(index: UInt64, walTerm: UInt64, wantedTerm: UInt64)
    /// Another process (or another open WAL in this one) holds the directory.
    case locked(String)
    /// `create` on a directory that already exists.
    case alreadyExists(String)
    /// No WAL, or no segment reaching back to the requested index.
    case notFound(String)
    case invalidArgument(String)
    /// An earlier write or sync failed; the log must be reopened (see `WAL.save`).
    case failed(String)
    case closed

    public var description: String {
        switch self {
        case let .corrupt(file, offset, reason): "wal: corrupt record in \(file) at offset \(offset): \(reason)"
        case let .snapshotNotFound(i, t): "wal: snapshot marker (index \(i), term \(t)) not found"
        case let .snapshotMismatch(i, w, t): "wal: snapshot marker at index \(i) has term \(w), expected \(t)"
        case let .locked(p): "wal: \(p) is locked by another user"
        case let .alreadyExists(p): "wal: \(p) already exists"
        case let .notFound(m): "wal: \(m)"
        case let .invalidArgument(m): "wal: \(m)"
        case let .failed(m): "wal: unusable after an earlier failure: \(m)"
        case .closed: "wal: closed"
        }
    }
}

/// A segment file name: `<sequence:016x>-<firstIndex:016x>.wal`, as etcd names them.
/// `firstIndex` is the index the first entry written into the segment may have.
struct WALSegmentName: Comparable, Hashable, Sendable {
    var sequence: UInt64
    var firstIndex: UInt64

    var fileName: String { hex16(sequence) + "-" + hex16(firstIndex) + ".wal" }

    static func < (a: Self, b: Self) -> Bool { a.sequence < b.sequence }

    init(sequence: UInt64, firstIndex: UInt64) {
        self.sequence = sequence
        self.firstIndex = firstIndex
    }

    init?(parsing name: String) {
        let u = Array(name.utf8)
        guard u.count == 37, u[16] == UInt8(ascii: "-"), name.hasSuffix(".wal"),
              let s = parseHex16(u[0..<16]), let f = parseHex16(u[17..<33]) else { return nil }
        self.init(sequence: s, firstIndex: f)
    }
}

/// 16 lowercase hex digits.
func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}

func parseHex16(_ digits: ArraySlice<UInt8>) -> UInt64? {
    guard digits.count == 16 else { return nil }
    var v: UInt64 = 0
    for c in digits {
        let d: UInt8
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
        default: return nil
        }
        v = v << 4 | UInt64(d)
    }
    return v
}

/// What reading one segment found after its last good record.
struct WALSegmentScan {
    enum Damage: Equatable {
        /// Invalid bytes with nothing valid after them: a write cut short by a crash.
        case tornTail
        /// Invalid bytes containing a never-written (zero) sector, with valid records after:
        /// a multi-sector write only partly on disk. Everything from here on was never synced.
        case tornWrite
        /// Anything else: damage followed by valid records.
        case corrupt
    }

    /// End of the last valid record.
    var validEnd: Int
    /// Set when something other than zero-filled preallocated space follows `validEnd`.
    var damage: Damage?
    var reason: String = ""
    var fileSize: Int
}

extension WALSegmentName {
    /// Walks the records of a segment image, calling `visit` for each valid one in order, and
    /// classifies what follows the last valid record. Throws `.corrupt` for a bad segment header.
    /// A finished (not last) segment must end exactly at its last record.
    func scan(_ bytes: [UInt8], file: String, isLast: Bool,
              visit: (Int, WALRecord) throws -> Void) throws -> WALSegmentScan {
        try bytes.withUnsafeBytes { buf in
            guard buf.count > 0 else { throw WALError.corrupt(file: file, offset: 0, reason: "empty segment file") }
            var pos = 0
            var reason = ""
            while pos < buf.count {
                switch WALFrame.decode(buf, at: pos) {
                case let .record(rec, end):
                    if pos == 0 {
                        guard case let .segmentHeader(seq, first) = rec, seq == sequence, first == firstIndex else {
                            throw WALError.corrupt(file: file, offset: 0, reason: "segment header does not match the file name")
                        }
                    } else if case .segmentHeader = rec {
                        throw WALError.corrupt(file: file, offset: Int64(pos), reason: "segment header in the middle of a segment")
                    }
                    try visit(pos, rec)
                    pos = end
                    continue
                case let .invalid(why):
                    reason = why
                }
                break
            }
            var scan = WALSegmentScan(validEnd: pos, damage: nil, fileSize: buf.count)
            if pos == buf.count { return scan }
            if pos == 0 {
                throw WALError.corrupt(file: file, offset: 0, reason: "bad segment header: \(reason)")
            }
            scan.reason = reason
            if WALFrame.allZero(buf, pos..<buf.count) {
                // Preallocated space: normal for the segment being written.
                if !isLast { scan.damage = .corrupt; scan.reason = "zero-filled space in a finished segment" }
                return scan
            }
            if let next = WALFrame.nextValid(buf, from: pos + 8) {
                scan.damage = WALFrame.containsZeroSector(buf, pos..<next) ? .tornWrite : .corrupt
                if scan.damage == .corrupt { scan.reason += " (a valid record follows at offset \(next))" }
            } else {
                scan.damage = .tornTail
            }
            if !isLast { scan.damage = .corrupt }
            return scan
        }
    }
}
