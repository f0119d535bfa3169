import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillracePipelines
import MillraceTestSupport

/// Stream batch (§5), RCFG (§6) on a tiny random model.
@Suite struct StreamTests {

    static func frames(_ count: Int) -> [Tensor] {
        (0..<count).map { GaussianSource.draw(count: 1, shape: [3, 8, 8], seed: 100 + UInt64($0)).scaled(0.5) }
    }

    /// Call k's output equals frame k − n + 1 run through the n stages one at a time (1e-5).
    @Test(arguments: [1, 2, 3, 4]) func streamBatchEqualsSequential(n: Int) throws {
        let s = Fixtures.tinySampler()
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

    /// With Euler stepping the batch still equals the sequential run, and the sequential run is
    /// plain Euler integration from the noised frame: x_{i+1} = x_i + (t_{i+1} − t_i)·v_i, then
    /// the last slot's jump x + (1 − t)·v.
    @Test(arguments: [1, 2, 3]) func eulerSteppingIsEulerIntegration(n: Int) throws {
        let s = Fixtures.tinySampler()
        let times = try StreamPipeline.times(strength: 0.7, steps: n)
        var settings = StreamSettings(classIndex: 1)
        settings.stepping = .euler
        let stream = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 3)
        let reference = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 3)
        let fs = Self.frames(n + 3)
        for (k, f) in fs.enumerated() {
            let out = try stream.process(f)
            #expect(relativeError(out.data, reference.sequential(fs[max(0, k - n + 1)]).data) < 1e-5, "call \(k), n \(n)")
        }
        var x = StreamPipeline.mix(fs[0], times[0], reference.noise[0])
        let scale = Float(s.flow.timestepScale)
        for i in 0..<n {
            let v = s.forward(x, timesteps: [times[i] * scale], classLabels: [1])
            x.addScaled(v, (i + 1 < n ? times[i + 1] : 1) - times[i])
        }
        #expect(relativeError(reference.sequential(fs[0]).data, x.data) < 1e-5)
        if n > 1 {
            // Renoising differs from Euler once there is a step between slots.
            let renoise = try StreamPipeline(sampler: s, times: times, settings: StreamSettings(classIndex: 1), seed: 3)
            #expect(relativeError(renoise.sequential(fs[0]).data, x.data) > 1e-3)
        }
    }

    /// A restyle model's rows are [x_i; the frame the row came from]: the stream batch still
    /// equals the sequential run (the frame travels with its row through the slots), the first
    /// slot's output is x + (1 − t)·v of the model fed [x; frame], and the frame changes the
    /// output even with the same noised state.
    @Test(arguments: [1, 2, 3]) func aRestyleModelSeesTheFrameItCameFrom(n: Int) throws {
        let s = Fixtures.tinyRestyleSampler()
        #expect(StreamPipeline.isRestyleModel(s) && StreamPipeline.streamProblem(s) == nil && s.imageProblem != nil)
        let times = try StreamPipeline.times(strength: 1, steps: n)
        for stepping in StreamStepping.allCases {
            var settings = StreamSettings(classIndex: 1)
            settings.stepping = stepping
            let stream = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 5)
            let reference = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 5)
            let fs = Self.frames(n + 3)
            for (k, f) in fs.enumerated() {
                let out = try stream.process(f)
                #expect(out.shape == [1, 3, 8, 8])
                #expect(relativeError(out.data, reference.sequential(fs[max(0, k - n + 1)]).data) < 1e-5, "call \(k), n \(n), \(stepping)")
            }
        }
        // One slot from noise (t_0 = 0): the output is the frame plus the estimated change,
        // f + N + v([N; f]); the change depends on the frame through the condition.
        let one = try StreamPipeline(sampler: s, times: [0], settings: StreamSettings(classIndex: 1), seed: 5)
        let f = Self.frames(2)
        var expected = one.noise[0]
        let input = Tensor(shape: [1, 6, 8, 8], data: one.noise[0].data + f[0].data)
        expected.addScaled(s.forward(input, timesteps: [0], classLabels: [1]), 1)
        expected.addScaled(f[0], 1)
        #expect(relativeError(one.sequential(f[0]).data, expected.data) < 1e-5)
        var change0 = one.sequential(f[0]), change1 = one.sequential(f[1])
        change0.addScaled(f[0], -1)
        change1.addScaled(f[1], -1)
        #expect(relativeError(change0.data, change1.data) > 1e-3)
        // A plain image model is still no restyle model.
        #expect(!StreamPipeline.isRestyleModel(Fixtures.tinySampler()))
    }

    /// A restyle model's state is the change to its frame: below strength 1 a frame enters slot 0
    /// as no change, x_t0 = (1 − t0)·noise, and with blend β as the previous output's change to
    /// it, β·(ŷ − frame), noised to t0.
    @Test func aRestyleStreamBelowStrengthOneStartsFromTheChange() throws {
        let s = Fixtures.tinyRestyleSampler()
        let times = try StreamPipeline.times(strength: 0.5, steps: 1)
        let t0 = times[0]
        let f = Self.frames(2)
        let plain = try StreamPipeline(sampler: s, times: times, settings: StreamSettings(classIndex: 1), seed: 5)
        let first = try plain.process(f[0])
        let (e0, _) = plain.evaluate([plain.noise[0].scaled(1 - t0)], [t0], refs: [nil], conds: [f[0]])
        #expect(relativeError(first.data, StreamPipeline.adding(e0[0], f[0]).data) < 1e-5)
        #expect(relativeError(plain.sequential(f[0]).data, first.data) < 1e-5)
        var settings = StreamSettings(classIndex: 1)
        settings.blend = 0.5
        let blended = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 5)
        let out0 = try blended.process(f[0]), out1 = try blended.process(f[1])
        #expect(relativeError(out0.data, first.data) < 1e-6, "nothing to blend with at the first frame")
        var change = out0
        change.addScaled(f[1], -1)
        let (e1, _) = blended.evaluate([StreamPipeline.mix(change.scaled(0.5), t0, blended.noise[0])], [t0], refs: [nil], conds: [f[1]])
        #expect(relativeError(out1.data, StreamPipeline.adding(e1[0], f[1]).data) < 1e-5)
        #expect(relativeError(out1.data, try plain.process(f[1]).data) > 1e-4, "the blend changes the output")
    }

    /// With blend β a frame enters as (1 − β)·frame + β·(the previous output): the second output
    /// of a blended stream equals an unblended stream's output for that mixture.
    @Test func blendMixesThePreviousOutputIntoTheEnteringFrame() throws {
        let s = Fixtures.tinySampler()
        let times = try StreamPipeline.times(strength: 0.6, steps: 1)
        var blended = StreamSettings(classIndex: 1)
        blended.blend = 0.4
        let a = try StreamPipeline(sampler: s, times: times, settings: blended, seed: 5)
        let b = try StreamPipeline(sampler: s, times: times, settings: StreamSettings(classIndex: 1), seed: 5)
        let fs = Self.frames(2)
        let first = try a.process(fs[0])
        #expect(relativeError(first.data, try b.process(fs[0]).data) < 1e-6, "nothing to blend with at the first frame")
        var mixture = fs[1].scaled(0.6)
        mixture.addScaled(first, 0.4)
        #expect(relativeError(try a.process(fs[1]).data, try b.process(mixture).data) < 1e-5)
        var bad = StreamSettings(classIndex: 1)
        bad.blend = 1
        #expect(throws: StreamError.self) { try a.update(bad) }
    }

    /// Structure guidance moves the estimate's coarse luma the share w of the way to the frame's
    /// and shifts the three channels alike: a uniform difference in colour is a uniform
    /// difference in luma, which w = 1 removes, and the chroma (channel differences) stays the
    /// estimate's; a one-pixel checkerboard of luma (fine detail) is almost left alone away from the borders.
    @Test func structureGuidanceTakesTheFramesCoarseLumaAndKeepsTheChroma() throws {
        var rng = TestRNG(seed: 11)
        let est = Tensor(shape: [1, 3, 16, 16], data: rng.floats(768))
        let offsets: [Float] = [0.3, -0.2, 0.5]
        var frame = est
        for c in 0..<3 { for p in 0..<256 { frame.data[c * 256 + p] += offsets[c] } }
        func luma(_ t: Tensor, _ p: Int) -> Float { 0.299 * t.data[p] + 0.587 * t.data[256 + p] + 0.114 * t.data[512 + p] }
        for w: Float in [1, 0.5] {
            var x = est
            StreamPipeline.alignStructure(&x, to: frame, weight: w, sigma: 1.5)
            for p in [0, 17, 255] {
                let expected = luma(est, p) + w * (luma(frame, p) - luma(est, p))
                #expect(abs(luma(x, p) - expected) < 1e-5, "w \(w), pixel \(p)")
                #expect(abs((x.data[p] - x.data[256 + p]) - (est.data[p] - est.data[256 + p])) < 1e-5, "chroma kept")
            }
        }
        var checker = est
        for c in 0..<3 { for y in 0..<16 { for x in 0..<16 { checker.data[c * 256 + y * 16 + x] += (x + y) % 2 == 0 ? 0.4 : -0.4 } } }
        var x = est
        StreamPipeline.alignStructure(&x, to: checker, weight: 1, sigma: 1.5)
        // Away from the borders, where the blur repeats edge pixels and the pattern is cut.
        let inner = (0..<3).flatMap { c in (5..<11).flatMap { y in (5..<11).map { c * 256 + y * 16 + $0 } } }
        let moved = inner.map { abs(x.data[$0] - est.data[$0]) }.max() ?? 1
        #expect(moved < 0.02 * 0.4, "fine detail stays the estimate's (moved \(moved))")
    }

    /// The matched target aims an output at its frame's luma with the departures from the
    /// frame's median scaled up to the output's contrast where the output has more: at w = 1
    /// the output's luma is m_f + max(1, σ_o/σ_f)·(Y(f) − m_f) at coarse scales (checked on
    /// patterns that vary slowly, where the blur changes little) and correlates with the frame.
    /// A dark, contrasted output keeps more of its dark than the frame target leaves it; a pale
    /// one gets exactly the frame target; a flat frame has no layout to scale.
    @Test(arguments: [false, true]) func matchedStructureScalesTheFramesLayoutToTheOutputsContrast(change: Bool) throws {
        var frame = Tensor(zeros: [1, 3, 16, 16])
        for c in 0..<3 { for y in 0..<16 { for x in 0..<16 {
            frame.data[c * 256 + y * 16 + x] = 0.5 + 0.3 * sin(Float(x) / 5) * cos(Float(y) / 6)
        } } }
        func lumaPlane(_ t: Tensor, plus: Tensor? = nil) -> [Float] {
            let k: [Float] = [0.299, 0.587, 0.114]
            var y = [Float](repeating: 0, count: 256)
            for c in 0..<3 {
                for p in 0..<256 {
                    let extra: Float = plus?.data[c * 256 + p] ?? 0
                    y[p] += k[c] * (t.data[c * 256 + p] + extra)
                }
            }
            return y
        }
        let yFrame = lumaPlane(frame)
        let sdF = yFrame.meanAndDeviation().deviation, median = yFrame.sorted()[128]
        // The median is taken from a histogram, to within 1/4096 of the range.
        #expect(abs(StreamPipeline.median(yFrame) - median) <= (yFrame.max()! - yFrame.min()!) / 4096)
        var rng = TestRNG(seed: 3)
        let noise = rng.floats(10_001)
        #expect(abs(StreamPipeline.median(noise) - noise.sorted()[5000]) <= (noise.max()! - noise.min()!) / 4096)
        #expect(StreamPipeline.median([0.25, 0.25, 0.25]) == 0.25 && StreamPipeline.median([]) == 0)
        // A dark output with a strong layout of its own, and a pale one with a faint one; both
        // vary slowly and differ from the frame's layout.
        for (base, amplitude) in [(Float(-0.5), Float(0.8)), (Float(0.6), Float(0.05))] {
            var own = [Float](repeating: 0, count: 768)
            for c in 0..<3 { for y in 0..<16 { for x in 0..<16 {
                own[c * 256 + y * 16 + x] = base + amplitude * cos(Float(x) / 8 - Float(y) / 7) + 0.05 * Float(c)
            } } }
            let est = Tensor(shape: [1, 3, 16, 16], data: change ? (0..<768).map { own[$0] - frame.data[$0] } : own)
            let yOwn = lumaPlane(Tensor(shape: [1, 3, 16, 16], data: own))
            let sdO = yOwn.meanAndDeviation().deviation, contrasted = amplitude > 0.1
            #expect((sdO > 1.5 * sdF) == contrasted, "the cases need one output above the frame's contrast and one below")
            var matched = est, plain = est
            StreamPipeline.alignStructure(&matched, to: frame, estimateIsChange: change, weight: 1, sigma: 1.5, target: .matched)
            StreamPipeline.alignStructure(&plain, to: frame, estimateIsChange: change, weight: 1, sigma: 1.5)
            let yMatched = lumaPlane(matched, plus: change ? frame : nil), yPlain = lumaPlane(plain, plus: change ? frame : nil)
            // Inner pixels, away from the clamped borders of the blur.
            for p in [5 * 16 + 5, 8 * 16 + 8, 10 * 16 + 6] {
                let goal = median + max(1, sdO / sdF) * (yFrame[p] - median)
                #expect(abs(yMatched[p] - goal) < 0.03, "pixel \(p): \(yMatched[p]) against \(goal)")
            }
            #expect(StreamMeasures.correlation(yMatched, yFrame) > 0.95)
            #expect(StreamMeasures.correlation(yOwn, yFrame) < 0.5)
            if contrasted {
                // Its darkest quarter stays darker than the frame target leaves it.
                let dark = yFrame.indices.sorted { yFrame[$0] < yFrame[$1] }.prefix(64)
                let m = dark.map { yMatched[$0] }.reduce(0, +) / 64, q = dark.map { yPlain[$0] }.reduce(0, +) / 64
                #expect(m < q - 0.05, "matched \(m), frame target \(q)")
            } else {
                #expect(matched.data == plain.data, "a pale output gets the frame target")
            }
            let flat = Tensor(shape: [1, 3, 16, 16], data: [Float](repeating: 0.2, count: 768))
            var a = est, b = est
            StreamPipeline.alignStructure(&a, to: flat, estimateIsChange: change, weight: 0.5, sigma: 1.5, target: .matched)
            StreamPipeline.alignStructure(&b, to: flat, estimateIsChange: change, weight: 0.5, sigma: 1.5)
            #expect(a.data == b.data)
        }
    }

    /// A structure floor raises w for an output whose luma (as shown: clipped to the image
    /// range) correlates too little with its frame's, to the least w (within 0.01) that
    /// reaches the floor, for an image model's
    /// estimate and for a restyle model's change to its frame alike; an output already above
    /// the floor is left exactly as w alone leaves it.
    @Test(arguments: [false, true]) func structureFloorRaisesWOnlyWhereTheCorrelationIsBelowIt(change: Bool) throws {
        var rng = TestRNG(seed: 5)
        var frame = Tensor(zeros: [1, 3, 16, 16])
        for c in 0..<3 { for y in 0..<16 { for x in 0..<16 {
            frame.data[c * 256 + y * 16 + x] = 0.8 * sin(Float(x) / 3) * cos(Float(y) / 4) + 0.1 * Float(c)
        } } }
        // An output with no layout of its own: noise (for a change, the change that gives it).
        let noise = rng.floats(768).map { 0.3 * $0 }
        let est = Tensor(shape: [1, 3, 16, 16], data: change ? (0..<768).map { noise[$0] - frame.data[$0] } : noise)
        // The picture's luma (each channel clipped to [−1, 1]) against the frame's.
        func correlation(_ t: Tensor) -> Double {
            func v(_ j: Int) -> Float { min(max(change ? t.data[j] + frame.data[j] : t.data[j], -1), 1) }
            let out = (0..<256).map { 0.299 * v($0) + 0.587 * v(256 + $0) + 0.114 * v(512 + $0) }
            return StreamMeasures.correlation(out, (0..<256).map { 0.299 * frame.data[$0] + 0.587 * frame.data[256 + $0] + 0.114 * frame.data[512 + $0] })
        }
        var atW = est, floored = est
        StreamPipeline.alignStructure(&atW, to: frame, estimateIsChange: change, weight: 0.2, sigma: 1.5)
        let w = StreamPipeline.alignStructure(&floored, to: frame, estimateIsChange: change, weight: 0.2, sigma: 1.5, floor: 0.8)
        #expect(correlation(atW) < 0.8, "the test needs an output below the floor at w 0.2 (\(correlation(atW)))")
        #expect(w > 0.2 && w <= 1)
        #expect(correlation(floored) >= 0.8 - 1e-4, "floored correlation \(correlation(floored)), w \(w)")
        var less = est
        StreamPipeline.alignStructure(&less, to: frame, estimateIsChange: change, weight: w - 0.011, sigma: 1.5)
        #expect(correlation(less) < 0.8, "w \(w) is the least that reaches the floor")
        // Above the floor already: the same values as without it.
        var above = est, plain = est
        let kept = StreamPipeline.alignStructure(&above, to: frame, estimateIsChange: change, weight: w, sigma: 1.5, floor: 0.5)
        StreamPipeline.alignStructure(&plain, to: frame, estimateIsChange: change, weight: w, sigma: 1.5)
        #expect(kept == w && above.data == plain.data)
    }

    /// With structure guidance on, the stream batch still equals the sequential run (each row
    /// is aligned to the frame it came from), the output differs from the unguided one, and it
    /// is closer to the frame's luma; for a restyle model too, whose estimate is the change to
    /// the frame (its coarse luma is pulled toward 0). Out-of-range w or σ is refused.
    @Test(arguments: [1, 2], [false, true]) func structureGuidanceFollowsEachRowsOwnFrame(n: Int, restyle: Bool) throws {
        let s = restyle ? Fixtures.tinyRestyleSampler() : Fixtures.tinySampler()
        let times = try StreamPipeline.times(strength: restyle ? 1 : 0.8, steps: n)
        var settings = StreamSettings(classIndex: 1)
        settings.structure = 1
        let stream = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 4)
        let reference = try StreamPipeline(sampler: s, times: times, settings: settings, seed: 4)
        let plain = try StreamPipeline(sampler: s, times: times, settings: StreamSettings(classIndex: 1), seed: 4)
        let fs = Self.frames(n + 3)
        for (k, f) in fs.enumerated() {
            let out = try stream.process(f), unaligned = try plain.process(f)
            let source = fs[max(0, k - n + 1)]
            #expect(relativeError(out.data, reference.sequential(source).data) < 1e-5, "call \(k), n \(n)")
            func lumaError(_ t: Tensor) -> Float {
                let a = GaussianBlur.plane((0..<64).map { 0.299 * (t.data[$0] - source.data[$0]) + 0.587 * (t.data[64 + $0] - source.data[64 + $0])
                    + 0.114 * (t.data[128 + $0] - source.data[128 + $0]) }, width: 8, height: 8, sigma: 1.5)
                return a.map { $0 * $0 }.reduce(0, +)
            }
            #expect(lumaError(out) < lumaError(unaligned), "call \(k)")
        }
        for (w, sigma) in [(Float(1.5), Float(1.5)), (-0.1, 1.5), (.nan, 1.5), (0.5, 0.1), (0.5, 40)] {
            var bad = settings
            bad.structure = w
            bad.structureSigma = sigma
            #expect(throws: StreamError.self) { try stream.update(bad) }
        }
        for rho in [Float(-0.1), 1, .nan] {
            var bad = settings
            bad.structureFloor = rho
            #expect(throws: StreamError.self) { try stream.update(bad) }
        }
        // The defaults leave it off for an image model and turn it on for a restyle model, more
        // for a one-step restyle student (docs/STREAMS.md, "Structure guidance").
        let plainFlow = Fixtures.tinySampler().flow, restyleFlow = Fixtures.tinyRestyleSampler().flow
        var studentFlow = restyleFlow
        studentFlow.distilledGuidance = 2
        #expect(StreamSettings.defaults(classIndex: 0, flow: plainFlow).structure == StreamPipeline.defaultStructure)
        #expect(StreamPipeline.defaultStructure == 0)
        #expect(StreamSettings.defaults(classIndex: 0, flow: restyleFlow).structure == StreamPipeline.restyleStructure)
        #expect(StreamSettings.defaults(classIndex: 0, flow: studentFlow).structure == StreamPipeline.restyleStudentStructure)
        #expect(StreamPipeline.restyleStructure > 0 && StreamPipeline.restyleStudentStructure > StreamPipeline.restyleStructure)
        // The floor is on for a one-step restyle student only.
        #expect(StreamSettings.defaults(classIndex: 0, flow: studentFlow).structureFloor == StreamPipeline.restyleStructureFloor)
        #expect(StreamSettings.defaults(classIndex: 0, flow: restyleFlow).structureFloor == 0)
        #expect(StreamSettings.defaults(classIndex: 0, flow: plainFlow).structureFloor == 0)
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
        let s = Fixtures.tinySampler()
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
        let s = Fixtures.tinySampler()
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

    @Test func defaultsGuideWhereTheModelHasANullClass() throws {
        let s = Fixtures.tinySampler()
        try #require(s.flow.nullClass != nil)
        let guided = StreamSettings.defaults(classIndex: 1, flow: s.flow)
        #expect(guided.guidance == StreamPipeline.defaultGuidance && guided.guidance == .full)
        #expect(guided.scale == StreamPipeline.defaultScale && guided.classIndex == 1)
        // A pipeline accepts them, and they guide: the output differs from an unguided one.
        var unguided = guided
        unguided.guidance = .none
        let plainStream = try StreamPipeline(sampler: s, times: [0.4], settings: unguided, seed: 2)
        let stream = try StreamPipeline(sampler: s, times: [0.4], settings: guided, seed: 2)
        let frame = Self.frames(1)[0]
        let a = try stream.process(frame), b = try plainStream.process(frame)
        #expect(stream.modelCalls == 1 && a != b)
        var plain = s.flow
        plain.nullClass = nil
        let unguided2 = StreamSettings.defaults(classIndex: 0, flow: plain)
        #expect(unguided2.guidance == .none && unguided2.scale == StreamPipeline.defaultScale)
    }

    @Test func badFramesAndSettingsGetClearErrors() throws {
        let stream = try StreamPipeline(sampler: Fixtures.tinySampler(), times: [0.5], settings: StreamSettings(classIndex: 0), seed: 1)
        #expect(throws: StreamError.self) { _ = try stream.process(Tensor(zeros: [1, 3, 4, 4])) }
        #expect(throws: StreamError.self) { try stream.update(StreamSettings(classIndex: 7)) }
        #expect(throws: StreamError.self) { _ = try StreamPipeline.times(strength: 0, steps: 2) as [Float] }
        #expect(throws: StreamError.self) { _ = try StreamPipeline.times(strength: 0.5, steps: 0) }
        #expect(throws: StreamError.self) {
            _ = try StreamPipeline(sampler: Fixtures.tinySampler(), times: [0.5, 0.4], settings: StreamSettings(classIndex: 0), seed: 1)
        }
    }
}

