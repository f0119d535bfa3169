import Foundation
import Testing
import MillraceImaging
import MillraceTestSupport

// MARK: - Hand-built PNGs

/// CRC-32 (ISO 3309, as PNG uses it), bit by bit: slow but obviously right.
private func pngCRC32<S: Sequence>(_ bytes: S) -> UInt32 where S.Element == UInt8 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return ~crc
}

private func bigEndian(_ v: UInt32) -> [UInt8] {
    [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
}

/// One PNG chunk: length, type, data, CRC over type + data.
private func pngChunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
    let typeBytes = Array(type.utf8)
    return bigEndian(UInt32(data.count)) + typeBytes + data + bigEndian(pngCRC32(typeBytes + data))
}

/// A zlib stream of stored (uncompressed) blocks.
private func zlibStored(_ raw: [UInt8]) -> [UInt8] {
    var out: [UInt8] = [0x78, 0x01]
    var offset = 0
    repeat {
        let n = min(65_535, raw.count - offset)
        let final: UInt8 = offset + n == raw.count ? 1 : 0
        out += [final, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8((~n >> 8) & 0xFF)]
        out += raw[offset..<(offset + n)]
        offset += n
    } while offset < raw.count
    var a: UInt32 = 1, b: UInt32 = 0
    for byte in raw {
        a = (a + UInt32(byte)) % 65_521
        b = (b + a) % 65_521
    }
    return out + bigEndian(b << 16 | a)
}

private let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

private func ihdr(width: UInt32, height: UInt32, bitDepth: UInt8, colorType: UInt8) -> [UInt8] {
    pngChunk("IHDR", bigEndian(width) + bigEndian(height) + [bitDepth, colorType, 0, 0, 0])
}

/// A complete PNG: `rows` are packed scanlines without the filter byte (filter 0 is added).
private func handBuiltPNG(width: Int, height: Int, bitDepth: UInt8, colorType: UInt8,
                          rows: [[UInt8]], extraChunks: [[UInt8]] = []) -> [UInt8] {
    precondition(rows.count == height)
    var raw: [UInt8] = []
    for row in rows { raw += [0] + row }
    var png = pngSignature + ihdr(width: UInt32(width), height: UInt32(height), bitDepth: bitDepth,
                                  colorType: colorType)
    for chunk in extraChunks { png += chunk }
    return png + pngChunk("IDAT", zlibStored(raw)) + pngChunk("IEND", [])
}

// MARK: - Helpers

/// A random image whose values are exact 8-bit levels (k / 255).
private func random8BitImage(width: Int, height: Int, seed: UInt64) -> RGBImage {
    var rng = TestRNG(seed: seed)
    let planes = (0..<(3 * width * height)).map { _ in Float(UInt8.random(in: 0...255, using: &rng)) / 255 }
    return RGBImage(width: width, height: height, planes: planes)
}

private func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

private func expectPixel(_ image: RGBImage, x: Int, y: Int, _ rgb: (Int, Int, Int),
                         sourceLocation: SourceLocation = #_sourceLocation) {
    let p = image.pixel(x: x, y: y)
    let got = (Int((p.r * 255).rounded()), Int((p.g * 255).rounded()), Int((p.b * 255).rounded()))
    #expect(got == rgb, "pixel (\(x), \(y))", sourceLocation: sourceLocation)
}

/// Alpha compositing over white exactly as the decoder does it (8-bit, rounded).
private func overWhite(_ v: Int, _ a: Int) -> Int { (v * a + 255 * (255 - a) + 127) / 255 }

private func decodeError(_ bytes: [UInt8], maxPixels: Int = RGBImage.defaultMaxPixels) -> ImageError? {
    do {
        _ = try RGBImage.decode(bytes, maxPixels: maxPixels)
        return nil
    } catch let error as ImageError {
        return error
    } catch {
        Issue.record("unexpected error type \(error)")
        return nil
    }
}

private func isCorrupt(_ error: ImageError?) -> Bool {
    if case .corrupt = error { return true }
    return false
}

