import Foundation
import MillraceImaging

/// Retrieval-augmented exemplar colorization (docs/METHODS.md §9, small scale, no model).
///
/// The gray input is brought to a working size (longer side at most `workingSide`), cut into the 4
/// query crops, and each crop retrieves its top 3 pool patches. Chroma transfer in Lab: for each
/// pixel of a crop and each retrieved patch (resized to the crop), the patch pixel of least cost
/// `(Δluma/σ_y)² + (Δposition/σ_d)²` within a window of radius r = max(1, crop/8) gives (a, b),
/// with σ_y = 0.02 and σ_d = r/4 (so the same position is preferred unless the luma there does
/// not match). The patches are blended with weights `exp(−cost) · exp(κ·(sim − sim_best))`,
/// κ = 30, sim_best the quadrant's best cosine similarity, and overlapping crops are averaged.
/// A prior from the pool's mean chroma per luma bin, with weight 0.1 (the weight of one
/// best-matching patch pixel is 1), fills pixels no patch explains. The predicted a, b are
/// smoothed with a joint bilateral filter guided by luma, upsampled (bilinear) to full
/// resolution, and combined with the input's own L at full resolution (chroma, not L, is given
/// up where a colour falls outside sRGB).
///
/// The constants were chosen on a validation set of train-split emoji not in the shipped pool
/// (`gen references --validation-out`), never on the held-out split (docs/RESULTS.md).
public final class Colorizer {
    /// How chroma is predicted.
    public enum Mode: String, Sendable { case retrieval, noRetrieval = "no_retrieval" }

    /// Longer side of the working image.
    public var workingSide = 128
    /// Patches retrieved per query crop.
    public var topK = 3
    public let pool: ReferencePool
    public let mode: Mode

    public init(pool: ReferencePool, mode: Mode = .retrieval) {
        self.pool = pool
        self.mode = mode
    }

    /// The gray version (luma replicated) of any image.
    public static func grayscale(_ image: RGBImage) -> RGBImage {
        let y = image.luma()
        return RGBImage(width: image.width, height: image.height, planes: y + y + y)
    }

    func working(_ gray: RGBImage) -> RGBImage {
        let side = max(gray.width, gray.height)
        guard side > workingSide else { return gray }
        let s = Double(workingSide) / Double(side)
        return gray.resizedArea(width: max(4, Int((Double(gray.width) * s).rounded())),
                                height: max(4, Int((Double(gray.height) * s).rounded())))
    }

    /// Retrieval for a gray image at working size (12 patches: 3 per quadrant).
    public func retrieve(gray: RGBImage) throws -> [RetrievedPatch] {
        try pool.index()
        return try pool.retrieve(query: working(Self.grayscale(gray)), top: topK)
    }

    /// Colorizes a gray image; `reusing` skips retrieval and uses earlier patches (for stable video).
    public func colorize(gray input: RGBImage, reusing: [RetrievedPatch]? = nil) throws
        -> (image: RGBImage, references: [RetrievedPatch]) {
        let e = try evidence(gray: input, reusing: reusing)
        return (Self.compose(gray: Self.grayscale(input), a: e.a, b: e.b, width: e.width, height: e.height), e.references)
    }

