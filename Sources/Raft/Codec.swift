/// A stable, versioned binary encoding of the Raft value types.
///
/// Layout: one format-version byte, then the fields in declaration order. Integers are
/// unsigned LEB128 varints, byte strings and lists are prefixed by a varint count, optional
/// values by a 0/1 byte, enums by one byte. Nested values carry no version byte. Decoding is
/// bounds-checked and rejects trailing bytes; malformed input throws ``RaftCodecError``.

/// Why bytes could not be decoded.
public enum RaftCodecError: Error, Equatable, Sendable {
    /// Input ended inside a value.
    case truncated
    /// A varint was longer than 10 bytes or overflowed 64 bits.
    case badVarint
    /// The format version byte is not one this build understands.
    case unsupportedVersion(UInt8)
    /// An enum byte or flag had an unknown value.
    case badValue(field: String, value: UInt64)
    /// Bytes were left over after the value.
    case trailingBytes(Int)
}

/// Current format version written by `encode()`.
let raftCodecVersion: UInt8 = 1

struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func byte(_ b: UInt8) { bytes.append(b) }

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func blob(_ b: [UInt8]) {
        varint(UInt64(b.count))
        bytes.append(contentsOf: b)
    }

    mutating func bool(_ b: Bool) { byte(b ? 1 : 0) }

    mutating func ids(_ list: [UInt64]) {
        varint(UInt64(list.count))
        for id in list { varint(id) }
    }
}

struct ByteReader {
    let bytes: [UInt8]
    var pos: Int

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.pos = 0
    }

    var remaining: Int { bytes.count - pos }

    mutating func byte() throws -> UInt8 {
        guard pos < bytes.count else { throw RaftCodecError.truncated }
        defer { pos += 1 }
        return bytes[pos]
    }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte()
            if shift == 63 && b > 1 { throw RaftCodecError.badVarint }
            result |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw RaftCodecError.badVarint }
        }
    }

    /// A count of items that each take at least `minItemSize` bytes.
    mutating func count(minItemSize: Int) throws -> Int {
        let n = try varint()
        guard n <= UInt64(remaining / max(minItemSize, 1)) else { throw RaftCodecError.truncated }
        return Int(n)
    }

    mutating func blob() throws -> [UInt8] {
        let n = try count(minItemSize: 1)
        defer { pos += n }
        return Array(bytes[pos..<pos + n])
    }

    mutating func bool(_ field: String) throws -> Bool {
        let b = try byte()
        guard b <= 1 else { throw RaftCodecError.badValue(field: field, value: UInt64(b)) }
        return b == 1
    }

    mutating func ids() throws -> [UInt64] {
        let n = try count(minItemSize: 1)
        var out: [UInt64] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try varint()) }
        return out
    }

    mutating func enumValue<E: RawRepresentable>(_ type: E.Type, _ field: String) throws -> E
    where E.RawValue == UInt8 {
        let b = try byte()
        guard let v = E(rawValue: b) else { throw RaftCodecError.badValue(field: field, value: UInt64(b)) }
        return v
    }

    mutating func version() throws {
        let v = try byte()
        guard v == raftCodecVersion else { throw RaftCodecError.unsupportedVersion(v) }
    }

    func finish() throws {
        guard remaining == 0 else { throw RaftCodecError.trailingBytes(remaining) }
    }
}

/// Decodes a top-level value: version byte, body, no trailing bytes.
private func decodeTop<T>(_ bytes: [UInt8], _ body: (inout ByteReader) throws -> T) throws -> T {
    var r = ByteReader(bytes)
    try r.version()
    let v = try body(&r)
    try r.finish()
    return v
}

private func encodeTop(_ body: (inout ByteWriter) -> Void) -> [UInt8] {
    var w = ByteWriter()
    w.byte(raftCodecVersion)
    body(&w)
    return w.bytes
}

extension Entry {
    func write(_ w: inout ByteWriter) {
        w.byte(type.rawValue)
        w.varint(term)
        w.varint(index)
        w.blob(data)
    }

    init(reading r: inout ByteReader) throws {
        let t = try r.enumValue(EntryType.self, "Entry.type")
        self.init(term: try r.varint(), index: try r.varint(), type: t, data: try r.blob())
    }

    /// Stable binary encoding.
    public func encode() -> [UInt8] { encodeTop { write(&$0) } }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws { self = try decodeTop(bytes) { try Entry(reading: &$0) } }
}

extension HardState {
    /// Stable binary encoding.
    public func encode() -> [UInt8] {
        encodeTop { w in w.varint(term); w.varint(vote); w.varint(commit) }
    }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws {
        self = try decodeTop(bytes) { r in
            HardState(term: try r.varint(), vote: try r.varint(), commit: try r.varint())
        }
    }
}