@Suite struct SimilarityFilterTests {
    static func image(_ value: Float, size: Int = 16) -> RGBImage {
        RGBImage(width: size, height: size, fill: (value, value * 0.5, 1 - value))
    }

    /// A static input with η = 0.98, max_skip = 10: cs = 1 so p_skip = 1, and exactly one frame
    /// in 11 is processed (the one after every run of 10 skips).
    @Test func staticInputProcessesOneFrameInEleven() {
        var f = SimilarityFilter(threshold: 0.98, maxSkip: 10, side: 8, seed: 1)
        var pattern: [Bool] = []
        for _ in 0..<33 { pattern.append(f.shouldSkip(Self.image(0.4))) }
        let expected = (0..<33).map { $0 % 11 != 0 }
        #expect(pattern == expected)
        #expect(f.processed == 3 && f.skipped == 30)
    }

    /// The skip pattern with a fixed seed on a slightly varying input is reproducible.
    @Test func skipPatternIsDeterministicForASeed() {
        func run(seed: UInt64) -> [Bool] {
            var f = SimilarityFilter(threshold: 0.9, maxSkip: 3, side: 8, seed: seed)
            return (0..<40).map { f.shouldSkip(Self.image(0.4 + 0.002 * Float($0 % 5))) }
        }
        #expect(run(seed: 5) == run(seed: 5))
        #expect(run(seed: 5).contains(true) && run(seed: 5).contains(false))
    }

