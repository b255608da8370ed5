import EtcdProto
import Foundation
import Storage

/// Member attributes (name and client URLs) in the backend's `members` bucket: each member's
/// record there gets a `clientURLs` field beside the fields of ``MemberRecord``, and its `name`
/// is set from the published one. Records are only updated, never created, so a member that is
/// not part of the membership is ignored.
enum MemberAttributesStore {
    private struct ClientURLsField: Decodable { var clientURLs: [String]? }

    /// A ``MemberRecord`` encoded with its client URLs.
    private struct Encoded: Encodable {
        enum Keys: String, CodingKey { case clientURLs }
        let record: MemberRecord
        let clientURLs: [String]
        func encode(to encoder: any Encoder) throws {
            try record.encode(to: encoder)
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(clientURLs, forKey: .clientURLs)
        }
    }

    /// The published attributes of every member that has published them.
    static func load(from backend: Backend) throws -> [UInt64: PublishedAttributes] {
        var values: [[UInt8]] = []
        try backend.read { r in
            try r.scan(.members, from: [0], to: nil) { _, v in
                values.append([UInt8](v))
                return true
            }
        }
        var out: [UInt64: PublishedAttributes] = [:]
        for bytes in values {
            guard let record = try? JSONDecoder().decode(MemberRecord.self, from: Data(bytes)),
                  let urls = try? JSONDecoder().decode(ClientURLsField.self, from: Data(bytes)).clientURLs else { continue }
            out[record.id] = PublishedAttributes(name: record.name, clientURLs: urls)
        }
        return out
    }

    /// Records `attributes` for member `id` in the current backend batch. Returns false when
    /// the member has no record.
    static func save(_ attributes: PublishedAttributes, for id: UInt64, in backend: Backend) throws -> Bool {
        let key = MemberRecord.key(id)
        guard let bytes = try backend.read({ try $0.get(.members, key: key) }),
              var record = try? JSONDecoder().decode(MemberRecord.self, from: Data(bytes)) else { return false }
        if !attributes.name.isEmpty { record.name = attributes.name }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let value = try encoder.encode(Encoded(record: record, clientURLs: attributes.clientURLs))
        try backend.put(.members, key: key, value: [UInt8](value))
        return true
    }
}

extension EtcdServer {
    /// Publishes this member's name and client URLs through the log (etcd's attributes
    /// update), retrying until it is applied or the server stops.
    func publishAttributes() async {
        var attrs = Swetcd_Internal_MemberAttributes()
        attrs.memberID = memberID
        attrs.name = name
        attrs.clientUrls = config.advertiseClientURLs.map(\.description)
        var req = Swetcd_Internal_InternalRequest()
        req.memberAttributes = attrs
        while !closing.isFired, !Task.isCancelled {
            do {
                _ = try await propose(req)
                logger.info("published local member to cluster through raft", metadata: [
                    "name": "\(name)", "client-urls": "\(attrs.clientUrls)",
                ])
                return
            } catch let e as EtcdError where e == .stopped {
                return
            } catch {
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    /// Applies a member's published attributes (Raft loop thread, inside the entry's batch).
    func applyMemberAttributes(_ a: Swetcd_Internal_MemberAttributes) throws {
        let attrs = PublishedAttributes(name: a.name, clientURLs: a.clientUrls)
        guard try MemberAttributesStore.save(attrs, for: a.memberID, in: backend) else { return }
        machine.attributes.withLock { $0[a.memberID] = attrs }
        if !a.name.isEmpty, var m = membership.member(a.memberID), m.name != a.name {
            m.name = a.name
            membership.apply(MembershipChange(operation: .update, member: m))
        }
    }
}
