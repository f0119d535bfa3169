import ArgumentParser
import Foundation
import MillraceCore
import MillraceImaging
import MillracePipelines

/// `gen colorize`: retrieval-augmented exemplar colorization (docs/METHODS.md §9).
struct ColorizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "colorize",
        abstract: "Colorize a gray image (or a folder of frames) from a pool of colour reference images.",
        discussion: """
        Each input is turned gray (luma); its 4 overlapping crops retrieve their 3
        most similar pool patches (luminance descriptors after BSS). --method says
        what is made of them:
          in-context  (default when assets/models/colorize32 is present) the
                      colorization model generates the chroma from the input's
                      lightness and what retrieval found: the transferred chroma,
                      how much of it matched, and the best patches' own colours
                      (docs/METHODS.md §9.3); --color-steps Euler steps from
                      fixed noise (--seed)
          retrieval   chroma transferred in Lab from the patches, smoothed with
                      luminance guidance (the default without the model)
          prior       the pool's mean chroma per luminance bin, no retrieval
                      (--no-retrieval is another name for it)
        The output keeps the input's L exactly. The pool (default: the shipped
        assets/references, made by `gen references`) is indexed into
        <refs>/.millrace-index.json, rebuilt when the folder changes (the file is
        gitignored). For a folder of frames, a frame similar to the one whose
        retrieval is in use reuses that retrieval, so colours stay stable; in
        context, a pixel whose input luma has not changed since the previous
        frame also keeps its colour (--temporal-sigma).

        --refine (for inputs in the model's domain: 32x32 emoji for emoji32): the
        flow model then repaints the chroma while the input's luminance is kept.
        It starts at t0 = 1 - strength from x = t0*colorized + (1-t0)*noise and
        takes Euler steps to t = 1. After each step the data estimate
        x1 = x + (1-t)*v gets the input's luminance (Lab: L from the input, a and
        b kept), and x is re-formed as t'*x1 + (1-t')*x0 with the model's source
        estimate x0 = x - t*v (without the luminance swap this is exactly the
        Euler step). At the end the input's L is restored exactly at full
        resolution (chroma, not L, is reduced where a colour falls outside sRGB).
        Other sizes are refined at the model's size; only a, b are upsampled.
        --class conditions on a group (default: the null class, unconditional).

        Examples:
          gen colorize old.png --out out/color.png --show-refs out/refs.png
          gen colorize frames/ --out out/colored --refs my-refs/
          gen colorize old.png --out out/plain.png --method prior
          gen colorize old.png --out out/transfer.png --method retrieval
          gen colorize emoji.png --out out/refined.png --refine --strength 0.3
        """)

    @Argument(help: "Input image, or a folder of frames (PNG or JPEG, sorted by name).")
    var input: String
    @Option(help: "Output PNG (single input) or output folder (folder input).")
    var out: String
    @Option(help: "Folder of colour reference images (default: the shipped assets/references).")
    var refs: String?
    @Option(help: "in-context, retrieval or prior (default: in-context when the colorization model is present, else retrieval).")
    var method: ColorMethod?
    @Flag(help: "Another name for --method prior.")
    var noRetrieval = false
    @OptionGroup var inContextOptions: InContextOptions
    @Option(help: "Write the §9 canvas (query and retrieved patches) to this PNG (folder input: <PNG without .png>-<frame>.png per frame).")
    var showRefs: String?
    @Option(help: "Similarity (cosine of frame descriptors) above which a frame reuses the previous retrieval.")
    var reuseThreshold: Float = 0.95
    @Option(help: "Folder input, in context: σ (luma, 0–1) of the temporal filter that keeps a pixel's colour while its input stays put (0: off).")
    var temporalSigma: Float = 2.0 / 255
    @Flag(help: "Let the flow model repaint the chroma, keeping the input's luminance (see above).")
    var refine = false
    @Option(help: "Model folder for --refine (default: assets/models/emoji32 or $MILLRACE_MODEL).")
    var model: String?
    @Option(help: "--refine: how much of the flow is rerun; it starts at t = 1 - strength. In (0, 1].")
    var strength: Float = 0.3
    @Option(help: "--refine: Euler steps from 1 - strength to 1.")
    var steps: Int = 10
    @Option(name: .customLong("class"), help: "--refine: class name (or unique prefix) or index to condition on; default the null class (unconditional).")
    var className: String?
    @Option(help: "--refine: guidance scale with --class (default: the model's flow.json).")
    var guidance: Float?
    @Option(help: "--refine: seed of the noise.")
    var seed: UInt64 = 0
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        guard strength > 0 && strength <= 1 else { throw ValidationError("--strength must be in (0, 1], got \(strength)") }
        guard steps >= 1 && steps <= 1000 else { throw ValidationError("--steps must be in 1...1000") }
        guard temporalSigma >= 0 && temporalSigma <= 1 else { throw ValidationError("--temporal-sigma must be in [0, 1]") }
        if noRetrieval, let method, method != .prior {
            throw ValidationError("--no-retrieval is --method prior; it cannot be combined with --method \(method.rawValue)")
        }
        if let className, className.lowercased() == "all" {
            throw ValidationError("--class takes one class (a name, unique prefix or index), not 'all'")
        }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let refs = self.refs ?? ReferencePool.defaultFolder()
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: refs, isDirectory: &isDir), isDir.boolValue else {
                throw CLIError("""
                    reference folder \(refs) does not exist. Make the shipped one with \
                    `gen references --data data/emoji32.mrds`, or put colour PNG or JPEG images in a folder \
                    and pass it with --refs
                    """)
            }
            let pool = ReferencePool(folder: refs)
            let rebuilt = try pool.index()
            FileHandle.standardError.write(Data("pool: \(pool.names.count) images, \(pool.patchCount) patches (\(rebuilt ? "indexed" : "cached index"))\n".utf8))
            let chosen = try ColorMethod.resolve(noRetrieval ? .prior : method, model: inContextOptions.colorModel)
            let colorizer = Colorizer(pool: pool, mode: chosen.method == .prior ? .noRetrieval : .retrieval)
            var inContext: InContextColorizer? = nil
            if let path = chosen.modelPath {
                inContext = try inContextOptions.colorizer(folder: try ModelFolder.load(path), pool: pool, seed: seed)
                let steps = inContextOptions.colorSteps
                FileHandle.standardError.write(Data("method: in-context (\(path), \(steps) step\(steps == 1 ? "" : "s"))\n".utf8))
            } else {
                FileHandle.standardError.write(Data("method: \(chosen.method.rawValue)\n".utf8))
            }
            let showsRefs = chosen.method != .prior
            var refiner: ChromaRefiner? = nil
            if refine {
                let folder = try ModelFolder.load(model ?? ModelFolder.defaultPath())
                var r = ChromaRefiner(folder: folder)
                r.strength = strength
                r.steps = steps
                r.seed = seed
                if let className {
                    r.classIndex = try ClassSelection.parse(className, flow: folder.flow, config: folder.config)[0]
                    if r.classIndex == folder.flow.nullClass { r.classIndex = nil }
                }
                r.guidance = guidance ?? Float(folder.flow.defaultGuidance)
                refiner = r
            }
            func finish(_ image: RGBImage, input: RGBImage) throws -> RGBImage {
                guard let refiner else { return image }
                return try refiner.refine(colorized: image, gray: input)
            }
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDir) else {
                throw CLIError("input \(input) does not exist")
            }
            if !isDir.boolValue {
                let image = try RGBImage.load(path: input)
                let result = try inContext?.colorize(gray: image) ?? colorizer.colorize(gray: image)
                let dir = (out as NSString).deletingLastPathComponent
                if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
                try finish(result.image, input: image).writePNG(path: out)
                if let showRefs, showsRefs {
                    try colorizer.canvas(gray: image, references: result.references).writePNG(path: showRefs)
                }
                for r in result.references where r.rank == 0 {
                    print("quadrant \(r.quadrant): \(r.name) [\(r.rect.x),\(r.rect.y) \(r.rect.width)x\(r.rect.height)] cos \(String(format: "%.3f", r.similarity))")
                }
                print("wrote \(out)\(refine ? " (refined, strength \(strength), \(steps) steps)" : "")")
                return
            }
            let names = try FileManager.default.contentsOfDirectory(atPath: input)
                .filter { !$0.hasPrefix(".") && ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
            guard !names.isEmpty else { throw CLIError("no PNG or JPEG frames in \(input)") }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let bar = ProgressBar("colorize", total: names.count, unit: "frames")
            let sequence = inContext.map { FrameSequenceColorizer(inContext: $0, reuseThreshold: reuseThreshold) }
                ?? FrameSequenceColorizer(colorizer: colorizer, reuseThreshold: reuseThreshold)
            sequence.temporalSigma = temporalSigma
            for (i, name) in names.enumerated() {
                let frame = try RGBImage.load(path: (input as NSString).appendingPathComponent(name))
                let result = try sequence.next(frame)
                let base = (name as NSString).deletingPathExtension
                try finish(result.image, input: frame).writePNG(path: (out as NSString).appendingPathComponent(base + ".png"), fast: true)
                if let showRefs, showsRefs {
                    let path = ((showRefs as NSString).deletingPathExtension) + "-\(base).png"
                    try colorizer.canvas(gray: frame, references: result.references).writePNG(path: path, fast: true)
                }
                bar.update(i + 1)
            }
            bar.finish()
            print("wrote \(names.count) frames to \(out) (\(sequence.reusedCount) reused the previous retrieval)")
        }
    }
}

