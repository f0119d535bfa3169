import Foundation
import MillraceCore
import MillraceImaging

/// Refinement of a colorization by the flow model (`gen colorize --refine`, docs/METHODS.md §1, §9):
/// the model repaints the chroma, starting part-way along the flow, while the input's luminance is
/// kept at every step.
///
/// For inputs in the model's domain (a `sampleSize`² emoji for emoji32); other sizes are area- or
/// bilinear-resized to the model's size for the refinement and only the refined a, b are brought
/// back (bilinear) to full resolution.
///
/// With `t0 = 1 − strength`, the colorized image `x_c` (model space: `s·(2·rgb − 1)`), noise
/// `ε ~ N(0, I)` (seeded) and a uniform grid `t0 = t_0 < … < t_K = 1`:
///
/// 1. `x = t0·x_c + (1 − t0)·ε` (the §1 interpolant at t0).
/// 2. For each step: `v = v_θ(x, t_k, c)` (class c, or the null class); the data estimate
///    `x̂1 = x + (1 − t_k)·v` and source estimate `x̂0 = x − t_k·v`. Replace the luminance of x̂1
///    by the input's: to Lab, set L to the input's L, keep a and b, back to RGB keeping L (chroma
///    reduced where out of gamut) — this is `x̃1`. Re-form `x = t_{k+1}·x̃1 + (1 − t_{k+1})·x̂0`.
///    Without the replacement this is exactly the Euler step `x + (t_{k+1} − t_k)·v`, so the
///    model only ever sees states whose data part has the input's luminance. (Re-forming with
///    the initial ε instead of x̂0 was tried: on the validation emoji it cost 3–6 dB more
///    PSNR(a, b) than this, docs/RESULTS.md.)
/// 3. At t = 1, `x = x̃1`; the output is the input's L at full resolution with x̃1's a, b
///    (upsampled), converted with `LabImage.toRGBPreservingLightness()`, so L is restored exactly.
public struct ChromaRefiner {
    public let model: UNet2DModel
    public let flow: FlowConfig
    /// How much of the flow is rerun: the refinement starts at t = 1 − strength. In (0, 1].
    public var strength: Float = 0.3
    /// Euler steps between 1 − strength and 1.
    public var steps: Int = 10
    /// Class to condition on; nil: the null class (unconditional).
    public var classIndex: Int? = nil
    /// Classifier-free guidance scale (only used with a class).
    public var guidance: Float = 1
    /// Seed of the noise ε (image i of a batch uses the i-th stream of `GaussianSource`).
    public var seed: UInt64 = 0

    public init(model: UNet2DModel, flow: FlowConfig) {
        self.model = model
        self.flow = flow
    }

    public init(folder: ModelFolder) {
        self.init(model: folder.model, flow: folder.flow)
    }

    /// Refines one colorized image; the luminance kept is that of `gray` (turned gray first).
    public func refine(colorized: RGBImage, gray: RGBImage) throws -> RGBImage {
        try refine(colorized: [colorized], gray: [gray])[0]
    }

    /// Refines a batch (one model call per step for all images). `colorized[i]` and `gray[i]`
    /// must have the same size.
    public func refine(colorized: [RGBImage], gray: [RGBImage]) throws -> [RGBImage] {
        guard colorized.count == gray.count else {
            throw ColorError.invalidInput("refine: \(colorized.count) colorized images but \(gray.count) gray ones")
        }
        guard !colorized.isEmpty else { return [] }
        guard strength > 0 && strength <= 1 else { throw ColorError.invalidInput("refine: strength must be in (0, 1], got \(strength)") }
        guard steps >= 1 else { throw ColorError.invalidInput("refine: steps must be at least 1, got \(steps)") }
        let c = model.config
        guard c.inChannels == 3, c.outChannels == 3 else {
            throw ColorError.unsupportedModel("refine needs an RGB model (3 input and output channels), this one has \(c.inChannels) → \(c.outChannels)")
        }
        if let k = classIndex {
            guard let n = c.numClassEmbeds, k >= 0, k < n else {
                throw ColorError.invalidInput("refine: class \(k) is not a class of this model")
            }
        }
        for (x, g) in zip(colorized, gray) where x.width != g.width || x.height != g.height {
            throw ColorError.invalidInput("refine: colorized image is \(x.width)x\(x.height) but the gray input is \(g.width)x\(g.height)")
        }
        let side = c.sampleSize, n = side * side, count = colorized.count
        let scale = Float(flow.normScale)
        func toModelSize(_ image: RGBImage) -> RGBImage {
            if image.width == side && image.height == side { return image }
            return image.width >= side && image.height >= side
                ? image.resizedArea(width: side, height: side) : image.resizedBilinear(width: side, height: side)
        }
        // Target luminance at model size, per image.
        let targetL: [[Float]] = gray.map { Array(toModelSize(Colorizer.grayscale($0)).toLab().planes[0..<n]) }
        let xc = try Tensor(images: colorized.map(toModelSize), scale: scale)
        // The data estimate with the input's luminance (in place, model space).
        func keepLuminance(_ x: inout Tensor) {
            let fixed = try! RGBImage.batch(from: x, scale: scale).enumerated().map { i, rgb in  // x is [count, 3, side, side]
                var lab = rgb.toLab()
                lab.planes.replaceSubrange(0..<n, with: targetL[i])
                return lab.toRGBPreservingLightness()
            }
            x = try! Tensor(images: fixed, scale: scale)
        }
        let sampler = FlowSampler(model: model, flow: flow)
        let labels: [Int]? = c.numClassEmbeds == nil ? nil : [Int](repeating: classIndex ?? flow.nullClass ?? 0, count: count)
        let g: Float = classIndex == nil ? 1 : guidance
        let t0 = 1 - strength
        let grid = (0...steps).map { t0 + (1 - t0) * Float($0) / Float(steps) }
        let noise = GaussianSource.draw(count: count, shape: [3, side, side], seed: seed)
        var x = xc.scaled(t0)
        x.addScaled(noise, 1 - t0)
        var x1 = xc
        for k in 0..<steps {
            let t = grid[k], tn = k + 1 == steps ? 1 : grid[k + 1]
            let v = sampler.velocity(x, t: [Float](repeating: t, count: count), labels: labels, guidance: g)
            x1 = x
            x1.addScaled(v, 1 - t)
            var x0 = x
            x0.addScaled(v, -t)
            keepLuminance(&x1)
            x = x1.scaled(tn)
            x.addScaled(x0, 1 - tn)
        }
        // Full-resolution output: the input's L with the refined a, b.
        return try RGBImage.batch(from: x1, scale: scale).enumerated().map { i, rgb in
            let lab = rgb.toLab()
            let a = Array(lab.planes[n..<(2 * n)]), b = Array(lab.planes[(2 * n)..<(3 * n)])
            return Colorizer.compose(gray: Colorizer.grayscale(gray[i]), a: a, b: b, width: side, height: side)
        }
    }
}
