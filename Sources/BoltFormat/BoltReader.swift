import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The chosen meta page of a bbolt file.
public struct BoltMeta: Equatable, Sendable {
    public var pageSize: Int
    public var rootPage: UInt64
    public var freelistPage: UInt64
    /// Pages in use (the high-water mark).
    public var pageCount: UInt64
    public var txid: UInt64
}

/// Where a bucket's entries live: a page tree in the file, or a leaf page inline in its
/// parent's value (`offset`/`length` into the file).
public enum BoltBucketRef: Equatable, Sendable {
    case page(UInt64)
    case inline(offset: Int, length: Int)
}

/// Summary of a full consistency check.
public struct BoltCheckReport: Equatable, Sendable {
    public var buckets = 0
    public var keys = 0
    public var reachablePages = 0
    public var freePages = 0
}

/// Reads a bbolt file, trusting nothing in it: every offset, count and page id is checked
/// against the file before use, page trees are walked with a depth limit and a visited set (a
/// page reached twice is an error, so hostile files cannot make walks loop or blow up), keys
/// must ascend. Malformed input throws a `BoltError`; nothing traps.
public final class BoltReader: @unchecked Sendable {
    private let base: UnsafeRawPointer
    private let size: Int
    private let release: () -> Void
    public let meta: BoltMeta
    public var pageSize: Int { meta.pageSize }
    /// Nesting limit for branch levels plus bucket levels.
    public static let maxDepth = 64