/// A fresh empty folder under the system temporary directory.
private func makeTempFolder() throws -> String {
    let path = NSTemporaryDirectory() + "millrace-image-tests-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

// MARK: - Tests

/// Everything in this file, under one name for `swift test --filter ImageTests`.
@Suite enum ImageTests {}

extension ImageTests {
@Suite struct Codec {
    @Test func pngRoundTripIsExactAt8Bits() throws {
        let image = random8BitImage(width: 37, height: 23, seed: 1)
        for fast in [false, true] {
            let bytes = try image.pngData(fast: fast)
            #expect(RGBImage.sniffFormat(bytes) == .png)
            let back = try RGBImage.decode(bytes)
            #expect(back == image, "fast: \(fast)")
        }
    }

    @Test func pngEncodingClampsAndRounds() throws {
        let image = RGBImage(width: 3, height: 1, planes: [-0.5, 1.7, .nan, 0.5, 0.2, 1, 0, 0, 0.999])
        let back = try RGBImage.decode(image.pngData())
        expectPixel(back, x: 0, y: 0, (0, 128, 0))    // -0.5 -> 0, 0.5 -> 127.5 -> 128
        expectPixel(back, x: 1, y: 0, (255, 51, 0))   // 1.7 -> 255, 0.2 -> 51
        expectPixel(back, x: 2, y: 0, (0, 255, 255))  // NaN -> 0, 0.999 -> 254.7 -> 255
    }

    /// libjpeg at quality 95 with 4:2:0 chroma on a smooth image: every channel within 20/255
    /// of the original (the worst pixels are where chroma changes fastest, which 4:2:0 halves),
    /// and within 3/255 on average (measured with libjpeg-turbo 2.1: 15/255 and 1.5/255).
    @Test func jpegDecodeIsCloseToOriginal() throws {
        let (w, h) = (40, 24)
        var planes = [Float](repeating: 0, count: 3 * w * h)
        for y in 0..<h {
            for x in 0..<w {
                let i = y * w + x
                planes[i] = Float(x) / Float(w - 1)
                planes[w * h + i] = Float(y) / Float(h - 1)
                planes[2 * w * h + i] = 0.5 + 0.3 * sin(Float(x + y) / 6)
            }
        }
        let image = RGBImage(width: w, height: h, planes: planes)
        let bytes = try image.jpegData(quality: 95)
        #expect(RGBImage.sniffFormat(bytes) == .jpeg)
        let back = try RGBImage.decode(bytes)
        #expect(back.width == w && back.height == h)
        let diffs = zip(back.planes, image.planes).map { abs($0 - $1) }
        let mean = diffs.reduce(0, +) / Float(diffs.count)
        #expect(diffs.max()! <= 20 / 255, "max error \(diffs.max()! * 255)/255")
        #expect(mean <= 3 / 255, "mean error \(mean * 255)/255")
        #expect(try RGBImage.probe(bytes) == (.jpeg, w, h))
    }

    @Test func grayPNGDecodes() throws {
        // 8-bit gray.
        let gray8 = handBuiltPNG(width: 3, height: 2, bitDepth: 8, colorType: 0,
                                 rows: [[0, 128, 255], [7, 77, 200]])
        let a = try RGBImage.decode(gray8)
        #expect(a.width == 3 && a.height == 2)
        expectPixel(a, x: 1, y: 0, (128, 128, 128))
        expectPixel(a, x: 2, y: 1, (200, 200, 200))
        // 2-bit gray: levels 0..3 scale to 0, 85, 170, 255.
        let gray2 = handBuiltPNG(width: 4, height: 1, bitDepth: 2, colorType: 0,
                                 rows: [[0b00_01_10_11]])
        let b = try RGBImage.decode(gray2)
        for (x, v) in [0, 85, 170, 255].enumerated() { expectPixel(b, x: x, y: 0, (v, v, v)) }
        // 16-bit gray: rounded to 8 bits (0x1234 * 255 / 65535 = 18.1 -> 18).
        let gray16 = handBuiltPNG(width: 2, height: 1, bitDepth: 16, colorType: 0,
                                  rows: [[0x12, 0x34, 0xFF, 0xFF]])
        let c = try RGBImage.decode(gray16)
        expectPixel(c, x: 0, y: 0, (18, 18, 18))
        expectPixel(c, x: 1, y: 0, (255, 255, 255))
        // Gray + alpha, composited over white.
        let grayAlpha = handBuiltPNG(width: 2, height: 1, bitDepth: 8, colorType: 4,
                                     rows: [[100, 255, 100, 64]])
        let d = try RGBImage.decode(grayAlpha)
        expectPixel(d, x: 0, y: 0, (100, 100, 100))
        let v = overWhite(100, 64)
        expectPixel(d, x: 1, y: 0, (v, v, v))
    }

    @Test func palettePNGDecodes() throws {
        let plte = pngChunk("PLTE", [255, 0, 0, 0, 255, 0, 10, 20, 30])
        let trns = pngChunk("tRNS", [255, 255, 0])  // third entry fully transparent
        let png = handBuiltPNG(width: 2, height: 2, bitDepth: 8, colorType: 3,
                               rows: [[0, 1], [2, 0]], extraChunks: [plte, trns])
        let image = try RGBImage.decode(png)
        expectPixel(image, x: 0, y: 0, (255, 0, 0))
        expectPixel(image, x: 1, y: 0, (0, 255, 0))
        expectPixel(image, x: 0, y: 1, (255, 255, 255))  // transparent -> white
        expectPixel(image, x: 1, y: 1, (255, 0, 0))
        // 4-bit palette without tRNS.
        let png4 = handBuiltPNG(width: 3, height: 1, bitDepth: 4, colorType: 3,
                                rows: [[0x21, 0x00]], extraChunks: [plte])
        let image4 = try RGBImage.decode(png4)
        expectPixel(image4, x: 0, y: 0, (10, 20, 30))
        expectPixel(image4, x: 1, y: 0, (0, 255, 0))
        expectPixel(image4, x: 2, y: 0, (255, 0, 0))
    }

    @Test func rgbaPNGCompositesOverWhite() throws {
        let png = handBuiltPNG(width: 3, height: 1, bitDepth: 8, colorType: 6,
                               rows: [[200, 100, 50, 128, 1, 2, 3, 255, 9, 9, 9, 0]])
        let image = try RGBImage.decode(png)
        expectPixel(image, x: 0, y: 0, (overWhite(200, 128), overWhite(100, 128), overWhite(50, 128)))
        expectPixel(image, x: 1, y: 0, (1, 2, 3))
        expectPixel(image, x: 2, y: 0, (255, 255, 255))
        // 16-bit RGB + alpha.
        let png16 = handBuiltPNG(width: 1, height: 1, bitDepth: 16, colorType: 6,
                                 rows: [[0xFF, 0xFF, 0, 0, 0x80, 0x80, 0xFF, 0xFF]])
        expectPixel(try RGBImage.decode(png16), x: 0, y: 0, (255, 0, 128))
    }

    @Test func badInputThrowsImageError() throws {
        let good = try random8BitImage(width: 16, height: 16, seed: 2).pngData()
        let jpeg = try random8BitImage(width: 16, height: 16, seed: 3).jpegData()

        #expect(decodeError([]) == .emptyImage)
        #expect(decodeError(Array("hello, world".utf8)) == .unsupportedFormat)
        #expect(decodeError([0xFF, 0xD8]) == .unsupportedFormat)  // too short to be a JPEG
        #expect(isCorrupt(decodeError(Array(pngSignature))))      // signature only
        #expect(isCorrupt(decodeError(Array(good.prefix(good.count / 2)))))
        #expect(isCorrupt(decodeError(Array(jpeg.prefix(jpeg.count / 2)))))
        #expect(isCorrupt(decodeError([0xFF, 0xD8, 0xFF] + [UInt8](repeating: 0, count: 64))))

        // A flipped bit inside IDAT: libpng catches it with the chunk CRC.
        var flipped = good
        flipped[good.count - 20] ^= 0x10
        #expect(isCorrupt(decodeError(flipped)))

        // Every prefix of both files fails cleanly (or, for a JPEG missing only its EOI marker,
        // decodes), never crashes.
        for n in stride(from: 0, to: good.count, by: 7) { _ = decodeError(Array(good.prefix(n))) }
        for n in stride(from: 0, to: jpeg.count - 2, by: 7) {
            #expect(decodeError(Array(jpeg.prefix(n))) != nil, "JPEG prefix of \(n) bytes")
        }

        // A header that declares zero width.
        let zeroWidth = pngSignature + ihdr(width: 0, height: 5, bitDepth: 8, colorType: 2)
        #expect(decodeError(zeroWidth) == .emptyImage)
    }

    @Test func hugeDeclaredSizeIsRefusedBeforeDecoding() throws {
        // Signature + IHDR (20000x20000 RGB, valid CRC) + a stub IDAT: nowhere near enough
        // data for the pixels, so only a header check can answer "too large".
        let idat = pngChunk("IDAT", zlibStored([0]))
        let png = pngSignature + ihdr(width: 20_000, height: 20_000, bitDepth: 8, colorType: 2) + idat
        let error = decodeError(png)
        #expect(error == .tooLarge(width: 20_000, height: 20_000, limit: RGBImage.defaultMaxPixels))
        let text = error?.description ?? ""
        #expect(text.contains("20000x20000 = 400 megapixels"), "\(text)")
        #expect(text.contains("limit of 16 megapixels"), "\(text)")
        #expect(text.contains("resize"), "\(text)")
        #expect(try RGBImage.probe(png) == (.png, 20_000, 20_000))

        // The limit is an argument.
        let small = try random8BitImage(width: 10, height: 10, seed: 4).pngData()
        #expect(decodeError(small, maxPixels: 99) == .tooLarge(width: 10, height: 10, limit: 99))
        #expect(decodeError(small, maxPixels: 100) == nil)

        // Same for a JPEG whose SOF0 declares 20000x20000.
        var jpeg = try random8BitImage(width: 16, height: 16, seed: 5).jpegData()
        let sof = try #require((0..<(jpeg.count - 1)).first { jpeg[$0] == 0xFF && jpeg[$0 + 1] == 0xC0 })
        jpeg.replaceSubrange((sof + 5)..<(sof + 9), with: [0x4E, 0x20, 0x4E, 0x20])
        #expect(decodeError(jpeg) == .tooLarge(width: 20_000, height: 20_000, limit: RGBImage.defaultMaxPixels))
    }

    @Test func errorDescriptionsSayWhatToDo() {
        let errors: [ImageError] = [.unsupportedFormat, .corrupt("PNG: IDAT: CRC error"),
                                    .tooLarge(width: 5000, height: 4000, limit: 16_000_000),
                                    .emptyImage, .io("cannot open x.png: No such file or directory")]
        for error in errors { #expect(error.description.contains(";"), "\(error)") }
        #expect(ImageError.tooLarge(width: 5000, height: 4000, limit: 16_000_000).description
            .hasPrefix("image is 5000x4000 = 20 megapixels, over the limit of 16 megapixels; resize it first"))
        #expect(ImageError.tooLarge(width: 4001, height: 4000, limit: 16_000_000).description
            .contains("16.004 megapixels"))
    }

    @Test func writePNGIsAtomicAndLeavesNoTempFile() throws {
        let folder = try makeTempFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/out.png"
        let first = random8BitImage(width: 8, height: 5, seed: 6)
        let second = random8BitImage(width: 3, height: 9, seed: 7)

        try first.writePNG(path: path)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["out.png"])
        #expect(try RGBImage.load(path: path) == first)

        try second.writePNG(path: path, fast: true)  // overwrite
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["out.png"])
        #expect(try RGBImage.load(path: path) == second)

        // A failed write leaves the existing file as it was, and no temporary file.
        #expect(throws: ImageError.self) { try first.writePNG(path: folder + "/missing/out.png") }
        #expect(throws: ImageError.self) { try first.writePNG(path: folder) }  // a folder
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["out.png"])
        #expect(try RGBImage.load(path: path) == second)
    }

    @Test func loadMissingFileIsIOError() {
        do {
            _ = try RGBImage.load(path: "/nonexistent/millrace/none.png")
            Issue.record("expected an error")
        } catch let error as ImageError {
            guard case .io(let message) = error else {
                Issue.record("expected .io, got \(error)")
                return
            }
            #expect(message.contains("/nonexistent/millrace/none.png"))
        } catch {
            Issue.record("unexpected error type \(error)")
        }
    }
}

}

