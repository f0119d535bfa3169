import Foundation
import MillraceCore
import MillraceImaging

/// Scenes made of emoji: several sprites of mixed groups at random sizes and positions over plain,
/// gradient and drawn backgrounds, cut at the borders and overlapping, and single emoji as in the
/// emoji dataset. The training data of the composition model (docs/DATASET.md, "Scenes") and the
/// material of the scene clips.
///
/// A scene's label is the group of its main sprite, the largest; about half of the others come
/// from the same group and the rest from any group (`sameGroup` sets that share: 1 makes scenes
/// drawn wholly in one group, as a restyled picture is). Train scenes use train sprites only
/// and held-out scenes held-out sprites only, so no held-out emoji is ever seen in training.
public struct SceneComposer: Sendable {
    /// The sprites scenes are made of.
    public let sprites: EmojiSprites
    /// Scene side in pixels.
    public let size: Int
    /// Sprite indices by split (0, 1) and class.
    let pool: [[[Int]]]

    /// The kinds of background.
    public enum Background: Int, CaseIterable, Sendable {
        /// One colour, often light.
        case plain
        /// A linear blend of two colours in a random direction.
        case gradient
        /// Sky above a horizon over ground, sometimes with a sun and a hill.
        case landscape
        /// A light page with a few strokes of a pen, like the page's drawing canvas.
        case sketch
    }

    /// One composed scene.
    public struct Scene: Sendable {
        /// The picture, `size`×`size`, in [0, 1].
        public var image: RGBImage
        /// The group of the main sprite.
        public var label: Int
        /// The sprites drawn, main first.
        public var members: [Int]
    }

    /// A composer of `size`×`size` scenes from `sprites` (needs at least one sprite in each split
    /// that is asked for).
    public init(sprites: EmojiSprites, size: Int) {
        precondition(size >= 8, "scenes need at least 8×8 pixels")
        self.sprites = sprites
        self.size = size
        var pool = [[[Int]]](repeating: [[Int]](repeating: [], count: sprites.classNames.count), count: 2)
        for i in 0..<sprites.count where sprites.split[i] < 2 {
            pool[Int(sprites.split[i])][Int(sprites.labels[i])].append(i)
        }
        self.pool = pool
    }

    /// The classes that have sprites in `split`.
    public func classes(split: UInt8) -> [Int] {
        pool[Int(split)].indices.filter { !pool[Int(split)][$0].isEmpty }
    }

    /// Where a scene's sprites go: its background, and each sprite's centre and side in the order
    /// they are drawn. `compose` draws it; `RestylePairs` draws it twice with other sprites.
    public struct Layout: Sendable {
        public var background: RGBImage
        /// (sprite, centre x, centre y, side), in drawing order.
        public var placements: [(sprite: Int, centreX: Float, centreY: Float, side: Int)]
        /// The group of the main sprite.
        public var label: Int
        /// The sprites drawn, main first.
        public var members: [Int]
    }

    /// A scene from `split`'s sprites whose main sprite is of `label` (nil: a class drawn
    /// uniformly among those with sprites); each other sprite is of the same group with
    /// probability `sameGroup`, else of any group. Deterministic in `rng`.
    public func compose(split: UInt8, label: Int? = nil, sameGroup: Double = 0.5, rng: inout SplitMix64) -> Scene {
        let l = layout(split: split, label: label, sameGroup: sameGroup, rng: &rng)
        return Scene(image: render(l), label: l.label, members: l.members)
    }

    /// `layout`'s background with its sprites drawn over it in order.
    public func render(_ layout: Layout) -> RGBImage {
        var image = layout.background
        for p in layout.placements { paste(p.sprite, into: &image, centreX: p.centreX, centreY: p.centreY, side: p.side) }
        return image
    }

