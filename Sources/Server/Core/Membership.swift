import EtcdConfig
import EtcdProto
import Foundation
import LMDBBackend
import Raft
import ServerFormat
import Synchronization

extension MemberRecord {
    init(_ m: InitialCluster.Member) {
        self.init(id: m.id, name: m.name, peerURLs: m.peerURLs.map(\.description))
    }

    /// Parsed peer URLs (unparseable ones are left out).
    var endpoints: [EndpointURL] { peerURLs.compactMap { try? EndpointURL(parsing: $0) } }
}

extension MembershipChange {
    static func decode(_ bytes: [UInt8]) throws -> MembershipChange {
        do { return try MembershipChange(decoding: bytes) } catch {
            throw ServerStartError("undecodable membership change in a conf-change entry: \(error)")
        }
    }
}

/// The current member list and the IDs of removed members, shared between the Raft loop
/// (which changes it when applying conf changes) and the API.
final class ClusterMembership: Sendable {
    struct State: Sendable, Equatable {
        var members: [UInt64: MemberRecord] = [:]
        var removed: Set<UInt64> = []
    }

    private let state: Mutex<State>

    init(members: [MemberRecord], removed: Set<UInt64> = []) {
        var s = State()
        for m in members { s.members[m.id] = m }
        s.removed = removed
        state = Mutex(s)
    }

    /// The members in ID order.
    var members: [MemberRecord] { state.withLock { $0.members.values.sorted { $0.id < $1.id } } }
    var removed: Set<UInt64> { state.withLock { $0.removed } }
    func member(_ id: UInt64) -> MemberRecord? { state.withLock { $0.members[id] } }
    var snapshot: State { state.withLock { $0 } }

    /// Applies `change`; returns the member record after it (nil when removed or unknown).
    @discardableResult
    func apply(_ change: MembershipChange) -> MemberRecord? {
        state.withLock { s in
            let id = change.member.id
            switch change.operation {
            case .add:
                var m = change.member
                // A bootstrap entry replayed on an existing member keeps the known name.
                if m.name.isEmpty, let old = s.members[id] { m.name = old.name }
                if m.clientURLs.isEmpty, let old = s.members[id] { m.clientURLs = old.clientURLs }
                s.members[id] = m
                s.removed.remove(id)
                return m
            case .promote:
                s.members[id]?.isLearner = false
                return s.members[id]
            case .update:
                s.members[id]?.peerURLs = change.member.peerURLs
                if !change.member.name.isEmpty { s.members[id]?.name = change.member.name }
                return s.members[id]
            case .remove:
                s.members[id] = nil
                s.removed.insert(id)
                return nil
            }
        }
    }

    /// Records the name (when not empty) and client URLs member `id` published; returns the
    /// record after it (nil for an unknown member).
    func setAttributes(_ id: UInt64, name: String, clientURLs: [String]) -> MemberRecord? {
        state.withLock { s in
            guard s.members[id] != nil else { return nil }
            if !name.isEmpty { s.members[id]?.name = name }
            s.members[id]?.clientURLs = clientURLs
            return s.members[id]
        }
    }

    /// The membership in a Raft snapshot's data: JSON `{"members": [...], "removed": [...]}`.
    func encodedForSnapshot() -> [UInt8] {
        let s = snapshot
        let doc = SnapshotDocument(members: s.members.values.sorted { $0.id < $1.id }, removed: s.removed.sorted())
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return (try? [UInt8](encoder.encode(doc))) ?? []
    }

    struct SnapshotDocument: Codable, Equatable {
        var members: [MemberRecord]
        var removed: [UInt64]
    }
}

enum MembershipStore {
    /// Records the bootstrap membership (a new member), so a restart ignores --initial-cluster.
    static func save(_ members: [MemberRecord], in backend: Backend) throws {
        try backend.batch {
            for m in members {
                try backend.put(.members, key: MemberRecord.key(m.id), value: try m.encoded())
            }
        }
        try backend.commit()
    }

    /// Writes the effect of an applied change (inside the caller's backend batch).
    static func record(_ change: MembershipChange, result: MemberRecord?, in backend: Backend) throws {
        let key = MemberRecord.key(change.member.id)
        if let result {
            try backend.put(.members, key: key, value: try result.encoded())
        } else if change.operation == .remove {
            try backend.delete(.members, key: key)
            try backend.put(.membersRemoved, key: key, value: [])
        }
    }

    /// The stored membership, in ID order; a damaged record is a clear error.
    static func load(from backend: Backend) throws -> [MemberRecord] {
        var values: [[UInt8]] = []
        try backend.read { r in
            try r.scan(.members, from: [0], to: nil) { _, v in
                values.append([UInt8](v))
                return true
            }
        }
        return try values.map { bytes in
            do { return try MemberRecord(decoding: bytes) } catch {
                throw ServerStartError("corrupt member record in the backend's members bucket: \(error)")
            }
        }.sorted { $0.id < $1.id }
    }

