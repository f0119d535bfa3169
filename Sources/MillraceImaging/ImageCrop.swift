extension RGBImage {
    /// The rectangle at (`x`, `y`) of size `width` x `height`, which must lie inside the image.
    public func cropped(x: Int, y: Int, width cropWidth: Int, height cropHeight: Int) -> RGBImage {
        precondition(cropWidth >= 0 && cropHeight >= 0 && x >= 0 && y >= 0
                     && x + cropWidth <= width && y + cropHeight <= height,
                     "crop \(cropWidth)x\(cropHeight) at (\(x), \(y)) is outside a \(width)x\(height) image")
        if x == 0 && y == 0 && cropWidth == width && cropHeight == height { return self }
        var out = [Float]()
        out.reserveCapacity(3 * cropWidth * cropHeight)
        for c in 0..<3 {
            for row in y..<(y + cropHeight) {
                let start = (c * height + row) * width + x
                out.append(contentsOf: planes[start..<(start + cropWidth)])
            }
        }
        return RGBImage(width: cropWidth, height: cropHeight, planes: out)
    }

    /// The largest centred crop with the given aspect ratio (width/height).
    ///
    /// The kept side is the whole image side; the other is `round(side * aspect)` (or
    /// `/ aspect`), at least 1 pixel, and the offset is `(excess) / 2` rounded down.
    public func centerCropped(aspect: Double) -> RGBImage {
        precondition(aspect > 0 && aspect.isFinite, "aspect ratio \(aspect) must be positive")
        precondition(width > 0 && height > 0, "cannot crop an empty \(width)x\(height) image")
        if Double(width) > Double(height) * aspect {
            let w = min(width, max(1, Int((Double(height) * aspect).rounded())))
            return cropped(x: (width - w) / 2, y: 0, width: w, height: height)
        } else {
            let h = min(height, max(1, Int((Double(width) / aspect).rounded())))
            return cropped(x: 0, y: (height - h) / 2, width: width, height: h)
        }
    }
}
