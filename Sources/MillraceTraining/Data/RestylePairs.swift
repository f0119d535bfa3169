import Foundation
import MillraceCore
import MillraceImaging

/// Pairs of scenes for the image-to-image (restyle) model: one layout drawn twice, first with
/// sprites of any group (the input), then with every sprite swapped for one of the asked group at
/// the same place and size (the output), over the same background (docs/DATASET.md, "Restyle
/// pairs"). The model learns to redraw a picture as emoji of a group while keeping where
/// everything is.
///
/// The swapped-in sprite is the closest sprite of the asked group to the one it replaces (on a
/// small thumbnail of luma and coverage), so that the output keeps the input's shapes and light
/// and dark as far as the group allows, and is a function of the input. In some scenes the input's sprites are
/// drawn as pen outlines instead (a drawing to turn into emoji, as on the page's canvas).
public struct RestylePairs: Sendable {
    public let composer: SceneComposer
    /// Candidates of the asked group per swapped sprite, drawn at random; 0: every sprite of the
    /// group, so that the output is a function of the input (its nearest sprites in the group)
    /// and a model's one-step estimate need not average over choices.
    public var candidates = 0
    /// Sprites per group that outputs draw from (0: the whole group): a fixed palette, chosen
    /// once per group by `palette(of:size:)` when this is set, so that a model has a few
    /// sprites per group to learn to draw rather than hundreds.
    public var palette = 0 { didSet { choosePalettes() } }
    /// How typical each sprite is of its group (higher: more), e.g. a classifier's probability
    /// of the sprite's own group on `spriteScenes()`; nil: no preference. A palette then starts
    /// from the group's most typical sprite and spreads over its most typical few
    /// (`palette(of:size:)`), so that what a model learns to draw reads as the group.
    public var typicality: [Float]? { didSet { choosePalettes() } }
    /// With `typicality`: how many of a group's most typical sprites its palette spreads over
    /// (nil: `typicalShare(palette)`; `palette` itself: the most typical ones, not spread).
    public var typicalPool: Int? { didSet { choosePalettes() } }
    /// Groups whose palette is one sprite: the one given (a sprite index), or nil for the first
    /// of `palette(of:size:)` (with `typicality`: the group's most typical). Outputs of such a
    /// group are all that sprite, which a one-step model can draw without averaging over
    /// choices; the other groups keep `palette`.
    public var singleGroups: [Int: Int?] = [:] { didSet { choosePalettes() } }
    private mutating func choosePalettes() {
        precondition(typicality.map { $0.count == composer.sprites.count } ?? true, "typicality needs one score per sprite")
        palettes = composer.pool.map { groups in
            groups.enumerated().map { g, members in
                if let one = singleGroups[g] { return one.map { [$0] } ?? self.palette(of: members, size: 1) }
                return palette > 0 ? self.palette(of: members, size: palette) : members
            }
        }
    }
    /// Per split and group, the sprites outputs draw from (`palette`).
    public private(set) var palettes: [[[Int]]]
    /// Share of scenes whose input sprites are drawn as outlines.
    public var outlineShare = 0.15
    /// 0: a swapped-in sprite is drawn at the side of the sprite it replaces. Above 0: at the
    /// largest side, down to half of that, at which at least this share of its coverage falls
    /// within the replaced sprite's (at half, or where none reaches it, the side that puts the
    /// most within), so that the output's drawing keeps to the input's shapes: a square swapped
    /// for a round sprite is drawn inside the circle rather than over its corners.
    public var fitInside: Float = 0
    /// Side of the coverage masks that `fitInside` compares.
    static let shapeSide = 32
    /// Per sprite: its coverage at `shapeSide`².
    let shapes: [Float]
    /// Side of the thumbnails that choose a swapped-in sprite.
    static let thumbSide = 8
    /// Per sprite: `thumbSide`² luma-over-white values, then as many coverage values.
    let thumbs: [Float]

