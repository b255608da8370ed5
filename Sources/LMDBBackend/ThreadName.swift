#if canImport(Glibc)
import Glibc
#endif

/// Names the calling thread as `top -H`, `ps -T`, /proc/PID/task/TID/comm and debuggers show
/// it (at most 15 bytes; longer names are cut). Foundation's `Thread.name` set before `start()`
/// does not reach the operating system on Linux, so threads name themselves when they begin,
/// through /proc/thread-self/comm (the same as prctl(PR_SET_NAME), which Swift cannot call).
public func nameCurrentThread(_ name: String) {
    #if canImport(Glibc)
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    #endif
}
