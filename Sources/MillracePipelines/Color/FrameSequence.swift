import Foundation
import MillraceImaging

/// Colorizes the frames of a sequence in order, reusing retrieval between similar frames so
/// colours stay stable (`gen colorize DIR`, `gen eval colorize --frames DIR`).
///
/// Each frame's signature is the §9 descriptor of the whole frame's luma (standardized against the
/// pool's reference amplitude). A frame whose signature has cosine ≥ `reuseThreshold` with the
/// signature of the frame whose retrieval is in use reuses that retrieval; otherwise it retrieves
/// afresh and its signature becomes the one compared against (so drift is bounded).
public final class FrameSequenceColorizer {
    public let colorizer: Colorizer
    /// When set, frames are colorized in context by this model (with its fixed noise) from the
    /// retrieval in use, instead of by retrieval alone.
    public let inContext: InContextColorizer?
    /// Cosine similarity of frame signatures above which a frame reuses the retrieval in use.
    public var reuseThreshold: Float
    /// false: every frame retrieves afresh.
    public var reuse: Bool
    /// Frames that reused an earlier retrieval so far.
    public private(set) var reusedCount = 0
    /// In context: σ of the temporal filter on input luma (0: off). Each output pixel's (a, b) is
    /// blended with the previous output's, weight w = exp(−(ΔY/σ)²) with ΔY the change of the
    /// input's luma at that pixel since the previous frame: a pixel whose input did not change
    /// keeps its colour, one that changed takes the new one (L is always the input's).
    public var temporalSigma: Float = 2 / 255
    private var previous: (luma: [Float], a: [Float], b: [Float], width: Int, height: Int)?
    private var current: (signature: [Float], refs: [RetrievedPatch])?

    public init(colorizer: Colorizer, reuseThreshold: Float = 0.95, reuse: Bool = true) {
        self.colorizer = colorizer
        self.inContext = nil
        self.reuseThreshold = reuseThreshold
        self.reuse = reuse
    }

    /// Frames colorized in context by `model` (its own retrieval, `model.colorizer`).
    public init(inContext model: InContextColorizer, reuseThreshold: Float = 0.95, reuse: Bool = true) {
        self.colorizer = model.colorizer
        self.inContext = model
        self.reuseThreshold = reuseThreshold
        self.reuse = reuse
    }

    /// The signature of a frame (unit length; cosine is a dot product).
    public func signature(_ frame: RGBImage) throws -> [Float] {
        if colorizer.pool.patchCount == 0 { try colorizer.pool.index() }
        return PatchDescriptor.descriptor(
            luma: PatchDescriptor.standardLuma(frame, rect: PatchRect(x: 0, y: 0, width: frame.width, height: frame.height)),
            referenceAmplitude: colorizer.pool.referenceAmplitude)
    }

    /// Colorizes the next frame of the sequence.
    public func next(_ frame: RGBImage) throws -> (image: RGBImage, references: [RetrievedPatch], reused: Bool) {
        guard colorizer.mode == .retrieval || inContext != nil else {
            let r = try colorizer.colorize(gray: frame)
            return (r.image, r.references, false)
        }
        let sig = try signature(frame)
        var reusing: [RetrievedPatch]? = nil
        if reuse, let current, current.signature.count == sig.count {
            let cos = zip(sig, current.signature).map(*).reduce(0, +)
            if cos >= reuseThreshold { reusing = current.refs }
        }
        var r = try inContext?.colorize(gray: frame, reusing: reusing) ?? colorizer.colorize(gray: frame, reusing: reusing)
        if reusing == nil { current = (sig, r.references) } else { reusedCount += 1 }
        if inContext != nil && temporalSigma > 0 { r.image = temporalFilter(r.image, input: frame) }
        return (r.image, r.references, reusing != nil)
    }

    /// Blends `output`'s chroma with the previous output's where the input's luma stayed put.
    func temporalFilter(_ output: RGBImage, input: RGBImage) -> RGBImage {
        let luma = input.luma(), n = output.pixelCount
        var lab = output.toLab()
        if let p = previous, p.width == output.width, p.height == output.height {
            let inv = 1 / (temporalSigma * temporalSigma)
            for i in 0..<n {
                let d = luma[i] - p.luma[i], w = exp(-d * d * inv)
                lab.planes[n + i] = w * p.a[i] + (1 - w) * lab.planes[n + i]
                lab.planes[2 * n + i] = w * p.b[i] + (1 - w) * lab.planes[2 * n + i]
            }
        }
        let out = lab.toRGBPreservingLightness()
        let kept = out.toLab()
        previous = (luma, Array(kept.planes[n..<(2 * n)]), Array(kept.planes[(2 * n)...]), output.width, output.height)
        return out
    }

    /// Forgets the retrieval in use (the next frame retrieves afresh) and the previous output.
    public func reset() {
        current = nil
        previous = nil
        reusedCount = 0
    }
}

extension ColorMetrics {
    /// Frame-to-frame chroma variation of a sequence: the mean over consecutive pairs of the RMS
    /// over pixels of the change of (a, b) in Lab units, `√(mean_p (Δa² + Δb²))`. With `staticIn`
    /// (the input frames), only pixels whose input luma did not change between the two frames
    /// (|ΔY| ≤ 0.5/255) count: there the content is static, so any chroma change is flicker.
    /// Pairs without such pixels are skipped. 0 for fewer than 2 frames.
    public static func chromaVariation(_ frames: [RGBImage], staticIn inputs: [RGBImage]? = nil) -> Double {
        guard frames.count >= 2 else { return 0 }
        if let inputs { precondition(inputs.count == frames.count, "chroma variation: frame counts differ") }
        let labs = frames.map { $0.toLab() }, lumas = inputs?.map { $0.luma() }
        var total: Double = 0, pairs = 0
        for t in 1..<frames.count {
            let n = frames[t].pixelCount
            precondition(frames[t - 1].pixelCount == n, "chroma variation: frames of different sizes")
            var s: Double = 0, count = 0
            for p in 0..<n {
                if let lumas {
                    precondition(lumas[t].count == n && lumas[t - 1].count == n, "chroma variation: input sizes differ")
                    if abs(lumas[t][p] - lumas[t - 1][p]) > 0.5 / 255 { continue }
                }
                let da = Double(labs[t].planes[n + p] - labs[t - 1].planes[n + p])
                let db = Double(labs[t].planes[2 * n + p] - labs[t - 1].planes[2 * n + p])
                s += da * da + db * db
                count += 1
            }
            if count > 0 { total += (s / Double(count)).squareRoot(); pairs += 1 }
        }
        return pairs > 0 ? total / Double(pairs) : 0
    }
}
