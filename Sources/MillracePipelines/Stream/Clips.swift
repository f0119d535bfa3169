import MillraceImaging
/// Sample clips for streams, made from dataset images (see `gen clips`).
public enum SampleClips {
    /// A still camera: `frames` identical frames of one emoji at `size`×`size`.
    public static func still(_ image: RGBImage, frames: Int = 120, size: Int = 64) -> [RGBImage] {
        let frame = image.resizedBilinear(width: size, height: size)
        return [RGBImage](repeating: frame, count: frames)
    }

    /// A slow pan: a window of `size`×`size` moving `speed` pixels per frame across a strip of
    /// emoji laid side by side on a dark background (wrapping around).
    public static func pan(_ images: [RGBImage], frames: Int = 120, size: Int = 64, speed: Int = 3) -> [RGBImage] {
        let tile = size
        let stripWidth = tile * images.count
        var strip = RGBImage(width: stripWidth, height: size, fill: (0.12, 0.14, 0.2))
        let plane = stripWidth * size
        for (k, img) in images.enumerated() {
            let t = img.resizedBilinear(width: tile - 8, height: tile - 8)
            for c in 0..<3 {
                for y in 0..<t.height {
                    for x in 0..<t.width {
                        let v = t.planes[c * t.width * t.height + y * t.width + x]
                        // emoji were composited on white: keep the dark background where white
                        let lum = t.planes[y * t.width + x] + t.planes[t.width * t.height + y * t.width + x] + t.planes[2 * t.width * t.height + y * t.width + x]
                        if lum < 2.9 { strip.planes[c * plane + (y + 4) * stripWidth + k * tile + 4 + x] = v }
                    }
                }
            }
        }
        return (0..<frames).map { f in
            var out = RGBImage(width: size, height: size, fill: (0, 0, 0))
            let x0 = (f * speed) % stripWidth
            for c in 0..<3 {
                for y in 0..<size {
                    for x in 0..<size {
                        out.planes[c * size * size + y * size + x] = strip.planes[c * plane + y * stripWidth + (x0 + x) % stripWidth]
                    }
                }
            }
            return out
        }
    }
}