    /// Reads from a copy of `bytes`.
    public convenience init(bytes: [UInt8]) throws {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(1, bytes.count), alignment: 16)
        bytes.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) } }
        try self.init(base: UnsafeRawPointer(p), size: bytes.count) { p.deallocate() }
    }

    /// Maps the file at `path` read-only, limited to its first `limit` bytes (e.g. without a
    /// snapshot's hash trailer).
    public convenience init(path: String, limit: Int64? = nil) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BoltError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw BoltError("cannot stat \(path): \(String(cString: strerror(errno)))") }
        var size = Int(st.st_size)
        if let limit { size = min(size, Int(clamping: max(0, limit))) }
        guard size > 0 else { throw BoltError("invalid database: \(path) is empty") }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw BoltError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        try self.init(base: UnsafeRawPointer(m), size: size) { munmap(m, size) }
    }

    private init(base: UnsafeRawPointer, size: Int, release: @escaping () -> Void) throws {
        self.base = base
        self.size = size
        self.release = release
        do {
            meta = try Self.chooseMeta(base: base, size: size)
        } catch {
            release()
            throw error
        }
    }

    deinit { release() }

    // MARK: raw access (every caller checks bounds first)

    @inline(__always) private func u16(_ o: Int) -> UInt16 { base.loadUnaligned(fromByteOffset: o, as: UInt16.self).littleEndian }
    @inline(__always) private func u32(_ o: Int) -> UInt32 { base.loadUnaligned(fromByteOffset: o, as: UInt32.self).littleEndian }
    @inline(__always) private func u64(_ o: Int) -> UInt64 { base.loadUnaligned(fromByteOffset: o, as: UInt64.self).littleEndian }
    private func bytes(_ o: Int, _ n: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: base + o, count: n)) }

    /// Whether the first page holds a bbolt meta (magic and version), to tell formats apart.
    public static func looksLikeBolt(_ head: [UInt8]) -> Bool {
        guard head.count >= 24 else { return false }
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(head[o + $1]) << (8 * UInt32($1)) } }
        return u32(16) == BoltLayout.magic && u32(20) == BoltLayout.version
    }

    private static func chooseMeta(base: UnsafeRawPointer, size: Int) throws -> BoltMeta {
        func parse(at pageOffset: Int) -> Result<BoltMeta, BoltError> {
            let o = pageOffset + BoltLayout.pageHeaderSize
            guard pageOffset >= 0, o + BoltLayout.metaSize <= size else { return .failure(BoltError("invalid database: file too small")) }
            func u32(_ x: Int) -> UInt32 { base.loadUnaligned(fromByteOffset: o + x, as: UInt32.self).littleEndian }
            func u64(_ x: Int) -> UInt64 { base.loadUnaligned(fromByteOffset: o + x, as: UInt64.self).littleEndian }
            guard u32(0) == BoltLayout.magic else { return .failure(BoltError("invalid database")) }
            guard u32(4) == BoltLayout.version else { return .failure(BoltError("version mismatch: \(u32(4))")) }
            let sum = BoltLayout.fnv64a(UnsafeRawBufferPointer(start: base + o, count: BoltLayout.metaChecksummedBytes))
            guard u64(56) == sum else { return .failure(BoltError("checksum error in meta page")) }
            let ps = Int(u32(8))
            guard BoltLayout.pageSizes.contains(ps), ps & (ps - 1) == 0 else {
                return .failure(BoltError("invalid database: page size \(ps)"))
            }
            let m = BoltMeta(pageSize: ps, rootPage: u64(16), freelistPage: u64(32), pageCount: u64(40), txid: u64(48))
            guard m.pageCount >= 3, m.pageCount <= UInt64(size / ps) else {
                return .failure(BoltError("invalid database: \(m.pageCount) pages in use but the file holds \(size / ps)"))
            }
            guard m.rootPage >= 2, m.rootPage < m.pageCount else {
                return .failure(BoltError("invalid database: root page \(m.rootPage) out of range"))
            }
            guard m.freelistPage == BoltLayout.noFreelist || (m.freelistPage >= 2 && m.freelistPage < m.pageCount) else {
                return .failure(BoltError("invalid database: freelist page \(m.freelistPage) out of range"))
            }
            return .success(m)
        }
        let first = parse(at: 0)
        var candidates: [BoltMeta] = []
        if case .success(let m) = first {
            candidates.append(m)
            if case .success(let m1) = parse(at: m.pageSize), m1.pageSize == m.pageSize { candidates.append(m1) }
        } else {
            // Meta 0 is damaged: look for meta 1 at each possible page size.
            var ps = BoltLayout.pageSizes.lowerBound
            while ps <= BoltLayout.pageSizes.upperBound {
                if case .success(let m1) = parse(at: ps), m1.pageSize == ps { candidates.append(m1); break }
                ps *= 2
            }
        }
        guard let best = candidates.max(by: { $0.txid < $1.txid }) else {
            if case .failure(let e) = first { throw e }
            throw BoltError("invalid database")
        }
        return best
    }

    // MARK: pages

    private struct Page {
        var offset: Int
        var span: Int
        var flags: UInt16
        var count: Int
        var overflow: Int
    }

    private func page(_ id: UInt64) throws -> Page {
        guard id >= 2, id < meta.pageCount else { throw BoltError("page \(id) out of range (\(meta.pageCount) pages)") }
        let offset = Int(id) * meta.pageSize
        guard u64(offset) == id else { throw BoltError("page \(id): header names page \(u64(offset))") }
        let overflow = Int(u32(offset + 12))
        guard UInt64(overflow) < meta.pageCount - id else { throw BoltError("page \(id): \(overflow) overflow pages run past the end") }
        return Page(offset: offset, span: (overflow + 1) * meta.pageSize, flags: u16(offset + 8),
                    count: Int(u16(offset + 10)), overflow: overflow)
    }

    /// Per-walk state: pages seen (each may be reached once) and the last key of the bucket.
    private final class Walk {
        var seen: [UInt64]
        init(pages: UInt64) { seen = [UInt64](repeating: 0, count: Int((pages + 63) / 64)) }
        func mark(_ id: UInt64, count: Int) throws {
            for i in 0..<UInt64(count) {
                let p = id + i
                let (w, b) = (Int(p / 64), p % 64)
                if seen[w] & (1 << b) != 0 { throw BoltError("page \(p): multiple references") }
                seen[w] |= 1 << b
            }
        }
        func isSeen(_ p: UInt64) -> Bool { seen[Int(p / 64)] & (1 << (p % 64)) != 0 }
    }

    /// One leaf entry: offsets into the file.
    private struct Entry {
        var flags: UInt32
        var keyOffset: Int, keyCount: Int
        var valueOffset: Int, valueCount: Int
    }

    private func compare(_ a: (Int, Int), _ b: (Int, Int)) -> Int {
        let r = memcmp(base + a.0, base + b.0, min(a.1, b.1))
        if r != 0 { return Int(r) }
        return a.1 < b.1 ? -1 : (a.1 > b.1 ? 1 : 0)
    }

    /// Visits the entries of a bucket in key order; `body` returns false to stop.
    private func walkBucket(_ ref: BoltBucketRef, walk: Walk, depth: Int, _ body: (Entry) throws -> Bool) throws {
        var last: (Int, Int)?
        func visitLeaf(start: Int, end: Int, count: Int, allowNested: Bool) throws -> Bool {
            guard count <= (end - start - BoltLayout.pageHeaderSize) / BoltLayout.elementSize else {
                throw BoltError("leaf at offset \(start): \(count) elements do not fit")
            }
            for i in 0..<count {
                let e = start + BoltLayout.pageHeaderSize + i * BoltLayout.elementSize
                let flags = u32(e), pos = Int(u32(e + 4)), ks = Int(u32(e + 8)), vs = Int(u32(e + 12))
                guard flags == 0 || (flags == BoltLayout.bucketElement && allowNested) else {
                    throw BoltError("leaf at offset \(start): element \(i) has flags \(flags)")
                }
                let k = e + pos
                guard pos <= end - e, ks <= end - k, vs <= end - k - ks else {
                    throw BoltError("leaf at offset \(start): element \(i) lies outside its page")
                }
                guard ks > 0 else { throw BoltError("leaf at offset \(start): element \(i) has an empty key") }
                if let l = last, compare(l, (k, ks)) >= 0 {
                    throw BoltError("leaf at offset \(start): keys out of order at element \(i)")
                }
                last = (k, ks)
                if try !body(Entry(flags: flags, keyOffset: k, keyCount: ks, valueOffset: k + ks, valueCount: vs)) { return false }
            }
            return true
        }
        func visitPage(_ id: UInt64, depth: Int) throws -> Bool {
            guard depth <= Self.maxDepth else { throw BoltError("page \(id): tree deeper than \(Self.maxDepth) levels") }
            let p = try page(id)
            try walk.mark(id, count: p.overflow + 1)
            switch p.flags {
            case BoltLayout.leafPage:
                return try visitLeaf(start: p.offset, end: p.offset + p.span, count: p.count, allowNested: true)
            case BoltLayout.branchPage:
                guard p.count >= 1, p.count <= (p.span - BoltLayout.pageHeaderSize) / BoltLayout.elementSize else {
                    throw BoltError("branch page \(id): bad element count \(p.count)")
                }
                let end = p.offset + p.span
                for i in 0..<p.count {
                    let e = p.offset + BoltLayout.pageHeaderSize + i * BoltLayout.elementSize
                    let pos = Int(u32(e)), ks = Int(u32(e + 4))
                    guard pos <= end - e, ks <= end - e - pos else {
                        throw BoltError("branch page \(id): element \(i) lies outside its page")
                    }
                    if try !visitPage(u64(e + 8), depth: depth + 1) { return false }
                }
                return true
            default:
                throw BoltError("page \(id): invalid page type \(p.flags) in a bucket")
            }
        }
        switch ref {
        case .page(let id):
            _ = try visitPage(id, depth: depth)
        case .inline(let offset, let length):
            guard length >= BoltLayout.pageHeaderSize else { throw BoltError("inline bucket of \(length) bytes") }
            guard u16(offset + 8) == BoltLayout.leafPage else { throw BoltError("inline bucket at offset \(offset) is not a leaf") }
            _ = try visitLeaf(start: offset, end: offset + length, count: Int(u16(offset + 10)), allowNested: false)
        }
    }

    /// The bucket a nested-bucket value stands for.
    private func bucketRef(valueOffset o: Int, count: Int) throws -> BoltBucketRef {
        guard count >= BoltLayout.bucketHeaderSize else { throw BoltError("bucket header of \(count) bytes") }
        let root = u64(o)
        if root == 0 { return .inline(offset: o + BoltLayout.bucketHeaderSize, length: count - BoltLayout.bucketHeaderSize) }
        guard count == BoltLayout.bucketHeaderSize else { throw BoltError("bucket value of \(count) bytes with root page \(root)") }
        return .page(root)
    }

    // MARK: public reading

    /// The root bucket (the bucket of top-level buckets).
    public var root: BoltBucketRef { .page(meta.rootPage) }

    /// Visits `bucket`'s entries in key order: `value` is nil for a nested bucket (`nested`
    /// then names it). Return false to stop.
    public func forEach(_ bucket: BoltBucketRef,
                        _ body: (_ key: [UInt8], _ value: [UInt8]?, _ nested: BoltBucketRef?) throws -> Bool) throws {
        let walk = Walk(pages: meta.pageCount)
        try walkBucket(bucket, walk: walk, depth: 0) { e in
            if e.flags == BoltLayout.bucketElement {
                return try body(bytes(e.keyOffset, e.keyCount), nil, try bucketRef(valueOffset: e.valueOffset, count: e.valueCount))
            }
            return try body(bytes(e.keyOffset, e.keyCount), bytes(e.valueOffset, e.valueCount), nil)
        }
    }

    /// The nested bucket `name` of `parent`, or nil.
    public func bucket(_ name: [UInt8], in parent: BoltBucketRef? = nil) throws -> BoltBucketRef? {
        var found: BoltBucketRef?
        try forEach(parent ?? root) { k, _, nested in
            if k == name {
                guard let nested else { throw BoltError("\(String(decoding: name, as: UTF8.self)) is a key, not a bucket") }
                found = nested
                return false
            }
            return true
        }
        return found
    }

    /// Checks the whole file as bbolt's `Tx.Check` does: every bucket tree well formed, every
    /// page referenced once, free pages valid and not in use, and every page below the
    /// high-water mark either reachable or free.
    public func check() throws -> BoltCheckReport {
        var report = BoltCheckReport()
        let walk = Walk(pages: meta.pageCount)
        try walk.mark(0, count: 2)
        var free: [UInt64] = []
        if meta.freelistPage != BoltLayout.noFreelist {
            let p = try page(meta.freelistPage)
            guard p.flags == BoltLayout.freelistPage else { throw BoltError("page \(meta.freelistPage): not a freelist page") }
            try walk.mark(meta.freelistPage, count: p.overflow + 1)
            var count = p.count
            var start = p.offset + BoltLayout.pageHeaderSize
            if count == 0xFFFF {
                let n = u64(start)
                guard n <= UInt64(p.span / 8) else { throw BoltError("freelist: \(n) ids do not fit its page") }
                count = Int(n)
                start += 8
            }
            guard count <= (p.offset + p.span - start) / 8 else { throw BoltError("freelist: \(count) ids do not fit its page") }
            for i in 0..<count {
                let id = u64(start + 8 * i)
                guard id >= 2, id < meta.pageCount else { throw BoltError("freelist: page \(id) out of range") }
                free.append(id)
            }
        }
        func checkBucket(_ ref: BoltBucketRef, depth: Int) throws {
            guard depth <= Self.maxDepth else { throw BoltError("buckets nested deeper than \(Self.maxDepth)") }
            report.buckets += 1
            try walkBucket(ref, walk: walk, depth: depth) { e in
                if e.flags == BoltLayout.bucketElement {
                    try checkBucket(try bucketRef(valueOffset: e.valueOffset, count: e.valueCount), depth: depth + 1)
                } else {
                    report.keys += 1
                }
                return true
            }
        }
        try checkBucket(root, depth: 0)
        report.buckets -= 1  // the root bucket is not counted
        let freed = Walk(pages: meta.pageCount)
        for id in free {
            if walk.isSeen(id) { throw BoltError("page \(id): freed but in use") }
            try freed.mark(id, count: 1)
        }
        if meta.freelistPage == BoltLayout.noFreelist {
            // No stored freelist (etcd's NoFreelistSync): bbolt takes every unreachable page as free.
            for id in 0..<meta.pageCount where !walk.isSeen(id) { free.append(id) }
        } else {
            for id in 0..<meta.pageCount where !walk.isSeen(id) && !freed.isSeen(id) {
                throw BoltError("page \(id): unreachable unfreed")
            }
        }
        report.freePages = free.count
        report.reachablePages = Int(meta.pageCount) - free.count
        return report
    }
}
