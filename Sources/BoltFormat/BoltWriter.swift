import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a bbolt file in one pass, front to back, with bounded memory.
///
/// Pages are numbered in the order they are written, from 2 (0 and 1 are the meta pages, written
/// last). Each bucket is built by a ``BoltBucketBuilder``: entries go in ascending key order,
/// full leaf pages are written at once, and `finish` writes the branch levels above them (or,
/// for a small bucket without nested buckets, returns it inline). A nested bucket is finished
/// before it is put into its parent, so builders interleave freely: page ids of one bucket need
/// not be contiguous. The file has no free pages: the freelist page is empty.
public final class BoltWriter {
    public let pageSize: Int
    public let path: String
    private let fd: Int32
    private var nextPage: UInt64 = 2
    private var buffer: [UInt8] = []
    private var finished = false
    /// A page of zeros, for padding (appending a slice of it is one copy).
    private let zeros: [UInt8]
    /// Bytes of the finished file.
    public private(set) var fileSize: Int64 = 0

    /// Creates `path` (it must not exist) with mode 0600.
    public init(path: String, pageSize: Int = 4096) throws {
        guard BoltLayout.pageSizes.contains(pageSize), pageSize & (pageSize - 1) == 0 else {
            throw BoltError("page size \(pageSize) is not a power of two in \(BoltLayout.pageSizes)")
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BoltError("cannot create \(path): \(String(cString: strerror(errno)))") }
        self.fd = fd
        self.path = path
        self.pageSize = pageSize
        zeros = [UInt8](repeating: 0, count: pageSize)
        buffer.reserveCapacity(2 << 20)
        // Room for the two meta pages, written at the end.
        buffer += zeros
        buffer += zeros
    }

    deinit { close(fd) }

    /// A builder for a new bucket of this file.
    public func makeBucket() -> BoltBucketBuilder { BoltBucketBuilder(writer: self) }

    /// Writes a page (or, if `page` is longer than a page, a page with overflow pages) and
    /// returns its id. `page` starts with a header whose id and overflow are filled in here.
    func writePage(_ page: inout [UInt8]) throws -> UInt64 {
        precondition(!finished && page.count >= BoltLayout.pageHeaderSize)
        let pages = (page.count + pageSize - 1) / pageSize
        guard pages - 1 <= Int(UInt32.max) else { throw BoltError("a page of \(page.count) bytes is too large") }
        let id = nextPage
        nextPage += UInt64(pages)
        page.setLE(id, at: 0)
        page.setLE(UInt32(pages - 1), at: 12)
        buffer.append(contentsOf: page)
        buffer.append(contentsOf: zeros[0..<(pages * pageSize - page.count)])
        if buffer.count >= 1 << 20 { try flush() }
        return id
    }

    private func flush() throws {
        try buffer.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw BoltError("cannot write \(path): \(String(cString: strerror(errno)))") }
                done += n
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// Writes `root` (the bucket of buckets), an empty freelist and both meta pages (with
    /// transaction ids `txid` and `txid + 1`), then syncs the file.
    public func finish(root: BoltBucketBuilder, txid: UInt64 = 1, sync: Bool = true) throws {
        let rootPage = try root.finishPages()
        var freelist = pageHeader(flags: BoltLayout.freelistPage, count: 0)
        let freelistPage = try writePage(&freelist)
        let highWater = nextPage
        try flush()
        finished = true
        for i in 0..<2 {
            var page = pageHeader(flags: BoltLayout.metaPage, count: 0)
            page.setLE(UInt64(i), at: 0)
            var meta: [UInt8] = []
            meta.appendLE(BoltLayout.magic)
            meta.appendLE(BoltLayout.version)
            meta.appendLE(UInt32(pageSize))
            meta.appendLE(UInt32(0))
            meta.appendLE(rootPage)
            meta.appendLE(UInt64(0))
            meta.appendLE(freelistPage)
            meta.appendLE(highWater)
            meta.appendLE(txid + UInt64(i))
            meta.appendLE(BoltLayout.fnv64a(meta))
            page += meta
            page += zeros[0..<(pageSize - page.count)]
            let n = page.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, off_t(i * pageSize)) }
            guard n == pageSize else { throw BoltError("cannot write the meta page of \(path): \(String(cString: strerror(errno)))") }
        }
        if sync {
            guard fsync(fd) == 0 else { throw BoltError("cannot sync \(path): \(String(cString: strerror(errno)))") }
        }
        fileSize = Int64(highWater) * Int64(pageSize)
    }

    func pageHeader(flags: UInt16, count: UInt16) -> [UInt8] {
        var p: [UInt8] = []
        p.appendLE(UInt64(0))
        p.appendLE(flags)
        p.appendLE(count)
        p.appendLE(UInt32(0))
        return p
    }
}

/// One bucket being written: put entries (values or finished nested buckets) in strictly
/// ascending key order, then hand it to its parent (`putBucket`) or to `BoltWriter.finish`.
public final class BoltBucketBuilder {
    private let writer: BoltWriter
    private var pending: [(flags: UInt32, key: [UInt8], value: [UInt8])] = []
    private var pendingSize = BoltLayout.pageHeaderSize
    /// Leaf pages written so far: first key and page id.
    private var written: [(key: [UInt8], page: UInt64)] = []
    private var hasNestedBuckets = false
    private var lastKey: [UInt8]?
    private var done = false
    /// Entries put so far.
    public private(set) var count = 0

