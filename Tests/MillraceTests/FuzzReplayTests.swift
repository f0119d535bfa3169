import Foundation
@testable import Millrace
import Testing

/// Replays the fuzzers' regression inputs and seeds (Fuzz/*/regressions, Fuzz/*/seeds) through
/// the parsers they were found against, with the same checks as the fuzz targets: every input
/// is either parsed within its limits or refused with the parser's own error, never a crash.
/// A new crash found by a fuzzer goes into its regressions folder and is then checked here.
@Suite struct FuzzReplayTests {
    /// The files of Fuzz/`target`/regressions and Fuzz/`target`/seeds.
    static func inputs(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
        let root = URL(fileURLWithPath: GenCLI.root).appendingPathComponent("Fuzz").appendingPathComponent(target)
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

    @Test func multipartRegressionsAndSeeds() throws {
        let files = try Self.inputs("Multipart")
        #expect(!files.isEmpty)
        let limits = MultipartFormData.Limits(maxParts: 16, maxHeaderBytes: 512)
        for (name, bytes) in files {
            // As the fuzz target reads an input: the Content-Type on the first line, the body after it.
            let split = bytes.firstIndex(of: 0x0A) ?? bytes.count
            let type = String(decoding: bytes[0..<split], as: UTF8.self)
            let body = split < bytes.count ? Array(bytes[(split + 1)...]) : []
            do {
                let parts = try MultipartFormData.parse(body, contentType: type, limits: limits)
                #expect(!parts.isEmpty && parts.count <= limits.maxParts, "\(name)")
                let boundary = MultipartFormData.makeBoundary(avoiding: parts.map(\.body))
                let again = try MultipartFormData.parse(MultipartFormData.encode(parts, boundary: boundary),
                                                        contentType: "multipart/form-data; boundary=\(boundary)")
                #expect(again.map(\.body) == parts.map(\.body) && again.map(\.name) == parts.map(\.name), "\(name): round trip")
            } catch let e as MultipartError {
                #expect([400, 413, 415].contains(e.status) && !e.message.isEmpty, "\(name): \(e.status) \(e.message)")
            }
        }
    }

    @Test func safetensorsRegressionsAndSeeds() throws {
        let files = try Self.inputs("Safetensors")
        #expect(!files.isEmpty)
        for (name, bytes) in files {
            do {
                let file = try SafetensorsFile.parse(bytes)
                // What parses is written back and read again to the same tensors.
                let again = try SafetensorsFile.parse(try file.serialized(dtype: .f32))
                #expect(Set(again.tensors.keys) == Set(file.tensors.keys), "\(name)")
                for (key, t) in file.tensors {
                    #expect(again.tensors[key]?.shape == t.shape, "\(name): \(key)")
                }
            } catch is SafetensorsError {
                continue
            }
        }
    }
}