    /// What retrieval tells about a gray image's chroma, at the working size: the colorization
    /// itself (a, b), how much of it came from matched patch pixels rather than the prior, and
    /// the best patch of each query crop pasted where the crop lies (the references' own colours,
    /// not matched by luma). The in-context model (`InContextColorizer`) takes all of it as its
    /// condition. `excluding`: pool images left out of retrieval.
    public func evidence(gray input: RGBImage, reusing: [RetrievedPatch]? = nil, excluding: Set<Int> = []) throws -> ChromaEvidence {
        guard input.width >= 1, input.height >= 1 else { throw ColorError.invalidInput("cannot colorize an empty image") }
        if pool.patchCount == 0 { try pool.index() }
        let gray = Self.grayscale(input)
        let work = working(gray)
        let w = work.width, h = work.height, n = w * h
        let ywork = work.luma()
        var sumA = [Float](repeating: 0, count: n), sumB = sumA, sumW = sumA
        var canvasL = sumA, canvasA = sumA, canvasB = sumA, canvasN = sumA
        // Prior: pool mean chroma per luma bin, small weight.
        let chroma = pool.chromaByLuma, bins = ReferencePool.lumaBins
        let priorWeight: Float = mode == .retrieval ? Self.priorWeight : 1
        for p in 0..<n {
            let b = min(bins - 1, max(0, Int(ywork[p] * Float(bins))))
            sumA[p] = priorWeight * chroma[2 * b]; sumB[p] = priorWeight * chroma[2 * b + 1]; sumW[p] = priorWeight
        }
        var refs: [RetrievedPatch] = []
        if mode == .retrieval {
            refs = try reusing ?? pool.retrieve(query: work, top: topK, excluding: excluding)
            let crops = PatchDescriptor.queryCrops(width: w, height: h)
            var bestSim = [Float](repeating: -1, count: 4)
            for r in refs { let q = min(3, max(0, r.quadrant)); bestSim[q] = max(bestSim[q], r.similarity) }
            for r in refs {
                let crop = crops[min(3, max(0, r.quadrant))]
                let src = try pool.image(at: r.imageIndex)
                let rect = r.rect
                guard rect.x >= 0, rect.y >= 0, rect.x + rect.width <= src.width, rect.y + rect.height <= src.height else { continue }
                var patch = src.cropped(x: rect.x, y: rect.y, width: rect.width, height: rect.height)
                if patch.width != crop.width || patch.height != crop.height {
                    patch = patch.width >= crop.width && patch.height >= crop.height
                        ? patch.resizedArea(width: crop.width, height: crop.height)
                        : patch.resizedBilinear(width: crop.width, height: crop.height)
                }
                let weight = exp(Self.similaritySharpness * (r.similarity - bestSim[min(3, max(0, r.quadrant))]))
                transfer(from: patch, weight: weight, crop: crop, queryLuma: ywork, width: w,
                         sumA: &sumA, sumB: &sumB, sumW: &sumW)
                if r.rank == 0 {
                    let lab = patch.toLab(), pn = crop.width * crop.height
                    for y in 0..<crop.height {
                        for x in 0..<crop.width {
                            let qp = (crop.y + y) * w + crop.x + x, k = y * crop.width + x
                            canvasL[qp] += lab.planes[k]; canvasA[qp] += lab.planes[pn + k]; canvasB[qp] += lab.planes[2 * pn + k]
                            canvasN[qp] += 1
                        }
                    }
                }
            }
        }
        var a = [Float](repeating: 0, count: n), b = a, matched = a
        for p in 0..<n {
            a[p] = sumA[p] / sumW[p]; b[p] = sumB[p] / sumW[p]
            matched[p] = 1 - priorWeight / sumW[p]
            if canvasN[p] > 0 { canvasL[p] /= canvasN[p]; canvasA[p] /= canvasN[p]; canvasB[p] /= canvasN[p] }
        }
        (a, b) = Self.jointBilateral(a: a, b: b, guide: ywork, width: w, height: h)
        return ChromaEvidence(width: w, height: h, luma: ywork, lightness: Array(work.toLab().planes[0..<n]),
                              a: a, b: b, matched: matched, canvasL: canvasL, canvasA: canvasA, canvasB: canvasB, references: refs)
    }

    /// κ of the patch weights exp(κ·(sim − sim_best)).
    static let similaritySharpness: Float = 30
    /// Weight of the per-luma-bin prior in retrieval mode.
    static let priorWeight: Float = 0.1
    /// σ_y of the luma term of the transfer cost.
    static let lumaSigma: Float = 0.02
    /// σ_d of the position term, as a fraction of the window radius.
    static let positionSigma: Float = 0.25

    /// Adds one patch's per-pixel nearest-neighbour chroma for one crop into the accumulators.
    private func transfer(from patch: RGBImage, weight simWeight: Float, crop: PatchRect, queryLuma: [Float], width: Int,
                          sumA: inout [Float], sumB: inout [Float], sumW: inout [Float]) {
        let cw = crop.width, ch = crop.height
        let py = patch.luma(), lab = patch.toLab(), pn = cw * ch
        let radius = max(1, max(cw, ch) / 8), step = max(1, radius / 3)
        let sigmaY = Self.lumaSigma, sigmaD = Float(radius) * Self.positionSigma
        for y in 0..<ch {
            for x in 0..<cw {
                let qp = (crop.y + y) * width + crop.x + x
                let yq = queryLuma[qp]
                var best = Float.infinity, bestIndex = y * cw + x
                var dy = -radius
                while dy <= radius {
                    let yy = y + dy
                    if yy >= 0 && yy < ch {
                        var dx = -radius
                        while dx <= radius {
                            let xx = x + dx
                            if xx >= 0 && xx < cw {
                                let k = yy * cw + xx
                                let dl = (py[k] - yq) / sigmaY
                                let cost = dl * dl + Float(dx * dx + dy * dy) / (sigmaD * sigmaD)
                                if cost < best { best = cost; bestIndex = k }
                            }
                            dx += step
                        }
                    }
                    dy += step
                }
                let wgt = simWeight * exp(-best)
                sumA[qp] += wgt * lab.planes[pn + bestIndex]
                sumB[qp] += wgt * lab.planes[2 * pn + bestIndex]
                sumW[qp] += wgt
            }
        }
    }

