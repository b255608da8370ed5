import EtcdConfig
import Foundation
import Storage

/// A member of the cluster as stored in the backend's `members` bucket.
struct MemberRecord: Sendable, Equatable, Codable {
    var id: UInt64
    var name: String
    var peerURLs: [String]

    init(id: UInt64, name: String, peerURLs: [String]) {
        self.id = id
        self.name = name
        self.peerURLs = peerURLs
    }

    init(_ m: InitialCluster.Member) {
        self.init(id: m.id, name: m.name, peerURLs: m.peerURLs.map(\.description))
    }

    /// Bucket key: the member ID as 8 big-endian bytes.
    static func key(_ id: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: id >> (56 - 8 * UInt64($0))) } }

    /// Parsed peer URLs (unparseable ones are left out).
    var endpoints: [EndpointURL] { peerURLs.compactMap { try? EndpointURL(parsing: $0) } }
}

enum MembershipStore {
    /// Records the bootstrap membership (a new member), so a restart ignores --initial-cluster.
    static func save(_ members: [MemberRecord], in backend: Backend) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        try backend.batch {
            for m in members {
                try backend.put(.members, key: MemberRecord.key(m.id), value: [UInt8](try encoder.encode(m)))
            }
        }
        try backend.commit()
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
            do { return try JSONDecoder().decode(MemberRecord.self, from: Data(bytes)) } catch {
                throw ServerStartError("corrupt member record in the backend's members bucket: \(error)")
            }
        }.sorted { $0.id < $1.id }
    }
}
