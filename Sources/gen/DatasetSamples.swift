import ArgumentParser
import Foundation
import MillraceFormats
import MillraceTraining
import MillracePipelines

/// `gen dataset samples`: gray inputs for the page's Colorize panel, from the held-out split.
struct DatasetSamplesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "samples",
        abstract: "Write gray versions of held-out emoji (one per group) as PNGs plus index.json.",
        discussion: """
        For each group in --groups, takes that group's first image of the held-out split (never \
        used for training or in the reference pool), turns it gray with Y = 0.299 R + 0.587 G + \
        0.114 B (as `gen eval colorize` does) and writes it as a PNG named after the emoji, with \
        index.json listing file, name, group and dataset index. The page's Colorize panel offers \
        these files.
        Example:
          gen dataset samples --data data/emoji32.mrds --out web-static/samples
        """)

    @Option(help: "Dataset file.")
    var data: String = "data/emoji32.mrds"
    @Option(help: "Output folder.")
    var out: String = "web-static/samples"
    @Option(help: "Groups, comma-separated.")
    var groups: String = "Smileys & Emotion,Animals & Nature,Food & Drink,Travel & Places"

    func run() throws {
        try runReportingErrors {
            let ds = try ImageDataset.read(path: data)
            let held = ds.indices(split: 1)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            var index: [[String: Any]] = []
            for group in groups.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                guard let cls = ds.classNames.firstIndex(of: group) else {
                    throw DatasetError.invalidArgument("no group '\(group)' in \(data); groups: \(ds.classNames.joined(separator: ", "))")
                }
                guard let i = held.first(where: { Int(ds.labels[$0]) == cls }) else {
                    throw DatasetError.invalidArgument("group '\(group)' has no held-out image in \(data)")
                }
                let name = ds.items.indices.contains(i) ? ds.items[i].name : "image \(i)"
                let slug = name.lowercased().map { $0.isLetter || $0.isNumber ? String($0) : "-" }.joined()
                    .split(separator: "-").joined(separator: "-")
                let file = (slug.isEmpty ? "image-\(i)" : slug) + ".png"
                try Colorizer.grayscale(ds.image(at: i)).writePNG(path: (out as NSString).appendingPathComponent(file))
                index.append(["file": file, "name": name, "class": group, "dataset_index": i])
                print("\(file): '\(name)' (\(group), held-out image \(i))")
            }
            let json = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.write(json + Data("\n".utf8), to: (out as NSString).appendingPathComponent("index.json"))
        }
    }
}
