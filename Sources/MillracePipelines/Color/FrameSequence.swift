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
        let r = try inContext?.colorize(gray: frame, reusing: reusing) ?? colorizer.colorize(gray: frame, reusing: reusing)
        if reusing == nil { current = (sig, r.references) } else { reusedCount += 1 }
        return (r.image, r.references, reusing != nil)
    }

    /// Forgets the retrieval in use (the next frame retrieves afresh).
    public func reset() {
        current = nil
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
