import CFreeType
import CHarfBuzz
import Foundation
import MillraceImaging

/// Builds the class-conditional emoji dataset from Noto Color Emoji and Unicode's emoji-test.txt.
///
/// Each fully-qualified sequence of emoji-test.txt (outside the `Component` group) is shaped with
/// HarfBuzz; when the font renders it as exactly one glyph, that glyph's colour bitmap is loaded
/// through FreeType, composited on white, centred in a square canvas, and downscaled with area
/// filtering. Sequences sharing a glyph are kept once (earliest Emoji version, then file order), and
/// a bitmap identical to an earlier one is dropped, so no two images are the same.
/// Classes are the emoji-test groups in file order. Every 10th accepted emoji of each group
/// (positions 9, 19, 29, … within the group) is held out. See docs/DATASET.md.
public enum EmojiDatasetBuilder {
    /// Noto Color Emoji as installed by the Debian package `fonts-noto-color-emoji`.
    public static let defaultFontPath = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
    /// Unicode's emoji test data as installed by the Debian package `unicode-data`.
    public static let defaultEmojiTestPath = "/usr/share/unicode/emoji/emoji-test.txt"
    /// Within each group, the item at position `p` (0-based, in file order among accepted emoji)
    /// is held out when `p % heldOutPeriod == heldOutPeriod - 1`: 10% per group.
    public static let heldOutPeriod = 10

    /// Builds the dataset.
    ///
    /// - Parameters:
    ///   - size: side of the square output images in pixels.
    ///   - fontPath: a colour-bitmap emoji font (CBDT/sbix with BGRA strikes).
    ///   - emojiTestPath: Unicode's emoji-test.txt.
    ///   - limit: keep at most this many emoji (the first ones accepted, in file order).
    ///   - progress: `progress(done, total)` is called as glyphs are rendered (`total` is the
    ///     number of emoji to render; a final call reports `(total, total)`).
    /// - Throws: `DatasetError` when a file is missing (naming the Debian package to install) or
    ///   unusable.
    public static func build(size: Int = 32, fontPath: String = defaultFontPath,
                             emojiTestPath: String = defaultEmojiTestPath, limit: Int? = nil,
                             progress: ((Int, Int) -> Void)? = nil) throws -> ImageDataset {
        let sprites = try buildSprites(size: size, fontPath: fontPath, emojiTestPath: emojiTestPath,
                                       limit: limit, progress: progress)
        return ImageDataset(size: size, classNames: sprites.classNames, labels: sprites.labels, split: sprites.split,
                            pixels: quantize(sprites.colour), items: sprites.items)
    }

    /// The same emoji as `build`, in the same order and split, as floats with their coverage:
    /// `colour` is each glyph over white (what `build` quantises) and `alpha` its coverage in
    /// [0, 1], both area-resized to `size`, so that `colour + (1 − alpha)·(b − 1)` is the glyph
    /// over any background `b` (the scenes of `SceneComposer`).
    public static func buildSprites(size: Int = 32, fontPath: String = defaultFontPath,
                                    emojiTestPath: String = defaultEmojiTestPath, limit: Int? = nil,
                                    progress: ((Int, Int) -> Void)? = nil) throws -> EmojiSprites {
        guard size >= 1, size <= ImageDataset.maxSize else {
            throw DatasetError.invalidArgument("image size must be between 1 and \(ImageDataset.maxSize); got \(size)")
        }
        if let limit, limit < 1 { throw DatasetError.invalidArgument("limit must be at least 1; got \(limit)") }
        guard FileManager.default.fileExists(atPath: fontPath) else {
            throw DatasetError.missingSource("emoji font \(fontPath) not found; it comes from the Debian package "
                + "fonts-noto-color-emoji (install it: apt-get install fonts-noto-color-emoji)")
        }
        let testFile = try EmojiTestFile(path: emojiTestPath)
        let classNames = testFile.classNames
        guard !classNames.isEmpty, classNames.count <= 256 else {
            throw DatasetError.missingSource("\(emojiTestPath) has \(classNames.count) usable groups; expected 1 to 256")
        }
        let candidates = testFile.classEntries
        let renderer = try EmojiRenderer(fontPath: fontPath)

        // Shape every candidate; keep those drawn as one glyph. When several sequences share a
        // glyph (e.g. flag: France and flag: Clipperton Island), keep one: the earliest Emoji
        // version, then the first in file order, so the dataset holds no duplicate images.
        var shaped: [(index: Int, glyph: UInt32)] = []
        var owner: [UInt32: Int] = [:]  // glyph -> index into candidates
        for (i, candidate) in candidates.enumerated() {
            guard let glyph = renderer.singleGlyph(for: candidate.entry.codePoints) else { continue }
            shaped.append((i, glyph))
            if let current = owner[glyph] {
                if versionKey(candidate.entry.emojiVersion)
                    .lexicographicallyPrecedes(versionKey(candidates[current].entry.emojiVersion)) {
                    owner[glyph] = i
                }
            } else {
                owner[glyph] = i
            }
        }
        let chosen = shaped.filter { owner[$0.glyph] == $0.index }

        // Render in file order. A bitmap identical to an earlier one (some skin-tone variants are
        // drawn without visible skin) is dropped too.
        var labels: [UInt8] = []
        var items: [DatasetItem] = []
        var colour: [Float] = [], alpha: [Float] = []
        var seenBitmaps = Set<UInt64>()
        let total = min(limit ?? Int.max, chosen.count)
        colour.reserveCapacity(total * 3 * size * size)
        alpha.reserveCapacity(total * size * size)
        for (done, pick) in chosen.enumerated() {
            if items.count >= total { break }
            progress?(min(done, total), total)
            let candidate = candidates[pick.index]
            guard let (canvas, coverage, bitmapHash) = renderer.render(glyph: pick.glyph),
                  seenBitmaps.insert(bitmapHash).inserted
            else { continue }
            let small = canvas.width == size && canvas.height == size
                ? canvas : canvas.resizedArea(width: size, height: size)
            colour += small.planes
            // The coverage goes through the same filter (in one plane of a grey image).
            let a = RGBImage(width: canvas.width, height: canvas.height, planes: coverage + coverage + coverage)
            let smallA = a.width == size ? a : a.resizedArea(width: size, height: size)
            alpha += smallA.planes[0 ..< size * size]
            labels.append(UInt8(candidate.label))
            items.append(DatasetItem(codepoints: candidate.entry.hexCodePoints, name: candidate.entry.name,
                                     subgroup: candidate.entry.subgroup))
        }
        progress?(total, total)

        // Hold out every 10th emoji of each group, counted in file order.
        var positionInClass = [Int](repeating: 0, count: classNames.count)
        var split: [UInt8] = []
        split.reserveCapacity(labels.count)
        for label in labels {
            let p = positionInClass[Int(label)]
            positionInClass[Int(label)] += 1
            split.append(p % heldOutPeriod == heldOutPeriod - 1 ? 1 : 0)
        }
        return EmojiSprites(size: size, classNames: classNames, labels: labels, split: split,
                            colour: colour, alpha: alpha, items: items)
    }