    /// The layout of a scene (what `compose` draws), deterministic in `rng`.
    public func layout(split: UInt8, label: Int? = nil, sameGroup: Double = 0.5, rng: inout SplitMix64) -> Layout {
        let classes = classes(split: split)
        precondition(!classes.isEmpty, "split \(split) has no sprites")
        let group = label ?? classes[Int(rng.next() % UInt64(classes.count))]
        precondition(!pool[Int(split)][group].isEmpty, "class \(group) has no sprites in split \(split)")
        func pick(_ g: Int) -> Int { let m = pool[Int(split)][g]; return m[Int(rng.next() % UInt64(m.count))] }
        let s = Float(size)
        // One scene in five is a single emoji, as in the emoji dataset (over white half the time).
        if rng.nextUnitDouble() < 0.2 {
            let background = rng.nextUnitDouble() < 0.5
                ? RGBImage(width: size, height: size, fill: (1, 1, 1)) : Self.background(size: size, rng: &rng)
            let main = pick(group)
            let side = Int((s * uniform(0.6, 0.95, &rng)).rounded())
            let cx = s / 2 + uniform(-0.08, 0.08, &rng) * s
            let cy = s / 2 + uniform(-0.08, 0.08, &rng) * s
            return Layout(background: background, placements: [(main, cx, cy, side)], label: group, members: [main])
        }
        let background = Self.background(size: size, rng: &rng)
        let others = 1 + Int(rng.next() % 4)
        var members = [pick(group)]
        var placements: [(sprite: Int, centreX: Float, centreY: Float, side: Int)] = [(members[0], uniform(0.2, 0.8, &rng) * s, uniform(0.2, 0.8, &rng) * s,
                                                       Int((s * uniform(0.35, 0.7, &rng)).rounded()))]
        for _ in 0..<others {
            let g = rng.nextUnitDouble() < sameGroup ? group : classes[Int(rng.next() % UInt64(classes.count))]
            let i = pick(g)
            members.append(i)
            // Centres up to a tenth of the side outside the frame: sprites cut at the borders.
            placements.append((i, uniform(-0.1, 1.1, &rng) * s, uniform(-0.1, 1.1, &rng) * s,
                               max(4, Int((s * uniform(0.15, 0.45, &rng)).rounded()))))
        }
        // A random drawing order, so that any sprite may be occluded, the main one included.
        for k in stride(from: placements.count - 1, to: 0, by: -1) {
            placements.swapAt(k, Int(rng.next() % UInt64(k + 1)))
        }
        return Layout(background: background, placements: placements, label: group, members: members)
    }

    /// The sprites of `split` and class `group`.
    public func sprites(split: UInt8, group: Int) -> [Int] { pool[Int(split)][group] }

    /// Draws sprite `index` at `side`×`side` centred on (`centreX`, `centreY`) over `image`,
    /// through its coverage; the parts outside the image are cut.
    public func paste(_ index: Int, into image: inout RGBImage, centreX: Float, centreY: Float, side: Int) {
        guard side >= 1 else { return }
        let n = sprites.size, plane = n * n
        let c = scaled(RGBImage(width: n, height: n, planes: Array(sprites.colour[index * 3 * plane ..< (index + 1) * 3 * plane])), side)
        let ip = image.width * image.height, sp = side * side
        overCoverage(index, width: image.width, height: image.height, centreX: centreX, centreY: centreY, side: side) { o, s, alpha in
            for ch in 0..<3 {
                // colour over white is c·α + (1 − α): over b it is that + (1 − α)(b − 1).
                let v = c.planes[ch * sp + s] + (1 - alpha) * (image.planes[ch * ip + o] - 1)
                image.planes[ch * ip + o] = min(1, max(0, v))
            }
        }
    }

    /// How much of each pixel `layout`'s sprites cover, in [0, 1] ([size·size], row-major): each
    /// sprite's coverage where it is drawn, composited in drawing order as `render` draws them.
    public func coverage(_ layout: Layout) -> [Float] {
        var out = [Float](repeating: 0, count: size * size)
        for p in layout.placements where p.side >= 1 {
            overCoverage(p.sprite, width: size, height: size, centreX: p.centreX, centreY: p.centreY, side: p.side) { o, _, alpha in
                out[o] = alpha + (1 - alpha) * out[o]
            }
        }
        return out
    }

    /// An image of the sprites' side `n` resized to `side`×`side` as sprites are drawn (area
    /// averaging down, bilinear up).
    func scaled(_ image: RGBImage, _ side: Int) -> RGBImage {
        let n = sprites.size
        return side == n ? image : side < n ? image.resizedArea(width: side, height: side) : image.resizedBilinear(width: side, height: side)
    }

