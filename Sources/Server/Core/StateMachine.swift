import Foundation
import LMDBBackend
import Logging
import MVCC
import Synchronization

/// The state machine's storage objects: backend, keyspace, lessor and the bridge between the
/// last two. They are replaced together when a snapshot from the leader is installed.
struct StateMachine: Sendable {
    let backend: Backend
    let store: MVCCStore
    let lessor: Lessor
    let bridge: LeaseBridge

    /// Opens the keyspace and lessor on `backend` and wires them together.
    static func open(_ backend: Backend, config: ServerConfigParts) throws -> StateMachine {
        let lessor = try Lessor(config: config.lessor, persistence: BackendLeasePersistence(backend))
        let store = try MVCCStore(backend: backend, options: config.store)
        let bridge = LeaseBridge(lessor: lessor)
        bridge.store = store
        store.setLeaseHooks(bridge)
        lessor.setKeyDeleter(bridge)
        try bridge.reattach()
        return StateMachine(backend: backend, store: store, lessor: lessor, bridge: bridge)
    }
}

/// What is needed to (re)open the state machine on a backend file.
struct ServerConfigParts: Sendable {
    var backend: Backend.Options
    var lessor: LessorConfig
    var store: MVCCStore.Options
}

/// The server's current state machine, swappable while API requests run: API code reads the
/// current parts through it (a request that already holds the old parts finishes on them, or
/// fails with a storage error once they are closed).
final class StateMachineHolder: Sendable {
    private let current: Mutex<StateMachine>
    /// Every open server watch stream, re-bound to the new keyspace after a swap.
    let watchStreams = WatchStreamRegistry()
    /// The keyspace's watch delivery task.
    let watchLoop = Mutex<Task<Void, Never>?>(nil)
    let parts: ServerConfigParts

    init(_ machine: StateMachine, parts: ServerConfigParts) {
        current = Mutex(machine)
        self.parts = parts
    }

    var value: StateMachine { current.withLock { $0 } }

    /// Makes `machine` current and returns the one it replaces.
    func replace(with machine: StateMachine) -> StateMachine {
        current.withLock { cur in
            let old = cur
            cur = machine
            return old
        }
    }

    /// Starts the watch delivery task of the current keyspace, cancelling the previous one.
    func restartWatchLoop() {
        let task = value.store.runWatchLoop()
        let old = watchLoop.withLock { slot in
            let old = slot
            slot = task
            return old
        }
        old?.cancel()
    }

    func stopWatchLoop() {
        watchLoop.withLock { $0 }?.cancel()
    }
}
