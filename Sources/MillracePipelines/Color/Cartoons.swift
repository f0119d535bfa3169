import Foundation
import MillraceCore
import MillraceImaging

/// A shape of a cartoon drawing, in output-pixel coordinates (x right, y down).
public enum CartoonShape: Sendable {
    case circle(cx: Float, cy: Float, r: Float)
    case ellipse(cx: Float, cy: Float, rx: Float, ry: Float)
    /// Axis-aligned rectangle with rounded corners of radius `corner`.
    case rect(x: Float, y: Float, w: Float, h: Float, corner: Float)
    /// A closed polygon (any winding).
    case polygon([(Float, Float)])
    /// A segment from (x0, y0) to (x1, y1) thickened to radius `r` (round caps).
    case capsule(x0: Float, y0: Float, x1: Float, y1: Float, r: Float)

    /// Signed distance at (px, py): negative inside. Exact except for the ellipse (a close
    /// approximation, good enough for outlines).
    func distance(_ px: Float, _ py: Float) -> Float {
        switch self {
        case let .circle(cx, cy, r):
            let dx = px - cx, dy = py - cy
            return (dx * dx + dy * dy).squareRoot() - r
        case let .ellipse(cx, cy, rx, ry):
            let x = px - cx, y = py - cy
            let k0 = ((x / rx) * (x / rx) + (y / ry) * (y / ry)).squareRoot()
            let k1 = ((x / (rx * rx)) * (x / (rx * rx)) + (y / (ry * ry)) * (y / (ry * ry))).squareRoot()
            return k1 > 1e-6 ? k0 * (k0 - 1) / k1 : -min(rx, ry)
        case let .rect(x, y, w, h, corner):
            let hx = w / 2 - corner, hy = h / 2 - corner
            let qx = abs(px - (x + w / 2)) - hx, qy = abs(py - (y + h / 2)) - hy
            let ox = max(qx, 0), oy = max(qy, 0)
            return (ox * ox + oy * oy).squareRoot() + min(max(qx, qy), 0) - corner
        case let .capsule(x0, y0, x1, y1, r):
            let ex = x1 - x0, ey = y1 - y0, wx = px - x0, wy = py - y0
            let len2 = ex * ex + ey * ey
            let t = len2 > 0 ? min(1, max(0, (wx * ex + wy * ey) / len2)) : 0
            let dx = wx - t * ex, dy = wy - t * ey
            return (dx * dx + dy * dy).squareRoot() - r
        case let .polygon(v):
            guard v.count >= 3 else { return .infinity }
            var d = (px - v[0].0) * (px - v[0].0) + (py - v[0].1) * (py - v[0].1)
            var s: Float = 1
            var j = v.count - 1
            for i in 0..<v.count {
                let ex = v[j].0 - v[i].0, ey = v[j].1 - v[i].1
                let wx = px - v[i].0, wy = py - v[i].1
                let t = min(1, max(0, (wx * ex + wy * ey) / max(ex * ex + ey * ey, 1e-12)))
                let bx = wx - ex * t, by = wy - ey * t
                d = min(d, bx * bx + by * by)
                let c1 = py >= v[i].1, c2 = py < v[j].1, c3 = ex * wy > ey * wx
                if (c1 && c2 && c3) || (!c1 && !c2 && !c3) { s = -s }
                j = i
            }
            return s * d.squareRoot()
        }
    }

    /// A bounding box (x0, y0, x1, y1), before outlines.
    var bounds: (Float, Float, Float, Float) {
        switch self {
        case let .circle(cx, cy, r): return (cx - r, cy - r, cx + r, cy + r)
        case let .ellipse(cx, cy, rx, ry): return (cx - rx, cy - ry, cx + rx, cy + ry)
        case let .rect(x, y, w, h, _): return (x, y, x + w, y + h)
        case let .capsule(x0, y0, x1, y1, r): return (min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
        case let .polygon(v):
            return (v.map(\.0).min() ?? 0, v.map(\.1).min() ?? 0, v.map(\.0).max() ?? 0, v.map(\.1).max() ?? 0)
        }
    }
}

/// A canvas for flat-colour cartoon drawings with dark outlines, rendered with `supersample`²
/// samples per pixel and area-averaged, so edges are anti-aliased. Everything is plain
/// arithmetic in a fixed order: the same calls give the same pixels (and PNG bytes) every time.
public struct CartoonCanvas {
    public let width: Int, height: Int, supersample: Int
    /// Colour of outlines.
    public var ink: (Float, Float, Float) = (0.13, 0.11, 0.12)
    private var fine: [Float]
    private var fw: Int { width * supersample }
    private var fh: Int { height * supersample }