extension ImageTests {
@Suite struct Resize {
    @Test func areaResizeOfConstantIsConstant() {
        let image = RGBImage(width: 7, height: 5, fill: (0.2, 0.5, 0.9))
        for (w, h) in [(3, 4), (11, 13), (1, 1), (7, 2), (14, 10)] {
            let out = image.resizedArea(width: w, height: h)
            #expect(out.width == w && out.height == h)
            let expected = RGBImage(width: w, height: h, fill: (0.2, 0.5, 0.9))
            #expect(maxAbsDiff(out.planes, expected.planes) < 1e-6, "\(w)x\(h)")
        }
    }

    @Test func integerRatioAreaDownscaleIsBlockMean() {
        let image = random8BitImage(width: 12, height: 6, seed: 8)
        let out = image.resizedArea(width: 4, height: 2)  // 3x3 blocks
        var expected = [Float]()
        for c in 0..<3 {
            for by in 0..<2 {
                for bx in 0..<4 {
                    var sum: Float = 0
                    for y in (3 * by)..<(3 * by + 3) {
                        for x in (3 * bx)..<(3 * bx + 3) { sum += image.planes[(c * 6 + y) * 12 + x] }
                    }
                    expected.append(sum / 9)
                }
            }
        }
        #expect(maxAbsDiff(out.planes, expected) < 1e-6)
    }