extension ConfState {
    func write(_ w: inout ByteWriter) {
        w.ids(voters)
        w.ids(learners)
        w.ids(votersOutgoing)
        w.ids(learnersNext)
        w.bool(autoLeave)
    }

    init(reading r: inout ByteReader) throws {
        self.init(voters: try r.ids(), learners: try r.ids(), votersOutgoing: try r.ids(),
                  learnersNext: try r.ids(), autoLeave: try r.bool("ConfState.autoLeave"))
    }

    /// Stable binary encoding.
    public func encode() -> [UInt8] { encodeTop { write(&$0) } }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws { self = try decodeTop(bytes) { try ConfState(reading: &$0) } }
}

extension SnapshotMetadata {
    func write(_ w: inout ByteWriter) {
        w.varint(index)
        w.varint(term)
        confState.write(&w)
    }

    init(reading r: inout ByteReader) throws {
        self.init(index: try r.varint(), term: try r.varint(), confState: try ConfState(reading: &r))
    }

    /// Stable binary encoding.
    public func encode() -> [UInt8] { encodeTop { write(&$0) } }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws {
        self = try decodeTop(bytes) { try SnapshotMetadata(reading: &$0) }
    }
}

extension Snapshot {
    func write(_ w: inout ByteWriter) {
        metadata.write(&w)
        w.blob(data)
    }

    init(reading r: inout ByteReader) throws {
        self.init(metadata: try SnapshotMetadata(reading: &r), data: try r.blob())
    }

    /// Stable binary encoding.
    public func encode() -> [UInt8] { encodeTop { write(&$0) } }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws { self = try decodeTop(bytes) { try Snapshot(reading: &$0) } }
}

extension Message {
    /// Stable binary encoding.
    public func encode() -> [UInt8] {
        encodeTop { w in
            w.byte(type.rawValue)
            w.varint(to)
            w.varint(from)
            w.varint(term)
            w.varint(logTerm)
            w.varint(index)
            w.varint(UInt64(entries.count))
            for e in entries { e.write(&w) }
            w.varint(commit)
            if let s = snapshot {
                w.byte(1)
                s.write(&w)
            } else {
                w.byte(0)
            }
            w.bool(reject)
            w.varint(rejectHint)
            w.blob(context)
        }
    }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws {
        self = try decodeTop(bytes) { r in
            var m = Message(type: try r.enumValue(MessageType.self, "Message.type"))
            m.to = try r.varint()
            m.from = try r.varint()
            m.term = try r.varint()
            m.logTerm = try r.varint()
            m.index = try r.varint()
            // An encoded entry takes at least 4 bytes.
            let n = try r.count(minItemSize: 4)
            m.entries.reserveCapacity(n)
            for _ in 0..<n { m.entries.append(try Entry(reading: &r)) }
            m.commit = try r.varint()
            if try r.bool("Message.hasSnapshot") { m.snapshot = try Snapshot(reading: &r) }
            m.reject = try r.bool("Message.reject")
            m.rejectHint = try r.varint()
            m.context = try r.blob()
            return m
        }
    }
}

extension ConfChange {
    /// Stable binary encoding (carried in `.confChange` entries).
    public func encode() -> [UInt8] {
        encodeTop { w in
            w.varint(id)
            w.byte(type.rawValue)
            w.varint(nodeID)
            w.blob(context)
        }
    }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws {
        self = try decodeTop(bytes) { r in
            let id = try r.varint()
            let t = try r.enumValue(ConfChangeType.self, "ConfChange.type")
            return ConfChange(id: id, type: t, nodeID: try r.varint(), context: try r.blob())
        }
    }
}

extension ConfChangeV2 {
    /// Stable binary encoding (carried in `.confChangeV2` entries).
    public func encode() -> [UInt8] {
        encodeTop { w in
            w.byte(transition.rawValue)
            w.varint(UInt64(changes.count))
            for c in changes {
                w.byte(c.type.rawValue)
                w.varint(c.nodeID)
            }
            w.blob(context)
        }
    }

    /// Decodes bytes produced by ``encode()``; throws ``RaftCodecError`` on malformed input.
    public init(decoding bytes: [UInt8]) throws {
        self = try decodeTop(bytes) { r in
            let t = try r.enumValue(ConfChangeTransition.self, "ConfChangeV2.transition")
            let n = try r.count(minItemSize: 2)
            var changes: [ConfChangeSingle] = []
            changes.reserveCapacity(n)
            for _ in 0..<n {
                let ct = try r.enumValue(ConfChangeType.self, "ConfChangeSingle.type")
                changes.append(ConfChangeSingle(type: ct, nodeID: try r.varint()))
            }
            return ConfChangeV2(transition: t, changes: changes, context: try r.blob())
        }
    }
}
