import Foundation
import MillraceFormats
import MillraceImaging

/// A rectangle of an image, in pixels.
public struct PatchRect: Codable, Sendable, Equatable, Hashable {
    public var x: Int, y: Int, width: Int, height: Int
    public init(x: Int, y: Int, width: Int, height: Int) {
        self.x = x; self.y = y; self.width = width; self.height = height
    }
}

/// The patch geometry of §9 and the luminance descriptor used to compare patches.
///
/// Query crops: 4 overlapping crops of 3W/4 × 3H/4 at stride W/4, H/4, in the order top-left,
/// top-right, bottom-left, bottom-right. Reference patches: the whole image, then the same 4 crops.
///
/// Descriptor (kept simple on purpose): the patch's luma (0.299 R + 0.587 G + 0.114 B — colour
/// cannot be compared with a gray query anyway) is area-resized to 32×32, standardized with §8
/// against one fixed reference amplitude per pool (the luma of the pool's first image, window
/// ratio r = 1/16, so global brightness and contrast style do not dominate), area-reduced to
/// 16×16, centred and scaled to unit length. Cosine similarity is then a dot product. The
/// reference amplitude is fixed per pool, which is §8 applied to the set {pool patches, query
/// crops} with j = that pool patch; it lets pool descriptors be cached.
public enum PatchDescriptor {
    /// Side of the standardized luma patch.
    public static let standardSide = 32
    /// Side of the descriptor grid (descriptor length is its square).
    public static let side = 16
    /// BSS window area ratio used for descriptors.
    public static let ratio = 1.0 / 16.0

    /// The 4 query crops of a W×H image (top-left, top-right, bottom-left, bottom-right).
    public static func queryCrops(width: Int, height: Int) -> [PatchRect] {
        let cw = max(1, 3 * width / 4), ch = max(1, 3 * height / 4)
        let x1 = width - cw, y1 = height - ch
        return [PatchRect(x: 0, y: 0, width: cw, height: ch), PatchRect(x: x1, y: 0, width: cw, height: ch),
                PatchRect(x: 0, y: y1, width: cw, height: ch), PatchRect(x: x1, y: y1, width: cw, height: ch)]
    }

    /// The 5 reference patches of a W×H image: whole image, then the 4 crops.
    public static func referencePatches(width: Int, height: Int) -> [PatchRect] {
        [PatchRect(x: 0, y: 0, width: width, height: height)] + queryCrops(width: width, height: height)
    }

    /// Luma of `rect` of `image`, area-resized to `standardSide` squared.
    public static func standardLuma(_ image: RGBImage, rect: PatchRect) -> [Float] {
        let crop = image.cropped(x: rect.x, y: rect.y, width: rect.width, height: rect.height)
        let y = crop.luma()
        let gray = RGBImage(width: crop.width, height: crop.height, planes: y + y + y)
        let s = standardSide
        return Array(gray.resizedArea(width: s, height: s).planes[0..<(s * s)])
    }

    /// Fourier amplitude used as the BSS reference for a pool.
    public static func referenceAmplitude(luma: [Float]) -> [Float] {
        FFT2D(height: standardSide, width: standardSide).amplitudes(luma)
    }

    /// The unit-length descriptor of a standardized luma patch.
    public static func descriptor(luma: [Float], referenceAmplitude: [Float]) -> [Float] {
        let s = standardSide
        let std = BatchStyleStandardization.standardize(planes: [luma], height: s, width: s,
                                                         referenceAmplitude: referenceAmplitude, ratio: ratio)[0]
        let f = s / side
        var d = [Float](repeating: 0, count: side * side)
        for y in 0..<s { for x in 0..<s { d[(y / f) * side + x / f] += std[y * s + x] } }
        let mean = d.reduce(0, +) / Float(d.count)
        var norm: Float = 0
        for i in 0..<d.count { d[i] -= mean; norm += d[i] * d[i] }
        norm = norm.squareRoot()
        if norm > 1e-8 { for i in 0..<d.count { d[i] /= norm } } else { for i in 0..<d.count { d[i] = 0 } }
        return d
    }
}

/// One retrieved reference patch.
public struct RetrievedPatch: Sendable, Equatable, Codable {
    /// Query crop it was retrieved for (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
    public var quadrant: Int
    /// 0 for the best match of its quadrant.
    public var rank: Int
    /// Index of the pool image (in `ReferencePool.names`).
    public var imageIndex: Int
    /// File name of the pool image.
    public var name: String
    /// The patch, in the pool image's working coordinates (`ReferencePool.image(at:)`).
    public var rect: PatchRect
    /// Cosine similarity of the descriptors.
    public var similarity: Float
}

