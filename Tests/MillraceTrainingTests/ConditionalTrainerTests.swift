import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceTraining
import MillraceTestSupport

/// Training a model whose input carries condition planes beside the sample and that has no
/// classes (the in-context colorization model, `gen dataset colorize` data).
@Suite struct ConditionalTrainerTests {
    /// 2-channel 8×8 samples whose values are the negated first condition plane, and 6
    /// condition planes with a left-right gradient (to see flips).
    static func data(count: Int = 16) -> FlowTrainingData {
        let size = 8, plane = 64
        var samples: [Float] = [], condition: [Float] = []
        for n in 0..<count {
            var cond = [Float](repeating: 0, count: 6 * plane)
            for c in 0..<6 { for y in 0..<size { for x in 0..<size {
                cond[c * plane + y * size + x] = Float(x) / 8 + Float(c) + Float(n % 3) * 0.1
            } } }
            condition += cond
            samples += (0..<(2 * plane)).map { -0.1 * cond[$0 % plane] }
        }
        return FlowTrainingData(samples: samples, channels: 2, condition: condition, conditionChannels: 6, size: size, task: "colorize")
    }

    static func config() -> UNetConfig {
        var c = Fixtures.tinyUNetConfig()
        c.numClassEmbeds = nil
        c.inChannels = 8
        c.outChannels = 2
        return c
    }

    @Test func batchesPutTheConditionAfterTheStateAndFlipItWithTheSample() throws {
        var o = TrainerTests.options(steps: 10)
        o.horizontalFlips = true
        let data = Self.data()
        let trainer = try FlowTrainer(config: Self.config(), data: data, options: o)
        #expect(trainer.flow.task == "colorize" && trainer.flow.nullClass == nil && trainer.flow.classNames.isEmpty)
        let (xt, ts, labels, target) = trainer.drawBatch()
        #expect(xt.shape == [8, 8, 8, 8] && target.shape == [8, 2, 8, 8] && labels.isEmpty && ts.count == 8)
        var flipped = 0
        for n in 0..<8 {
            // The condition planes are one of the data's, read left to right or right to left.
            let c0 = Array(xt.data[(n * 8 + 2) * 64 ..< (n * 8 + 3) * 64])
            let leftToRight = c0[1] > c0[0]
            if !leftToRight { flipped += 1 }
            let k = (0..<data.count).first { i in
                (0..<64).allSatisfy { p in
                    let x = p % 8, y = p / 8, sx = leftToRight ? x : 7 - x
                    return abs(data.condition[i * 6 * 64 + y * 8 + sx] - c0[p]) < 1e-6
                }
            }
            #expect(k != nil, "row \(n): condition plane not from the data")
            // The last condition plane sits at channel 7.
            #expect(abs(xt.data[(n * 8 + 7) * 64] - (xt.data[(n * 8 + 2) * 64] + 5)) < 1e-5)
        }
        #expect(flipped > 0 && flipped < 8, "flips: \(flipped) of 8")
    }

    /// Hue rotation turns the sample's pair and the condition's pairs by one angle per row and
    /// leaves the other planes alone.
    @Test func rotationTurnsTheChromaPairsTogether() throws {
        let size = 8, plane = 64, count = 6
        var samples: [Float] = [], condition: [Float] = []
        var rng = SplitMix64(seed: 3)
        for _ in 0..<count {
            let a = (0..<plane).map { _ in rng.nextGaussian() }, b = (0..<plane).map { _ in rng.nextGaussian() }
            samples += a + b
            condition += [Float](repeating: 0.5, count: plane) + a + b + [Float](repeating: -0.25, count: plane) + b + a
        }
        var data = FlowTrainingData(samples: samples, channels: 2, condition: condition, conditionChannels: 6, size: size, task: "colorize")
        data.rotatedSamplePairs = [[0, 1]]
        data.rotatedConditionPairs = [[1, 2], [4, 5]]
        data.rotationProbability = 1
        var o = TrainerTests.options(steps: 1)
        o.horizontalFlips = false
        let trainer = try FlowTrainer(config: Self.config(), data: data, options: o)
        let (xt, ts, _, target) = trainer.drawBatch()
        var turned = 0
        for n in 0..<8 {
            let base = n * 8 * plane
            let x1 = (0..<(2 * plane)).map { xt.data[base + $0] + (1 - ts[n]) * target.data[n * 2 * plane + $0] }
            for p in 0..<plane {
                // Planes 0 and 3 as they were; the sample's (a, b) equals the retrieval pair's, turned alike.
                #expect(xt.data[base + 2 * plane + p] == 0.5 && xt.data[base + 5 * plane + p] == -0.25)
                #expect(abs(x1[p] - xt.data[base + 3 * plane + p]) < 1e-4 && abs(x1[plane + p] - xt.data[base + 4 * plane + p]) < 1e-4)
            }
            // The canvas pair held (b, a): turned by the same angle it stays the mirror image, so
            // its norm is the sample's.
            let n1 = (0..<plane).map { x1[$0] * x1[$0] + x1[plane + $0] * x1[plane + $0] }.reduce(0, +)
            let n2 = (0..<plane).map { p in pow(xt.data[base + 6 * plane + p], 2) + pow(xt.data[base + 7 * plane + p], 2) }.reduce(0, +)
            #expect(abs(n1 - n2) < 1e-2 * n1)
            let original = (0..<count).contains { i in abs(samples[i * 2 * plane] - x1[0]) < 1e-4 }
            if !original { turned += 1 }
        }
        #expect(turned >= 6, "rows turned: \(turned) of 8")
    }

