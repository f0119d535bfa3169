import ArgumentParser
import Foundation
import MillraceCore
import MillraceFormats
import MillracePipelines
import MillraceTraining

/// The image-to-image student's objective.
enum I2IObjective: String, ExpressibleByArgument, CaseIterable {
    case chords, consistency
}

/// `gen straighten`: fine-tune a copy of a model on teacher chords of its BOSS schedule (§3.4).
struct StraightenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "straighten",
        abstract: "Fine-tune a copy of a model so that one Euler step follows the teacher: over each interval of its N-step BOSS schedule, or (--from-data) from a noised image to the end.",
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

        With --from-data the student is for image-to-image instead (docs/TRAINING.md, "An \
        image-to-image student"): each chord starts from a training image noised to a time t0 \
        drawn in --start-times, as a stream's slot does, and ends where the teacher lands after \
        --teacher-steps guided Euler steps from t0 to 1; half the chords ask for the image's own \
        group, four in ten for another, one in ten for none. One jump of the student from t0 is \
        then the teacher's whole image-to-image run: a stream with one slot at t0 = 1 − strength. \
        --objective consistency trains the same student another way: each row starts at a time t \
        in [lo, 1), the teacher takes one guided Euler step of --delta, and the chord makes the \
        student's jump from t land where its own jump from there lands (its targets come from a \
        copy of the student refreshed at each of --rounds rounds).

        With --from-data and a restyle set (`gen dataset restyle`) and a restyle model, the \
        student is a one-step restyle model: each chord starts from noise with one of the set's \
        input pictures as condition (its group as class, one in ten the null class) and ends \
        where the teacher lands after --teacher-steps guided Euler steps; a stream on the \
        student then needs one slot. --keep-background keeps the teacher's change only where the \
        input picture has emoji (the set's "coverage"), so that the student leaves the background \
        as it is and each drawing keeps to its emoji's outline, and moves with it in a stream.

        Examples:
          gen straighten --nfe 4 --out runs/emoji32-straight-4
          gen straighten --nfe 2 --out runs/s2 --samples 128 --steps 200 --teacher-cache runs/teacher.safetensors
          gen straighten --model runs/scenes64 --from-data data/scenes64.mrds --out runs/scenes64-i2i --samples 1024
          gen straighten --model assets/models/scenes64 --from-data data/scenes64.mrds --out runs/i2i-cons \
            --objective consistency --rounds 5 --samples 384 --steps 250 --guidance 6
          gen straighten --model runs/restyle64 --from-data data/restyle64.safetensors --out runs/restyle64-1step \
            --samples 1024 --teacher-steps 6 --guidance 2 --steps 400
          gen straighten --model runs/restyle128-c2 --from-data data/restyle128-cov.safetensors \
            --out runs/restyle128-kb --samples 1024 --teacher-steps 16 --guidance 2 --steps 300 --keep-background
        """)

    @Option(help: "Steps N of the BOSS schedule to straighten for (not with --from-data).")
    var nfe: Int?
    @Option(help: "Dataset file: straighten for image-to-image from its train images instead of a BOSS schedule.")
    var fromData: String?
    @Option(help: "With --from-data: the range of start times t0, 'lo,hi' in [0, 1).")
    var startTimes: String = "0.2,0.7"
    @Option(help: "With --from-data: the teacher's uniform Euler steps from t0 to 1.")
    var teacherSteps: Int = 8
    @Option(help: "With --from-data: chords (the student's jump lands where the teacher's whole run does) or consistency (where the student's own jump from one teacher step further does; targets refreshed every round).")
    var objective: I2IObjective = .chords
    @Flag(help: "With --from-data and a restyle set: keep the teacher's change only where the set's input pictures have emoji (its coverage), nothing of it on the background.")
    var keepBackground = false
    @Option(help: "With --objective consistency: rounds of new targets (--steps are split over them).")
    var rounds: Int = 5
    @Option(help: "With --objective consistency: the teacher's step in t.")
    var delta: Float = 0.125
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
        if fromData == nil {
            guard let nfe else { throw ValidationError("give --nfe (a BOSS schedule's steps) or --from-data (an image-to-image student)") }
            guard nfe >= 1 && nfe <= 1000 else { throw ValidationError("--nfe must be between 1 and 1000") }
        } else {
            guard nfe == nil else { throw ValidationError("--nfe and --from-data exclude each other") }
            guard !keepBackground || objective == .chords else { throw ValidationError("--keep-background takes the chords objective") }
            guard teacherSteps >= 1 && teacherSteps <= 1000 else { throw ValidationError("--teacher-steps must be between 1 and 1000") }
            if objective == .consistency {
                guard rounds >= 1 && rounds <= steps else { throw ValidationError("--rounds must be between 1 and --steps") }
            }
            guard delta > 0 && delta <= 1 else { throw ValidationError("--delta must be in (0, 1]") }
            _ = try parsedStartTimes()
        }
        guard samples >= 1 else { throw ValidationError("--samples must be at least 1") }
        guard steps >= 1, batch >= 1 else { throw ValidationError("--steps and --batch must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be positive") }
        guard ema >= 0 && ema < 1 else { throw ValidationError("--ema must be in [0, 1)") }
        if let guidance { guard guidance.isFinite else { throw ValidationError("--guidance must be finite") } }
    }

    /// --start-times as a range.
    func parsedStartTimes() throws -> ClosedRange<Float> {
        let parts = startTimes.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 2, let lo = parts[0], let hi = parts[1], lo >= 0, lo <= hi, hi < 1 else {
            throw ValidationError("--start-times must be 'lo,hi' with 0 ≤ lo ≤ hi < 1, like 0.2,0.7")
        }
        return lo...hi
    }

    func run() throws {
        threads.apply()
        if let fromData { return try runImageToImage(data: fromData) }
        let nfe = self.nfe!
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

            FileHandle.standardError.write(Data("straightening \(modelPath) for \(nfe) steps \(indices): \(chords.count) chords, batch \(batch)\n".utf8))
            let trainer = try writeStudent(folder: folder, chords: chords, guidance: g,
                             metadata: ["weights": "ema", "straightened_from": modelPath, "nfe": String(nfe)])
            var own = BOSS.Schedules(grid: schedules.grid, samples: schedules.samples, guidance: schedules.guidance, seed: schedules.seed)
            try own.set(indices: indices, cost: schedules.schedules[String(nfe)]!.cost)
            try own.write(path: BOSS.Schedules.path(inModelFolder: out))
            print("wrote \(out): straightened for \(nfe) steps \(indices) (smoothed chord loss \(String(format: "%.4f", trainer.smoothedLoss)); sample with --schedule boss --steps \(nfe))")
        }
    }

    /// Fine-tunes on `chords` and writes the student to --out: its guidance is in the weights, so
    /// its flow.json says default_guidance 1 and distilled_guidance `guidance`.
    @discardableResult
    func writeStudent(folder: ModelFolder, chords: Straightening.Chords, guidance: Float, metadata: [String: String],
                      refresh: ((FlowTrainer) throws -> Straightening.Chords)? = nil, rounds: Int = 1) throws -> FlowTrainer {
        let trainer = try fineTune(folder: folder, chords: chords, refresh: refresh, rounds: rounds)
        var flow = folder.flow
        flow.defaultGuidance = 1
        flow.distilledGuidance = Double(guidance)
        try ModelFolder.write(model: trainer.emaModel(), flow: flow, to: out, metadata: metadata)
        return trainer
    }

    /// Fine-tunes a copy of `folder`'s model on `chords` (loss.csv and loss.png into --out).
    func fineTune(folder: ModelFolder, chords: Straightening.Chords,
                  refresh: ((FlowTrainer) throws -> Straightening.Chords)? = nil, rounds: Int = 1) throws -> FlowTrainer {
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
        let bar = ProgressBar("straighten", total: steps, unit: "img")
        let t0 = Date()
        var round = 1
        while trainer.step < steps {
            // A new round's targets from the student as it is now.
            if let refresh, trainer.step >= round * steps / rounds {
                try trainer.replaceChords(try refresh(trainer))
                round += 1
            }
            let loss = trainer.trainStep()
            let elapsed = Date().timeIntervalSince(t0)
            try log.append(step: trainer.step, loss: loss, smoothed: trainer.smoothedLoss,
                           lr: trainer.optimizer.currentLearningRate,
                           imagesPerSecond: Double(trainer.step * batch) / max(elapsed, 1e-9), elapsed: elapsed)
            bar.update(trainer.step, extra: String(format: "loss %.4f", trainer.smoothedLoss), rateScale: Double(batch))
        }
        bar.finish()
        try log.close()
        try LossPlot.write(csv: csvPath, png: (out as NSString).appendingPathComponent("loss.png"))
        return trainer
    }

    /// --from-data with a restyle set: the one-step restyle student (docs/TRAINING.md, "A
    /// one-step restyle student"). Rows take the set's input pictures as conditions and its
    /// labels as groups (one in ten the null class); the teacher runs --teacher-steps guided
    /// Euler steps from noise.
    func runRestyle(file: SafetensorsFile, data: String) throws {
        let modelPath = model ?? ModelFolder.defaultStreamPath()
        let folder = try ModelFolder.load(modelPath)
        guard folder.flow.distilledGuidance == nil else {
            throw ModelError.invalidArgument("\(modelPath) is already a straightened model; straighten its teacher instead")
        }
        let sampler = FlowSampler(model: folder.model, flow: folder.flow)
        guard StreamPipeline.isRestyleModel(sampler) else {
            throw CLIError("\(data) is a restyle set, and \(modelPath) is not a restyle model (flow.json task \"restyle\", 6 → 3 channels): train one with gen train --data \(data)")
        }
        let set = try DatasetRestyleCommand.read(file, path: data)
        guard set.size == folder.config.sampleSize, set.classNames == folder.flow.classNames else {
            throw CLIError("\(data) has \(set.size)×\(set.size) pairs of \(set.classNames.count) classes; the model takes \(folder.config.sampleSize)×\(folder.config.sampleSize) and \(folder.flow.classNames.count)")
        }
        let g = guidance ?? Float(folder.flow.defaultGuidance)
        var rng = SplitMix64(seed: seed &+ 0x12)
        let cd = 3 * set.size * set.size
        // The set's coverage, [N, 1, S, S] in [0, 1], for --keep-background.
        let coverage = try keepBackground ? Self.coverage(of: file, path: data, count: set.count, size: set.size) : nil
        let plane = set.size * set.size
        var conditions: [[Float]] = [], labels: [Int] = [], inside: [[Float]] = []
        for _ in 0..<samples {
            let i = Int(rng.next() % UInt64(set.count))
            conditions.append(Array(set.condition[(i * cd)..<((i + 1) * cd)]))
            labels.append(rng.nextUnitDouble() < 0.1 ? (folder.flow.nullClass ?? set.labels[i]) : set.labels[i])
            if let coverage { inside.append(Array(coverage[(i * plane)..<((i + 1) * plane)])) }
        }
        let bar = ProgressBar("teacher", total: samples, unit: "chords")
        let chords = try Straightening.restyleChords(sampler: sampler, conditions: conditions, labels: labels, steps: teacherSteps,
                                                     guidance: g, seed: seed, inside: coverage == nil ? nil : inside) { done, _ in bar.update(done) }
        bar.finish()
        FileHandle.standardError.write(Data("straightening \(modelPath) for restyling in one jump from noise: \(chords.count) chords, batch \(batch)\n".utf8))
        let trainer = try writeStudent(folder: folder, chords: chords, guidance: g, metadata: [
            "weights": "ema", "straightened_from": modelPath,
            "restyle": "from noise, teacher \(teacherSteps) Euler steps" + (keepBackground ? ", its change kept inside the emoji" : "")])
        print("wrote \(out): a one-step restyle student (smoothed chord loss \(String(format: "%.4f", trainer.smoothedLoss))); stream with it: gen stream --model \(out)")
    }

    /// A restyle set's coverage of its input pictures' emoji ([count, 1, size, size], in
    /// [0, 1]), or an error saying how to make a set that has it.
    static func coverage(of file: SafetensorsFile, path: String, count: Int, size: Int) throws -> [Float] {
        guard let t = file.tensors["coverage"] else {
            throw CLIError("\(path) has no coverage of its emoji, which --keep-background needs: make the set again with gen dataset restyle")
        }
        guard t.shape == [count, 1, size, size], t.data.allSatisfy({ $0 >= 0 && $0 <= 1 }) else {
            throw CLIError("\(path): coverage must be [\(count), 1, \(size), \(size)] with values in [0, 1], got \(t.shape)")
        }
        return t.data
    }

    /// --from-data: the image-to-image student.
    func runImageToImage(data: String) throws {
        try runReportingErrors {
            if data.hasSuffix(".safetensors") {
                let file = try SafetensorsFile.read(path: data)
                guard DatasetRestyleCommand.isRestyleSet(file) else { throw CLIError("\(data) is not a restyle set (made by gen dataset restyle) nor a dataset file") }
                return try runRestyle(file: file, data: data)
            }
            guard !keepBackground else { throw CLIError("--keep-background needs a restyle set (gen dataset restyle), not \(data)") }
            let modelPath = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(modelPath)
            guard folder.flow.distilledGuidance == nil else {
                throw ModelError.invalidArgument("\(modelPath) is already a straightened model; straighten its teacher instead")
            }
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            try sampler.requireImageModel()
            let ds = try ImageDataset.read(path: data)
            guard ds.size == folder.config.sampleSize, ds.classNames == folder.flow.classNames else {
                throw CLIError("\(data) has \(ds.size)×\(ds.size) images of \(ds.classNames.count) classes; the model takes \(folder.config.sampleSize)×\(folder.config.sampleSize) and \(folder.flow.classNames.count)")
            }
            let g = guidance ?? Float(folder.flow.defaultGuidance)
            let times = try parsedStartTimes()
            // Images of the train split; half the rows keep the image's group, 40% ask for
            // another (restyling), 10% the null class.
            let train = ds.indices(split: 0)
            var rng = SplitMix64(seed: seed &+ 0x12)
            let scale = Float(folder.flow.normScale)
            var images: [[Float]] = [], labels: [Int] = []
            for _ in 0..<samples {
                let i = train[Int(rng.next() % UInt64(train.count))]
                images.append(ds.modelInputs([i]).data.map { $0 * scale })
                let u = rng.nextUnitDouble()
                let own = Int(ds.labels[i])
                labels.append(u < 0.5 ? own : u < 0.9 ? Int(rng.next() % UInt64(ds.classNames.count)) : (folder.flow.nullClass ?? own))
            }
            if objective == .consistency {
                // Round r's targets come from the student after r rounds (the teacher's copy first).
                var round: UInt64 = 0
                func targets(_ student: UNet2DModel) throws -> Straightening.Chords {
                    round += 1
                    var studentFlow = folder.flow
                    studentFlow.defaultGuidance = 1
                    return try Straightening.consistencyChords(
                        teacher: sampler, student: FlowSampler(model: student, flow: studentFlow), images: images, labels: labels,
                        times: times, delta: delta, guidance: g, seed: seed &+ round &* 0x9E37)
                }
                FileHandle.standardError.write(Data("consistency-style student of \(modelPath): \(samples) rows per round, \(rounds) rounds, teacher step \(delta)\n".utf8))
                let trainer = try writeStudent(folder: folder, chords: try targets(folder.model), guidance: g, metadata: [
                    "weights": "ema", "straightened_from": modelPath,
                    "image_to_image": "t0 \(times.lowerBound)...\(times.upperBound), consistency, \(rounds) rounds, teacher step \(delta)"],
                    refresh: { try targets($0.emaModel()) }, rounds: rounds)
                print("wrote \(out): a consistency-style image-to-image student (smoothed loss \(String(format: "%.4f", trainer.smoothedLoss)))")
                return
            }
            let bar = ProgressBar("teacher", total: samples, unit: "chords")
            let chords = try Straightening.imageToImageChords(sampler: sampler, images: images, labels: labels, times: times,
                                                              steps: teacherSteps, guidance: g, seed: seed) { done, _ in bar.update(done) }
            bar.finish()
            FileHandle.standardError.write(Data("straightening \(modelPath) for image-to-image from t0 in \(times.lowerBound)…\(times.upperBound): \(chords.count) chords, batch \(batch)\n".utf8))
            let trainer = try writeStudent(folder: folder, chords: chords, guidance: g, metadata: [
                "weights": "ema", "straightened_from": modelPath,
                "image_to_image": "t0 \(times.lowerBound)...\(times.upperBound), teacher \(teacherSteps) Euler steps"])
            print("wrote \(out): an image-to-image student (smoothed chord loss \(String(format: "%.4f", trainer.smoothedLoss))); stream with one slot, e.g. gen stream --model \(out) --steps 1 --strength 0.5")
        }
    }
}
