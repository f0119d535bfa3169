import Foundation
import Testing
@testable import MillraceImaging
@testable import MillracePipelines
import MillraceTestSupport

@Suite struct QueueTests {
    @Test func latestSlotReplacesAndCountsDrops() {
        let slot = LatestSlot<Int>()
        slot.put(1)
        slot.put(2)
        slot.put(3)
        #expect(slot.dropped == 2 && slot.received == 3)
        #expect(slot.poll() == 3)
        #expect(slot.poll() == nil)
        slot.put(4)
        #expect(slot.take(timeout: 0.01) == 4)
        #expect(slot.take(timeout: 0.01) == nil)
        #expect(slot.dropped == 2)
    }

    @Test func takeWaitsForAProducerOnAnotherThread() {
        let slot = LatestSlot<Int>()
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.05) { slot.put(7) }
        #expect(slot.take(timeout: 5) == 7)
    }

    /// A slow viewer gets the newest frame and misses the ones in between; the producer never waits.
    @Test func slowViewerMissesFramesWithoutSlowingTheProducer() {
        let out = Broadcast<Int>()
        var seenFast: [Int] = []
        var seq = 0
        for i in 1...10 {
            out.publish(i)
            if let (v, s) = out.next(after: seq, timeout: 0) { seenFast.append(v); seq = s }
        }
        #expect(seenFast == Array(1...10))
        // The slow viewer looked once at the start and once now.
        let slow = out.next(after: 0, timeout: 0)
        #expect(slow?.item == 10 && slow?.sequence == 10)
        #expect(out.next(after: 10, timeout: 0.01) == nil)
        out.close()
        #expect(out.next(after: 10, timeout: 1) == nil)
    }

    /// Two streams with frames waiting are served alternately, one frame per stream per turn.
    @Test func schedulerIsRoundRobin() throws {
        let scheduler = StreamScheduler()
        let a = scheduler.add(try Self.session(), id: "a")
        let b = scheduler.add(try Self.session(), id: "b")
        let frame = RGBImage(width: 8, height: 8, fill: (0.3, 0.6, 0.9))
        var served: [String] = []
        for _ in 0..<3 {
            _ = scheduler.submit(frame, to: "a")
            _ = scheduler.submit(frame, to: "b")
            served.append(scheduler.runOnce() ?? "-")
            _ = scheduler.submit(frame, to: "a")  // a refills before b is served: still b's turn
            served.append(scheduler.runOnce() ?? "-")
        }
        #expect(served == ["a", "b", "a", "b", "a", "b"])
        #expect(a.outputs == 3 && b.outputs == 3)
        #expect(a.input.dropped == 2)  // a's refill replaced a waiting frame twice
        #expect(scheduler.runOnce() == "a")
        #expect(scheduler.runOnce() == nil)
        #expect(!scheduler.submit(frame, to: "missing"))
    }

    /// The worker thread processes submitted frames and publishes them; stop ends the outputs.
    @Test func workerThreadPublishesAndStops() throws {
        let scheduler = StreamScheduler()
        let e = scheduler.add(try Self.session())
        scheduler.start()
        _ = scheduler.submit(RGBImage(width: 8, height: 8, fill: (0.5, 0.5, 0.5)), to: e.id)
        let got = e.output.next(after: 0, timeout: 30)
        #expect(got?.item.index == 1)
        #expect(got?.item.png.starts(with: [0x89, 0x50, 0x4E, 0x47]) == true)
        scheduler.stop()
        #expect(e.output.isClosed)
    }

    /// A frame that fails inside the scheduler (the pipeline refuses it) counts an error with
    /// its message, publishes nothing, and the stream goes on with the next frame.
    @Test func aFrameThatFailsInTheSchedulerDoesNotStopTheStream() throws {
        let scheduler = StreamScheduler()
        let e = scheduler.add(try Self.session())
        _ = scheduler.submit(RGBImage(width: 8, height: 8, fill: (0.5, 0.5, 0.5)), to: e.id)
        #expect(scheduler.runOnce() == e.id)
        let published = e.output.currentSequence
        _ = scheduler.submit(RGBImage(width: 8, height: 8, fill: (Float.nan, 0.2, 0.3)), to: e.id)
        #expect(scheduler.runOnce() == e.id)
        #expect(e.errors == 1 && e.outputs == 1)
        #expect(e.lastError?.contains("non-finite") == true)
        #expect(e.output.currentSequence == published, "nothing published for the failed frame")
        _ = scheduler.submit(RGBImage(width: 3, height: 5, fill: (0.1, 0.2, 0.3)), to: e.id)
        #expect(scheduler.runOnce() == e.id)
        #expect(e.outputs == 2 && e.errors == 1)
    }

    @Test func idleStreamsExpire() throws {
        let scheduler = StreamScheduler()
        let e = scheduler.add(try Self.session())
        #expect(scheduler.expire(idle: 60).isEmpty)
        // Idle for more than −1 s: any stream, with no wait.
        #expect(scheduler.expire(idle: -1) == [e.id])
        #expect(scheduler.stream(e.id) == nil && e.output.isClosed)
    }

    static func session() throws -> StreamSession {
        let p = try StreamPipeline(sampler: Fixtures.tinySampler(), times: [0.5], settings: StreamSettings(classIndex: 0), seed: 1)
        return StreamSession(pipeline: p, filter: nil)
    }
}
