import Foundation
import Testing
import MillraceFormats
import MillraceTestSupport

/// Builds a safetensors file from a header JSON text and raw data bytes (no padding added).
private func stFile(header: String, data: [UInt8] = []) -> [UInt8] {
    let json = Array(header.utf8)
    var bytes: [UInt8] = []
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { bytes.append(contentsOf: $0) }
    return bytes + json + data
}

/// Little-endian bytes of 16-bit patterns.
private func stLE16(_ values: [UInt16]) -> [UInt8] {
    values.flatMap { [UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)] }
}

/// Little-endian bytes of Float32 values.
private func stLE32(_ values: [Float]) -> [UInt8] {
    values.flatMap { v -> [UInt8] in
        let b = v.bitPattern
        return [UInt8(truncatingIfNeeded: b), UInt8(truncatingIfNeeded: b >> 8),
                UInt8(truncatingIfNeeded: b >> 16), UInt8(truncatingIfNeeded: b >> 24)]
    }
}

/// Bitwise float equality (so NaN payloads and signed zeros count).
private func stSameBits(_ a: [Float], _ b: [Float]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
}

private func stSample() -> SafetensorsFile {
    SafetensorsFile(tensors: [
        "conv.weight": SafetensorsTensor(shape: [2, 1, 2, 2], data: [1, -2, 0.1, 3e-5, -0.0, 1e30, -1e-30, 7]),
        "conv.bias": SafetensorsTensor(shape: [2], data: [.infinity, -.infinity]),
        "scalar": SafetensorsTensor(shape: [], data: [42]),
        "empty": SafetensorsTensor(shape: [0, 3], data: []),
        "odd": SafetensorsTensor(shape: [3], data: [1, 2, 3]),
    ], metadata: ["format": "pt"])
}

@Suite struct SafetensorsTests {
    // MARK: Round trips

    @Test func f32RoundTripIsExact() throws {
        var original = stSample()
        original.tensors["nan"] = SafetensorsTensor(shape: [2], data: [.nan, Float(bitPattern: 0x7FC0_1234)])
        let bytes = try original.serialized()
        let back = try SafetensorsFile.parse(bytes)
        #expect(Set(back.tensors.keys) == Set(original.tensors.keys))
        for (name, tensor) in original.tensors {
            let read = try #require(back.tensors[name])
            #expect(read.shape == tensor.shape, "\(name)")
            #expect(stSameBits(read.data, tensor.data), "\(name)")
            #expect(back.dtypes[name] == .f32)
        }
        #expect(back.metadata == original.metadata)
    }

    @Test func layoutIsSortedPaddedAndContiguous() throws {
        let bytes = try stSample().serialized()
        let n = bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        #expect((8 + n) % 8 == 0)
        let header = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        #expect(header.hasPrefix("{\"__metadata__\":{\"format\":\"pt\"},\"conv.bias\":"))
        #expect(header.hasSuffix("}") || header.hasSuffix(" "))
        let order = ["conv.bias", "conv.weight", "empty", "odd", "scalar"].compactMap {
            header.range(of: "\"\($0)\"")?.lowerBound
        }
        #expect(order.count == 5 && order == order.sorted())
        // 2 + 8 + 0 + 3 + 1 floats.
        #expect(bytes.count == 8 + n + 14 * 4)
    }

    @Test func f16RoundTripWithinHalfPrecision() throws {
        var rng = TestRNG(seed: 1)
        let values = (0..<1000).map { _ in Float.random(in: -1000...1000, using: &rng) }
            + [0, 1, -2, 65504, 1e-3, 6e-5]
        let original = SafetensorsFile(tensors: ["t": SafetensorsTensor(shape: [values.count], data: values)])
        let bytes = try original.serialized(dtype: .f16)
        let back = try SafetensorsFile.parse(bytes)
        #expect(back.dtypes["t"] == .f16)
        let read = try #require(back.tensors["t"]).data
        for (x, y) in zip(values, read) {
            // Normal halves keep 11 significant bits: relative error at most 2^-11.
            #expect(abs(x - y) <= abs(x) * 0x1p-11 + 0x1p-25, "\(x) came back as \(y)")
        }
    }

