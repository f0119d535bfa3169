import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
@testable import MillraceTraining
import MillraceTestSupport

/// Flow training on a tiny synthetic dataset: loss goes down, resume is exact, bad checkpoints are refused.
@Suite(.serialized) struct TrainerTests {
    /// Two classes of 8×8 images: a red square top-left, a blue disc in the middle, with jitter.
    static func syntheticData(count: Int = 24) -> FlowTrainingData {
        var rng = SplitMix64(seed: 1)
        let size = 8
        var images: [Float] = [], labels: [Int] = []
        for n in 0..<count {
            let cls = n % 2
            var img = [Float](repeating: 1, count: 3 * size * size)
            let j = Int(rng.next() % 2)
            for y in 0..<size {
                for x in 0..<size {
                    let inside = cls == 0 ? (x >= j && x < 4 + j && y >= j && y < 4 + j)
                                          : ((x - 4) * (x - 4) + (y - 4 + j) * (y - 4 + j) <= 6)
                    if inside {
                        let rgb: [Float] = cls == 0 ? [-1, -1, -1] : [-1, -1, 1]
                        if cls == 0 { img[0 * 64 + y * 8 + x] = 1; img[64 + y * 8 + x] = -1; img[128 + y * 8 + x] = -1 } else {
                            for c in 0..<3 { img[c * 64 + y * 8 + x] = rgb[c] }
                        }
                    }
                }
            }
            images += img
            labels.append(cls)
        }
        return FlowTrainingData(images: images, labels: labels, size: size, classNames: ["square", "disc"])
    }


    static func options(steps: Int) -> TrainOptions {
        var o = TrainOptions()
        o.steps = steps
        o.batchSize = 8
        o.seed = 42
        o.optimizer.learningRate = 3e-3
        o.optimizer.warmupSteps = 5
        return o
    }