    /// Calls `body(pixel, sprite pixel, α)` for each pixel of a `width`×`height` image that
    /// sprite `index`, drawn at `side`×`side` centred on (`centreX`, `centreY`), covers (α > 0);
    /// the parts outside the image are cut.
    private func overCoverage(_ index: Int, width w: Int, height h: Int, centreX: Float, centreY: Float, side: Int,
                              _ body: (Int, Int, Float) -> Void) {
        let plane = sprites.size * sprites.size
        let a = Array(sprites.alpha[index * plane ..< (index + 1) * plane])
        let k = scaled(RGBImage(width: sprites.size, height: sprites.size, planes: a + a + a), side)
        let x0 = Int((centreX - Float(side) / 2).rounded()), y0 = Int((centreY - Float(side) / 2).rounded())
        let ys = max(0, -y0), ye = min(side, h - y0), xs = max(0, -x0), xe = min(side, w - x0)
        guard ys < ye && xs < xe else { return }  // wholly outside
        for y in ys ..< ye {
            for x in xs ..< xe {
                let alpha = min(1, max(0, k.planes[y * side + x]))
                guard alpha > 0 else { continue }  // uncovered: the background stays exactly
                body((y0 + y) * w + x0 + x, y * side + x, alpha)
            }
        }
    }

    /// A background of a random kind.
    public static func background(size: Int, rng: inout SplitMix64) -> RGBImage {
        let kind = Background(rawValue: Int(rng.next() % UInt64(Background.allCases.count)))!
        return background(kind, size: size, rng: &rng)
    }

    /// A background of `kind`, `size`×`size`, deterministic in `rng`.
    public static func background(_ kind: Background, size: Int, rng: inout SplitMix64) -> RGBImage {
        let s = Float(size), plane = size * size
        var image = RGBImage(width: size, height: size, fill: (1, 1, 1))
        func set(_ x: Int, _ y: Int, _ c: (Float, Float, Float)) {
            image.planes[y * size + x] = c.0
            image.planes[plane + y * size + x] = c.1
            image.planes[2 * plane + y * size + x] = c.2
        }
        func mix(_ a: (Float, Float, Float), _ b: (Float, Float, Float), _ t: Float) -> (Float, Float, Float) {
            (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t, a.2 + (b.2 - a.2) * t)
        }
        switch kind {
        case .plain:
            let c = colour(&rng)
            for y in 0..<size { for x in 0..<size { set(x, y, c) } }
        case .gradient:
            let a = colour(&rng), b = colour(&rng)
            let angle = uniform(0, 2 * Float.pi, &rng)
            let dx = cos(angle), dy = sin(angle)
            let half = (abs(dx) + abs(dy)) * s / 2
            for y in 0..<size {
                for x in 0..<size {
                    let p = ((Float(x) + 0.5 - s / 2) * dx + (Float(y) + 0.5 - s / 2) * dy) / max(half, 1)
                    set(x, y, mix(a, b, (p + 1) / 2))
                }
            }
        case .landscape:
            let skyTop = mix((0.35, 0.6, 0.95), colour(&rng), 0.25)
            let skyLow = mix(skyTop, (1, 1, 1), uniform(0.4, 0.8, &rng))
            let grounds: [(Float, Float, Float)] = [(0.35, 0.7, 0.3), (0.85, 0.75, 0.5), (0.55, 0.4, 0.25), (0.9, 0.93, 0.97)]
            let ground = mix(grounds[Int(rng.next() % UInt64(grounds.count))], colour(&rng), 0.2)
            let horizon = uniform(0.5, 0.85, &rng) * s
            let hill = rng.nextUnitDouble() < 0.5
            let hx = uniform(0, 1, &rng) * s, hr = uniform(0.3, 0.6, &rng) * s
            let sun = rng.nextUnitDouble() < 0.5
            let sx = uniform(0.1, 0.9, &rng) * s, sy = uniform(0.08, 0.3, &rng) * s, sr = uniform(0.05, 0.12, &rng) * s
            for y in 0..<size {
                for x in 0..<size {
                    let fx = Float(x) + 0.5, fy = Float(y) + 0.5
                    var c = fy >= horizon ? ground : mix(skyTop, skyLow, fy / max(horizon, 1))
                    if hill, (fx - hx) * (fx - hx) + (fy - horizon) * (fy - horizon) < hr * hr, fy < horizon {
                        c = mix(ground, (0, 0, 0), 0.15)
                    }
                    if sun, (fx - sx) * (fx - sx) + (fy - sy) * (fy - sy) < sr * sr { c = (1, 0.85, 0.2) }
                    set(x, y, c)
                }
            }
        case .sketch:
            let paper = mix((1, 1, 1), colour(&rng), uniform(0, 0.15, &rng))
            for y in 0..<size { for x in 0..<size { set(x, y, paper) } }
            let strokes = 1 + Int(rng.next() % 4)
            for _ in 0..<strokes {
                let ink = mix(colour(&rng), (0, 0, 0), uniform(0.2, 0.8, &rng))
                let width = max(1, Int((s * uniform(0.01, 0.04, &rng)).rounded()))
                var px = uniform(0, 1, &rng) * s, py = uniform(0, 1, &rng) * s
                var heading = uniform(0, 2 * Float.pi, &rng)
                let length = Int(uniform(0.3, 1.2, &rng) * s)
                for _ in 0..<length {
                    heading += uniform(-0.25, 0.25, &rng)
                    px += cos(heading); py += sin(heading)
                    for oy in 0..<width {
                        for ox in 0..<width {
                            let x = Int(px) + ox - width / 2, y = Int(py) + oy - width / 2
                            if x >= 0 && x < size && y >= 0 && y < size { set(x, y, ink) }
                        }
                    }
                }
            }
        }
        return image
    }

