import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillraceTraining

/// Scenes of sprites (SceneComposer, SceneClips) on small synthetic sprites: a solid square of
/// one colour per sprite with full coverage in the middle and none at the edge.
@Suite struct SceneComposerTests {
    /// `perClass` sprites of each of 3 classes, side 8; sprite k is the grey level k/`count` inside
    /// a 4×4 opaque centre; the last sprite of each class is held out.
    static func sprites(perClass: Int = 3) -> EmojiSprites {
        let side = 8, plane = side * side, count = 3 * perClass
        var colour: [Float] = [], alpha: [Float] = [], labels: [UInt8] = [], split: [UInt8] = [], items: [DatasetItem] = []
        for k in 0..<count {
            let level = Float(k) / Float(count)
            var a = [Float](repeating: 0, count: plane)
            for y in 2..<6 { for x in 2..<6 { a[y * side + x] = 1 } }
            // Colour over white: level where covered, white elsewhere.
            let c = a.map { $0 * level + (1 - $0) }
            colour += c + c + c
            alpha += a
            labels.append(UInt8(k / perClass))
            split.append(k % perClass == perClass - 1 ? 1 : 0)
            items.append(DatasetItem(codepoints: String(format: "%X", 0x1F600 + k), name: "sprite \(k)", subgroup: "test"))
        }
        return EmojiSprites(size: side, classNames: ["a", "b", "c"], labels: labels, split: split, colour: colour,
                            alpha: alpha, items: items)
    }

    @Test func pasteComposesThroughCoverageAndCutsAtTheBorders() {
        let composer = SceneComposer(sprites: Self.sprites(), size: 16)
        let background = RGBImage(width: 16, height: 16, fill: (0.2, 0.4, 0.6))
        var image = background
        // Sprite 4 (level 4/9) at its own size, centred on (8, 8): covers pixels 6..<10 fully.
        composer.paste(4, into: &image, centreX: 8, centreY: 8, side: 8)
        let level: Float = 4 / 9
        #expect(abs(image.pixel(x: 7, y: 7).r - level) < 1e-6 && abs(image.pixel(x: 7, y: 7).b - level) < 1e-6)
        // Where the coverage is 0 the background stays, exactly.
        #expect(image.pixel(x: 4, y: 4) == background.pixel(x: 4, y: 4))
        #expect(image.pixel(x: 0, y: 0) == background.pixel(x: 0, y: 0))
        // Cut at a border: only the part inside is drawn; wholly outside changes nothing.
        var cut = background
        composer.paste(4, into: &cut, centreX: 0, centreY: 0, side: 8)
        #expect(abs(cut.pixel(x: 0, y: 0).r - level) < 1e-6 && abs(cut.pixel(x: 1, y: 1).g - level) < 1e-6)
        #expect(cut.pixel(x: 3, y: 3) == background.pixel(x: 3, y: 3))
        var outside = background
        composer.paste(4, into: &outside, centreX: -20, centreY: 40, side: 8)
        #expect(outside == background)
    }

    @Test func scenesAreDeterministicLabelledByTheMainSpriteAndKeepTheSplit() {
        let sprites = Self.sprites()
        let composer = SceneComposer(sprites: sprites, size: 24)
        for seed in 0..<40 as Range<UInt64> {
            var r1 = SplitMix64(seed: seed), r2 = SplitMix64(seed: seed)
            let a = composer.compose(split: 0, rng: &r1), b = composer.compose(split: 0, rng: &r2)
            #expect(a.image == b.image && a.members == b.members)
            #expect(Int(sprites.labels[a.members[0]]) == a.label, "the label is the main sprite's group")
            #expect(a.members.allSatisfy { sprites.split[$0] == 0 })
            #expect(a.image.planes.allSatisfy { $0 >= 0 && $0 <= 1 })
            var r3 = SplitMix64(seed: seed)
            let held = composer.compose(split: 1, label: 2, rng: &r3)
            #expect(held.label == 2 && held.members.allSatisfy { sprites.split[$0] == 1 })
        }
        // Both single emoji and compositions of several occur.
        var rng = SplitMix64(seed: 1)
        let sizes = (0..<200).map { _ in composer.compose(split: 0, rng: &rng).members.count }
        #expect(sizes.contains(1) && sizes.contains { $0 >= 3 })
    }