    @Test func bf16WriteRoundTrip() throws {
        let original = SafetensorsFile(tensors: ["t": SafetensorsTensor(shape: [4], data: [1, -3.5, 1e30, 0.1])])
        let back = try SafetensorsFile.parse(try original.serialized(dtype: .bf16))
        #expect(back.dtypes["t"] == .bf16)
        let read = try #require(back.tensors["t"]).data
        #expect(Array(read[0..<2]) == [1, -3.5])
        #expect(abs(read[3] - 0.1) <= 0.1 * 0x1p-8)
    }

    @Test func metadataRoundTrip() throws {
        let metadata = ["format": "pt", "quote\"back\\slash": "line\nbreak\ttab\u{01}",
                        "ünïcødé": "日本語 🎉", "": "empty key"]
        let original = SafetensorsFile(tensors: ["x": SafetensorsTensor(shape: [1], data: [1])], metadata: metadata)
        let back = try SafetensorsFile.parse(try original.serialized())
        #expect(back.metadata == metadata)
        let none = try SafetensorsFile.parse(try SafetensorsFile(tensors: [String: SafetensorsTensor]()).serialized())
        #expect(none.tensors.isEmpty && none.metadata.isEmpty)
    }

    // MARK: Element conversions

    @Test func bf16ReadFromHandBuiltBytes() throws {
        // 1.0 = 0x3F80, -2.5 = 0xC020, 3.140625 = 0x4049, +inf = 0x7F80, smallest normal = 0x0080.
        let bytes = stFile(header: #"{"b":{"dtype":"BF16","shape":[5],"data_offsets":[0,10]}}"#,
                         data: stLE16([0x3F80, 0xC020, 0x4049, 0x7F80, 0x0080]))
        let parsed = try SafetensorsFile.parse(bytes)
        #expect(parsed.dtypes["b"] == .bf16)
        #expect(parsed.tensors["b"]?.data == [1, -2.5, 3.140625, .infinity, Float.leastNormalMagnitude])
    }

    @Test func f16KnownBitPatterns() throws {
        let patterns: [UInt16] = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0xFC00, 0x8000, 0x03FF, 0x0400, 0x3555]
        let expected: [Float] = [1, -2, 65504, 0x1p-24, .infinity, -.infinity, -0.0,
                                 0x1.ff8p-15, 0x1p-14, 0x1.554p-2]
        let bytes = stFile(header: #"{"h":{"dtype":"F16","shape":[2,5],"data_offsets":[0,20]}}"#,
                         data: stLE16(patterns))
        let parsed = try SafetensorsFile.parse(bytes)
        let data = try #require(parsed.tensors["h"]).data
        #expect(stSameBits(data, expected))
        #expect(parsed.tensors["h"]?.shape == [2, 5])

