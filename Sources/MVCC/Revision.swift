import LMDBBackend

/// A point in the keyspace's history: `main` counts the write transactions (Put, DeleteRange,
/// Txn with writes each take one), `sub` numbers the changes inside one of them.
public struct Revision: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var main: Int64
    public var sub: Int64

    public init(main: Int64, sub: Int64 = 0) {
        self.main = main
        self.sub = sub
    }

    public static func < (a: Revision, b: Revision) -> Bool {
        a.main != b.main ? a.main < b.main : a.sub < b.sub
    }

    public var description: String { "\(main).\(sub)" }

    /// Key-bucket key: 8 bytes big-endian main, `_`, 8 bytes big-endian sub, then `t` for a
    /// tombstone (etcd's layout, so the bucket is ordered by revision).
    func bucketKey(tombstone: Bool = false) -> [UInt8] {
        var k = BigEndian.bytes(UInt64(bitPattern: main))
        k.reserveCapacity(18)
        k.append(0x5F)
        k.append(contentsOf: BigEndian.bytes(UInt64(bitPattern: sub)))
        if tombstone { k.append(0x74) }
        return k
    }

    /// Decodes a key-bucket key; nil when malformed.
    static func fromBucketKey(_ k: UnsafeRawBufferPointer) -> (Revision, tombstone: Bool)? {
        guard k.count == 17 || (k.count == 18 && k[17] == 0x74), k[8] == 0x5F else { return nil }
        let m = BigEndian.uint64(at: 0, of: k), s = BigEndian.uint64(at: 9, of: k)
        return (Revision(main: Int64(bitPattern: m), sub: Int64(bitPattern: s)), k.count == 18)
    }
}

/// One version of a key, as etcd's `mvccpb.KeyValue`.
public struct KeyValue: Equatable, Hashable, Sendable {
    public var key: [UInt8]
    /// Main revision of the put that created the key's current generation.
    public var createRevision: Int64
    /// Main revision of the last change.
    public var modRevision: Int64
    /// Puts since creation (1 for the first); reset to 0 by a delete.
    public var version: Int64
    public var value: [UInt8]
    /// Attached lease ID, 0 for none.
    public var lease: Int64

    public init(key: [UInt8], createRevision: Int64 = 0, modRevision: Int64 = 0, version: Int64 = 0,
                value: [UInt8] = [], lease: Int64 = 0) {
        self.key = key
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.value = value
        self.lease = lease
    }

    /// Value encoding in the key bucket: four 8-byte big-endian integers (create, mod,
    /// version, lease), a 4-byte big-endian key length, the key, then the value.
    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(36 + key.count + value.count)
        for v in [createRevision, modRevision, version, lease] {
            out.append(contentsOf: BigEndian.bytes(UInt64(bitPattern: v)))
        }
        let n = UInt32(key.count)
        out.append(contentsOf: [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16),
                                UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)])
        out.append(contentsOf: key)
        out.append(contentsOf: value)
        return out
    }

    /// etcd's encoding of the same record, as etcd stores it in its key bucket: the protobuf
    /// message mvccpb.KeyValue {key 1, create_revision 2, mod_revision 3, version 4, value 5,
    /// lease 6}, fields in number order, zero and empty fields omitted (as proto3 encoders do).
    /// HashKV hashes this form, so swetcd and etcd members with the same history agree.
    public func etcdEncoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(key.count + value.count + 40)
        ProtobufFields.appendBytes(1, key, to: &out)
        ProtobufFields.appendInt(2, createRevision, to: &out)
        ProtobufFields.appendInt(3, modRevision, to: &out)
        ProtobufFields.appendInt(4, version, to: &out)
        ProtobufFields.appendBytes(5, value, to: &out)
        ProtobufFields.appendInt(6, lease, to: &out)
        return out
    }

    /// The key and the index fields, without copying the value (for rebuilding the index).
    static func decodeHeader(_ b: UnsafeRawBufferPointer) throws -> (key: [UInt8], create: Int64, version: Int64) {
        guard b.count >= 36 else { throw MVCCError.corrupt("key-bucket value of \(b.count) bytes") }
        let n = Int(b[32]) << 24 | Int(b[33]) << 16 | Int(b[34]) << 8 | Int(b[35])
        guard 36 + n <= b.count else { throw MVCCError.corrupt("key length \(n) beyond value of \(b.count) bytes") }
        return (Array(b[36..<(36 + n)]), Int64(bitPattern: BigEndian.uint64(at: 0, of: b)),
                Int64(bitPattern: BigEndian.uint64(at: 16, of: b)))
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> KeyValue {
        guard b.count >= 36 else { throw MVCCError.corrupt("key-bucket value of \(b.count) bytes") }
        func int(_ at: Int) -> Int64 { Int64(bitPattern: BigEndian.uint64(at: at, of: b)) }
        let n = Int(b[32]) << 24 | Int(b[33]) << 16 | Int(b[34]) << 8 | Int(b[35])
        guard 36 + n <= b.count else { throw MVCCError.corrupt("key length \(n) beyond value of \(b.count) bytes") }
        return KeyValue(key: Array(b[36..<(36 + n)]), createRevision: int(0), modRevision: int(8),
                        version: int(16), value: Array(b[(36 + n)...]), lease: int(24))
    }
}

/// A change to the keyspace, as delivered to watchers.
public struct Event: Equatable, Sendable {
    public enum Kind: Sendable, Equatable { case put, delete }
    public var type: Kind
    /// For a delete: the key with `modRevision` set to the delete's revision, all else zero.
    public var kv: KeyValue
    /// The key's previous version, if the watcher asked for it and it is still retained.
    public var prevKv: KeyValue?

    public init(type: Kind, kv: KeyValue, prevKv: KeyValue? = nil) {
        self.type = type
        self.kv = kv
        self.prevKv = prevKv
    }
}

extension KeyValue {
    /// Decodes a `key`-bucket value of this store's backend (for format conversions).
    public init(backendValue: [UInt8]) throws {
        self = try backendValue.withUnsafeBytes { try KeyValue.decode($0) }
    }

    /// This version as a `key`-bucket value of this store's backend.
    public var backendValue: [UInt8] { encoded() }
}
