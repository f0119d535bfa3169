import MillraceCore

// The one conversion between pictures and model tensors. A picture's planes hold R, G, B in
// [0, 1]; a model sees each pixel as p·2 − 1 in [−1, 1], times the model's norm scale `scale`
// (flow.json's norm_scale, 1 for most models). The way back divides by the scale, maps to
// [0, 1] and clamps.

extension Tensor {
    /// A batch [B, 3, H, W] of `images`, all of one size, in model space: (2p − 1)·scale.
    /// Pixels outside [0, 1] are clamped first.
    public init(images: [RGBImage], scale: Float = 1) throws {
        guard let first = images.first else { throw ImageError.emptyImage }
        let (w, h) = (first.width, first.height)
        guard images.allSatisfy({ $0.width == w && $0.height == h }) else {
            throw ImageError.io("a batch of images must share one size; got \(images.map { "\($0.width)x\($0.height)" })")
        }
        let per = 3 * w * h
        var data = [Float](repeating: 0, count: images.count * per)
        data.withUnsafeMutableBufferPointer { out in
            for (i, image) in images.enumerated() {
                image.planes.withUnsafeBufferPointer { p in
                    for j in 0..<per { out[i * per + j] = (2 * Swift.min(Swift.max(p[j], 0), 1) - 1) * scale }
                }
            }
        }
        self.init(shape: [images.count, 3, h, w], data: data)
    }
}

extension RGBImage {
    /// The pictures of a batch [B, 3, H, W] in model space (values in [−scale, scale]):
    /// (x/scale + 1)/2, clamped to [0, 1]. A tensor that is not a batch of RGB images (a latent
    /// model's 4 channels, a wrong rank) is an error, never a trap.
    public static func batch(from x: Tensor, scale: Float = 1) throws -> [RGBImage] {
        guard x.rank == 4, x.shape[1] == 3, x.shape[2] > 0, x.shape[3] > 0 else {
            throw ImageError.notAnImageBatch(shape: x.shape)
        }
        let (b, h, w) = (x.shape[0], x.shape[2], x.shape[3])
        let per = 3 * h * w
        let inverse = 1 / scale
        return x.data.withUnsafeBufferPointer { d in
            (0..<b).map { i in
                var planes = [Float](repeating: 0, count: per)
                for j in 0..<per { planes[j] = Swift.min(Swift.max((d[i * per + j] * inverse + 1) / 2, 0), 1) }
                return RGBImage(width: w, height: h, planes: planes)
            }
        }
    }
}
