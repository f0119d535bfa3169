import CFreeType
import Foundation

/// Draws text into images with FreeType (labels on grids and plots). Uses DejaVu Sans from
/// Debian's fonts-dejavu-core; when the font is missing, text is simply not drawn.
public final class TextRenderer {
    public static let defaultFontPath = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

    private var library: FT_Library?
    private var face: FT_Face?
    public let pixelSize: Int

    /// nil when FreeType or the font cannot be loaded.
    public init?(pixelSize: Int = 12, fontPath: String = TextRenderer.defaultFontPath) {
        self.pixelSize = pixelSize
        guard FT_Init_FreeType(&library) == 0, let library else { return nil }
        guard FT_New_Face(library, fontPath, 0, &face) == 0, let face else {
            FT_Done_FreeType(library)
            return nil
        }
        FT_Set_Pixel_Sizes(face, 0, FT_UInt(pixelSize))
    }

    deinit {
        if let face { FT_Done_Face(face) }
        if let library { FT_Done_FreeType(library) }
    }

    /// Width in pixels of `text` drawn by `draw`.
    public func width(of text: String) -> Int {
        guard let face else { return 0 }
        var w = 0
        for scalar in text.unicodeScalars {
            guard FT_Load_Char(face, FT_ULong(scalar.value), FT_Int32(FT_LOAD_DEFAULT)) == 0 else { continue }
            w += Int(face.pointee.glyph.pointee.advance.x >> 6)
        }
        return w
    }

    /// Draws `text` with its baseline at `y`, starting at `x`, blending `color` by coverage.
    public func draw(_ text: String, x: Int, y: Int, color: (Float, Float, Float) = (0, 0, 0),
                     into image: inout RGBImage) {
        guard let face else { return }
        var penX = x
        let (w, h) = (image.width, image.height)
        let plane = w * h
        for scalar in text.unicodeScalars {
            guard FT_Load_Char(face, FT_ULong(scalar.value), FT_Int32(FT_LOAD_RENDER)) == 0 else { continue }
            let g = face.pointee.glyph.pointee
            let bm = g.bitmap
            let left = penX + Int(g.bitmap_left), top = y - Int(g.bitmap_top)
            if let buffer = bm.buffer {
                for r in 0..<Int(bm.rows) {
                    for c in 0..<Int(bm.width) {
                        let px = left + c, py = top + r
                        guard px >= 0, px < w, py >= 0, py < h else { continue }
                        let a = Float(buffer[r * Int(bm.pitch) + c]) / 255
                        if a == 0 { continue }
                        let i = py * w + px
                        image.planes[i] = image.planes[i] * (1 - a) + color.0 * a
                        image.planes[plane + i] = image.planes[plane + i] * (1 - a) + color.1 * a
                        image.planes[2 * plane + i] = image.planes[2 * plane + i] * (1 - a) + color.2 * a
                    }
                }
            }
            penX += Int(g.advance.x >> 6)
        }
    }
}

extension RGBImage {
    /// A grid with one row per label: `rows[i]` laid out left to right, its label to the left.
    public static func labeledRows(_ rows: [[RGBImage]], labels: [String], padding: Int = 2,
                                   fontSize: Int = 12) -> RGBImage {
        let columns = rows.map(\.count).max() ?? 0
        let grid = RGBImage.grid(rows.flatMap { $0 }, columns: columns, padding: padding)
        guard let text = TextRenderer(pixelSize: fontSize) else { return grid }
        let labelWidth = (labels.map { text.width(of: $0) }.max() ?? 0) + 8
        var out = RGBImage(width: grid.width + labelWidth, height: grid.height, fill: (1, 1, 1))
        let plane = out.width * out.height, gridPlane = grid.width * grid.height
        for c in 0..<3 {
            for y in 0..<grid.height {
                for x in 0..<grid.width {
                    out.planes[c * plane + y * out.width + labelWidth + x] = grid.planes[c * gridPlane + y * grid.width + x]
                }
            }
        }
        let rowHeight = rows.isEmpty ? 0 : (grid.height + padding) / rows.count
        for (i, label) in labels.enumerated() where i < rows.count {
            text.draw(label, x: 4, y: i * rowHeight + rowHeight / 2 + fontSize / 3, into: &out)
        }
        return out
    }
}