    /// `timeZeroShare` puts that share of rows at t = 0, where x_t is the noise itself and the
    /// target is x1 − x0; the other rows stay spread over (0, 1); without it no row is at 0.
    @Test func aShareOfRowsIsDrawnAtTimeZero() throws {
        var o = TrainerTests.options(steps: 1)
        o.batchSize = 64
        o.timeZeroShare = 0.5
        let data = Self.data()
        let trainer = try FlowTrainer(config: Self.config(), data: data, options: o)
        var zeros = 0, inside = 0
        for _ in 0..<4 {
            let (xt, ts, _, target) = trainer.drawBatch()
            for (n, t) in ts.enumerated() {
                if t == 0 {
                    zeros += 1
                    // x_t = x0, so x_t + target = x1: the negated first condition plane / 10.
                    let c0 = xt.data[(n * 8 + 2) * 64 + 3]
                    #expect(abs(xt.data[n * 8 * 64 + 3] + target.data[n * 2 * 64 + 3] + 0.1 * c0) < 1e-4)
                } else if t > 0 && t < 1 { inside += 1 }
            }
        }
        #expect(zeros >= 96 && zeros <= 160 && zeros + inside == 256, "t = 0 in \(zeros) of 256 rows")
        o.timeZeroShare = 0
        let plain = try FlowTrainer(config: Self.config(), data: data, options: o)
        #expect(!plain.drawBatch().1.contains(0))
    }

    /// Parts of the data are drawn with their shares (the colorization set's emoji against its
    /// scenes and drawings); shares that do not add up to 1 are refused.
    @Test func partsAreDrawnWithTheirShares() throws {
        let plane = 64, count = 16
        var data = FlowTrainingData(samples: [Float](repeating: 0, count: count * 2 * plane), channels: 2,
                                    condition: (0..<count).flatMap { n in [Float](repeating: Float(n), count: 6 * plane) },
                                    conditionChannels: 6, size: 8, task: "colorize")
        data.parts = [(0..<4, 0.75), (4..<16, 0.25)]
        var o = TrainerTests.options(steps: 1)
        o.batchSize = 64
        let trainer = try FlowTrainer(config: Self.config(), data: data, options: o)
        var first = 0, seen = Set<Int>()
        for _ in 0..<4 {
            let xt = trainer.drawBatch().0
            for n in 0..<64 {
                let example = Int(xt.data[(n * 8 + 2) * plane].rounded())
                seen.insert(example)
                if example < 4 { first += 1 }
            }
        }
        #expect(first >= 164 && first <= 220, "\(first) of 256 rows from the first part")
        #expect(seen.count == 16, "every example drawn: \(seen.count)")
        data.parts = [(0..<4, 0.5), (4..<16, 0.25)]
        #expect(throws: TrainError.self) { try FlowTrainer(config: Self.config(), data: data, options: o) }
        data.parts = [(0..<4, 0.5), (4..<17, 0.5)]
        #expect(throws: TrainError.self) { try FlowTrainer(config: Self.config(), data: data, options: o) }
    }

    @Test func trainingOnConditionsLowersTheLoss() throws {
        let trainer = try FlowTrainer(config: Self.config(), data: Self.data(), options: TrainerTests.options(steps: 60))
        var losses: [Double] = []
        for _ in 0..<60 { losses.append(trainer.trainStep()) }
        let first = losses.prefix(10).reduce(0, +) / 10, last = losses.suffix(10).reduce(0, +) / 10
        #expect(last < 0.8 * first, "loss \(first) → \(last)")
    }

    @Test func aModelThatDoesNotFitTheDataIsRefused() {
        var wrongIn = Self.config()
        wrongIn.inChannels = 3
        #expect(throws: TrainError.self) { try FlowTrainer(config: wrongIn, data: Self.data(), options: TrainerTests.options(steps: 1)) }
        var classes = Self.config()
        classes.numClassEmbeds = 3
        #expect(throws: TrainError.self) { try FlowTrainer(config: classes, data: Self.data(), options: TrainerTests.options(steps: 1)) }
        // And an image model cannot train on conditional data.
        #expect(throws: TrainError.self) {
            try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: Self.data(), options: TrainerTests.options(steps: 1))
        }
    }
}