    /// Sort key of an Emoji version such as `E0.6` or `E13.1`; a missing version sorts last.
    static func versionKey(_ version: String) -> [Int] {
        let parts = version.dropFirst().split(separator: ".").map { Int($0) }
        guard version.hasPrefix("E"), !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else { return [Int.max] }
        return parts.map { $0! }
    }

    /// Floats in [0, 1] to bytes, rounding to nearest.
    static func quantize(_ values: [Float]) -> [UInt8] {
        values.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
    }
}

/// Emoji as sprites: colour over white and coverage, at one size, with the dataset's labels and
/// split (`EmojiDatasetBuilder.buildSprites`).
public struct EmojiSprites: Sendable {
    /// Side of each sprite in pixels.
    public var size: Int
    /// Class names (the emoji-test groups).
    public var classNames: [String]
    /// The class of each sprite.
    public var labels: [UInt8]
    /// 0 train, 1 held out: the split of `gen dataset emoji`.
    public var split: [UInt8]
    /// `[count, 3, size, size]`, each glyph composited over white, in [0, 1].
    public var colour: [Float]
    /// `[count, size, size]`, the glyph's coverage in [0, 1].
    public var alpha: [Float]
    /// Metadata of each sprite.
    public var items: [DatasetItem]

    public init(size: Int, classNames: [String], labels: [UInt8], split: [UInt8], colour: [Float], alpha: [Float],
                items: [DatasetItem]) {
        precondition(colour.count == labels.count * 3 * size * size && alpha.count == labels.count * size * size,
                     "sprites need 3 colour planes and one coverage plane each")
        self.size = size
        self.classNames = classNames
        self.labels = labels
        self.split = split
        self.colour = colour
        self.alpha = alpha
        self.items = items
    }

    /// Number of sprites.
    public var count: Int { labels.count }

    /// Indices of the sprites in `split` (0 train, 1 held out), ascending.
    public func indices(split which: UInt8) -> [Int] { split.indices.filter { split[$0] == which } }
}

/// FreeType + HarfBuzz state for one colour emoji font. Not thread-safe; used within one build.
final class EmojiRenderer {
    private var library: FT_Library?
    private var face: FT_Face?
    private var hbFont: OpaquePointer?
    private var buffer: OpaquePointer?
    private let fontPath: String

