import ArgumentParser
import Foundation
import MillraceFormats
import MillraceCore
import MillraceTraining

/// `gen train-classifier`: train the evaluation classifier (a small CNN over the dataset's groups).
struct TrainClassifier: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-classifier",
        abstract: "Train the evaluation classifier (a small CNN) on a dataset's classes.",
        discussion: """
        Trains on the train split with horizontal flips and ±2 px translations, then writes --out
        with classifier.json, model.safetensors (the EMA weights) and MODEL_CARD.md, and prints the
        held-out accuracy overall and per class. Its penultimate features serve a Fréchet distance
        and its predictions a class accuracy of generated images.

        Example:
          gen train-classifier --data data/emoji32.mrds --out assets/models/emoji-classifier
        """)

    @Option(help: "Dataset file from `gen dataset emoji`.")
    var data: String
    @Option(help: "Output folder.")
    var out: String
    @Option(help: "Optimisation steps.")
    var steps: Int = 1500
    @Option(help: "Images per step.")
    var batch: Int = 64
    @Option(help: "Peak learning rate.")
    var lr: Double = 2e-3
    @Option(help: "Linear warm-up steps.")
    var warmup: Int = 100
    @Option(help: "AdamW weight decay.")
    var weightDecay: Double = 0.05
    @Option(help: "EMA decay of the shipped weights.")
    var ema: Double = 0.995
    @Option(help: "Random seed (initial weights, batches, augmentation).")
    var seed: UInt64 = 0
    @Option(help: "Channels of the convolutions, comma-separated.")
    var channels: String = "32,64,64,128,128"
    @Option(help: "Strides of the convolutions (1 or 2), comma-separated.")
    var strides: String = "1,2,1,2,1"
    @Option(help: "GroupNorm groups.")
    var groups: Int = 8
    @Option(help: "Largest random translation in pixels (white fill).")
    var shift: Int = 2
    @Flag(inversion: .prefixedNo, help: "Sample classes uniformly (then an image of the class).")
    var balance = true
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        guard steps >= 1 else { throw ValidationError("--steps must be positive") }
        guard batch >= 1 else { throw ValidationError("--batch must be positive") }
        guard lr > 0 && lr.isFinite else { throw ValidationError("--lr must be positive") }
        guard warmup >= 0 else { throw ValidationError("--warmup must not be negative") }
        guard ema >= 0 && ema < 1 else { throw ValidationError("--ema must be in [0, 1)") }
        guard shift >= 0 else { throw ValidationError("--shift must not be negative") }
    }

    static func intList(_ text: String, _ flag: String) throws -> [Int] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        let values = parts.compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.count == parts.count else {
            throw ValidationError("\(flag) must be integers separated by commas, like 32,64,128")
        }
        return values
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let ds = try ImageDataset.read(path: data)
            var config = ClassifierConfig(classNames: ds.classNames, imageSize: ds.size)
            config.channels = try Self.intList(channels, "--channels")
            config.strides = try Self.intList(strides, "--strides")
            config.normNumGroups = groups
            do { try config.validate() } catch { throw ValidationError("\(error)") }
            var opts = ClassifierTrainOptions()
            opts.steps = steps
            opts.batchSize = batch
            opts.seed = seed
            opts.balanceClasses = balance
            opts.maxShift = shift
            opts.optimizer.learningRate = lr
            opts.optimizer.warmupSteps = warmup
            opts.optimizer.weightDecay = weightDecay
            opts.optimizer.emaDecay = ema
            let trainer = try ClassifierTrainer(config: config, dataset: ds, options: opts)
            let trainCount = ds.indices(split: 0).count, heldCount = ds.indices(split: 1).count
            let machine = Runtime.describe()
            FileHandle.standardError.write(Data("training a \(trainer.model.parameterCount)-parameter classifier on \(trainCount) images (\(ds.classNames.count) classes), batch \(batch), \(machine)\n".utf8))

            let bar = ProgressBar("train-classifier", total: steps, unit: "img")
            let t0 = Date()
            while trainer.step < steps {
                trainer.trainStep()
                bar.update(trainer.step, extra: String(format: "loss %.3f · acc %.3f", trainer.smoothedLoss, trainer.smoothedAccuracy),
                           rateScale: Double(batch))
            }
            bar.finish()
            let trainSeconds = Date().timeIntervalSince(t0)

            let model = trainer.emaModel()
            let held = model.evaluate(ds, split: 1)
            let train = model.evaluate(ds, split: 0)
            let totalSeconds = Date().timeIntervalSince(t0)

            try model.save(to: out, metadata: [
                "step": String(trainer.step), "weights": "ema",
                "heldout_accuracy": String(format: "%.4f", held.accuracy),
            ])
            let card = Self.modelCard(
                dataset: ds, dataPath: data, config: config, options: opts, parameters: model.parameterCount,
                trainSeconds: trainSeconds, totalSeconds: totalSeconds, machine: machine,
                held: held, train: train, trainCount: trainCount, heldCount: heldCount)
            let cardPath = (out as NSString).appendingPathComponent("MODEL_CARD.md")
            try AtomicFile.write(Data(card.utf8), to: cardPath)

            print("wrote \(out) (\(trainer.step) steps in \(ProgressBar.clock(trainSeconds)), \(String(format: "%.0f", Double(steps * batch) / max(trainSeconds, 1e-9))) img/s)")
            print(String(format: "held-out accuracy %.2f%% (%d images; balanced %.2f%%; train split %.2f%%)",
                         100 * held.accuracy, held.count, 100 * held.balancedAccuracy, 100 * train.accuracy))
            for (i, name) in ds.classNames.enumerated() {
                print("  \(Self.pad(name, 20)) \(Self.percent(held.perClassAccuracy[i]))  (\(held.perClassCount[i]) images)")
            }
        }
    }

    static func modelCard(dataset ds: ImageDataset, dataPath: String, config: ClassifierConfig,
                          options o: ClassifierTrainOptions, parameters: Int, trainSeconds: Double,
                          totalSeconds: Double, machine: String, held: ClassifierEvaluation,
                          train: ClassifierEvaluation, trainCount: Int, heldCount: Int) -> String {
        let fileBytes = (try? FileManager.default.attributesOfItem(atPath: dataPath)[.size] as? Int) ?? nil
        let date = ISO8601DateFormatter().string(from: Date())
        let layers = zip(config.channels, config.strides).map { "conv3×3(\($0.0)\($0.1 == 2 ? ", stride 2" : "")) GN+SiLU" }
        let command = CommandLine.arguments.dropFirst().map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ")
        var s = """
        # Emoji group classifier

        A small CNN that classifies \(config.imageSize)×\(config.imageSize) emoji images into their \
        \(config.numClasses) emoji-test groups, trained by Millrace's own code (`gen train-classifier`). It is the \
        evaluation network: its penultimate features (global average pool, \(config.featureDim)-d) feed a Fréchet \
        distance and its predictions a class accuracy of generated images.

        ## Held-out accuracy

        **\(String(format: "%.2f", 100 * held.accuracy))%** of the \(held.count) held-out images \
        (balanced over classes: \(String(format: "%.2f", 100 * held.balancedAccuracy))%; held-out \
        cross-entropy \(String(format: "%.3f", held.loss))). Accuracy on the train split, without \
        augmentation: \(String(format: "%.2f", 100 * train.accuracy))%.

        | # | class | held-out images | held-out accuracy | train images | train accuracy |
        |---|-------|----------------:|------------------:|-------------:|---------------:|

        """
        for i in 0..<config.numClasses {
            s += "| \(i) | \(config.className(i)) | \(held.perClassCount[i]) | \(percent(held.perClassAccuracy[i])) | \(train.perClassCount[i]) | \(percent(train.perClassAccuracy[i])) |\n"
        }
        s += """

        Held-out confusion matrix (rows: true class, columns: predicted class, by index):

        | true \\ pred | \((0..<config.numClasses).map(String.init).joined(separator: " | ")) |
        |---|\(String(repeating: "---:|", count: config.numClasses))

        """
        for i in 0..<config.numClasses {
            s += "| \(i) | \(held.confusion[i].map(String.init).joined(separator: " | ")) |\n"
        }
        s += """

        ## Model

        - Input: [B, 3, \(config.imageSize), \(config.imageSize)] RGB in [−1, 1] (white background = 1).
        - Layers: \(layers.joined(separator: " → ")) → global average pool (\(config.featureDim) features) → \
        Linear(\(config.featureDim)→\(config.numClasses)). GroupNorm with \(config.normNumGroups) groups.
        - Parameters: \(parameters).
        - Files: `classifier.json` (config), `model.safetensors` (EMA weights, float32).
        - API: `EmojiClassifier.load(path:)`, `forward(_:training:)` → logits, `features(_:)` → \
        penultimate features, `featuresAndLogits(_:)`, `evaluate(_:split:)`.

        ## Data

        - File: `\(dataPath)`\(fileBytes.map { " (\($0) bytes)" } ?? ""): \(ds.count) images of \
        \(ds.size)×\(ds.size), \(ds.classNames.count) classes.
        - Train split: \(trainCount) images; held-out split: \(heldCount) images (never seen in training).

        ## Training

        - Steps: \(o.steps), batch \(o.batchSize) (\(o.steps * o.batchSize) images drawn), seed \(o.seed).
        - Sampling: \(o.balanceClasses ? "class-balanced (a class uniformly, then one of its images)" : "plain (images uniformly)").
        - Augmentation: \(o.horizontalFlips ? "horizontal flips, " : "")random translations of up to ±\(o.maxShift) px (white fill).
        - Loss: softmax cross-entropy. Optimiser: AdamW, learning rate \(o.optimizer.learningRate) after \
        \(o.optimizer.warmupSteps) warm-up steps, weight decay \(o.optimizer.weightDecay) (weights only), gradient \
        clip \(o.optimizer.gradClip), EMA decay \(o.optimizer.emaDecay) (the EMA weights are shipped).
        - Wall time: \(ProgressBar.clock(trainSeconds)) of training (\(String(format: "%.0f", Double(o.steps * o.batchSize) / max(trainSeconds, 1e-9))) images/s), \
        \(ProgressBar.clock(totalSeconds)) with evaluation.
        - Machine: \(machine).
        - Finished: \(date).
        - Command: `gen \(command)`

        """
        return s
    }
}

extension TrainClassifier {
    /// "93.4%", or "—" for a class without images.
    static func percent(_ x: Double) -> String {
        x.isNaN ? "—" : String(format: "%.1f%%", 100 * x)
    }

    static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }
}
