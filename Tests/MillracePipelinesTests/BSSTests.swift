import Foundation
import Testing
import MillraceCore
import MillraceImaging
import MillracePipelines

/// A small image with smooth structure plus noise, seeded.
func bssTestImage(width: Int, height: Int, seed: UInt64) -> RGBImage {
    var rng = SplitMix64(seed: seed)
    let n = width * height
    var planes = [Float](repeating: 0, count: 3 * n)
    for c in 0..<3 {
        let fx = 1 + rng.nextUnitFloat() * 3, fy = 1 + rng.nextUnitFloat() * 3, base = 0.2 + 0.6 * rng.nextUnitFloat()
        for y in 0..<height {
            for x in 0..<width {
                let v = base + 0.2 * sin(fx * Float(x) / Float(width) * 6.28) * cos(fy * Float(y) / Float(height) * 6.28)
                planes[c * n + y * width + x] = min(1, max(0, v + 0.1 * (rng.nextUnitFloat() - 0.5)))
            }
        }
    }
    return RGBImage(width: width, height: height, planes: planes)
}

@Suite struct BSSTests {
    let images = (0..<3).map { bssTestImage(width: 16, height: 12, seed: UInt64($0) + 1) }

    @Test func referenceImageUnchanged() throws {
        for j in 0..<3 {
            let out = try BatchStyleStandardization.applyUnclipped(images: images, reference: j, ratio: 0.3)
            let worst = zip(out[j].planes, images[j].planes).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-5)
        }
    }

    @Test func everyImageGetsReferenceMean() throws {
        let j = 1
        let out = try BatchStyleStandardization.applyUnclipped(images: images, reference: j, ratio: 0.05)
        let n = 16 * 12
        for image in out {
            for c in 0..<3 {
                let mean = image.planes[(c * n)..<((c + 1) * n)].reduce(0, +) / Float(n)
                let want = images[j].planes[(c * n)..<((c + 1) * n)].reduce(0, +) / Float(n)
                #expect(abs(mean - want) < 1e-4)
            }
        }
    }

    @Test func amplitudesOutsideWindowKeptInsideReplaced() throws {
        // Odd window sizes (h = round(√r·12) = 5, w = round(√r·16) ≈ 7) are symmetric about the zero
        // frequency, so taking the real part changes nothing and the spectrum can be checked exactly.
        let h = 12, w = 16, r = 0.18
        let win = BatchStyleStandardization.window(height: h, width: w, ratio: r)
        #expect(win.rows % 2 == 1 && win.cols % 2 == 1)
        #expect(win.row0 == h / 2 - win.rows / 2 && win.col0 == w / 2 - win.cols / 2)
        let out = try BatchStyleStandardization.applyUnclipped(images: images, reference: 2, ratio: r)
        let fft = FFT2D(height: h, width: w)
        let n = h * w
        var inside = 0, outside = 0
        for c in 0..<3 {
            let before = fft.amplitudes(Array(images[0].planes[(c * n)..<((c + 1) * n)]))
            let ref = fft.amplitudes(Array(images[2].planes[(c * n)..<((c + 1) * n)]))
            let after = fft.amplitudes(Array(out[0].planes[(c * n)..<((c + 1) * n)]))
            for u in 0..<h {
                for v in 0..<w {
                    let k = u * w + v
                    if BatchStyleStandardization.inWindow(u: u, v: v, height: h, width: w, ratio: r) {
                        #expect(abs(after[k] - ref[k]) < 1e-3 * (1 + ref[k]))
                        inside += 1
                    } else {
                        #expect(abs(after[k] - before[k]) < 1e-3 * (1 + before[k]))
                        outside += 1
                    }
                }
            }
        }
        #expect(inside == 3 * win.rows * win.cols && outside > 0)
    }

    @Test func clippedOutputInUnitRange() throws {
        let out = try BatchStyleStandardization.apply(images: images, reference: 0, ratio: 1)
        #expect(out.allSatisfy { $0.planes.allSatisfy { $0 >= 0 && $0 <= 1 } })
    }

    @Test func fftRoundTrip() {
        let fft = FFT2D(height: 5, width: 7)
        let x = (0..<35).map { Float($0 % 6) / 5 }
        let back = fft.inverse(fft.forward(x))
        #expect((0..<35).allSatisfy { abs(back[2 * $0] - x[$0]) < 1e-5 && abs(back[2 * $0 + 1]) < 1e-5 })
    }

    @Test func randomParametersInRange() throws {
        let p = try BatchStyleStandardization.randomParameters(count: 4, ratioMin: 0.01, ratioMax: 0.2, seed: 7)
        #expect(p.reference >= 0 && p.reference < 4 && p.ratio >= 0.01 && p.ratio <= 0.2)
        let q = try BatchStyleStandardization.randomParameters(count: 4, ratioMin: 0.01, ratioMax: 0.2, seed: 7)
        #expect(p == q)
    }

    @Test func errors() {
        #expect(throws: ColorError.invalidInput("BSS needs at least two images, got 1")) {
            try BatchStyleStandardization.apply(images: [images[0]], reference: 0, ratio: 0.1)
        }
        let small = bssTestImage(width: 8, height: 8, seed: 9)
        do {
            _ = try BatchStyleStandardization.apply(images: [images[0], small], reference: 0, ratio: 0.1)
            Issue.record("mismatched sizes accepted")
        } catch let e as ColorError {
            #expect(e.message.contains("one size"))
        } catch { Issue.record("wrong error \(error)") }
        #expect(throws: ColorError.self) { try BatchStyleStandardization.apply(images: images, reference: 3, ratio: 0.1) }
        #expect(throws: ColorError.self) { try BatchStyleStandardization.apply(images: images, reference: 0, ratio: 0) }
        #expect(throws: ColorError.self) { try BatchStyleStandardization.apply(images: images, reference: 0, ratio: 1.5) }
    }
}
