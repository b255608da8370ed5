import Raft
import Testing
@testable import MVCC

@Suite struct KeyIndexTests {
    /// Thousands of random inserts and removes (many chunk splits and empty chunks) against a
    /// sorted array; every lookup and random range scan must agree.
    @Test(arguments: modelSeeds(default: 2))
    func orderedKeyMapMatchesSortedArray(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var map = OrderedKeyMap()
        var ref = Set<[UInt8]>()
        func randomKey() -> [UInt8] {
            (0..<Int.random(in: 1...3, using: &rng)).map { _ in UInt8.random(in: 0...40, using: &rng) }
        }
        for step in 0..<12_000 {
            let k = randomKey()
            if Bool.random(using: &rng) || step < 5_000 {
                _ = map.getOrInsert(k)
                ref.insert(k)
            } else {
                map.remove(k)
                ref.remove(k)
            }
        }
        let sorted = ref.sorted { $0.lexicographicallyPrecedes($1) }
        #expect(map.count == sorted.count, "seed \(seed)")
        var all: [[UInt8]] = []
        map.scan(from: [], to: nil) { all.append($0.key); return true }
        #expect(all == sorted, "seed \(seed)")
        for _ in 0..<150 {
            let a = randomKey(), b = randomKey()
            var got: [[UInt8]] = []
            map.scan(from: a, to: b) { got.append($0.key); return true }
            let want = sorted.filter { !$0.lexicographicallyPrecedes(a) && $0.lexicographicallyPrecedes(b) }
            #expect(got == want, "seed \(seed) [\(a), \(b))")
            let k = randomKey()
            #expect((map.get(k) != nil) == ref.contains(k), "seed \(seed) get \(k)")
        }
        var firstTwo: [[UInt8]] = []
        map.scan(from: [], to: nil) { firstTwo.append($0.key); return firstTwo.count < 2 }
        #expect(firstTwo == Array(sorted.prefix(2)))
    }

    @Test func generationsAndCompaction() {
        let ki = KeyIndex(key: [1])
        ki.put(Revision(main: 2))
        ki.put(Revision(main: 4))
        ki.tombstone(Revision(main: 6))
        ki.put(Revision(main: 8))
        ki.put(Revision(main: 9, sub: 1))
        #expect(ki.get(at: 1) == nil)
        #expect(ki.get(at: 3)?.modified == Revision(main: 2))
        #expect(ki.get(at: 5)?.version == 2)
        #expect(ki.get(at: 6) == nil && ki.get(at: 7) == nil)
        #expect(ki.get(at: 9)?.version == 2 && ki.get(at: 9)?.created == Revision(main: 8))
        var keep = Set<Revision>()
        ki.keep(5, into: &keep)
        #expect(keep == [Revision(main: 4)])
        keep = []
        ki.compact(7, keep: &keep)
        #expect(keep.isEmpty, "the generation ending at 6 is gone, the next starts at 8")
        #expect(ki.get(at: 7) == nil && ki.get(at: 8)?.modified == Revision(main: 8))
        ki.compact(9, keep: &keep)
        #expect(keep == [Revision(main: 9, sub: 1)])
        #expect(ki.get(at: 8) == nil, "revision 8 compacted away")
        ki.tombstone(Revision(main: 10))
        keep = []
        ki.compact(10, keep: &keep)
        #expect(ki.isEmpty && keep.isEmpty)
    }
}
