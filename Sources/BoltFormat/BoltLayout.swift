// bbolt's on-disk layout (the file format of etcd's backend), as constants and small helpers.
//
// A file is a sequence of pages of `pageSize` bytes (4096 here). Every page starts with a
// 16-byte header: page id (u64), flags (u16), element count (u16), overflow (u32: how many
// further pages the page spans). All integers are little-endian (the byte order of the
// machines etcd runs on; bbolt writes native order).
//
// - Pages 0 and 1 are meta pages. After the header: magic (u32 0xED0CDAED), version (u32 2),
//   page size (u32), flags (u32), the root bucket (root page id u64, sequence u64), the
//   freelist page id (u64), the high-water mark (u64: pages in use), the transaction id (u64)
//   and an FNV-64a checksum (u64) of the 56 bytes before it. A reader uses the valid meta with
//   the higher transaction id.
// - A freelist page lists free page ids (u64 each, sorted); a count of 0xFFFF means the real
//   count is the first u64 after the header.
// - Branch pages hold elements {pos u32, key size u32, child page id u64}; leaf pages hold
//   {flags u32, pos u32, key size u32, value size u32}. `pos` is the distance from the
//   element itself to its key; a leaf value follows its key. Element flag 1 marks a nested
//   bucket: its value is a bucket header {root page id u64, sequence u64}; when the root is 0
//   the bucket is inline and a leaf page (header and elements) follows the header in the value.
// - The root bucket holds the top-level buckets (etcd's `key`, `meta`, `lease`, ...).

/// bbolt's constants.
public enum BoltLayout {
    public static let magic: UInt32 = 0xED0C_DAED
    public static let version: UInt32 = 2
    public static let pageHeaderSize = 16
    public static let elementSize = 16
    public static let bucketHeaderSize = 16
    /// Bytes of the meta struct covered by the checksum (everything before it).
    public static let metaChecksummedBytes = 56
    public static let metaSize = 64
    public static let branchPage: UInt16 = 0x01
    public static let leafPage: UInt16 = 0x02
    public static let metaPage: UInt16 = 0x04
    public static let freelistPage: UInt16 = 0x10
    /// Leaf element flag of a nested bucket.
    public static let bucketElement: UInt32 = 0x01
    /// bbolt's key and value limits.
    public static let maxKeySize = 32768
    public static let maxValueSize = (1 << 31) - 2
    /// The freelist id meaning "no freelist stored".
    public static let noFreelist = UInt64.max
    /// Page sizes a reader accepts.
    public static let pageSizes: ClosedRange<Int> = 512...65536

    /// FNV-64a of `bytes` (bbolt's meta checksum).
    public static func fnv64a<C: Collection>(_ bytes: C) -> UInt64 where C.Element == UInt8 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return h
    }
}

/// A malformed file or a misuse of the writer: the message says what and where.
public struct BoltError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Array where Element == UInt8 {
    @inline(__always) mutating func appendLE(_ v: UInt64) {
        for i in 0..<8 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }
    @inline(__always) mutating func appendLE(_ v: UInt32) {
        for i in 0..<4 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
    }
    @inline(__always) mutating func appendLE(_ v: UInt16) {
        append(UInt8(truncatingIfNeeded: v))
        append(UInt8(truncatingIfNeeded: v >> 8))
    }
    @inline(__always) mutating func setLE(_ v: UInt64, at o: Int) {
        for i in 0..<8 { self[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
    @inline(__always) mutating func setLE(_ v: UInt32, at o: Int) {
        for i in 0..<4 { self[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
    @inline(__always) mutating func setLE(_ v: UInt16, at o: Int) {
        self[o] = UInt8(truncatingIfNeeded: v)
        self[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
}