    @Test func dissimilarFramesAreAlwaysProcessed() {
        var f = SimilarityFilter(threshold: 0.98, maxSkip: 10, side: 8, seed: 2)
        var white = RGBImage(width: 8, height: 8, fill: (1, 1, 1))
        let black = RGBImage(width: 8, height: 8, fill: (0.05, 0.05, 0.05))
        for i in 0..<20 {
            // alternate between a white frame and one with a dark half
            if i % 2 == 0 { white = RGBImage(width: 8, height: 8, fill: (1, 1, 1)) }
            var half = white
            for y in 0..<4 { for x in 0..<8 { for c in 0..<3 { half.planes[c * 64 + y * 8 + x] = black.planes[0] } } }
            let skipped = f.shouldSkip(i % 2 == 0 ? white : half)
            #expect(!skipped)
        }
    }

    /// A light scene (64×64) with three emoji-sized discs (an orange, a green and a red one,
    /// radius 8) each moving 3 pixels a frame in its own direction: the kind of clip a stream of
    /// emoji scenes gets.
    static func brightScene(_ k: Int, noise: Float = 0, seed: UInt64 = 0) -> RGBImage {
        var img = RGBImage(width: 64, height: 64, fill: (0.95, 0.93, 0.88))
        var rng = SplitMix64(seed: seed &+ UInt64(k) &* 7919)
        let f = Float(k)
        let discs: [(Float, Float, [Float])] = [(8 + 3 * f, 12, [0.9, 0.5, 0.1]), (52 - 3 * f, 30, [0.2, 0.6, 0.2]),
                                                (30, 8 + 3 * f, [0.8, 0.15, 0.15])]
        for y in 0..<64 {
            for x in 0..<64 {
                let hit = discs.first { (Float(x) - $0.0) * (Float(x) - $0.0) + (Float(y) - $0.1) * (Float(y) - $0.1) < 64 }
                for c in 0..<3 {
                    var v = hit.map { $0.2[c] } ?? img.planes[c * 4096 + y * 64 + x]
                    if noise > 0 { v += noise * (rng.nextUnitFloat() * 2 - 1) * 1.7 }
                    img.planes[c * 4096 + y * 64 + x] = min(1, max(0, v))
                }
            }
        }
        return img
    }

