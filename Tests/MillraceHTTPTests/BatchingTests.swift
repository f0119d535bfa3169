import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillraceHTTP
import MillraceTestSupport

/// Continuous batching (ModelBatcher): callers' rows share calls, streams go first, and each
/// caller gets what a call of its own rows gives, to the rounding of the convolutions' batch
/// split (the kernel header states it: a batch of 3 does not give bit for bit a batch of 2 and
/// a batch of 1).
@Suite(.serialized) struct BatchingTests {
    static func folder() throws -> ModelFolder { try ModelFolder.load(Fixtures.path("unet-tiny-a")) }

    @Test func concurrentCallersShareACallAndGetTheirOwnRows() throws {
        let folder = try Self.folder()
        let c = folder.config
        let lock = FairLock()
        let batcher = ModelBatcher(model: folder.model, modelLock: lock, maxRows: 16, window: 5)
        defer { batcher.stop() }
        let inputs = (0..<3).map { GaussianSource.draw(count: $0 + 1, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: UInt64($0)) }
        let times: [[Float]] = [[100], [200, 300], [400, 500, 600]]
        let labels: [[Int]] = [[0], [1, 2], [2, 0, 1]]
        let alone = (0..<3).map { folder.model.forward(inputs[$0], timesteps: times[$0], classLabels: labels[$0]) }
        let results = Results()
        for _ in 0..<3 { batcher.join() }
        let group = DispatchGroup()
        for k in 0..<3 {
            group.enter()
            Thread {
                results.set(k, batcher.forward(inputs[k], timesteps: times[k], classLabels: labels[k], priority: .stream))
                batcher.leave()
                group.leave()
            }.start()
        }
        group.wait()
        for k in 0..<3 {
            let out = try #require(results.get(k))
            #expect(out.shape == alone[k].shape)
            #expect(relativeError(out.data, alone[k].data) < 1e-5, "caller \(k)")
        }
        // One call of 6 rows: the window (5 s) waited for all three joined callers.
        let s = batcher.batchRows.snapshot
        #expect(s.count == 1 && s.sum == 6)
    }

    final class Results: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Int: Tensor] = [:]
        private var order: [Int] = []
        func set(_ k: Int, _ t: Tensor) { lock.lock(); values[k] = t; order.append(k); lock.unlock() }
        func get(_ k: Int) -> Tensor? { lock.lock(); defer { lock.unlock() }; return values[k] }
        var finished: [Int] { lock.lock(); defer { lock.unlock() }; return order }
    }

    /// A call has room for one caller's rows: the stream, which asked last, goes first.
    @Test func streamsGoBeforeGenerations() throws {
        let folder = try Self.folder()
        let c = folder.config
        let lock = FairLock()
        let batcher = ModelBatcher(model: folder.model, modelLock: lock, maxRows: 2, window: 0)
        defer { batcher.stop() }
        let x = GaussianSource.draw(count: 2, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: 9)
        let results = Results()
        // The order of the model calls, as the batcher makes them (the callers' threads may wake
        // up in another order on a busy machine).
        let calls = CallLog()
        batcher.onCall = { calls.append($0) }
        // The model is held: the first call waits, and the next two queue behind it.
        lock.lock()
        let first = Thread { results.set(0, batcher.forward(x, timesteps: [1, 2], classLabels: [0, 0], priority: .generation)) }
        first.start()
        #expect(HardeningTests.Live.waitFor(10) { lock.queued == 2 }, "the first call waits for the model")
        let gen = Thread { results.set(1, batcher.forward(x, timesteps: [3, 4], classLabels: [1, 1], priority: .generation)) }
        gen.start()
        #expect(HardeningTests.Live.waitFor(10) { batcher.pendingCount == 1 })
        let stream = Thread { results.set(2, batcher.forward(x, timesteps: [5, 6], classLabels: [2, 2], priority: .stream)) }
        stream.start()
        #expect(HardeningTests.Live.waitFor(10) { batcher.pendingCount == 2 })
        lock.unlock()
        #expect(HardeningTests.Live.waitFor(20) { results.finished.count == 3 })
        #expect(Set(results.finished) == [0, 1, 2])
        #expect(calls.entries == [[.generation], [.stream], [.generation]], "the stream's call before the generation's")
    }

    final class CallLog: @unchecked Sendable {
        private let lock = NSLock()
        private var log: [[ModelBatcher.Priority]] = []
        func append(_ p: [ModelBatcher.Priority]) { lock.lock(); log.append(p); lock.unlock() }
        var entries: [[ModelBatcher.Priority]] { lock.lock(); defer { lock.unlock() }; return log }
    }

    /// Through the service: a generation and a stream with batching give what they give without.
    @Test func serviceResultsMatchUnbatched() throws {
        func run(_ rows: Int) throws -> (RGBImage, RGBImage) {
            var o = MillraceService.Options()
            o.maxBatchRows = rows
            let s = MillraceService(folder: try Self.folder(), options: o)
            defer { s.beginShutdown() }
            let g = s.handle(HardeningTests.request("POST", "/v1/generate", body: #"{"class": 1, "steps": 4, "count": 3, "guidance": 2, "upscale": 1}"#))
            guard case .bytes(let png) = g.body, g.status == 200 else { throw TestFailure("generate failed: \(g.status)") }
            #expect(s.handle(HardeningTests.request("POST", "/v1/streams", body: #"{"filter": false, "rcfg": "full", "guidance": 2}"#)).status == 201)
            let entry = try #require(s.scheduler.streams.first)
            _ = s.scheduler.submit(RGBImage(width: 8, height: 8, fill: (0.3, 0.6, 0.9)), to: entry.id)
            let frame = try #require(entry.output.next(after: 0, timeout: 5)).item.image
            return (try RGBImage.decode(png), frame)
        }
        let (gOff, fOff) = try run(0), (gOn, fOn) = try run(32)
        #expect(relativeError(gOn.planes, gOff.planes) <= 1.0 / 255 + 1e-6, "8-bit PNGs agree to one level")
        #expect(relativeError(fOn.planes, fOff.planes) < 1e-5)
    }
}
