import ArgumentParser
import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen eval colorize`: colorization quality on held-out colour images, and colour stability
/// along a frame sequence.
struct EvalColorize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "colorize",
        abstract: "Evaluate colorization (in_context, retrieval, no_retrieval, reinhard, gray) on held-out colour images.",
        discussion: """
        Held-out colour images (a .mrds dataset's split 1, or every PNG/JPEG of a
        folder) are turned gray (0.299 R + 0.587 G + 0.114 B) and colorized by:
          in_context    the in-context colorization model (§9.3; when
                        assets/models/colorize32 or --color-model is found)
          retrieval     retrieval-augmented exemplar chroma transfer (§9)
          no_retrieval  pool mean chroma per luminance bin
          reinhard      global Reinhard transfer in Lab from a random pool image
          gray          the gray input itself
          refine        (--refine) retrieval, then the flow model repaints the
                        chroma keeping the input's luminance (gen colorize --help)
        Metrics, averaged over images:
          psnr_rgb          PSNR on RGB in [0, 1]
          psnr_ab           PSNR on Lab a, b divided by 256 (peak 1)
          delta_e           mean CIE76 ΔE (Euclidean distance in Lab)
          colorfulness_gap  mean |colourfulness(output) - colourfulness(original)|
        --scenes N: held-out scenes (composed as `gen dataset scenes` does, from
        held-out emoji), each colorized from its own references: its emoji whole
        over white plus --distractors other held-out emoji (ColorFlow's setting);
        no_retrieval is that pool's luminance prior. JSON key "scenes".
        --frames DIR (colour frames, sorted by name, turned gray): frame-to-frame
        chroma variation, the mean over consecutive frames of
        sqrt(mean over pixels of Δa² + Δb²) in Lab units, for in context (with
        and without its temporal filter) and retrieval reusing a similar frame's
        retrieval (as `gen colorize DIR` does), retrieval afresh on every frame, no_retrieval and the original
        frames; the same on static pixels only (input luma unchanged between the
        two frames, so any chroma change there is flicker); and each variant's
        psnr_ab and delta_e. JSON key "frames". --scene-clips N: the same, averaged
        over N clips of held-out emoji moving over a background, each with its own
        references. JSON key "scene_clips".
        The pool defaults to the shipped assets/references (`gen references`).
        Examples:
          gen eval colorize --data data/emoji32.mrds --limit 0 --json
          gen eval colorize --scenes 300 --scene-examples scenes.png --scene-clips 8
          gen eval colorize --frames assets/clips/cartoon --frame-examples c.png
          gen eval colorize --data photos/heldout --refs my-refs
        """)

    @Option(help: "Held-out colour images: a .mrds dataset (split 1) or a folder of PNG/JPEG files.")
    var data: String?
    @Option(help: "A folder of colour frames for the frame-to-frame chroma variation.")
    var frames: String?
    @Option(help: "Folder of colour reference images (default: the shipped assets/references).")
    var refs: String?
    @Option(help: "Most images to evaluate (0: all).")
    var limit: Int = 50
    @Option(help: "Seed of the Reinhard reference draw (and of the --refine noise).")
    var seed: UInt64 = 0
    @Option(help: "Similarity above which a frame reuses the previous retrieval (--frames).")
    var reuseThreshold: Float = 0.95
    @Flag(help: "Also evaluate retrieval followed by model refinement (method 'refine').")
    var refine = false
    @Option(help: "Model folder for --refine (default: assets/models/emoji32 or $MILLRACE_MODEL).")
    var model: String?
    @Option(help: "--refine strength (starts at t = 1 - strength).")
    var strength: Float = 0.3
    @Option(help: "--refine Euler steps.")
    var steps: Int = 10
    @Option(help: "Write a comparison grid (rows: gray, retrieval, [refine,] original; images spread evenly over the evaluated set, 2x nearest) to this PNG.")
    var examples: String?
    @Option(help: "Columns of the --examples grid.")
    var examplesCount: Int = 16
    @Option(help: "Write a grid of --frames (rows: gray, retrieval with reuse, original; 6 frames spread evenly) to this PNG.")
    var frameExamples: String?
    @Option(help: "Held-out scenes to compose (needs the emoji font), each colorized from its own references: its emoji over white plus --distractors others. JSON key \"scenes\".")
    var scenes: Int = 0
    @Option(help: "Side of the --scenes scenes.")
    var sceneSize: Int = 32
    @Option(help: "Other held-out emoji added to each scene's references.")
    var distractors: Int = 6
    @Option(help: "Clips of 24 frames of held-out emoji moving over a background, each colorized from its own references (as --scenes): flicker and accuracy per variant. JSON key \"scene_clips\".")
    var sceneClips: Int = 0
    @Option(help: "Write a grid of the first --scene-clips clip (as --frame-examples) to this PNG.")
    var sceneClipExamples: String?
    @Option(help: "Write a comparison grid of --scenes (as --examples) to this PNG.")
    var sceneExamples: String?
    @OptionGroup var inContextOptions: InContextOptions
    @Flag(help: "Leave the in-context model out even when it is found.")
    var noInContext = false
    @Flag(help: "Print JSON keyed by method.")
    var json = false
    @Option(help: "Write each image's metrics (index, method, psnr_rgb, psnr_ab, delta_e) of --data and --scenes to this CSV.")
    var perImage: String?
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        guard data != nil || frames != nil || scenes > 0 || sceneClips > 0 else {
            throw ValidationError("give --data (held-out images), --scenes N, --scene-clips N and/or --frames (a frame folder)")
        }
        guard sceneClips >= 0 && sceneClips <= 1000 else { throw ValidationError("--scene-clips must be between 0 and 1000") }
        guard scenes >= 0 && scenes <= 100_000 else { throw ValidationError("--scenes must be between 0 and 100000") }
        guard sceneSize >= 16 && sceneSize <= 256 else { throw ValidationError("--scene-size must be between 16 and 256") }
        guard strength > 0 && strength <= 1 else { throw ValidationError("--strength must be in (0, 1], got \(strength)") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1") }
    }

    static func listImages(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir)
            .filter { !$0.hasPrefix(".") && ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let refs = self.refs ?? ReferencePool.defaultFolder()
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: refs, isDirectory: &isDir), isDir.boolValue else {
                throw CLIError("reference folder \(refs) does not exist: make the shipped one with `gen references --data data/emoji32.mrds`, or pass a folder of colour images with --refs")
            }
            let pool = ReferencePool(folder: refs)
            try pool.index()
            if let perImage {
                do {
                    try AtomicFile.write("set,index,method,psnr_rgb,psnr_ab,delta_e\n", to: perImage)
                } catch {
                    throw CLIError("cannot write \(perImage): \(error)")
                }
            }
            var report: [String: Any] = [:]
            if let data { report.merge(try evaluateImages(data: data, pool: pool, refs: refs)) { $1 } }
            if scenes > 0 { report["scenes"] = try evaluateScenes(count: scenes) }
            if sceneClips > 0 { report["scene_clips"] = try evaluateSceneClips(count: sceneClips) }
            if let frames { report["frames"] = try evaluateFrames(dir: frames, pool: pool) }
            if json {
                let out = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: out, as: UTF8.self))
            }
        }
    }

    func evaluateImages(data: String, pool: ReferencePool, refs: String) throws -> [String: Any] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: data, isDirectory: &isDir) else {
            throw CLIError("data \(data) does not exist")
        }
        var loaders: [() throws -> RGBImage] = []
        if isDir.boolValue {
            loaders = try Self.listImages(data).map { name in { try RGBImage.load(path: (data as NSString).appendingPathComponent(name)) } }
        } else {
            let ds = try ImageDataset.read(path: data)
            loaders = ds.indices(split: 1).map { i in { ds.image(at: i) } }
        }
        guard !loaders.isEmpty else { throw CLIError("no held-out colour images in \(data)") }
        if limit > 0 && loaders.count > limit { loaders = Array(loaders.prefix(limit)) }
        let items = loaders.map { load in { () throws -> (RGBImage, ReferencePool) in (try load(), pool) } }
        let report = try evaluate(items, set: "images", examples: examples, what: "\(loaders.count) images, pool \(refs) (\(pool.names.count) images)")
        return report
    }

    /// Held-out scenes, each colorized from its own references (its emoji over white plus
    /// --distractors other held-out emoji); the luminance prior is that pool's.
    func evaluateScenes(count: Int) throws -> [String: Any] {
        let sprites = try EmojiDatasetBuilder.buildSprites(size: sceneSize)
        let composer = SceneComposer(sprites: sprites, size: sceneSize)
        let items = (0..<count).map { k in { () throws -> (RGBImage, ReferencePool) in
            var rng = SplitMix64(seed: self.seed &+ 0x5CE7E, stream: k)
            let scene = composer.compose(split: 1, rng: &rng)
            let pool = ReferencePool(images: composer.references(of: scene, split: 1, distractors: self.distractors, rng: &rng))
            try pool.index()
            return (scene.image, pool)
        } }
        return try evaluate(items, set: "scenes", examples: sceneExamples,
                            what: "\(count) held-out scenes of \(sceneSize)×\(sceneSize), each with its own references (+\(distractors) distractors)")
    }

    /// The in-context model, when one is found (or asked for).
    func inContextModel() throws -> ModelFolder? {
        if noInContext { return nil }
        guard let path = inContextOptions.colorModel ?? ModelFolder.defaultColorizationPath() else { return nil }
        return try ModelFolder.load(path)
    }

    /// Colorizes each item (an original and the pool to colorize it from) by every method and
    /// averages the metrics.
    func evaluate(_ items: [() throws -> (RGBImage, ReferencePool)], set: String, examples: String?, what: String) throws -> [String: Any] {
        var refiner: ChromaRefiner? = nil
        if refine {
            var r = ChromaRefiner(folder: try ModelFolder.load(model ?? ModelFolder.defaultPath()))
            r.strength = strength
            r.steps = steps
            r.seed = seed
            refiner = r
        }
        let colorFolder = try inContextModel()
        var rng = SplitMix64(seed: seed)
        var rows: [String] = []
        let methods = ["retrieval", "no_retrieval", "reinhard", "gray"] + (colorFolder != nil ? ["in_context"] : []) + (refine ? ["refine"] : [])
        var sums = [String: [Double]](uniqueKeysWithValues: methods.map { ($0, [0, 0, 0, 0]) })
        let bar = json ? nil : ProgressBar("eval colorize", total: items.count, unit: "images")
        // Batches, so --refine and in-context make one model call per step for many images.
        let batch = 32
        var done = 0
        let wanted = examples == nil ? [] : Set((0..<min(examplesCount, items.count)).map { $0 * items.count / min(examplesCount, items.count) })
        let rowNames = ["gray", "retrieval"] + (colorFolder != nil ? ["in_context"] : []) + (refine ? ["refine"] : []) + ["original"]
        var exampleRows = [[RGBImage]](repeating: [], count: rowNames.count)
        while done < items.count {
            let range = done..<min(items.count, done + batch)
            let loaded = try range.map { try items[$0]() }
            let originals = loaded.map(\.0)
            let grays = originals.map(Colorizer.grayscale)
            var outputs: [[String: RGBImage]] = []
            var evidence: [ChromaEvidence] = []
            for (gray, (_, pool)) in zip(grays, loaded) {
                let reference = try pool.image(at: Int(rng.next() % UInt64(pool.names.count)))
                let e = try Colorizer(pool: pool).evidence(gray: gray)
                evidence.append(e)
                outputs.append([
                    "retrieval": Colorizer.compose(gray: gray, a: e.a, b: e.b, width: e.width, height: e.height),
                    "no_retrieval": try Colorizer(pool: pool, mode: .noRetrieval).colorize(gray: gray).image,
                    "reinhard": Colorizer.reinhard(gray: gray, reference: reference),
                    "gray": gray,
                ])
            }
            if let colorFolder {
                let model = try inContextOptions.colorizer(folder: colorFolder, pool: loaded[0].1, seed: seed)
                let colored = try model.colorize(gray: grays, evidence: evidence)
                for k in outputs.indices { outputs[k]["in_context"] = colored[k] }
            }
            if var refiner {
                refiner.seed = seed &+ UInt64(done)
                let refined = try refiner.refine(colorized: outputs.map { $0["retrieval"]! }, gray: grays)
                for k in outputs.indices { outputs[k]["refine"] = refined[k] }
            }
            for (k, (original, out)) in zip(originals, outputs).enumerated() where wanted.contains(range.lowerBound + k) {
                for (r, name) in rowNames.enumerated() {
                    let image = name == "original" ? original : out[name]!
                    exampleRows[r].append(image.resizedNearest(width: 2 * image.width, height: 2 * image.height))
                }
            }
            for (k, (original, out)) in zip(originals, outputs).enumerated() {
                let c0 = ColorMetrics.colorfulness(original)
                for m in methods {
                    let image = out[m]!
                    let metrics = [ColorMetrics.psnrRGB(image, original), ColorMetrics.psnrAB(image, original),
                                   ColorMetrics.deltaE76(image, original)]
                    for j in 0..<3 { sums[m]![j] += metrics[j] }
                    sums[m]![3] += abs(ColorMetrics.colorfulness(image) - c0)
                    if perImage != nil {
                        rows.append("\(set),\(range.lowerBound + k),\(m)," + metrics.map { String(format: "%.4f", $0) }.joined(separator: ","))
                    }
                }
            }
            done = range.upperBound
            bar?.update(done)
        }
        bar?.finish()
        if let perImage {
            guard let handle = FileHandle(forWritingAtPath: perImage) else { throw CLIError("cannot write \(perImage)") }
            handle.seekToEndOfFile()
            handle.write(Data(rows.map { $0 + "\n" }.joined().utf8))
            try handle.close()
        }
        if let examples {
            try RGBImage.labeledRows(exampleRows, labels: rowNames).writePNG(path: examples)
            if !json { print("wrote \(examples)") }
        }
        let n = Double(items.count)
        var report: [String: [String: Double]] = [:]
        for m in methods {
            let s = sums[m]!
            report[m] = ["psnr_rgb": s[0] / n, "psnr_ab": s[1] / n, "delta_e": s[2] / n, "colorfulness_gap": s[3] / n,
                         "images": n]
        }
        if !json {
            print(what)
            print("method        psnr_rgb  psnr_ab  delta_e  colorfulness_gap")
            for m in methods {
                let r = report[m]!
                print(m.padding(toLength: 12, withPad: " ", startingAt: 0)
                      + String(format: "  %8.2f %8.2f %8.2f %10.4f", r["psnr_rgb"]!, r["psnr_ab"]!, r["delta_e"]!, r["colorfulness_gap"]!))
            }
        }
        return report
    }

    func evaluateFrames(dir: String, pool: ReferencePool) throws -> [String: Any] {
        let names = try Self.listImages(dir)
        guard names.count >= 2 else { throw CLIError("--frames \(dir) needs at least 2 PNG or JPEG frames") }
        let originals = try names.map { try RGBImage.load(path: (dir as NSString).appendingPathComponent($0)) }
        let out = try sequenceFigures(originals, pool: pool, examples: frameExamples)
        if !json { printSequence(out, what: "\(names.count) frames in \(dir)") }
        return out
    }

    /// --scene-clips: clips of held-out emoji moving over a background, each colorized from its
    /// own references (its emoji over white plus --distractors others); figures averaged.
    func evaluateSceneClips(count: Int) throws -> [String: Any] {
        let sprites = try EmojiDatasetBuilder.buildSprites(size: sceneSize)
        let composer = SceneComposer(sprites: sprites, size: sceneSize)
        var sums: [String: [String: Double]] = [:]
        var reused: [String: Double] = [:]
        let s = Float(sceneSize)
        for k in 0..<count {
            var rng = SplitMix64(seed: seed &+ 0xC11B, stream: k)
            let scene = composer.compose(split: 1, rng: &rng)
            let movers = scene.members.prefix(3).map { i in
                SceneComposer.Mover(sprite: i, x: s * Float(rng.nextUnitDouble() * 0.6 + 0.2), y: s * Float(rng.nextUnitDouble() * 0.6 + 0.2),
                                    dx: Float(rng.nextUnitDouble() * 1.2 - 0.6), dy: Float(rng.nextUnitDouble() * 1.2 - 0.6),
                                    side: Int(s * Float(rng.nextUnitDouble() * 0.25 + 0.3)))
            }
            let frames = composer.movingClip(background: SceneComposer.background(size: sceneSize, rng: &rng), movers: movers, frames: 24)
            let pool = ReferencePool(images: composer.references(of: scene, split: 1, distractors: distractors, rng: &rng))
            try pool.index()
            let figures = try sequenceFigures(frames, pool: pool, examples: k == 0 ? sceneClipExamples : nil)
            for (name, value) in figures {
                if let d = value as? [String: Double] {
                    for (m, v) in d { sums[name, default: [:]][m, default: 0] += v / Double(count) }
                } else if let v = (value as? NSNumber)?.doubleValue {
                    reused[name, default: 0] += v / Double(count)
                }
            }
        }
        var out: [String: Any] = reused
        for (name, d) in sums { out[name] = d }
        out["clips"] = count
        if !json { printSequence(out, what: "\(count) clips of 24 frames of \(sceneSize)×\(sceneSize), held-out emoji moving, each with its own references (means)") }
        return out
    }

    /// Colorizes a sequence by every variant (in context and retrieval reusing a similar frame's
    /// retrieval, retrieval afresh, the prior) and measures each.
    func sequenceFigures(_ originals: [RGBImage], pool: ReferencePool, examples: String?) throws -> [String: Any] {
        let grays = originals.map(Colorizer.grayscale)
        let withReuse = FrameSequenceColorizer(colorizer: Colorizer(pool: pool), reuseThreshold: reuseThreshold)
        let afresh = FrameSequenceColorizer(colorizer: Colorizer(pool: pool), reuse: false)
        let plain = Colorizer(pool: pool, mode: .noRetrieval)
        var variants: [(String, [RGBImage])] = [
            ("retrieval_reuse", try grays.map { try withReuse.next($0).image }),
            ("retrieval_no_reuse", try grays.map { try afresh.next($0).image }),
            ("no_retrieval", try grays.map { try plain.colorize(gray: $0).image }),
        ]
        var inContextReused = 0
        if let folder = try inContextModel() {
            let model = try inContextOptions.colorizer(folder: folder, pool: pool, seed: seed)
            let sequence = FrameSequenceColorizer(inContext: model, reuseThreshold: reuseThreshold)
            variants.insert(("in_context_reuse", try grays.map { try sequence.next($0).image }), at: 0)
            inContextReused = sequence.reusedCount
            // The same without the temporal filter, to show what the filter does.
            let unfiltered = FrameSequenceColorizer(inContext: model, reuseThreshold: reuseThreshold)
            unfiltered.temporalSigma = 0
            variants.insert(("in_context_no_filter", try grays.map { try unfiltered.next($0).image }), at: 1)
        }
        variants.append(("original", originals))
        if let examples {
            let n = originals.count
            let picks = (0..<min(6, n)).map { $0 * (n - 1) / max(1, min(6, n) - 1) }
            let shown = variants.filter { $0.0 == "retrieval_reuse" || $0.0 == "in_context_reuse" }
            let rows = ([grays] + shown.map(\.1) + [originals]).map { seq in picks.map { seq[$0] } }
            let labels = ["gray"] + shown.map { $0.0 == "retrieval_reuse" ? "retrieval" : "in_context" } + ["original"]
            try RGBImage.labeledRows(rows, labels: labels).writePNG(path: examples)
            if !json { print("wrote \(examples)") }
        }
        var out: [String: Any] = ["frames": originals.count, "reused": withReuse.reusedCount]
        if variants.contains(where: { $0.0 == "in_context_reuse" }) { out["in_context_reused"] = inContextReused }
        for (name, seq) in variants {
            let psnr = zip(seq, originals).map { ColorMetrics.psnrAB($0, $1) }.reduce(0, +) / Double(seq.count)
            let de = zip(seq, originals).map { ColorMetrics.deltaE76($0, $1) }.reduce(0, +) / Double(seq.count)
            out[name] = ["chroma_variation": ColorMetrics.chromaVariation(seq),
                         "static_variation": ColorMetrics.chromaVariation(seq, staticIn: grays),
                         "psnr_ab": psnr, "delta_e": de]
        }
        return out
    }

    func printSequence(_ out: [String: Any], what: String) {
        print("\(what); \(out["reused"] ?? 0) frames reused the retrieval in use")
        print("variant              chroma_variation  static_variation  psnr_ab  delta_e")
        for name in ["in_context_reuse", "in_context_no_filter", "retrieval_reuse", "retrieval_no_reuse", "no_retrieval", "original"] {
            guard let r = out[name] as? [String: Double] else { continue }
            print(name.padding(toLength: 20, withPad: " ", startingAt: 0)
                  + String(format: " %16.3f %17.3f %8.2f %8.2f", r["chroma_variation"]!, r["static_variation"]!, r["psnr_ab"]!, r["delta_e"]!))
        }
    }
}
