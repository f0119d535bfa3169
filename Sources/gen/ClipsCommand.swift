import ArgumentParser
import Foundation
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen clips`: make the sample clips for streams from the dataset.
struct ClipsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clips",
        abstract: "Make the sample stream clips (a still one and a slow pan) from the emoji dataset.",
        discussion: """
        Writes <out>/still/frame-000.png … and <out>/moving/frame-000.png …, 64×64 PNGs, from
        training-split emoji only.
        Example:
          gen clips --data data/emoji32.mrds --out assets/clips
        """)

    @Option(help: "Dataset file from `gen dataset emoji`.")
    var data: String
    @Option(help: "Output folder.")
    var out: String = "assets/clips"
    @Option(help: "Frames per clip.")
    var frames: Int = 120

    func run() throws {
        try runReportingErrors {
            let ds = try ImageDataset.read(path: data)
            let train = ds.indices(split: 0)
            // Fixed picks, by name, so the clips do not change when the dataset grows.
            func find(_ name: String) -> RGBImage {
                let i = train.first { ds.items[$0].name == name } ?? train[0]
                return ds.image(at: i)
            }
            let still = SampleClips.still(find("grinning face"), frames: frames)
            let moving = SampleClips.pan(["red apple", "rocket", "sun", "dog face", "soccer ball", "glowing star"].map(find), frames: frames)
            for (name, clip) in [("still", still), ("moving", moving)] {
                let dir = (out as NSString).appendingPathComponent(name)
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                for (i, frame) in clip.enumerated() {
                    try frame.writePNG(path: (dir as NSString).appendingPathComponent(String(format: "frame-%03d.png", i)))
                }
                print("wrote \(clip.count) frames to \(dir)")
            }
        }
    }
}
