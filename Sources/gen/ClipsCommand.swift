import ArgumentParser
import Foundation
import MillraceCore
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen clips`: make the sample clips for streams from the dataset, or a scene clip of your own.
struct ClipsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clips",
        abstract: "Make the sample stream clips: emoji (still, a pan) and scenes (moving, noisy, a sketch), or a scene clip of your own.",
        discussion: """
        Writes <out>/still and <out>/moving (64×64 PNGs of training-split emoji from --data), and \
        with --scenes the scene clips (docs/STREAMS.md), 128×128 unless said: scene (a fox, a \
        frog and an apple moving over a light background), scene-heldout (three held-out emoji \
        over a landscape), scene-noise (a still scene under camera noise, σ = 0.03) and sketch \
        (256×256: a face drawn stroke by stroke with the page's orange pen). Emoji for the scenes \
        are rendered from the font (the Debian packages of `gen dataset emoji`).

        With --scene, writes one clip of your own instead, for `gen stream --input`: 1 to 8 emoji, \
        given as emoji separated by spaces or as CLDR names separated by commas (as in \
        emoji-test.txt, any case), moving over --background and bouncing off the borders. --out \
        is the clip's folder (frame-000.png, ...); --data is not needed. Each emoji gets a side \
        of 0.2 to 0.35 of the frame, a start inside the frame and a speed of 1 to 2.5 px a frame \
        (at 128; in proportion at other sizes) in a random direction, all from --seed. Emoji may \
        come from either split: held-out emoji are those the models never saw in training.

        Examples:
          gen clips --data data/emoji32.mrds --out assets/clips
          gen clips --data data/emoji32.mrds --out assets/clips --scenes
          gen clips --scene "🐼 🚗 🍌" --out out/clips/panda --seed 3
          gen clips --scene "fox, frog, red apple" --out out/clips/mine \\
            --background "#f4f6fb,#dfe9d8"
          gen clips --scene "rocket, sun" --background landscape --out out/clips/sky
        """)

    @Option(help: "Dataset file from `gen dataset emoji` (not needed with --scene).")
    var data: String?
    @Option(help: "Output folder (default: assets/clips); with --scene, the clip's folder itself (default: out/clips/scene).")
    var out: String?
    @Option(help: "Frames per clip.")
    var frames: Int = 120
    @Flag(help: "Also write the scene clips (scene, scene-heldout, scene-noise, sketch).")
    var scenes = false
    @Option(help: "Frames per scene clip (--scenes and --scene).")
    var sceneFrames: Int = 48
    @Option(help: "Make one scene clip of these emoji: emoji separated by spaces (\"🐼 🚗 🍌\") or CLDR names separated by commas (\"fox, frog, red apple\"); 1 to 8.")
    var scene: String?
    @Option(help: "Background of the --scene clip: two colours \"#RRGGBB,#RRGGBB\" (a vertical gradient, top to bottom), one colour (plain), or 'landscape' (default: a light gradient picked by --seed).")
    var background: String?
    @Option(help: "Side of the --scene clip in pixels (64 to 512).")
    var sceneSize: Int = 128
    @Option(help: "Seed of the --scene clip's sizes, starts and directions (and of its default background).")
    var seed: UInt64 = 0

    /// Most frames per clip: a clip is held in memory before it is written.
    static let maxFrames = 2000

    func validate() throws {
        guard (1...Self.maxFrames).contains(frames) else { throw ValidationError("--frames must be between 1 and \(Self.maxFrames), got \(frames)") }
        guard (1...Self.maxFrames).contains(sceneFrames) else {
            throw ValidationError("--scene-frames must be between 1 and \(Self.maxFrames), got \(sceneFrames)")
        }
        guard let scene else {
            guard data != nil else { throw ValidationError("Missing expected argument '--data <data>' (or give --scene for a clip of your own)") }
            guard background == nil else { throw ValidationError("--background is for --scene clips") }
            return
        }
        guard scene.contains(where: { !$0.isWhitespace && $0 != "," }) else { throw ValidationError("--scene names no emoji; give 1 to 8") }
        guard data == nil && !scenes else {
            throw ValidationError("--scene makes one clip in --out; give it without --data and --scenes")
        }
        guard (64...512).contains(sceneSize) else { throw ValidationError("--scene-size must be between 64 and 512, got \(sceneSize)") }
        let bytes = Double(sceneFrames) * Double(sceneSize * sceneSize) * 12   // RGB floats, held until written
        guard bytes <= 2e9 else {
            throw ValidationError("\(sceneFrames) frames of \(sceneSize)×\(sceneSize) need \(Int(bytes / 1e9)) GB of memory (at most 2): make fewer or smaller frames")
        }
    }

    func run() throws {
        try runReportingErrors {
            if let scene {
                let clip = try customSceneClip(scene)
                try Self.write(clip, to: out ?? "out/clips/scene")
                return
            }
            guard let data else { throw CLIError("give --data (or --scene)") }
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
                try Self.write(clip, to: ((out ?? "assets/clips") as NSString).appendingPathComponent(name))
            }
        }
    }

    /// Writes `clip` as `dir`/frame-000.png, ... (creating `dir`) and says so.
    static func write(_ clip: [RGBImage], to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (i, frame) in clip.enumerated() {
            try frame.writePNG(path: (dir as NSString).appendingPathComponent(String(format: "frame-%03d.png", i)))
        }
        print("wrote \(clip.count) frames to \(dir)")
    }

    /// A `side`×`side` vertical gradient from `top` (first row) to `bottom` (last row), RGB in [0, 1].
    static func gradient(_ top: (Float, Float, Float), _ bottom: (Float, Float, Float), side: Int) -> RGBImage {
        var image = RGBImage(width: side, height: side, fill: (1, 1, 1))
        let n = side * side
        for y in 0..<side {
            let t = Float(y) / Float(side - 1)
            for x in 0..<side {
                image.planes[y * side + x] = top.0 + (bottom.0 - top.0) * t
                image.planes[n + y * side + x] = top.1 + (bottom.1 - top.1) * t
                image.planes[2 * n + y * side + x] = top.2 + (bottom.2 - top.2) * t
            }
        }
        return image
    }

    /// The light gradients a --scene clip picks from by seed when no --background is given; the
    /// first is the background of the sample clip `scene`.
    static let lightGradients: [((Float, Float, Float), (Float, Float, Float))] = [
        ((0.96, 0.97, 1.0), (0.9, 0.95, 0.88)),
        ((1.0, 0.97, 0.92), (0.95, 0.9, 0.84)),
        ((0.93, 0.96, 1.0), (0.84, 0.9, 0.98)),
        ((0.98, 0.95, 0.99), (0.92, 0.89, 0.96)),
        ((0.95, 0.99, 0.96), (0.87, 0.94, 0.9)),
    ]

    /// What --background asks for.
    enum SceneBackground {
        case gradient((Float, Float, Float), (Float, Float, Float))
        case landscape
    }

    /// Parses --background: `landscape`, `#RRGGBB` or `#RRGGBB,#RRGGBB` (the `#` may be left out).
    static func parseBackground(_ text: String) throws -> SceneBackground {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.lowercased() == "landscape" { return .landscape }
        func colour(_ part: Substring) throws -> (Float, Float, Float) {
            var hex = part.trimmingCharacters(in: .whitespaces)
            if hex.hasPrefix("#") { hex.removeFirst() }
            guard hex.count == 6, hex.allSatisfy(\.isHexDigit), let v = UInt32(hex, radix: 16) else {
                throw CLIError("--background: '\(part.trimmingCharacters(in: .whitespaces))' is not a colour; give #RRGGBB, two of them as \"#RRGGBB,#RRGGBB\" (top, bottom) or 'landscape'")
            }
            return (Float((v >> 16) & 0xFF) / 255, Float((v >> 8) & 0xFF) / 255, Float(v & 0xFF) / 255)
        }
        let parts = trimmed.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2 else {
            throw CLIError("--background takes one or two colours (#RRGGBB,#RRGGBB) or 'landscape'; got '\(text)'")
        }
        let top = try colour(parts[0])
        return .gradient(top, try parts.count == 2 ? colour(parts[1]) : top)
    }

    /// `text` without variation selector 16 (U+FE0F), so 🕊 and 🕊️ compare equal.
    static func withoutFE0F(_ text: String) -> String {
        var scalars = String.UnicodeScalarView()
        scalars.append(contentsOf: text.unicodeScalars.filter { $0.value != 0xFE0F })
        return String(scalars)
    }

    /// The sprite indices of the emoji in a --scene list. With a comma, the list is names (or
    /// emoji) separated by commas, the longest name that matches taken first (some names hold
    /// commas: "kiss: woman, man"); without one, all ASCII is one name and anything else emoji
    /// separated by spaces (several written together are taken one by one), or one name.
    /// Emoji are matched on their characters with FE0F ignored, names in any case. An unknown
    /// one is an error that names it.
    static func resolveScene(_ list: String, items: [DatasetItem]) throws -> [Int] {
        var byText: [String: Int] = [:], byName: [String: Int] = [:]
        for (i, item) in items.enumerated() {
            let text = withoutFE0F(item.text)
            if !text.isEmpty && byText[text] == nil { byText[text] = i }
            if byName[item.name.lowercased()] == nil { byName[item.name.lowercased()] = i }
        }
        func find(_ token: String) -> Int? { byText[withoutFE0F(token)] ?? byName[token.lowercased()] }
        func unknown(_ token: String) -> CLIError {
            CLIError("no emoji '\(token)' among the font's emoji; give emoji separated by spaces (\"🐼 🚗 🍌\") or CLDR names separated by commas (\"fox, frog, red apple\")")
        }
        let trimmed = list.trimmingCharacters(in: .whitespaces)
        var out: [Int] = []
        if trimmed.contains(",") {
            let parts = trimmed.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            var i = 0
            while i < parts.count {
                if parts[i].isEmpty { i += 1; continue }
                guard let j = (i..<parts.count).reversed().first(where: { find(parts[i...$0].joined(separator: ", ")) != nil }) else {
                    throw unknown(parts[i])
                }
                out.append(find(parts[i...j].joined(separator: ", "))!)
                i = j + 1
            }
        } else if let i = find(trimmed) {
            out = [i]
        } else if trimmed.unicodeScalars.allSatisfy(\.isASCII) {
            if !trimmed.isEmpty { throw unknown(trimmed) }
        } else {
            for token in trimmed.split(whereSeparator: \.isWhitespace).map(String.init) {
                if let i = find(token) { out.append(i); continue }
                let each = token.map { find(String($0)) }
                guard token.count > 1, !each.contains(where: { $0 == nil }) else { throw unknown(token) }
                out += each.compactMap { $0 }
            }
        }
        return out
    }

    /// The --scene clip: the emoji moving over the background, deterministic in --seed.
    func customSceneClip(_ list: String) throws -> [RGBImage] {
        let kind = try background.map(Self.parseBackground)
        let side = sceneSize
        // First against emoji-test.txt, so a misspelt name or too many emoji fail before the
        // font is rendered; then against what the font draws.
        let listed = try EmojiTestFile(path: EmojiDatasetBuilder.defaultEmojiTestPath).classEntries.map {
            DatasetItem(codepoints: $0.entry.hexCodePoints, name: $0.entry.name, subgroup: $0.entry.subgroup)
        }
        let count = try Self.resolveScene(list, items: listed).count
        guard (1...8).contains(count) else { throw CLIError("--scene takes 1 to 8 emoji; got \(count)") }
        let render = LazyProgress("render", unit: "glyphs")
        let sprites = try EmojiDatasetBuilder.buildSprites(size: side, progress: render.update)
        render.finish()
        let picked = try Self.resolveScene(list, items: sprites.items)
        let composer = SceneComposer(sprites: sprites, size: side)
        // The background from stream 1 of the seed and the motion from stream 0, so a change of
        // background keeps the motion.
        var backgroundRNG = SplitMix64(seed: seed, stream: 1)
        let image: RGBImage
        switch kind {
        case .landscape?:
            image = SceneComposer.background(.landscape, size: side, rng: &backgroundRNG)
        case let .gradient(top, bottom)?:
            image = Self.gradient(top, bottom, side: side)
        case nil:
            let pick = Self.lightGradients[Int(backgroundRNG.next() % UInt64(Self.lightGradients.count))]
            image = Self.gradient(pick.0, pick.1, side: side)
        }
        var rng = SplitMix64(seed: seed, stream: 0)
        func uniform(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * rng.nextUnitFloat() }
        let s = Float(side)
        let movers: [SceneComposer.Mover] = picked.map { sprite in
            let size = max(1, Int((uniform(0.2, 0.35) * s).rounded()))
            let half = Float(size) / 2
            let x = uniform(half, s - half), y = uniform(half, s - half)
            let speed = uniform(1, 2.5) * s / 128, angle = uniform(0, 2 * Float.pi)
            return .init(sprite: sprite, x: x, y: y, dx: speed * cos(angle), dy: speed * sin(angle), side: size)
        }
        let names = picked.map { "\(sprites.items[$0].text) \(sprites.items[$0].name)\(sprites.split[$0] == 1 ? " (held out)" : "")" }
        print("scene: " + names.joined(separator: ", "))
        return composer.movingClip(background: image, movers: movers, frames: sceneFrames)
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
        let background = Self.gradient(Self.lightGradients[0].0, Self.lightGradients[0].1, side: side)
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
