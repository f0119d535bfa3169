import Foundation
import Testing
import MillraceImaging
import MillracePipelines

/// A temp folder holding `count` small colour PNGs (48×40, seeded), plus its path.
private func makePool(count: Int, extra: [String: [UInt8]] = [:]) throws -> String {
    let dir = NSTemporaryDirectory() + "millrace-colorize-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for i in 0..<count {
        try bssTestImage(width: 48, height: 40, seed: UInt64(100 + i)).writePNG(path: dir + "/ref\(i).png")
    }
    for (name, bytes) in extra { try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name)) }
    return dir
}

@Suite struct ColorizeTests {
    @Test func exactCropIsTopMatch() throws {
        let dir = try makePool(count: 4)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pool = ReferencePool(folder: dir)
        #expect(try pool.index())
        #expect(pool.patchCount == 20)
        let image = try pool.image(at: 2)
        let rect = PatchDescriptor.referencePatches(width: image.width, height: image.height)[2]
        let hits = try pool.search(luma: PatchDescriptor.standardLuma(Colorizer.grayscale(image), rect: rect), top: 3)
        #expect(hits[0].imageIndex == 2 && hits[0].rect == rect && hits[0].similarity > 0.999)
        // Cache: a second pool object reads the index back; a changed folder rebuilds it.
        let again = ReferencePool(folder: dir)
        #expect(try again.index() == false)
        try bssTestImage(width: 48, height: 40, seed: 999).writePNG(path: dir + "/ref9.png")
        #expect(try again.index() == true && again.patchCount == 25)
    }

    @Test func colorizingPoolImageRecoversColor() throws {
        let dir = try makePool(count: 4)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pool = ReferencePool(folder: dir)
        try pool.index()
        let original = try RGBImage.load(path: dir + "/ref1.png")
        let gray = Colorizer.grayscale(original)
        let result = try Colorizer(pool: pool).colorize(gray: gray)
        #expect(result.references.count == 12)
        #expect(result.references.filter { $0.rank == 0 }.allSatisfy { $0.imageIndex == 1 })
        let psnrAB = ColorMetrics.psnrAB(result.image, original)
        // Bound: a, b within a few units (a, b scaled by 1/256): PSNR(a, b) > 30 dB.
        #expect(psnrAB > 30, "PSNR(a,b) = \(psnrAB)")
        // Beats the gray image and the no-retrieval mode.
        #expect(psnrAB > ColorMetrics.psnrAB(gray, original))
        let plain = try Colorizer(pool: pool, mode: .noRetrieval).colorize(gray: gray)
        #expect(plain.references.isEmpty && psnrAB > ColorMetrics.psnrAB(plain.image, original))
        let tinted = Colorizer.reinhard(gray: gray, reference: try pool.image(at: 0))
        #expect(tinted.width == 48 && tinted.height == 40)
        let canvas = try Colorizer(pool: pool).canvas(gray: gray, references: result.references)
        #expect(canvas.width == 96 && canvas.height == 80)
    }

    @Test func errors() throws {
        let empty = try makePool(count: 0)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        do { try ReferencePool(folder: empty).index(); Issue.record("empty pool accepted") } catch let e as ColorError {
            #expect(e.message.contains("empty"))
        }
        let bad = try makePool(count: 1, extra: ["broken.png": Array("not an image".utf8)])
        defer { try? FileManager.default.removeItem(atPath: bad) }
        do { try ReferencePool(folder: bad).index(); Issue.record("unreadable file accepted") } catch let e as ColorError {
            #expect(e.message.contains("cannot read") && e.message.contains("broken.png"))
        }
        #expect(throws: ColorError.self) { try ReferencePool(folder: empty + "/missing").index() }
    }

    @Test func metrics() {
        let x = bssTestImage(width: 8, height: 8, seed: 3)
        #expect(ColorMetrics.psnrRGB(x, x) >= 100 && ColorMetrics.deltaE76(x, x) < 1e-6)
        #expect(ColorMetrics.colorfulness(Colorizer.grayscale(x)) < 1e-6)
        #expect(ColorMetrics.colorfulness(x) > 0)
    }
}