    @Test func areaResizeWeightsFractionalOverlaps() {
        // 3 -> 2: each output covers 1.5 inputs.
        let row = RGBImage(width: 3, height: 1, planes: [0, 0.3, 0.9, 0, 0, 0, 1, 1, 1])
        let out = row.resizedArea(width: 2, height: 1)
        #expect(maxAbsDiff(Array(out.planes[0..<2]), [(0 + 0.5 * 0.3) / 1.5, (0.5 * 0.3 + 0.9) / 1.5]) < 1e-6)
        // 2 -> 3 upscaling: the middle output straddles both inputs equally.
        let two = RGBImage(width: 2, height: 1, planes: [0, 1, 0, 0, 0, 0])
        #expect(maxAbsDiff(Array(two.resizedArea(width: 3, height: 1).planes[0..<3]), [0, 0.5, 1]) < 1e-6)
        // The mean is preserved by any area resize.
        let image = random8BitImage(width: 13, height: 9, seed: 9)
        let resized = image.resizedArea(width: 5, height: 7)
        let mean = { (p: [Float]) in p.reduce(0, +) / Float(p.count) }
        #expect(abs(mean(image.planes) - mean(resized.planes)) < 1e-5)
    }

    @Test func bilinearOfConstantIsConstantAndUsesHalfPixelCentres() {
        let image = RGBImage(width: 6, height: 4, fill: (0.1, 0.6, 0.3))
        for (w, h) in [(13, 9), (2, 3), (6, 4), (1, 1)] {
            let out = image.resizedBilinear(width: w, height: h)
            #expect(maxAbsDiff(out.planes, RGBImage(width: w, height: h, fill: (0.1, 0.6, 0.3)).planes) < 1e-6)
        }
        // 2 -> 4 along x, as PyTorch's align_corners=False gives: [0, 0.25, 0.75, 1].
        let two = RGBImage(width: 2, height: 1, planes: [0, 1, 0, 0, 0, 0])
        #expect(maxAbsDiff(Array(two.resizedBilinear(width: 4, height: 1).planes[0..<4]), [0, 0.25, 0.75, 1]) < 1e-6)
    }

