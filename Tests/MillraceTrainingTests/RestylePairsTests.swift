import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillraceTraining

/// Restyle pairs (the image-to-image model's data) on SceneComposerTests' synthetic sprites.
@Suite struct RestylePairsTests {
    static func pairs(outlines: Double = 0) -> RestylePairs {
        var p = RestylePairs(composer: SceneComposer(sprites: SceneComposerTests.sprites(perClass: 4), size: 24))
        p.outlineShare = outlines
        return p
    }

    /// The pixels no sprite of `layout` covers: drawn over black and over white they keep the
    /// background's value.
    static func uncovered(_ composer: SceneComposer, _ layout: SceneComposer.Layout) -> [Bool] {
        var black = layout, white = layout
        black.background = RGBImage(width: composer.size, height: composer.size, fill: (0, 0, 0))
        white.background = RGBImage(width: composer.size, height: composer.size, fill: (1, 1, 1))
        let b = composer.render(black), w = composer.render(white), plane = composer.size * composer.size
        return (0..<plane).map { p in (0..<3).allSatisfy { b.planes[$0 * plane + p] == 0 && w.planes[$0 * plane + p] == 1 } }
    }

    /// A pair is one layout drawn twice: the input is the scene `layout` gives for the same
    /// draws, the output agrees with it wherever no sprite is, and differs where one is swapped.
    @Test func aPairIsOneLayoutDrawnTwice() {
        let pairs = Self.pairs()
        let composer = pairs.composer
        var differing = 0
        for seed in 0..<40 {
            var rng = SplitMix64(seed: 77, stream: seed)
            var copy = rng
            let label = seed % 3
            let pair = pairs.pair(split: 0, label: label, rng: &rng)
            let layout = composer.layout(split: 0, rng: &copy)
            #expect(pair.label == label && !pair.outlined)
            #expect(pair.input.planes == composer.render(layout).planes, "seed \(seed)")
            let free = Self.uncovered(composer, layout), plane = composer.size * composer.size
            for p in 0..<plane where free[p] {
                for c in 0..<3 { #expect(pair.output.planes[c * plane + p] == pair.input.planes[c * plane + p]) }
            }
            if pair.output.planes != pair.input.planes { differing += 1 }
            // Deterministic in the generator.
            var again = SplitMix64(seed: 77, stream: seed)
            #expect(pairs.pair(split: 0, label: label, rng: &again).output.planes == pair.output.planes)
        }
        #expect(differing > 20)
    }

    /// With a palette, a group's outputs draw only from its palette: `size` distinct sprites of
    /// the pool, the first the closest to the pool's mean thumbnail and the next the farthest
    /// from it; the whole pool when it is not larger. The same every time.
    @Test func aPaletteLimitsEachGroupToAFewSprites() {
        var pairs = Self.pairs()
        pairs.palette = 2
        let m = 2 * RestylePairs.thumbSide * RestylePairs.thumbSide
        func thumb(_ s: Int) -> [Float] { Array(pairs.thumbs[s * m ..< (s + 1) * m]) }
        func distance(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } }
        var limited = 0
        for group in pairs.composer.classes(split: 0) {
            let pool = pairs.composer.sprites(split: 0, group: group)
            let chosen = pairs.palette(of: pool, size: 2)
            if pool.count <= 2 { #expect(chosen == pool); continue }
            limited += 1
            #expect(chosen.count == 2 && Set(chosen).count == 2 && chosen.allSatisfy(pool.contains))
            #expect(pairs.palette(of: pool, size: 2) == chosen)
            var mean = [Float](repeating: 0, count: m)
            for s in pool { for j in 0..<m { mean[j] += thumb(s)[j] / Float(pool.count) } }
            #expect(pool.allSatisfy { distance(thumb($0), mean) >= distance(thumb(chosen[0]), mean) })
            #expect(pool.allSatisfy { distance(thumb($0), thumb(chosen[0])) <= distance(thumb(chosen[1]), thumb(chosen[0])) })
            #expect(pairs.palette(of: pool, size: pool.count + 3) == pool)
            for seed in 0..<12 {
                var rng = SplitMix64(seed: 5, stream: seed)
                let pair = pairs.pair(split: 0, label: group, rng: &rng)
                #expect(!pair.sprites.isEmpty && pair.sprites.allSatisfy(chosen.contains), "group \(group), seed \(seed)")
            }
        }
        #expect(limited > 0, "no group has more sprites than the palette")
    }

    /// `singleGroups`: a group given nil draws from the first sprite of its palette only, a group
    /// given a sprite from that sprite only, in every output; the other groups keep `palette`.
    @Test func singleGroupsDrawOneSprite() {
        var pairs = RestylePairs(composer: SceneComposer(sprites: SceneComposerTests.sprites(perClass: 16), size: 24))
        pairs.palette = 3
        let groups = pairs.composer.classes(split: 0)
        let (first, named, other) = (groups[0], groups[1], groups[2])
        let wanted = pairs.composer.sprites(split: 0, group: named).last!
        let before = pairs.palettes[0][first]
        pairs.singleGroups = [first: Int?.none, named: wanted]
        #expect(pairs.palettes[0][first] == [before[0]])
        #expect(pairs.palettes[0][named] == [wanted])
        #expect(pairs.palettes[0][other].count == 3)
        var rng = SplitMix64(seed: 5)
        for _ in 0..<8 {
            let a = pairs.pair(split: 0, label: first, rng: &rng), b = pairs.pair(split: 0, label: named, rng: &rng)
            #expect(!a.sprites.isEmpty && a.sprites.allSatisfy { $0 == before[0] })
            #expect(!b.sprites.isEmpty && b.sprites.allSatisfy { $0 == wanted })
        }
    }

    /// With `typicality` (a classifier's scores), a group's palette starts from its most typical
    /// sprite and is drawn from its `typicalShare` most typical ones only; `spriteScenes`, what
    /// the classifier scores, draws each sprite alone at the centre over white.
    @Test func typicalityChoosesThePalette() {
        var pairs = RestylePairs(composer: SceneComposer(sprites: SceneComposerTests.sprites(perClass: 16), size: 24))
        let n = pairs.composer.sprites.count
        let score = (0..<n).map { Float(($0 * 37) % 23) }  // a fixed order unrelated to the sprites' looks
        pairs.typicality = score
        pairs.palette = 2
        var limited = 0
        for group in pairs.composer.classes(split: 0) {
            let pool = pairs.composer.sprites(split: 0, group: group)
            let ranked = pool.sorted { score[$0] != score[$1] ? score[$0] > score[$1] : $0 < $1 }
            let chosen = pairs.palettes[0][group]
            #expect(chosen.count == 2 && chosen[0] == ranked[0], "group \(group)")
            #expect(chosen.allSatisfy(Set(ranked.prefix(RestylePairs.typicalShare(2))).contains), "group \(group)")
            if pool.count > RestylePairs.typicalShare(2) { limited += 1 }
        }
        #expect(limited > 0, "no group has more sprites than the typical share")
        // A pool as large as the palette: the group's most typical sprites, most typical first.
        pairs.typicalPool = 2
        for group in pairs.composer.classes(split: 0) {
            let pool = pairs.composer.sprites(split: 0, group: group)
            let ranked = pool.sorted { score[$0] != score[$1] ? score[$0] > score[$1] : $0 < $1 }
            #expect(pairs.palettes[0][group] == Array(ranked.prefix(2)), "group \(group)")
        }
        let scenes = pairs.spriteScenes()
        #expect(scenes.count == n)
        for i in [0, n / 2, n - 1] {
            let level = Float(i) / Float(n)  // the synthetic sprite's colour where it covers
            #expect(abs(scenes[i].planes[12 * 24 + 12] - level) < 0.02 && scenes[i].planes[0] == 1, "sprite \(i)")
        }
    }

    /// The swapped-in sprite is of the asked group (its pool) and, by default (every sprite of the
    /// group a candidate), the closest there on the thumbnails, drawing nothing: a function of
    /// the input. With a few random candidates it is still of the group, and a sprite in the pool
    /// is chosen for itself once enough are drawn.
    @Test func theSwappedSpriteIsTheClosestOfTheGroup() {
        var pairs = Self.pairs()
        let composer = pairs.composer
        let m = 2 * RestylePairs.thumbSide * RestylePairs.thumbSide
        func distance(_ a: Int, _ b: Int, from: Int) -> Float {
            (from..<m).reduce(Float(0)) { $0 + (pairs.thumbs[a * m + $1] - pairs.thumbs[b * m + $1]) * (pairs.thumbs[a * m + $1] - pairs.thumbs[b * m + $1]) }
        }
        var rng = SplitMix64(seed: 3)
        for group in 0..<3 {
            let pool = composer.sprites(split: 0, group: group)
            #expect(!pool.isEmpty && pool.allSatisfy { composer.sprites.labels[$0] == UInt8(group) && composer.sprites.split[$0] == 0 })
            for sprite in 0..<composer.sprites.count {
                for shapeOnly in [false, true] {
                    let before = rng
                    let chosen = pairs.closest(to: sprite, among: pool, shapeOnly: shapeOnly, rng: &rng)
                    let from = shapeOnly ? m / 2 : 0
                    let best = pool.map { distance($0, sprite, from: from) }.min()!
                    #expect(pool.contains(chosen) && distance(chosen, sprite, from: from) == best)
                    // Nothing was drawn.
                    var a = before, b = rng
                    #expect(a.next() == b.next())
                }
            }
        }
        pairs.candidates = 2
        let pool = composer.sprites(split: 0, group: 1)
        for sprite in 0..<composer.sprites.count { #expect(pool.contains(pairs.closest(to: sprite, among: pool, rng: &rng))) }
        pairs.candidates = 64
        for sprite in pool { #expect(pairs.closest(to: sprite, among: pool, rng: &rng) == sprite) }
    }

    /// Outlined inputs are pen lines over a page: not the scene's own drawing, and the output
    /// keeps the input's page wherever no sprite is.
    @Test func outlinedInputsAreDrawingsOverTheOutputsPage() {
        let pairs = Self.pairs(outlines: 1)
        let composer = pairs.composer
        for seed in 0..<20 {
            var rng = SplitMix64(seed: 9, stream: seed)
            var copy = rng
            let pair = pairs.pair(split: 0, label: 2, rng: &rng)
            let layout = composer.layout(split: 0, rng: &copy)
            #expect(pair.outlined)
            #expect(pair.input.planes != composer.render(layout).planes)
            let free = Self.uncovered(composer, layout), plane = composer.size * composer.size
            // Pen lines lie within a pen's width of a sprite's box; far from every sprite the
            // page shows in both.
            var agree = 0, total = 0
            for p in 0..<plane where free[p] {
                total += 1
                if (0..<3).allSatisfy({ pair.output.planes[$0 * plane + p] == pair.input.planes[$0 * plane + p] }) { agree += 1 }
            }
            #expect(total == 0 || Double(agree) / Double(total) > 0.6, "seed \(seed): \(agree) of \(total)")
        }
    }

    /// `make` gives images in [−1, 1], labels in range, the same as drawing each pair from its
    /// own stream.
    @Test func makeWritesEachPairFromItsOwnStream() {
        let pairs = Self.pairs(outlines: 0.3)
        let made = pairs.make(count: 7, seed: 11)
        let per = 3 * 24 * 24
        #expect(made.inputs.count == 7 * per && made.outputs.count == 7 * per && made.labels.count == 7)
        #expect(made.inputs.allSatisfy { $0 >= -1 && $0 <= 1 } && made.labels.allSatisfy { (0..<3).contains($0) })
        var rng = SplitMix64(seed: 11, stream: 5)
        let fifth = pairs.pair(split: 0, rng: &rng)
        #expect(made.labels[5] == fifth.label)
        #expect(Array(made.outputs[(5 * per)..<(6 * per)]) == fifth.output.planes.map { 2 * $0 - 1 })
        #expect(made.coverage.count == 7 * 24 * 24)
        #expect(Array(made.coverage[(5 * 576)..<(6 * 576)]) == fifth.coverage)
    }

    /// With `fitInside` a swapped sprite is drawn at the largest side at which that share of
    /// it lies within the sprite it replaces: a full square in place of a small centred one at
    /// half the side, a small one in place of a large one at the full side, a square in place
    /// of a disc in between (the next larger side puts less than the share inside); without
    /// it, at the same side.
    @Test func fitInsideDrawsTheSwapWithinTheReplacedShape() {
        let n = 16, plane = n * n
        func shape(_ inside: (Float, Float) -> Bool) -> [Float] {
            (0..<plane).map { p in inside((Float(p % n) + 0.5) / Float(n) - 0.5, (Float(p / n) + 0.5) / Float(n) - 0.5) ? 1 : 0 }
        }
        let full = shape { _, _ in true }, small = shape { abs($0) < 0.25 && abs($1) < 0.25 }, disc = shape { $0 * $0 + $1 * $1 < 0.25 }
        let alpha = full + small + disc + full + small + disc + full + small + disc
        let colour = (0..<9).flatMap { k in [Float](repeating: Float(k) / 9, count: 3 * plane) }
        let sprites = EmojiSprites(size: n, classNames: ["a", "b", "c"], labels: [0, 0, 0, 1, 1, 1, 2, 2, 2], split: [UInt8](repeating: 0, count: 9),
                                   colour: colour, alpha: alpha,
                                   items: (0..<9).map { DatasetItem(codepoints: String(format: "%X", 0x1F600 + $0), name: "s\($0)", subgroup: "t") })
        var pairs = RestylePairs(composer: SceneComposer(sprites: sprites, size: 32))
        #expect(pairs.fittedSide(0, replacing: 1, side: 20) == 20)
        pairs.fitInside = 0.9
        #expect(pairs.fittedSide(0, replacing: 1, side: 20) == 10)
        #expect(pairs.fittedSide(1, replacing: 0, side: 20) == 20)
        #expect(pairs.fittedSide(0, replacing: 0, side: 20) == 20)
        let side = pairs.fittedSide(0, replacing: 2, side: 40)
        #expect(side > 20 && side < 40)
        let scale = Float(side) / 40
        #expect(pairs.shareInside(0, scale: scale, within: 2) >= 0.9)
        #expect(pairs.shareInside(0, scale: scale + 0.05, within: 2) < 0.9)
    }

    /// A pair's coverage is where its input's sprites are: 0 exactly where none is (drawn over
    /// black and over white the picture keeps the background), else what they hide of the
    /// background, 1 − (over white − over black); filled shapes for outlined inputs too.
    @Test func coverageIsWhatTheInputsSpritesHide() {
        let pairs = Self.pairs(outlines: 0.5)
        let composer = pairs.composer, plane = composer.size * composer.size
        var covered = 0
        for seed in 0..<30 {
            var rng = SplitMix64(seed: 5, stream: seed)
            var copy = rng
            let pair = pairs.pair(split: 0, label: seed % 3, rng: &rng)
            let layout = composer.layout(split: 0, rng: &copy)
            var black = layout, white = layout
            black.background = RGBImage(width: composer.size, height: composer.size, fill: (0, 0, 0))
            white.background = RGBImage(width: composer.size, height: composer.size, fill: (1, 1, 1))
            let b = composer.render(black), w = composer.render(white)
            let free = Self.uncovered(composer, layout)
            #expect(pair.coverage.count == plane)
            for p in 0..<plane {
                if free[p] {
                    #expect(pair.coverage[p] == 0, "seed \(seed) pixel \(p)")
                } else {
                    covered += 1
                    let hidden = 1 - (w.planes[p] - b.planes[p])
                    #expect(abs(pair.coverage[p] - hidden) < 1e-4, "seed \(seed) pixel \(p): \(pair.coverage[p]) against \(hidden)")
                }
            }
        }
        #expect(covered > 30 * plane / 10)
    }
}
