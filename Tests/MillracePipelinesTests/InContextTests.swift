import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillracePipelines
import MillraceTestSupport

/// In-context colorization (InContextColorizer) on a random tiny model, the retrieval evidence it
/// is conditioned on, and pools held in memory.
@Suite struct InContextTests {
    static let red = Fixtures.picture(32, 32, kind: 0, ink: (0.9, 0.1, 0.1))
    static let blue = Fixtures.picture(32, 32, kind: 1, ink: (0.1, 0.2, 0.9))
    static let green = Fixtures.picture(32, 32, kind: 2, ink: (0.1, 0.7, 0.2))

    static func model(steps: Int = 1) throws -> (InContextColorizer, String) {
        let path = try Fixtures.tinyColorizationModel()
        let m = try InContextColorizer(folder: try ModelFolder.load(path), pool: ReferencePool(images: [red, blue, green]))
        m.steps = steps
        return (m, path)
    }

    @Test func aPoolInMemoryRetrievesAndLeavesOutWhatItIsTold() throws {
        let pool = ReferencePool(images: [Self.red, Self.blue, Self.green], names: ["red", "blue", "green"])
        #expect(try pool.index())
        #expect(try !pool.index(), "a second index() reuses the first")
        let gray = Colorizer.grayscale(Self.red)
        let all = try pool.retrieve(query: gray, top: 1)
        #expect(all.count == 4 && all.allSatisfy { $0.name == "red" }, "\(all.map(\.name))")
        let without = try pool.retrieve(query: gray, top: 1, excluding: [0])
        #expect(without.count == 4 && without.allSatisfy { $0.imageIndex != 0 })
        #expect(throws: ColorError.self) { try ReferencePool(images: []).index() }
    }

    @Test func theEvidenceHoldsTheReferencesColours() throws {
        let colorizer = Colorizer(pool: ReferencePool(images: [Self.red, Self.blue]))
        let e = try colorizer.evidence(gray: Colorizer.grayscale(Self.red))
        let n = 32 * 32, centre = 16 * 32 + 16
        #expect(e.width == 32 && e.height == 32 && e.a.count == n && e.canvasA.count == n)
        #expect(e.matched.allSatisfy { $0 >= 0 && $0 < 1 })
        // The disc's centre: the retrieved red disc gives a strongly positive a (red), on the
        // canvas as in the transfer.
        #expect(e.canvasA[centre] > 30 && e.a[centre] > 30, "a \(e.a[centre]), canvas \(e.canvasA[centre])")
        // The colorization is the evidence's a, b with the input's L.
        let direct = try colorizer.colorize(gray: Colorizer.grayscale(Self.red)).image
        let same = direct == Colorizer.compose(gray: Colorizer.grayscale(Colorizer.grayscale(Self.red)), a: e.a, b: e.b, width: 32, height: 32)
        #expect(same, "colorize composes the evidence's chroma")
        let planes = InContextColorizer.condition(e)
        #expect(planes.count == 7 * n)
        #expect(abs(planes[centre] - (e.lightness[centre] / 50 - 1)) < 1e-6 && abs(planes[4 * n + centre] - e.canvasA[centre] / 50) < 1e-6)
        // The canvas's L: the red disc was retrieved for its own gray, so its patches' L follows
        // the input's (a patch may be the whole disc resized to the crop, so not pixel for pixel).
        #expect(abs(planes[6 * n + centre] - (e.canvasL[centre] / 50 - 1)) < 1e-6)
        let l = e.lightness.map(Double.init), cl = e.canvasL.map(Double.init)
        let ml = l.reduce(0, +) / Double(n), mc = cl.reduce(0, +) / Double(n)
        let cov = zip(l, cl).map { ($0 - ml) * ($1 - mc) }.reduce(0, +)
        let corr = cov / ((l.map { ($0 - ml) * ($0 - ml) }.reduce(0, +) * cl.map { ($0 - mc) * ($0 - mc) }.reduce(0, +)).squareRoot() + 1e-12)
        #expect(corr > 0.6 && cl.allSatisfy { $0 >= 0 && $0 <= 100.5 }, "correlation of canvas L with the input's: \(corr)")
        #expect(InContextColorizer.condition(e, planes: 6) == Array(planes[0..<(6 * n)]))
    }

    /// A model made before the canvas's L was a condition plane (six planes) still colorizes; one
    /// with another plane count is refused.
    @Test func aModelOfTheFirstSixPlanesStillLoads() throws {
        let path = try Fixtures.tinyColorizationModel(planes: 6)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let m = try InContextColorizer(folder: try ModelFolder.load(path), pool: ReferencePool(images: [Self.red, Self.blue]))
        #expect(m.planes == 6)
        let out = try m.colorize(gray: Colorizer.grayscale(Self.red)).image
        #expect(out.width == 32 && out.height == 32)
        let odd = try Fixtures.tinyColorizationModel(planes: 5)
        defer { try? FileManager.default.removeItem(atPath: odd) }
        #expect(throws: ColorError.self) { try InContextColorizer(folder: try ModelFolder.load(odd), pool: ReferencePool(images: [Self.red])) }
    }

