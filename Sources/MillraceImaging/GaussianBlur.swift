import Foundation

/// Gaussian blurs: structure guidance compares coarse luma through one (MillracePipelines'
/// streams), and `gen dataset restyle --palette-blur` scores emoji as a soft drawing would look.
public enum GaussianBlur {
    /// A separable Gaussian blur of one plane, row-major `width`×`height` (radius ⌈3σ⌉, edge
    /// pixels repeated).
    public static func plane(_ x: [Float], width: Int, height: Int, sigma: Float) -> [Float] {
        let r = Int((3 * sigma).rounded(.up))
        var taps = (-r...r).map { Float(exp(-Double($0 * $0) / (2 * Double(sigma * sigma)))) }
        let total = taps.reduce(0, +)
        taps = taps.map { $0 / total }
        var tmp = [Float](repeating: 0, count: x.count), out = tmp
        for y in 0..<height {
            for xx in 0..<width {
                var acc: Float = 0
                for (j, t) in taps.enumerated() { acc += t * x[y * width + min(max(xx + j - r, 0), width - 1)] }
                tmp[y * width + xx] = acc
            }
        }
        for y in 0..<height {
            for xx in 0..<width {
                var acc: Float = 0
                for (j, t) in taps.enumerated() { acc += t * tmp[min(max(y + j - r, 0), height - 1) * width + xx] }
                out[y * width + xx] = acc
            }
        }
        return out
    }
}

extension RGBImage {
    /// Each plane blurred by a Gaussian of σ pixels (`GaussianBlur.plane`).
    public func blurred(sigma: Float) -> RGBImage {
        let n = width * height
        let planes = (0..<3).flatMap { c in
            GaussianBlur.plane(Array(self.planes[(c * n)..<((c + 1) * n)]), width: width, height: height, sigma: sigma)
        }
        return RGBImage(width: width, height: height, planes: planes)
    }
}