    @Test func aFewDozenStepsLowerTheLoss() throws {
        let trainer = try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: Self.syntheticData(), options: Self.options(steps: 60))
        var losses: [Double] = []
        for _ in 0..<60 { losses.append(trainer.trainStep()) }
        let first = losses.prefix(10).reduce(0, +) / 10, last = losses.suffix(10).reduce(0, +) / 10
        #expect(last < 0.8 * first, "loss \(first) → \(last)")
        #expect(trainer.step == 60)
    }

    @Test func resumeGivesTheSameWeightsAsAnUninterruptedRun() throws {
        try GlobalKernelSettings.exclusive {
            let data = Self.syntheticData(), config = Fixtures.tinyUNetConfig()
            // With a cosine decay, so that the resumed half also follows the same rate schedule.
            var opts = Self.options(steps: 12)
            opts.optimizer.cosineDecaySteps = 12
            opts.optimizer.minLearningRate = opts.optimizer.learningRate / 10
            let straight = try FlowTrainer(config: config, data: data, options: opts)
            for _ in 0..<12 { straight.trainStep() }
    
            let first = try FlowTrainer(config: config, data: data, options: opts)
            for _ in 0..<5 { first.trainStep() }
            let path = Fixtures.tempPath("resume.safetensors")
            try first.saveCheckpoint(path: path)
            let second = try FlowTrainer(config: config, data: data, options: opts)
            try second.loadCheckpoint(path: path)
            #expect(second.step == 5)
            for _ in 0..<7 { second.trainStep() }
    
            for ((name, a), (_, b)) in zip(straight.model.namedParameters(), second.model.namedParameters()) {
                #expect(a.value.data == b.value.data, "weights of \(name) differ after resume")
            }
            #expect(straight.optimizer.ema == second.optimizer.ema)
            #expect(straight.optimizer.m == second.optimizer.m && straight.optimizer.v == second.optimizer.v)
            #expect(straight.rng == second.rng)
        }
    }

    @Test func cosineDecayFollowsItsSchedule() {
        var o = AdamW.Options()
        o.learningRate = 1e-3
        o.warmupSteps = 10
        o.cosineDecaySteps = 110
        o.minLearningRate = 1e-4
        func lr(_ step: Int) -> Double { AdamW.learningRate(at: step, options: o) }
        #expect(abs(lr(0) - 1e-4) < 1e-12)                      // warm-up: (0 + 1) / 10 of the peak
        #expect(abs(lr(9) - 1e-3) < 1e-12)
        #expect(abs(lr(10) - 1e-3) < 1e-12)                     // decay starts at the peak
        #expect(abs(lr(60) - 5.5e-4) < 1e-12)                   // half way: the mean of peak and floor
        #expect(abs(lr(110) - 1e-4) < 1e-12 && abs(lr(500) - 1e-4) < 1e-12)
        for s in 10..<110 { #expect(lr(s + 1) <= lr(s)) }
        o.cosineDecaySteps = 0
        #expect(lr(500) == 1e-3)                                // constant without decay
    }

    @Test func corruptOrForeignCheckpointsAreRefusedAndChangeNothing() throws {
        let data = Self.syntheticData(), config = Fixtures.tinyUNetConfig()
        let trainer = try FlowTrainer(config: config, data: data, options: Self.options(steps: 4))
        trainer.trainStep()
        let good = Fixtures.tempPath("good.safetensors")
        try trainer.saveCheckpoint(path: good)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: good)))
        let fresh = try FlowTrainer(config: config, data: data, options: Self.options(steps: 4))
        let before = fresh.model.stateDict()

        let truncated = Fixtures.tempPath("truncated.safetensors")
        try Data(bytes.prefix(bytes.count / 2)).write(to: URL(fileURLWithPath: truncated))
        #expect(throws: TrainError.self) { try fresh.loadCheckpoint(path: truncated) }

        let missing = Fixtures.tempPath("does-not-exist.safetensors")
        #expect(throws: TrainError.self) { try fresh.loadCheckpoint(path: missing) }

        // A valid safetensors file that is not a checkpoint.
        let weightsOnly = Fixtures.tempPath("weights.safetensors")
        try SafetensorsFile(tensors: fresh.model.stateDict()).write(path: weightsOnly)
        #expect(throws: TrainError.self) { try fresh.loadCheckpoint(path: weightsOnly) }

        // A checkpoint of another architecture.
        var other = config
        other.blockOutChannels = [8, 8]
        let otherTrainer = try FlowTrainer(config: other, data: data, options: Self.options(steps: 4))
        let foreign = Fixtures.tempPath("foreign.safetensors")
        try otherTrainer.saveCheckpoint(path: foreign)
        #expect(throws: TrainError.self) { try fresh.loadCheckpoint(path: foreign) }

        #expect(fresh.model.stateDict() == before)
        #expect(fresh.step == 0)
    }

    @Test func badTrainingInputIsRefused() throws {
        var config = Fixtures.tinyUNetConfig()
        config.numClassEmbeds = 5
        #expect(throws: TrainError.self) {
            _ = try FlowTrainer(config: config, data: Self.syntheticData(), options: Self.options(steps: 1))
        }
    }

    @Test func normAlignmentScaleMatchesItsDefinition() {
        let data = Self.syntheticData(count: 4)
        let d = 3 * 8 * 8
        var mean = 0.0
        for n in 0..<4 { mean += (0..<d).reduce(0.0) { $0 + Double(data.images[n * d + $1] * data.images[n * d + $1]) }.squareRoot() }
        mean /= 4
        #expect(abs(data.normAlignmentScale() - (Double(d) - 0.5).squareRoot() / mean) < 1e-9)
    }
}

