/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by the WAL records,
/// snapshot files and HashKV. Incremental: `CRC32C()` then `update(_:)` any number of times.
public struct CRC32C: Sendable, Hashable {
    public private(set) var value: UInt32

    public init(value: UInt32 = 0) { self.value = value }

    /// CRC of `bytes` in one call.
    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c = CRC32C()
        c.update(bytes)
        return c.value
    }

    public mutating func update<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        var crc = ~value
        let done: Void? = bytes.withContiguousStorageIfAvailable { buf in
            crc = CRC32C.run(crc, UnsafeRawBufferPointer(buf))
        }
        if done == nil {
            for b in bytes { crc = CRC32C.table0[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        }
        value = ~crc
    }

    public mutating func update(_ raw: UnsafeRawBufferPointer) {
        value = ~CRC32C.run(~value, raw)
    }

    /// Slicing-by-8 over the buffer.
    private static func run(_ start: UInt32, _ buf: UnsafeRawBufferPointer) -> UInt32 {
        var crc = start
        var i = 0
        let n = buf.count
        let t = tables
        while n - i >= 8 {
            let lo = UInt32(buf[i]) | UInt32(buf[i + 1]) << 8 | UInt32(buf[i + 2]) << 16 | UInt32(buf[i + 3]) << 24
            let hi = UInt32(buf[i + 4]) | UInt32(buf[i + 5]) << 8 | UInt32(buf[i + 6]) << 16 | UInt32(buf[i + 7]) << 24
            let x = crc ^ lo
            crc = t[7 * 256 + Int(x & 0xFF)] ^ t[6 * 256 + Int((x >> 8) & 0xFF)]
                ^ t[5 * 256 + Int((x >> 16) & 0xFF)] ^ t[4 * 256 + Int(x >> 24)]
                ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
            i += 8
        }
        while i < n {
            crc = t[Int((crc ^ UInt32(buf[i])) & 0xFF)] ^ (crc >> 8)
            i += 1
        }
        return crc
    }

    private static let table0: [UInt32] = Array(tables[0..<256])

    /// Eight 256-entry tables laid end to end: table k advances a byte through k+1 zero bytes.
    private static let tables: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[i] = c
        }
        for k in 1..<8 {
            for i in 0..<256 {
                let prev = t[(k - 1) * 256 + i]
                t[k * 256 + i] = t[Int(prev & 0xFF)] ^ (prev >> 8)
            }
        }
        return t
    }()
}
