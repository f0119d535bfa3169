import CKissFFT
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import MillraceCore
import MillraceImaging

/// An error from the colour tools (batch style standardization, reference pools, colorization).
/// Why colorization or BSS refused its input.
public enum ColorError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Images or parameters that cannot be used (sizes, counts, strength, ratios, a class).
    case invalidInput(String)
    /// The model cannot do it (refinement needs an RGB model).
    case unsupportedModel(String)
    /// The reference pool is missing, empty, unreadable or not indexed.
    case referencePool(String)

    /// What went wrong, in words meant for the user.
    public var message: String {
        switch self { case .invalidInput(let m), .unsupportedModel(let m), .referencePool(let m): return m }
    }
    public var description: String { message }
}

/// A 2-D discrete Fourier transform of one real plane, on KissFFT.
///
/// KissFFT (`kiss_fftnd`, single-precision complex) is used because it is small, maintained in
/// Debian (libkissfft-dev), mixed-radix (any height and width, not only powers of two) and
/// BSD-licensed. The forward transform is unnormalised; `inverse` divides by `height * width`,
/// so `inverse(forward(x))` gives back `x` up to float rounding.
public struct FFT2D {
    /// Rows of the transformed planes.
    public let height: Int
    /// Columns of the transformed planes.
    public let width: Int

    /// Whether KissFFT transforms a side of `n` quickly: its prime factors are all 2, 3 or 5
    /// (KissFFT's own radices). Other factors take a generic pass of cost p² per factor p, so a
    /// prime side such as 1021 costs hundreds of times more than 1024.
    public static func isFast(_ n: Int) -> Bool {
        guard n >= 1 else { return false }
        var m = n
        for p in [2, 3, 5] { while m % p == 0 { m /= p } }
        return m == 1
    }

    /// The smallest side ≥ `n` that `isFast`.
    public static func fastSize(atLeast n: Int) -> Int {
        var m = max(1, n)
        while !isFast(m) { m += 1 }
        return m
    }

    public init(height: Int, width: Int) {
        precondition(height >= 1 && width >= 1, "FFT of an empty plane \(width)x\(height)")
        self.height = height
        self.width = width
    }

    /// Interleaved (re, im) spectrum of a real row-major [height, width] plane: `2 * height * width` floats.
    public func forward(_ plane: [Float]) -> [Float] {
        precondition(plane.count == height * width, "plane has \(plane.count) values, want \(height * width)")
        var complex = [Float](repeating: 0, count: 2 * plane.count)
        for i in 0..<plane.count { complex[2 * i] = plane[i] }
        return transform(complex, inverse: false)
    }

    /// Inverse transform of an interleaved spectrum, divided by `height * width`; interleaved (re, im).
    public func inverse(_ spectrum: [Float]) -> [Float] {
        var out = transform(spectrum, inverse: true)
        let scale = 1 / Float(height * width)
        for i in 0..<out.count { out[i] *= scale }
        return out
    }

    /// Amplitudes |F| of a real plane's spectrum, unshifted (zero frequency at index 0).
    public func amplitudes(_ plane: [Float]) -> [Float] {
        let s = forward(plane)
        var out = [Float](repeating: 0, count: height * width)
        for k in 0..<out.count {
            let re = s[2 * k], im = s[2 * k + 1]
            out[k] = (re * re + im * im).squareRoot()
        }
        return out
    }

    private func transform(_ input: [Float], inverse: Bool) -> [Float] {
        precondition(input.count == 2 * height * width, "spectrum has \(input.count) floats, want \(2 * height * width)")
        var dims: [Int32] = [Int32(height), Int32(width)]
        guard let cfg = kiss_fftnd_alloc(&dims, 2, inverse ? 1 : 0, nil, nil) else {
            fatalError("kiss_fftnd_alloc failed for \(width)x\(height)")
        }
        defer { free(UnsafeMutableRawPointer(cfg)) }
        var out = [Float](repeating: 0, count: input.count)
        input.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                kiss_fftnd(cfg, src.baseAddress!.assumingMemoryBound(to: kiss_fft_cpx.self),
                           dst.baseAddress!.assumingMemoryBound(to: kiss_fft_cpx.self))
            }
        }
        return out
    }
}