    @Test func oneGroupScenesDrawEverySpriteFromTheLabelsGroup() {
        let sprites = Self.sprites()
        let composer = SceneComposer(sprites: sprites, size: 24)
        var mixed = 0
        for seed in 0..<60 as Range<UInt64> {
            var r1 = SplitMix64(seed: seed), r2 = SplitMix64(seed: seed)
            let one = composer.compose(split: 0, sameGroup: 1, rng: &r1)
            #expect(one.members.allSatisfy { Int(sprites.labels[$0]) == one.label }, "every sprite of a one-group scene is of its group")
            let any = composer.compose(split: 0, rng: &r2)
            mixed += any.members.contains { Int(sprites.labels[$0]) != any.label } ? 1 : 0
        }
        #expect(mixed > 0, "by default some scenes mix groups")
        let ds = composer.dataset(count: 30, heldOut: 6, seed: 2, sameGroup: 1)
        #expect(ds.indices(split: 1) == Array(24..<30))
    }

    @Test func theDatasetHasTheHeldOutScenesLastAndEveryClass() throws {
        let composer = SceneComposer(sprites: Self.sprites(), size: 16)
        let ds = composer.dataset(count: 90, heldOut: 9, seed: 4)
        #expect(ds.count == 90 && ds.size == 16 && ds.classNames == ["a", "b", "c"])
        #expect(ds.indices(split: 1) == Array(81..<90))
        #expect(Set(ds.labels) == [0, 1, 2])
        #expect(ds.items.allSatisfy { $0.subgroup == "scene" && $0.name.hasPrefix("scene: sprite ") })
        // It writes and reads back as any dataset.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("scenes-\(UUID().uuidString).mrds").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try ds.write(path: path)
        #expect(try ImageDataset.read(path: path) == ds)
    }

    @Test func everyBackgroundKindIsInRangeAndNotBlank() {
        for kind in SceneComposer.Background.allCases {
            for seed in 0..<8 as Range<UInt64> {
                var rng = SplitMix64(seed: seed)
                let b = SceneComposer.background(kind, size: 32, rng: &rng)
                #expect(b.width == 32 && b.planes.allSatisfy { $0 >= 0 && $0 <= 1 })
            }
        }
        var rng = SplitMix64(seed: 3)
        let g = SceneComposer.background(.gradient, size: 32, rng: &rng)
        #expect(Set(g.planes).count > 10, "a gradient has many values")
    }

    @Test func clipsMoveStayNoisyOrGrowAsDrawn() {
        let composer = SceneComposer(sprites: Self.sprites(), size: 32)
        let background = RGBImage(width: 32, height: 32, fill: (1, 1, 1))
        let clip = composer.movingClip(background: background, movers: [
            .init(sprite: 0, x: 8, y: 8, dx: 3, dy: 1, side: 8), .init(sprite: 3, x: 20, y: 20, dx: -2, dy: 2, side: 8),
        ], frames: 30)
        #expect(clip.count == 30)
        for k in 1..<clip.count { #expect(clip[k] != clip[k - 1], "frame \(k) moved") }
        let noisy = SceneComposer.noisyStill(clip[0], frames: 4, sigma: 0.05, seed: 1)
        let diffs = zip(noisy[0].planes, clip[0].planes).map { Double($0 - $1) }
        let rms = (diffs.map { $0 * $0 }.reduce(0, +) / Double(diffs.count)).squareRoot()
        #expect(rms > 0.02 && rms < 0.06 && noisy[0] != noisy[1])
        let sketch = SceneComposer.sketchClip(strokes: [[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8)]], frames: 8, side: 32, pen: 3)
        func ink(_ i: RGBImage) -> Int { i.planes[0 ..< 32 * 32].filter { $0 < 1 }.count }
        #expect(ink(sketch[0]) < ink(sketch[2]) && ink(sketch[2]) < ink(sketch[5]) && ink(sketch[5]) == ink(sketch[7]))
    }
}
