import MillraceCodecs

extension RGBImage {
    /// Container formats `decode` understands.
    public enum FileFormat: Sendable, Equatable {
        case png, jpeg
    }

    /// Decodes PNG or JPEG (sniffed from the magic bytes); anything else is
    /// `ImageError.unsupportedFormat`.
    ///
    /// PNGs of any color type and bit depth are accepted: gray is replicated, palettes
    /// expanded, 16-bit samples rounded to 8 bits, and transparency composited over white.
    /// JPEGs may be gray, YCbCr, RGB or CMYK (converted without an ICC profile). Gamma and ICC
    /// data are ignored: samples are taken as sRGB. The header is checked against `maxPixels`
    /// before any pixel memory is allocated (`ImageError.tooLarge`).
    public static func decode(_ bytes: [UInt8], maxPixels: Int = RGBImage.defaultMaxPixels) throws -> RGBImage {
        var width: UInt32 = 0, height: UInt32 = 0
        var pixels: UnsafeMutablePointer<UInt8>? = nil
        var message = [CChar](repeating: 0, count: 256)
        let status = bytes.withUnsafeBufferPointer { data in
            mrc_image_decode(data.baseAddress, data.count, UInt64(max(0, maxPixels)), &pixels,
                             &width, &height, &message, message.count)
        }
        defer { mrc_free(pixels) }
        if status != MRC_OK {
            throw ImageError(status: status, message: message, width: width, height: height,
                             limit: maxPixels, sniffed: sniffFormat(bytes) != nil)
        }
        return fromInterleavedRGB8(UnsafeBufferPointer(start: pixels!, count: Int(width) * Int(height) * 3),
                                   width: Int(width), height: Int(height))
    }

    /// Reads and decodes a PNG or JPEG file. See `decode(_:maxPixels:)`.
    public static func load(path: String, maxPixels: Int = RGBImage.defaultMaxPixels) throws -> RGBImage {
        try decode(ImageFileIO.readAll(path: path), maxPixels: maxPixels)
    }

    /// The format and declared size of an image, read from its header alone (no pixel memory
    /// is allocated and no pixel limit applies).
    public static func probe(_ bytes: [UInt8]) throws -> (format: FileFormat, width: Int, height: Int) {
        var width: UInt32 = 0, height: UInt32 = 0
        var format = MRC_FORMAT_UNKNOWN
        var message = [CChar](repeating: 0, count: 256)
        let status = bytes.withUnsafeBufferPointer { data in
            mrc_image_info(data.baseAddress, data.count, &format, &width, &height, &message,
                           message.count)
        }
        if status != MRC_OK {
            throw ImageError(status: status, message: message, width: width, height: height,
                             limit: Int.max, sniffed: format != MRC_FORMAT_UNKNOWN)
        }
        return (format == MRC_FORMAT_PNG ? .png : .jpeg, Int(width), Int(height))
    }

    /// The format named by the magic bytes, or nil.
    public static func sniffFormat(_ bytes: [UInt8]) -> FileFormat? {
        let format = bytes.withUnsafeBufferPointer { mrc_sniff($0.baseAddress, $0.count) }
        switch format {
        case MRC_FORMAT_PNG: return .png
        case MRC_FORMAT_JPEG: return .jpeg
        default: return nil
        }
    }

    /// PNG bytes; values are clamped to [0,1] and rounded to 8 bits.
    ///
    /// `fast: true` uses zlib level 1 with the Z_RLE strategy and the UP filter on every row
    /// (4-14x faster, files 2-32% larger: for previews streamed during a run); the default
    /// uses zlib level 6 with adaptive filtering (for files that are kept).
    public func pngData(fast: Bool = false) throws -> [UInt8] {
        try encode { rgb, out, outSize, message in
            mrc_png_encode(rgb, UInt32(width), UInt32(height), fast ? MRC_PNG_FAST : MRC_PNG_DEFAULT,
                           &out, &outSize, &message, message.count)
        }
    }