    /// Motion over a light background is processed; the same clip standing still with camera
    /// noise (about 2 % per pixel) is mostly skipped. Comparing luma in [0, 1], as the filter
    /// did, calls consecutive moving frames more than η-similar, so they were skipped.
    @Test func brightMotionIsProcessedAndStillNoiseIsSkipped() {
        let motion = (0..<14).map { Self.brightScene($0) }
        // Nearly every step of the motion is below η (skip probability 0), whatever the draws.
        let signatures = motion.map { SimilarityFilter.signature($0, side: 32) }
        let steps = zip(signatures, signatures.dropFirst()).map { SimilarityFilter.cosine($0, $1) }
        #expect(steps.filter { $0 > 0.98 }.count <= 1, "\(steps)")
        var moving = SimilarityFilter(threshold: 0.98, maxSkip: 10, side: 32, seed: 3)
        #expect(motion.filter { !moving.shouldSkip($0) }.count >= 13)
        // Luma in [0, 1] would call most of these steps more similar than η.
        let raw = motion.map { $0.resizedArea(width: 32, height: 32).luma() }
        let rawSimilar = zip(raw, raw.dropFirst()).filter { SimilarityFilter.cosine($0, $1) > 0.98 }.count
        #expect(rawSimilar >= 10, "luma in [0, 1] would call \(rawSimilar) of 13 steps similar")
        // The filter is stochastic: the share is taken over 8 seeds of its draws.
        let noisy = (0..<44).map { Self.brightScene(0, noise: 0.02, seed: UInt64($0) &+ 1) }
        let processedStill = (0..<8 as Range<UInt64>).map { seed -> Int in
            var still = SimilarityFilter(threshold: 0.98, maxSkip: 10, side: 32, seed: seed)
            return noisy.filter { !still.shouldSkip($0) }.count
        }
        #expect(Double(processedStill.reduce(0, +)) <= 0.15 * 44 * 8, "\(processedStill) of 44 still noisy frames processed")
    }