/// A folder of colour reference images, indexed for retrieval.
///
/// `index()` reads a cache file (default `<folder>/.millrace-index.json`) and rebuilds it when the
/// folder's listing (names, sizes, modification times of its PNG/JPEG files) has changed. If the
/// cache cannot be written the index is kept in memory only. Images are used at a working size
/// of at most `workingSide` pixels on the longer side.
public final class ReferencePool: @unchecked Sendable {
    /// The longer side of a pool image's working copy.
    public static let workingSide = 256
    /// Luma bins of the global chroma statistics (the no-retrieval mode).
    public static let lumaBins = 32
    static let cacheVersion = 1

    struct FileStamp: Codable, Equatable { var name: String; var size: Int64; var mtime: Double }
    struct IndexFile: Codable {
        var version: Int
        var listing: [FileStamp]
        var referenceAmplitude: [Float]
        var descriptors: Data
        var patchImages: [Int]
        var patchRects: [PatchRect]
        var chromaByLuma: [Float]
    }

    /// The folder of reference images.
    public let folder: String
    /// Where the index is cached.
    public let cachePath: String
    /// File names of the pool images, sorted (after `index()`).
    public private(set) var names: [String] = []
    /// Whether the last `index()` rebuilt the cache (false: it was read back).
    public private(set) var rebuilt = false
    private var file: IndexFile?
    private var descriptors: [Float] = []
    private var imageCache: [Int: RGBImage] = [:]
    private let lock = NSLock()
    /// The images of a pool made in memory (nil: the pool is a folder).
    private let memory: [RGBImage]?

    public init(folder: String, cachePath: String? = nil) {
        self.folder = folder
        self.cachePath = cachePath ?? (folder as NSString).appendingPathComponent(".millrace-index.json")
        self.memory = nil
    }

    /// A pool of images held in memory (e.g. the sprites a scene is made of), indexed on the
    /// first `index()` and never cached to disk. `names` default to "image-<i>".
    public init(images: [RGBImage], names: [String]? = nil) {
        precondition(names == nil || names!.count == images.count, "one name per image")
        self.folder = "<memory>"
        self.cachePath = ""
        self.memory = images
        self.memoryNames = names ?? images.indices.map { "image-\($0)" }
    }
    private var memoryNames: [String] = []

    /// Number of indexed patches.
    public var patchCount: Int { file?.patchImages.count ?? 0 }
    /// Average (a, b) per luma bin over the whole pool, `lumaBins * 2` values (after `index()`).
    public var chromaByLuma: [Float] { file?.chromaByLuma ?? [] }
    /// The BSS reference amplitude of descriptors (after `index()`).
    public var referenceAmplitude: [Float] { file?.referenceAmplitude ?? [] }

