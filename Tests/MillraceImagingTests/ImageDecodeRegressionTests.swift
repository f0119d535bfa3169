import Foundation
import Testing
import MillraceImaging
import MillraceTestSupport

/// The image decoders' fuzz regressions (Fuzz/ImageDecode/regressions, found by the C fuzz
/// target) and seeds: every input is decoded within its limits or refused with an ImageError.
@Suite struct ImageDecodeRegressionTests {
    static func inputs(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
        let root = URL(fileURLWithPath: Fixtures.repositoryRoot).appendingPathComponent("Fuzz").appendingPathComponent(target)
        var out: [(String, [UInt8])] = []
        for folder in ["regressions", "seeds"] {
            let dir = root.appendingPathComponent(folder)
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { continue }
            for name in names.sorted() where !name.hasPrefix(".") {
                out.append(("\(folder)/\(name)", [UInt8](try Data(contentsOf: dir.appendingPathComponent(name)))))
            }
        }
        return out
    }

    @Test func imageDecoderRegressions() throws {
        let files = try Self.inputs("ImageDecode")
        #expect(files.contains { $0.name.hasPrefix("regressions/") }, "the regression inputs are found")
        let limit = 1 << 20
        for (name, bytes) in files {
            do {
                let image = try RGBImage.decode(bytes, maxPixels: limit)
                #expect(image.width > 0 && image.height > 0 && image.width * image.height <= limit, "\(name)")
            } catch let e as ImageError {
                #expect(!"\(e)".isEmpty, "\(name): an error without a message")
            }
            // The header reader agrees with the decoder's limits (or refuses the same file).
            if let (_, w, h) = try? RGBImage.probe(bytes) { #expect(w > 0 && h > 0, "\(name)") }
        }
    }
}