/// Batch Styles Standardization (docs/METHODS.md §8): every image of a batch takes the low-frequency
/// Fourier amplitude of one reference image of the batch and keeps its own phase, so colour and
/// global style become those of the reference while content (phase) stays.
///
/// Per image and channel: 2-D DFT `F = A·e^{iφ}`; with the zero frequency shifted to (⌊H/2⌋, ⌊W/2⌋),
/// the window is the centred rectangle of `h = max(1, round(√r·H))` rows starting at row
/// ⌊H/2⌋ − ⌊h/2⌋ and likewise `w` columns; inside it A is replaced by the reference's amplitude;
/// φ is kept (a zero coefficient gets phase 0); inverse DFT, real part, clip to [0, 1].
/// The shift is never materialised: shifted row k is unshifted frequency k − ⌊H/2⌋ (mod H), so the
/// window is the unshifted frequencies −⌊h/2⌋ ..< h − ⌊h/2⌋ (mod H), and likewise for columns.
public enum BatchStyleStandardization {
    /// The window in shifted coordinates: first row, row count, first column, column count.
    public static func window(height: Int, width: Int, ratio r: Double)
        -> (row0: Int, rows: Int, col0: Int, cols: Int) {
        let s = r.squareRoot()
        let h = min(height, max(1, Int((s * Double(height)).rounded()))), w = min(width, max(1, Int((s * Double(width)).rounded())))
        return (height / 2 - h / 2, h, width / 2 - w / 2, w)
    }

    /// Whether unshifted frequency (u, v) lies inside the window of `ratio`.
    public static func inWindow(u: Int, v: Int, height: Int, width: Int, ratio r: Double) -> Bool {
        let win = window(height: height, width: width, ratio: r)
        // Shifted index of unshifted frequency u is (u + ⌊H/2⌋) mod H.
        let ku = (u + height / 2) % height, kv = (v + width / 2) % width
        return ku >= win.row0 && ku < win.row0 + win.rows && kv >= win.col0 && kv < win.col0 + win.cols
    }

    /// §8 on a batch: every image takes image `j`'s amplitude inside the window of area ratio `r`;
    /// results are clipped to [0, 1].
    public static func apply(images: [RGBImage], reference j: Int, ratio r: Double) throws -> [RGBImage] {
        try applyUnclipped(images: images, reference: j, ratio: r).map { image in
            var out = image
            for i in 0..<out.planes.count { out.planes[i] = min(1, max(0, out.planes[i])) }
            return out
        }
    }

    /// §8 without the final clip to [0, 1] (for tests and for callers that clip later).
    public static func applyUnclipped(images: [RGBImage], reference j: Int, ratio r: Double) throws -> [RGBImage] {
        try validate(images: images, reference: j, ratio: r)
        let width = images[0].width, height = images[0].height, n = width * height
        var outs = images
        for c in 0..<3 {
            let planes = images.map { Array($0.planes[(c * n)..<((c + 1) * n)]) }
            let std = standardize(planes: planes, height: height, width: width,
                                  referenceAmplitude: FFT2D(height: height, width: width).amplitudes(planes[j]), ratio: r)
            for (k, p) in std.enumerated() { outs[k].planes.replaceSubrange((c * n)..<((c + 1) * n), with: p) }
        }
        return outs
    }