    public init(width: Int, height: Int, supersample: Int = 4, background: (Float, Float, Float) = (1, 1, 1)) {
        precondition(width > 0 && height > 0 && supersample > 0)
        self.width = width; self.height = height; self.supersample = supersample
        let n = width * supersample * height * supersample
        fine = [Float](repeating: background.0, count: n) + [Float](repeating: background.1, count: n)
            + [Float](repeating: background.2, count: n)
    }

    /// Paints `shape` with `color` and an outline `outline` pixels wide centred on its edge
    /// (0: none). Later shapes cover earlier ones.
    public mutating func fill(_ shape: CartoonShape, _ color: (Float, Float, Float), outline: Float = 1.2) {
        let half = outline / 2
        let (bx0, by0, bx1, by1) = shape.bounds
        let s = Float(supersample), n = fw * fh
        let x0 = max(0, Int(((bx0 - half - 1) * s).rounded(.down))), x1 = min(fw - 1, Int(((bx1 + half + 1) * s).rounded(.up)))
        let y0 = max(0, Int(((by0 - half - 1) * s).rounded(.down))), y1 = min(fh - 1, Int(((by1 + half + 1) * s).rounded(.up)))
        guard x0 <= x1, y0 <= y1 else { return }
        for y in y0...y1 {
            let py = (Float(y) + 0.5) / s
            for x in x0...x1 {
                let d = shape.distance((Float(x) + 0.5) / s, py)
                let c: (Float, Float, Float)
                if d < -half { c = color } else if d < half && outline > 0 { c = ink } else { continue }
                let p = y * fw + x
                fine[p] = c.0; fine[n + p] = c.1; fine[2 * n + p] = c.2
            }
        }
    }

    /// The drawing at its output size.
    public func image() -> RGBImage {
        let big = RGBImage(width: fw, height: fh, planes: fine)
        return supersample == 1 ? big : big.resizedArea(width: width, height: height)
    }
}

/// Procedural cartoon drawings (flat colours, dark outlines) for the shipped reference pool and the
/// cartoon sample clip (`gen references`). Each `draw…` function paints into a box given by its
/// top-left corner and side, in pixels, so the same object can be drawn at any place and scale.
public enum Cartoons {
    public typealias Color = (Float, Float, Float)
    public static let sunYellow: Color = (1.0, 0.84, 0.2), sunOrange: Color = (0.98, 0.58, 0.12)
    public static let sky: Color = (0.55, 0.8, 0.97), grass: Color = (0.42, 0.75, 0.28), hill: Color = (0.3, 0.62, 0.25)
    public static let wall: Color = (0.96, 0.85, 0.62), roof: Color = (0.82, 0.2, 0.16), door: Color = (0.55, 0.33, 0.16)
    public static let glass: Color = (0.68, 0.88, 1.0), trunk: Color = (0.52, 0.33, 0.17), leaves: Color = (0.2, 0.62, 0.22)
    public static let carRed: Color = (0.88, 0.16, 0.18), tyre: Color = (0.2, 0.2, 0.22), hub: Color = (0.8, 0.8, 0.82)
    public static let fishOrange: Color = (0.98, 0.52, 0.1), water: Color = (0.2, 0.5, 0.85)
    public static let petal: Color = (0.95, 0.4, 0.68), stem: Color = (0.28, 0.62, 0.2), white: Color = (1, 1, 1)

    public static func drawSun(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float) {
        let cx = x + s / 2, cy = y + s / 2
        for k in 0..<8 {
            let a = Float(k) * Float.pi / 4
            c.fill(.capsule(x0: cx + cos(a) * s * 0.3, y0: cy + sin(a) * s * 0.3,
                            x1: cx + cos(a) * s * 0.44, y1: cy + sin(a) * s * 0.44, r: s * 0.04), sunOrange)
        }
        c.fill(.circle(cx: cx, cy: cy, r: s * 0.25), sunYellow)
    }