    /// On the shipped scene clips (assets/clips, `gen clips --scenes`): small emoji moving over a
    /// light background are processed (≥ 90% of the frames, for every seed), the same scene
    /// standing still under camera noise is mostly skipped (≤ 15%), and the sketch's frames
    /// are processed while it is drawn and skipped once it stands.
    @Test func theSceneClipsMoveAndTheNoisyStillIsSkipped() throws {
        func clip(_ name: String) throws -> [RGBImage] {
            let dir = Fixtures.repositoryRoot + "/assets/clips/" + name
            let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".png") }.sorted()
            #expect(files.count == 48, "\(name)")
            return try files.map { try RGBImage.load(path: dir + "/" + $0) }
        }
        func processed(_ frames: [RGBImage], seed: UInt64) -> Int {
            var f = SimilarityFilter(seed: seed)
            return frames.filter { !f.shouldSkip($0) }.count
        }
        let scene = try clip("scene"), heldOut = try clip("scene-heldout"), noisy = try clip("scene-noise"), sketch = try clip("sketch")
        // The filter is stochastic: shares are taken over 8 seeds of its draws (384 frames a clip).
        let seeds = 0..<8 as Range<UInt64>
        func share(_ frames: [RGBImage]) -> Double {
            Double(seeds.map { processed(frames, seed: $0) }.reduce(0, +)) / Double(frames.count * seeds.count)
        }
        #expect(share(scene) >= 0.9 && share(heldOut) >= 0.9, "moving: \(share(scene)), \(share(heldOut))")
        #expect(share(noisy) <= 0.15, "still with noise: \(share(noisy))")
        // Drawn over the first 36 frames, then still: the last 12 are skipped but for max-skip.
        var drawn = 0, standing = 0
        for seed in seeds {
            var f = SimilarityFilter(seed: seed)
            let kept = sketch.map { !f.shouldSkip($0) }
            drawn += kept[..<36].filter { $0 }.count
            standing += kept[36...].filter { $0 }.count
        }
        #expect(Double(drawn) >= 0.8 * 36 * 8 && Double(standing) <= 0.2 * 12 * 8, "drawn \(drawn), standing \(standing)")
    }

    @Test func skipProbabilityFollowsTheFormula() {
        let f = SimilarityFilter(threshold: 0.98, maxSkip: 10, seed: 0)
        #expect(f.skipProbability(1) == 1)
        #expect(f.skipProbability(0.98) == 0)
        #expect(abs(f.skipProbability(0.99) - 0.5) < 1e-5)
        #expect(f.skipProbability(0.5) == 0)
    }
}

