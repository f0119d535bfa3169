#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// CIE L*a*b* (D65, sRGB companding), planar [3, height, width]: L in [0, 100], a and b roughly in [-128, 127].
///
/// Produced by `RGBImage.toLab()`: sRGB values are linearised, mapped to XYZ with the sRGB
/// (IEC 61966-2-1) matrix, and normalised by the D65 white of that same matrix, so RGB white
/// maps to exactly L = 100, a = b = 0 (up to float rounding).
public struct LabImage: Sendable, Equatable {
    /// Width in pixels.
    public let width: Int
    /// Height in pixels.
    public let height: Int
    /// L plane, then a plane, then b plane; `3 * width * height` floats.
    public var planes: [Float]

    /// A Lab image from planar data; `planes.count` must be `3 * width * height`.
    public init(width: Int, height: Int, planes: [Float]) {
        precondition(width >= 0 && height >= 0, "negative image size \(width)x\(height)")
        precondition(planes.count == 3 * width * height,
                     "a \(width)x\(height) image needs \(3 * width * height) floats, got \(planes.count)")
        self.width = width
        self.height = height
        self.planes = planes
    }
}

/// The sRGB <-> XYZ (D65) matrices and the white point, computed once in double precision.
private enum LabConstants {
    /// Linear sRGB to XYZ, rows X, Y, Z (IEC 61966-2-1).
    static let rgbToXYZ: [Double] = [
        0.4124564, 0.3575761, 0.1804375,
        0.2126729, 0.7151522, 0.0721750,
        0.0193339, 0.1191920, 0.9503041,
    ]
    /// XYZ of RGB white under the matrix (≈ D65: 0.95047, 1.0, 1.08883).
    static let white: (Double, Double, Double) = {
        let m = rgbToXYZ
        return (m[0] + m[1] + m[2], m[3] + m[4] + m[5], m[6] + m[7] + m[8])
    }()
    /// The exact inverse of `rgbToXYZ` (adjugate / determinant).
    static let xyzToRGB: [Double] = {
        let m = rgbToXYZ
        let c00 = m[4] * m[8] - m[5] * m[7], c01 = m[5] * m[6] - m[3] * m[8]
        let c02 = m[3] * m[7] - m[4] * m[6]
        let det = m[0] * c00 + m[1] * c01 + m[2] * c02
        return [
            c00 / det, (m[2] * m[7] - m[1] * m[8]) / det, (m[1] * m[5] - m[2] * m[4]) / det,
            c01 / det, (m[0] * m[8] - m[2] * m[6]) / det, (m[2] * m[3] - m[0] * m[5]) / det,
            c02 / det, (m[1] * m[6] - m[0] * m[7]) / det, (m[0] * m[4] - m[1] * m[3]) / det,
        ]
    }()
    static let delta = 6.0 / 29.0
}

@inline(__always) private func srgbToLinear(_ c: Float) -> Float {
    c <= 0.04045 ? c / 12.92 : powf((c + 0.055) / 1.055, 2.4)
}

@inline(__always) private func linearToSRGB(_ c: Float) -> Float {
    c <= 0.0031308 ? 12.92 * c : 1.055 * powf(c, 1 / 2.4) - 0.055
}

@inline(__always) private func labF(_ t: Float) -> Float {
    let d = Float(LabConstants.delta)
    return t > d * d * d ? cbrtf(t) : t / (3 * d * d) + 4.0 / 29.0
}

@inline(__always) private func labFInverse(_ t: Float) -> Float {
    let d = Float(LabConstants.delta)
    return t > d ? t * t * t : 3 * d * d * (t - 4.0 / 29.0)
}

