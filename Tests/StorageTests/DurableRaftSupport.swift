import Foundation
import Raft
import Testing
@testable import Storage

/// The test state machine: the list of proposal payloads applied, in order. Its snapshot
/// encoding is each payload prefixed by its 4-byte little-endian length.
func drEncodeState(_ items: [[UInt8]]) -> [UInt8] {
    var b: [UInt8] = []
    for i in items {
        b.appendLE(UInt32(i.count))
        b += i
    }
    return b
}

func drDecodeState(_ b: [UInt8]) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    var p = 0
    while p < b.count {
        try #require(p + 4 <= b.count)
        let n = Int(b.withUnsafeBytes { $0.loadLE(UInt32.self, at: p) })
        p += 4
        try #require(p + n <= b.count)
        out.append(Array(b[p..<(p + n)]))
        p += n
    }
    return out
}

/// A synchronous cluster of `RaftNode`s in which one member (`durableID`) keeps its log in a
/// `DurableRaftStorage` and the others in `MemoryStorage`. Messages are delivered in rounds
/// until quiet; isolated nodes neither send nor receive.
final class DRCluster {
    var nodes: [UInt64: RaftNode] = [:]
    var mem: [UInt64: MemoryStorage] = [:]
    var durable: DurableRaftStorage?
    let durableID: UInt64
    /// Applied payloads per node, and the applied index.
    var state: [UInt64: [[UInt8]]] = [:]
    var applied: [UInt64: UInt64] = [:]
    var isolated: Set<UInt64> = []
    /// When not empty, messages only flow within a group.
    var groups: [Set<UInt64>] = []
    /// Called after the durable member persisted a Ready (with `persist`'s result).
    var onPersist: ((Ready, Bool) throws -> Void)?

    init(ids: [UInt64], durableID: UInt64, durable: DurableRaftStorage) throws {
        self.durableID = durableID
        self.durable = durable
        let cs = ConfState(voters: ids)
        if durable.recovery.isNew { try durable.bootstrap(cs) }
        for id in ids where id != durableID {
            let s = MemoryStorage()
            try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: cs)))
            mem[id] = s
            nodes[id] = try RaftNode(config: Self.config(id), storage: s)
            state[id] = []
            applied[id] = 0
        }
        try restartDurable(durable)
    }

    /// A one-member cluster on a durable storage opened in `dd`, already leading.
    static func singleLeader(_ dd: DataDir, _ meta: WALMetadata, _ options: DurableRaftOptions) throws -> DRCluster {
        let c = try DRCluster(ids: [1], durableID: 1, durable: try DurableRaftStorage.open(dd, newMember: meta, options: options))
        try c.nodes[1]!.campaign()
        try c.settle()
        try #require(c.leader == 1)
        return c
    }

    static func config(_ id: UInt64) -> RaftConfig {
        var c = RaftConfig(id: id)
        c.seed = id
        return c
    }

    /// (Re)creates the durable member's node on `d`, rebuilding its state machine from the
    /// recovered snapshot; committed entries after it are handed out again by the node.
    func restartDurable(_ d: DurableRaftStorage) throws {
        durable = d
        let snap = d.recovery.snapshot
        state[durableID] = try drDecodeState(snap.data)
        applied[durableID] = snap.metadata.index
        nodes[durableID] = try RaftNode(config: Self.config(durableID), storage: d.raftStorage)
    }

    func storage(_ id: UInt64) -> MemoryStorage { id == durableID ? durable!.memory : mem[id]! }

    var leader: UInt64? { nodes.values.filter { $0.softState.role == .leader }.max { $0.hardState.term < $1.hardState.term }?.id }

    /// Persists, applies and advances one node's Ready; returns its messages.
    func process(_ id: UInt64) throws -> [Message] {
        guard let n = nodes[id], n.hasReady else { return [] }
        let rd = try n.ready()
        if id == durableID {
            let synced = try durable!.persist(rd)
            try onPersist?(rd, synced)
        } else {
            let s = mem[id]!
            if let snap = rd.snapshot { try s.applySnapshot(snap) }
            try s.append(rd.entries)
            if let hs = rd.hardState { s.setHardState(hs) }
        }
        if let snap = rd.snapshot {
            state[id] = try drDecodeState(snap.data)
            applied[id] = snap.metadata.index
        }
        for e in rd.committedEntries {
            if e.type == .normal && !e.data.isEmpty { state[id, default: []].append(e.data) }
            applied[id] = e.index
        }
        try n.advance(rd)
        return rd.messages
    }

    /// Runs rounds until no node has work; bounded.
    func settle() throws {
        for _ in 0..<1000 {
            var msgs: [Message] = []
            for id in nodes.keys.sorted() { msgs += try process(id) }
            if msgs.isEmpty && !nodes.values.contains(where: \.hasReady) { return }
            for m in msgs where connected(m.from, m.to) {
                guard let to = nodes[m.to] else { continue }
                try to.step(m)
                if m.type == .snapshot { try nodes[m.from]?.reportSnapshot(m.to, success: true) }
            }
        }
        Issue.record("cluster did not settle")
    }

    func connected(_ a: UInt64, _ b: UInt64) -> Bool {
        if isolated.contains(a) || isolated.contains(b) { return false }
        return groups.isEmpty || groups.contains { $0.contains(a) && $0.contains(b) }
    }

    /// Ticks every node `n` times, settling after each round.
    func tickAll(_ n: Int) throws {
        for _ in 0..<n {
            for id in nodes.keys.sorted() { try nodes[id]!.tick() }
            try settle()
        }
    }

    func tick(_ id: UInt64, _ n: Int = 1) throws {
        for _ in 0..<n {
            try nodes[id]!.tick()
            try settle()
        }
    }

    /// Snapshot of `id`'s state machine at its applied index, then memory compaction.
    func snapshot(_ id: UInt64, keeping: UInt64) throws {
        let idx = applied[id]!
        let cs = nodes[id]!.status.confState
        let data = drEncodeState(state[id]!)
        if id == durableID {
            try durable!.createSnapshot(index: idx, confState: cs, data: data)
            try durable!.compact(keeping: keeping)
        } else {
            try mem[id]!.createSnapshot(index: idx, confState: cs, data: data)
            if idx > keeping { try mem[id]!.compact(idx - keeping) }
        }
    }

    /// All entries `id`'s storage holds after its snapshot.
    func log(_ id: UInt64) throws -> [Entry] {
        let s = storage(id)
        let first = try s.firstIndex(), last = try s.lastIndex()
        return first > last ? [] : try s.entries(first, last + 1, maxBytes: .max)
    }
}

/// A payload of random length and bytes.
func drPayload(_ rng: inout SplitMix64, max: Int = 300) -> [UInt8] {
    walBytes(Int.random(in: 1...max, using: &rng), &rng)
}

/// Reads a seed override from the environment, or returns the given seeds.
func drSeeds(_ env: String, _ defaults: [UInt64]) -> [UInt64] {
    if let s = ProcessInfo.processInfo.environment[env], let v = UInt64(s) { return [v] }
    return defaults
}