    public init(composer: SceneComposer) {
        self.composer = composer
        let sprites = composer.sprites, n = sprites.size, plane = n * n, t = Self.thumbSide
        var thumbs = [Float](repeating: 0, count: sprites.count * 2 * t * t)
        for i in 0..<sprites.count {
            let c = sprites.colour[i * 3 * plane ..< (i + 1) * 3 * plane]
            let b = c.startIndex
            var luma = [Float](repeating: 0, count: plane)
            for p in 0..<plane { luma[p] = 0.299 * c[b + p] + 0.587 * c[b + plane + p] + 0.114 * c[b + 2 * plane + p] }
            let l = RGBImage(width: n, height: n, planes: luma + luma + luma).resizedArea(width: t, height: t)
            let a = Array(sprites.alpha[i * plane ..< (i + 1) * plane])
            let k = RGBImage(width: n, height: n, planes: a + a + a).resizedArea(width: t, height: t)
            for p in 0..<(t * t) {
                thumbs[i * 2 * t * t + p] = l.planes[p]
                thumbs[i * 2 * t * t + t * t + p] = k.planes[p]
            }
        }
        self.thumbs = thumbs
        let m = Self.shapeSide
        var shapes = [Float](repeating: 0, count: sprites.count * m * m)
        for i in 0..<sprites.count {
            let a = Array(sprites.alpha[i * plane ..< (i + 1) * plane])
            let k = composer.scaled(RGBImage(width: n, height: n, planes: a + a + a), m)
            for p in 0..<(m * m) { shapes[i * m * m + p] = k.planes[p] }
        }
        self.shapes = shapes
        palettes = composer.pool
    }

    /// The share of sprite `drawn`'s coverage, drawn at `scale` times the side of sprite
    /// `within` about the same centre, that falls within `within`'s coverage.
    func shareInside(_ drawn: Int, scale: Float, within: Int) -> Float {
        let m = Self.shapeSide, mm = m * m
        var inside: Float = 0, total: Float = 0
        for v in 0..<m {
            let y = Int(((Float(v) + 0.5) / Float(m) - 0.5) * scale * Float(m) + Float(m) / 2)
            for u in 0..<m {
                let b = shapes[drawn * mm + v * m + u]
                guard b > 0 else { continue }
                total += b
                let x = Int(((Float(u) + 0.5) / Float(m) - 0.5) * scale * Float(m) + Float(m) / 2)
                inside += b * shapes[within * mm + y * m + x]
            }
        }
        return total > 0 ? inside / total : 1
    }

    /// The side to draw sprite `drawn` at in place of sprite `replaced` drawn at `side`
    /// (`fitInside`).
    func fittedSide(_ drawn: Int, replacing replaced: Int, side: Int) -> Int {
        guard fitInside > 0 else { return side }
        var best: (scale: Float, share: Float) = (1, -1)
        for k in 0...10 {
            let scale = 1 - Float(k) * 0.05
            let share = shareInside(drawn, scale: scale, within: replaced)
            if share >= fitInside { best = (scale, share); break }
            if share > best.share { best = (scale, share) }
        }
        return max(1, Int((Float(side) * best.scale).rounded()))
    }

    /// One pair.
    public struct Pair: Sendable {
        public var input: RGBImage
        public var output: RGBImage
        /// The asked group: every sprite of `output` is of it.
        public var label: Int
        /// Whether the input's sprites are outlines.
        public var outlined: Bool
        /// The sprites drawn in `output`, one per placement.
        public var sprites: [Int]
        /// How much the input's sprites cover each pixel, in [0, 1] ([size·size]; filled
        /// shapes also where the input draws them as outlines): where the picture has emoji,
        /// as against its background.
        public var coverage: [Float]
    }

    /// A pair from `split`'s sprites, the output in `label`'s group (nil: drawn uniformly).
    /// Deterministic in `rng`.
    public func pair(split: UInt8, label: Int? = nil, rng: inout SplitMix64) -> Pair {
        let classes = composer.classes(split: split)
        let group = label ?? classes[Int(rng.next() % UInt64(classes.count))]
        let layout = composer.layout(split: split, rng: &rng)
        let outlined = rng.nextUnitDouble() < outlineShare
        var swapped = layout
        let pool = palettes[Int(split)][group]
        // An outline shows a sprite's shape, not its colours: the swapped sprite is then the
        // closest in coverage only.
        swapped.placements = layout.placements.map { p in
            let drawn = closest(to: p.sprite, among: pool, shapeOnly: outlined, rng: &rng)
            return (drawn, p.centreX, p.centreY, fittedSide(drawn, replacing: p.sprite, side: p.side))
        }
        var input: RGBImage
        if outlined {
            // A drawing: pen outlines of the same sprites on a light page (or the layout's own
            // background), which the output keeps.
            let page = SceneComposer.colour(&rng)
            let light = (0.85 + 0.15 * page.0, 0.85 + 0.15 * page.1, 0.85 + 0.15 * page.2)
            input = rng.nextUnitDouble() < 0.5 ? layout.background : RGBImage(width: composer.size, height: composer.size, fill: light)
            swapped.background = input
            let ink = SceneComposer.colour(&rng)
            let dark = (ink.0 * 0.7, ink.1 * 0.7, ink.2 * 0.7)
            let width = 1 + Int(rng.next() % 3)
            for p in layout.placements {
                drawOutline(p.sprite, into: &input, centreX: p.centreX, centreY: p.centreY, side: p.side, ink: dark, width: width)
            }
        } else {
            input = composer.render(layout)
        }
        return Pair(input: input, output: composer.render(swapped), label: group, outlined: outlined,
                    sprites: swapped.placements.map(\.sprite), coverage: composer.coverage(layout))
    }

