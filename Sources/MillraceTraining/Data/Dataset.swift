import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MillraceCore
import MillraceFormats
import MillraceImaging

/// An error from building, writing or reading a dataset, with a message meant for people.
public enum DatasetError: Error, CustomStringConvertible, Sendable, Equatable {
    /// No dataset file at `path` (`gen` says how to build one).
    case notFound(path: String)
    /// The file is damaged, truncated or not a dataset; the message says what was found.
    case corrupt(String)
    /// A value given by the caller is out of range (size, labels, classes, a group name).
    case invalidArgument(String)
    /// A source the builder needs (the emoji font, emoji-test.txt, FreeType, HarfBuzz) is
    /// missing or unusable; the message names the Debian package.
    case missingSource(String)
    /// Reading or writing a file failed.
    case io(String)

    /// What went wrong and, where possible, how to fix it.
    public var message: String {
        switch self {
        case .notFound(let path): return "dataset file \(path) not found"
        case .corrupt(let m), .invalidArgument(let m), .missingSource(let m), .io(let m): return m
        }
    }
    public var description: String { message }
}

/// Metadata of one image in a dataset.
public struct DatasetItem: Sendable, Equatable, Codable {
    /// The code points as upper-case hex separated by spaces, e.g. `1F1EB 1F1F7`.
    public var codepoints: String
    /// The emoji's CLDR name, e.g. `flag: France`.
    public var name: String
    /// The emoji-test subgroup, e.g. `country-flag`.
    public var subgroup: String

    /// Metadata with the given fields.
    public init(codepoints: String, name: String, subgroup: String) {
        self.codepoints = codepoints
        self.name = name
        self.subgroup = subgroup
    }

    /// The emoji as a string, decoded from `codepoints` (empty if they do not parse).
    public var text: String {
        var scalars = String.UnicodeScalarView()
        for token in codepoints.split(separator: " ") {
            guard let value = UInt32(token, radix: 16), let scalar = Unicode.Scalar(value) else { return "" }
            scalars.append(scalar)
        }
        return String(scalars)
    }
}

/// A labelled set of small square RGB images with a train / held-out split, stored in one
/// compact file (`.mrds`, described in docs/DATASET.md).
///
/// Pixels are 8-bit, planar per image: image `i` occupies
/// `pixels[i * 3 * size * size ..< (i + 1) * 3 * size * size]` as the R plane, then G, then B,
/// each row-major.
public struct ImageDataset: Sendable, Equatable {
    /// The format's magic bytes, `MRDS`.
    public static let magic: [UInt8] = Array("MRDS".utf8)
    /// The format version written and understood by this code.
    public static let formatVersion: UInt32 = 1
    /// The largest image side accepted when reading (a guard against corrupt headers).
    public static let maxSize = 4096

    /// Image height and width (images are square).
    public var size: Int
    /// Class names; `labels` index into it.
    public var classNames: [String]
    /// The class of each image.
    public var labels: [UInt8]
    /// The split of each image: 0 train, 1 held-out.
    public var split: [UInt8]
    /// All pixels, `[count, 3, size, size]`, 0 (black) to 255 (full intensity).
    public var pixels: [UInt8]
    /// Metadata of each image.
    public var items: [DatasetItem]

    /// A dataset from its parts. The counts must agree: `labels`, `split` and `items` have one entry
    /// per image and `pixels` has `3 * size * size` bytes per image.
    public init(size: Int, classNames: [String], labels: [UInt8], split: [UInt8], pixels: [UInt8],
                items: [DatasetItem]) {
        precondition(size > 0, "image size must be positive")
        precondition(labels.count == items.count && split.count == items.count,
                     "labels, split and items must have one entry per image")
        precondition(pixels.count == items.count * 3 * size * size,
                     "pixels must hold 3 * size * size bytes per image")
        self.size = size
        self.classNames = classNames
        self.labels = labels
        self.split = split
        self.pixels = pixels
        self.items = items
    }

    /// Number of images.
    public var count: Int { labels.count }

    /// Bytes per image (`3 * size * size`).
    public var bytesPerImage: Int { 3 * size * size }

    /// Image `i` as floats in [0, 1].
    public func image(at i: Int) -> RGBImage {
        precondition(i >= 0 && i < count, "image index \(i) out of range 0..<\(count)")
        let n = bytesPerImage
        let planes = pixels[i * n ..< (i + 1) * n].map { Float($0) * (1 / 255) }
        return RGBImage(width: size, height: size, planes: planes)
    }

