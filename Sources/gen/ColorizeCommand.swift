import ArgumentParser
import Foundation
import Millrace

/// `gen colorize`: retrieval-augmented exemplar colorization (ALGORITHMS.md §9).
struct ColorizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "colorize",
        abstract: "Colorize a gray image (or a folder of frames) from a pool of colour reference images.",
        discussion: """
        Each input is turned gray (luma), its 4 overlapping crops retrieve their 3 most similar
        pool patches (luminance descriptors after BSS), and chroma is transferred in Lab from those
        patches, smoothed with luminance guidance; the output keeps the input's L. The pool is
        indexed into <refs>/.millrace-index.json, rebuilt when the folder changes. For a folder of
        frames, a frame similar to the previous one reuses its retrieval so colours stay stable.

        Examples:
          gen colorize old.png --out out/color.png --show-refs out/refs.png
          gen colorize frames/ --out out/colored --refs my-refs/
          gen colorize old.png --out out/plain.png --no-retrieval
        """)

    @Argument(help: "Input image, or a folder of frames (PNG or JPEG, sorted by name).")
    var input: String
    @Option(help: "Output PNG (single input) or output folder (folder input).")
    var out: String
    @Option(help: "Folder of colour reference images.")
    var refs: String = "assets/references"
    @Flag(help: "Chroma from the pool's mean chroma per luminance bin, without retrieval.")
    var noRetrieval = false
    @Option(help: "Write the §9 canvas (query and retrieved patches) to this PNG (folder input: <PNG without .png>-<frame>.png per frame).")
    var showRefs: String?
    @Option(help: "Similarity (cosine of frame descriptors) above which a frame reuses the previous retrieval.")
    var reuseThreshold: Float = 0.95

    func run() throws {
        try runReportingErrors {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: refs, isDirectory: &isDir), isDir.boolValue else {
                throw ColorError("""
                    reference folder \(refs) does not exist. Make one: put colour PNG or JPEG images in a folder \
                    (e.g. mkdir -p assets/references && cp photos/*.png assets/references/) and pass it with --refs
                    """)
            }
            let pool = ReferencePool(folder: refs)
            let rebuilt = try pool.index()
            FileHandle.standardError.write(Data("pool: \(pool.names.count) images, \(pool.patchCount) patches (\(rebuilt ? "indexed" : "cached index"))\n".utf8))
            let colorizer = Colorizer(pool: pool, mode: noRetrieval ? .noRetrieval : .retrieval)
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDir) else {
                throw ColorError("input \(input) does not exist")
            }
            if !isDir.boolValue {
                let image = try RGBImage.load(path: input)
                let result = try colorizer.colorize(gray: image)
                let dir = (out as NSString).deletingLastPathComponent
                if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
                try result.image.writePNG(path: out)
                if let showRefs, !noRetrieval {
                    try colorizer.canvas(gray: image, references: result.references).writePNG(path: showRefs)
                }
                for r in result.references where r.rank == 0 {
                    print("quadrant \(r.quadrant): \(r.name) [\(r.rect.x),\(r.rect.y) \(r.rect.width)x\(r.rect.height)] cos \(String(format: "%.3f", r.similarity))")
                }
                print("wrote \(out)")
                return
            }
            let names = try FileManager.default.contentsOfDirectory(atPath: input)
                .filter { ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
            guard !names.isEmpty else { throw ColorError("no PNG or JPEG frames in \(input)") }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let bar = ProgressBar("colorize", total: names.count, unit: "frames")
            var previous: (signature: [Float], refs: [RetrievedPatch])?
            var reused = 0
            for (i, name) in names.enumerated() {
                let frame = try RGBImage.load(path: (input as NSString).appendingPathComponent(name))
                let signature = PatchDescriptor.descriptor(
                    luma: PatchDescriptor.standardLuma(frame, rect: PatchRect(x: 0, y: 0, width: frame.width, height: frame.height)),
                    referenceAmplitude: pool.referenceAmplitude)
                var reuse: [RetrievedPatch]? = nil
                if let previous, !noRetrieval, signature.count == previous.signature.count {
                    let cos = zip(signature, previous.signature).map(*).reduce(0, +)
                    if cos >= reuseThreshold { reuse = previous.refs; reused += 1 }
                }
                let result = try colorizer.colorize(gray: frame, reusing: reuse)
                let base = (name as NSString).deletingPathExtension
                try result.image.writePNG(path: (out as NSString).appendingPathComponent(base + ".png"), fast: true)
                if let showRefs, !noRetrieval {
                    let path = ((showRefs as NSString).deletingPathExtension) + "-\(base).png"
                    try colorizer.canvas(gray: frame, references: result.references).writePNG(path: path, fast: true)
                }
                // Keep the signature of the frame whose retrieval is in use, so drift is bounded.
                if reuse == nil { previous = (signature, result.references) }
                bar.update(i + 1)
            }
            bar.finish()
            print("wrote \(names.count) frames to \(out) (\(reused) reused the previous retrieval)")
        }
    }
}
