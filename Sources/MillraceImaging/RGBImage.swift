/// An RGB image held as channel-planar floats, the layout the models consume.
///
/// `RGBImage` is a value type (copy-on-write through its array). Pixel values are nominally in
/// [0, 1]; operations that produce them from other values (resampling, Lab conversion) may
/// leave them slightly outside, and encoders clamp.
public struct RGBImage: Sendable, Equatable {
    /// Width in pixels.
    public let width: Int
    /// Height in pixels.
    public let height: Int
    /// Channel-planar floats in [0, 1]: [3, height, width] (R plane, then G, then B).
    public var planes: [Float]

    /// The largest image `decode` and `load` accept unless told otherwise: 16 megapixels.
    public static let defaultMaxPixels = 16_000_000

    /// An image from planar data; `planes.count` must be `3 * width * height`.
    public init(width: Int, height: Int, planes: [Float]) {
        precondition(width >= 0 && height >= 0, "negative image size \(width)x\(height)")
        precondition(planes.count == 3 * width * height,
                     "a \(width)x\(height) image needs \(3 * width * height) floats, got \(planes.count)")
        self.width = width
        self.height = height
        self.planes = planes
    }

    /// An image of one color.
    public init(width: Int, height: Int, fill: (r: Float, g: Float, b: Float)) {
        precondition(width >= 0 && height >= 0, "negative image size \(width)x\(height)")
        let n = width * height
        var planes = [Float](repeating: fill.r, count: 3 * n)
        for i in n..<(2 * n) { planes[i] = fill.g }
        for i in (2 * n)..<(3 * n) { planes[i] = fill.b }
        self.init(width: width, height: height, planes: planes)
    }

    /// Number of pixels (`width * height`).
    public var pixelCount: Int { width * height }

    /// The (r, g, b) values at column `x`, row `y`.
    public func pixel(x: Int, y: Int) -> (r: Float, g: Float, b: Float) {
        precondition(x >= 0 && x < width && y >= 0 && y < height,
                     "pixel (\(x), \(y)) is outside a \(width)x\(height) image")
        let n = width * height, i = y * width + x
        return (planes[i], planes[n + i], planes[2 * n + i])
    }

    /// Luma 0.299 R + 0.587 G + 0.114 B as a [height, width] plane.
    public func luma() -> [Float] {
        let n = width * height
        var out = [Float](repeating: 0, count: n)
        planes.withUnsafeBufferPointer { p in
            out.withUnsafeMutableBufferPointer { o in
                for i in 0..<n {
                    o[i] = 0.299 * p[i] + 0.587 * p[n + i] + 0.114 * p[2 * n + i]
                }
            }
        }
        return out
    }
}