    /// Joint bilateral smoothing of a, b guided by luma (radius 3, σ_space 2 px, σ_luma 0.06).
    static func jointBilateral(a: [Float], b: [Float], guide: [Float], width w: Int, height h: Int) -> ([Float], [Float]) {
        let radius = 3, ss: Float = 2, sr: Float = 0.06
        var oa = a, ob = b
        for y in 0..<h {
            for x in 0..<w {
                let g = guide[y * w + x]
                var sa: Float = 0, sb: Float = 0, sw: Float = 0
                for dy in -radius...radius {
                    let yy = y + dy
                    if yy < 0 || yy >= h { continue }
                    for dx in -radius...radius {
                        let xx = x + dx
                        if xx < 0 || xx >= w { continue }
                        let k = yy * w + xx, dg = (guide[k] - g) / sr
                        let wt = exp(-Float(dx * dx + dy * dy) / (2 * ss * ss) - 0.5 * dg * dg)
                        sa += wt * a[k]; sb += wt * b[k]; sw += wt
                    }
                }
                oa[y * w + x] = sa / sw; ob[y * w + x] = sb / sw
            }
        }
        return (oa, ob)
    }

    /// Full-resolution L of `gray` with a, b (given at w×h) upsampled; out-of-gamut colours lose
    /// chroma, not lightness (`LabImage.toRGBPreservingLightness`), so the output's L is the input's.
    public static func compose(gray: RGBImage, a: [Float], b: [Float], width w: Int, height h: Int) -> RGBImage {
        let lab = gray.toLab(), n = gray.pixelCount
        var ab = RGBImage(width: w, height: h, planes: a + b + [Float](repeating: 0, count: w * h))
        if w != gray.width || h != gray.height { ab = ab.resizedBilinear(width: gray.width, height: gray.height) }
        var planes = lab.planes
        for p in 0..<n { planes[n + p] = ab.planes[p]; planes[2 * n + p] = ab.planes[n + p] }
        return LabImage(width: gray.width, height: gray.height, planes: planes).toRGBPreservingLightness()
    }

    /// Global Reinhard colour transfer in Lab (baseline): a and b get the reference's mean and
    /// standard deviation; L is kept (colorization keeps the input's luminance). On a gray input
    /// (no chroma variation) this tints the image with the reference's mean chroma.
    public static func reinhard(gray: RGBImage, reference: RGBImage) -> RGBImage {
        let src = grayscale(gray).toLab(), ref = reference.toLab()
        let n = src.width * src.height, m = ref.width * ref.height
        var planes = src.planes
        for c in 1...2 {
            let (ms, ss) = src.planes[(c * n)..<((c + 1) * n)].meanAndDeviation()
            let (mr, sr) = ref.planes[(c * m)..<((c + 1) * m)].meanAndDeviation()
            let scale: Float = ss > 1e-3 ? sr / ss : 0
            for i in 0..<n { planes[c * n + i] = mr + (src.planes[c * n + i] - ms) * scale }
        }
        var out = LabImage(width: src.width, height: src.height, planes: planes).toRGB()
        for i in 0..<out.planes.count { out.planes[i] = min(1, max(0, out.planes[i])) }
        return out
    }

    /// The §9 canvas: 2W×2H at the working size, the query in the centre 2×2 cells of a 4×4 grid and
    /// the retrieved patches in the border cells next to the corner they matched, best closest.
    public func canvas(gray: RGBImage, references: [RetrievedPatch]) throws -> RGBImage {
        let work = working(Self.grayscale(gray))
        let cw = max(1, work.width / 2), ch = max(1, work.height / 2)
        let W = 4 * cw, H = 4 * ch
        var out = RGBImage(width: W, height: H, fill: (1, 1, 1))
        func paste(_ img: RGBImage, col: Int, row: Int, cols: Int = 1, rows: Int = 1) {
            let t = img.resizedBilinear(width: cols * cw, height: rows * ch)
            for c in 0..<3 { for y in 0..<t.height { for x in 0..<t.width {
                out.planes[(c * H + row * ch + y) * W + col * cw + x] = t.planes[(c * t.height + y) * t.width + x]
            } } }
        }
        paste(work, col: 1, row: 1, cols: 2, rows: 2)
        // (col, row) cells per quadrant, best first: edge-adjacent cells, then the diagonal corner.
        let cells = [[(1, 0), (0, 1), (0, 0)], [(2, 0), (3, 1), (3, 0)], [(0, 2), (1, 3), (0, 3)], [(3, 2), (2, 3), (3, 3)]]
        for r in references where r.quadrant >= 0 && r.quadrant < 4 && r.rank < 3 {
            let src = try pool.image(at: r.imageIndex)
            let (col, row) = cells[r.quadrant][r.rank]
            paste(src.cropped(x: r.rect.x, y: r.rect.y, width: r.rect.width, height: r.rect.height), col: col, row: row)
        }
        return out
    }
}

