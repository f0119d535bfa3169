import ArgumentParser
import Foundation
import MillraceCore
import MillraceTraining

/// `gen dataset emoji`: build the emoji training set.
struct DatasetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dataset", abstract: "Build training datasets, and sample images from them.", subcommands: [EmojiCommand.self, DatasetSamplesCommand.self])

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
}
