import ArgumentParser
import Foundation
import MillraceCore
import MillraceTraining

/// `gen straighten`: fine-tune a copy of a model on teacher chords of its BOSS schedule (§3.4).
struct StraightenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "straighten",
        abstract: "Fine-tune a copy of a model so that one Euler step follows the teacher over each interval of its N-step BOSS schedule.",
        discussion: """
        docs/METHODS.md §3.4. The teacher (the model at --model) integrates --samples Gaussian \
        source samples with K-step uniform Euler at the model's guidance, spread over the classes \
        (every 10th sample with the null class). For the N-step BOSS schedule of the model's \
        schedules.json (`gen schedule boss`), each interval [τk, τk+1] of each trajectory gives \
        one pair: the state x_τk and the chord (x_τk+1 − x_τk)/(τk+1 − τk). A copy of the model \
        (from its EMA weights) is fine-tuned with ‖v_θ(x_τk, τk, c) − chord‖², AdamW with warm-up, \
        gradient clipping at 1 and EMA; the EMA weights are written.

        The teacher's chords are guided, so the straightened model learns the guided velocity \
        itself: its flow.json has default_guidance 1 (one network row per step instead of two) \
        and distilled_guidance set to the teacher's scale. Use it with the same schedule:
          gen --model DIR --schedule boss --steps N

        The teacher states at every index of every schedule in schedules.json can be kept in \
        --teacher-cache, so that straightening for several N integrates the teacher once.

        Examples:
          gen straighten --nfe 4 --out runs/emoji32-straight-4
          gen straighten --nfe 2 --out runs/s2 --samples 128 --steps 200 --teacher-cache runs/teacher.safetensors
        """)

    @Option(help: "Steps N of the BOSS schedule to straighten for.")
    var nfe: Int
    @Option(help: "Output model folder.")
    var out: String
    @Option(help: "Teacher model folder with schedules.json (default: the shipped emoji model).")
    var model: String?
    @Option(help: "Teacher trajectories (source samples).")
    var samples: Int = 256
    @Option(help: "Teacher guidance (default: the model's default guidance).")
    var guidance: Float?
    @Option(help: "Fine-tuning steps.")
    var steps: Int = 400
    @Option(help: "Chords per fine-tuning step.")
    var batch: Int = 32
    @Option(help: "Peak learning rate.")
    var lr: Double = 2e-4
    @Option(help: "Linear warm-up steps.")
    var warmup: Int = 50
    @Option(help: "EMA decay of the written weights.")
    var ema: Double = 0.995
    @Option(help: "Seed of the teacher's source samples (kept apart from `gen eval`'s default 1000).")
    var seed: UInt64 = 7000
    @Option(help: "Keep (or reuse) the teacher states in this safetensors file.")
    var teacherCache: String?
    @Option(help: "Data-parallel workers (default: all cores).")
    var workers: Int?
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        guard nfe >= 1 && nfe <= 1000 else { throw ValidationError("--nfe must be between 1 and 1000") }
        guard samples >= 1 else { throw ValidationError("--samples must be at least 1") }
        guard steps >= 1, batch >= 1 else { throw ValidationError("--steps and --batch must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be positive") }
        guard ema >= 0 && ema < 1 else { throw ValidationError("--ema must be in [0, 1)") }
        if let guidance { guard guidance.isFinite else { throw ValidationError("--guidance must be finite") } }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let modelPath = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(modelPath)
            let schedulesPath = BOSS.Schedules.path(inModelFolder: modelPath)
            guard FileManager.default.fileExists(atPath: schedulesPath) else {
                throw ModelError.invalidFile("\(modelPath) has no schedules.json: run `gen schedule boss --model \(modelPath) --nfe 1...10` first")
            }
            let schedules = try BOSS.Schedules.read(path: schedulesPath)
            guard let indices = schedules.indices(steps: nfe) else {
                throw ModelError.invalidFile("\(schedulesPath) has no \(nfe)-step schedule (it has \(schedules.stepCounts.map(String.init).joined(separator: ", "))); run `gen schedule boss --model \(modelPath) --nfe \(nfe)`")
            }
            guard folder.flow.distilledGuidance == nil else {
                throw ModelError.invalidArgument("\(modelPath) is already a straightened model; straighten its teacher instead")
            }
            let g = guidance ?? Float(folder.flow.defaultGuidance)
            let classes = try ClassSelection.parse("all", flow: folder.flow, config: folder.config)
            let labels = Straightening.teacherLabels(samples: samples, classes: classes, null: folder.flow.nullClass, nullEvery: 10)
            let keep = Set(schedules.schedules.values.flatMap(\.indices))
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            try sampler.requireImageModel()

            // The cache is valid for these weights and settings only.
            let weights = ModelFolder.weightFileNames.map { (modelPath as NSString).appendingPathComponent($0) }
                .first { FileManager.default.fileExists(atPath: $0) } ?? modelPath
            let attrs = try? FileManager.default.attributesOfItem(atPath: weights)
            let stamp = "\((attrs?[.size] as? Int) ?? 0)-\(Int(((attrs?[.modificationDate] as? Date) ?? .distantPast).timeIntervalSince1970))"
            let key = "\(weights)|\(stamp)|K\(schedules.grid)|S\(samples)|g\(g)|seed\(seed)|idx\(keep.sorted())"
            var teacher: Straightening.TeacherStates? = nil
            if let teacherCache, FileManager.default.fileExists(atPath: teacherCache) {
                teacher = try Straightening.readCache(path: teacherCache, key: key)
                if teacher != nil { FileHandle.standardError.write(Data("teacher states from \(teacherCache)\n".utf8)) }
            }
            if teacher == nil {
                let bar = ProgressBar("teacher", total: samples, unit: "traj")
                teacher = try Straightening.teacherStates(sampler: sampler, samples: samples, grid: schedules.grid, keep: keep,
                                                          labels: labels, guidance: g, seed: seed) { done, _ in bar.update(done) }
                bar.finish()
                if let teacherCache { try Straightening.writeCache(teacher!, path: teacherCache, key: key) }
            }
            let chords = try Straightening.chords(teacher!, indices: indices)

            var opts = TrainOptions()
            opts.steps = steps
            opts.batchSize = batch
            opts.seed = seed
            opts.workers = max(1, min(workers ?? ProcessInfo.processInfo.activeProcessorCount, batch))
            opts.optimizer.learningRate = lr
            opts.optimizer.warmupSteps = warmup
            opts.optimizer.emaDecay = ema
            let trainer = try FlowTrainer(folder: folder, chords: chords, options: opts)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let csvPath = (out as NSString).appendingPathComponent("loss.csv")
            try? FileManager.default.removeItem(atPath: csvPath)
            var log = try LossLog(path: csvPath, keepUpTo: 0)
            FileHandle.standardError.write(Data("straightening \(modelPath) for \(nfe) steps \(indices): \(chords.count) chords, batch \(batch), \(opts.workers) worker(s)\n".utf8))
            let bar = ProgressBar("straighten", total: steps, unit: "img")
            let t0 = Date()
            while trainer.step < steps {
                let loss = trainer.trainStep()
                let elapsed = Date().timeIntervalSince(t0)
                try log.append(step: trainer.step, loss: loss, smoothed: trainer.smoothedLoss,
                               lr: trainer.optimizer.currentLearningRate,
                               imagesPerSecond: Double(trainer.step * batch) / max(elapsed, 1e-9), elapsed: elapsed)
                bar.update(trainer.step, extra: String(format: "loss %.4f", trainer.smoothedLoss), rateScale: Double(batch))
            }
            bar.finish()
            try log.close()
            var flow = folder.flow
            flow.defaultGuidance = 1
            flow.distilledGuidance = Double(g)
            try ModelFolder.write(model: trainer.emaModel(), flow: flow, to: out,
                                  metadata: ["weights": "ema", "straightened_from": modelPath, "nfe": String(nfe)])
            var own = BOSS.Schedules(grid: schedules.grid, samples: schedules.samples, guidance: schedules.guidance, seed: schedules.seed)
            try own.set(indices: indices, cost: schedules.schedules[String(nfe)]!.cost)
            try own.write(path: BOSS.Schedules.path(inModelFolder: out))
            try LossPlot.write(csv: csvPath, png: (out as NSString).appendingPathComponent("loss.png"))
            print("wrote \(out): straightened for \(nfe) steps \(indices) (smoothed chord loss \(String(format: "%.4f", trainer.smoothedLoss)); sample with --schedule boss --steps \(nfe))")
        }
    }
}
