import ArgumentParser
import Foundation
import MillraceCore
import MillraceFormats
import MillraceTraining

/// `gen train`: rectified-flow training of a class-conditional UNet2DModel.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a class-conditional flow-matching UNet2DModel on a dataset file.",
        discussion: """
        Writes a model folder to --out (config.json, model.safetensors with the EMA weights,
        flow.json), plus checkpoint.safetensors every --checkpoint-every steps, loss.csv and
        loss.png. Ctrl-C writes a checkpoint and exits; --resume continues exactly where it stopped.
        Started by mpirun (Open MPI), the processes split each batch and average gradients; rank 0
        writes the files (docs/TRAINING.md, "Several processes (MPI)").

        Examples:
          gen train --data data/emoji32.mrds --out runs/emoji32 --steps 20000
          gen train --data data/emoji32.mrds --out runs/emoji32 --steps 30000 --resume
          gen train --data data/emoji32.mrds --out runs/emoji32-na --norm-align
          mpirun -np 2 gen train --data data/emoji32.mrds --out runs/emoji32 --workers 1
          gen train --data data/emoji32.mrds --out runs/emoji32-d --steps 12000 \
            --init-from assets/models/emoji32 --lr 4e-4 --decay cosine
          gen train --data data/scenes64.mrds --out runs/scenes64 --steps 1100 --ema 0.995 \
            --init-from assets/models/emoji32 --lr 4e-4 --decay cosine --warmup 60
          gen train --data data/colorize32.safetensors --out runs/colorize32 --steps 4000 \
            --lr 1e-3 --decay cosine --ema 0.998
          gen train --data data/restyle64.safetensors --out runs/restyle64 --steps 3000 \
            --init-from assets/models/scenes64 --lr 3e-4 --decay cosine --ema 0.995
        A colorization set trains an in-context colorization model (no classes; its input is
        the chroma state and the seven condition planes, docs/METHODS.md §9.3). A restyle set
        (`gen dataset restyle`) trains an image-to-image model: its input is the noised output
        and the input picture, its class the group to redraw the picture in.
        """)

    @Option(help: "Dataset file from `gen dataset emoji` or `gen dataset scenes`, or a colorization or restyle set (.safetensors) from `gen dataset colorize` or `gen dataset restyle`.")
    var data: String
    @Option(help: "Output folder.")
    var out: String
    @Option(help: "Total optimisation steps (with --resume: the total to reach).")
    var steps: Int = 20_000
    @Option(help: "Images per step.")
    var batch: Int = 32
    @Option(help: "Peak learning rate.")
    var lr: Double = 1e-3
    @Option(help: "Linear warm-up steps.")
    var warmup: Int = 200
    @Option(help: "Rate after the warm-up: constant, or cosine (a half cosine from --lr down to --min-lr at --steps).")
    var decay: LRDecay = .constant
    @Option(name: .customLong("min-lr"), help: "Final rate of --decay cosine (default: --lr / 20).")
    var minLR: Double?
    @Option(help: "AdamW weight decay.")
    var weightDecay: Double = 0.01
    @Option(help: "Global gradient-norm clip (0 = off).")
    var clip: Double = 1
    @Option(help: "EMA decay of the shipped weights.")
    var ema: Double = 0.999
    @Option(help: "Write a checkpoint every N steps.")
    var checkpointEvery: Int = 500
    @Option(help: "Random seed (initial weights, batches, noise).")
    var seed: UInt64 = 0
    @Flag(help: "Norm alignment (docs/METHODS.md §4.1): train on s·x1, s written to flow.json.")
    var normAlign = false
    @Flag(inversion: .prefixedNo, help: "Sample classes uniformly (then an image of the class).")
    var balance = true
    @Option(help: "Data-parallel workers, each on its own core with single-threaded BLAS (default: all cores; under mpirun, per process: the cores divided by the processes on the machine).")
    var workers: Int?
    @Flag(help: "Continue from --out/checkpoint.safetensors.")
    var resume = false
    @Option(help: "Start from the weights of a model folder (same architecture, any sample size; fresh optimizer; its default guidance, and its norm scale unless --norm-align, carry over).")
    var initFrom: String?
    @Option(help: "Colorization data: the share of examples whose chroma (sample, retrieval and canvas alike) is turned by one random hue angle, so the model learns to take colours from the references.")
    var hueRotation: Double = 0.5
    @Option(help: "Colorization data: the share of rows drawn from its emoji examples (the rest from its scenes and drawings); default: in proportion to their numbers.")
    var emojiShare: Double?
    @Option(help: "Share of rows trained at t = 0 exactly (the rest at t ~ U[0, 1]): there the model learns the one-step estimate from noise that one-step sampling uses (the colorization model samples in one step).")
    var tZeroShare: Double = 0
    @Option(help: "UNet block channels, comma-separated.")
    var channels: String = "32,64,128"
    @Option(help: "ResNet layers per block.")
    var layers: Int = 1
    @Option(help: "Levels with attention, comma-separated 0/1 (default: the lowest resolution only).")
    var attention: String?
    @Option(help: "Channels per attention head.")
    var headDim: Int = 32
    @Option(help: "GroupNorm groups.")
    var groups: Int = 8
    @OptionGroup var threads: ThreadOptions

    func makeConfig(classes: Int, size: Int) throws -> UNetConfig {
        let ch = channels.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !ch.isEmpty, ch.count == channels.split(separator: ",").count else {
            throw ValidationError("--channels must be integers like 64,128,128")
        }
        let attn: [Bool]
        if let attention {
            attn = attention.split(separator: ",").map { $0 == "1" || $0 == "true" }
            guard attn.count == ch.count else { throw ValidationError("--attention needs \(ch.count) entries") }
        } else {
            attn = ch.indices.map { $0 == ch.count - 1 }
        }
        var c = UNetConfig()
        c.sampleSize = size
        c.blockOutChannels = ch
        c.layersPerBlock = layers
        c.downBlockTypes = attn.map { $0 ? .attnDown : .down }
        c.upBlockTypes = attn.reversed().map { $0 ? .attnUp : .up }
        c.attentionHeadDim = headDim
        c.normNumGroups = groups
        c.numClassEmbeds = classes + 1
        do { try c.validate() } catch { throw ValidationError("\(error)") }
        return c
    }

    func validate() throws {
        guard lr > 0 else { throw ValidationError("--lr must be positive") }
        guard hueRotation >= 0 && hueRotation <= 1 else { throw ValidationError("--hue-rotation must be in [0, 1]") }
        guard tZeroShare >= 0 && tZeroShare < 1 else { throw ValidationError("--t-zero-share must be in [0, 1)") }
        if let emojiShare {
            guard emojiShare > 0 && emojiShare < 1 else { throw ValidationError("--emoji-share must be in (0, 1)") }
            guard data.hasSuffix(".safetensors") else { throw ValidationError("--emoji-share applies to colorization sets (.safetensors)") }
        }
        if let minLR {
            guard decay == .cosine else { throw ValidationError("--min-lr needs --decay cosine") }
            guard minLR >= 0 && minLR <= lr else { throw ValidationError("--min-lr must be between 0 and --lr") }
        }
    }

    func run() throws {
        // Under mpirun the processes on one machine share its cores.
        let cores = max(1, ProcessInfo.processInfo.activeProcessorCount / DataParallel.processesOnThisMachine())
        Runtime.configureThreads(threads.threads ?? cores)
        try runReportingErrors {
            // A single process, or (started by mpirun) this process's place in the MPI run.
            let group = try DataParallel.join()
            // An image dataset (.mrds), or a colorization set from `gen dataset colorize`.
            let trainData: FlowTrainingData
            var config: UNetConfig
            var colorScale: Double? = nil
            let file = data.hasSuffix(".safetensors") ? try SafetensorsFile.read(path: data) : nil
            if let file, DatasetRestyleCommand.isRestyleSet(file) {
                guard emojiShare == nil else { throw CLIError("--emoji-share applies to colorization sets") }
                let d = try DatasetRestyleCommand.read(file, path: data)
                trainData = d
                config = try makeConfig(classes: d.classNames.count, size: d.size)
                config.inChannels = d.channels + d.conditionChannels
            } else if let file {
                var (d, scale, emoji) = try DatasetColorizeCommand.read(file, path: data)
                d.rotationProbability = hueRotation
                if let emojiShare {
                    guard emoji > 0 && emoji < d.count else { throw CLIError("--emoji-share: \(data) does not hold both emoji and other examples") }
                    d.parts = [(0..<emoji, emojiShare), (emoji..<d.count, 1 - emojiShare)]
                }
                trainData = d
                colorScale = scale
                config = try makeConfig(classes: 0, size: d.size)
                config.numClassEmbeds = nil
                config.inChannels = d.channels + d.conditionChannels
                config.outChannels = d.channels
            } else {
                let ds = try ImageDataset.read(path: data)
                trainData = FlowTrainingData(dataset: ds)
                config = try makeConfig(classes: ds.classNames.count, size: ds.size)
            }
            var opts = TrainOptions()
            opts.steps = steps
            opts.batchSize = batch
            opts.seed = seed
            opts.normAlign = normAlign
            opts.timeZeroShare = tZeroShare
            opts.balanceClasses = balance
            opts.workers = max(1, min(workers ?? cores, batch / group.size))
            opts.checkpointEvery = checkpointEvery
            opts.optimizer.learningRate = lr
            opts.optimizer.warmupSteps = warmup
            if decay == .cosine {
                opts.optimizer.cosineDecaySteps = steps
                opts.optimizer.minLearningRate = minLR ?? lr / 20
            }
            opts.optimizer.weightDecay = weightDecay
            opts.optimizer.gradClip = clip
            opts.optimizer.emaDecay = ema
            let trainer = try FlowTrainer(config: config, data: trainData, options: opts, collective: group)
            if let colorScale { trainer.flow.normScale = colorScale }
            var settings = TrainingRun.Settings(out: out, steps: steps)
            settings.checkpointEvery = checkpointEvery
            settings.resume = resume
            settings.initFrom = initFrom
            let run = try TrainingRun(trainer: trainer, settings: settings)
            let interrupt = InterruptFlag()
            var bar: ProgressBar?
            // Every process trains; rank 0 writes the files and speaks.
            let speaks = group.rank == 0
            func note(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }
            try run.run(shouldStop: { interrupt.isRaised }, onEvent: { event in
                guard speaks else { return }
                switch event {
                case .resumed(let step): note("resumed at step \(step) from \(run.checkpointPath)")
                case .initialised(let from): note("initialised from \(from)")
                case .stepped(let step, _, let smoothed, _):
                    if bar == nil {
                        let split = group.size > 1 ? "\(group.size) processes × \(opts.workers) worker(s) (rank 0's)" : "\(opts.workers) worker(s)"
                        note("training \(trainer.model.parameterCount) parameters on \(trainData.count) images, batch \(batch), \(split), \(Runtime.describe())")
                        // The bar starts its clock now, after this step: rates count the steps after it.
                        bar = ProgressBar("train", total: steps, unit: "img", initial: step)
                    }
                    bar?.update(step, extra: String(format: "loss %.4f", smoothed), rateScale: Double(batch))
                case .checkpointed: break
                case .interrupted(let step):
                    bar?.finish()
                    bar = nil
                    note("interrupted: checkpoint written at step \(step); continue with --resume")
                }
            })
            bar?.finish()
            if speaks { print("wrote \(out) (step \(trainer.step), smoothed loss \(String(format: "%.4f", trainer.smoothedLoss)))") }
            (group as? OpenMPI)?.finalize()
        }
    }
}

/// Learning-rate schedule after the warm-up.
enum LRDecay: String, ExpressibleByArgument, CaseIterable {
    case constant, cosine
}
