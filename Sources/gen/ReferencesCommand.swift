import ArgumentParser
import Foundation
import MillraceFormats
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen references`: make the shipped colorization reference pool and the cartoon sample clip.
struct ReferencesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "references",
        abstract: "Make the reference pool for `gen colorize` (train-split emoji and cartoon drawings) and a cartoon clip.",
        discussion: """
        Writes into --out:
          emoji-<group>-<index>-<name>.png  emoji of the dataset's TRAIN split only
              (split 0, nothing held out) at the dataset's size: per group
              --per-group plus its share of --proportional (by train size, the
              proportions of the held-out split), evenly spaced in dataset order
          drawing-<name>.png  procedural cartoon drawings (flat colours, dark
              outlines): sun, house, tree, car, fish, flower, boat, landscape,
              seaside, and 24 small scenes with seeded random layouts
        and, unless --clip is '', <clip>/frame-000.png ...: a moving cartoon (a
        car drives past a house and a tree under a drifting cloud) for
        colorizing frames; its frames are not in the pool.
        With --validation-out DIR, also DIR/val-<index>-<name>.png: train-split
        emoji not in the pool, to tune colorization on without the held-out split.
        Deterministic: rerunning gives the same bytes. Files with these prefixes
        left from an earlier run that this run does not write are removed. The
        retrieval index that `gen colorize` caches in <out>/.millrace-index.json
        is not written here (it is gitignored).
        Example (the shipped pool and clip):
          gen references --data data/emoji32.mrds --out assets/references \\
            --clip assets/clips/cartoon
        """)

    @Option(help: "Dataset file from `gen dataset emoji`.")
    var data: String
    @Option(help: "Output folder of the pool.")
    var out: String = ReferencePool.shippedFolder
    @Option(help: "Emoji every group gets at least (fewer if its train split is smaller).")
    var perGroup: Int = 32
    @Option(help: "Further emoji shared out in proportion to the groups' train sizes (the held-out split has the same proportions).")
    var proportional: Int = 320
    @Option(help: "Side of the drawings in pixels.")
    var drawingSize: Int = 64
    @Option(help: "Folder of the cartoon clip ('' to skip).")
    var clip: String = "assets/clips/cartoon"
    @Option(help: "Frames of the cartoon clip.")
    var clipFrames: Int = 48
    @Option(help: "Clip frame size, WxH.")
    var clipSize: String = "96x64"
    @Option(help: "Also write a validation set here: train-split emoji NOT in the pool, evenly spaced (for tuning colorization without touching the held-out split; e.g. data/colorize-val, gitignored).")
    var validationOut: String?
    @Option(help: "Images in the validation set.")
    var validationCount: Int = 360

    func validate() throws {
        guard perGroup >= 0 && proportional >= 0 else { throw ValidationError("--per-group and --proportional must be at least 0") }
        guard drawingSize >= 16 && drawingSize <= 512 else { throw ValidationError("--drawing-size must be in 16...512") }
        guard clipFrames >= 2 && clipFrames <= 1000 else { throw ValidationError("--clip-frames must be in 2...1000") }
        guard parsedClipSize != nil else { throw ValidationError("--clip-size must look like 96x64 (16...512 each)") }
    }

    var parsedClipSize: (Int, Int)? {
        let parts = clipSize.lowercased().split(separator: "x").compactMap { Int($0) }
        guard parts.count == 2, (16...512).contains(parts[0]), (16...512).contains(parts[1]) else { return nil }
        return (parts[0], parts[1])
    }

    /// A file-name-safe form of an emoji name: lower case, runs of other characters become '-'.
    static func slug(_ name: String) -> String {
        var s = ""
        for ch in name.lowercased().unicodeScalars {
            if (ch >= "a" && ch <= "z") || (ch >= "0" && ch <= "9") { s.unicodeScalars.append(ch) }
            else if !s.hasSuffix("-") { s += "-" }
        }
        while s.hasSuffix("-") { s.removeLast() }
        return String(s.prefix(40))
    }

    func run() throws {
        try runReportingErrors {
            let ds = try ImageDataset.read(path: data)
            let fm = FileManager.default
            try fm.createDirectory(atPath: out, withIntermediateDirectories: true)
            var written = Set<String>()
            var bytes = 0
            func write(_ image: RGBImage, _ name: String, in dir: String) throws {
                let data = try image.pngData()
                try AtomicFile.write(Data(data), to: (dir as NSString).appendingPathComponent(name))
                bytes += data.count
            }
            // Emoji: train split only.
            let train = ds.indices(split: 0)
            let members = (0..<ds.classNames.count).map { label in train.filter { Int(ds.labels[$0]) == label } }
            var perClass: [String] = []
            var inPool = Set<Int>()
            for (label, className) in ds.classNames.enumerated() {
                let group = members[label]
                let share = train.isEmpty ? 0 : Int((Double(proportional) * Double(group.count) / Double(train.count)).rounded())
                let k = min(perGroup + share, group.count)
                for j in 0..<k {
                    let i = group[j * group.count / k]
                    precondition(ds.split[i] == 0)
                    inPool.insert(i)
                    let name = "emoji-\(label)-\(String(format: "%04d", i))-\(Self.slug(ds.items[i].name)).png"
                    try write(ds.image(at: i), name, in: out)
                    written.insert(name)
                }
                perClass.append("\(className) \(k)")
            }
            let drawings = Cartoons.referenceDrawings(side: drawingSize)
            for (name, image) in drawings {
                try write(image, "drawing-\(name).png", in: out)
                written.insert("drawing-\(name).png")
            }
            var removed = 0
            for name in try fm.contentsOfDirectory(atPath: out)
            where (name.hasPrefix("emoji-") || name.hasPrefix("drawing-")) && name.hasSuffix(".png") && !written.contains(name) {
                try fm.removeItem(atPath: (out as NSString).appendingPathComponent(name)); removed += 1
            }
            print("wrote \(written.count) images (\(bytes / 1024) KiB) to \(out): \(perClass.joined(separator: ", ")), \(drawings.count) drawings\(removed > 0 ? "; removed \(removed) stale" : "")")
            if let validationOut {
                let rest = train.filter { !inPool.contains($0) }
                let k = min(validationCount, rest.count)
                try fm.createDirectory(atPath: validationOut, withIntermediateDirectories: true)
                for j in 0..<k {
                    let i = rest[j * rest.count / k]
                    try write(ds.image(at: i), "val-\(String(format: "%04d", i))-\(Self.slug(ds.items[i].name)).png", in: validationOut)
                }
                print("wrote \(k) validation images (train split, not in the pool) to \(validationOut)")
            }
            guard !clip.isEmpty, let (w, h) = parsedClipSize else { return }
            try fm.createDirectory(atPath: clip, withIntermediateDirectories: true)
            bytes = 0
            var frameNames = Set<String>()
            for (i, frame) in Cartoons.clip(frames: clipFrames, width: w, height: h).enumerated() {
                let name = String(format: "frame-%03d.png", i)
                try write(frame, name, in: clip)
                frameNames.insert(name)
            }
            for name in try fm.contentsOfDirectory(atPath: clip)
            where name.hasPrefix("frame-") && name.hasSuffix(".png") && !frameNames.contains(name) {
                try fm.removeItem(atPath: (clip as NSString).appendingPathComponent(name))
            }
            print("wrote \(clipFrames) frames \(w)x\(h) (\(bytes / 1024) KiB) to \(clip)")
        }
    }
}