    @Test func keepsTheLightnessAndIsDeterministic() throws {
        let (m, path) = try Self.model(steps: 2)
        defer { try? FileManager.default.removeItem(atPath: path) }
        // An odd size: the model's input is padded to its multiple and the output cropped.
        let input = Colorizer.grayscale(Fixtures.picture(13, 9, kind: 0, ink: (0.2, 0.6, 0.9), fill: (0.7, 0.7, 0.7)))
        let a = try m.colorize(gray: input).image, b = try m.colorize(gray: input).image
        #expect(a.width == 13 && a.height == 9)
        let same = a == b
        #expect(same, "same seed, same output")
        let lin = input.toLab(), lout = a.toLab()
        let worst = (0..<a.pixelCount).map { abs(lin.planes[$0] - lout.planes[$0]) }.max() ?? 0
        #expect(worst < 0.05, "L moved by \(worst)")
        // The default averages an antithetic pair; one draw alone differs, and keeps L too.
        #expect(m.samples == 2)
        m.samples = 1
        let single = try m.colorize(gray: input).image
        let lone = single.toLab()
        #expect(single != a && (0..<a.pixelCount).allSatisfy { abs(lin.planes[$0] - lone.planes[$0]) < 0.05 })
        m.seed = 9
        let other = try m.colorize(gray: input).image != a
        #expect(other, "another seed, other noise")
    }

    @Test func theSampleIsTheCorrectionToTheRetrievalsChroma() {
        // Two samples of 2×2 pixels: chroma (a, b)/100 and conditions whose planes 1–2 are a/50, b/50.
        let plane = 4
        let chroma: [Float] = (0..<16).map { Float($0) / 10 }
        var condition = [Float](repeating: 9, count: 2 * 6 * plane)
        for i in 0..<2 { for k in 0..<2 { for p in 0..<plane { condition[(i * 6 + 1 + k) * plane + p] = Float(i * 8 + k * 4 + p) / 5 } } }
        let r = InContextColorizer.residual(chroma: chroma, condition: condition, plane: plane)
        for j in 0..<16 { #expect(abs(r[j] - (chroma[j] - Float(j) / 10)) < 1e-6) }
    }

    @Test func aBatchEqualsImagesOneByOne() throws {
        let (m, path) = try Self.model()
        defer { try? FileManager.default.removeItem(atPath: path) }
        m.samples = 3
        let grays = [Self.red, Self.green].map(Colorizer.grayscale)
        let evidence = try grays.map { try m.colorizer.evidence(gray: $0) }
        let together = try m.colorize(gray: grays, evidence: evidence)
        for k in 0..<2 {
            let alone = try m.colorize(gray: [grays[k]], evidence: [evidence[k]])[0]
            let d = zip(alone.planes, together[k].planes).map { abs($0 - $1) }.max() ?? 0
            #expect(d < 1e-4, "image \(k) differs by \(d)")
        }
    }

    @Test func refusesAModelThatIsNotForColorization() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        #expect(throws: ColorError.self) { try InContextColorizer(folder: folder, pool: ReferencePool(images: [Self.red])) }
        // And the colorization model is no image generator.
        let path = try Fixtures.tinyColorizationModel()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let color = try ModelFolder.load(path)
        #expect(FlowSampler(model: color.model, flow: color.flow).imageProblem?.contains("colorize") == true)
    }

    /// The temporal filter: pixels whose input did not change keep the previous frame's colour;
    /// pixels that changed a lot take the frame's own.
    @Test func theTemporalFilterKeepsTheColourOfStaticPixels() throws {
        let (m, path) = try Self.model()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = Colorizer.grayscale(Self.red)
        var second = first
        for y in 0..<8 { for x in 0..<8 { for c in 0..<3 { second.planes[c * 1024 + y * 32 + x] = 0.1 } } }
        let filtered = FrameSequenceColorizer(inContext: m, reuseThreshold: 2)
        let plain = FrameSequenceColorizer(inContext: m, reuseThreshold: 2)
        plain.temporalSigma = 0
        let f1 = try filtered.next(first).image, f2 = try filtered.next(second).image
        _ = try plain.next(first)
        let p2 = try plain.next(second).image
        let l1 = f1.toLab(), l2 = f2.toLab(), lp = p2.toLab(), n = 1024
        var staticMoved: Float = 0, changedOff: Float = 0
        for y in 0..<32 {
            for x in 0..<32 {
                let i = y * 32 + x
                if x < 8 && y < 8 {
                    changedOff = max(changedOff, abs(l2.planes[n + i] - lp.planes[n + i]), abs(l2.planes[2 * n + i] - lp.planes[2 * n + i]))
                } else {
                    staticMoved = max(staticMoved, abs(l2.planes[n + i] - l1.planes[n + i]), abs(l2.planes[2 * n + i] - l1.planes[2 * n + i]))
                }
            }
        }
        #expect(staticMoved < 0.5, "static pixels moved by \(staticMoved)")
        #expect(changedOff < 0.5, "changed pixels are the frame's own colour (off by \(changedOff))")
        // The inputs' L is kept either way.
        #expect((0..<n).allSatisfy { abs(l2.planes[$0] - second.toLab().planes[$0]) < 0.05 })
    }

    @Test func framesReuseTheRetrievalInContext() throws {
        let (m, path) = try Self.model()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let seq = FrameSequenceColorizer(inContext: m, reuseThreshold: 0.9)
        let frame = Colorizer.grayscale(Self.red)
        let first = try seq.next(frame), second = try seq.next(frame)
        #expect(!first.reused && second.reused)
        let d = zip(first.image.planes, second.image.planes).map { abs($0 - $1) }.max() ?? 1
        #expect(d < 1e-3, "same frame, same retrieval, same noise: same colours (off by \(d))")
    }
}