extension TrainerTests {
    /// Two data-parallel workers compute the same step as one worker (to float rounding).
    @Test func initFromKeepsOrSetsTheNormScaleAndKeepsTheGuidance() throws {
        let data = Self.syntheticData()
        // A plain folder (s = 1) and a norm-aligned one (s = 1.7).
        var flow = FlowConfig()
        flow.classNames = data.classNames
        flow.nullClass = 2
        let plainPath = Fixtures.tempPath("init-plain"), alignedPath = Fixtures.tempPath("init-aligned")
        try ModelFolder.write(model: UNet2DModel(config: Fixtures.tinyUNetConfig(), seed: 1), flow: flow, to: plainPath)
        flow.normScale = 1.7
        flow.defaultGuidance = 3
        try ModelFolder.write(model: UNet2DModel(config: Fixtures.tinyUNetConfig(), seed: 1), flow: flow, to: alignedPath)
        // --norm-align from a plain model trains on the data's own s ...
        var opts = Self.options(steps: 1)
        opts.normAlign = true
        let a = try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: data, options: opts)
        try a.initialize(from: try ModelFolder.load(plainPath))
        #expect(abs(a.flow.normScale - data.normAlignmentScale()) < 1e-12)
        #expect(a.flow.normScale != 1)
        // ... and continuing a norm-aligned model without the flag keeps its s.
        let b = try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: data, options: Self.options(steps: 1))
        try b.initialize(from: try ModelFolder.load(alignedPath))
        #expect(b.flow.normScale == 1.7)
        #expect(b.flow.defaultGuidance == 3 && a.flow.defaultGuidance == 1, "the folder's serving guidance carries over")
    }

    /// A model of another sample size starts a run with its weights (the UNet is convolutional);
    /// another architecture is refused.
    @Test func initFromAcceptsAnotherSampleSizeButNotAnotherArchitecture() throws {
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        let path = Fixtures.tempPath("init-size")
        let source = UNet2DModel(config: Fixtures.tinyUNetConfig(), seed: 7)
        try ModelFolder.write(model: source, flow: flow, to: path)
        var larger = Fixtures.tinyUNetConfig()
        larger.sampleSize = 16
        var rng = SplitMix64(seed: 2)
        let data = FlowTrainingData(images: (0..<(4 * 3 * 16 * 16)).map { _ in rng.nextUnitFloat() * 2 - 1 }, labels: [0, 1, 0, 1],
                                    size: 16, classNames: ["a", "b"])
        let t = try FlowTrainer(config: larger, data: data, options: Self.options(steps: 1))
        try t.initialize(from: try ModelFolder.load(path))
        for ((name, p), (_, q)) in zip(t.model.namedParameters(), source.namedParameters()) {
            #expect(p.value.data == q.value.data, "\(name)")
        }
        var other = larger
        other.blockOutChannels = [8, 8]
        let u = try FlowTrainer(config: other, data: data, options: Self.options(steps: 1))
        #expect(throws: TrainError.self) { try u.initialize(from: try ModelFolder.load(path)) }
    }

    /// A model may start one with more input channels (new condition planes): the old
    /// channels' conv_in weights carry over, the new ones start at 0, so the started model's
    /// output does not depend on the new channels and equals the old model's.
    @Test func aModelWithMoreInputChannelsStartsFromOneWithFewer() throws {
        var small = Fixtures.tinyUNetConfig()
        small.numClassEmbeds = nil
        small.inChannels = 4
        small.outChannels = 2
        var flow = FlowConfig()
        flow.task = "colorize"
        let path = Fixtures.tempPath("init-wider")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let source = UNet2DModel(config: small, seed: 11)
        try ModelFolder.write(model: source, flow: flow, to: path)
        var wide = small
        wide.inChannels = 5
        let size = small.sampleSize, plane = size * size
        var rng = SplitMix64(seed: 4)
        let data = FlowTrainingData(samples: (0..<(2 * 2 * plane)).map { _ in rng.nextGaussian() }, channels: 2,
                                    condition: (0..<(2 * 3 * plane)).map { _ in rng.nextGaussian() }, conditionChannels: 3,
                                    size: size, task: "colorize")
        let t = try FlowTrainer(config: wide, data: data, options: Self.options(steps: 1))
        try t.initialize(from: try ModelFolder.load(path))
        let x = (0..<(4 * plane)).map { _ in rng.nextGaussian() }
        let before = source.forward(Tensor(shape: [1, 4, size, size], data: x), timesteps: [300])
        for extra: Float in [0, 2.5] {
            let after = t.model.forward(Tensor(shape: [1, 5, size, size], data: x + [Float](repeating: extra, count: plane)), timesteps: [300])
            let worst = zip(before.data, after.data).map { abs($0 - $1) }.max() ?? 1
            #expect(worst < 1e-5, "new channel \(extra): differs by \(worst)")
        }
        // Fewer input channels, or another change, is refused.
        var narrow = small
        narrow.inChannels = 3
        let u = try FlowTrainer(config: narrow, data: FlowTrainingData(samples: data.images, channels: 2, condition: Array(data.condition[0..<(2 * plane)]),
                                                                       conditionChannels: 1, size: size, task: "colorize"), options: Self.options(steps: 1))
        #expect(throws: TrainError.self) { try u.initialize(from: try ModelFolder.load(path)) }
    }

    @Test func dataParallelWorkersMatchOneWorker() throws {
        try GlobalKernelSettings.exclusive {
            var one = Self.options(steps: 3), two = one
            two.workers = 2
            let a = try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: Self.syntheticData(), options: one)
            let b = try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: Self.syntheticData(), options: two)
            for _ in 0..<3 {
                let la = a.trainStep(), lb = b.trainStep()
                #expect(abs(la - lb) < 1e-5 * max(1, abs(la)))
            }
            for ((name, p), (_, q)) in zip(a.model.namedParameters(), b.model.namedParameters()) {
                #expect(relativeError(q.value.data, p.value.data) < 1e-4, "\(name)")
            }
        }
    }
}