    public static func drawHouse(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float) {
        c.fill(.rect(x: x + s * 0.62, y: y + s * 0.12, w: s * 0.1, h: s * 0.25, corner: 0), (0.6, 0.3, 0.25))
        c.fill(.rect(x: x + s * 0.18, y: y + s * 0.45, w: s * 0.64, h: s * 0.47, corner: 0), wall)
        c.fill(.polygon([(x + s * 0.08, y + s * 0.47), (x + s * 0.5, y + s * 0.1), (x + s * 0.92, y + s * 0.47)]), roof)
        c.fill(.rect(x: x + s * 0.43, y: y + s * 0.64, w: s * 0.16, h: s * 0.28, corner: s * 0.02), door)
        c.fill(.rect(x: x + s * 0.24, y: y + s * 0.56, w: s * 0.14, h: s * 0.14, corner: 0), glass)
        c.fill(.rect(x: x + s * 0.64, y: y + s * 0.56, w: s * 0.12, h: s * 0.14, corner: 0), glass)
    }

    public static func drawTree(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float) {
        c.fill(.rect(x: x + s * 0.43, y: y + s * 0.5, w: s * 0.14, h: s * 0.44, corner: 0), trunk)
        c.fill(.circle(cx: x + s * 0.33, cy: y + s * 0.42, r: s * 0.2), leaves)
        c.fill(.circle(cx: x + s * 0.67, cy: y + s * 0.42, r: s * 0.2), leaves)
        c.fill(.circle(cx: x + s * 0.5, cy: y + s * 0.27, r: s * 0.23), leaves)
    }

    public static func drawCar(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float, body: Color = carRed) {
        c.fill(.polygon([(x + s * 0.26, y + s * 0.52), (x + s * 0.34, y + s * 0.3), (x + s * 0.66, y + s * 0.3),
                         (x + s * 0.76, y + s * 0.52)]), body)
        c.fill(.polygon([(x + s * 0.33, y + s * 0.5), (x + s * 0.38, y + s * 0.35), (x + s * 0.48, y + s * 0.35),
                         (x + s * 0.48, y + s * 0.5)]), glass, outline: s * 0.015)
        c.fill(.polygon([(x + s * 0.53, y + s * 0.5), (x + s * 0.53, y + s * 0.35), (x + s * 0.63, y + s * 0.35),
                         (x + s * 0.69, y + s * 0.5)]), glass, outline: s * 0.015)
        c.fill(.rect(x: x + s * 0.06, y: y + s * 0.5, w: s * 0.88, h: s * 0.2, corner: s * 0.06), body)
        for wx in [Float(0.27), 0.73] {
            c.fill(.circle(cx: x + s * wx, cy: y + s * 0.72, r: s * 0.11), tyre)
            c.fill(.circle(cx: x + s * wx, cy: y + s * 0.72, r: s * 0.045), hub, outline: 0)
        }
    }

    public static func drawFish(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float) {
        c.fill(.polygon([(x + s * 0.62, y + s * 0.5), (x + s * 0.92, y + s * 0.28), (x + s * 0.92, y + s * 0.72)]), fishOrange)
        c.fill(.polygon([(x + s * 0.38, y + s * 0.32), (x + s * 0.5, y + s * 0.18), (x + s * 0.6, y + s * 0.34)]), sunYellow)
        c.fill(.ellipse(cx: x + s * 0.42, cy: y + s * 0.5, rx: s * 0.3, ry: s * 0.19), fishOrange)
        c.fill(.capsule(x0: x + s * 0.5, y0: y + s * 0.36, x1: x + s * 0.5, y1: y + s * 0.64, r: s * 0.035), white, outline: 0)
        c.fill(.circle(cx: x + s * 0.26, cy: y + s * 0.45, r: s * 0.06), white)
        c.fill(.circle(cx: x + s * 0.25, cy: y + s * 0.45, r: s * 0.025), (0.05, 0.05, 0.05), outline: 0)
    }

    public static func drawFlower(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float) {
        c.fill(.capsule(x0: x + s * 0.5, y0: y + s * 0.45, x1: x + s * 0.5, y1: y + s * 0.95, r: s * 0.035), stem)
        c.fill(.ellipse(cx: x + s * 0.36, cy: y + s * 0.75, rx: s * 0.12, ry: s * 0.05), stem)
        c.fill(.ellipse(cx: x + s * 0.64, cy: y + s * 0.68, rx: s * 0.12, ry: s * 0.05), stem)
        let cx = x + s * 0.5, cy = y + s * 0.33
        for k in 0..<6 {
            let a = Float(k) * Float.pi / 3
            c.fill(.circle(cx: cx + cos(a) * s * 0.15, cy: cy + sin(a) * s * 0.15, r: s * 0.1), petal)
        }
        c.fill(.circle(cx: cx, cy: cy, r: s * 0.09), sunYellow)
    }