    init(writer: BoltWriter) { self.writer = writer }

    /// Adds a key/value pair; `key` must sort after every key put before.
    public func put(_ key: [UInt8], _ value: [UInt8]) throws {
        guard value.count <= BoltLayout.maxValueSize else { throw BoltError("value of \(value.count) bytes is too large") }
        try add(flags: 0, key: key, value: value)
    }

    /// Adds a finished nested bucket named `name`.
    public func putBucket(_ name: [UInt8], _ bucket: BoltBucketBuilder) throws {
        let value = try bucket.finishValue()
        hasNestedBuckets = true
        try add(flags: BoltLayout.bucketElement, key: name, value: value)
    }

    private func add(flags: UInt32, key: [UInt8], value: [UInt8]) throws {
        guard !done else { throw BoltError("bucket already finished") }
        guard !key.isEmpty, key.count <= BoltLayout.maxKeySize else {
            throw BoltError("key of \(key.count) bytes: keys must have 1 to \(BoltLayout.maxKeySize) bytes")
        }
        if let last = lastKey, !last.lexicographicallyPrecedes(key) {
            throw BoltError("keys must be put in strictly ascending order")
        }
        lastKey = key
        let size = BoltLayout.elementSize + key.count + value.count
        if !pending.isEmpty && (pendingSize + size > writer.pageSize || pending.count == Int(UInt16.max)) {
            try flushLeaf()
        }
        pending.append((flags, key, value))
        pendingSize += size
        count += 1
    }

    /// The pending entries as a leaf page (header id 0).
    private func leafPage() -> [UInt8] {
        var page = writer.pageHeader(flags: BoltLayout.leafPage, count: UInt16(pending.count))
        page.reserveCapacity(pendingSize)
        var dataOffset = BoltLayout.pageHeaderSize + pending.count * BoltLayout.elementSize
        for (i, e) in pending.enumerated() {
            let elementOffset = BoltLayout.pageHeaderSize + i * BoltLayout.elementSize
            page.appendLE(e.flags)
            page.appendLE(UInt32(dataOffset - elementOffset))
            page.appendLE(UInt32(e.key.count))
            page.appendLE(UInt32(e.value.count))
            dataOffset += e.key.count + e.value.count
        }
        for e in pending {
            page += e.key
            page += e.value
        }
        return page
    }

    private func flushLeaf() throws {
        var page = leafPage()
        let id = try writer.writePage(&page)
        written.append((pending.first?.key ?? [], id))
        pending.removeAll(keepingCapacity: true)
        pendingSize = BoltLayout.pageHeaderSize
    }

    /// The value that stands for this bucket in its parent: inline when small and flat (as
    /// bbolt does: at most a quarter page, no nested buckets), else a header naming its root.
    func finishValue() throws -> [UInt8] {
        guard !done else { throw BoltError("bucket already finished") }
        var value: [UInt8] = []
        if written.isEmpty && !hasNestedBuckets && pendingSize <= writer.pageSize / 4 {
            value.appendLE(UInt64(0))
            value.appendLE(UInt64(0))
            value += leafPage()
            done = true
            return value
        }
        value.appendLE(try finishPages())
        value.appendLE(UInt64(0))
        return value
    }

    /// Writes the remaining leaf and the branch pages; returns the root page id.
    func finishPages() throws -> UInt64 {
        guard !done else { throw BoltError("bucket already finished") }
        done = true
        if !pending.isEmpty || written.isEmpty { try flushLeaf() }
        var level = written
        written = []
        while level.count > 1 {
            var next: [(key: [UInt8], page: UInt64)] = []
            var group: [(key: [UInt8], page: UInt64)] = []
            var size = BoltLayout.pageHeaderSize
            func flushBranch() throws {
                var page = writer.pageHeader(flags: BoltLayout.branchPage, count: UInt16(group.count))
                var keyOffset = BoltLayout.pageHeaderSize + group.count * BoltLayout.elementSize
                for (i, e) in group.enumerated() {
                    let elementOffset = BoltLayout.pageHeaderSize + i * BoltLayout.elementSize
                    page.appendLE(UInt32(keyOffset - elementOffset))
                    page.appendLE(UInt32(e.key.count))
                    page.appendLE(e.page)
                    keyOffset += e.key.count
                }
                for e in group { page += e.key }
                let id = try writer.writePage(&page)
                next.append((group[0].key, id))
                group.removeAll(keepingCapacity: true)
                size = BoltLayout.pageHeaderSize
            }
            for e in level {
                let s = BoltLayout.elementSize + e.key.count
                // At least two children per branch page, so every level shrinks.
                if group.count >= 2 && size + s > writer.pageSize { try flushBranch() }
                group.append(e)
                size += s
            }
            if !group.isEmpty { try flushBranch() }
            level = next
        }
        return level[0].page
    }
}