    /// `size` sprites of `pool` spread over its thumbnails (luma and coverage): the one closest
    /// to the pool's mean thumbnail first, then each time the one farthest from those chosen
    /// (farthest-point sampling). With `typicality`, the group's most typical sprite first, and
    /// the spread only over its `typicalPool` (default `typicalShare(size)`) most typical ones.
    /// Deterministic; the whole pool when it is not larger.
    public func palette(of whole: [Int], size: Int) -> [Int] {
        guard size < whole.count, size > 0 else { return whole }
        var pool = whole
        if let t = typicality {
            // Most typical first (ties by index, so the choice is deterministic).
            pool = whole.sorted { t[$0] != t[$1] ? t[$0] > t[$1] : $0 < $1 }
            pool = Array(pool.prefix(min(whole.count, max(size, typicalPool ?? Self.typicalShare(size)))))
            if size >= pool.count { return pool }
        }
        let m = 2 * Self.thumbSide * Self.thumbSide
        func distance(_ a: Int, _ b: [Float]) -> Float {
            var d: Float = 0
            for j in 0..<m { let e = thumbs[a * m + j] - b[j]; d += e * e }
            return d
        }
        var chosen = [pool[0]]  // the most typical, or else the closest to the mean thumbnail
        if typicality == nil {
            var mean = [Float](repeating: 0, count: m)
            for s in pool { for j in 0..<m { mean[j] += thumbs[s * m + j] / Float(pool.count) } }
            chosen = [pool.min { distance($0, mean) < distance($1, mean) }!]
        }
        var nearest = pool.map { distance($0, Array(thumbs[chosen[0] * m ..< (chosen[0] + 1) * m])) }
        while chosen.count < size {
            let k = nearest.indices.max { nearest[$0] < nearest[$1] }!
            chosen.append(pool[k])
            let t = Array(thumbs[pool[k] * m ..< (pool[k] + 1) * m])
            for i in pool.indices { nearest[i] = min(nearest[i], distance(pool[i], t)) }
        }
        return chosen
    }

    /// How many of a group's most typical sprites a palette of `size` spreads over.
    public static func typicalShare(_ size: Int) -> Int { max(3 * size, size + 8) }

    /// Each sprite alone, centred at three quarters of the side over white: what a classifier
    /// scores for `typicality`.
    public func spriteScenes() -> [RGBImage] {
        let n = composer.size, c = Float(n) / 2, side = Int((Float(n) * 0.75).rounded())
        let white = RGBImage(width: n, height: n, fill: (1, 1, 1))
        return (0..<composer.sprites.count).map { i in
            composer.render(SceneComposer.Layout(background: white, placements: [(i, c, c, side)], label: Int(composer.sprites.labels[i]), members: [i]))
        }
    }

    /// Of `candidates` sprites drawn from `pool` (0: all of them), the one whose thumbnail (luma
    /// and coverage, or coverage only) is closest to `sprite`'s; ties go to the first.
    func closest(to sprite: Int, among pool: [Int], shapeOnly: Bool = false, rng: inout SplitMix64) -> Int {
        let m = 2 * Self.thumbSide * Self.thumbSide, from = shapeOnly ? m / 2 : 0
        let all = candidates <= 0 || candidates >= pool.count
        var best = pool[0], bestDistance = Float.infinity
        for k in 0..<(all ? pool.count : candidates) {
            let c = all ? pool[k] : pool[Int(rng.next() % UInt64(pool.count))]
            var d: Float = 0
            for j in from..<m { let e = thumbs[c * m + j] - thumbs[sprite * m + j]; d += e * e }
            if d < bestDistance { bestDistance = d; best = c }
        }
        return best
    }

