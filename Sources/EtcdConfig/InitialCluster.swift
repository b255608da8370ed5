import Crypto

/// Member and cluster IDs derived the way etcd derives them, so a swetcd cluster bootstrapped
/// from the same flags has the IDs an etcd cluster would have.
public enum MemberIdentity {
    /// ID of a member: the first 8 bytes (big-endian) of SHA-1 over its sorted peer URLs
    /// concatenated, then the cluster token, then (for members added at run time) the Unix
    /// time in seconds as decimal text.
    public static func memberID(peerURLs: [EndpointURL], clusterToken: String, unixTime: Int64? = nil) -> UInt64 {
        var bytes: [UInt8] = []
        for url in peerURLs.map(\.description).sorted() { bytes += Array(url.utf8) }
        bytes += Array(clusterToken.utf8)
        if let unixTime { bytes += Array(String(unixTime).utf8) }
        return firstEightBytes(Insecure.SHA1.hash(data: bytes))
    }

    /// ID of a cluster: the first 8 bytes of SHA-1 over its member IDs in ascending order,
    /// each as 8 big-endian bytes.
    public static func clusterID(memberIDs: [UInt64]) -> UInt64 {
        var bytes: [UInt8] = []
        for id in memberIDs.sorted() {
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: id >> UInt64(shift))) }
        }
        return firstEightBytes(Insecure.SHA1.hash(data: bytes))
    }

    private static func firstEightBytes<D: Digest>(_ digest: D) -> UInt64 {
        var v: UInt64 = 0
        for b in digest.prefix(8) { v = v << 8 | UInt64(b) }
        return v
    }

    /// The hexadecimal form etcd prints IDs in.
    public static func hex(_ id: UInt64) -> String { String(id, radix: 16) }
}

/// The bootstrap membership given by `--initial-cluster name=peerURL,...` and the token.
public struct InitialCluster: Sendable, Equatable {
    public struct Member: Sendable, Equatable {
        public let name: String
        public let peerURLs: [EndpointURL]
        public let id: UInt64
    }

    /// Members in ascending ID order.
    public let members: [Member]
    public let token: String
    public var clusterID: UInt64 { MemberIdentity.clusterID(memberIDs: members.map(\.id)) }

    /// A membership from already parsed entries (DNS SRV or discovery results): member IDs
    /// are derived from each entry's peer URLs and `token`, as for `--initial-cluster`.
    public init(entries: [(name: String, peerURLs: [EndpointURL])], token: String) throws {
        try self.init(parsing: entries.flatMap { e in e.peerURLs.map { "\(e.name)=\($0)" } }.joined(separator: ","), token: token)
    }

    /// The `--initial-cluster` text of this membership (`name=url,...`, in ID order).
    public var text: String {
        members.flatMap { m in m.peerURLs.map { "\(m.name)=\($0)" } }.joined(separator: ",")
    }

    public init(parsing text: String, token: String) throws {
        var urlsByName: [String: [String]] = [:]
        var order: [String] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: true) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0]).trimmingSpaces()
            let url = parts.count > 1 ? String(parts[1]) : ""
            if urlsByName[name] == nil { order.append(name) }
            urlsByName[name, default: []].append(url)
        }
        if order.isEmpty { throw ConfigError("--initial-cluster must not be empty") }
        var members: [Member] = []
        var seen = Set<EndpointURL>()
        for name in order {
            let urls: [EndpointURL]
            do {
                urls = try urlsByName[name]!.map { try EndpointURL(parsing: $0) }.sorted()
            } catch {
                throw ConfigError("invalid --initial-cluster \(text): \(error)")
            }
            for u in urls {
                if !seen.insert(u).inserted { throw ConfigError("initial cluster \(text) has duplicate url") }
            }
            members.append(Member(name: name, peerURLs: urls,
                                  id: MemberIdentity.memberID(peerURLs: urls, clusterToken: token)))
        }
        if Set(members.map(\.id)).count != members.count {
            throw ConfigError("initial cluster \(text) has duplicate member IDs")
        }
        self.members = members.sorted { $0.id < $1.id }
        self.token = token
    }

    public func member(named name: String) -> Member? { members.first { $0.name == name } }

    /// etcd's check that this member's entry matches the peer URLs it advertises.
    public func verifyLocalMember(name: String, advertisePeerURLs: [EndpointURL]) throws {
        guard let me = member(named: name) else {
            throw ConfigError("couldn't find local name \"\(name)\" in the initial cluster configuration")
        }
        let advertised = advertisePeerURLs.sorted()
        if me.peerURLs != advertised {
            let list = advertised.map(\.description).joined(separator: ",")
            throw ConfigError("--initial-cluster has \(name)=\(me.peerURLs.map(\.description).joined(separator: ",")) but missing from --initial-advertise-peer-urls=\(list)")
        }
    }
}

/// The auto-compaction schedule from `--auto-compaction-mode` and `--auto-compaction-retention`.
public enum AutoCompaction: Sendable, Equatable {
    case disabled
    /// Keep this much history (periodic mode).
    case periodic(Duration)
    /// Keep this many revisions (revision mode).
    case revision(Int64)

    /// The longest periodic retention: 10 years, as for every duration flag.
    public static let maxRetentionHours: Int64 = 87600

    public init(mode: String, retention: String) throws {
        let r = retention.trimmingSpaces()
        switch mode {
        case "periodic":
            if let hours = Int64(r) {
                guard hours >= 0 else { throw ConfigError("invalid auto-compaction-retention \"\(retention)\": must not be negative") }
                guard hours <= Self.maxRetentionHours else {
                    throw ConfigError("invalid auto-compaction-retention \"\(retention)\": out of range (at most \(Self.maxRetentionHours) hours)")
                }
                self = hours == 0 ? .disabled : .periodic(.seconds(hours * 3600))
                return
            }
            let d: Duration
            do { d = try GoDuration.parse(r) } catch {
                throw ConfigError("invalid auto-compaction-retention \"\(retention)\" for periodic mode: \(error)")
            }
            guard d >= .zero else { throw ConfigError("invalid auto-compaction-retention \"\(retention)\": must not be negative") }
            guard d <= .seconds(Self.maxRetentionHours * 3600) else {
                throw ConfigError("invalid auto-compaction-retention \"\(retention)\": out of range (at most \(Self.maxRetentionHours)h)")
            }
            self = d == .zero ? .disabled : .periodic(d)
        case "revision":
            guard let n = Int64(r), n >= 0 else {
                throw ConfigError("invalid auto-compaction-retention \"\(retention)\" for revision mode: must be a number of revisions")
            }
            self = n == 0 ? .disabled : .revision(n)
        default:
            throw ConfigError("unknown auto-compaction-mode \"\(mode)\"")
        }
    }
}
