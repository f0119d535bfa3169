extension RGBImage {
    /// Lays images out in a grid (row-major) with `padding` pixels of `background` between them.
    ///
    /// Every cell is as large as the largest image (widest width, tallest height); a smaller
    /// image sits centred in its cell on `background`. The grid has `min(columns, images.count)`
    /// columns and `ceil(images.count / columns)` rows, so its size is
    /// `cols * cellWidth + (cols - 1) * padding` by `rows * cellHeight + (rows - 1) * padding`.
    /// There is no border around the outside.
    public static func grid(_ images: [RGBImage], columns: Int, padding: Int = 2,
                            background: (r: Float, g: Float, b: Float) = (1, 1, 1)) -> RGBImage {
        precondition(!images.isEmpty, "grid of no images")
        precondition(columns > 0, "grid needs at least one column, got \(columns)")
        precondition(padding >= 0, "negative grid padding \(padding)")
        let cols = min(columns, images.count)
        let rows = (images.count + cols - 1) / cols
        let cellW = images.map(\.width).max()!, cellH = images.map(\.height).max()!
        let outW = cols * cellW + (cols - 1) * padding
        let outH = rows * cellH + (rows - 1) * padding
        var out = RGBImage(width: outW, height: outH, fill: background)
        out.planes.withUnsafeMutableBufferPointer { dst in
            for (k, image) in images.enumerated() {
                let x0 = (k % cols) * (cellW + padding) + (cellW - image.width) / 2
                let y0 = (k / cols) * (cellH + padding) + (cellH - image.height) / 2
                image.planes.withUnsafeBufferPointer { src in
                    for c in 0..<3 {
                        for y in 0..<image.height {
                            let s = (c * image.height + y) * image.width
                            let d = (c * outH + y0 + y) * outW + x0
                            for x in 0..<image.width { dst[d + x] = src[s + x] }
                        }
                    }
                }
            }
        }
        return out
    }
}