@Suite struct StreamSessionTests {
    /// A skipped frame returns the previous output and leaves the pipeline as it was.
    @Test func skippedFrameLeavesThePipelineUnchanged() throws {
        let s = Fixtures.tinySampler()
        let pipeline = try StreamPipeline(sampler: s, times: [0.3, 0.6], settings: StreamSettings(classIndex: 0), seed: 4)
        let session = StreamSession(pipeline: pipeline, filter: SimilarityFilter(threshold: 0.98, maxSkip: 10, side: 8, seed: 1))
        let frame = RGBImage(width: 20, height: 12, fill: (0.2, 0.7, 0.4))
        let first = try session.process(frame)
        #expect(!first.skipped)
        let buffer = pipeline.buffer, calls = pipeline.modelCalls
        let second = try session.process(frame)  // identical: p_skip = 1
        #expect(second.skipped)
        #expect(second.image == first.image)
        #expect(pipeline.buffer == buffer && pipeline.modelCalls == calls)
        #expect(session.framesIn == 2 && session.framesProcessed == 1 && session.framesSkipped == 1)
    }

    /// Frames of odd sizes are centre-cropped and resized; outputs come at the asked size.
    @Test func oddSizedFramesAndOutputSize() throws {
        let pipeline = try StreamPipeline(sampler: Fixtures.tinySampler(), times: [0.5], settings: StreamSettings(classIndex: 1), seed: 4)
        let session = StreamSession(pipeline: pipeline, filter: nil)
        session.outputSize = (24, 24)
        for (w, h) in [(1, 1), (7, 3), (33, 65)] {
            let out = try session.process(RGBImage(width: w, height: h, fill: (0.5, 0.5, 0.5)))
            #expect(out.image.width == 24 && out.image.height == 24)
        }
    }

