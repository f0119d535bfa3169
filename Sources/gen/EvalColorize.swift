import ArgumentParser
import Foundation
import Millrace

/// `gen eval colorize`: colorization quality on held-out colour images.
struct EvalColorize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "colorize",
        abstract: "Evaluate colorization (retrieval, no_retrieval, reinhard, gray) on held-out colour images.",
        discussion: """
        Held-out colour images (a .mrds dataset's split 1, or every PNG/JPEG of a folder) are turned
        gray (0.299 R + 0.587 G + 0.114 B) and colorized by each method:
          retrieval     retrieval-augmented exemplar chroma transfer (§9)
          no_retrieval  pool mean chroma per luminance bin
          reinhard      global Reinhard transfer in Lab from a random pool image (seeded)
          gray          the gray input itself
        Metrics, averaged over images:
          psnr_rgb          PSNR on RGB in [0, 1]
          psnr_ab           PSNR on Lab a, b divided by 256 (peak 1)
          delta_e           mean CIE76 ΔE (Euclidean distance in Lab)
          colorfulness_gap  mean |colourfulness(output) − colourfulness(original)| (§10)
        Examples:
          gen eval colorize --data assets/data/emoji.mrds --limit 100 --json
          gen eval colorize --data photos/heldout --refs assets/references
        """)

    @Option(help: "Held-out colour images: a .mrds dataset (split 1) or a folder of PNG/JPEG files.")
    var data: String
    @Option(help: "Folder of colour reference images.")
    var refs: String = "assets/references"
    @Option(help: "Most images to evaluate (0: all).")
    var limit: Int = 50
    @Option(help: "Seed of the Reinhard reference draw.")
    var seed: UInt64 = 0
    @Flag(help: "Print JSON keyed by method.")
    var json = false

    func run() throws {
        try runReportingErrors {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: refs, isDirectory: &isDir), isDir.boolValue else {
                throw ColorError("reference folder \(refs) does not exist: put colour PNG or JPEG images in a folder and pass it with --refs")
            }
            guard FileManager.default.fileExists(atPath: data, isDirectory: &isDir) else {
                throw ColorError("data \(data) does not exist")
            }
            var loaders: [() throws -> RGBImage] = []
            if isDir.boolValue {
                let names = try FileManager.default.contentsOfDirectory(atPath: data)
                    .filter { !$0.hasPrefix(".") && ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
                loaders = names.map { name in { try RGBImage.load(path: (data as NSString).appendingPathComponent(name)) } }
            } else {
                let ds = try ImageDataset.read(path: data)
                loaders = ds.indices(split: 1).map { i in { ds.image(at: i) } }
            }
            guard !loaders.isEmpty else { throw ColorError("no held-out colour images in \(data)") }
            if limit > 0 && loaders.count > limit { loaders = Array(loaders.prefix(limit)) }
            let pool = ReferencePool(folder: refs)
            try pool.index()
            let retrieval = Colorizer(pool: pool), plain = Colorizer(pool: pool, mode: .noRetrieval)
            var rng = SplitMix64(seed: seed)
            let methods = ["retrieval", "no_retrieval", "reinhard", "gray"]
            var sums = [String: [Double]](uniqueKeysWithValues: methods.map { ($0, [0, 0, 0, 0]) })
            let bar = json ? nil : ProgressBar("eval colorize", total: loaders.count, unit: "images")
            for (k, load) in loaders.enumerated() {
                let original = try load()
                let gray = Colorizer.grayscale(original)
                let reference = try pool.image(at: Int(rng.next() % UInt64(pool.names.count)))
                let outputs: [String: RGBImage] = [
                    "retrieval": try retrieval.colorize(gray: gray).image,
                    "no_retrieval": try plain.colorize(gray: gray).image,
                    "reinhard": Colorizer.reinhard(gray: gray, reference: reference),
                    "gray": gray,
                ]
                let c0 = ColorMetrics.colorfulness(original)
                for (m, out) in outputs {
                    sums[m]![0] += ColorMetrics.psnrRGB(out, original)
                    sums[m]![1] += ColorMetrics.psnrAB(out, original)
                    sums[m]![2] += ColorMetrics.deltaE76(out, original)
                    sums[m]![3] += abs(ColorMetrics.colorfulness(out) - c0)
                }
                bar?.update(k + 1)
            }
            bar?.finish()
            let n = Double(loaders.count)
            var report: [String: [String: Double]] = [:]
            for m in methods {
                let s = sums[m]!
                report[m] = ["psnr_rgb": s[0] / n, "psnr_ab": s[1] / n, "delta_e": s[2] / n, "colorfulness_gap": s[3] / n,
                             "images": n]
            }
            if json {
                let out = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: out, as: UTF8.self))
            } else {
                print("\(loaders.count) images, pool \(refs) (\(pool.names.count) images)")
                print("method        psnr_rgb  psnr_ab  delta_e  colorfulness_gap")
                for m in methods {
                    let r = report[m]!
                    print(m.padding(toLength: 12, withPad: " ", startingAt: 0)
                          + String(format: "  %8.2f %8.2f %8.2f %10.4f", r["psnr_rgb"]!, r["psnr_ab"]!, r["delta_e"]!, r["colorfulness_gap"]!))
                }
            }
        }
    }
}