    init(fontPath: String) throws {
        self.fontPath = fontPath
        let package = "reinstall the Debian package fonts-noto-color-emoji"
        var error = FT_Init_FreeType(&library)
        guard error == 0, let library else { throw DatasetError.missingSource("cannot initialise FreeType (error \(error))") }
        error = FT_New_Face(library, fontPath, 0, &face)
        guard error == 0, let face else {
            throw DatasetError.missingSource("cannot open emoji font \(fontPath) (FreeType error \(error)); \(package)")
        }
        // Pick the largest bitmap strike: colour emoji fonts are bitmap-only.
        let strikes = Int(face.pointee.num_fixed_sizes)
        guard strikes > 0, let sizes = face.pointee.available_sizes else {
            throw DatasetError.missingSource("font \(fontPath) has no bitmap strikes, so it is not a colour bitmap "
                + "emoji font; use NotoColorEmoji.ttf from fonts-noto-color-emoji")
        }
        var best = 0
        for i in 1..<max(strikes, 1) where sizes[i].y_ppem > sizes[best].y_ppem { best = i }
        error = FT_Select_Size(face, FT_Int(best))
        guard error == 0 else {
            throw DatasetError.missingSource("cannot select the bitmap strike of \(fontPath) (FreeType error \(error)); \(package)")
        }
        guard let blob = hb_blob_create_from_file(fontPath) else {
            throw DatasetError.missingSource("HarfBuzz cannot read \(fontPath); \(package)")
        }
        defer { hb_blob_destroy(blob) }
        guard hb_blob_get_length(blob) > 0, let hbFace = hb_face_create(blob, 0) else {
            throw DatasetError.missingSource("HarfBuzz cannot read \(fontPath); \(package)")
        }
        defer { hb_face_destroy(hbFace) }
        hbFont = hb_font_create(hbFace)
        buffer = hb_buffer_create()
        guard hbFont != nil, hb_buffer_allocation_successful(buffer) != 0 else {
            throw DatasetError.missingSource("HarfBuzz could not allocate a font or buffer")
        }
    }

    deinit {
        if let buffer { hb_buffer_destroy(buffer) }
        if let hbFont { hb_font_destroy(hbFont) }
        if let face { FT_Done_Face(face) }
        if let library { FT_Done_FreeType(library) }
    }

    /// The glyph the font draws for a code point sequence, if shaping yields exactly one nonzero
    /// glyph (default-ignorable code points such as ZWJ and VS16 that survive shaping are removed).
    func singleGlyph(for codePoints: [UInt32]) -> UInt32? {
        hb_buffer_clear_contents(buffer)
        hb_buffer_set_flags(buffer, HB_BUFFER_FLAG_REMOVE_DEFAULT_IGNORABLES)
        codePoints.withUnsafeBufferPointer { cps in
            hb_buffer_add_codepoints(buffer, cps.baseAddress, Int32(cps.count), 0, Int32(cps.count))
        }
        hb_buffer_guess_segment_properties(buffer)
        hb_shape(hbFont, buffer, nil, 0)
        var glyphCount: UInt32 = 0
        guard let infos = hb_buffer_get_glyph_infos(buffer, &glyphCount), glyphCount == 1 else { return nil }
        let glyph = infos[0].codepoint
        return glyph == 0 ? nil : glyph
    }

    /// The glyph's colour bitmap composited over white and centred in a square white canvas whose
    /// side is the bitmap's larger dimension, with a 64-bit FNV-1a hash of the source bitmap (to
    /// find glyphs drawn identically); nil if the glyph has no BGRA bitmap.
    func render(glyph: UInt32) -> (image: RGBImage, alpha: [Float], bitmapHash: UInt64)? {
        guard let face, FT_Load_Glyph(face, glyph, FT_Int32(FT_LOAD_COLOR)) == 0,
              let slot = face.pointee.glyph
        else { return nil }
        let bitmap = slot.pointee.bitmap
        let width = Int(bitmap.width), rows = Int(bitmap.rows), pitch = Int(bitmap.pitch)
        guard bitmap.pixel_mode == UInt8(FT_PIXEL_MODE_BGRA.rawValue), width > 0, rows > 0,
              abs(pitch) >= width * 4, let source = bitmap.buffer
        else { return nil }
        let side = max(width, rows)
        let x0 = (side - width) / 2, y0 = (side - rows) / 2
        let plane = side * side
        var planes = [Float](repeating: 1, count: 3 * plane)
        var coverage = [Float](repeating: 0, count: plane)
        let fnvPrime: UInt64 = 0x0000_0100_0000_01B3
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        hash = (hash ^ UInt64(width)) &* fnvPrime
        hash = (hash ^ UInt64(rows)) &* fnvPrime
        planes.withUnsafeMutableBufferPointer { out in
            for y in 0..<rows {
                // A negative pitch means the rows are stored bottom-up from `buffer`.
                let row = pitch >= 0 ? source + y * pitch : source + (rows - 1 - y) * -pitch
                let base = (y0 + y) * side + x0
                for x in 0..<width {
                    let b = Float(row[4 * x]), g = Float(row[4 * x + 1])
                    let r = Float(row[4 * x + 2]), a = Float(row[4 * x + 3])
                    let bgra = UInt64(row[4 * x]) | UInt64(row[4 * x + 1]) << 8
                        | UInt64(row[4 * x + 2]) << 16 | UInt64(row[4 * x + 3]) << 24
                    hash = (hash ^ bgra) &* fnvPrime
                    // Premultiplied colour over white: c + (1 - alpha) * 1.
                    let white = 1 - a * (1 / 255)
                    out[base + x] = min(1, r * (1 / 255) + white)
                    out[plane + base + x] = min(1, g * (1 / 255) + white)
                    out[2 * plane + base + x] = min(1, b * (1 / 255) + white)
                    coverage[base + x] = a * (1 / 255)
                }
            }
        }
        return (RGBImage(width: side, height: side, planes: planes), coverage, hash)
    }
}
