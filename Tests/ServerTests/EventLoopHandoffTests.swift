import NIOCore
import NIOEmbedded
@testable import Server
import Synchronization
import Testing

@Suite("Event loop hand-off: a burst of answers goes over as one task per loop")
struct EventLoopHandoffTests {
    @Test func insideABatchWorkWaitsForItsEndThenRunsInOrderPerLoop() {
        let a = EmbeddedEventLoop(), b = EmbeddedEventLoop()
        let ran = Mutex<[String]>([])
        EventLoopHandoff.batching {
            for i in 0..<3 { EventLoopHandoff.execute({ ran.withLock { $0.append("a\(i)") } }, on: a) }
            EventLoopHandoff.execute({ ran.withLock { $0.append("b0") } }, on: b)
            // A nested batch joins this one: its work waits for the outer end too.
            EventLoopHandoff.batching {
                EventLoopHandoff.execute({ ran.withLock { $0.append("a3") } }, on: a)
            }
            a.run()
            b.run()
            #expect(ran.withLock { $0 }.isEmpty, "work ran before the batch ended")
        }
        b.run()
        #expect(ran.withLock { $0 } == ["b0"])
        a.run()
        #expect(ran.withLock { $0 } == ["b0", "a0", "a1", "a2", "a3"])
    }

    @Test func outsideABatchWorkIsExecutedAtOnce() {
        let a = EmbeddedEventLoop()
        let ran = Mutex(0)
        EventLoopHandoff.execute({ ran.withLock { $0 += 1 } }, on: a)
        a.run()
        #expect(ran.withLock { $0 } == 1)
    }

    @Test func aThrowingBatchStillHandsOverWhatItGathered() {
        struct Failure: Error {}
        let a = EmbeddedEventLoop()
        let ran = Mutex(0)
        #expect(throws: Failure.self) {
            try EventLoopHandoff.batching {
                EventLoopHandoff.execute({ ran.withLock { $0 += 1 } }, on: a)
                throw Failure()
            }
        }
        a.run()
        #expect(ran.withLock { $0 } == 1)
        // The thread is out of the batch again.
        EventLoopHandoff.execute({ ran.withLock { $0 += 1 } }, on: a)
        a.run()
        #expect(ran.withLock { $0 } == 2)
    }
}
