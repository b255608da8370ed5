/// Just enough of the protobuf wire format to read the few messages etcd stores in its backend
/// (mvccpb.KeyValue, etcdserverpb.AlarmMember): varints and length-delimited bytes. Writing
/// uses MVCC's ``ProtobufFields``.
enum ProtoWire {
    enum Value {
        case varint(UInt64)
        case bytes(Range<Int>)
        case fixed
    }

    /// Visits every field of `bytes`; throws `EtcdSnapshotError` on malformed input.
    static func fields(_ bytes: [UInt8], what: String, _ body: (UInt64, Value) throws -> Void) throws {
        var i = 0
        func varint() throws -> UInt64 {
            var v: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard i < bytes.count else { throw EtcdSnapshotError("\(what): truncated varint") }
                let b = bytes[i]
                i += 1
                guard shift < 64 else { throw EtcdSnapshotError("\(what): varint too long") }
                v |= UInt64(b & 0x7F) << shift
                if b < 0x80 { return v }
                shift += 7
            }
        }
        while i < bytes.count {
            let tag = try varint()
            let field = tag >> 3
            guard field > 0 else { throw EtcdSnapshotError("\(what): field number 0") }
            switch tag & 7 {
            case 0: try body(field, .varint(try varint()))
            case 1, 5:
                let n = tag & 7 == 1 ? 8 : 4
                guard bytes.count - i >= n else { throw EtcdSnapshotError("\(what): truncated fixed field") }
                i += n
                try body(field, .fixed)
            case 2:
                let n = try varint()
                guard n <= UInt64(bytes.count - i) else { throw EtcdSnapshotError("\(what): field \(field) runs past the end") }
                try body(field, .bytes(i..<(i + Int(n))))
                i += Int(n)
            default:
                throw EtcdSnapshotError("\(what): unsupported wire type \(tag & 7)")
            }
        }
    }
}

/// A snapshot that cannot be converted: the message says what is wrong.
public struct EtcdSnapshotError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
