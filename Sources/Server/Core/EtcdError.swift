import GRPCCore
import MVCC

/// An error a client sees: etcd's exact text and the gRPC status code etcd pairs with it
/// (etcd 3.4 `rpctypes`; the table is in docs/PROTOCOL.md, "Errors"). clientv3 recognises errors
/// by this text, so it must match etcd's byte for byte.
public struct EtcdError: Error, Equatable, Sendable, CustomStringConvertible {
    /// etcd's message, e.g. "etcdserver: request timed out".
    public let message: String
    /// The gRPC status code sent with it.
    public let code: RPCError.Code

    /// An error with `message` and `code`.
    public init(_ message: String, code: RPCError.Code) {
        self.message = message
        self.code = code
    }

    public var description: String { message }

    /// The status sent to gRPC clients.
    public var rpcError: RPCError { RPCError(code: code, message: message) }

    public static let keyNotProvided = EtcdError("etcdserver: key is not provided", code: .invalidArgument)
    public static let keyNotFound = EtcdError("etcdserver: key not found", code: .invalidArgument)
    public static let valueProvided = EtcdError("etcdserver: value is provided", code: .invalidArgument)
    public static let leaseProvided = EtcdError("etcdserver: lease is provided", code: .invalidArgument)
    public static let tooManyOps = EtcdError("etcdserver: too many operations in txn request", code: .invalidArgument)
    public static let duplicateKey = EtcdError("etcdserver: duplicate key given in txn request", code: .invalidArgument)
    public static let compacted = EtcdError("etcdserver: mvcc: required revision has been compacted", code: .outOfRange)
    public static let futureRevision = EtcdError("etcdserver: mvcc: required revision is a future revision", code: .outOfRange)
    public static let noSpace = EtcdError("etcdserver: mvcc: database space exceeded", code: .resourceExhausted)
    public static let leaseNotFound = EtcdError("etcdserver: requested lease not found", code: .notFound)
    public static let leaseExists = EtcdError("etcdserver: lease already exists", code: .failedPrecondition)
    public static let leaseTTLTooLarge = EtcdError("etcdserver: too large lease TTL", code: .outOfRange)
    public static let watchCanceled = EtcdError("etcdserver: watch canceled", code: .cancelled)
    public static let requestTooLarge = EtcdError("etcdserver: request is too large", code: .invalidArgument)
    public static let tooManyRequests = EtcdError("etcdserver: too many requests", code: .resourceExhausted)
    /// More concurrent Maintenance.Snapshot streams than the member serves (swetcd's own limit).
    public static let tooManySnapshots = EtcdError("etcdserver: too many snapshot requests", code: .resourceExhausted)
    public static let noLeader = EtcdError("etcdserver: no leader", code: .unavailable)
    public static let notLeader = EtcdError("etcdserver: not leader", code: .failedPrecondition)
    public static let leaderChanged = EtcdError("etcdserver: leader changed", code: .unavailable)
    public static let notCapable = EtcdError("etcdserver: not capable", code: .unavailable)
    /// Raft takes one membership change at a time (the server retries this one itself).
    public static let membershipChangeInProgress = EtcdError("etcdserver: another membership change is in progress; retry", code: .unavailable)
    public static let stopped = EtcdError("etcdserver: server stopped", code: .unavailable)
    public static let timeout = EtcdError("etcdserver: request timed out", code: .unavailable)
    public static let timeoutDueToLeaderFail = EtcdError(
        "etcdserver: request timed out, possibly due to previous leader failure", code: .unavailable)
    public static let timeoutDueToConnectionLost = EtcdError(
        "etcdserver: request timed out, possibly due to connection lost", code: .unavailable)
    public static let timeoutWaitAppliedIndex = EtcdError(
        "etcdserver: request timed out, waiting for the applied index took too long", code: .unavailable)
    public static let unhealthyCluster = EtcdError("etcdserver: unhealthy cluster", code: .unavailable)
    public static let corrupt = EtcdError("etcdserver: corrupt cluster", code: .dataLoss)
    public static let notSupportedForLearner = EtcdError("etcdserver: rpc not supported for learner", code: .unavailable)

    /// A feature this build does not offer yet (a clear refusal, never a fake success).
    public static func unimplemented(_ what: String) -> EtcdError {
        EtcdError("swetcd: \(what) is not implemented yet", code: .unimplemented)
    }

    /// An internal failure (a storage error, say): code Unknown with a descriptive text.
    public static func `internal`(_ text: String) -> EtcdError { EtcdError(text, code: .unknown) }

    /// The client-facing form of any error thrown by the store, the lessor or the server.
    public static func from(_ error: any Error) -> EtcdError {
        switch error {
        case let e as EtcdError: return e
        case let e as MVCCError:
            switch e {
            case .compacted: return .compacted
            case .futureRevision: return .futureRevision
            case .keyNotProvided: return .keyNotProvided
            case .duplicateKey: return .duplicateKey
            case .keyNotFound: return .keyNotFound
            case .valueProvided: return .valueProvided
            case .leaseProvided: return .leaseProvided
            case .leaseNotFound: return .leaseNotFound
            default: return .internal(e.description)
            }
        case let e as LeaseError:
            switch e {
            case .leaseNotFound, .leaseExpired: return .leaseNotFound
            case .leaseExists: return .leaseExists
            case .ttlTooLarge: return .leaseTTLTooLarge
            case .notPrimary: return .notLeader
            default: return .internal(e.description)
            }
        case let e as CancellationError: return EtcdError("context canceled: \(e)", code: .cancelled)
        default: return .internal(String(describing: error))
        }
    }
}