extension RGBImage {
    /// Converts to CIE L*a*b* (D65). Values outside [0, 1] are converted as they are (the
    /// companding curve is applied to negative values through its linear segment).
    public func toLab() -> LabImage {
        let n = width * height
        let m = LabConstants.rgbToXYZ.map { Float($0) }
        let (xn, yn, zn) = LabConstants.white
        let ix = Float(1 / xn), iy = Float(1 / yn), iz = Float(1 / zn)
        var out = [Float](repeating: 0, count: 3 * n)
        planes.withUnsafeBufferPointer { p in
            out.withUnsafeMutableBufferPointer { o in
                for i in 0..<n {
                    let r = srgbToLinear(p[i]), g = srgbToLinear(p[n + i]), b = srgbToLinear(p[2 * n + i])
                    let fx = labF((m[0] * r + m[1] * g + m[2] * b) * ix)
                    let fy = labF((m[3] * r + m[4] * g + m[5] * b) * iy)
                    let fz = labF((m[6] * r + m[7] * g + m[8] * b) * iz)
                    o[i] = 116 * fy - 16
                    o[n + i] = 500 * (fx - fy)
                    o[2 * n + i] = 200 * (fy - fz)
                }
            }
        }
        return LabImage(width: width, height: height, planes: out)
    }
}

/// Lab (as f(Y/Yn) and a, b) to linear sRGB, the part both conversions back to sRGB share.
private struct LabToLinearRGB {
    let m = LabConstants.xyzToRGB.map { Float($0) }
    let wx = Float(LabConstants.white.0), wy = Float(LabConstants.white.1), wz = Float(LabConstants.white.2)

    @inline(__always) func callAsFunction(_ fy: Float, _ a: Float, _ b: Float) -> (Float, Float, Float) {
        let x = labFInverse(fy + a / 500) * wx, y = labFInverse(fy) * wy, z = labFInverse(fy - b / 200) * wz
        return (m[0] * x + m[1] * y + m[2] * z, m[3] * x + m[4] * y + m[5] * z, m[6] * x + m[7] * y + m[8] * z)
    }

    /// A linear channel clamped to [0, 1] and encoded to sRGB in [0, 1].
    @inline(__always) static func encode(_ c: Float) -> Float { min(max(linearToSRGB(min(max(c, 0), 1)), 0), 1) }
}

extension LabImage {
    /// Converts back to sRGB, clamping each channel to [0, 1] (colors outside the sRGB gamut
    /// are clipped per channel).
    public func toRGB() -> RGBImage {
        let n = width * height
        let linear = LabToLinearRGB()
        var out = [Float](repeating: 0, count: 3 * n)
        planes.withUnsafeBufferPointer { p in
            out.withUnsafeMutableBufferPointer { o in
                for i in 0..<n {
                    let c = linear((p[i] + 16) / 116, p[n + i], p[2 * n + i])
                    o[i] = LabToLinearRGB.encode(c.0)
                    o[n + i] = LabToLinearRGB.encode(c.1)
                    o[2 * n + i] = LabToLinearRGB.encode(c.2)
                }
            }
        }
        return RGBImage(width: width, height: height, planes: out)
    }
}

extension LabImage {
    /// Converts back to sRGB keeping L: a pixel whose colour is outside the sRGB gamut has its
    /// chroma (a, b) scaled down towards gray, by bisection on the scale (16 halvings), until
    /// its linear RGB lies in [0, 1]; L itself (clamped to [0, 100]) is never changed, so the
    /// result's L matches up to float rounding. In-gamut pixels convert exactly as `toRGB()`.
    public func toRGBPreservingLightness() -> RGBImage {
        let n = width * height
        let linear = LabToLinearRGB()
        var out = [Float](repeating: 0, count: 3 * n)
        @inline(__always) func inGamut(_ c: (Float, Float, Float)) -> Bool {
            let e: Float = 1e-6
            return c.0 >= -e && c.0 <= 1 + e && c.1 >= -e && c.1 <= 1 + e && c.2 >= -e && c.2 <= 1 + e
        }
        for i in 0..<n {
            let fy = (min(max(planes[i], 0), 100) + 16) / 116
            let a = planes[n + i], b = planes[2 * n + i]
            var c = linear(fy, a, b)
            if !inGamut(c) {
                var lo: Float = 0, hi: Float = 1
                for _ in 0..<16 {
                    let mid = (lo + hi) / 2
                    if inGamut(linear(fy, a * mid, b * mid)) { lo = mid } else { hi = mid }
                }
                c = linear(fy, a * lo, b * lo)
            }
            out[i] = LabToLinearRGB.encode(c.0)
            out[n + i] = LabToLinearRGB.encode(c.1)
            out[2 * n + i] = LabToLinearRGB.encode(c.2)
        }
        return RGBImage(width: width, height: height, planes: out)
    }
}