    public static func drawCloud(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float) {
        c.fill(.ellipse(cx: x + s * 0.5, cy: y + s * 0.58, rx: s * 0.4, ry: s * 0.14), white)
        c.fill(.circle(cx: x + s * 0.38, cy: y + s * 0.5, r: s * 0.15), white)
        c.fill(.circle(cx: x + s * 0.58, cy: y + s * 0.44, r: s * 0.19), white)
        c.fill(.ellipse(cx: x + s * 0.5, cy: y + s * 0.6, rx: s * 0.37, ry: s * 0.1), white, outline: 0)
    }

    public static func drawBoat(_ c: inout CartoonCanvas, x: Float, y: Float, side s: Float) {
        c.fill(.rect(x: x, y: y + s * 0.72, w: s, h: s * 0.28, corner: 0), water, outline: 0)
        c.fill(.capsule(x0: x + s * 0.5, y0: y + s * 0.12, x1: x + s * 0.5, y1: y + s * 0.68, r: s * 0.02), trunk)
        c.fill(.polygon([(x + s * 0.54, y + s * 0.14), (x + s * 0.84, y + s * 0.62), (x + s * 0.54, y + s * 0.62)]), white)
        c.fill(.polygon([(x + s * 0.46, y + s * 0.24), (x + s * 0.46, y + s * 0.62), (x + s * 0.22, y + s * 0.62)]), sunYellow)
        c.fill(.polygon([(x + s * 0.1, y + s * 0.66), (x + s * 0.9, y + s * 0.66), (x + s * 0.76, y + s * 0.84),
                         (x + s * 0.24, y + s * 0.84)]), door)
    }

    /// Sky, a hill, grass: the backdrop of the landscape drawing and of the clip.
    public static func drawBackdrop(_ c: inout CartoonCanvas, horizon: Float) {
        let w = Float(c.width), h = Float(c.height)
        c.fill(.rect(x: -2, y: -2, w: w + 4, h: h + 4, corner: 0), sky, outline: 0)
        c.fill(.ellipse(cx: w * 0.75, cy: horizon + h * 0.05, rx: w * 0.45, ry: h * 0.22), hill)
        c.fill(.rect(x: -4, y: horizon, w: w + 8, h: h - horizon + 4, corner: 0), grass)
    }

    /// The reference drawings of the shipped pool: (name, image), `side`×`side` each.
    public static func referenceDrawings(side: Int = 64) -> [(String, RGBImage)] {
        let s = Float(side)
        typealias Draw = (inout CartoonCanvas, Float, Float, Float) -> Void
        let objects: [(String, Draw)] = [
            ("sun", { drawSun(&$0, x: $1, y: $2, side: $3) }), ("house", { drawHouse(&$0, x: $1, y: $2, side: $3) }),
            ("tree", { drawTree(&$0, x: $1, y: $2, side: $3) }), ("car", { drawCar(&$0, x: $1, y: $2, side: $3) }),
            ("fish", { drawFish(&$0, x: $1, y: $2, side: $3) }), ("flower", { drawFlower(&$0, x: $1, y: $2, side: $3) }),
            ("boat", { drawBoat(&$0, x: $1, y: $2, side: $3) }),
        ]
        var out: [(String, RGBImage)] = objects.map { name, draw in
            var c = CartoonCanvas(width: side, height: side)
            draw(&c, 0, 0, s)
            return (name, c.image())
        }
        // Two small scenes on a backdrop, so sky and grass have references too.
        var land = CartoonCanvas(width: side, height: side)
        drawBackdrop(&land, horizon: s * 0.68)
        drawCloud(&land, x: s * 0.02, y: s * 0.02, side: s * 0.45)
        drawSun(&land, x: s * 0.62, y: s * 0.02, side: s * 0.34)
        drawFlower(&land, x: s * 0.12, y: s * 0.6, side: s * 0.3)
        out.append(("landscape", land.image()))
        var sea = CartoonCanvas(width: side, height: side, background: sky)
        drawCloud(&sea, x: s * 0.5, y: s * 0.02, side: s * 0.42)
        drawFish(&sea, x: s * 0.1, y: s * 0.66, side: s * 0.3)
        drawBoat(&sea, x: 0, y: s * 0.2, side: s * 0.8)
        sea.fill(.rect(x: -2, y: s * 0.76, w: s + 4, h: s * 0.3, corner: 0), water, outline: 0)
        drawFish(&sea, x: s * 0.55, y: s * 0.72, side: s * 0.3)
        out.append(("seaside", sea.image()))
        out += scenes(count: 24, side: side)
        return out
    }