    /// Baseline JPEG bytes (YCbCr 4:2:0) at `quality` in 1...100; values are clamped to [0,1]
    /// and rounded to 8 bits first.
    public func jpegData(quality: Int = 90) throws -> [UInt8] {
        precondition((1...100).contains(quality), "JPEG quality \(quality) is outside 1...100")
        return try encode { rgb, out, outSize, message in
            mrc_jpeg_encode(rgb, UInt32(width), UInt32(height), Int32(quality), &out, &outSize,
                            &message, message.count)
        }
    }

    /// Writes atomically (temporary file in the same folder, then rename), so an existing file
    /// is never left half-written.
    public func writePNG(path: String, fast: Bool = false) throws {
        try ImageFileIO.writeAtomically(pngData(fast: fast), path: path)
    }

    /// Runs a C encoder on this image's 8-bit interleaved pixels and takes ownership of its output.
    private func encode(
        _ body: (UnsafePointer<UInt8>, inout UnsafeMutablePointer<UInt8>?, inout Int, inout [CChar]) -> mrc_status
    ) throws -> [UInt8] {
        guard width > 0 && height > 0 else { throw ImageError.emptyImage }
        guard width <= Int(Int32.max) && height <= Int(Int32.max) else {
            throw ImageError.tooLarge(width: width, height: height, limit: Int(Int32.max))
        }
        let rgb = interleavedRGB8()
        var out: UnsafeMutablePointer<UInt8>? = nil
        var outSize = 0
        var message = [CChar](repeating: 0, count: 256)
        let status = rgb.withUnsafeBufferPointer { body($0.baseAddress!, &out, &outSize, &message) }
        defer { mrc_free(out) }
        if status != MRC_OK {
            throw ImageError(status: status, message: message, width: UInt32(clamping: width),
                             height: UInt32(clamping: height), limit: Int(Int32.max), sniffed: true)
        }
        return Array(UnsafeBufferPointer(start: out!, count: outSize))
    }

    /// Interleaved 8-bit RGB: each value clamped to [0, 1] (NaN to 0), scaled by 255, rounded.
    func interleavedRGB8() -> [UInt8] {
        let n = width * height
        return [UInt8](unsafeUninitializedCapacity: 3 * n) { out, initialized in
            planes.withUnsafeBufferPointer { p in
                for c in 0..<3 {
                    for i in 0..<n {
                        let v = p[c * n + i]
                        let clamped: Float = v > 0 ? (v < 1 ? v : 1) : 0
                        out[3 * i + c] = UInt8(clamped * 255 + 0.5)
                    }
                }
            }
            initialized = 3 * n
        }
    }

    /// An image from interleaved 8-bit RGB (`v / 255`).
    static func fromInterleavedRGB8(_ rgb: UnsafeBufferPointer<UInt8>, width: Int, height: Int) -> RGBImage {
        let n = width * height
        precondition(rgb.count == 3 * n)
        var table = [Float](repeating: 0, count: 256)
        for v in 0..<256 { table[v] = Float(v) / 255 }
        let planes = [Float](unsafeUninitializedCapacity: 3 * n) { out, initialized in
            table.withUnsafeBufferPointer { t in
                for c in 0..<3 {
                    for i in 0..<n { out[c * n + i] = t[Int(rgb[3 * i + c])] }
                }
            }
            initialized = 3 * n
        }
        return RGBImage(width: width, height: height, planes: planes)
    }
}

extension ImageError {
    /// Maps a codec status and message to an error.
    init(status: mrc_status, message: [CChar], width: UInt32, height: UInt32, limit: Int,
         sniffed: Bool) {
        let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
                          as: UTF8.self)
        switch status {
        case MRC_EMPTY:
            self = .emptyImage
        case MRC_TOO_LARGE:
            self = .tooLarge(width: Int(width), height: Int(height), limit: limit)
        case MRC_UNSUPPORTED where !sniffed:
            self = .unsupportedFormat
        default:
            // Unsupported variants of a recognised format, damage, and allocation failures.
            self = .corrupt(text.isEmpty ? "unknown codec error \(status.rawValue)" : text)
        }
    }
}
