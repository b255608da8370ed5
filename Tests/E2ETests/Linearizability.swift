import Foundation

/// One operation of a recorded client history on a key-value store: a put of a value or a
/// read that returned a value (`nil`: the key was absent).
///
/// `end == nil` means the client never learnt the outcome (the request failed or timed out):
/// the operation may have taken effect at any moment after `start`, or never. Reads whose
/// outcome is unknown tell nothing and are left out of a history.
struct HistoryOp: Sendable, CustomStringConvertible {
    enum Kind: Sendable, Equatable {
        case put(String)
        case get(String?)
        /// A conditional write, as kube-apiserver makes them: put `new` if the key holds
        /// `expected` (nil: the key is absent, a create guarded by create_revision == 0), else
        /// change nothing. Compare-and-swap by mod_revision maps to this when every write
        /// stores a distinct value (a revision then names exactly one value). `succeeded` is
        /// the answer the client got; with an unknown outcome (`end == nil`) it is ignored.
        case cas(expected: String?, new: String, succeeded: Bool)
    }
    let client: Int
    let key: String
    let kind: Kind
    /// Nanoseconds since the history began, taken before the request was sent.
    let start: UInt64
    /// Nanoseconds since the history began, taken after the response arrived; nil if unknown.
    let end: UInt64?

    var description: String {
        let what = switch kind {
        case .put(let v): "put \(key)=\(v)"
        case .get(let v): "get \(key) -> \(v ?? "(absent)")"
        case .cas(let e, let n, let ok): "cas \(key) \(e ?? "(absent)") -> \(n): \(ok ? "succeeded" : "failed")"
        }
        return "client \(client) \(what) [\(start), \(end.map(String.init) ?? "?")]"
    }
}

/// Decides whether a history of puts and gets is linearizable: whether every operation can be
/// placed at one instant between its start and its end so that, in that order, each get
/// returns the value of the latest preceding put of its key.
///
/// Keys are independent registers, so the history is split per key and each part is checked
/// on its own (linearizability is compositional). Per key the search is the classic one of
/// Wing and Gong with Lowe's memoisation: walk the events in time order; at a call, try to
/// place that operation now (if the register allows it and the pair (set of placed
/// operations, register value) was not tried before); at a return whose operation is not yet
/// placed, undo the last choice. An operation whose outcome is unknown has its return at
/// infinity, so it may also be placed after everything else, which is the same as never.
enum LinearizabilityChecker {
    struct Failure: Sendable, CustomStringConvertible {
        let key: String
        let operations: [HistoryOp]
        var description: String {
            "history of key \(key) is not linearizable (\(operations.count) operations):\n"
                + operations.sorted { $0.start < $1.start }.map { "  \($0)" }.joined(separator: "\n")
        }
    }

    /// Returns nil when the history is linearizable, else the first key whose history is not.
    static func check(_ history: [HistoryOp]) -> Failure? {
        let byKey = Dictionary(grouping: history, by: \.key)
        for key in byKey.keys.sorted() {
            let ops = byKey[key] ?? []
            if !checkRegister(ops) { return Failure(key: key, operations: ops) }
        }
        return nil
    }

    /// One key: a register that starts absent.
    static func checkRegister(_ ops: [HistoryOp]) -> Bool {
        let n = ops.count
        if n == 0 { return true }
        // Events: call of op i at start, return at end (unknown: after every known event).
        struct Event { let time: UInt64; let isCall: Bool; let op: Int }
        var events: [Event] = []
        events.reserveCapacity(2 * n)
        for (i, o) in ops.enumerated() {
            events.append(Event(time: o.start, isCall: true, op: i))
            events.append(Event(time: o.end ?? .max, isCall: false, op: i))
        }
        // At equal times calls come after returns: operations that merely touch are ordered.
        events.sort { a, b in
            if a.time != b.time { return a.time < b.time }
            if a.isCall != b.isCall { return !a.isCall }
            return a.op < b.op
        }
        // A doubly linked list over the events (index events.count is the head sentinel).
        let head = events.count
        var next = Array(repeating: -1, count: events.count + 1)
        var prev = Array(repeating: -1, count: events.count + 1)
        var returnOf = Array(repeating: 0, count: n)
        var last = head
        for (i, e) in events.enumerated() {
            next[last] = i
            prev[i] = last
            last = i
            if !e.isCall { returnOf[e.op] = i }
        }
        func unlink(_ i: Int) {
            next[prev[i]] = next[i]
            if next[i] >= 0 { prev[next[i]] = prev[i] }
        }
        func relink(_ i: Int) {
            next[prev[i]] = i
            if next[i] >= 0 { prev[next[i]] = i }
        }

        struct Memo: Hashable { var placed: [UInt64]; var value: String? }
        var placed = Array(repeating: UInt64(0), count: (n + 63) / 64)
        var value: String? = nil
        var tried = Set<Memo>()
        var stack: [(call: Int, before: String?)] = []
        var cursor = next[head]
        while cursor >= 0 {
            let e = events[cursor]
            if e.isCall {
                let op = ops[e.op]
                var after: String?? = nil   // the register after placing op here, nil if impossible
                switch op.kind {
                case .put(let v): after = .some(v)
                case .get(let v): if v == value { after = .some(value) }
                case .cas(let expected, let new, let succeeded):
                    if op.end == nil {
                        // Unknown outcome: wherever it is placed, it either applied (its
                        // condition held) or changed nothing (it did not); placing it after
                        // everything else is the same as never.
                        after = .some(expected == value ? new : value)
                    } else if succeeded, expected == value {
                        after = .some(new)
                    } else if !succeeded, expected != value {
                        after = .some(value)
                    }
                }
                if let newValue = after {
                    var p = placed
                    p[e.op / 64] |= 1 << UInt64(e.op % 64)
                    if tried.insert(Memo(placed: p, value: newValue)).inserted {
                        stack.append((cursor, value))
                        placed = p
                        value = newValue
                        unlink(cursor)
                        unlink(returnOf[e.op])
                        cursor = next[head]
                        continue
                    }
                }
                cursor = next[cursor]
            } else {
                // The operation returned without being placed: undo the latest placement.
                guard let (call, before) = stack.popLast() else { return false }
                let op = events[call].op
                placed[op / 64] &= ~(1 << UInt64(op % 64))
                value = before
                relink(returnOf[op])
                relink(call)
                cursor = next[call]
            }
        }
        return true
    }
}