    /// `count` small scenes with seeded random layouts (backdrop, sun, clouds, and some of house,
    /// tree, car, flower; every third one a seaside with a boat and fish), alternately
    /// `side`×`side` and 3·side/2 × side, named scene-01 …. Deterministic (SplitMix64, seed 7).
    public static func scenes(count: Int, side: Int = 64, seed: UInt64 = 7) -> [(String, RGBImage)] {
        var rng = SplitMix64(seed: seed)
        func u(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * rng.nextUnitFloat() }
        return (0..<count).map { k in
            let width = k % 2 == 0 ? side : 3 * side / 2
            let w = Float(width), h = Float(side)
            var c = CartoonCanvas(width: width, height: side)
            let horizon = h * u(0.55, 0.75)
            if k % 3 == 2 {
                c.fill(.rect(x: -2, y: -2, w: w + 4, h: h + 4, corner: 0), sky, outline: 0)
                drawBoat(&c, x: w * u(0, 0.5), y: horizon - h * 0.55, side: h * 0.7)
                c.fill(.rect(x: -2, y: horizon, w: w + 4, h: h, corner: 0), water, outline: 0)
                drawFish(&c, x: w * u(0, 0.6), y: horizon + h * 0.05, side: h * 0.28)
            } else {
                drawBackdrop(&c, horizon: horizon)
            }
            let sunSide = h * u(0.25, 0.4)
            drawSun(&c, x: rng.next() % 2 == 0 ? 0 : w - sunSide, y: 0, side: sunSide)
            for _ in 0..<Int(rng.next() % 3) { drawCloud(&c, x: w * u(0.1, 0.7), y: h * u(-0.05, 0.15), side: h * u(0.25, 0.4)) }
            if k % 3 != 2 {
                if rng.next() % 3 != 0 { let s = h * u(0.35, 0.55); drawHouse(&c, x: w * u(0, 0.6), y: horizon - s * 0.85, side: s) }
                if rng.next() % 3 != 0 { let s = h * u(0.35, 0.55); drawTree(&c, x: w * u(0, 0.7), y: horizon - s * 0.8, side: s) }
                if rng.next() % 2 == 0 { let s = h * u(0.2, 0.3); drawFlower(&c, x: w * u(0, 0.8), y: h - s * 1.05, side: s) }
                if rng.next() % 3 != 0 { let s = h * u(0.35, 0.5); drawCar(&c, x: w * u(-0.1, 0.7), y: h - s * 0.9, side: s) }
            }
            return (String(format: "scene-%02d", k + 1), c.image())
        }
    }

    /// A moving cartoon: a car drives left to right past a house and a tree under a drifting
    /// cloud and a sun; `frames` frames of `width`×`height`. Deterministic.
    public static func clip(frames: Int = 48, width: Int = 96, height: Int = 64) -> [RGBImage] {
        let w = Float(width), h = Float(height)
        return (0..<frames).map { f in
            let t = frames > 1 ? Float(f) / Float(frames - 1) : 0
            var c = CartoonCanvas(width: width, height: height)
            drawBackdrop(&c, horizon: h * 0.62)
            drawSun(&c, x: w * 0.02, y: h * 0.02, side: h * 0.34)
            drawCloud(&c, x: w * (0.3 + 0.25 * t), y: h * 0.0, side: h * 0.36)
            drawHouse(&c, x: w * 0.5, y: h * 0.2, side: h * 0.5)
            drawTree(&c, x: w * 0.78, y: h * 0.24, side: h * 0.46)
            drawCar(&c, x: -h * 0.45 + (w + h * 0.05) * t, y: h * 0.55, side: h * 0.45)
            return c.image()
        }
    }
}