    /// Draws the outline of sprite `index` (the edge of its coverage and the strong edges of its
    /// luma inside) at `side`×`side` centred on (`centreX`, `centreY`), in `ink`, `width` pixels wide.
    func drawOutline(_ index: Int, into image: inout RGBImage, centreX: Float, centreY: Float, side: Int,
                     ink: (Float, Float, Float), width: Int) {
        guard side >= 2 else { return }
        let sprites = composer.sprites, n = sprites.size, plane = n * n
        let c = Array(sprites.colour[index * 3 * plane ..< (index + 1) * 3 * plane])
        var luma = [Float](repeating: 0, count: plane)
        for p in 0..<plane { luma[p] = 0.299 * c[p] + 0.587 * c[plane + p] + 0.114 * c[2 * plane + p] }
        let a = Array(sprites.alpha[index * plane ..< (index + 1) * plane])
        func scaled(_ v: [Float]) -> [Float] {
            Array(composer.scaled(RGBImage(width: n, height: n, planes: v + v + v), side).planes[0..<(side * side)])
        }
        let k = scaled(a), l = scaled(luma)
        var edge = [Bool](repeating: false, count: side * side)
        for y in 0..<side {
            for x in 0..<side {
                let i = y * side + x
                guard k[i] >= 0.5 else { continue }
                var on = false
                for (dx, dy) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
                    let xx = x + dx, yy = y + dy
                    if xx < 0 || yy < 0 || xx >= side || yy >= side || k[yy * side + xx] < 0.5 { on = true; break }
                    if abs(l[yy * side + xx] - l[i]) > 0.3 && l[i] < l[yy * side + xx] { on = true; break }
                }
                edge[i] = on
            }
        }
        let x0 = Int((centreX - Float(side) / 2).rounded()), y0 = Int((centreY - Float(side) / 2).rounded())
        let w = image.width, h = image.height, ip = w * h
        for y in 0..<side {
            for x in 0..<side where edge[y * side + x] {
                for oy in 0..<width {
                    for ox in 0..<width {
                        let px = x0 + x + ox - width / 2, py = y0 + y + oy - width / 2
                        guard px >= 0 && py >= 0 && px < w && py < h else { continue }
                        image.planes[py * w + px] = ink.0
                        image.planes[ip + py * w + px] = ink.1
                        image.planes[2 * ip + py * w + px] = ink.2
                    }
                }
            }
        }
    }

    /// `count` pairs, each from its own stream of `seed`, from the train sprites (split 0), the
    /// asked groups uniform. Images [count, 3, size, size] in [−1, 1] (the model's space), and
    /// the inputs' coverage [count, size, size] in [0, 1].
    public func make(count: Int, split: UInt8 = 0, seed: UInt64,
                     progress: ((Int, Int) -> Void)? = nil) -> (inputs: [Float], outputs: [Float], labels: [Int], coverage: [Float]) {
        let plane = composer.size * composer.size, per = 3 * plane
        var inputs = [Float](repeating: 0, count: count * per), outputs = inputs
        var labels = [Int](repeating: 0, count: count)
        var coverage = [Float](repeating: 0, count: count * plane)
        inputs.withUnsafeMutableBufferPointer { ip in
            outputs.withUnsafeMutableBufferPointer { op in
                labels.withUnsafeMutableBufferPointer { lp in
                    coverage.withUnsafeMutableBufferPointer { cp in
                        let box = UncheckedSendable((ip, op, lp, cp, progress))
                        let parts = max(1, min(count, ProcessInfo.processInfo.activeProcessorCount))
                        DispatchQueue.concurrentPerform(iterations: parts) { part in
                            let (ip, op, lp, cp, progress) = box.value
                            for k in (part * count / parts)..<((part + 1) * count / parts) {
                                var rng = SplitMix64(seed: seed, stream: k)
                                let p = pair(split: split, rng: &rng)
                                for j in 0..<per {
                                    ip[k * per + j] = 2 * p.input.planes[j] - 1
                                    op[k * per + j] = 2 * p.output.planes[j] - 1
                                }
                                for j in 0..<plane { cp[k * plane + j] = p.coverage[j] }
                                lp[k] = p.label
                                if part == 0 && k % 256 == 0 { progress?(k * parts, count) }
                            }
                        }
                    }
                }
            }
        }
        progress?(count, count)
        return (inputs, outputs, labels, coverage)
    }
}
