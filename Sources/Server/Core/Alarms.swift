import EtcdProto
import Foundation
import LMDBBackend
import Logging
import Synchronization

/// One raised alarm: which member raised it and what kind.
struct AlarmKey: Hashable, Comparable, Sendable {
    var memberID: UInt64
    var type: Etcdserverpb_AlarmType

    static func < (a: AlarmKey, b: AlarmKey) -> Bool {
        (a.memberID, a.type.rawValue) < (b.memberID, b.type.rawValue)
    }

    /// Alarm-bucket key: the member ID (8 bytes) then the alarm type (4 bytes), big-endian.
    var bucketKey: [UInt8] {
        let t = UInt32(truncatingIfNeeded: type.rawValue)
        return BigEndian.bytes(memberID) + [UInt8(t >> 24), UInt8(truncatingIfNeeded: t >> 16),
                                            UInt8(truncatingIfNeeded: t >> 8), UInt8(truncatingIfNeeded: t)]
    }

    /// Parses a bucket key; nil if it is not 12 bytes or names no known alarm.
    init?(bucketKey k: [UInt8]) {
        guard k.count == 12, let id = BigEndian.uint64(Array(k[0..<8])) else { return nil }
        let raw = Int(k[8]) << 24 | Int(k[9]) << 16 | Int(k[10]) << 8 | Int(k[11])
        guard let type = Etcdserverpb_AlarmType(rawValue: raw), type == .nospace || type == .corrupt else { return nil }
        self.init(memberID: id, type: type)
    }

    init(memberID: UInt64, type: Etcdserverpb_AlarmType) {
        self.memberID = memberID
        self.type = type
    }

    var member: Etcdserverpb_AlarmMember {
        var m = Etcdserverpb_AlarmMember()
        m.memberID = memberID
        m.alarm = type
        return m
    }

    /// etcd's text for Status `errors`: the AlarmMember in protobuf compact text form,
    /// e.g. "memberID:10276657743932975437 alarm:NOSPACE " (zero fields left out).
    var statusText: String {
        var s = ""
        if memberID != 0 { s += "memberID:\(memberID) " }
        s += "alarm:\(HealthEndpoints.alarmName(type)) "
        return s
    }
}

/// The cluster's raised alarms (NOSPACE, CORRUPT). Changed only by applying Alarm entries of
/// the replicated log (so every member holds the same set) and kept in the backend's `alarm`
/// bucket in the same batch as the entry's consistent index, so alarms survive restarts.
final class AlarmStore: Sendable {
    private let active = Mutex<Set<AlarmKey>>([])

    init() {}

    /// Replaces the set with the backend's alarm bucket (at start and after a backend swap).
    /// A malformed record is a clear error.
    func load(from backend: Backend) throws {
        var keys: Set<AlarmKey> = []
        try backend.read { r in
            try r.scan(.alarm, from: [], to: nil) { k, _ in
                guard let key = AlarmKey(bucketKey: [UInt8](k)) else {
                    throw ServerStartError("corrupt record in the backend's alarm bucket (key of \(k.count) bytes)")
                }
                keys.insert(key)
                return true
            }
        }
        active.withLock { $0 = keys }
    }

    /// Raised alarms in (member, type) order, optionally only of `type` (`.none`: all).
    func list(_ type: Etcdserverpb_AlarmType = .none) -> [AlarmKey] {
        active.withLock { set in set.filter { type == .none || $0.type == type }.sorted() }
    }

    /// The distinct alarm types raised (CORRUPT first: it is the more severe).
    var types: [Etcdserverpb_AlarmType] {
        let present = Set(active.withLock { $0.map(\.type) })
        return [Etcdserverpb_AlarmType.corrupt, .nospace].filter(present.contains)
    }

    func isActive(memberID: UInt64, type: Etcdserverpb_AlarmType) -> Bool {
        active.withLock { $0.contains(AlarmKey(memberID: memberID, type: type)) }
    }

    func contains(type: Etcdserverpb_AlarmType) -> Bool {
        active.withLock { $0.contains { $0.type == type } }
    }

    /// Adds `key`; returns whether it was new. The caller stages the bucket write.
    fileprivate func insert(_ key: AlarmKey) -> Bool { active.withLock { $0.insert(key).inserted } }

    /// Removes `key`; returns whether it was present.
    fileprivate func remove(_ key: AlarmKey) -> Bool { active.withLock { $0.remove(key) != nil } }
}

extension EtcdServer {
    /// Applies an Alarm entry (apply thread, inside the entry's backend batch): GET lists,
    /// ACTIVATE raises and DEACTIVATE clears one (member, type) alarm, as etcd's applier.
    func applyAlarm(_ r: Etcdserverpb_AlarmRequest) throws -> Etcdserverpb_AlarmResponse {
        var resp = Etcdserverpb_AlarmResponse()
        switch r.action {
        case .get:
            resp.alarms = alarms.list(r.alarm).map(\.member)
        case .activate:
            guard r.alarm == .nospace || r.alarm == .corrupt else { break }
            let key = AlarmKey(memberID: r.memberID, type: r.alarm)
            if alarms.insert(key) {
                try backend.put(.alarm, key: key.bucketKey, value: [])
                logger.warning("alarm raised", metadata: [
                    "alarm": "\(HealthEndpoints.alarmName(key.type))", "from": "\(String(key.memberID, radix: 16))",
                ])
            }
            resp.alarms = [key.member]
        case .deactivate:
            let key = AlarmKey(memberID: r.memberID, type: r.alarm)
            guard alarms.remove(key) else { break }
            try backend.delete(.alarm, key: key.bucketKey)
            logger.warning("alarm disarmed", metadata: [
                "alarm": "\(HealthEndpoints.alarmName(key.type))", "from": "\(String(key.memberID, radix: 16))",
            ])
            resp.alarms = [key.member]
        case .UNRECOGNIZED:
            break
        }
        resp.header = header()
        return resp
    }

    /// Why an entry must be refused under the raised alarms (checked in apply, so every member
    /// refuses the same entries): under CORRUPT every change fails with "etcdserver: corrupt
    /// cluster"; under NOSPACE puts, txns containing a put and lease grants fail with
    /// "etcdserver: mvcc: database space exceeded". Deletes, compactions, revokes and alarms
    /// still apply under NOSPACE.
    func alarmRefusal(_ request: Swetcd_Internal_InternalRequest.OneOf_Request?) -> EtcdError? {
        let types = alarms.types
        guard !types.isEmpty else { return nil }
        if types.contains(.corrupt) {
            switch request {
            case .put?, .deleteRange?, .txn?, .compaction?, .leaseGrant?, .leaseRevoke?: return .corrupt
            default: break
            }
        }
        if types.contains(.nospace), BackendQuota.cost(request) > 0 { return .noSpace }
        return nil
    }

    /// Maintenance.Alarm: every action, GET included, goes through the log (as etcd).
    func proposeAlarm(_ request: Etcdserverpb_AlarmRequest) async throws -> Etcdserverpb_AlarmResponse {
        var req = Swetcd_Internal_InternalRequest()
        req.alarm = request
        guard case .alarm(let resp) = try await propose(req) else { throw EtcdError.internal("unexpected apply result") }
        return resp
    }

    /// Status `errors`: etcd's "no leader" text when no leader is known, then each alarm.
    func statusErrors() -> [String] {
        var out: [String] = []
        if leaderID == 0 { out.append(EtcdError.noLeader.message) }
        out += alarms.list().map(\.statusText)
        return out
    }
}
