@testable import Raft

/// A synchronous in-memory cluster for unit tests: messages are delivered in rounds until
/// quiet; `cut` links drop messages.
final class TestCluster {
    var nodes: [UInt64: RaftNode] = [:]
    var storages: [UInt64: MemoryStorage] = [:]
    var configs: [UInt64: RaftConfig] = [:]
    var applied: [UInt64: [Entry]] = [:]
    var readStates: [UInt64: [ReadState]] = [:]
    /// Dropped directed links (from, to).
    var cut: Set<[UInt64]> = []
    /// Drops messages it returns true for.
    var dropIf: ((Message) -> Bool)?
    /// Messages dropped by `cut`, for inspection.
    var dropped: [Message] = []
    /// Every message delivered, for inspection.
    var delivered: [Message] = []

    /// The initial configuration every node starts from (index 0).
    let initial: ConfState

    /// Storage for a node joining later: it knows the initial configuration and replays the
    /// membership changes from the log.
    func joinerStorage() throws -> MemoryStorage {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: initial)))
        return s
    }

    init(voters: [UInt64], learners: [UInt64] = [], configure: (inout RaftConfig) -> Void = { _ in }) throws {
        let cs = ConfState(voters: voters, learners: learners)
        initial = cs
        for id in voters + learners {
            let s = MemoryStorage()
            try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: cs)))
            var c = RaftConfig(id: id)
            c.seed = id
            configure(&c)
            try add(id, storage: s, config: c)
        }
    }

    func add(_ id: UInt64, storage: MemoryStorage, config: RaftConfig) throws {
        storages[id] = storage
        configs[id] = config
        nodes[id] = try RaftNode(config: config, storage: storage)
        applied[id] = applied[id] ?? []
    }

    subscript(_ id: UInt64) -> RaftNode { nodes[id]! }

    var leader: UInt64? {
        nodes.values.filter { $0.role == .leader }.max { $0.term < $1.term }?.id
    }

    func isolate(_ id: UInt64) {
        for other in nodes.keys where other != id {
            cut.insert([id, other])
            cut.insert([other, id])
        }
    }

    func heal() { cut = [] }

    /// Persists, applies and advances one node's Ready; returns its messages.
    @discardableResult
    func process(_ id: UInt64) throws -> [Message] {
        guard let n = nodes[id], n.hasReady else { return [] }
        let rd = try n.ready()
        let s = storages[id]!
        if let snap = rd.snapshot { try s.applySnapshot(snap) }
        try s.append(rd.entries)
        if let hs = rd.hardState { s.setHardState(hs) }
        for e in rd.committedEntries {
            applied[id, default: []].append(e)
            switch e.type {
            case .confChange: try n.applyConfChange(try ConfChange(decoding: e.data))
            case .confChangeV2: try n.applyConfChange(try ConfChangeV2(decoding: e.data))
            case .normal: break
            }
        }
        readStates[id, default: []].append(contentsOf: rd.readStates)
        try n.advance(rd)
        return rd.messages
    }

    /// Runs Ready/deliver rounds until nothing moves (bounded).
    func settle(maxRounds: Int = 200) throws {
        for _ in 0..<maxRounds {
            var msgs: [Message] = []
            var busy = false
            for id in nodes.keys.sorted() {
                // A leader's own write counts at advance, which can commit with no message.
                if nodes[id]!.hasReady { busy = true }
                msgs += try process(id)
            }
            if msgs.isEmpty && !busy { return }
            for m in msgs { try deliver(m) }
        }
    }

    func deliver(_ m: Message) throws {
        if cut.contains([m.from, m.to]) || nodes[m.to] == nil || dropIf?(m) == true {
            dropped.append(m)
            return
        }
        delivered.append(m)
        do {
            try nodes[m.to]!.step(m)
        } catch RaftError.proposalDropped {
        } catch RaftError.rejectedMessage(.unknownPeer, _) {
        }
    }

    func tick(_ id: UInt64, _ n: Int = 1) throws {
        for _ in 0..<n { try nodes[id]!.tick() }
    }

    func tickAll(_ n: Int) throws {
        for _ in 0..<n {
            for id in nodes.keys.sorted() { try nodes[id]!.tick() }
            try settle()
        }
    }

    func elect(_ id: UInt64) throws {
        try nodes[id]!.campaign()
        try settle()
    }

    /// Restarts a node from its storage only.
    func restart(_ id: UInt64) throws {
        nodes[id] = try RaftNode(config: configs[id]!, storage: storages[id]!)
        applied[id] = []
    }

    func appliedData(_ id: UInt64) -> [[UInt8]] {
        applied[id, default: []].filter { $0.type == .normal && !$0.data.isEmpty }.map(\.data)
    }
}
