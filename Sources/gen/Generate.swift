import ArgumentParser
import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging

/// `gen generate` (the default command): sample images from a flow model.
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images with a flow model (the default command).",
        discussion: """
        Integrates the model's flow from Gaussian noise (t = 0) to data (t = 1) with N steps and
        writes a PNG (a grid when more than one image: one row per class).

        Examples:
          gen --steps 32                                   8 samples of every class, out/generated.png
          gen --steps 8 --class "Food & Drink" --count 16 --seed 3 --out food.png
          gen --steps 4 --class 8 --guidance 2 --upscale 4
        """)

    @Option(help: "Number of integration steps (NFE with Euler and no guidance).")
    var steps: Int = 32
    @Option(help: "Model folder (default: the shipped emoji model, assets/models/emoji32).")
    var model: String?
    @Option(name: .customLong("class"), help: "Class name (or a unique prefix), index, or 'all'.")
    var className: String = "all"
    @Option(help: "Images per class.")
    var count: Int = 8
    @Option(help: "Random seed of the source samples.")
    var seed: UInt64 = 0
    @Option(help: "Classifier-free guidance scale (1 = off).")
    var guidance: Float?
    @Option(help: "Step schedule: uniform, or boss (the model folder's schedules.json; see `gen schedule boss`).")
    var schedule: ScheduleChoice = .uniform
    @Option(help: "Source distribution: gaussian, or pruned (SourceFM §4.3; needs the model folder's prune-axes.safetensors: the shipped model has one, `gen prune-axes` makes others).")
    var source: SourceDistribution = .gaussian
    @Option(help: "ODE solver: euler or heun.")
    var solver: Solver = .euler
    @Option(help: "Output PNG path.")
    var out: String = "out/generated.png"
    @Option(help: "Nearest-neighbour upscale factor for viewing.")
    var upscale: Int = 2
    @Option(help: "Initial source samples: safetensors with key 'latents', shape [K, C, H, W].")
    var latents: String?
    @Option(help: "Write the final floats (before quantisation) to this safetensors file, key 'latents'.")
    var saveLatents: String?
    @Flag(name: .customLong("labels"), inversion: .prefixedNo, help: "Label the rows of a grid with their class names.")
    var rowLabels = true
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        guard steps >= 1 && steps <= 10_000 else { throw ValidationError("--steps must be between 1 and 10000, got \(steps)") }
        guard count >= 1 && count <= 1024 else { throw ValidationError("--count must be between 1 and 1024") }
        guard upscale >= 1 && upscale <= 32 else { throw ValidationError("--upscale must be between 1 and 32") }
        if let g = guidance, !(g.isFinite && g >= 0 && g <= 50) { throw ValidationError("--guidance must be between 0 and 50") }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let folderPath = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(folderPath)
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            // A latent-space model (same channels in and out, not 3) samples fine; it only has no
            // pictures without a decoder, so it runs when its latents are what is asked for.
            let latentOnly = sampler.imageProblem != nil && folder.config.inChannels == folder.config.outChannels
            if let problem = sampler.imageProblem, !latentOnly || saveLatents == nil {
                throw ModelError.unsupported(problem + (latentOnly ? "; pass --save-latents FILE to write the generated latents instead" : ""))
            }
            let classes = try ClassSelection.parse(className, flow: folder.flow, config: folder.config)
            let c = folder.config
            let k = classes.count * count
            var labels: [Int] = []
            for cls in classes { labels += [Int](repeating: cls, count: count) }

            var x0: Tensor
            if let latents {
                let file = try SafetensorsFile.read(path: latents)
                guard let t = file.tensors["latents"] else { throw ModelError.invalidFile("\(latents) has no tensor 'latents'") }
                guard t.shape == [k, c.inChannels, c.sampleSize, c.sampleSize] else {
                    throw ModelError.invalidFile("\(latents): 'latents' has shape \(t.shape), expected \([k, c.inChannels, c.sampleSize, c.sampleSize]) for \(classes.count) class(es) × --count \(count)")
                }
                x0 = Tensor(t)
            } else {
                let drawn = try source.draw(
                    count: k, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: seed, modelFolder: folder.path)
                x0 = drawn.samples
                if let rate = drawn.acceptanceRate {
                    print(String(format: "pruned source: acceptance rate %.4f of attempts", rate))
                }
            }
            let g = guidance ?? Float(folder.flow.defaultGuidance)
            let grid: [Float]
            if schedule == .boss {
                grid = try BOSS.Schedules.times(steps: steps, modelFolder: folderPath)
                try Schedule.validate(grid)
                let file = BOSS.Schedules.path(inModelFolder: folderPath)
                if let made = try? BOSS.Schedules.read(path: file), made.guidance != Double(g) {
                    FileHandle.standardError.write(Data("note: the BOSS schedules were made with guidance \(made.guidance), generating with \(g)\n".utf8))
                }
            } else {
                grid = Schedule.uniform(steps: steps)
            }
            let bar = ProgressBar("generate", total: steps, unit: "steps")
            let x1 = sampler.integrate(x0, schedule: grid, labels: folder.config.numClassEmbeds == nil ? nil : labels,
                                       guidance: g, solver: solver) { done, _, _ in
                bar.update(done)
                return true
            }
            bar.finish()
            if let saveLatents {
                let unscaled = x1.scaled(Float(1 / folder.flow.normScale))
                try SafetensorsFile(tensors: ["latents": unscaled]).write(path: saveLatents)
                if latentOnly {
                    print("wrote \(saveLatents): latents \(unscaled.shape) (no picture: the model has \(c.inChannels) channels and Millrace has no decoder)")
                    return
                }
            }
            let images = try RGBImage.batch(from: x1, scale: Float(sampler.flow.normScale)).map {
                upscale > 1 ? $0.resizedNearest(width: $0.width * upscale, height: $0.height * upscale) : $0
            }
            let names = classes.map { folder.flow.classNames.indices.contains($0) ? folder.flow.classNames[$0] : "class \($0)" }
            let picture: RGBImage
            if images.count == 1 {
                picture = images[0]
            } else if rowLabels && classes.count > 1 {
                let rows = (0..<classes.count).map { Array(images[($0 * count)..<(($0 + 1) * count)]) }
                picture = RGBImage.labeledRows(rows, labels: names, padding: 2)
            } else {
                picture = RGBImage.grid(images, columns: count, padding: 2)
            }
            let dir = (out as NSString).deletingLastPathComponent
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            try picture.writePNG(path: out)
            print("wrote \(out): \(k) image(s), \(steps) \(schedule == .boss ? "BOSS " : "")steps, classes: \(names.joined(separator: ", "))")
        }
    }
}