    /// IDs of members removed from the cluster.
    static func loadRemoved(from backend: Backend) throws -> Set<UInt64> {
        var ids: Set<UInt64> = []
        try backend.read { r in
            try r.scan(.membersRemoved, from: [0], to: nil) { k, _ in
                if k.count == 8 { ids.insert(k.reduce(0) { $0 << 8 | UInt64($1) }) }
                return true
            }
        }
        return ids
    }
}

/// The checks a membership request passes before it is proposed (pure functions of the
/// member list and which members this member sees as started/connected).
enum MembershipRules {
    static let badURLs = EtcdError("etcdserver: given member URLs are invalid", code: .invalidArgument)
    static let peerURLExists = EtcdError("etcdserver: Peer URLs already exists", code: .failedPrecondition)
    static let memberExists = EtcdError("etcdserver: member ID already exist", code: .failedPrecondition)
    static let memberNotFound = EtcdError("etcdserver: member not found", code: .notFound)
    static let tooManyLearners = EtcdError("etcdserver: too many learner members in cluster", code: .failedPrecondition)
    static let notLearner = EtcdError("etcdserver: can only promote a learner member", code: .failedPrecondition)
    static let learnerNotReady = EtcdError("etcdserver: can only promote a learner member which is in sync with leader",
                                           code: .failedPrecondition)
    static let notEnoughStarted = EtcdError("etcdserver: re-configuration failed due to not enough started members",
                                            code: .failedPrecondition)
    static let removed = EtcdError("etcdserver: the member has been permanently removed from the cluster",
                                   code: .failedPrecondition)

    /// Parses and normalises peer URLs as etcd does (at least one; http, https, unix or unixs;
    /// host:port; no path); any problem is etcd's "given member URLs are invalid".
    static func parsePeerURLs(_ raw: [String]) throws -> [String] {
        guard !raw.isEmpty else { throw badURLs }
        var out: [String] = []
        for r in raw {
            guard let u = try? EndpointURL(parsing: r) else { throw badURLs }
            out.append(u.description)
        }
        guard Set(out).count == out.count else { throw badURLs }
        return out.sorted()
    }

    /// Refuses URLs another member (other than `except`) already has.
    static func checkURLsFree(_ urls: [String], members: [MemberRecord], except: UInt64? = nil) throws {
        let taken = Set(members.filter { $0.id != except }.flatMap(\.peerURLs))
        if urls.contains(where: taken.contains) { throw peerURLExists }
    }

    /// Whether a cluster of `voters` (with `started` of them started) keeps a quorum of started
    /// members after adding one more (not yet started) voter. A one-member cluster may always
    /// grow to two, as in etcd.
    static func canAddVoter(voters: Int, started: Int) -> Bool {
        let after = voters + 1
        if started == 1 && after == 2 { return true }
        return started >= after / 2 + 1
    }

    /// Whether promoting a learner keeps a quorum of started members: the learner counts as
    /// started (it is in sync), as in etcd. With 3 voters, one of them down, the promotion
    /// leaves 3 of 4 started and is allowed (`canAddVoter`, which counts the new voter as not
    /// started, refused it: found by E2EFaultTests while a member was down on a full disk).
    static func canPromote(voters: Int, startedVoters: Int) -> Bool {
        startedVoters + 1 >= (voters + 1) / 2 + 1
    }

    /// Whether removing a voter (started or not) leaves a quorum of started members.
    static func canRemoveVoter(voters: Int, started: Int, removingStarted: Bool) -> Bool {
        let after = voters - 1
        let startedAfter = started - (removingStarted ? 1 : 0)
        return after > 0 && startedAfter >= after / 2 + 1
    }

    /// Whether a learner whose match index is `learnerMatch` is in sync with a leader at
    /// `leaderMatch`: at least 90% of it.
    static func learnerInSync(learnerMatch: UInt64, leaderMatch: UInt64) -> Bool {
        Double(learnerMatch) >= Double(leaderMatch) * 0.9
    }

    /// The add checks: URLs valid and unused, the learner limit, and (strict) enough started
    /// voters. Returns the normalised URLs.
    static func checkAdd(peerURLs raw: [String], isLearner: Bool, members: [MemberRecord], maxLearners: Int,
                         strict: Bool, startedVoters: Int) throws -> [String] {
        let urls = try parsePeerURLs(raw)
        try checkURLsFree(urls, members: members)
        if isLearner {
            if members.filter(\.isLearner).count >= maxLearners { throw tooManyLearners }
        } else if strict {
            let voters = members.filter { !$0.isLearner }.count
            if !canAddVoter(voters: voters, started: startedVoters) { throw notEnoughStarted }
        }
        return urls
    }
}