/// Retrieval's evidence about a gray image's chroma at the working size (`Colorizer.evidence`);
/// planes are row-major `width`×`height`, chroma in Lab units.
public struct ChromaEvidence: Sendable {
    public var width: Int, height: Int
    /// Luma (0.299 R + 0.587 G + 0.114 B) in [0, 1].
    public var luma: [Float]
    /// Lab L in [0, 100].
    public var lightness: [Float]
    /// The retrieval colorization's a, b (what `colorize` composes with the input's L).
    public var a: [Float], b: [Float]
    /// Share of each pixel's chroma that came from matched patch pixels, in [0, 1) (0: the
    /// luminance prior alone).
    public var matched: [Float]
    /// The best patch of each query crop, pasted over its crop (overlaps averaged), in Lab; 0
    /// where none. Its L beside the input's shows where the patch's colours fit pixel for pixel.
    public var canvasL: [Float], canvasA: [Float], canvasB: [Float]
    /// The patches retrieved (or reused).
    public var references: [RetrievedPatch]
}

/// Colour metrics of §10 used by `gen eval colorize`.
public enum ColorMetrics {
    /// PSNR on RGB in [0, 1] (peak 1).
    public static func psnrRGB(_ x: RGBImage, _ y: RGBImage) -> Double {
        psnr(mse(x.planes, y.planes), peak: 1)
    }

    /// PSNR on the a, b channels of Lab, with a and b divided by 256 (their nominal span) so the peak is 1.
    public static func psnrAB(_ x: RGBImage, _ y: RGBImage) -> Double {
        let lx = x.toLab(), ly = y.toLab(), n = x.pixelCount
        let ax = lx.planes[n...].map { $0 / 256 }, ay = ly.planes[n...].map { $0 / 256 }
        return psnr(mse(Array(ax), Array(ay)), peak: 1)
    }

    /// Mean CIE76 ΔE (Euclidean distance in Lab).
    public static func deltaE76(_ x: RGBImage, _ y: RGBImage) -> Double {
        let lx = x.toLab(), ly = y.toLab(), n = x.pixelCount
        var s: Double = 0
        for p in 0..<n {
            var d: Float = 0
            for c in 0..<3 { let e = lx.planes[c * n + p] - ly.planes[c * n + p]; d += e * e }
            s += Double(d.squareRoot())
        }
        return s / Double(max(1, n))
    }

    /// Colourfulness (Hasler–Süsstrunk): √(σ_rg² + σ_yb²) + 0.3·√(μ_rg² + μ_yb²), rg = R − G,
    /// yb = (R + G)/2 − B, on RGB in [0, 1].
    public static func colorfulness(_ x: RGBImage) -> Double {
        let n = x.pixelCount
        guard n > 0 else { return 0 }
        var srg: Double = 0, srg2: Double = 0, syb: Double = 0, syb2: Double = 0
        for p in 0..<n {
            let r = Double(x.planes[p]), g = Double(x.planes[n + p]), b = Double(x.planes[2 * n + p])
            let rg = r - g, yb = (r + g) / 2 - b
            srg += rg; srg2 += rg * rg; syb += yb; syb2 += yb * yb
        }
        let mrg = srg / Double(n), myb = syb / Double(n)
        let vrg = max(0, srg2 / Double(n) - mrg * mrg), vyb = max(0, syb2 / Double(n) - myb * myb)
        return (vrg + vyb).squareRoot() + 0.3 * (mrg * mrg + myb * myb).squareRoot()
    }

    static func mse(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "metric of images of different sizes")
        var s: Double = 0
        for i in 0..<a.count { let d = Double(a[i] - b[i]); s += d * d }
        return s / Double(max(1, a.count))
    }

    static func psnr(_ mse: Double, peak: Double) -> Double {
        mse <= 1e-20 ? 200 : 10 * log10(peak * peak / mse)
    }
}
