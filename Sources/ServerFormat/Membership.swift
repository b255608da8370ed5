import Foundation
import Raft
import Storage

// The membership formats that the server and `swetcdutl snapshot restore` both write, and
// `EtcdSnapshot` converts: one definition, so the two can never drift apart.

/// A member of the cluster as stored in the backend's `members` bucket: key = the member ID as
/// 8 big-endian bytes (`key(_:)`), value = this record as JSON with sorted keys (`encoded()`).
public struct MemberRecord: Sendable, Equatable, Codable {
    public var id: UInt64
    /// Empty for a member added at run time until it starts and publishes itself.
    public var name: String
    public var peerURLs: [String]
    public var isLearner = false
    /// The client URLs the member published through the log (empty until it has).
    public var clientURLs: [String] = []

    public init(id: UInt64, name: String, peerURLs: [String], isLearner: Bool = false) {
        self.id = id
        self.name = name
        self.peerURLs = peerURLs
        self.isLearner = isLearner
    }

    private enum CodingKeys: String, CodingKey { case id, name, peerURLs, isLearner, clientURLs }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(UInt64.self, forKey: .id)
        name = try c.decode(String.self, forKey: .name)
        peerURLs = try c.decode([String].self, forKey: .peerURLs)
        // Records written before learners existed have no flag.
        isLearner = try c.decodeIfPresent(Bool.self, forKey: .isLearner) ?? false
        clientURLs = try c.decodeIfPresent([String].self, forKey: .clientURLs) ?? []
    }

    /// Bucket key: the member ID as 8 big-endian bytes.
    public static func key(_ id: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: id >> (56 - 8 * UInt64($0))) } }

    /// The bucket value: JSON with sorted keys.
    public func encoded() throws -> [UInt8] { [UInt8](try sortedKeysEncoder().encode(self)) }

    /// A bucket value back (throws the decoder's error on anything else).
    public init(decoding bytes: [UInt8]) throws {
        self = try JSONDecoder().decode(MemberRecord.self, from: Data(bytes))
    }
}

/// A membership change as carried in a Raft conf-change entry's context (JSON): what the
/// change does to the member list. Raft's own part (voter, learner, removed) is the entry's
/// type and node ID.
public struct MembershipChange: Sendable, Equatable, Codable {
    public enum Operation: String, Codable, Sendable {
        /// A member joins (voter or learner; also the bootstrap entries of a new cluster).
        case add
        /// A learner becomes a voter.
        case promote
        /// A member leaves for good.
        case remove
        /// A member's peer URLs change, or a member added at run time publishes its name
        /// (Raft sees a no-op re-add).
        case update
    }

    public var operation: Operation
    public var member: MemberRecord

    public init(operation: Operation, member: MemberRecord) {
        self.operation = operation
        self.member = member
    }

    /// The conf-change context: JSON with sorted keys.
    public func encoded() -> [UInt8] {
        (try? [UInt8](sortedKeysEncoder().encode(self))) ?? []
    }

    /// A context back (throws the decoder's error on anything else).
    public init(decoding bytes: [UInt8]) throws {
        self = try JSONDecoder().decode(MembershipChange.self, from: Data(bytes))
    }

    /// The Raft conf change carrying this change; `requestID` lets the proposer find its result.
    /// An update names node 0, which Raft skips: re-adding the member instead could undo a
    /// promotion committed between the proposal and its apply.
    public func confChange(requestID: UInt64) -> ConfChange {
        let type: ConfChangeType
        switch operation {
        case .add: type = member.isLearner ? .addLearnerNode : .addNode
        case .update: return ConfChange(id: requestID, type: .addNode, nodeID: 0, context: encoded())
        case .promote: type = .addNode
        case .remove: type = .removeNode
        }
        return ConfChange(id: requestID, type: type, nodeID: member.id, context: encoded())
    }
}

/// The start of a brand-new cluster's log, as etcd writes it: one committed conf-change entry
/// per initial member (an `add`, term 1, in ID order), so a member joining later replays them
/// and learns the initial configuration from the log. The server writes it on a new cluster's
/// first start, `swetcdutl snapshot restore` for the cluster it restores.
public enum BootstrapLog {
    public static func entries(members: [MemberRecord]) -> [Entry] {
        members.sorted { $0.id < $1.id }.enumerated().map { i, m in
            let cc = MembershipChange(operation: .add, member: m).confChange(requestID: 0)
            return Entry(term: 1, index: UInt64(i + 1), type: .confChange, data: cc.encode())
        }
    }

    /// Persists `entries(members:)` with a hard state committing them (term 1, no vote).
    public static func write(_ storage: DurableRaftStorage, members: [MemberRecord]) throws {
        var rd = Ready()
        rd.entries = entries(members: members)
        rd.hardState = HardState(term: 1, vote: 0, commit: UInt64(rd.entries.count))
        rd.mustSync = true
        try storage.persist(rd)
    }
}

private func sortedKeysEncoder() -> JSONEncoder {
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    return encoder
}
