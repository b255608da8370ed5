/// A min-heap of (deadline, lease ID) pairs, earliest deadline first, ties by ID.
///
/// Entries are never updated in place: a lease whose deadline moves gets a new entry, and the
/// lessor discards entries that no longer match the lease when they reach the top.
struct LeaseDeadlineQueue {
    struct Entry: Equatable {
        var deadline: Int64
        var id: Int64

        func precedes(_ other: Entry) -> Bool {
            deadline != other.deadline ? deadline < other.deadline : id < other.id
        }
    }

    private(set) var entries: [Entry] = []

    var count: Int { entries.count }
    var first: Entry? { entries.first }

    mutating func removeAll() { entries.removeAll() }

    mutating func push(deadline: Int64, id: Int64) {
        entries.append(Entry(deadline: deadline, id: id))
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].precedes(entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    /// Removes and returns the first entry if its deadline is at or before `now`.
    mutating func popDue(at now: Int64) -> Entry? {
        guard let top = entries.first, top.deadline <= now else { return nil }
        return popFirst()
    }

    @discardableResult
    mutating func popFirst() -> Entry? {
        guard let top = entries.first else { return nil }
        let last = entries.removeLast()
        if !entries.isEmpty {
            entries[0] = last
            siftDown(from: 0)
        }
        return top
    }

    /// Keeps only the entries `isLive` accepts, then restores the heap order.
    mutating func retain(where isLive: (Entry) -> Bool) {
        entries.removeAll { !isLive($0) }
        var index = entries.count / 2
        while index > 0 {
            index -= 1
            siftDown(from: index)
        }
    }

    private mutating func siftDown(from start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < entries.count else { return }
            var best = left
            if left + 1 < entries.count && entries[left + 1].precedes(entries[left]) { best = left + 1 }
            guard entries[best].precedes(entries[parent]) else { return }
            entries.swapAt(parent, best)
            parent = best
        }
    }
}
