import Foundation
import MillraceCore
import MillraceImaging

/// Clips of scenes for streams (`gen clips`, docs/STREAMS.md): emoji moving over a background,
/// a still scene under camera noise, and a sketch drawn stroke by stroke as on the page's canvas.
extension SceneComposer {
    /// One moving sprite of a clip: where its centre starts and how far it moves per frame
    /// (in pixels of the clip), and its side.
    public struct Mover: Sendable {
        public var sprite: Int
        public var x: Float, y: Float
        public var dx: Float, dy: Float
        public var side: Int
        public init(sprite: Int, x: Float, y: Float, dx: Float, dy: Float, side: Int) {
            self.sprite = sprite; self.x = x; self.y = y; self.dx = dx; self.dy = dy; self.side = side
        }
    }

    /// `frames` frames of `movers` travelling over `background`, bouncing off the borders (the
    /// centre stays within half a side of the frame). Every frame moves.
    public func movingClip(background: RGBImage, movers: [Mover], frames: Int) -> [RGBImage] {
        var state = movers
        var out: [RGBImage] = []
        for _ in 0..<frames {
            var frame = background
            for m in state { paste(m.sprite, into: &frame, centreX: m.x, centreY: m.y, side: m.side) }
            out.append(frame)
            for k in state.indices {
                var m = state[k]
                let half = Float(m.side) / 2
                m.x += m.dx; m.y += m.dy
                if m.x < half || m.x > Float(background.width) - half { m.dx = -m.dx; m.x = min(max(m.x, half), Float(background.width) - half) }
                if m.y < half || m.y > Float(background.height) - half { m.dy = -m.dy; m.y = min(max(m.y, half), Float(background.height) - half) }
                state[k] = m
            }
        }
        return out
    }

    /// `frames` copies of `image` under independent Gaussian camera noise of standard deviation
    /// `sigma` per value (clamped to [0, 1]), from `seed`.
    public static func noisyStill(_ image: RGBImage, frames: Int, sigma: Float, seed: UInt64) -> [RGBImage] {
        (0..<frames).map { f in
            var rng = SplitMix64(seed: seed, stream: f)
            var frame = image
            for i in frame.planes.indices { frame.planes[i] = min(1, max(0, frame.planes[i] + sigma * rng.nextGaussian())) }
            return frame
        }
    }

    /// A sketch drawn as a user draws on the page's canvas (256×256, white, a round orange pen
    /// 14 px wide, #e8a317): `strokes` are polylines in [0, 1] coordinates; the clip shows them
    /// appear point by point over the first three quarters of `frames`, then holds the drawing.
    public static func sketchClip(strokes: [[(Float, Float)]], frames: Int, side: Int = 256,
                                  pen: Float = 14, ink: (Float, Float, Float) = (232 / 255, 163 / 255, 23 / 255)) -> [RGBImage] {
        let total = strokes.reduce(0) { $0 + max(0, $1.count - 1) }
        let drawingFrames = max(1, frames * 3 / 4)
        var out: [RGBImage] = []
        for f in 0..<frames {
            let shown = min(total, (f + 1) * total / drawingFrames)
            var image = RGBImage(width: side, height: side, fill: (1, 1, 1))
            var left = shown
            for stroke in strokes where left > 0 {
                for k in 0..<max(0, stroke.count - 1) where left > 0 {
                    let a = stroke[k], b = stroke[k + 1]
                    Self.segment(&image, (a.0 * Float(side), a.1 * Float(side)), (b.0 * Float(side), b.1 * Float(side)), width: pen, ink)
                    left -= 1
                }
            }
            out.append(image)
        }
        return out
    }

    /// A round-capped segment of `width` pixels from `a` to `b`.
    static func segment(_ image: inout RGBImage, _ a: (Float, Float), _ b: (Float, Float), width: Float, _ c: (Float, Float, Float)) {
        let r = width / 2, n = image.width * image.height
        let x0 = max(0, Int(min(a.0, b.0) - r)), x1 = min(image.width - 1, Int(max(a.0, b.0) + r))
        let y0 = max(0, Int(min(a.1, b.1) - r)), y1 = min(image.height - 1, Int(max(a.1, b.1) + r))
        guard x0 <= x1, y0 <= y1 else { return }
        let dx = b.0 - a.0, dy = b.1 - a.1, len2 = max(dx * dx + dy * dy, 1e-6)
        for y in y0...y1 {
            for x in x0...x1 {
                let px = Float(x) + 0.5, py = Float(y) + 0.5
                let t = min(1, max(0, ((px - a.0) * dx + (py - a.1) * dy) / len2))
                let ex = a.0 + t * dx - px, ey = a.1 + t * dy - py
                guard ex * ex + ey * ey <= r * r else { continue }
                let o = y * image.width + x
                image.planes[o] = c.0; image.planes[n + o] = c.1; image.planes[2 * n + o] = c.2
            }
        }
    }

    /// Points on an arc of the ellipse centred at (`cx`, `cy`) with radii `rx`, `ry`, from angle
    /// `from` to `to` (radians, 0 along +x, clockwise on screen), `count` points.
    public static func arc(_ cx: Float, _ cy: Float, _ rx: Float, _ ry: Float, from: Float, to: Float, count: Int) -> [(Float, Float)] {
        (0..<count).map { k in
            let a = from + (to - from) * Float(k) / Float(max(1, count - 1))
            return (cx + rx * cos(a), cy + ry * sin(a))
        }
    }
}
