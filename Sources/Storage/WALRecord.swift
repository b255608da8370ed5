import LMDBBackend
/// One Raft log entry as the WAL stores it. `data` is the encoded Raft entry, opaque to the WAL.
public struct WALEntry: Sendable, Hashable {
    public var index: UInt64
    public var term: UInt64
    public var data: [UInt8]

    public init(index: UInt64, term: UInt64, data: [UInt8]) {
        self.index = index
        self.term = term
        self.data = data
    }
}

/// The Raft hard state: current term, vote, and commit index.
public struct WALHardState: Sendable, Hashable {
    public var term: UInt64
    public var vote: UInt64
    public var commit: UInt64

    public init(term: UInt64 = 0, vote: UInt64 = 0, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }

    /// All zeros: nothing to persist.
    public var isEmpty: Bool { term == 0 && vote == 0 && commit == 0 }
}

/// Marks that a snapshot at (index, term) exists; `confState` is the encoded Raft
/// configuration at that point, opaque to the WAL. Markers match by index and term.
public struct WALSnapshotMarker: Sendable, Hashable {
    public var index: UInt64
    public var term: UInt64
    public var confState: [UInt8]

    public init(index: UInt64, term: UInt64, confState: [UInt8] = []) {
        self.index = index
        self.term = term
        self.confState = confState
    }
}

/// The WAL metadata this project writes: the member and cluster IDs, as 16 little-endian bytes.
/// The WAL itself treats metadata as opaque bytes.
public struct WALMetadata: Sendable, Hashable {
    public var memberID: UInt64
    public var clusterID: UInt64

    public init(memberID: UInt64, clusterID: UInt64) {
        self.memberID = memberID
        self.clusterID = clusterID
    }

    /// The 16 bytes: member ID then cluster ID.
    public var encoded: [UInt8] {
        var b: [UInt8] = []
        b.appendLE(memberID)
        b.appendLE(clusterID)
        return b
    }

    /// Decodes `encoded`; nil when `bytes` is not exactly 16 bytes.
    public init?(decoding bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        let (m, c) = bytes.withUnsafeBytes { ($0.loadLE(UInt64.self, at: 0), $0.loadLE(UInt64.self, at: 8)) }
        self.init(memberID: m, clusterID: c)
    }
}

/// The kinds of WAL record (the type byte of the frame).
public enum WALRecordKind: UInt8, Sendable, CaseIterable {
    /// First record of every segment: format magic, version, sequence number, first index.
    case segmentHeader = 1
    case metadata = 2
    case entry = 3
    case hardState = 4
    case snapshot = 5
}

/// A decoded WAL record.
public enum WALRecord: Sendable, Hashable {
    case segmentHeader(sequence: UInt64, firstIndex: UInt64)
    case metadata([UInt8])
    case entry(WALEntry)
    case hardState(WALHardState)
    case snapshot(WALSnapshotMarker)

    /// The type byte this record is framed with.
    public var kind: WALRecordKind {
        switch self {
        case .segmentHeader: .segmentHeader
        case .metadata: .metadata
        case .entry: .entry
        case .hardState: .hardState
        case .snapshot: .snapshot
        }
    }
}

/// The record framing. Each record is
///
///     0  u32  payload length L
///     4  u8   kind
///     5  u8   padding P (0...7) so that 12 + L + P is a multiple of 8
///     6  u16  reserved, zero
///     8  u32  CRC-32C of bytes 0..<8, then of the payload and padding
///     12 L bytes of payload, then P zero bytes
///
/// all integers little-endian. The CRC is per record (not chained): segments are created
/// zero-filled and a repaired tail is zero-filled again, so stale records never follow live ones.
enum WALFrame {
    static let headerSize = 12
    static let magic: [UInt8] = Array("swetcdWL".utf8)
    static let version: UInt32 = 1
    /// Larger payloads are refused on write and treated as damage on read.
    static let maxPayload = 256 << 20

    static func padding(_ payload: Int) -> Int { (8 - (headerSize + payload) % 8) % 8 }

    /// Appends one framed record to `buf`. `body` appends the payload.
    static func append(_ kind: WALRecordKind, to buf: inout [UInt8], _ body: (inout [UInt8]) -> Void) {
        let start = buf.count
        buf.append(contentsOf: repeatElement(0, count: headerSize))
        body(&buf)
        let len = buf.count - start - headerSize
        let pad = padding(len)
        buf.append(contentsOf: repeatElement(0, count: pad))
        buf.storeLE(UInt32(len), at: start)
        buf[start + 4] = kind.rawValue
        buf[start + 5] = UInt8(pad)
        let crc: UInt32 = buf.withUnsafeBytes { raw in
            var c = CRC32C()
            c.update(UnsafeRawBufferPointer(rebasing: raw[start..<start + 8]))
            c.update(UnsafeRawBufferPointer(rebasing: raw[(start + headerSize)...]))
            return c.value
        }
        buf.storeLE(crc, at: start + 8)
    }