    /// A random colour; half the time a light one (mixed towards white).
    static func colour(_ rng: inout SplitMix64) -> (Float, Float, Float) {
        let c = (rng.nextUnitFloat(), rng.nextUnitFloat(), rng.nextUnitFloat())
        guard rng.nextUnitDouble() < 0.5 else { return c }
        let t = uniform(0.5, 0.9, &rng)
        return (c.0 + (1 - c.0) * t, c.1 + (1 - c.1) * t, c.2 + (1 - c.2) * t)
    }
}

/// A float uniform in [lo, hi).
@inline(__always) func uniform(_ lo: Float, _ hi: Float, _ rng: inout SplitMix64) -> Float {
    lo + (hi - lo) * rng.nextUnitFloat()
}

extension SceneComposer {
    /// `count` scenes as a dataset: `heldOut` of them (the last ones) from held-out sprites with
    /// split 1, the rest from train sprites with split 0. Classes are drawn uniformly, so every
    /// group has about the same number of scenes; `sameGroup` as in `compose`. Deterministic in
    /// `seed`.
    public func dataset(count: Int, heldOut: Int, seed: UInt64, sameGroup: Double = 0.5,
                        progress: ((Int, Int) -> Void)? = nil) -> ImageDataset {
        precondition(count >= 1 && heldOut >= 0 && heldOut <= count, "need 0 ≤ held-out ≤ count and count ≥ 1")
        var labels: [UInt8] = [], split: [UInt8] = [], items: [DatasetItem] = []
        var pixels: [UInt8] = []
        pixels.reserveCapacity(count * 3 * size * size)
        for k in 0..<count {
            if k % 256 == 0 { progress?(k, count) }
            let which: UInt8 = k >= count - heldOut ? 1 : 0
            var rng = SplitMix64(seed: seed, stream: k)
            let scene = compose(split: which, sameGroup: sameGroup, rng: &rng)
            pixels += scene.image.planes.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
            labels.append(UInt8(scene.label))
            split.append(which)
            let main = sprites.items[scene.members[0]]
            let names = scene.members.map { sprites.items[$0].name }.joined(separator: ", ")
            items.append(DatasetItem(codepoints: main.codepoints, name: "scene: " + names, subgroup: "scene"))
        }
        progress?(count, count)
        return ImageDataset(size: size, classNames: sprites.classNames, labels: labels, split: split,
                            pixels: pixels, items: items)
    }
}

extension SceneComposer {
    /// A scene's own references (docs/METHODS.md §9.3): each sprite it is made of, whole and
    /// centred over white at the scene's size, then `distractors` other sprites of the same split
    /// drawn with `rng`, in a shuffled order. Colorizing a scene from these is ColorFlow's
    /// setting: the characters' colour designs are known, the panel is gray.
    public func references(of scene: Scene, split: UInt8, distractors: Int, rng: inout SplitMix64) -> [RGBImage] {
        var members = Array(Set(scene.members)).sorted()
        let all = pool[Int(split)].flatMap { $0 }
        if !all.isEmpty {
            for _ in 0..<max(0, distractors) { members.append(all[Int(rng.next() % UInt64(all.count))]) }
        }
        for k in stride(from: members.count - 1, to: 0, by: -1) { members.swapAt(k, Int(rng.next() % UInt64(k + 1))) }
        let s = Float(size)
        return members.map { i in
            var image = RGBImage(width: size, height: size, fill: (1, 1, 1))
            paste(i, into: &image, centreX: s / 2, centreY: s / 2, side: size)
            return image
        }
    }
}
