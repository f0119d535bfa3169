import ArgumentParser
import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen stream`: run a folder of frames through the real-time image-to-image pipeline.
struct StreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream",
        abstract: "Restyle a folder of frames with the stream pipeline (stream batch, RCFG, similarity filter).",
        discussion: """
        Frames (PNG or JPEG, sorted by name) are centre-cropped, resized to the model's size, noised \
        to t_0 = 1 − strength and denoised in n stages, one batched model call per frame. By \
        default the stream model (assets/models/scenes128-restyle, a one-step restyle model at \
        128×128: it sees the frame as a condition) redraws each frame as emoji of --class in one jump from \
        noise, one network row per frame, with structure guidance 0.55: each output gets that \
        share of its input's coarse light and dark (at the drawing's own contrast, more where \
        its layout strays: --structure-floor). An image model (--model \
        assets/models/scenes64-i2i) is noised from the frame instead (strength 0.6, full \
        guidance at 3). Outputs are written under the same names as PNGs, with summary.json \
        (frames in, processed, skipped, errors, output fps, \
        mean latency, classifier_agreement: the fraction of processed outputs the evaluation \
        classifier assigns to --class, classifier_votes: how many outputs it assigned to \
        each group, luma_correlation: how much of each input's layout its \
        output keeps, and flicker_static; docs/STREAMS.md).

        Examples:
          gen stream --input assets/clips/scene --out out/stream --class "Animals & Nature"
          gen stream --input assets/clips/sketch --out out/s --class "Smileys & Emotion"
          gen stream --input assets/clips/scene --out out/s --class "Food & Drink" --structure 0.75  # more of the input's light and dark
          gen stream --input assets/clips/scene --out out/s --class Flags --model assets/models/scenes64-i2i --strength 0.7
          gen stream --input frames/ --out out/s --model assets/models/scenes64 --steps 8 --stepping euler --rcfg full --guidance 3
          gen stream --input frames/ --out out/s --blend 0.3 --no-filter --size 256x256
        """)

    @Option(help: "Folder of input frames.")
    var input: String
    @Option(help: "Output folder.")
    var out: String
    @Option(help: "Model folder (default: the stream model, assets/models/scenes128-restyle; the composition model, then the emoji model, where it is absent).")
    var model: String?
    @Option(help: "How much of each frame is repainted: t_0 = 1 − strength (default: 1 for a restyle model, which sees the frame as its condition; \(StreamPipeline.defaultStrength) for an image model).")
    var strength: Float?
    @Option(help: "Number of stages n (model rows per frame without guidance; default: 1 for a one-step restyle model, \(StreamPipeline.restyleSteps) for another restyle model, \(StreamPipeline.defaultSteps) for an image model).")
    var steps: Int?
    @Option(help: "Explicit slot times, comma-separated (overrides --strength/--steps).")
    var tList: String?
    @Option(help: "Guidance scale g (default: \(StreamPipeline.defaultScale) for an image model, \(StreamPipeline.restyleScale) for a restyle model).")
    var guidance: Float?
    @Option(help: "Guidance mode: none, full, self, onetime (default: none for a one-step student, whose guidance is in its weights; else full where the model has a null class).")
    var rcfg: StreamGuidance?
    @Option(help: "RCFG damping δ in (0, 1].")
    var delta: Float = 1
    @Option(help: "Between slot times: renoise (jump to the estimate, noise again) or euler (an Euler step of the flow); default: euler for a restyle model, renoise for an image model.")
    var stepping: StreamStepping?
    @Option(help: "Blend β in [0, 1) of the previous output into each entering frame (less flicker on still parts).")
    var blend: Float = 0
    @Option(help: "Structure guidance w in [0, 1]: each output's coarse luma moves the share w of the way to its input's; colours and detail stay the model's (default: \(StreamPipeline.restyleStudentStructure) for a one-step restyle model, \(StreamPipeline.restyleStructure) for another restyle model, 0 (off) for an image model).")
    var structure: Float?
    @Option(help: "σ in pixels, at the model's size, of the blur through which structure guidance compares luma (default: \(StreamPipeline.defaultStructureSigma)).")
    var structureSigma: Float?
    @Option(help: "Structure floor ρ in [0, 1): an output whose luma correlates with its input's by less than ρ gets more structure guidance (up to 1) until it reaches ρ; 0 turns it off (default: \(StreamPipeline.restyleStructureFloor) for a one-step restyle model, else 0).")
    var structureFloor: Float?
    @Option(help: "What structure guidance moves each output's coarse luma towards: frame (the input's luma) or matched (the input's layout at the output's own contrast, so dark drawings stay dark) (default: \(StreamPipeline.restyleStudentStructureTarget.rawValue) for a one-step restyle model, else frame).")
    var structureTarget: StructureTarget?
    @Option(name: .customLong("class"), help: "Class name, index, or 'null'.")
    var className: String = "0"
    @Option(help: "Similarity threshold η of the filter.")
    var similarity: Float = 0.98
    @Option(help: "Most consecutive skipped frames.")
    var maxSkip: Int = 10
    @Flag(help: "Process every frame (no similarity filter).")
    var noFilter = false
    @Option(help: "Output size WxH (nearest upscale; default: the model's size).")
    var size: String?
    @Option(help: "Seed of the per-slot noise and the filter.")
    var seed: UInt64 = 0
    @Option(help: "Evaluation classifier: the summary gets the fraction of processed outputs it assigns to --class ('none' to skip; default: assets/models/scene-classifier, trained on scenes, else emoji-classifier).")
    var classifier: String?
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let folder = try ModelFolder.load(model ?? ModelFolder.defaultStreamPath())
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            if let problem = StreamPipeline.streamProblem(sampler) { throw CLIError("\(folder.path) cannot run a stream: \(problem)") }
            let times: [Float]
            if let tList {
                let parts = tList.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
                guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else { throw CLIError("--t-list must be numbers like 0.4,0.6,0.8") }
                times = parts.map { $0! }
            } else {
                let d = StreamPipeline.Defaults(flow: folder.flow)
                times = try StreamPipeline.times(strength: strength ?? d.strength, steps: steps ?? d.steps)
            }
            var settings = StreamSettings.defaults(classIndex: try ClassSelection.parse(className, flow: folder.flow, config: folder.config)[0],
                                                   flow: folder.flow)
            if let rcfg { settings.guidance = rcfg }
            if let guidance { settings.scale = guidance }
            let mode = settings.guidance
            settings.delta = delta
            if let stepping { settings.stepping = stepping }
            settings.blend = blend
            if let structure { settings.structure = structure }
            if let structureSigma { settings.structureSigma = structureSigma }
            if let structureFloor { settings.structureFloor = structureFloor }
            if let structureTarget { settings.structureTarget = structureTarget }
            let pipeline = try StreamPipeline(sampler: sampler, times: times, settings: settings, seed: seed)
            let session = StreamSession(pipeline: pipeline, filter: noFilter ? nil
                : SimilarityFilter(threshold: similarity, maxSkip: maxSkip, side: SimilarityFilter.defaultSide, seed: seed))
            if let size {
                let wh = size.lowercased().split(separator: "x").compactMap { Int($0) }
                guard wh.count == 2, wh.allSatisfy({ $0 >= 1 && $0 <= 4096 }) else { throw CLIError("--size must be WxH like 256x256") }
                session.outputSize = (wh[0], wh[1])
            }
            let names = try FileManager.default.contentsOfDirectory(atPath: input)
                .filter { ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
            guard !names.isEmpty else { throw CLIError("no PNG or JPEG frames in \(input)") }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let bar = ProgressBar("stream", total: names.count, unit: "frames")
            var latencies: [Double] = [], errors: [[String: String]] = []
            // Outputs are classified in batches as they come, so a long folder keeps no images.
            var judge: EmojiClassifier? = nil
            let classifier = self.classifier ?? ["assets/models/scene-classifier", "assets/models/emoji-classifier"]
                .first { FileManager.default.fileExists(atPath: $0) } ?? "assets/models/emoji-classifier"
            if classifier != "none", settings.classIndex < folder.flow.classNames.count {
                if FileManager.default.fileExists(atPath: classifier) {
                    judge = try EmojiClassifier.load(path: classifier)
                } else {
                    FileHandle.standardError.write(Data("note: no classifier at \(classifier); classifier_agreement left out\n".utf8))
                }
            }
            var pending: [RGBImage] = [], judged = 0, agreed = 0
            var votes = [Int](repeating: 0, count: folder.flow.classNames.count)
            var judging = 0.0   // seconds spent classifying, left out of output_fps
            func judgePending() {
                guard let judge, !pending.isEmpty else { return }
                let t = Date()
                defer { judging += Date().timeIntervalSince(t) }
                let predicted = judge.predict(pending)
                agreed += predicted.filter { $0 == settings.classIndex }.count
                for p in predicted where votes.indices.contains(p) { votes[p] += 1 }
                judged += pending.count
                pending.removeAll(keepingCapacity: true)
            }
            let start = Date()
            for (i, name) in names.enumerated() {
                let t0 = Date()
                do {
                    let frame = try RGBImage.load(path: (input as NSString).appendingPathComponent(name))
                    let result = try session.process(frame)
                    let base = (name as NSString).deletingPathExtension
                    try result.image.writePNG(path: (out as NSString).appendingPathComponent(base + ".png"), fast: true)
                    latencies.append(Date().timeIntervalSince(t0))
                    if judge != nil && !result.skipped {
                        pending.append(result.image)
                        if pending.count == 64 { judgePending() }
                    }
                } catch {
                    errors.append(["frame": name, "error": "\(error)"])
                    FileHandle.standardError.write(Data("\nframe \(name): \(error)\n".utf8))
                }
                bar.update(i + 1)
            }
            bar.finish()
            let wall = Date().timeIntervalSince(start) - judging
            var summary: [String: Any] = [
                "frames_in": session.framesIn, "processed": session.framesProcessed, "skipped": session.framesSkipped,
                "errors": errors, "output_fps": Double(latencies.count) / max(wall, 1e-9),
                "mean_latency_ms": latencies.isEmpty ? 0 : 1000 * latencies.reduce(0, +) / Double(latencies.count),
                "model": folder.path, "model_calls": pipeline.modelCalls, "slots": times, "guidance": mode.rawValue,
                "stepping": settings.stepping.rawValue, "blend": blend,
                "structure": settings.structure, "structure_sigma": settings.structureSigma,
                "structure_floor": settings.structureFloor,
                "structure_target": settings.structureTarget.rawValue,
                "class": folder.flow.classNames.indices.contains(settings.classIndex) ? folder.flow.classNames[settings.classIndex] : "null",
            ]
            judgePending()
            if judge != nil {
                summary["classifier_agreement"] = Double(agreed) / Double(max(judged, 1))
                // What the classifier read instead: processed outputs per group it named.
                var named: [String: Int] = [:]
                for (k, n) in votes.enumerated() where n > 0 { named[folder.flow.classNames[k]] = n }
                summary["classifier_votes"] = named
            }
            // Structure and flicker (docs/STREAMS.md), measured by the session at the model's size.
            if let c = session.measures.lumaCorrelation { summary["luma_correlation"] = c }
            if let f = session.measures.flickerStatic { summary["flicker_static"] = f }
            let data = try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.write(data, to: (out as NSString).appendingPathComponent("summary.json"))
            print(String(decoding: data, as: UTF8.self))
        }
    }
}
