/// Minimal raster drawing for charts: pixels, lines and filled squares.
extension RGBImage {
    /// Sets one pixel; points outside the image are ignored.
    public mutating func setPixel(_ x: Int, _ y: Int, _ c: (Float, Float, Float)) {
        guard x >= 0, x < width, y >= 0, y < height else { return }
        let plane = width * height
        planes[y * width + x] = c.0
        planes[plane + y * width + x] = c.1
        planes[2 * plane + y * width + x] = c.2
    }

    /// A straight line from a to b, `thickness` pixels wide; `dash` > 0 draws dashes that long.
    public mutating func drawLine(_ a: (Int, Int), _ b: (Int, Int), _ c: (Float, Float, Float),
                                  thickness: Int = 1, dash: Int = 0) {
        let n = max(abs(b.0 - a.0), abs(b.1 - a.1), 1)
        let r = thickness / 2
        for i in 0...n where dash <= 0 || (i / dash) % 2 == 0 {
            let x = a.0 + (b.0 - a.0) * i / n, y = a.1 + (b.1 - a.1) * i / n
            for dy in -r...(thickness - 1 - r) { for dx in -r...(thickness - 1 - r) { setPixel(x + dx, y + dy, c) } }
        }
    }

    /// A filled square of side `side` centred on (x, y).
    public mutating func fillSquare(_ x: Int, _ y: Int, side: Int, _ c: (Float, Float, Float)) {
        for dy in 0..<side { for dx in 0..<side { setPixel(x - side / 2 + dx, y - side / 2 + dy, c) } }
    }
}
