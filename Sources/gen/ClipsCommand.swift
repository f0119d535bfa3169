import ArgumentParser
import Foundation
import MillraceCore
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen clips`: make the sample clips for streams from the dataset.
struct ClipsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clips",
        abstract: "Make the sample stream clips: emoji (still, a pan) and scenes (moving, noisy, a sketch).",
        discussion: """
        Writes <out>/still and <out>/moving (64×64 PNGs of training-split emoji from --data), and
        with --scenes the scene clips (docs/STREAMS.md), 128×128 unless said: scene (a fox, a
        frog and an apple moving over a light background), scene-heldout (three held-out emoji
        over a landscape), scene-noise (a still scene under camera noise, σ = 0.03) and sketch
        (256×256: a face drawn stroke by stroke with the page's orange pen). Emoji for the scenes
        are rendered from the font (the Debian packages of `gen dataset emoji`).
        Examples:
          gen clips --data data/emoji32.mrds --out assets/clips
          gen clips --data data/emoji32.mrds --out assets/clips --scenes
        """)

    @Option(help: "Dataset file from `gen dataset emoji`.")
    var data: String
    @Option(help: "Output folder.")
    var out: String = "assets/clips"
    @Option(help: "Frames per clip.")
    var frames: Int = 120
    @Flag(help: "Also write the scene clips (scene, scene-heldout, scene-noise, sketch).")
    var scenes = false
    @Option(help: "Frames per scene clip.")
    var sceneFrames: Int = 48

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
            var clips = [("still", still), ("moving", moving)]
            if scenes { clips += try sceneClips() }
            for (name, clip) in clips {
                let dir = (out as NSString).appendingPathComponent(name)
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                for (i, frame) in clip.enumerated() {
                    try frame.writePNG(path: (dir as NSString).appendingPathComponent(String(format: "frame-%03d.png", i)))
                }
                print("wrote \(clip.count) frames to \(dir)")
            }
        }
    }

    /// The scene clips, deterministic: fixed emoji by name, fixed paths, fixed noise seed.
    func sceneClips() throws -> [(String, [RGBImage])] {
        let side = 128
        let sprites = try EmojiDatasetBuilder.buildSprites(size: side)
        let composer = SceneComposer(sprites: sprites, size: side)
        func find(_ name: String, split: UInt8) throws -> Int {
            guard let i = sprites.items.indices.first(where: { sprites.items[$0].name == name && sprites.split[$0] == split }) else {
                throw CLIError("no emoji named '\(name)' in split \(split) of the font's emoji")
            }
            return i
        }
        func light(_ a: (Float, Float, Float), _ b: (Float, Float, Float)) -> RGBImage {
            var image = RGBImage(width: side, height: side, fill: (1, 1, 1))
            let n = side * side
            for y in 0..<side {
                let t = Float(y) / Float(side - 1)
                for x in 0..<side {
                    image.planes[y * side + x] = a.0 + (b.0 - a.0) * t
                    image.planes[n + y * side + x] = a.1 + (b.1 - a.1) * t
                    image.planes[2 * n + y * side + x] = a.2 + (b.2 - a.2) * t
                }
            }
            return image
        }
        let background = light((0.96, 0.97, 1.0), (0.9, 0.95, 0.88))
        let scene = composer.movingClip(background: background, movers: [
            .init(sprite: try find("fox", split: 0), x: 30, y: 40, dx: 2.5, dy: 1.0, side: 44),
            .init(sprite: try find("frog", split: 0), x: 95, y: 90, dx: -1.5, dy: -2.0, side: 40),
            .init(sprite: try find("red apple", split: 0), x: 70, y: 30, dx: 1.0, dy: 2.5, side: 34),
        ], frames: sceneFrames)
        // Held-out emoji (never seen in training) over a landscape.
        let heldOut = sprites.indices(split: 1)
        var rng = SplitMix64(seed: 11)
        let landscape = SceneComposer.background(.landscape, size: side, rng: &rng)
        let others = composer.movingClip(background: landscape, movers: [
            .init(sprite: heldOut[37 % heldOut.count], x: 35, y: 50, dx: 2.0, dy: 1.5, side: 46),
            .init(sprite: heldOut[151 % heldOut.count], x: 90, y: 80, dx: -2.5, dy: 0.5, side: 40),
            .init(sprite: heldOut[263 % heldOut.count], x: 60, y: 100, dx: 1.5, dy: -2.0, side: 36),
        ], frames: sceneFrames)
        let noisy = SceneComposer.noisyStill(scene[0], frames: sceneFrames, sigma: 0.03, seed: 5)
        // A face: the outline, two eyes, a smile, as strokes in [0, 1].
        let face: [[(Float, Float)]] = [
            SceneComposer.arc(0.5, 0.5, 0.36, 0.36, from: -Float.pi / 2, to: 1.5 * Float.pi, count: 40),
            [(0.38, 0.38), (0.38, 0.46)],
            [(0.62, 0.38), (0.62, 0.46)],
            SceneComposer.arc(0.5, 0.55, 0.2, 0.15, from: 0.15 * Float.pi, to: 0.85 * Float.pi, count: 14),
        ]
        let sketch = SceneComposer.sketchClip(strokes: face, frames: sceneFrames)
        return [("scene", scene), ("scene-heldout", others), ("scene-noise", noisy), ("sketch", sketch)]
    }
}
