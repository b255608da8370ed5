public import EtcdProto
public import GRPCCore
import Crypto
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A consistent copy of the backend being streamed to a client, read front to back.
public protocol SnapshotReader: Sendable {
    /// Total bytes of the copy.
    var size: Int64 { get }
    /// The next bytes (at most `maxBytes`); empty at the end.
    func read(maxBytes: Int) throws -> [UInt8]
    /// Releases the copy (called once, also after errors).
    func close()
}

/// What Maintenance asks of the server (implemented by `EtcdServer`; fakes in tests).
public protocol MaintenanceBackend: Sendable {
    /// A response header at the current revision.
    func responseHeader() -> Etcdserverpb_ResponseHeader
    /// Status with all 3.5 fields.
    func status() async throws -> Etcdserverpb_StatusResponse
    /// Alarm GET / ACTIVATE / DEACTIVATE (changes go through Raft).
    func alarm(_ request: Etcdserverpb_AlarmRequest) async throws -> Etcdserverpb_AlarmResponse
    /// Hash of the whole backend.
    func hash() async throws -> Etcdserverpb_HashResponse
    /// Hash of the keyspace up to a revision.
    func hashKV(_ request: Etcdserverpb_HashKVRequest) async throws -> Etcdserverpb_HashKVResponse
    /// A consistent backend copy for Snapshot.
    func openSnapshot() async throws -> any SnapshotReader
    /// Transfers leadership (leader only).
    func moveLeader(to target: UInt64) async throws
    /// Defragments this member's backend (not replicated).
    func defragment() async throws
}

extension MaintenanceBackend {
    /// Backends that cannot defragment answer "unimplemented".
    public func defragment() async throws {
        throw RPCError(code: .unimplemented, message: "defragment is not supported")
    }
}

/// etcd's Maintenance service over a `MaintenanceBackend`.
public struct MaintenanceService: Etcdserverpb_Maintenance.SimpleServiceProtocol {
    let backend: any MaintenanceBackend
    /// Bytes per Snapshot message (etcd: 32 KiB).
    let chunkSize: Int

    /// A service answering from `backend`.
    public init(backend: any MaintenanceBackend, chunkSize: Int = 32 * 1024) {
        self.backend = backend
        self.chunkSize = max(1, chunkSize)
    }

    public func alarm(request: Etcdserverpb_AlarmRequest, context: ServerContext) async throws -> Etcdserverpb_AlarmResponse {
        try await rpc { try await backend.alarm(request) }
    }

    public func status(request: Etcdserverpb_StatusRequest, context: ServerContext) async throws -> Etcdserverpb_StatusResponse {
        try await rpc { try await backend.status() }
    }

    public func defragment(request: Etcdserverpb_DefragmentRequest, context: ServerContext) async throws -> Etcdserverpb_DefragmentResponse {
        try await rpc { try await backend.defragment() }
        var out = Etcdserverpb_DefragmentResponse()
        out.header = backend.responseHeader()
        return out
    }

    public func hash(request: Etcdserverpb_HashRequest, context: ServerContext) async throws -> Etcdserverpb_HashResponse {
        try await rpc { try await backend.hash() }
    }

    public func hashKV(request: Etcdserverpb_HashKVRequest, context: ServerContext) async throws -> Etcdserverpb_HashKVResponse {
        try await rpc { try await backend.hashKV(request) }
    }

    public func snapshot(request: Etcdserverpb_SnapshotRequest, response: RPCWriter<Etcdserverpb_SnapshotResponse>,
                         context: ServerContext) async throws {
        try await streamSnapshot { try await response.write($0) }
    }

