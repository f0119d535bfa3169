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