    /// Standardizes single planes against a given reference amplitude (unshifted, `height * width`
    /// values), unclipped. The building block of `applyUnclipped`, also used by retrieval, where the
    /// reference is fixed once per pool.
    public static func standardize(planes: [[Float]], height: Int, width: Int,
                                   referenceAmplitude: [Float], ratio r: Double) -> [[Float]] {
        let fft = FFT2D(height: height, width: width)
        let win = window(height: height, width: width, ratio: r)
        // Unshifted rows / columns inside the window.
        let rows = (0..<win.rows).map { ((win.row0 + $0 - height / 2) % height + height) % height }
        let cols = (0..<win.cols).map { ((win.col0 + $0 - width / 2) % width + width) % width }
        return planes.map { plane in
            var s = fft.forward(plane)
            for u in rows {
                for v in cols {
                    let k = u * width + v
                    let re = s[2 * k], im = s[2 * k + 1]
                    let a = (re * re + im * im).squareRoot(), target = referenceAmplitude[k]
                    if a > 0 {
                        s[2 * k] = re / a * target
                        s[2 * k + 1] = im / a * target
                    } else {
                        s[2 * k] = target
                        s[2 * k + 1] = 0
                    }
                }
            }
            let back = fft.inverse(s)
            return (0..<(height * width)).map { back[2 * $0] }
        }
    }

    /// Draws the reference index j uniformly in 0..<count and r ~ U(ratioMin, ratioMax) with SplitMix64.
    public static func randomParameters(count: Int, ratioMin: Double, ratioMax: Double,
                                        seed: UInt64) throws -> (reference: Int, ratio: Double) {
        guard count >= 2 else { throw ColorError.invalidInput("BSS needs at least two images, got \(count)") }
        guard ratioMin > 0, ratioMax <= 1, ratioMin <= ratioMax else {
            throw ColorError.invalidInput("BSS ratio bounds must satisfy 0 < min ≤ max ≤ 1, got \(ratioMin) and \(ratioMax)")
        }
        var rng = SplitMix64(seed: seed)
        let j = Int(rng.next() % UInt64(count))
        let r = ratioMin + (ratioMax - ratioMin) * rng.nextUnitDouble()
        return (j, r)
    }

    /// What `gen bss` and `POST /v1/bss` do: resize every image to width×height (area when
    /// shrinking, bilinear otherwise), draw j and r from the seed unless `reference` fixes j or
    /// equal bounds fix r, and apply BSS (clipped). Returns the outputs with the j and r used.
    public static func batch(_ images: [RGBImage], width w: Int, height h: Int, ratioMin: Double, ratioMax: Double,
                             reference: Int?, seed: UInt64) throws -> (images: [RGBImage], reference: Int, ratio: Double) {
        let resized = images.map { image in
            if image.width == w && image.height == h { return image }
            return image.width >= w && image.height >= h ? image.resizedArea(width: w, height: h)
                : image.resizedBilinear(width: w, height: h)
        }
        var (j, r) = try randomParameters(count: resized.count, ratioMin: ratioMin, ratioMax: ratioMax, seed: seed)
        if let reference { j = reference }
        if ratioMin == ratioMax { r = ratioMin }
        return (try apply(images: resized, reference: j, ratio: r), j, r)
    }

    static func validate(images: [RGBImage], reference j: Int, ratio r: Double) throws {
        guard images.count >= 2 else { throw ColorError.invalidInput("BSS needs at least two images, got \(images.count)") }
        let w = images[0].width, h = images[0].height
        guard w >= 1, h >= 1 else { throw ColorError.invalidInput("BSS needs non-empty images, got \(w)x\(h)") }
        for (k, image) in images.enumerated() where image.width != w || image.height != h {
            throw ColorError.invalidInput("BSS needs images of one size: image 0 is \(w)x\(h) but image \(k) is \(image.width)x\(image.height) (resize them first)")
        }
        guard j >= 0, j < images.count else {
            throw ColorError.invalidInput("BSS reference index \(j) is out of range 0..<\(images.count)")
        }
        guard r > 0, r <= 1, r.isFinite else { throw ColorError.invalidInput("BSS ratio r must be in (0, 1], got \(r)") }
    }
}
