/// A 1-D resampling rule: output sample `o` is `Σ_k weights[o * taps + k] * input[first[o] + k]`.
///
/// Every output uses the same number of taps (unused ones have weight 0), so the inner loops
/// have a fixed trip count. `first[o] + taps <= inputCount` always holds.
struct ResampleTable {
    let taps: Int
    let first: [Int]
    let weights: [Float]

    /// Builds a table from per-output lists of (input index, weight).
    init(inputCount: Int, contributions: [[(index: Int, weight: Double)]]) {
        var taps = 1
        for list in contributions {
            let lo = list.map(\.index).min()!, hi = list.map(\.index).max()!
            taps = max(taps, hi - lo + 1)
        }
        taps = min(taps, inputCount)
        var first = [Int](repeating: 0, count: contributions.count)
        var weights = [Float](repeating: 0, count: contributions.count * taps)
        for (o, list) in contributions.enumerated() {
            let start = min(list.map(\.index).min()!, inputCount - taps)
            first[o] = start
            for (index, weight) in list { weights[o * taps + index - start] += Float(weight) }
        }
        self.taps = taps
        self.first = first
        self.weights = weights
    }

    /// Exact area (box) averaging: output cell `o` covers input interval
    /// [o * inN / outN, (o + 1) * inN / outN), and each input pixel contributes in proportion to
    /// its overlap. Computed in integer units of 1/outN pixel, so boundaries are exact.
    static func area(from inN: Int, to outN: Int) -> ResampleTable {
        let contributions = (0..<outN).map { o -> [(index: Int, weight: Double)] in
            let lo = o * inN, hi = (o + 1) * inN
            return (lo / outN...(hi - 1) / outN).map { i in
                let overlap = min(hi, (i + 1) * outN) - max(lo, i * outN)
                return (i, Double(overlap) / Double(inN))
            }
        }
        return ResampleTable(inputCount: inN, contributions: contributions)
    }

    /// Linear interpolation with half-pixel centres (PyTorch's align_corners=False): output `o`
    /// samples input position (o + 0.5) * inN / outN - 0.5, clamped to the edge pixels.
    static func bilinear(from inN: Int, to outN: Int) -> ResampleTable {
        let scale = Double(inN) / Double(outN)
        let contributions = (0..<outN).map { o -> [(index: Int, weight: Double)] in
            let src = max(0, (Double(o) + 0.5) * scale - 0.5)
            let i0 = min(Int(src), inN - 1), i1 = min(i0 + 1, inN - 1)
            let t = src - Double(i0)
            return i0 == i1 ? [(i0, 1)] : [(i0, 1 - t), (i1, t)]
        }
        return ResampleTable(inputCount: inN, contributions: contributions)
    }

    /// Nearest neighbour with centred sampling: output `o` takes input floor((o + 0.5) * inN / outN)
    /// (PyTorch's "nearest-exact").
    static func nearest(from inN: Int, to outN: Int) -> ResampleTable {
        let contributions = (0..<outN).map { o -> [(index: Int, weight: Double)] in
            [(min((2 * o + 1) * inN / (2 * outN), inN - 1), 1)]
        }
        return ResampleTable(inputCount: inN, contributions: contributions)
    }
}

extension RGBImage {
    /// Resizes with an exact area (box) filter: each output pixel is the mean of the input area
    /// it covers, with fractional overlaps weighted exactly. Handles non-integer ratios and both
    /// down- and up-scaling (upscaling replicates pixels, blending only where a cell straddles
    /// an input edge). An integer-ratio downscale gives the block means.
    public func resizedArea(width newWidth: Int, height newHeight: Int) -> RGBImage {
        checkResize(newWidth, newHeight)
        return resampled(width: newWidth, height: newHeight,
                         x: .area(from: width, to: newWidth), y: .area(from: height, to: newHeight))
    }

    /// Resizes with bilinear interpolation, half-pixel-centre convention (like PyTorch's
    /// `interpolate(mode: "bilinear", align_corners: false)`, without antialiasing: for strong
    /// downscaling prefer `resizedArea`).
    public func resizedBilinear(width newWidth: Int, height newHeight: Int) -> RGBImage {
        checkResize(newWidth, newHeight)
        return resampled(width: newWidth, height: newHeight,
                         x: .bilinear(from: width, to: newWidth),
                         y: .bilinear(from: height, to: newHeight))
    }

    /// Resizes by nearest neighbour: output pixel (x, y) copies input pixel
    /// (floor((x + 0.5) * width / newWidth), floor((y + 0.5) * height / newHeight)).
    public func resizedNearest(width newWidth: Int, height newHeight: Int) -> RGBImage {
        checkResize(newWidth, newHeight)
        return resampled(width: newWidth, height: newHeight,
                         x: .nearest(from: width, to: newWidth),
                         y: .nearest(from: height, to: newHeight))
    }

    private func checkResize(_ newWidth: Int, _ newHeight: Int) {
        precondition(width > 0 && height > 0, "cannot resize an empty \(width)x\(height) image")
        precondition(newWidth > 0 && newHeight > 0, "cannot resize to \(newWidth)x\(newHeight)")
    }

    /// Separable resampling: rows first (into a [height, newWidth] scratch plane), then columns.
    private func resampled(width newWidth: Int, height newHeight: Int,
                           x tx: ResampleTable, y ty: ResampleTable) -> RGBImage {
        if newWidth == width && newHeight == height { return self }
        let (w, h) = (width, height)
        var out = [Float](repeating: 0, count: 3 * newWidth * newHeight)
        var scratch = [Float](repeating: 0, count: h * newWidth)
        planes.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
        scratch.withUnsafeMutableBufferPointer { tmp in
        tx.first.withUnsafeBufferPointer { xFirst in
        tx.weights.withUnsafeBufferPointer { xW in
        ty.first.withUnsafeBufferPointer { yFirst in
        ty.weights.withUnsafeBufferPointer { yW in
            let src = src.baseAddress!, dst = dst.baseAddress!, tmp = tmp.baseAddress!
            for c in 0..<3 {
                // Horizontal pass.
                for y in 0..<h {
                    let row = src + (c * h + y) * w
                    let trow = tmp + y * newWidth
                    for x in 0..<newWidth {
                        let f = row + xFirst[x], wt = x * tx.taps
                        var s: Float = 0
                        for k in 0..<tx.taps { s += xW[wt + k] * f[k] }
                        trow[x] = s
                    }
                }
                // Vertical pass: each output row is a weighted sum of scratch rows.
                for y in 0..<newHeight {
                    let orow = dst + (c * newHeight + y) * newWidth
                    for k in 0..<ty.taps {
                        let wk = yW[y * ty.taps + k]
                        if wk == 0 { continue }
                        let trow = tmp + (yFirst[y] + k) * newWidth
                        for x in 0..<newWidth { orow[x] += wk * trow[x] }
                    }
                }
            }
        }}}}}}}
        return RGBImage(width: newWidth, height: newHeight, planes: out)
    }
}
