import ArgumentParser
import Foundation
import MillraceImaging
import MillracePipelines

/// `gen bss`: Batch Styles Standardization (docs/METHODS.md §8) of a set of images.
struct BSSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bss",
        abstract: "Give a batch of images one reference image's low-frequency Fourier amplitude (BSS, §8).",
        discussion: """
        All images are resized to one size (default: the first image's; area filter when shrinking,
        bilinear when enlarging). One reference j and one area ratio r ~ U(ratio-min, ratio-max) are
        drawn from the seed; --reference fixes j, and equal ratio bounds fix r. Each input is written
        as OUT/<name>.png, in input order, and the chosen j and r are printed.

        Examples:
          gen bss a.png b.png c.png --out out/bss
          gen bss frames/*.png --out out/bss --reference 0 --ratio-min 0.05 --ratio-max 0.05 --size 128x128
        """)

    @Argument(help: "Input images (PNG or JPEG), at least two.")
    var images: [String]
    @Option(help: "Output folder.")
    var out: String
    @Option(help: "Smallest area ratio r.")
    var ratioMin: Double = 0.01
    @Option(help: "Largest area ratio r.")
    var ratioMax: Double = 0.2
    @Option(help: "Reference image index j (default: drawn from the seed).")
    var reference: Int?
    @Option(help: "Seed of the draw of j and r.")
    var seed: UInt64 = 0
    @Option(help: "Working size WxH (default: the first image's size).")
    var size: String?

    func run() throws {
        try runReportingErrors {
            guard images.count >= 2 else { throw CLIError("BSS needs at least two images, got \(images.count)") }
            let loaded = try images.map { path -> RGBImage in
                do { return try RGBImage.load(path: path) } catch { throw CLIError("cannot read \(path): \(error)") }
            }
            var w = loaded[0].width, h = loaded[0].height
            if let size {
                let wh = size.lowercased().split(separator: "x").compactMap { Int($0) }
                guard wh.count == 2, wh.allSatisfy({ $0 >= 1 && $0 <= 4096 }) else { throw CLIError("--size must be WxH like 128x128") }
                (w, h) = (wh[0], wh[1])
            }
            let (outs, j, r) = try BatchStyleStandardization.batch(loaded, width: w, height: h, ratioMin: ratioMin,
                                                                   ratioMax: ratioMax, reference: reference, seed: seed)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            var used = Set<String>()
            for (k, image) in outs.enumerated() {
                var base = ((images[k] as NSString).lastPathComponent as NSString).deletingPathExtension
                if used.contains(base) { base += "-\(k)" }
                used.insert(base)
                try image.writePNG(path: (out as NSString).appendingPathComponent(base + ".png"))
            }
            let win = BatchStyleStandardization.window(height: h, width: w, ratio: r)
            print("reference j = \(j) (\(images[j])), ratio r = \(String(format: "%.4f", r)), window \(win.cols)x\(win.rows) of \(w)x\(h)")
            print("wrote \(outs.count) images to \(out)")
        }
    }
}
