#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Which thread owns some state. The owner claims it from its own thread and releases it when
/// done; `check()` then stops a debug build when another thread touches the state. Unclaimed
/// (before the owner starts, after it ends) the state belongs to whoever holds the object,
/// ordered with the owner by its thread's start and its exit.
final class ThreadOwner: Sendable {
    /// The owning thread's `pthread_t` as an integer; 0 while unclaimed.
    private let owner = Atomic<UInt>(0)

    private static var current: UInt { UInt(bitPattern: Int(bitPattern: pthread_self())) }

    /// Makes the calling thread the owner.
    func claim() { owner.store(Self.current, ordering: .releasing) }

    /// Ends the ownership (call on the owning thread as its last touch).
    func release() { owner.store(0, ordering: .releasing) }

    /// Whether a thread owns the state now.
    var isClaimed: Bool { owner.load(ordering: .acquiring) != 0 }

    /// Whether the calling thread is the owner.
    var isCurrent: Bool { owner.load(ordering: .acquiring) == Self.current }

    /// Debug builds trap when a thread other than a claimed owner touches the state.
    @inline(__always)
    func check(_ what: StaticString = #function, file: StaticString = #fileID, line: UInt = #line) {
        assert(!isClaimed || isCurrent, "\(what) touched loop-only state off its owning thread", file: file, line: line)
    }
}
