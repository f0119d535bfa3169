import ArgumentParser
import Foundation
import MillraceCore
import MillraceFormats
import MillraceImaging
import MillraceTraining

/// `gen dataset restyle`: the training set of the image-to-image (restyle) model.
struct DatasetRestyleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restyle",
        abstract: "Make the restyle training set: scenes of emoji, each redrawn with emoji of one group (docs/DATASET.md, \"Restyle pairs\").",
        discussion: """
        Each example is a layout of emoji drawn twice over the same background: the input with
        emoji of any groups (in some examples drawn as pen outlines), the output with every
        emoji swapped for the closest-looking emoji of the example's group (of all of them, or of
        --candidates drawn at random), at the same place and size. Only the train emoji are used. Written as safetensors ("input",
        "output", "labels", and "coverage": how much the input's emoji cover each pixel; F16) for `gen train --data FILE`, which then trains a model whose
        condition is the input picture and whose class is the group to redraw it in.
        With --palette-classifier it also prints how often that classifier gives the output
        pictures their pair's group. Needs the same Debian packages as `gen dataset emoji`.
        Example:
          gen dataset restyle --out data/restyle64.safetensors --count 20000
          gen dataset restyle --out data/restyle64-p6.safetensors --palette 6   # 6 emoji per group
          gen dataset restyle --out data/restyle64-t3.safetensors --palette 3 \\
              --palette-classifier assets/models/scene-classifier              # 3 of the 11 most typical, spread
          gen dataset restyle --out data/restyle64-mix3.safetensors --palette 3 --palette-pool 3 \\
              --palette-classifier assets/models/scene-classifier --palette-blur 1.5 \\
              --palette-blur-groups "Smileys & Emotion,Objects,Symbols,Flags"  # blurred scores for 4 groups
          gen dataset restyle --out data/restyle64-one3.safetensors --palette 3 --palette-pool 3 \\
              --palette-classifier assets/models/scene-classifier --palette-blur 1.5 \\
              --palette-blur-groups "Smileys & Emotion,Objects,Symbols,Flags" \\
              --palette-one "Objects=open file folder,Symbols=keycap: 7,Flags"  # one emoji for 3 groups
        """)

    @Option(help: "Output file (.safetensors).")
    var out: String
    @Option(help: "Picture side in pixels.")
    var size: Int = 64
    @Option(help: "Number of pairs.")
    var count: Int = 20_000
    @Option(help: "Share of pairs whose input emoji are pen outlines.")
    var outlineShare: Double = 0.15
    @Option(help: "Draw each swapped emoji at the largest size, down to half, at which at least this share of it lies within the emoji it replaces (0: at the same size).")
    var fitInside: Float = 0
    @Option(help: "Emoji of the group each swapped emoji is chosen from, the closest-looking (0: all of the group, so the output is a function of the input).")
    var candidates: Int = 0
    @Option(help: "Draw outputs from a fixed palette of this many emoji per group, spread over the group's shapes (0: the whole group).")
    var palette: Int = 0
    @Option(help: "With --palette: a classifier folder (e.g. assets/models/scene-classifier) that chooses each group's palette among the emoji it finds most typical of the group.")
    var paletteClassifier: String?
    @Option(help: "With --palette-classifier: how many of each group's most typical emoji the palette spreads over (default: max(3K, K + 8); K: the K most typical).")
    var palettePool: Int?
    @Option(help: "With --palette-classifier: score each emoji blurred by a Gaussian of this σ in pixels, so that the palette holds emoji the classifier still knows when drawn softly (default: 0, sharp).")
    var paletteBlur: Float = 0
    @Option(help: "With --palette-blur: the groups (comma-separated names) whose emoji are scored blurred; the others are scored sharp (default: all groups).")
    var paletteBlurGroups: String?
    @Option(help: ArgumentHelp("With --palette: groups whose palette is one emoji, comma-separated: a group's name for its first (the most typical, with --palette-classifier), or GROUP=EMOJI for that emoji (its character or CLDR name), so that a one-step model need not average over choices.", valueName: "groups"))
    var paletteOne: String?
    @Option(help: "Random seed of the layouts.")
    var seed: UInt64 = 0
    @OptionGroup var sources: EmojiSources

    func validate() throws {
        guard size >= 16 && size <= 256 else { throw ValidationError("--size must be between 16 and 256") }
        guard count >= 1 && count <= 200_000 else { throw ValidationError("--count must be between 1 and 200000") }
        guard outlineShare >= 0 && outlineShare <= 1 else { throw ValidationError("--outline-share must be in [0, 1]") }
        guard fitInside >= 0 && fitInside <= 1 else { throw ValidationError("--fit-inside must be a share in [0, 1]") }
        guard candidates >= 0 else { throw ValidationError("--candidates must be 0 (all) or more") }
        guard palette >= 0 && palette <= 1000 else { throw ValidationError("--palette must be 0 (the whole group) to 1000") }
        guard paletteClassifier == nil || palette > 0 else { throw ValidationError("--palette-classifier chooses a palette: give --palette K too") }
        if let n = palettePool {
            guard paletteClassifier != nil else { throw ValidationError("--palette-pool needs --palette-classifier") }
            guard n >= palette else { throw ValidationError("--palette-pool must be at least --palette (\(palette)), got \(n)") }
        }
        if paletteBlur != 0 {
            guard paletteClassifier != nil else { throw ValidationError("--palette-blur needs --palette-classifier") }
            guard paletteBlur.isFinite && paletteBlur >= 0.5 && paletteBlur <= 8 else { throw ValidationError("--palette-blur must be 0 (off) or a σ in [0.5, 8] pixels") }
        }
        guard paletteBlurGroups == nil || paletteBlur > 0 else { throw ValidationError("--palette-blur-groups needs --palette-blur") }
        guard paletteOne == nil || palette > 0 else { throw ValidationError("--palette-one needs --palette K") }
        // Inputs and outputs are held as floats before they are written: bound that first.
        let bytes = Double(count) * Double(7 * size * size) * 4
        guard bytes <= 8e9 else {
            throw ValidationError("--count \(count) pairs of \(size)×\(size) need \(Int(bytes / 1e9)) GB of memory (at most 8): make fewer or smaller pairs")
        }
    }

    /// Safetensors metadata tag of the file.
    static let format = "millrace-restyle-data-1"
    /// flow.json `task` of a model trained on it.
    static let task = "restyle"

    func run() throws {
        try runReportingErrors {
            let render = LazyProgress("render", unit: "glyphs")
            let sprites = try EmojiDatasetBuilder.buildSprites(size: size, fontPath: sources.font, emojiTestPath: sources.emojiTest, progress: render.update)
            render.finish()
            var pairs = RestylePairs(composer: SceneComposer(sprites: sprites, size: size))
            pairs.outlineShare = outlineShare
            pairs.candidates = candidates
            pairs.fitInside = fitInside
            pairs.typicalPool = palettePool
            let judge = try paletteClassifier.map { try EmojiClassifier.load(path: $0) }
            if let judge, let path = paletteClassifier {
                let blurred = try paletteBlurGroups.map { try Self.groups(named: $0, in: sprites.classNames, option: "--palette-blur-groups") }
                pairs.typicality = try Self.typicality(of: pairs, classifier: judge, path: path, blur: paletteBlur, blurredGroups: blurred)
            }
            pairs.palette = palette
            if let list = paletteOne { pairs.singleGroups = try Self.singleGroups(list, sprites: sprites) }
            let compose = LazyProgress("compose", unit: "pairs")
            let made = pairs.make(count: count, seed: seed, progress: compose.update)
            compose.finish()
            let s = size
            var file = SafetensorsFile(tensors: [
                "input": SafetensorsTensor(shape: [count, 3, s, s], data: made.inputs),
                "output": SafetensorsTensor(shape: [count, 3, s, s], data: made.outputs),
                "labels": SafetensorsTensor(shape: [count], data: made.labels.map(Float.init)),
                "coverage": SafetensorsTensor(shape: [count, 1, s, s], data: made.coverage),
            ])
            let names = try JSONSerialization.data(withJSONObject: sprites.classNames)
            file.metadata = ["format": Self.format, "class_names": String(decoding: names, as: UTF8.self), "palette": String(palette)]
            if let path = paletteClassifier { file.metadata["palette_classifier"] = path }
            if let n = palettePool { file.metadata["palette_pool"] = String(n) }
            if paletteBlur > 0 { file.metadata["palette_blur"] = String(paletteBlur) }
            if let g = paletteBlurGroups { file.metadata["palette_blur_groups"] = g }
            if let g = paletteOne { file.metadata["palette_one"] = g }
            if fitInside > 0 { file.metadata["fit_inside"] = String(fitInside) }
            let dir = (out as NSString).deletingLastPathComponent
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            try file.write(path: out, dtype: .f16)
            var perClass = [Int](repeating: 0, count: sprites.classNames.count)
            for l in made.labels { perClass[l] += 1 }
            // How often the classifier gives an output picture its pair's group: what a model
            // drawing these targets exactly would score.
            let judged = judge.map {
                Self.agreement(outputs: made.outputs, labels: made.labels, size: s, classes: sprites.classNames.count, classifier: $0)
            }
            print("wrote \(out): \(count) pairs of \(s)×\(s)")
            for (g, (name, n)) in zip(sprites.classNames, perClass).enumerated() {
                let agreed = judged.map { $0[g].isNaN ? "   classifier agreement on the outputs –" : String(format: "   classifier agreement on the outputs %.2f", $0[g]) } ?? ""
                let drawn = palette > 0 ? "   palette: " + pairs.palettes[0][g].map { sprites.items[$0].name }.joined(separator: ", ") : ""
                print("  \(name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(n)\(agreed)\(drawn)")
            }
        }
    }

    /// Each sprite's probability of its own group under `classifier`, which must know the
    /// sprites' groups by the same names; with `blur` > 0 the sprite is scored through a
    /// Gaussian blur of that σ (pixels), as a soft drawing of it would look (only the sprites of
    /// `blurredGroups` where it is given; the others sharp).
    static func typicality(of pairs: RestylePairs, classifier: EmojiClassifier, path: String, blur: Float = 0,
                           blurredGroups: Set<Int>? = nil) throws -> [Float] {
        let names = pairs.composer.sprites.classNames
        guard classifier.config.classNames == names else {
            throw CLIError("\(path): its classes (\(classifier.config.classNames.joined(separator: ", "))) are not the emoji groups (\(names.joined(separator: ", ")))")
        }
        var scenes = pairs.spriteScenes()
        let labels = pairs.composer.sprites.labels, k = names.count
        if blur > 0 {
            for i in scenes.indices where blurredGroups?.contains(Int(labels[i])) ?? true { scenes[i] = scenes[i].blurred(sigma: blur) }
        }
        var out: [Float] = []
        for start in stride(from: 0, to: scenes.count, by: 64) {
            let logits = classifier.forward(classifier.inputBatch(Array(scenes[start..<min(scenes.count, start + 64)])), training: false)
            for r in 0..<logits.shape[0] {
                let row = Array(logits.data[(r * k)..<((r + 1) * k)]), top = row.max()!
                let e = row.map { exp($0 - top) }
                out.append(e[Int(labels[start + r])] / e.reduce(0, +))
            }
        }
        return out
    }

    /// The indices of the comma-separated group names in `list` (case-insensitive), or an error
    /// naming the first unknown one.
    static func groups(named list: String, in names: [String], option: String) throws -> Set<Int> {
        var out = Set<Int>()
        for part in list.split(separator: ",") {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard let g = names.firstIndex(where: { $0.caseInsensitiveCompare(name) == .orderedSame }) else {
                throw CLIError("no group named '\(name)' (the groups: \(names.joined(separator: ", ")))")
            }
            out.insert(g)
        }
        guard !out.isEmpty else { throw CLIError("\(option) names no group") }
        return out
    }

    /// The groups of a --palette-one list ("Objects,Symbols=keycap: 7"), each with its named
    /// sprite (nil: the palette's first), or an error naming an unknown group or emoji, an emoji
    /// of another group or a held-out one.
    static func singleGroups(_ list: String, sprites: EmojiSprites) throws -> [Int: Int?] {
        var out: [Int: Int?] = [:]
        for part in list.split(separator: ",") {
            let entry = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            let group = try groups(named: entry[0], in: sprites.classNames, option: "--palette-one").first!
            guard entry.count == 2 else { out[group] = .some(nil); continue }
            let found = try ClipsCommand.resolveScene(entry[1], items: sprites.items)
            guard found.count == 1, let sprite = found.first else {
                throw CLIError("--palette-one: give one emoji for \(sprites.classNames[group]), not '\(entry[1])'")
            }
            guard Int(sprites.labels[sprite]) == group else {
                throw CLIError("--palette-one: \(sprites.items[sprite].name) is in \(sprites.classNames[Int(sprites.labels[sprite])]), not \(sprites.classNames[group])")
            }
            // Outputs of the training set draw from it, and held-out emoji stay out of training.
            guard sprites.split[sprite] == 0 else {
                throw CLIError("--palette-one: \(sprites.items[sprite].name) is a held-out emoji; give one of the train split")
            }
            out[group] = .some(sprite)
        }
        guard !out.isEmpty else { throw CLIError("--palette-one names no group") }
        return out
    }

    /// Per group, the share of the first 2,000 outputs ([−1, 1], [N, 3, size, size]) of that
    /// group that `classifier` assigns to it (NaN where there are none).
    static func agreement(outputs: [Float], labels: [Int], size: Int, classes: Int, classifier: EmojiClassifier) -> [Double] {
        let n = min(labels.count, 2000), per = 3 * size * size
        var hits = [Int](repeating: 0, count: classes), seen = hits
        for start in stride(from: 0, to: n, by: 64) {
            let rows = start..<min(n, start + 64)
            let images = rows.map { k in RGBImage(width: size, height: size, planes: outputs[(k * per)..<((k + 1) * per)].map { ($0 + 1) / 2 }) }
            for (k, p) in zip(rows, classifier.predict(images)) {
                seen[labels[k]] += 1
                if p == labels[k] { hits[labels[k]] += 1 }
            }
        }
        return zip(hits, seen).map { $1 > 0 ? Double($0) / Double($1) : .nan }
    }

    /// Whether `path` is a restyle set (its metadata says so).
    static func isRestyleSet(_ file: SafetensorsFile) -> Bool { file.metadata["format"] == format }

    /// The training data of a restyle set: the condition is the input picture, and the sample
    /// is the change the output makes to it, output − input (0 wherever the picture stays), so
    /// that a model leaves the background exactly as it is unless it learns otherwise
    /// (`StreamPipeline` adds the input back).
    static func read(_ file: SafetensorsFile, path: String) throws -> FlowTrainingData {
        guard let input = file.tensors["input"], let output = file.tensors["output"], let labels = file.tensors["labels"],
              output.shape.count == 4, output.shape[1] == 3, output.shape[2] == output.shape[3], output.shape[0] >= 1,
              input.shape == output.shape, labels.shape == [output.shape[0]],
              let namesData = file.metadata["class_names"]?.data(using: .utf8),
              let names = try? JSONSerialization.jsonObject(with: namesData) as? [String], !names.isEmpty else {
            throw CLIError("\(path): expected tensors input and output [N, 3, S, S], labels [N] and class_names in the metadata")
        }
        // Checked as floats first: a NaN or huge label must not reach Int(_:).
        guard labels.data.allSatisfy({ $0.isFinite && $0 >= 0 && $0 < Float(names.count) && $0 == $0.rounded() }) else {
            throw CLIError("\(path): a label is not one of the \(names.count) classes")
        }
        let ls = labels.data.map { Int($0) }
        var change = output.data
        for j in change.indices { change[j] -= input.data[j] }
        var data = FlowTrainingData(images: change, labels: ls, size: output.shape[2], classNames: names)
        data.condition = input.data
        data.conditionChannels = 3
        data.task = task
        return data
    }
}
