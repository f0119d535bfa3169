import Foundation
import MillraceFormats
import MillraceImaging
import MillracePipelines

/// The server's reference pool (`gen serve --refs DIR`): indexed on first use, and again when the
/// folder's listing (names, sizes, modification times) changes. A new `ReferencePool` is built
/// for every change, so requests already holding the old one finish with it undisturbed.
final class ServerReferencePool: @unchecked Sendable {
    let folder: String
    private let lock = NSLock()
    private var current: (pool: ReferencePool, listing: [String])?

    init(folder: String) { self.folder = folder }

    /// Why the pool cannot be used (answered as 503).
    struct Unavailable: Error, CustomStringConvertible {
        let description: String
    }

    /// The folder's image files with size and modification time, sorted; nil if it is no folder.
    func listing() -> [String]? {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue,
              let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return nil }
        return names.filter { !$0.hasPrefix(".") && ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }
            .sorted()
            .map { name in
                let attrs = try? FileManager.default.attributesOfItem(atPath: (folder as NSString).appendingPathComponent(name))
                let size = (attrs?[.size] as? NSNumber)?.int64Value ?? -1
                let mtime = (attrs?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
                return "\(name)|\(size)|\(mtime)"
            }
    }

    /// Number of images in the folder (nil when it does not exist); no indexing.
    var imageCount: Int? { listing()?.count }

    /// The indexed pool, (re)indexed if the folder changed.
    func pool() throws -> ReferencePool {
        lock.lock()
        defer { lock.unlock() }
        guard let list = listing() else {
            throw Unavailable(description: "the server has no reference pool (\(folder) does not exist): "
                + "upload 'reference' files with the request")
        }
        guard !list.isEmpty else {
            throw Unavailable(description: "the server's reference pool \(folder) is empty: put colour PNG or JPEG images in it, "
                + "or upload 'reference' files with the request")
        }
        if let c = current, c.listing == list { return c.pool }
        let fresh = ReferencePool(folder: folder)
        do { try fresh.index() } catch {
            throw Unavailable(description: "the server's reference pool \(folder) cannot be indexed: \(error)")
        }
        current = (fresh, list)
        return fresh
    }
}

/// `POST /v1/colorize` and `POST /v1/bss` (docs/API.md).
extension MillraceService {
    static let colorizeImagesHelp = "Images colorized by /v1/colorize."
    static let bssImagesHelp = "Images standardized by /v1/bss."

    /// A multipart request's parts, under the server's limits.
    func formParts(_ r: HTTPRequest) throws -> [MultipartPart] {
        try MultipartFormData.parse(r.body, contentType: r.headers["content-type"],
                                    limits: MultipartFormData.Limits(maxParts: options.maxParts))
    }

    /// Decodes an uploaded image: 413 over the pixel limit, 415 when it is not a PNG or JPEG that decodes.
    func decodePart(_ p: MultipartPart) throws -> RGBImage {
        let what = "'\(p.name)'" + (p.filename.map { " (\($0.prefix(80)))" } ?? "")
        guard !p.body.isEmpty else { throw MultipartError(415, "part \(what) is empty: send a PNG or JPEG file") }
        do {
            return try RGBImage.decode(p.body, maxPixels: options.maxImagePixels)
        } catch let e as ImageError {
            if case .tooLarge = e { throw MultipartError(413, "part \(what): \(e)") }
            throw MultipartError(415, "part \(what): \(e)")
        }
    }

    /// Reads every image part's size from its header, before any is decoded: 415 when one is
    /// not a PNG or JPEG, 413 when one is over the per-image limit or all together over the
    /// per-request limit. Returns each part's (width, height).
    func declaredSizes(_ parts: [MultipartPart]) throws -> [(width: Int, height: Int)] {
        var total = 0
        return try parts.map { p in
            let what = "'\(p.name)'" + (p.filename.map { " (\($0.prefix(80)))" } ?? "")
            guard !p.body.isEmpty else { throw MultipartError(415, "part \(what) is empty: send a PNG or JPEG file") }
            let (_, w, h): (RGBImage.FileFormat, Int, Int)
            do { (_, w, h) = try RGBImage.probe(p.body) } catch { throw MultipartError(415, "part \(what): \(error)") }
            guard w * h <= options.maxImagePixels else {
                throw MultipartError(413, "part \(what) is \(w)x\(h), over the server's limit of \(options.maxImagePixels) pixels per image")
            }
            total += w * h
            guard total <= options.maxRequestPixels else {
                throw MultipartError(413, "the images of this request hold over \(options.maxRequestPixels) pixels in all (gen serve --max-request-pixels)")
            }
            return (w, h)
        }
    }