    @Test func nearestPicksCentredSamples() {
        let row = RGBImage(width: 4, height: 1, planes: [0, 0.25, 0.5, 0.75] + [Float](repeating: 0, count: 8))
        #expect(Array(row.resizedNearest(width: 2, height: 1).planes[0..<2]) == [0.25, 0.75])
        #expect(Array(row.resizedNearest(width: 8, height: 1).planes[0..<8]) == [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75])
    }

    @Test func cropsAndLuma() {
        let image = random8BitImage(width: 10, height: 4, seed: 10)
        let crop = image.cropped(x: 3, y: 1, width: 4, height: 2)
        #expect(crop.pixel(x: 0, y: 0) == image.pixel(x: 3, y: 1))
        #expect(crop.pixel(x: 3, y: 1) == image.pixel(x: 6, y: 2))
        let square = image.centerCropped(aspect: 1)
        #expect(square.width == 4 && square.height == 4 && square.pixel(x: 0, y: 0) == image.pixel(x: 3, y: 0))
        let wide = image.centerCropped(aspect: 5)
        #expect(wide.width == 10 && wide.height == 2 && wide.pixel(x: 0, y: 0) == image.pixel(x: 0, y: 1))
        let luma = RGBImage(width: 1, height: 1, planes: [1, 0.5, 0.25]).luma()
        #expect(abs(luma[0] - (0.299 + 0.587 * 0.5 + 0.114 * 0.25)) < 1e-6)
    }