    /// Streams the backend copy in chunks with `remaining_bytes`, then etcd's trailer: the
    /// 32-byte SHA-256 of everything before it (what `etcdctl snapshot save` checks for).
    public func streamSnapshot(_ write: (Etcdserverpb_SnapshotResponse) async throws -> Void) async throws {
        let reader = try await rpc { try await backend.openSnapshot() }
        defer { reader.close() }
        let header = backend.responseHeader()
        var hasher = SHA256()
        var remaining = reader.size
        while true {
            try Task.checkCancellation()
            // The read waits for LMDB's copy: on a dedicated thread, not the shared pool.
            let chunkSize = self.chunkSize
            let chunk = try await rpc { try await HeavyWorkPool.io.run { try reader.read(maxBytes: chunkSize) } }
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
            remaining -= Int64(chunk.count)
            var message = Etcdserverpb_SnapshotResponse()
            message.header = header
            message.blob = Data(chunk)
            message.remainingBytes = UInt64(max(0, remaining)) + 32
            try await write(message)
        }
        guard remaining == 0 else {
            throw RPCError(code: .internalError, message: "snapshot copy ended \(remaining) bytes short")
        }
        var trailer = Etcdserverpb_SnapshotResponse()
        trailer.header = header
        trailer.blob = Data(hasher.finalize())
        trailer.remainingBytes = 0
        try await write(trailer)
    }

    public func moveLeader(request: Etcdserverpb_MoveLeaderRequest, context: ServerContext) async throws -> Etcdserverpb_MoveLeaderResponse {
        try await rpc { try await backend.moveLeader(to: request.targetID) }
        var out = Etcdserverpb_MoveLeaderResponse()
        out.header = backend.responseHeader()
        return out
    }

    public func downgrade(request: Etcdserverpb_DowngradeRequest, context: ServerContext) async throws -> Etcdserverpb_DowngradeResponse {
        throw RPCError(code: .unimplemented, message: "downgrade is not supported yet")
    }
}

/// Runs `body`, turning any error that is not already an `RPCError` into one (the API layer's
/// single mapping point: etcd errors keep their text and code).
func rpc<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch { throw asRPCError(error) }
}

func rpc<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch { throw asRPCError(error) }
}

/// `error` as the status a client sees.
func asRPCError(_ error: any Error) -> RPCError {
    if let e = error as? RPCError { return e }
    if let e = error as? EtcdError { return e.rpcError }
    if let e = error as? any RPCErrorConvertible {
        return RPCError(code: e.rpcErrorCode, message: e.rpcErrorMessage)
    }
    if error is CancellationError { return RPCError(code: .cancelled, message: "context canceled") }
    return RPCError(code: .unknown, message: "\(error)")
}

/// A snapshot read from a file (e.g. a converted backend copy in a temporary file).
public final class FileSnapshotReader: SnapshotReader {
    private let fd: Int32
    private let path: String
    private let removeOnClose: Bool
    private let onClose: (@Sendable () -> Void)?
    private let closed = Mutex(false)
    public let size: Int64

    /// Opens `path`; when `removeOnClose`, the file is unlinked at once (its space is freed by
    /// `close()`). `close()` also calls `onClose` (once).
    public init(path: String, removeOnClose: Bool, onClose: (@Sendable () -> Void)? = nil) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if removeOnClose { unlink(path) }
            throw RPCError(code: .internalError, message: "snapshot: cannot open \(path): errno \(errno)")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            Glibc.close(fd)
            if removeOnClose { unlink(path) }
            throw RPCError(code: .internalError, message: "snapshot: cannot stat \(path): errno \(errno)")
        }
        self.fd = fd
        self.path = path
        self.removeOnClose = removeOnClose
        self.onClose = onClose
        self.size = Int64(st.st_size)
        // The open descriptor keeps the data readable: no name is left behind, not even by a crash.
        if removeOnClose { unlink(path) }
    }

    public func read(maxBytes: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: maxBytes)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, maxBytes) }
            if n >= 0 {
                buffer.removeSubrange(n...)
                return buffer
            }
            if errno == EINTR { continue }
            throw RPCError(code: .internalError, message: "snapshot: read failed: errno \(errno)")
        }
    }

    public func close() {
        let first = closed.withLock { c -> Bool in
            defer { c = true }
            return !c
        }
        guard first else { return }
        Glibc.close(fd)
        onClose?()
    }
}
