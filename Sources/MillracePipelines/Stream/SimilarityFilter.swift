import MillraceCore
import MillraceImaging
/// The stochastic similarity filter (docs/METHODS.md §7): a frame much like the last processed
/// one is skipped with probability p_skip = max(0, 1 − (1 − cs)/(1 − η)), where cs is the cosine
/// similarity of the two frames' downsampled luma with its mean removed; never more than
/// `maxSkip` in a row.
public struct SimilarityFilter: Sendable {
    /// Similarity threshold η: at cs = 1 a frame is always skipped, at cs ≤ η never.
    public var threshold: Float
    /// Most consecutive skipped frames before one is processed regardless.
    public var maxSkip: Int
    /// Side of the square luma thumbnail compared (`defaultSide` in streams).
    public let side: Int
    var rng: SplitMix64
    var lastProcessed: [Float]?
    var consecutiveSkips = 0
    /// Counters.
    public private(set) var processed = 0, skipped = 0

    public init(threshold: Float = 0.98, maxSkip: Int = 10, side: Int = defaultSide, seed: UInt64) {
        self.threshold = threshold
        self.maxSkip = maxSkip
        self.side = side
        self.rng = SplitMix64(seed: seed ^ 0x5151_F11E)
    }

    /// Cosine similarity (not mean-centred) of two vectors; 1 for two zero vectors.
    public static func cosine(_ a: [Float], _ b: [Float]) -> Float {
        var dot = 0.0, na = 0.0, nb = 0.0
        for i in 0..<a.count {
            dot += Double(a[i]) * Double(b[i])
            na += Double(a[i]) * Double(a[i])
            nb += Double(b[i]) * Double(b[i])
        }
        if na == 0 && nb == 0 { return 1 }
        if na == 0 || nb == 0 { return 0 }
        return Float(dot / (na * nb).squareRoot())
    }

    /// What the filter compares of a frame: its luma on a `side`×`side` thumbnail with its own
    /// mean removed, so the cosine of two signatures is the Pearson correlation of the two
    /// thumbnails. A uniform background then adds nothing to the similarity: in [0, 1] any two
    /// bright frames point the same way, and mapped to [−1, 1] (as the reference compares its
    /// input tensors) a light background still dominates both vectors, so small emoji moving
    /// over it were skipped (29 of 48 frames of the scene clip processed, against 48 centred;
    /// docs/STREAMS.md).
    public static func signature(_ frame: RGBImage, side: Int) -> [Float] {
        let thumb = frame.width == side && frame.height == side ? frame : frame.resizedArea(width: side, height: side)
        let luma = thumb.luma()
        let mean = luma.reduce(0, +) / Float(max(1, luma.count))
        return luma.map { $0 - mean }
    }

    /// Side of the thumbnail streams compare: small enough to average camera noise away, large
    /// enough to see an emoji move by a pixel or two of a 64×64 frame.
    public static let defaultSide = 32

    /// The skip probability for a cosine similarity `cs` (§7).
    public func skipProbability(_ cs: Float) -> Float {
        threshold >= 1 ? 0 : max(0, 1 - (1 - cs) / (1 - threshold))
    }

    /// Decides for a frame (an RGB image of any size): true means skip it. A processed frame
    /// becomes the new comparison point; a skipped one changes nothing but the counters and RNG.
    public mutating func shouldSkip(_ frame: RGBImage) -> Bool {
        let luma = Self.signature(frame, side: side)
        guard let last = lastProcessed else {
            accept(luma)
            return false
        }
        let p = skipProbability(Self.cosine(luma, last))
        let u = rng.nextUnitFloat()
        if u < p && consecutiveSkips < maxSkip {
            consecutiveSkips += 1
            skipped += 1
            return true
        }
        accept(luma)
        return false
    }

    mutating func accept(_ luma: [Float]) {
        lastProcessed = luma
        consecutiveSkips = 0
        processed += 1
    }
}
