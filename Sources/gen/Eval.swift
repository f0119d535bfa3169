import ArgumentParser
import Foundation
import MillraceCore
import MillraceTraining

/// `gen eval`: measure generation quality.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate generation: discrepancy to 100-step Euler, Fréchet distance, class accuracy.",
        subcommands: [EvalGenerate.self, EvalTable.self, EvalColorize.self], defaultSubcommand: EvalGenerate.self)
}

struct EvalGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Evaluate a model, step count, schedule and source (the default of `gen eval`).",
        discussion: """
        Draws --samples source samples spread over the classes, generates with the given settings
        and with 100-step uniform Euler from the same sources, and reports:
          discrepancy  mean squared error per pixel (images in [−1, 1]) to the 100-step result
          frechet      Fréchet distance between the evaluation classifier's penultimate features
                       of the samples and of the dataset's held-out split
          accuracy     fraction of samples the classifier assigns to the class they were drawn for
        Examples:
          gen eval --steps 4 --schedule boss --samples 300 --json
          gen eval --steps 8 --model runs/emoji32 --classifier assets/models/emoji-classifier
        """)

    @Option(help: "Model folder (default: the shipped emoji model).")
    var model: String?
    @Option(help: "Integration steps.")
    var steps: Int = 8
    @Option(help: "Step schedule: uniform or boss.")
    var schedule: ScheduleChoice = .uniform
    @Option(help: "Source distribution: gaussian or pruned (needs the model folder's prune-axes.safetensors; the shipped model has one).")
    var source: SourceDistribution = .gaussian
    @Option(help: "ODE solver: euler or heun.")
    var solver: Solver = .euler
    @Option(help: "Classifier-free guidance scale (default: the model's).")
    var guidance: Float?
    @Option(help: "Number of samples.")
    var samples: Int = 300
    @Option(help: "Steps of the uniform Euler reference (0: skip the discrepancy).")
    var referenceSteps: Int = 100
    @Option(help: "Evaluation classifier folder.")
    var classifier: String = "assets/models/emoji-classifier"
    @Option(help: "Dataset file (its held-out split is the reference for the Fréchet distance).")
    var data: String = "data/emoji32.mrds"
    @Option(help: "Seed of the source samples.")
    var seed: UInt64 = 1000
    @Option(help: "Samples per batch.")
    var batch: Int = 16
    @Flag(help: "Print JSON.")
    var json = false
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        guard steps >= 1 && steps <= 1000 else { throw ValidationError("--steps must be between 1 and 1000") }
        guard referenceSteps >= 0 else { throw ValidationError("--reference-steps must be ≥ 0") }
        guard samples >= 2 else { throw ValidationError("--samples must be at least 2") }
        guard batch >= 1 else { throw ValidationError("--batch must be positive") }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let modelPath = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(modelPath)
            let evaluator = GenerationEvaluator(classifier: try EmojiClassifier.load(path: classifier),
                                                heldOut: try ImageDataset.read(path: data))
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            try sampler.requireImageModel()
            let c = folder.config
            let grid = schedule == .boss ? try BOSS.Schedules.times(steps: steps, modelFolder: modelPath) : Schedule.uniform(steps: steps)
            let g = guidance ?? Float(folder.flow.defaultGuidance)
            let classes = try ClassSelection.parse("all", flow: folder.flow, config: c)
            let labels = (0..<samples).map { classes[$0 % classes.count] }
            let shape = [c.inChannels, c.sampleSize, c.sampleSize]
            let (x0, acceptance) = try source.draw(
                count: samples, shape: shape, seed: seed, modelFolder: modelPath)

            let total = referenceSteps > 0 ? 2 * samples : samples
            let bar = ProgressBar("eval", total: total, unit: "samples")
            let images = GenerationEvaluator.generate(sampler, x0: x0, labels: labels, schedule: grid, guidance: g,
                                                      solver: solver, batch: batch) { bar.update($0) }
            let reference: Tensor? = referenceSteps > 0
                ? GenerationEvaluator.generate(sampler, x0: x0, labels: labels, schedule: Schedule.uniform(steps: referenceSteps),
                                               guidance: g, batch: batch) { bar.update(samples + $0) }
                : nil
            bar.finish()
            let m = try evaluator.metrics(images: images, labels: labels, classes: classes, reference: reference)
            let (discrepancy, frechet, accuracy) = (m.discrepancy, m.frechet, m.accuracy)
            let heldCount = evaluator.heldOutFeatures.count / evaluator.classifier.featureDim
            let names = classes.map { folder.flow.classNames.indices.contains($0) ? folder.flow.classNames[$0] : "class \($0)" }
            if json {
                var perClass: [String: Double] = [:]
                for (k, n) in names.enumerated() { perClass[n] = m.accuracyPerClass[k] }
                let obj: [String: Any] = [
                    "model": modelPath, "steps": steps, "schedule": schedule.rawValue, "source": source.rawValue, "solver": solver.rawValue,
                    "guidance": g, "samples": samples, "seed": seed, "reference_steps": referenceSteps,
                    "discrepancy": discrepancy as Any? ?? NSNull(), "frechet": frechet, "accuracy": accuracy,
                    "accuracy_per_class": perClass, "heldout_images": heldCount,
                    "acceptance_rate": acceptance as Any? ?? NSNull(),
                ]
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: d, as: UTF8.self))
            } else {
                print(String(format: "%@, %d steps, %@ schedule, %@ source, guidance %.2f, %d samples", modelPath, steps, schedule.rawValue, source.rawValue, g, samples))
                print(String(format: "discrepancy %@   frechet %.3f   accuracy %.3f",
                             discrepancy.map { String(format: "%.5f", $0) } ?? "-", frechet, accuracy))
                for (k, n) in names.enumerated() {
                    print(String(format: "  %-20@ %.2f", n as NSString, m.accuracyPerClass[k]))
                }
            }
        }
    }
}
