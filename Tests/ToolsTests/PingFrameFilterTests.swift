import NIOCore
import Testing
@testable import SwetcdBench

/// swetcd-bench's PING filter: server PINGs are taken out of the inbound HTTP/2 bytes and
/// acknowledged; every other byte passes through unchanged and in order.
struct PingFrameFilterTests {
    private func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, payload: [UInt8]) -> [UInt8] {
        let n = payload.count
        var b: [UInt8] = [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags]
        b += [UInt8(stream >> 24 & 0xff), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)]
        return b + payload
    }

    private func ping(_ value: UInt64, ack: Bool = false) -> [UInt8] {
        frame(type: 6, flags: ack ? 1 : 0, payload: (0..<8).map { UInt8(value >> (56 - 8 * $0) & 0xff) })
    }

    /// Feeds `bytes` in chunks of `chunk` bytes; returns the forwarded bytes and the PINGs seen.
    private func run(_ bytes: [UInt8], chunk: Int) -> (forwarded: [UInt8], pings: [UInt64]) {
        var filter = PingFrameFilter()
        var forwarded: [UInt8] = []
        var pings: [UInt64] = []
        var i = 0
        while i < bytes.count {
            let part = Array(bytes[i..<min(i + chunk, bytes.count)])
            let out = filter.process(ByteBuffer(bytes: part))
            for b in out.forward { forwarded += Array(b.readableBytesView) }
            pings += out.pings
            i += chunk
        }
        return (forwarded, pings)
    }

    @Test(arguments: [1, 2, 5, 9, 13, 17, 100, 10_000])
    func pingsRemovedOtherFramesKept(chunk: Int) {
        let settings = frame(type: 4, payload: [0, 4, 0, 1, 0, 0])
        let headers = frame(type: 1, flags: 4, stream: 1, payload: Array(repeating: 0x82, count: 20))
        let data = frame(type: 0, flags: 1, stream: 1, payload: (0..<300).map { UInt8($0 % 251) })
        let ack = ping(7, ack: true)
        let wrongLength = frame(type: 6, payload: [1, 2, 3])   // malformed: NIO must see and reject it
        let input = settings + ping(0x0102_0304_0506_0708) + headers + data + ping(42) + ack + wrongLength + data
        let (forwarded, pings) = run(input, chunk: chunk)
        #expect(pings == [0x0102_0304_0506_0708, 42])
        #expect(forwarded == settings + headers + data + ack + wrongLength + data)
    }

    @Test func ackFrameEchoesThePayload() {
        let b = PingFrameFilter.ack(0x1122_3344_5566_7788, allocator: ByteBufferAllocator())
        #expect(Array(b.readableBytesView) == ping(0x1122_3344_5566_7788, ack: true))
    }
}