    private func listing() throws -> [FileStamp] {
        if let memory {
            return zip(memoryNames, memory).map { FileStamp(name: $0, size: Int64($1.pixelCount), mtime: 0) }
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw ColorError.referencePool("reference folder \(folder) does not exist")
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: folder)
            .filter { !$0.hasPrefix(".") && ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }
            .sorted()
        return try names.map { name in
            let attrs = try FileManager.default.attributesOfItem(atPath: (folder as NSString).appendingPathComponent(name))
            return FileStamp(name: name, size: (attrs[.size] as? NSNumber)?.int64Value ?? 0,
                             mtime: (attrs[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)
        }
    }

    /// Loads the cached index, or rebuilds it when the folder changed. Throws for an empty pool
    /// or an unreadable image.
    @discardableResult
    public func index() throws -> Bool {
        let stamps = try listing()
        guard !stamps.isEmpty else {
            throw ColorError.referencePool("reference pool \(folder) is empty: put colour PNG or JPEG images in it")
        }
        if memory != nil {
            if file == nil { install(try build(stamps)); rebuilt = true } else { rebuilt = false }
            return rebuilt
        }
        if let data = FileManager.default.contents(atPath: cachePath),
           let cached = try? JSONDecoder().decode(IndexFile.self, from: data),
           cached.version == Self.cacheVersion, cached.listing == stamps {
            install(cached)
            rebuilt = false
            return false
        }
        install(try build(stamps))
        rebuilt = true
        if let data = try? JSONEncoder().encode(file!) {
            try? AtomicFile.write(data, to: cachePath)
        }
        return true
    }

    private func install(_ f: IndexFile) {
        file = f
        names = f.listing.map(\.name)
        descriptors = f.descriptors.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        imageCache = [:]
    }

    private func build(_ stamps: [FileStamp]) throws -> IndexFile {
        names = stamps.map(\.name)
        imageCache = [:]
        var amplitude: [Float] = []
        var desc: [Float] = [], imgs: [Int] = [], rects: [PatchRect] = []
        let bins = Self.lumaBins
        var sums = [Double](repeating: 0, count: 2 * bins), counts = [Double](repeating: 0, count: bins)
        for i in 0..<stamps.count {
            let image = try loadWorking(i)
            if i == 0 {
                amplitude = PatchDescriptor.referenceAmplitude(
                    luma: PatchDescriptor.standardLuma(image, rect: PatchRect(x: 0, y: 0, width: image.width, height: image.height)))
            }
            for rect in PatchDescriptor.referencePatches(width: image.width, height: image.height) {
                desc += PatchDescriptor.descriptor(luma: PatchDescriptor.standardLuma(image, rect: rect),
                                                   referenceAmplitude: amplitude)
                imgs.append(i)
                rects.append(rect)
            }
            let y = image.luma(), lab = image.toLab(), n = image.pixelCount
            for p in 0..<n {
                let b = min(bins - 1, max(0, Int(y[p] * Float(bins))))
                sums[2 * b] += Double(lab.planes[n + p]); sums[2 * b + 1] += Double(lab.planes[2 * n + p])
                counts[b] += 1
            }
        }
        // Mean chroma per bin; empty bins borrow the nearest filled bin.
        var chroma = [Float](repeating: 0, count: 2 * bins)
        let filled = (0..<bins).filter { counts[$0] > 0 }
        for b in 0..<bins {
            guard let src = filled.min(by: { abs($0 - b) < abs($1 - b) }) else { continue }
            chroma[2 * b] = Float(sums[2 * src] / counts[src]); chroma[2 * b + 1] = Float(sums[2 * src + 1] / counts[src])
        }
        return IndexFile(version: Self.cacheVersion, listing: stamps, referenceAmplitude: amplitude,
                         descriptors: desc.withUnsafeBytes { Data($0) }, patchImages: imgs, patchRects: rects,
                         chromaByLuma: chroma)
    }

    private func loadWorking(_ i: Int) throws -> RGBImage {
        let image: RGBImage
        if let memory {
            image = memory[i]
        } else {
            let path = (folder as NSString).appendingPathComponent(names[i])
            do { image = try RGBImage.load(path: path) } catch {
                throw ColorError.referencePool("cannot read reference image \(path): \(error)")
            }
        }
        let side = max(image.width, image.height)
        guard side > Self.workingSide else { return image }
        let s = Double(Self.workingSide) / Double(side)
        return image.resizedArea(width: max(1, Int((Double(image.width) * s).rounded())),
                                 height: max(1, Int((Double(image.height) * s).rounded())))
    }

    /// The working copy of pool image `i` (patch rectangles refer to it); cached in memory.
    public func image(at i: Int) throws -> RGBImage {
        lock.lock(); defer { lock.unlock() }
        if let cached = imageCache[i] { return cached }
        let image = try loadWorking(i)
        imageCache[i] = image
        return image
    }

    /// The `top` best pool patches for one standardized luma patch (`PatchDescriptor.standardLuma`).
    public func search(luma: [Float], top: Int, quadrant: Int = 0, excluding: Set<Int> = []) throws -> [RetrievedPatch] {
        guard let f = file else { throw ColorError.referencePool("reference pool \(folder) is not indexed: call index() first") }
        let q = PatchDescriptor.descriptor(luma: luma, referenceAmplitude: f.referenceAmplitude)
        let d = q.count
        var scored: [(Int, Float)] = []
        scored.reserveCapacity(f.patchImages.count)
        descriptors.withUnsafeBufferPointer { all in
            for p in 0..<f.patchImages.count where !excluding.contains(f.patchImages[p]) {
                var s: Float = 0
                for k in 0..<d { s += all[p * d + k] * q[k] }
                scored.append((p, s))
            }
        }
        scored.sort { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
        return scored.prefix(top).enumerated().map { rank, e in
            RetrievedPatch(quadrant: quadrant, rank: rank, imageIndex: f.patchImages[e.0], name: names[f.patchImages[e.0]],
                           rect: f.patchRects[e.0], similarity: e.1)
        }
    }

    /// Retrieval for a query image (any colour; its luma is used): top `top` per query crop,
    /// leaving out the pool images numbered in `excluding` (training leaves out the image itself).
    public func retrieve(query: RGBImage, top: Int = 3, excluding: Set<Int> = []) throws -> [RetrievedPatch] {
        var out: [RetrievedPatch] = []
        for (qi, rect) in PatchDescriptor.queryCrops(width: query.width, height: query.height).enumerated() {
            out += try search(luma: PatchDescriptor.standardLuma(query, rect: rect), top: top, quadrant: qi, excluding: excluding)
        }
        return out
    }
}

extension ReferencePool {
    /// The shipped pool's folder, relative to the repository root.
    public static let shippedFolder = "assets/references"

    /// Where the shipped pool is looked for: assets/references under the current directory, or
    /// under any parent of the running executable (so `swift run gen` and `.build/release/gen` both
    /// find the repo's copy); `assets/references` if neither has it.
    public static func defaultFolder() -> String {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: shippedFolder, isDirectory: &isDir), isDir.boolValue { return shippedFolder }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            let candidate = dir.appendingPathComponent(shippedFolder).path
            if fm.fileExists(atPath: candidate, isDirectory: &isDir), isDir.boolValue { return candidate }
            dir.deleteLastPathComponent()
        }
        return shippedFolder
    }
}
