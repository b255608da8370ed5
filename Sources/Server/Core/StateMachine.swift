import Foundation
import LMDBBackend
import Logging
import MVCC
import Synchronization

/// The state machine's storage objects: backend, keyspace, lessor and the bridge between the
/// last two. They live as long as the server: a snapshot from the leader is installed in place
/// (``restore(fromFileAt:)``), so API code, watch streams and everything else holding them
/// keep working across it.
final class StateMachine: Sendable {
    let backend: Backend
    let store: MVCCStore
    let lessor: Lessor
    let bridge: LeaseBridge
    /// The keyspace's watch delivery task (catch-up and victim retries).
    private let watchLoop = Mutex<Task<Void, Never>?>(nil)

    private init(backend: Backend, store: MVCCStore, lessor: Lessor, bridge: LeaseBridge) {
        self.backend = backend
        self.store = store
        self.lessor = lessor
        self.bridge = bridge
    }

    /// Opens the keyspace and lessor on `backend` and wires them together.
    static func open(_ backend: Backend, lessor lessorConfig: LessorConfig, store storeOptions: MVCCStore.Options) throws -> StateMachine {
        let lessor = try Lessor(config: lessorConfig, persistence: BackendLeasePersistence(backend))
        let store = try MVCCStore(backend: backend, options: storeOptions)
        let bridge = LeaseBridge(lessor: lessor)
        bridge.store = store
        store.setLeaseHooks(bridge)
        lessor.setKeyDeleter(bridge)
        try bridge.reattach()
        return StateMachine(backend: backend, store: store, lessor: lessor, bridge: bridge)
    }

    /// Installs the complete backend file at `file` in place of the current one (Raft loop
    /// thread, nothing applied meanwhile): the backend swaps its file (rename over the db,
    /// directory sync, reopen), the keyspace reloads its index under its lock and keeps its
    /// watchers (they catch up from the revision each needs next), then the lessor reloads its
    /// leases with their keys. A request running meanwhile sees the old state or the new one;
    /// after a failure the keyspace answers with a "stopped" error.
    func restore(fromFileAt file: String) throws {
        try store.restore(replacingBackend: { try backend.replace(withFileAt: file) })
        try lessor.restore(attaching: try store.leasedKeys())
    }

    /// Starts the watch delivery task (once; a second call replaces the first).
    func startWatchLoop() {
        let task = store.runWatchLoop()
        watchLoop.withLock { slot in
            slot?.cancel()
            slot = task
        }
    }

    func stopWatchLoop() {
        watchLoop.withLock { $0 }?.cancel()
    }
}