        // NaNs stay NaN.
        let nans = try SafetensorsFile.parse(stFile(
            header: #"{"n":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#, data: stLE16([0x7E00, 0xFC01])))
        #expect(nans.tensors["n"]?.data.allSatisfy(\.isNaN) == true)

        // And the writer produces the same patterns.
        let written = try SafetensorsFile(tensors: ["h": SafetensorsTensor(shape: [10], data: expected)])
            .serialized(dtype: .f16)
        #expect(Array(written.suffix(20)) == stLE16(patterns))
    }

    @Test func f16WriterRoundsToNearestEven() throws {
        let cases: [(Float, UInt16)] = [
            (1 + 0x1p-11, 0x3C00),          // tie → even (down)
            (1 + 3 * 0x1p-11, 0x3C02),      // tie → even (up)
            (1 + 0x1p-11 + 0x1p-20, 0x3C01), // just above the tie → up
            (65519, 0x7BFF),                // below the overflow tie
            (65520, 0x7C00),                // tie at the top rounds to infinity
            (1e10, 0x7C00), (-1e10, 0xFC00),
            (0x1p-25, 0x0000),              // half the smallest subnormal: tie → zero
            (0x1.8p-25, 0x0001),            // above it → smallest subnormal
            (3 * 0x1p-25, 0x0002),          // tie between 1 and 2 subnormal ulps → 2
            (0x1p-26, 0x0000), (-0x1p-30, 0x8000),
            (0x1.ffcp-15, 0x0400),          // largest subnormal tie → rounds up into the normals
            (Float.leastNonzeroMagnitude, 0x0000), (-0.0, 0x8000),
        ]
        let values = cases.map(\.0)
        let written = try SafetensorsFile(tensors: ["t": SafetensorsTensor(shape: [values.count], data: values)])
            .serialized(dtype: .f16)
        #expect(Array(written.suffix(values.count * 2)) == stLE16(cases.map(\.1)))
    }

    #if !(os(macOS) && arch(x86_64))
    @Test func f16AllPatternsMatchFloat16() throws {
        let all = (0...UInt16.max).map { $0 }
        let bytes = stFile(header: #"{"all":{"dtype":"F16","shape":[65536],"data_offsets":[0,131072]}}"#,
                         data: stLE16(all))
        let data = try #require(try SafetensorsFile.parse(bytes).tensors["all"]).data
        for (bits, value) in zip(all, data) {
            let reference = Float(Float16(bitPattern: bits))
            #expect(value.bitPattern == reference.bitPattern || (value.isNaN && reference.isNaN),
                    "0x\(String(bits, radix: 16))")
        }
        // Every half survives a write as F16 bit for bit (NaNs as some NaN).
        let written = try SafetensorsFile(tensors: ["all": SafetensorsTensor(shape: [65536], data: data)])
            .serialized(dtype: .f16)
        let back = Array(written.suffix(131072))
        for (i, bits) in all.enumerated() {
            let got = UInt16(back[2 * i]) | UInt16(back[2 * i + 1]) << 8
            let isNaN = bits & 0x7C00 == 0x7C00 && bits & 0x3FF != 0
            #expect(got == bits || (isNaN && got & 0x7C00 == 0x7C00 && got & 0x3FF != 0))
        }
        // Random floats of every magnitude narrow as Float16's initialiser does.
        var rng = TestRNG(seed: 7)
        let randoms = (0..<20000).map { _ in Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng)) }
            .filter { !$0.isNaN }
        let narrowed = try SafetensorsFile(tensors: ["r": SafetensorsTensor(shape: [randoms.count], data: randoms)])
            .serialized(dtype: .f16).suffix(randoms.count * 2)
        #expect(Array(narrowed) == stLE16(randoms.map { Float16($0).bitPattern }))
    }
    #endif

    // MARK: Malformed files

    private static let validEntry = #""t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#

    /// Headers (with 8 data bytes after them) that must be refused, and a word the error must contain.
    private static let badHeaders: [(String, String)] = [
        ("", "empty"),
        ("   ", "JSON"),
        ("not json", "JSON"),
        ("[1,2]", "object"),
        ("\"str\"", "object"),
        ("{", "JSON"),
        ("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", "JSON"),
        ("{\(validEntry),\(validEntry)}", "duplicate"),
        (#"{"t":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, "duplicate"),
        (#"{"t":[1]}"#, "'t'"),
        (#"{"t":"F32"}"#, "'t'"),
        (#"{"t":{"shape":[2],"data_offsets":[0,8]}}"#, "dtype"),
        (#"{"t":{"dtype":32,"shape":[2],"data_offsets":[0,8]}}"#, "dtype"),
        (#"{"t":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, "I64"),
        (#"{"t":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}"#, "f32"),
        (#"{"t":{"dtype":"F32","data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":[true],"data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}}"#, "shape"),
        (#"{"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, "overflow"),
        (#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}"#, "overflow"),
        (#"{"t":{"dtype":"F32","shape":[2305843009213693952],"data_offsets":[0,8]}}"#, "bytes"),
        (#"{"t":{"dtype":"F32","shape":[2]}}"#, "data_offsets"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, "data_offsets"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,16]}}"#, "data_offsets"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":{"0":8}}}"#, "data_offsets"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}"#, "data_offsets"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}}"#, "data_offsets"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, "end before"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#, "past the end"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}"#, "data_offsets"),
        (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,9223372036854775807]}}"#, "past the end"),
        (#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, "needs 12"),
        (#"{"t":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#, "needs 4"),
        (#"{"__metadata__":"x","t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, "__metadata__"),
        (#"{"__metadata__":{"a":1}}"#, "'a'"),
        (#"{"t\ud800":1}"#, "surrogate"),
        ("{\"t\u{01}\":1}", "control"),
        (String(repeating: "[", count: 10000), "nesting"),
    ]

    @Test func malformedHeadersThrow() throws {
        for (header, word) in Self.badHeaders {
            let bytes = stFile(header: header, data: stLE32([1, 2]))
            do {
                let parsed = try SafetensorsFile.parse(bytes)
                Issue.record("accepted \(header.prefix(80)): \(parsed.tensors.keys.sorted())")
            } catch let error as SafetensorsError {
                #expect(error.message.contains(word), "\(header.prefix(80)) → \(error.message)")
            }
        }
    }

    @Test func malformedErrorsNameTheTensor() throws {
        let bytes = stFile(header: #"{"down.0.conv":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
                         data: stLE32([0, 0]))
        #expect(throws: SafetensorsError.malformed("tensor 'down.0.conv' has dtype I64; Millrace reads F32, F16 and "
                                         + "BF16. Convert the checkpoint to float32 or float16 first")) {
            try SafetensorsFile.parse(bytes)
        }
        let mismatch = stFile(header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: stLE32([0, 0]))
        do {
            _ = try SafetensorsFile.parse(mismatch)
            Issue.record("accepted a byte-length mismatch")
        } catch let error as SafetensorsError {
            #expect(error.message.contains("'w'"))
            #expect(error.description == error.message)
        }
    }

    @Test func badLengthFieldsThrow() throws {
        for short in 0..<8 {
            #expect(throws: SafetensorsError.self) { try SafetensorsFile.parse([UInt8](repeating: 0, count: short)) }
        }
        // Header length past the end of the file, absurdly large, and all ones.
        var tooLong = stFile(header: "{}")
        tooLong[0] = 3
        #expect(throws: SafetensorsError.self) { try SafetensorsFile.parse(tooLong) }
        let huge: [UInt8] = [0, 0, 0, 0x10, 0, 0, 0, 0] + Array("{}".utf8)  // 256 MiB
        #expect(throws: SafetensorsError.self) { try SafetensorsFile.parse(huge) }
        let allOnes = [UInt8](repeating: 0xFF, count: 8) + Array("{}".utf8)
        #expect(throws: SafetensorsError.self) { try SafetensorsFile.parse(allOnes) }
        // Not UTF-8: a lone continuation byte and an encoded surrogate inside a key.
        var badUTF8 = stFile(header: "{\"ab\":{}}")
        badUTF8[10] = 0x80
        #expect(throws: SafetensorsError.self) { try SafetensorsFile.parse(badUTF8) }
        var surrogate = stFile(header: "{\"abc\":{}}")
        surrogate.replaceSubrange(10..<13, with: [0xED, 0xA0, 0x80])
        #expect(throws: SafetensorsError.self) { try SafetensorsFile.parse(surrogate) }
    }

    @Test func lenientButValidFilesParse() throws {
        // Whitespace padding, unknown entry fields, trailing bytes, gaps between tensors, escapes in names.
        let header = "  {\"a\\u00e9\\n\" : {\"dtype\":\"F32\", \"shape\":[1], \"data_offsets\":[4,8], \"extra\":[{}]},"
            + "\"__metadata__\":{}, \"e\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[8,8]}}   \n\t"
        let parsed = try SafetensorsFile.parse(stFile(header: header, data: stLE32([9, 2.5, 7])))
        #expect(parsed.tensors["aé\n"]?.data == [2.5])
        #expect(parsed.tensors["e"]?.shape == [0, 5])
        #expect(parsed.tensors["e"]?.data == [])
    }

    @Test func truncatedFilesAlwaysThrow() throws {
        let valid = try stSample().serialized(dtype: .f16)
        #expect(throws: Never.self) { try SafetensorsFile.parse(valid) }
        for cut in 0..<valid.count {
            #expect(throws: SafetensorsError.self, "cut at \(cut)") {
                try SafetensorsFile.parse(Array(valid[0..<cut]))
            }
        }
    }

    @Test func randomByteFlipsNeverCrash() throws {
        let valid = try stSample().serialized()
        var rng = TestRNG(seed: 42)
        var parsed = 0
        for _ in 0..<3000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                if Bool.random(using: &rng) {
                    bytes[i] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
                } else {
                    bytes[i] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            do {
                let file = try SafetensorsFile.parse(bytes)
                parsed += 1
                for tensor in file.tensors.values {
                    #expect(tensor.data.count == tensor.shape.reduce(1, *))
                }
            } catch is SafetensorsError {
                // Expected for most flips.
            }
        }
        #expect(parsed > 0)  // flips in the data section leave a valid file
    }

    // MARK: Files

    private func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("millrace-st-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func writeIsAtomicAndReplaces() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("model.safetensors").path

        try stSample().write(path: path)
        let first = try SafetensorsFile.read(path: path)
        #expect(first.tensors == stSample().tensors)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["model.safetensors"])

        let replacement = SafetensorsFile(tensors: ["only": SafetensorsTensor(shape: [2], data: [5, 6])],
                                          metadata: ["v": "2"])
        try replacement.write(path: path, dtype: .f16)
        let second = try SafetensorsFile.read(path: path)
        #expect(second.tensors == replacement.tensors)
        #expect(second.metadata == ["v": "2"])
        #expect(second.dtypes == ["only": .f16])
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["model.safetensors"])
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: path))) == replacement.serialized(dtype: .f16))

        // A write that cannot happen leaves the old file alone and no temporary behind.
        var bad = replacement
        bad.tensors["broken"] = SafetensorsTensor(shape: [1], data: [1])
        bad.tensors["broken"]?.data = [1, 2]
        #expect(throws: SafetensorsError.self) { try bad.write(path: path) }
        #expect(try SafetensorsFile.read(path: path).tensors == replacement.tensors)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["model.safetensors"])
        #expect(throws: SafetensorsError.self) {
            try replacement.write(path: folder.appendingPathComponent("missing/x.safetensors").path)
        }
    }

    @Test func readErrorsNameThePath() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let missing = folder.appendingPathComponent("nope.safetensors").path
        do {
            _ = try SafetensorsFile.read(path: missing)
            Issue.record("read a missing file")
        } catch let error as SafetensorsError {
            #expect(error.message.contains(missing))
        }
        #expect(throws: SafetensorsError.self) { try SafetensorsFile.read(path: folder.path) }
        let truncated = folder.appendingPathComponent("cut.safetensors").path
        let bytes = try stSample().serialized()
        _ = FileManager.default.createFile(atPath: truncated, contents: Data(bytes.dropLast(3)))
        do {
            _ = try SafetensorsFile.read(path: truncated)
            Issue.record("read a truncated file")
        } catch let error as SafetensorsError {
            #expect(error.message.hasPrefix(truncated + ": "))
        }
    }

    @Test func serializeRefusesInconsistentTensors() throws {
        var bad = SafetensorsFile(tensors: ["x": SafetensorsTensor(shape: [2], data: [1, 2])])
        bad.tensors["x"]?.shape = [3]
        #expect(throws: SafetensorsError.self) { try bad.serialized() }
        let reserved = SafetensorsFile(tensors: ["__metadata__": SafetensorsTensor(shape: [1], data: [1])])
        #expect(throws: SafetensorsError.self) { try reserved.serialized() }
    }
}