    /// The session measures each output against the input it came from (n − 1 processed frames
    /// earlier) at the model's size, whatever the output size, and flicker from the second output.
    @Test func measuresPairEachOutputWithItsInput() throws {
        // Two pipelines are compared to 1e-9: no other suite may change the kernels' thread
        // count (and so their rounding) between them.
        try GlobalKernelSettings.exclusive { try Self.measuresPair() }
    }

    static func measuresPair() throws {
        let pipeline = try StreamPipeline(sampler: Fixtures.tinySampler(), times: [0.3, 0.6], settings: StreamSettings(classIndex: 1), seed: 4)
        let plain = try StreamPipeline(sampler: Fixtures.tinySampler(), times: [0.3, 0.6], settings: StreamSettings(classIndex: 1), seed: 4)
        let session = StreamSession(pipeline: pipeline, filter: nil)
        session.outputSize = (32, 32)
        var rng = TestRNG(seed: 2)
        let frames = (0..<4).map { _ in RGBImage(width: 8, height: 8, planes: rng.floats(192).map { abs($0).truncatingRemainder(dividingBy: 1) }) }
        var expected: [Double] = []
        for (k, f) in frames.enumerated() {
            _ = try session.process(f)
            if k == 0 { #expect(session.measures.flickerStatic == nil) }
            let out = try RGBImage.batch(from: try plain.process(try Tensor(images: [f], scale: 1)), scale: 1)[0]
            expected.append(StreamMeasures.correlation(frames[max(0, k - 1)].luma(), out.luma()))
        }
        let mean = expected.reduce(0, +) / Double(expected.count)
        #expect(abs((session.measures.lumaCorrelation ?? .nan) - mean) < 1e-9)
        #expect(session.measures.flickerStatic != nil)
    }
}

@Suite struct StreamMeasuresTests {
    @Test func correlationOfLayouts() {
        let a: [Float] = [0, 0.2, 0.9, 0.4, 0.1]
        #expect(abs(StreamMeasures.correlation(a, a) - 1) < 1e-12)
        #expect(abs(StreamMeasures.correlation(a, a.map { 1 - $0 }) + 1) < 1e-12)
        #expect(abs(StreamMeasures.correlation(a, a.map { 0.5 * $0 + 0.1 }) - 1) < 1e-6, "brightness and contrast do not count")
        #expect(StreamMeasures.correlation(a, [Float](repeating: 0.3, count: 5)) == 0)
    }

    /// Only pixels whose input stayed put count: a moving pixel's output change is left out.
    @Test func flickerCountsStaticPixelsOnly() {
        let inA: [Float] = [0.5, 0.5, 0.1, 0.9], inB: [Float] = [0.5, 0.5, 0.8, 0.9]
        var outA = RGBImage(width: 2, height: 2, fill: (0.2, 0.2, 0.2)), outB = outA
        outB.planes[0] = 0.3          // pixel 0 (static) changes by 0.1 in red
        outB.planes[2] = 1.0          // pixel 2 (moving) changes a lot: not counted
        let f = StreamMeasures.staticFlicker(inputs: (inA, inB), outputs: (outA, outB))
        #expect(f.count == 9)
        #expect(abs(f.sum - 0.1) < 1e-6)
        outA.planes[3] = 0.2
        #expect(StreamMeasures.staticFlicker(inputs: (inA, inA), outputs: (outA, outA)).sum == 0)
    }
}
