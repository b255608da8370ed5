/// The two protobuf field kinds etcd's stored records use (varint and length-delimited
/// bytes), written as proto3 encoders write them: zero and empty fields omitted. Shared by the
/// lease record (``PersistedLease/encoded()``), etcd's key-value form (``KeyValue/etcdEncoded()``)
/// and the etcd snapshot writer's records (EtcdSnapshot).
public enum ProtobufFields {
    public static func appendVarint(_ v: UInt64, to out: inout [UInt8]) {
        var bits = v
        while bits >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: bits) | 0x80)
            bits >>= 7
        }
        out.append(UInt8(bits))
    }

    /// A varint field (wire type 0); omitted when zero.
    public static func appendInt(_ field: UInt64, _ v: Int64, to out: inout [UInt8]) {
        guard v != 0 else { return }
        appendVarint(field << 3, to: &out)
        appendVarint(UInt64(bitPattern: v), to: &out)
    }

    /// A bytes field (wire type 2); omitted when empty.
    public static func appendBytes(_ field: UInt64, _ b: [UInt8], to out: inout [UInt8]) {
        guard !b.isEmpty else { return }
        appendVarint(field << 3 | 2, to: &out)
        appendVarint(UInt64(b.count), to: &out)
        out += b
    }
}