    /// A stored byte in model space: u8/127.5 − 1, in [−1, 1]. The one conversion from dataset
    /// bytes to model inputs (pictures go through `Tensor(images:)`, which gives the same values
    /// for the same bytes up to rounding).
    @inline(__always) public static func modelValue(_ byte: UInt8) -> Float { Float(byte) / 127.5 - 1 }

    /// Images `indices` in model space, [n, 3, S, S].
    public func modelInputs(_ indices: [Int]) -> Tensor {
        let per = bytesPerImage
        var x = Tensor(uninitialized: [indices.count, 3, size, size])
        x.data.withUnsafeMutableBufferPointer { xp in
            pixels.withUnsafeBufferPointer { px in
                for (n, i) in indices.enumerated() {
                    for j in 0..<per { xp[n * per + j] = Self.modelValue(px[i * per + j]) }
                }
            }
        }
        return x
    }

    /// Indices of the train (0) or held-out (1) split, ascending.
    public func indices(split which: UInt8) -> [Int] {
        split.indices.filter { split[$0] == which }
    }

    /// Number of images per class, indexed like `classNames`.
    public var countsPerClass: [Int] {
        var counts = [Int](repeating: 0, count: classNames.count)
        for label in labels where Int(label) < counts.count { counts[Int(label)] += 1 }
        return counts
    }

    // MARK: - Serialisation

    /// The JSON block: class names and per-item metadata. Keys are sorted so bytes are reproducible.
    private struct Metadata: Codable {
        var classes: [String]
        var items: [DatasetItem]
    }

    /// Fixed header: magic, version, height, width, channels, count, class count, JSON length.
    static let headerLength = 32

    /// The complete file contents.
    public func serialized() throws -> [UInt8] {
        guard classNames.count <= 256 else {
            throw DatasetError.invalidArgument("a dataset can hold at most 256 classes (labels are one byte); got \(classNames.count)")
        }
        guard size <= Self.maxSize, count <= Int(UInt32.max) else {
            throw DatasetError.invalidArgument("dataset too large to store: size \(size), count \(count)")
        }
        if let bad = labels.first(where: { Int($0) >= classNames.count }) {
            throw DatasetError.invalidArgument("label \(bad) is out of range for \(classNames.count) classes")
        }
        if let bad = split.first(where: { $0 > 1 }) {
            throw DatasetError.invalidArgument("split value \(bad) is not 0 (train) or 1 (held-out)")
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = [UInt8](try encoder.encode(Metadata(classes: classNames, items: items)))

        var out: [UInt8] = []
        out.reserveCapacity(Self.headerLength + json.count + 2 * count + pixels.count + 4)
        out += Self.magic
        for value in [Self.formatVersion, UInt32(size), UInt32(size), 3, UInt32(count),
                      UInt32(classNames.count), UInt32(json.count)] {
            appendLE(value, to: &out)
        }
        out += json
        out += labels
        out += split
        out += pixels
        appendLE(CRC32.checksum(out), to: &out)
        return out
    }

    /// Writes the dataset to `path` atomically (a temporary file in the same directory, then a
    /// rename), creating missing parent directories.
    public func write(path: String) throws {
        let bytes = try serialized()
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw DatasetError.io("cannot create directory \(directory.path) for dataset \(path): \(error.localizedDescription)")
        }
        do {
            try AtomicFile.write(bytes, to: path)
        } catch let failure as AtomicFile.Failure {
            throw DatasetError.io("cannot write dataset \(path): \(failure.description)")
        }
    }

