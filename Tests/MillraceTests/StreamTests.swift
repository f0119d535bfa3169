import Foundation
@testable import Millrace
import Testing

/// Stream batch (§5), RCFG (§6) on a tiny random model.
@Suite struct StreamTests {
    static func sampler() -> FlowSampler {
        let model = UNet2DModel(config: TrainerTests.tinyConfig(), seed: 3)
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        return FlowSampler(model: model, flow: flow)
    }

    static func frames(_ count: Int) -> [Tensor] {
        (0..<count).map { GaussianSource.draw(count: 1, shape: [3, 8, 8], seed: 100 + UInt64($0)).scaled(0.5) }
    }

    /// Call k's output equals frame k − n + 1 run through the n stages one at a time (1e-5).
    @Test(arguments: [1, 2, 3, 4]) func streamBatchEqualsSequential(n: Int) throws {
        let s = Self.sampler()
        let times = try StreamPipeline.times(strength: 0.6, steps: n)
        let stream = try StreamPipeline(sampler: s, times: times, settings: StreamSettings(classIndex: 1), seed: 9)
        let reference = try StreamPipeline(sampler: s, times: times, settings: StreamSettings(classIndex: 1), seed: 9)
        let fs = Self.frames(n + 4)
        for (k, f) in fs.enumerated() {
            let out = try stream.process(f)
            let source = fs[max(0, k - n + 1)]  // warm-up repeats frame 0
            let expected = reference.sequential(source)
            #expect(relativeError(out.data, expected.data) < 1e-5, "call \(k), n \(n)")
        }
        // One batched model call per frame after the n warm-up calls of the first frame.
        #expect(stream.modelCalls == n + fs.count - 1)
    }

    @Test func residualNegativeWithFullDeltaReproducesTheReference() {
        var rng = TestRNG(seed: 4)
        let x = Tensor(shape: [1, 3, 4, 4], data: rng.floats(48))
        let r = Tensor(shape: [1, 3, 4, 4], data: rng.floats(48))
        let t: Float = 0.37
        let vu = StreamPipeline.residualNegative(x: x, t: t, reference: r, delta: 1)
        var estimate = x
        estimate.addScaled(vu, 1 - t)  // data estimate x̂ = x + (1 − t)·v_u
        #expect(relativeError(estimate.data, r.data) < 1e-5)
    }

    @Test func rcfgIsRefusedAtTimeZero() throws {
        let s = Self.sampler()
        let times = try StreamPipeline.times(strength: 1, steps: 2)
        #expect(times[0] == 0)
        for g in [StreamGuidance.selfNegative, .onetime] {
            var settings = StreamSettings(classIndex: 0)
            settings.guidance = g
            #expect(throws: StreamError.self) { _ = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 1) }
        }
        var ok = StreamSettings(classIndex: 0)
        ok.guidance = .full
        _ = try StreamPipeline(sampler: s, times: times, settings: ok, seed: 1)
    }

    @Test(arguments: StreamGuidance.allCases) func everyGuidanceModeRunsAndIsFinite(mode: StreamGuidance) throws {
        let s = Self.sampler()
        var settings = StreamSettings(classIndex: 0)
        settings.guidance = mode
        settings.scale = 2
        settings.delta = 0.8
        let stream = try StreamPipeline(sampler: s, times: try StreamPipeline.times(strength: 0.5, steps: 3), settings: settings, seed: 2)
        for f in Self.frames(5) {
            let out = try stream.process(f)
            #expect(out.shape == [1, 3, 8, 8])
            let finite = out.data.allSatisfy { $0.isFinite }
            #expect(finite)
        }
        settings.classIndex = 1
        try stream.update(settings)
        _ = try stream.process(Self.frames(1)[0])
    }

    @Test func badFramesAndSettingsGetClearErrors() throws {
        let stream = try StreamPipeline(sampler: Self.sampler(), times: [0.5], settings: StreamSettings(classIndex: 0), seed: 1)
        #expect(throws: StreamError.self) { _ = try stream.process(Tensor(zeros: [1, 3, 4, 4])) }
        #expect(throws: StreamError.self) { try stream.update(StreamSettings(classIndex: 7)) }
        #expect(throws: StreamError.self) { _ = try StreamPipeline.times(strength: 0, steps: 2) as [Float] }
        #expect(throws: StreamError.self) { _ = try StreamPipeline.times(strength: 0.5, steps: 0) }
        #expect(throws: StreamError.self) {
            _ = try StreamPipeline(sampler: Self.sampler(), times: [0.5, 0.4], settings: StreamSettings(classIndex: 0), seed: 1)
        }
    }
}
