import Foundation
import Testing
import MillraceCore
import MillraceImaging
import MillracePipelines
import MillraceTestSupport

/// Model refinement of colorizations, L-preserving Lab conversion, cartoon drawings and frame
/// sequences (issue #7).
@Suite struct ColorRefineTests {
    /// A tiny class-conditional model (8×8, random weights) with a null class.
    static func refiner() -> ChromaRefiner {
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        return ChromaRefiner(model: UNet2DModel(config: Fixtures.tinyUNetConfig(), seed: 5), flow: flow)
    }

    static func maxLDifference(_ x: RGBImage, _ y: RGBImage) -> Float {
        let lx = x.toLab(), ly = y.toLab(), n = x.pixelCount
        return (0..<n).map { abs(lx.planes[$0] - ly.planes[$0]) }.max()!
    }

    @Test func refineKeepsLuminanceAndIsDeterministic() throws {
        // Bit-identical reruns need the kernel settings to stay put.
        try GlobalKernelSettings.exclusive { try checkRefine() }
    }

    func checkRefine() throws {
        var r = Self.refiner()
        r.strength = 0.6
        r.steps = 3
        r.seed = 11
        // In the model's domain (8×8) and at another size (12×10, refined at 8×8).
        for (w, h) in [(8, 8), (12, 10)] {
            let original = bssTestImage(width: w, height: h, seed: 42)
            let gray = Colorizer.grayscale(original)
            let colorized = bssTestImage(width: w, height: h, seed: 43)
            let out = try r.refine(colorized: colorized, gray: gray)
            #expect(out.width == w && out.height == h)
            // Tolerance: 0.01 L units (L spans 0...100): L is restored exactly up to float rounding.
            let dL = Self.maxLDifference(out, gray)
            #expect(dL < 0.01, "max |ΔL| = \(dL)")
            // The chroma did change (the model repainted it) and the output is not gray.
            #expect(out != colorized && ColorMetrics.colorfulness(out) > 1e-4)
            // Same seed: same bytes; another seed: another image.
            #expect(try r.refine(colorized: colorized, gray: gray) == out)
            var other = r
            other.seed = 12
            #expect(try other.refine(colorized: colorized, gray: gray) != out)
        }
        // A batch gives image i the i-th noise stream: its first image matches the single call
        // (up to the batched kernels' rounding).
        let images = (0..<2).map { bssTestImage(width: 8, height: 8, seed: 50 + UInt64($0)) }
        let batch = try r.refine(colorized: images, gray: images.map(Colorizer.grayscale))
        let single = try r.refine(colorized: images[0], gray: Colorizer.grayscale(images[0]))
        #expect(zip(batch[0].planes, single.planes).map { abs($0 - $1) }.max()! < 1e-3)
        // With a class and guidance.
        var conditional = r
        conditional.classIndex = 1
        conditional.guidance = 2
        let c = try conditional.refine(colorized: images[1], gray: Colorizer.grayscale(images[1]))
        #expect(Self.maxLDifference(c, Colorizer.grayscale(images[1])) < 0.01)
    }

    @Test func refineErrors() throws {
        var r = Self.refiner()
        let x = bssTestImage(width: 8, height: 8, seed: 1)
        r.strength = 0
        #expect(throws: ColorError.self) { try r.refine(colorized: x, gray: x) }
        r.strength = 0.5
        #expect(throws: ColorError.self) { try r.refine(colorized: x, gray: bssTestImage(width: 9, height: 8, seed: 1)) }
        #expect(throws: ColorError.self) { try r.refine(colorized: [x], gray: []) }
        r.classIndex = 7
        #expect(throws: ColorError.self) { try r.refine(colorized: x, gray: x) }
    }

    @Test func lightnessPreservingConversion() {
        // Saturated Lab colours outside sRGB (and one inside) keep their L; in-gamut ones convert as toRGB.
        let lab = LabImage(width: 4, height: 1, planes: [50, 90, 30, 60, /* a */ 120, -100, 0, 10, /* b */ 100, 80, -120, 5])
        let rgb = lab.toRGBPreservingLightness()
        let back = rgb.toLab()
        for i in 0..<4 { #expect(abs(back.planes[i] - lab.planes[i]) < 0.01, "pixel \(i): L \(back.planes[i])") }
        let plain = lab.toRGB()
        for c in 0..<3 { #expect(abs(rgb.planes[c * 4 + 3] - plain.planes[c * 4 + 3]) < 1e-6) }
    }

    @Test func cartoonsAreDeterministic() throws {
        let a = Cartoons.referenceDrawings(side: 32), b = Cartoons.referenceDrawings(side: 32)
        #expect(a.count == b.count && a.count >= 6)
        #expect(Set(a.map(\.0)).count == a.count)
        for (x, y) in zip(a, b) { #expect(try x.1.pngData() == y.1.pngData()) }
        // Flat colours with outlines: a drawing has both dark ink and saturated colour.
        let sun = a.first { $0.0 == "sun" }!.1
        #expect(ColorMetrics.colorfulness(sun) > 0.1 && sun.luma().min()! < 0.3)
        let clip = Cartoons.clip(frames: 3, width: 24, height: 16)
        #expect(clip.count == 3 && clip[0].width == 24 && clip[0] != clip[2])
        #expect(clip == Cartoons.clip(frames: 3, width: 24, height: 16))
    }

    @Test func frameSequenceReusesRetrieval() throws {
        let dir = NSTemporaryDirectory() + "millrace-frames-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for i in 0..<3 { try bssTestImage(width: 32, height: 32, seed: UInt64(200 + i)).writePNG(path: dir + "/r\(i).png") }
        let pool = ReferencePool(folder: dir, cachePath: dir + "/.index.json")
        try pool.index()
        let frame = Colorizer.grayscale(bssTestImage(width: 32, height: 32, seed: 201))
        let frames = [frame, frame, frame]
        let seq = FrameSequenceColorizer(colorizer: Colorizer(pool: pool))
        let out = try frames.map { try seq.next($0) }
        #expect(!out[0].reused && out[1].reused && out[2].reused && seq.reusedCount == 2)
        #expect(out[1].references == out[0].references && out[2].image == out[0].image)
        #expect(ColorMetrics.chromaVariation(out.map(\.image)) < 1e-9)
        // Static pixels only: with unchanged inputs every pixel counts; a pair whose input
        // changed everywhere is skipped.
        let two = [out[0].image, bssTestImage(width: 32, height: 32, seed: 9)]
        let all = ColorMetrics.chromaVariation(two)
        #expect(all > 1 && abs(ColorMetrics.chromaVariation(two, staticIn: [frame, frame]) - all) < 1e-9)
        let changed = [RGBImage(width: 32, height: 32, fill: (0.2, 0.2, 0.2)), RGBImage(width: 32, height: 32, fill: (0.8, 0.8, 0.8))]
        #expect(ColorMetrics.chromaVariation(two, staticIn: changed) == 0)
        let noReuse = FrameSequenceColorizer(colorizer: Colorizer(pool: pool), reuse: false)
        #expect(try !noReuse.next(frame).reused && !noReuse.next(frame).reused)
    }
}