    static func append(_ record: WALRecord, to buf: inout [UInt8]) {
        append(record.kind, to: &buf) { b in
            switch record {
            case let .segmentHeader(seq, first):
                b.append(contentsOf: magic)
                b.appendLE(version)
                b.appendLE(UInt32(0))
                b.appendLE(seq)
                b.appendLE(first)
            case let .metadata(m):
                b.append(contentsOf: m)
            case let .entry(e):
                b.appendLE(e.index)
                b.appendLE(e.term)
                b.append(contentsOf: e.data)
            case let .hardState(h):
                b.appendLE(h.term)
                b.appendLE(h.vote)
                b.appendLE(h.commit)
            case let .snapshot(s):
                b.appendLE(s.index)
                b.appendLE(s.term)
                b.append(contentsOf: s.confState)
            }
        }
    }

    static func encodedSize(payload: Int) -> Int { headerSize + payload + padding(payload) }

    enum Decoded {
        case record(WALRecord, end: Int)
        case invalid(String)
    }

    /// Decodes the record at `offset` of `buf`, checking framing, CRC and payload shape.
    static func decode(_ buf: UnsafeRawBufferPointer, at offset: Int) -> Decoded {
        let avail = buf.count - offset
        guard avail >= headerSize else { return .invalid("short record header (\(avail) bytes left)") }
        let len = Int(buf.loadLE(UInt32.self, at: offset))
        let kindByte = buf[offset + 4]
        let pad = Int(buf[offset + 5])
        let reserved = buf.loadLE(UInt16.self, at: offset + 6)
        if len == 0 && kindByte == 0 && pad == 0 && reserved == 0 {
            return .invalid("zero-filled record header")
        }
        guard let kind = WALRecordKind(rawValue: kindByte) else { return .invalid("unknown record type \(kindByte)") }
        guard reserved == 0, pad == padding(len), len <= maxPayload else {
            return .invalid("malformed record header (length \(len), padding \(pad))")
        }
        let end = offset + headerSize + len + pad
        guard end <= buf.count else { return .invalid("truncated record (needs \(end - offset) bytes, \(avail) left)") }
        var c = CRC32C()
        c.update(UnsafeRawBufferPointer(rebasing: buf[offset..<offset + 8]))
        c.update(UnsafeRawBufferPointer(rebasing: buf[(offset + headerSize)..<end]))
        guard c.value == buf.loadLE(UInt32.self, at: offset + 8) else { return .invalid("record CRC mismatch") }
        let p = offset + headerSize
        let payload = UnsafeRawBufferPointer(rebasing: buf[p..<(p + len)])
        func u64(_ i: Int) -> UInt64 { payload.loadLE(UInt64.self, at: i) }
        switch kind {
        case .segmentHeader:
            guard len == 32, Array(payload[0..<8]) == magic else { return .invalid("not a swetcd WAL segment header") }
            let v = payload.loadLE(UInt32.self, at: 8)
            guard v == version else { return .invalid("unsupported WAL format version \(v)") }
            return .record(.segmentHeader(sequence: u64(16), firstIndex: u64(24)), end: end)
        case .metadata:
            return .record(.metadata(Array(payload)), end: end)
        case .entry:
            guard len >= 16 else { return .invalid("entry record too short") }
            return .record(.entry(WALEntry(index: u64(0), term: u64(8), data: Array(payload[16...]))), end: end)
        case .hardState:
            guard len == 24 else { return .invalid("hard state record has length \(len)") }
            return .record(.hardState(WALHardState(term: u64(0), vote: u64(8), commit: u64(16))), end: end)
        case .snapshot:
            guard len >= 16 else { return .invalid("snapshot record too short") }
            return .record(.snapshot(WALSnapshotMarker(index: u64(0), term: u64(8), confState: Array(payload[16...]))), end: end)
        }
    }

    /// Offset of the first record at or after `from` (8-byte aligned positions) that decodes
    /// cleanly, or nil.
    static func nextValid(_ buf: UnsafeRawBufferPointer, from: Int) -> Int? {
        var p = (from + 7) & ~7
        while p + headerSize <= buf.count {
            // Cheap pre-checks before the CRC.
            let kindByte = buf[p + 4]
            if kindByte >= 1 && kindByte <= 5 && buf[p + 6] == 0 && buf[p + 7] == 0,
               case .record = decode(buf, at: p) {
                return p
            }
            p += 8
        }
        return nil
    }

    static func allZero(_ buf: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        var i = range.lowerBound
        // Word at a time where aligned.
        while i < range.upperBound && i & 7 != 0 { if buf[i] != 0 { return false }; i += 1 }
        while i + 8 <= range.upperBound {
            if buf.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < range.upperBound { if buf[i] != 0 { return false }; i += 1 }
        return true
    }

    /// Whether `range` contains a whole 512-byte-aligned sector of zeros: the mark of a write
    /// torn by a crash (a sector that never reached the disk reads as zeros).
    static func containsZeroSector(_ buf: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        var s = (range.lowerBound + 511) & ~511
        while s + 512 <= range.upperBound {
            if allZero(buf, s..<(s + 512)) { return true }
            s += 512
        }
        return false
    }
}
