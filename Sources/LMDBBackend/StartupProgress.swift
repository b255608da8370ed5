import Synchronization

/// How far a member's start-up has got: a counter that recovery code bumps as it reads WAL
/// records, loads a snapshot, opens the backend or rebuilds the key index, and the name of
/// the current step. A supervisor (systemd's start timeout) asks for more time only while the
/// counter moves, so a start that makes progress is not killed and a stuck one still is.
///
/// Cheap to bump from any thread (one relaxed atomic add); bumping is optional everywhere
/// (pass nil to skip it).
public final class StartupProgress: Sendable {
    private let total = Atomic<UInt64>(0)
    private let inStep = Atomic<UInt64>(0)
    private let step = Mutex<(name: String, unit: String)>(("starting", ""))

    public init() {}

    /// Every bump so far (steps begun and items counted): it only grows.
    public var count: UInt64 { total.load(ordering: .relaxed) }

    /// Begins step `name` (counted in `unit`, e.g. "entries"; "" for a step without items).
    /// Beginning a step counts as progress.
    public func begin(_ name: String, unit: String = "") {
        step.withLock { $0 = (name, unit) }
        inStep.store(0, ordering: .relaxed)
        total.add(1, ordering: .relaxed)
    }

    /// Counts `n` items of the current step.
    public func advance(by n: UInt64 = 1) {
        inStep.add(n, ordering: .relaxed)
        total.add(n, ordering: .relaxed)
    }

    /// Counts progress that is not an item of the step (a record of another kind, a file).
    public func touch() {
        total.add(1, ordering: .relaxed)
    }

    /// A one-line description: "replaying WAL: 1200 entries", or the step's name alone.
    public var description: String {
        let (name, unit) = step.withLock { $0 }
        return unit.isEmpty ? name : "\(name): \(inStep.load(ordering: .relaxed)) \(unit)"
    }
}
