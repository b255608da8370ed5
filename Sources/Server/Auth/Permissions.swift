import EtcdProto
import LMDBBackend

/// A key interval `[from, to)` in etcd's range conventions; `to == nil` is unbounded.
struct KeyInterval: Equatable, Sendable, CustomStringConvertible {
    var from: [UInt8]
    var to: [UInt8]?

    /// etcd's request/permission shape: an empty `rangeEnd` is the single key, `\0` every key
    /// from `key` on (and `key == \0` with `rangeEnd == \0` every key).
    init(key: [UInt8], rangeEnd: [UInt8]) {
        from = key == [0] && rangeEnd == [0] ? [] : key
        if rangeEnd.isEmpty { to = key + [0] } else if rangeEnd == [0] { to = nil } else { to = rangeEnd }
    }

    init(from: [UInt8], to: [UInt8]?) {
        self.from = from
        self.to = to
    }

    /// Nothing in it (an end at or before the start).
    var isEmpty: Bool { to.map { compareBytes($0, from) <= 0 } ?? false }

    var description: String { "[\(from), \(to.map { "\($0)" } ?? "∞"))" }
}

/// The keys a user may read and write: the union of its roles' permissions, merged into
/// disjoint sorted intervals per access kind. A request is permitted when one merged interval
/// covers it whole (etcd's rule: a range needs permission on every key it could name).
struct KeyPermissions: Sendable, Equatable {
    private(set) var read: [KeyInterval] = []
    private(set) var write: [KeyInterval] = []

    init(_ permissions: [Authpb_Permission]) {
        var r: [KeyInterval] = [], w: [KeyInterval] = []
        for p in permissions {
            let iv = KeyInterval(key: [UInt8](p.key), rangeEnd: [UInt8](p.rangeEnd))
            if iv.isEmpty { continue }
            switch p.permType {
            case .read: r.append(iv)
            case .write: w.append(iv)
            case .readwrite:
                r.append(iv)
                w.append(iv)
            case .UNRECOGNIZED: continue
            }
        }
        read = Self.merge(r)
        write = Self.merge(w)
    }

    /// Sorted, overlapping or touching intervals joined.
    static func merge(_ list: [KeyInterval]) -> [KeyInterval] {
        let sorted = list.sorted { compareBytes($0.from, $1.from) < 0 }
        var out: [KeyInterval] = []
        for iv in sorted {
            if var last = out.last, last.to.map({ compareBytes(iv.from, $0) <= 0 }) ?? true {
                // Overlaps or touches the previous one: extend it.
                if let lt = last.to { last.to = iv.to.map { compareBytes($0, lt) > 0 ? $0 : lt } } else { last.to = nil }
                out[out.count - 1] = last
            } else {
                out.append(iv)
            }
        }
        return out
    }

    /// Whether every key of `[key, rangeEnd)` (etcd conventions) may be read / written.
    func permits(key: [UInt8], rangeEnd: [UInt8], write isWrite: Bool) -> Bool {
        let want = KeyInterval(key: key, rangeEnd: rangeEnd)
        if want.isEmpty { return true }
        for iv in isWrite ? write : read where compareBytes(iv.from, want.from) <= 0 {
            switch (iv.to, want.to) {
            case (nil, _): return true
            case (let have?, let need?): if compareBytes(need, have) <= 0 { return true }
            case (_?, nil): continue
            }
        }
        return false
    }
}
