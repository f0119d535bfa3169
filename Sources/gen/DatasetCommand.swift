import ArgumentParser
import Foundation
import MillraceCore
import MillraceTraining

/// `gen dataset emoji` and `gen dataset scenes`: build the training sets.
struct DatasetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dataset", abstract: "Build training datasets, and sample images from them.", subcommands: [EmojiCommand.self, ScenesCommand.self, DatasetSamplesCommand.self])

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
        @Option(help: "Font file.")
        var font: String = EmojiDatasetBuilder.defaultFontPath
        @Option(help: "emoji-test.txt.")
        var emojiTest: String = EmojiDatasetBuilder.defaultEmojiTestPath

        func validate() throws {
            guard size >= 8 && size <= 512 else { throw ValidationError("--size must be between 8 and 512") }
        }

        func run() throws {
            try runReportingErrors {
                var bar: ProgressBar?
                let ds = try EmojiDatasetBuilder.build(size: size, fontPath: font, emojiTestPath: emojiTest) { done, total in
                    if bar == nil { bar = ProgressBar("render", total: total, unit: "glyphs") }
                    bar?.update(done)
                }
                bar?.finish()
                let dir = (out as NSString).deletingLastPathComponent
                if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
                try ds.write(path: out)
                print("wrote \(out): \(ds.count) emoji, \(ds.indices(split: 0).count) train / \(ds.indices(split: 1).count) held out")
                for (i, name) in ds.classNames.enumerated() {
                    let n = ds.labels.filter { Int($0) == i }.count
                    print(String(format: "  %d %-20@ %5d", i, name as NSString, n))
                }
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
            is a single emoji. A scene's class is the group of its largest emoji. The last
            --held-out scenes use only the emoji that `gen dataset emoji` holds out.
            Needs the same Debian packages as `gen dataset emoji`.
            Examples:
              gen dataset scenes --out data/scenes64.mrds
              gen dataset scenes --out data/scenes64-small.mrds --count 2000 --held-out 200 --seed 1
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
        @Option(help: "Font file.")
        var font: String = EmojiDatasetBuilder.defaultFontPath
        @Option(help: "emoji-test.txt.")
        var emojiTest: String = EmojiDatasetBuilder.defaultEmojiTestPath

        func validate() throws {
            guard size >= 16 && size <= 256 else { throw ValidationError("--size must be between 16 and 256") }
            guard count >= 1 && count <= 1_000_000 else { throw ValidationError("--count must be between 1 and 1000000") }
            guard heldOut >= 0 && heldOut <= count else { throw ValidationError("--held-out must be between 0 and --count") }
        }

        func run() throws {
            try runReportingErrors {
                var bar: ProgressBar?
                let sprites = try EmojiDatasetBuilder.buildSprites(size: size, fontPath: font, emojiTestPath: emojiTest) { done, total in
                    if bar == nil { bar = ProgressBar("render", total: total, unit: "glyphs") }
                    bar?.update(done)
                }
                bar?.finish()
                let composer = SceneComposer(sprites: sprites, size: size)
                var sceneBar: ProgressBar?
                let ds = composer.dataset(count: count, heldOut: heldOut, seed: seed) { done, total in
                    if sceneBar == nil { sceneBar = ProgressBar("compose", total: total, unit: "scenes") }
                    sceneBar?.update(done)
                }
                sceneBar?.finish()
                let dir = (out as NSString).deletingLastPathComponent
                if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
                try ds.write(path: out)
                print("wrote \(out): \(ds.count) scenes of \(size)×\(size), \(ds.indices(split: 0).count) train / \(ds.indices(split: 1).count) held out")
                for (i, name) in ds.classNames.enumerated() {
                    print(String(format: "  %d %-20@ %6d", i, name as NSString, ds.labels.filter { Int($0) == i }.count))
                }
            }
        }
    }
}