    /// Whether a boolean query argument is set ("1", "true", "yes"; absent, "0", "false", "no": not set).
    func queryFlag(_ r: HTTPRequest, _ key: String) throws -> Bool {
        guard let v = r.query[key]?.lowercased() else { return false }
        if ["1", "true", "yes", ""].contains(v) { return true }
        if ["0", "false", "no"].contains(v) { return false }
        throw MultipartError(400, "query argument '\(key)' must be 1 or 0")
    }

    func colorError(_ error: Error) -> HTTPResponse {
        switch error {
        case let e as MultipartError: return .error(e.status, e.message)
        case let e as ServerReferencePool.Unavailable: return .error(503, e.description)
        case let e as ColorError: return .error(400, e.message)
        case let e as ImageError: return .error(415, "\(e)")
        case let e as JobRefusal: return e.response
        default: return .error(500, "internal error: \(error)")
        }
    }

    // MARK: Colorize

    /// An uploaded pool: the `reference` parts written to a temporary folder (after checking that
    /// each decodes), with the names to report for the pool's files.
    struct UploadedPool {
        let folder: String
        let pool: ReferencePool
        /// Pool file name → (name to show, position among the uploaded references).
        let shown: [String: (String, Int)]
    }

    func uploadedPool(_ refs: [MultipartPart]) throws -> UploadedPool {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("millrace-refs-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var shown: [String: (String, Int)] = [:]
        do {
            for (k, p) in refs.enumerated() {
                _ = try decodePart(p)
                let ext = RGBImage.sniffFormat(p.body) == .jpeg ? "jpg" : "png"
                let digits = String(k)
                let file = "ref-" + String(repeating: "0", count: max(0, 3 - digits.count)) + digits + "." + ext
                try Data(p.body).write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent(file)))
                let base = p.filename.map { ($0 as NSString).lastPathComponent }.flatMap { $0.isEmpty ? nil : $0 }
                shown[file] = (base ?? "reference-\(k + 1)", k)
            }
            let pool = ReferencePool(folder: folder)
            try pool.index()
            return UploadedPool(folder: folder, pool: pool, shown: shown)
        } catch {
            try? FileManager.default.removeItem(atPath: folder)
            throw error
        }
    }

    static let quadrantNames = ["top-left", "top-right", "bottom-left", "bottom-right"]

    func colorize(_ r: HTTPRequest) -> HTTPResponse {
        var uploaded: UploadedPool?
        defer { if let u = uploaded { try? FileManager.default.removeItem(atPath: u.folder) } }
        do {
            let withReferences = try queryFlag(r, "references")
            let method = try colorMethod(r)
            var steps = 1
            if let text = r.query["steps"] {
                guard let k = Int(text), k >= 1, k <= Self.maxColorSteps else {
                    throw MultipartError(400, "query argument 'steps' must be an integer from 1 to \(Self.maxColorSteps)")
                }
                guard method == "in-context" else { throw MultipartError(400, "'steps' applies to method=in-context only") }
                steps = k
            }
            var samples = Self.defaultColorSamples
            if let text = r.query["samples"] {
                guard let k = Int(text), k >= 1, k <= Self.maxColorSamples else {
                    throw MultipartError(400, "query argument 'samples' must be an integer from 1 to \(Self.maxColorSamples)")
                }
                guard method == "in-context" else { throw MultipartError(400, "'samples' applies to method=in-context only") }
                samples = k
            }
            let parts = try formParts(r)
            var images: [MultipartPart] = [], refs: [MultipartPart] = []
            for p in parts {
                switch p.name {
                case "image": images.append(p)
                case "reference": refs.append(p)
                default:
                    throw MultipartError(400, "unknown field '\(p.name.prefix(60))': /v1/colorize takes one 'image' file and optional 'reference' files")
                }
            }
            guard images.count == 1 else {
                throw MultipartError(400, images.isEmpty ? "missing the 'image' file part" : "more than one 'image' part (send one)")
            }
            guard refs.count <= options.maxReferences else {
                throw MultipartError(413, "more than \(options.maxReferences) 'reference' files")
            }
            // Sizes from the headers first: the job's memory is reserved before anything is decoded.
            let sizes = try declaredSizes(images + refs)
            let pixels = sizes.reduce(0) { $0 + $1.width * $1.height }
            // In context, the model's activations at the working size (at most 128×128) too.
            let job = try admitJob(bytes: pixels * 48 + (method == "in-context" ? samples * Self.inContextBytes : 0), clientGone: r.isClientGone)
            defer { withExtendedLifetime(job) {} }
            let input = try decodePart(images[0])
            let pool: ReferencePool
            if refs.isEmpty {
                pool = try serverPool.pool()
            } else {
                let u = try uploadedPool(refs)
                uploaded = u
                pool = u.pool
            }
            let colorizer = Colorizer(pool: pool, mode: method == "prior" ? .noRetrieval : .retrieval)
            let image: RGBImage, patches: [RetrievedPatch]
            if method == "in-context", let folder = colorFolder {
                let model = try InContextColorizer(folder: folder, pool: pool)
                model.steps = steps
                model.samples = samples
                model.callLock = modelLock
                try job.check()
                (image, patches) = try model.colorize(gray: input)
            } else {
                (image, patches) = try colorizer.colorize(gray: input)
            }
            try job.check()
            let png = try image.pngData()
            metrics.add("colorize_images", help: Self.colorizeImagesHelp)
            guard withReferences else {
                return HTTPResponse(status: 200, headers: [("Content-Type", "image/png"), ("Cache-Control", "no-store"),
                                                           ("Millrace-Colorize-Method", method)], body: .bytes(png))
            }
            let canvas = try colorizer.canvas(gray: input, references: patches).pngData()
            let list: [[String: Any]] = patches.map { p in
                var d: [String: Any] = [
                    "quadrant": p.quadrant, "quadrant_name": Self.quadrantNames[min(3, max(0, p.quadrant))], "rank": p.rank,
                    "name": uploaded?.shown[p.name]?.0 ?? p.name, "similarity": Double(p.similarity),
                    "rect": ["x": p.rect.x, "y": p.rect.y, "width": p.rect.width, "height": p.rect.height],
                ]
                if let k = uploaded?.shown[p.name]?.1 { d["reference_index"] = k }
                return d
            }
            let info: [String: Any] = ["method": method, "pool": uploaded == nil ? "server" : "uploaded", "pool_images": pool.names.count,
                                       "width": image.width, "height": image.height, "references": list]
            let json = try JSONSerialization.data(withJSONObject: info, options: [.sortedKeys])
            let out = [MultipartPart(name: "image", filename: "colorized.png", contentType: "image/png", body: png),
                       MultipartPart(name: "canvas", filename: "canvas.png", contentType: "image/png", body: canvas),
                       MultipartPart(name: "references", contentType: "application/json", body: [UInt8](json))]
            return Self.multipartResponse(out, headers: [("Millrace-Colorize-Method", method)])
        } catch {
            return colorError(error)
        }
    }

    /// Most Euler steps of the in-context model per request.
    static let maxColorSteps = 8
    /// Most noise draws averaged per image, and the default.
    static let maxColorSamples = 8
    static let defaultColorSamples = 2
    /// Memory reserved for the in-context model's activations (128×128 working size).
    static let inContextBytes = 96 << 20

    /// The `method` query argument: in-context (default when the server has the colorization
    /// model), retrieval (default otherwise) or prior.
    func colorMethod(_ r: HTTPRequest) throws -> String {
        guard let asked = r.query["method"] else { return colorFolder == nil ? "retrieval" : "in-context" }
        switch asked {
        case "retrieval", "prior": return asked
        case "in-context":
            guard colorFolder != nil else {
                throw MultipartError(400, "this server has no in-context colorization model (gen serve --color-model DIR): use method=retrieval or method=prior")
            }
            return asked
        default: throw MultipartError(400, "query argument 'method' must be in-context, retrieval or prior")
        }
    }

    /// A multipart/form-data response (browsers read it with `Response.formData()`).
    static func multipartResponse(_ parts: [MultipartPart], headers: [(String, String)] = []) -> HTTPResponse {
        let boundary = MultipartFormData.makeBoundary(avoiding: parts.map(\.body))
        return HTTPResponse(status: 200, headers: [("Content-Type", "multipart/form-data; boundary=\(boundary)"),
                                                   ("Cache-Control", "no-store")] + headers,
                            body: .bytes(MultipartFormData.encode(parts, boundary: boundary)))
    }

    // MARK: Batch Styles Standardization

    func bss(_ r: HTTPRequest) -> HTTPResponse {
        do {
            let parts = try formParts(r)
            var images: [MultipartPart] = [], fields: [String: String] = [:]
            for p in parts {
                switch p.name {
                case "image": images.append(p)
                case "ratio_min", "ratio_max", "reference", "seed", "size":
                    guard fields[p.name] == nil else { throw MultipartError(400, "field '\(p.name)' given twice") }
                    fields[p.name] = p.text.trimmingCharacters(in: .whitespacesAndNewlines)
                default:
                    throw MultipartError(400, "unknown field '\(p.name.prefix(60))': /v1/bss takes 'image' files and optional ratio_min, ratio_max, reference, seed, size")
                }
            }
            func number(_ key: String, _ def: Double) throws -> Double {
                guard let s = fields[key] else { return def }
                guard let v = Double(s), v.isFinite, v > 0, v <= 1 else { throw MultipartError(400, "'\(key)' must be a number in (0, 1]") }
                return v
            }
            let ratioMin = try number("ratio_min", 0.01), ratioMax = try number("ratio_max", 0.2)
            guard ratioMin <= ratioMax else { throw MultipartError(400, "'ratio_min' must not exceed 'ratio_max'") }
            var seed: UInt64 = 0
            if let s = fields["seed"] {
                guard let v = UInt64(s) else { throw MultipartError(400, "'seed' must be a non-negative integer") }
                seed = v
            }
            var reference: Int?
            if let s = fields["reference"] {
                guard let v = Int(s), v >= 0 else { throw MultipartError(400, "'reference' must be an image index ≥ 0") }
                reference = v
            }
            var size: (Int, Int)?
            if let s = fields["size"] {
                let wh = s.lowercased().split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
                guard wh.count == 2, let w = wh[0], let h = wh[1], (1...4096).contains(w), (1...4096).contains(h) else {
                    throw MultipartError(400, "'size' must be WxH with sides in 1...4096, like 128x128")
                }
                size = (w, h)
            }
            guard images.count >= 2 else {
                throw MultipartError(400, "BSS needs at least two 'image' files, got \(images.count)")
            }
            guard images.count <= options.maxBSSImages else {
                throw MultipartError(413, "more than \(options.maxBSSImages) images in one batch")
            }
            if let j = reference, j >= images.count {
                throw MultipartError(400, "'reference' \(j) is out of range 0..<\(images.count)")
            }
            if let (w, h) = size, !FFT2D.isFast(w) || !FFT2D.isFast(h) {
                throw MultipartError(400, "'size' \(w)x\(h) has a side with a prime factor above 5, whose Fourier transform is slow: "
                                     + "use \(FFT2D.fastSize(atLeast: w))x\(FFT2D.fastSize(atLeast: h)) (sides made of factors 2, 3 and 5)")
            }
            // Sizes from the headers first: nothing is decoded before the whole batch fits.
            let sizes = try declaredSizes(images)
            // Without 'size', the first image's, rounded up to sides with a fast transform.
            let (w, h) = size ?? (FFT2D.fastSize(atLeast: sizes[0].width), FFT2D.fastSize(atLeast: sizes[0].height))
            guard w * h * images.count <= options.maxBSSBatchPixels else {
                throw MultipartError(413, "the batch is \(images.count) images of \(w)x\(h), over \(options.maxBSSBatchPixels) pixels in all: pass a smaller 'size'")
            }
            let pixels = sizes.reduce(0) { $0 + $1.width * $1.height }
            let job = try admitJob(bytes: pixels * 16 + w * h * images.count * 64, clientGone: r.isClientGone)
            defer { withExtendedLifetime(job) {} }
            let loaded = try images.map { try decodePart($0) }
            let (outs, j, ratio) = try BatchStyleStandardization.batch(loaded, width: w, height: h, ratioMin: ratioMin,
                                                                       ratioMax: ratioMax, reference: reference, seed: seed)
            let pngs = try outs.enumerated().map { k, image -> MultipartPart in
                let stem = images[k].filename.map { (($0 as NSString).lastPathComponent as NSString).deletingPathExtension }
                    .flatMap { $0.isEmpty ? nil : $0 } ?? "image-\(k + 1)"
                return MultipartPart(name: "image", filename: stem + ".png", contentType: "image/png", body: try image.pngData())
            }
            metrics.add("bss_images", help: Self.bssImagesHelp, outs.count)
            return Self.multipartResponse(pngs, headers: [("Millrace-BSS-Reference", "\(j)"),
                                                          ("Millrace-BSS-Ratio", String(format: "%.6f", ratio)),
                                                          ("Millrace-BSS-Size", "\(w)x\(h)")])
        } catch {
            return colorError(error)
        }
    }
}

extension MillraceService {
    /// Indexes the server's reference pool ahead of the first request; returns why it cannot be
    /// used (to print as a warning), or nil when it is ready.
    public func prepareReferencePool() -> String? {
        do {
            _ = try serverPool.pool()
            return nil
        } catch {
            return "\(error)"
        }
    }
}