    /// Reads and validates a dataset file written by `write(path:)`.
    public static func read(path: String) throws -> ImageDataset {
        guard FileManager.default.fileExists(atPath: path) else {
            throw DatasetError.notFound(path: path)
        }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw DatasetError.io("cannot read dataset file \(path): \(error.localizedDescription)")
        }
        return try parse([UInt8](data), path: path)
    }

    /// Parses and validates file contents. `path` names the file in error messages.
    public static func parse(_ bytes: [UInt8], path: String = "<memory>") throws -> ImageDataset {
        let rebuild = "rebuild it"
        func fail(_ why: String) -> DatasetError {
            DatasetError.corrupt("dataset file \(path) \(why); \(rebuild)")
        }
        guard bytes.count >= 4, Array(bytes[0..<4]) == magic else {
            throw fail("is not a Millrace dataset (it does not start with \"MRDS\")")
        }
        guard bytes.count >= headerLength + 4 else {
            throw fail("is truncated: expected at least \(headerLength + 4) bytes, found \(bytes.count)")
        }
        let version = readLE(bytes, at: 4)
        guard version == formatVersion else {
            throw fail("has format version \(version), but this build reads version \(formatVersion)")
        }
        let height = Int(readLE(bytes, at: 8)), width = Int(readLE(bytes, at: 12))
        let channels = Int(readLE(bytes, at: 16)), count = Int(readLE(bytes, at: 20))
        let classCount = Int(readLE(bytes, at: 24)), jsonLength = Int(readLE(bytes, at: 28))
        guard height == width, height > 0, height <= maxSize else {
            throw fail("declares unsupported image size \(height)x\(width) (square, 1 to \(maxSize))")
        }
        guard channels == 3 else { throw fail("declares \(channels) channels; only 3 (RGB) is supported") }
        guard classCount >= 1, classCount <= 256 else {
            throw fail("declares \(classCount) classes; 1 to 256 are supported")
        }

        // Expected length, with overflow checks, before anything is allocated from the header.
        func add(_ a: Int, _ b: Int) -> Int? {
            let (r, o) = a.addingReportingOverflow(b); return o ? nil : r
        }
        func mul(_ a: Int, _ b: Int) -> Int? {
            let (r, o) = a.multipliedReportingOverflow(by: b); return o ? nil : r
        }
        guard let perImage = mul(3, height).flatMap({ mul($0, width) }),
              let pixelBytes = mul(perImage, count),
              let perItemBytes = mul(2, count),
              let expected = add(headerLength, jsonLength).flatMap({ add($0, perItemBytes) })
                  .flatMap({ add($0, pixelBytes) }).flatMap({ add($0, 4) })
        else {
            throw fail("has a header with impossible sizes (\(count) images of \(height)x\(width))")
        }
        if bytes.count < expected {
            throw fail("is truncated: expected \(expected) bytes, found \(bytes.count)")
        }
        if bytes.count > expected {
            throw fail("has the wrong length: expected \(expected) bytes, found \(bytes.count)")
        }
        let stored = readLE(bytes, at: expected - 4)
        let actual = CRC32.checksum(bytes[0..<(expected - 4)])
        guard stored == actual else {
            throw fail("is corrupt: checksum mismatch (stored \(hex(stored)), computed \(hex(actual)))")
        }

        var offset = headerLength
        let metadata: Metadata
        do {
            metadata = try JSONDecoder().decode(Metadata.self, from: Data(bytes[offset..<(offset + jsonLength)]))
        } catch {
            throw fail("has unreadable metadata JSON (\(error))")
        }
        offset += jsonLength
        guard metadata.classes.count == classCount else {
            throw fail("lists \(metadata.classes.count) class names but its header declares \(classCount)")
        }
        guard metadata.items.count == count else {
            throw fail("lists \(metadata.items.count) items but its header declares \(count)")
        }
        let labels = Array(bytes[offset..<(offset + count)])
        offset += count
        let split = Array(bytes[offset..<(offset + count)])
        offset += count
        if let i = labels.firstIndex(where: { Int($0) >= classCount }) {
            throw fail("has label \(labels[i]) at item \(i), outside 0..<\(classCount)")
        }
        if let i = split.firstIndex(where: { $0 > 1 }) {
            throw fail("has split value \(split[i]) at item \(i); only 0 (train) and 1 (held-out) are valid")
        }
        let pixels = Array(bytes[offset..<(offset + pixelBytes)])
        return ImageDataset(size: height, classNames: metadata.classes, labels: labels, split: split,
                            pixels: pixels, items: metadata.items)
    }
}

private func appendLE(_ value: UInt32, to out: inout [UInt8]) {
    out.append(UInt8(truncatingIfNeeded: value))
    out.append(UInt8(truncatingIfNeeded: value >> 8))
    out.append(UInt8(truncatingIfNeeded: value >> 16))
    out.append(UInt8(truncatingIfNeeded: value >> 24))
}

private func readLE(_ bytes: [UInt8], at offset: Int) -> UInt32 {
    UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8
        | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
}

private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), the checksum used by zlib, PNG and gzip.
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            let run: (UnsafeBufferPointer<UInt8>) -> Void = { buffer in
                for byte in buffer { crc = t[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
            }
            if bytes.withContiguousStorageIfAvailable(run) == nil {
                Array(bytes).withUnsafeBufferPointer(run)
            }
        }
        return crc ^ 0xFFFF_FFFF
    }
}