/// How `gen colorize` and `gen eval colorize` make chroma.
enum ColorMethod: String, ExpressibleByArgument, CaseIterable {
    case inContext = "in-context", retrieval, prior

    /// Euler steps of the colorization model when none are asked for.
    static let defaultSteps = 1
    /// Noise draws averaged per image when none are asked for.
    static let defaultSamples = 2

    /// The method to use and, for in-context, the model folder: an explicit method, else
    /// in-context when a model is given or shipped, else retrieval.
    static func resolve(_ method: ColorMethod?, model: String?) throws -> (method: ColorMethod, modelPath: String?) {
        switch method {
        case .retrieval?, .prior?: return (method!, nil)
        case .inContext?:
            guard let path = model ?? ModelFolder.defaultColorizationPath() else {
                throw CLIError("--method in-context needs the colorization model: assets/models/\(ModelFolder.colorizationModelName) is missing (pass --color-model DIR, or train one: docs/TRAINING.md)")
            }
            return (.inContext, path)
        case nil:
            if let path = model ?? ModelFolder.defaultColorizationPath() { return (.inContext, path) }
            return (.retrieval, nil)
        }
    }
}

/// The in-context model's options, shared by `gen colorize` and `gen eval colorize`.
struct InContextOptions: ParsableArguments {
    @Option(help: "In-context colorization model folder (default: assets/models/colorize32 or $MILLRACE_COLOR_MODEL).")
    var colorModel: String?
    @Option(help: "In context: Euler steps of the colorization model.")
    var colorSteps: Int = ColorMethod.defaultSteps
    @Option(help: "In context: noise draws per image (antithetic pairs), run together and averaged.")
    var colorSamples: Int = ColorMethod.defaultSamples

    func validate() throws {
        guard colorSteps >= 1 && colorSteps <= 100 else { throw ValidationError("--color-steps must be in 1...100") }
        guard colorSamples >= 1 && colorSamples <= 64 else { throw ValidationError("--color-samples must be in 1...64") }
    }

    /// The model of `folder` with these options, colorizing from `pool`, its noise from `seed`.
    func colorizer(folder: ModelFolder, pool: ReferencePool, seed: UInt64) throws -> InContextColorizer {
        let model = try InContextColorizer(folder: folder, pool: pool)
        model.steps = colorSteps
        model.samples = colorSamples
        model.seed = seed
        return model
    }
}
