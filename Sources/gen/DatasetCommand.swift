import ArgumentParser
import Foundation
import MillraceCore
import MillraceTraining

/// `gen dataset emoji` and `gen dataset scenes`: build the training sets.
struct DatasetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dataset", abstract: "Build training datasets, and sample images from them.", subcommands: [EmojiCommand.self, ScenesCommand.self, DatasetColorizeCommand.self, DatasetRestyleCommand.self, DatasetSamplesCommand.self])

    struct EmojiCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "emoji",
            abstract: "Render Noto Color Emoji into a labelled dataset file (docs/DATASET.md).",
            discussion: """
            Needs Debian's fonts-noto-color-emoji and unicode-data. Classes are the groups of
            emoji-test.txt (Component left out); 10% of each group is held out.
            Example:
              gen dataset emoji --out data/emoji32.mrds --size 32
            """)
        @Option(help: "Output dataset file.")
        var out: String
        @Option(help: "Image side in pixels.")
        var size: Int = 32
        @OptionGroup var sources: EmojiSources

        func validate() throws {
            guard size >= 8 && size <= 512 else { throw ValidationError("--size must be between 8 and 512") }
        }

        func run() throws {
            try runReportingErrors {
                let render = LazyProgress("render", unit: "glyphs")
                let ds = try EmojiDatasetBuilder.build(size: size, fontPath: sources.font, emojiTestPath: sources.emojiTest, progress: render.update)
                render.finish()
                try DatasetCommand.write(ds, to: out, what: "emoji")
            }
        }
    }

    struct ScenesCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "scenes",
            abstract: "Compose scenes of emoji into a labelled dataset file (docs/DATASET.md, \"Scenes\").",
            discussion: """
            Several emoji of mixed groups at random sizes and positions, cut at the borders and
            overlapping, over plain, gradient, landscape and sketch backgrounds; one scene in five
            is a single emoji. A scene's class is the group of its largest emoji; with
            --one-group every emoji of a scene is of that group (how a restyled picture looks;
            docs/STREAMS.md judges stream outputs with a classifier trained on such scenes).
            The last --held-out scenes use only the emoji that `gen dataset emoji` holds out.
            Needs the same Debian packages as `gen dataset emoji`.
            Examples:
              gen dataset scenes --out data/scenes64.mrds
              gen dataset scenes --out data/scenes64-small.mrds --count 2000 --held-out 200 --seed 1
              gen dataset scenes --out data/groups64.mrds --one-group
            """)
        @Option(help: "Output dataset file.")
        var out: String
        @Option(help: "Scene side in pixels.")
        var size: Int = 64
        @Option(help: "Number of scenes.")
        var count: Int = 30_000
        @Option(help: "How many of them (the last) are made of held-out emoji.")
        var heldOut: Int = 1_000
        @Option(help: "Random seed of the layouts.")
        var seed: UInt64 = 0
        @Flag(help: "Draw every emoji of a scene from its class's group (default: about half of the smaller ones from any group).")
        var oneGroup = false
        @OptionGroup var sources: EmojiSources

        func validate() throws {
            guard size >= 16 && size <= 256 else { throw ValidationError("--size must be between 16 and 256") }
            guard count >= 1 && count <= 1_000_000 else { throw ValidationError("--count must be between 1 and 1000000") }
            guard heldOut >= 0 && heldOut <= count else { throw ValidationError("--held-out must be between 0 and --count") }
        }

        func run() throws {
            try runReportingErrors {
                let render = LazyProgress("render", unit: "glyphs")
                let sprites = try EmojiDatasetBuilder.buildSprites(size: size, fontPath: sources.font, emojiTestPath: sources.emojiTest, progress: render.update)
                render.finish()
                let compose = LazyProgress("compose", unit: "scenes")
                let ds = SceneComposer(sprites: sprites, size: size).dataset(count: count, heldOut: heldOut, seed: seed,
                                                                               sameGroup: oneGroup ? 1 : 0.5, progress: compose.update)
                compose.finish()
                try DatasetCommand.write(ds, to: out, what: "scenes of \(size)×\(size)")
            }
        }
    }

    /// Writes `ds` (making its folder) and prints its split and the images per class.
    static func write(_ ds: ImageDataset, to out: String, what: String) throws {
        let dir = (out as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        try ds.write(path: out)
        print("wrote \(out): \(ds.count) \(what), \(ds.indices(split: 0).count) train / \(ds.indices(split: 1).count) held out")
        for (i, (name, n)) in zip(ds.classNames, ds.countsPerClass).enumerated() {
            print("  \(i) \(name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(String(repeating: " ", count: max(0, 6 - String(n).count)))\(n)")
        }
    }
}

/// Where the emoji come from: the font and emoji-test.txt (Debian's fonts-noto-color-emoji and
/// unicode-data).
struct EmojiSources: ParsableArguments {
    @Option(help: "Font file.")
    var font: String = EmojiDatasetBuilder.defaultFontPath
    @Option(help: "emoji-test.txt.")
    var emojiTest: String = EmojiDatasetBuilder.defaultEmojiTestPath
}

/// A progress bar made at the first report, when the total is known (for builders that report
/// `(done, total)`).
final class LazyProgress {
    private let label: String, unit: String
    private var bar: ProgressBar?
    init(_ label: String, unit: String) { self.label = label; self.unit = unit }
    func update(_ done: Int, _ total: Int) {
        if bar == nil { bar = ProgressBar(label, total: total, unit: unit) }
        bar?.update(done)
    }
    func finish() { bar?.finish() }
}