    @Test func gridSizeAndPlacement() {
        let a = RGBImage(width: 4, height: 3, fill: (1, 0, 0))
        let b = RGBImage(width: 4, height: 3, fill: (0, 1, 0))
        let c = RGBImage(width: 2, height: 1, fill: (0, 0, 1))
        let grid = RGBImage.grid([a, b, c], columns: 2, padding: 2, background: (0.5, 0.5, 0.5))
        #expect(grid.width == 2 * 4 + 2 && grid.height == 2 * 3 + 2)
        #expect(grid.pixel(x: 0, y: 0) == (1, 0, 0))
        #expect(grid.pixel(x: 4, y: 0) == (0.5, 0.5, 0.5))  // padding
        #expect(grid.pixel(x: 6, y: 2) == (0, 1, 0))
        #expect(grid.pixel(x: 2, y: 6) == (0, 0, 1))        // small image centred in its cell
        #expect(grid.pixel(x: 0, y: 5) == (0.5, 0.5, 0.5))
        // Fewer images than columns: the grid is only as wide as needed.
        let row = RGBImage.grid([a, b], columns: 8, padding: 1)
        #expect(row.width == 9 && row.height == 3)
        #expect(RGBImage.grid([a], columns: 3).width == 4)
    }
}

}

extension ImageTests {
@Suite struct Lab {
    @Test func knownValues() {
        let colors: [(rgb: (Float, Float, Float), lab: (Float, Float, Float))] = [
            ((1, 1, 1), (100, 0, 0)),
            ((0, 0, 0), (0, 0, 0)),
            ((0.5, 0.5, 0.5), (53.389, 0, 0)),
            ((1, 0, 0), (53.241, 80.092, 67.203)),
            ((0, 0, 1), (32.297, 79.188, -107.860)),
        ]
        for (rgb, lab) in colors {
            let image = RGBImage(width: 1, height: 1, planes: [rgb.0, rgb.1, rgb.2])
            let out = image.toLab().planes
            let tolerance: Float = rgb == (1, 1, 1) ? 1e-3 : 0.02
            #expect(abs(out[0] - lab.0) < tolerance && abs(out[1] - lab.1) < tolerance
                    && abs(out[2] - lab.2) < tolerance, "\(rgb) -> \(out), expected \(lab)")
        }
    }

    @Test func roundTripOnRandomColors() {
        var rng = TestRNG(seed: 11)
        let n = 4096
        let planes = (0..<(3 * n)).map { _ in Float.random(in: 0...1, using: &rng) }
        let image = RGBImage(width: 64, height: 64, planes: planes)
        let lab = image.toLab()
        #expect(lab.planes[0..<n].allSatisfy { $0 >= 0 && $0 <= 100.001 })
        #expect(maxAbsDiff(lab.toRGB().planes, planes) < 1e-3)
    }

    @Test func toRGBClamps() {
        let lab = LabImage(width: 2, height: 1, planes: [100, 0, 0, 200, 0, 150])
        let rgb = lab.toRGB()
        #expect(rgb.planes.allSatisfy { $0 >= 0 && $0 <= 1 })
        #expect(abs(rgb.pixel(x: 0, y: 0).r - 1) < 1e-3)
    }
}
}

// MARK: - Gaussian blur

struct GaussianBlurTests {
    /// A blur keeps a flat picture as it is, spreads a point symmetrically and keeps its mass
    /// away from the edges; each plane of an image is blurred on its own.
    @Test func blurKeepsFlatPlanesAndSpreadsAPointSymmetrically() {
        let flat = GaussianBlur.plane([Float](repeating: 0.3, count: 36), width: 6, height: 6, sigma: 1.5)
        #expect(flat.allSatisfy { abs($0 - 0.3) < 1e-6 })
        var point = [Float](repeating: 0, count: 15 * 15)
        point[7 * 15 + 7] = 1
        let spread = GaussianBlur.plane(point, width: 15, height: 15, sigma: 1)
        #expect(abs(spread.reduce(0, +) - 1) < 1e-5)
        #expect(spread[7 * 15 + 7] < 0.2 && spread[7 * 15 + 7] == spread.max())
        #expect(abs(spread[7 * 15 + 6] - spread[7 * 15 + 8]) < 1e-7 && abs(spread[6 * 15 + 7] - spread[7 * 15 + 6]) < 1e-7)
        var image = RGBImage(width: 15, height: 15, fill: (0, 0.5, 1))
        image.planes[7 * 15 + 7] = 1
        let blurred = image.blurred(sigma: 1)
        #expect(Array(blurred.planes[0..<225]) == spread)
        #expect(blurred.planes[225..<675].allSatisfy { abs($0 - 0.5) < 1e-6 || abs($0 - 1) < 1e-6 })
    }
}
