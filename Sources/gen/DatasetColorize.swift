import ArgumentParser
import Foundation
import MillraceCore
import MillraceFormats
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen dataset colorize`: the training set of the in-context colorization model.
struct DatasetColorizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "colorize",
        abstract: "Make the in-context colorization training set: chroma targets with retrieval conditions (docs/METHODS.md §9.3).",
        discussion: """
        Each example is a colour image turned gray, the retrieval evidence about its chroma
        (the seven condition planes of `InContextColorizer`) and its true chroma. Three sources:
          - the train split of an emoji dataset (--emoji), retrieving from the shipped pool
            (--refs) with the image itself left out of the pool;
          - --scenes N composed scenes of train emoji (needs the emoji font, as
            `gen dataset scenes`): two in three retrieve from their own references (each emoji
            of the scene over white, plus --distractors other train emoji), one in three from
            the shipped pool;
          - --cartoons N procedural drawings (sun, house, tree, car, ... on a landscape or the
            sea), drawn as the pool's drawing scenes are but from another seed, retrieving from
            the shipped pool.
        Held-out emoji are never used. Written as safetensors ("chroma" and "condition",
        F16) for `gen train --data FILE`, which then trains a colorization model.
        Example:
          gen dataset colorize --emoji data/emoji32.mrds --scenes 9000 --cartoons 2000 --out data/colorize32.safetensors
        """)

    @Option(help: "Emoji dataset file (`gen dataset emoji`); its train split is used.")
    var emoji: String
    @Option(help: "Output file (.safetensors).")
    var out: String
    @Option(help: "Composed scenes to add (0: emoji only).")
    var scenes: Int = 12_000
    @Option(help: "Procedural cartoon drawings to add (square ones, as `gen references` draws its drawing-scene references but from another seed), retrieving from the shipped pool.")
    var cartoons: Int = 2_000
    @Option(help: "Other emoji added to a scene's own references.")
    var distractors: Int = 6
    @Option(help: "Folder of colour reference images (default: the shipped assets/references).")
    var refs: String?
    @Option(help: "Random seed of the scenes.")
    var seed: UInt64 = 0
    @OptionGroup var sources: EmojiSources

    func validate() throws {
        guard scenes >= 0 && scenes <= 200_000 else { throw ValidationError("--scenes must be between 0 and 200000") }
        guard cartoons >= 0 && cartoons <= 100_000 else { throw ValidationError("--cartoons must be between 0 and 100000") }
        guard distractors >= 0 && distractors <= 64 else { throw ValidationError("--distractors must be between 0 and 64") }
    }

    /// Safetensors metadata tag of the file.
    static let format = "millrace-colorize-data-1"
    /// The norm scale s the model trains with: its samples are s·(a, b)/100 (the file holds
    /// (a, b)/100), so that they have about unit size as the noise has.
    static let chromaScale: Float = 2

    func run() throws {
        try runReportingErrors {
            let ds = try ImageDataset.read(path: emoji)
            let size = ds.size
            let pool = ReferencePool(folder: refs ?? ReferencePool.defaultFolder())
            try pool.index()
            // Pool images identical to a dataset image (the shipped pool holds train emoji).
            var poolIndex: [[UInt8]: [Int]] = [:]
            for i in pool.names.indices {
                let image = try pool.image(at: i)
                guard image.width == size, image.height == size else { continue }
                poolIndex[Self.bytes(image), default: []].append(i)
            }
            let train = ds.indices(split: 0)
            var chroma: [Float] = [], condition: [Float] = []
            let total = train.count + scenes + cartoons
            chroma.reserveCapacity(total * 2 * size * size)
            condition.reserveCapacity(total * InContextColorizer.conditionChannels * size * size)
            let colorizer = Colorizer(pool: pool)
            func add(_ colour: RGBImage, _ c: Colorizer, excluding: Set<Int>) throws {
                let e = try c.evidence(gray: colour, excluding: excluding)
                guard e.width == size, e.height == size else { throw CLIError("images of \(size)×\(size) are colorized at \(e.width)×\(e.height)") }
                condition += InContextColorizer.condition(e)
                chroma += InContextColorizer.target(colour, scale: 1)
            }
            let bar = ProgressBar("colorize data", total: total, unit: "images")
            var excluded = 0
            for (k, i) in train.enumerated() {
                let image = ds.image(at: i)
                let same = Set(poolIndex[Self.bytes(image)] ?? [])
                excluded += same.isEmpty ? 0 : 1
                try add(image, colorizer, excluding: same)
                if k % 64 == 0 { bar.update(k) }
            }
            var ownRefs = 0
            if scenes > 0 {
                bar.update(train.count)
                let sprites = try EmojiDatasetBuilder.buildSprites(size: size, fontPath: sources.font, emojiTestPath: sources.emojiTest)
                let composer = SceneComposer(sprites: sprites, size: size)
                for k in 0..<scenes {
                    var rng = SplitMix64(seed: seed, stream: k)
                    let scene = composer.compose(split: 0, rng: &rng)
                    if k % 3 != 2 {
                        let own = ReferencePool(images: composer.references(of: scene, split: 0, distractors: distractors, rng: &rng))
                        try add(scene.image, Colorizer(pool: own), excluding: [])
                        ownRefs += 1
                    } else {
                        try add(scene.image, colorizer, excluding: [])
                    }
                    if k % 64 == 0 { bar.update(train.count + k) }
                }
            }
            if cartoons > 0 {
                // The even ones are square; seed 1 is not the pool's (7).
                let drawings = Cartoons.scenes(count: 2 * cartoons, side: size, seed: 1).enumerated().filter { $0.offset % 2 == 0 }.map(\.element.1)
                for (k, drawing) in drawings.enumerated() {
                    try add(drawing, colorizer, excluding: Set(poolIndex[Self.bytes(drawing)] ?? []))
                    if k % 64 == 0 { bar.update(train.count + scenes + k) }
                }
            }
            bar.update(total)
            bar.finish()
            let cc = InContextColorizer.conditionChannels
            let file = SafetensorsFile(
                tensors: ["chroma": Tensor(shape: [total, 2, size, size], data: chroma),
                          "condition": Tensor(shape: [total, cc, size, size], data: condition)],
                metadata: ["format": Self.format, "task": InContextColorizer.task, "size": String(size),
                           "norm_scale": String(Self.chromaScale), "emoji": String(train.count), "scenes": String(scenes),
                           "scenes_own_references": String(ownRefs), "cartoons": String(cartoons), "pool": pool.folder])
            let dir = (out as NSString).deletingLastPathComponent
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            try file.write(path: out, dtype: .f16)
            print("wrote \(out): \(total) examples of \(size)×\(size) (\(train.count) train emoji, \(excluded) of them left out of their own retrieval; \(scenes) scenes, \(ownRefs) with their own references; \(cartoons) cartoon drawings)")
        }
    }

    static func bytes(_ image: RGBImage) -> [UInt8] {
        image.planes.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
    }

    /// Reads a file written by this command as training data, the samples being the corrections
    /// (a, b)/100 − (a, b)_retrieval/100, and the norm scale the trainer's flow.json must carry.
    static func read(path: String) throws -> (data: FlowTrainingData, normScale: Double, emoji: Int) {
        try read(SafetensorsFile.read(path: path), path: path)
    }

    static func read(_ file: SafetensorsFile, path: String) throws -> (data: FlowTrainingData, normScale: Double, emoji: Int) {
        guard file.metadata["format"] == format else {
            throw CLIError("\(path) is not a colorization training set (made by `gen dataset colorize`)")
        }
        guard let chroma = file.tensors["chroma"], let condition = file.tensors["condition"],
              chroma.shape.count == 4, condition.shape.count == 4, chroma.shape[0] == condition.shape[0], chroma.shape[0] >= 1,
              chroma.shape[1] == 2, InContextColorizer.supportedConditionChannels.contains(condition.shape[1]),
              chroma.shape[2] == chroma.shape[3], condition.shape[2...] == chroma.shape[2...],
              let scale = Double(file.metadata["norm_scale"] ?? ""), scale > 0 else {
            throw CLIError("\(path): expected tensors chroma [N, 2, S, S] and condition [N, \(InContextColorizer.conditionChannels), S, S] (or \(InContextColorizer.supportedConditionChannels[0]) planes, an older set) and a norm_scale")
        }
        // The model's sample is the correction to the retrieval's chroma.
        let size = chroma.shape[2]
        let samples = InContextColorizer.residual(chroma: chroma.data, condition: condition.data, plane: size * size)
        var data = FlowTrainingData(samples: samples, channels: 2, condition: condition.data,
                                    conditionChannels: condition.shape[1], size: chroma.shape[2],
                                    task: InContextColorizer.task)
        // Chroma lives in the sample (a, b) and in condition planes 1–2 (retrieval's a, b) and
        // 4–5 (the canvas's a, b); the prior's share (plane 3) and L (plane 0) are not turned.
        data.rotatedSamplePairs = [[0, 1]]
        data.rotatedConditionPairs = [[1, 2], [4, 5]]
        // The emoji examples come first (`run` writes them so).
        let emoji = min(Int(file.metadata["emoji"] ?? "") ?? 0, data.count)
        return (data, scale, emoji)
    }
}
