import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillracePipelines
@testable import MillraceHTTP
import MillraceTestSupport

/// Mutation fuzzing of everything the service parses from users: JSON parameters, image bodies,
/// multipart/form-data bodies (/v1/colorize, /v1/bss, and the parser alone), paths and methods. Seeded, so a failure reproduces; MILLRACE_FUZZ_ITERATIONS raises the count
/// (Fuzz/Service/README.md). Every response must be well-formed: a known status, and a JSON
/// error body for every status ≥ 400.
@Suite(.serialized) struct ServiceFuzzTests {
    static var iterations: Int {
        Int(ProcessInfo.processInfo.environment["MILLRACE_FUZZ_ITERATIONS"] ?? "") ?? 400
    }

    static let seeds: [String] = [
        #"{"class": 1, "steps": 2, "count": 1}"#, #"{"class": "all", "steps": 1}"#, #"{"guidance": 2.5, "seed": 7}"#,
        #"{"class": 0, "steps": 2, "strength": 0.5, "rcfg": "self", "filter": false}"#, #"{"t_list": [0.2, 0.5]}"#,
        #"{"rcfg": "onetime", "delta": 0.5, "similarity": 0.9, "max_skip": 3, "size": 16}"#, "{}", "[]", "null",
    ]

    static func mutate(_ bytes: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var b = bytes
        for _ in 0..<(1 + Int(rng.next() % 4)) {
            switch rng.next() % 6 {
            case 0 where !b.isEmpty: b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next())
            case 1 where !b.isEmpty: b.remove(at: Int(rng.next() % UInt64(b.count)))
            case 2: b.insert(Array("{}[]\",:0-9e.ntf\\u".utf8)[Int(rng.next() % 17)], at: Int(rng.next() % UInt64(b.count + 1)))
            case 3 where b.count > 2: b = Array(b.prefix(Int(rng.next() % UInt64(b.count))))
            case 4: b += Array(#""steps": 1e308, "class": -1, "count": 99999999999}"#.utf8)
            default: b = b.reversed()
            }
        }
        return b
    }

    /// A request as the HTTP server hands it over from a same-origin client on loopback: a
    /// loopback `Host`, and a JSON body type unless the test sets another.
    static func request(method: String, path: String, query: [String: String], headers: [String: String], body: [UInt8],
                        bodyTooLarge: Bool) -> HTTPRequest {
        var h = headers
        h["host"] = h["host"] ?? "127.0.0.1"
        h["content-type"] = h["content-type"] ?? "application/json"
        return HTTPRequest(method: method, path: path, query: query, headers: h, body: body, bodyTooLarge: bodyTooLarge)
    }

    func checkWellFormed(_ r: HTTPResponse, _ what: String) {
        #expect([200, 201, 202, 400, 401, 404, 405, 413, 415, 429, 503].contains(r.status), "\(what) → \(r.status): \(Self.errorText(r))")
        if r.status >= 400, case .bytes(let body) = r.body {
            let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
            #expect(obj?["error"] is String, "\(what): error body is not JSON")
        }
    }

    static func errorText(_ r: HTTPResponse) -> String {
        if case .bytes(let b) = r.body, r.status >= 400 { return String(decoding: b.prefix(300), as: UTF8.self) }
        return ""
    }

    /// Multipart-aware mutations: besides `mutate`, splice in delimiters, CRLFs, quotes and
    /// semicolons, duplicate or drop a stretch, or cut the body short.
    static func mutateMultipart(_ bytes: [UInt8], boundary: String, _ rng: inout SplitMix64) -> [UInt8] {
        var b = bytes
        let tokens = ["\r\n", "--", "--\(boundary)", "\r\n--\(boundary)\r\n", "\r\n\r\n", "\"", ";", "name=\"image\"",
                      "Content-Disposition: form-data; name=\"reference\"; filename=\"x.png\"\r\n", "\u{0}", "--\(boundary)--", " "]
        for _ in 0..<(1 + Int(rng.next() % 3)) {
            let at = Int(rng.next() % UInt64(b.count + 1))
            switch rng.next() % 6 {
            case 0: b.insert(contentsOf: Array(tokens[Int(rng.next() % UInt64(tokens.count))].utf8), at: at)
            case 1 where b.count > 4:
                let len = 1 + Int(rng.next() % UInt64(min(64, b.count - at + 1)))
                b.removeSubrange(at..<min(b.count, at + len))
            case 2 where b.count > 4:
                let len = 1 + Int(rng.next() % 64)
                let slice = Array(b[at..<min(b.count, at + len)])
                b.insert(contentsOf: slice, at: Int(rng.next() % UInt64(b.count + 1)))
            case 3: b = Array(b.prefix(at))
            case 4 where !b.isEmpty: b[min(at, b.count - 1)] = UInt8(truncatingIfNeeded: rng.next())
            default: b = mutate(b, &rng)
            }
        }
        return b
    }

    static func form(_ fields: [(String, String?, [UInt8])], boundary: String) -> [UInt8] {
        var out: [UInt8] = []
        for (name, file, body) in fields {
            out += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"\(file.map { "; filename=\"\($0)\"" } ?? "")\r\n".utf8)
            if file != nil { out += Array("Content-Type: image/png\r\n".utf8) }
            out += Array("\r\n".utf8) + body + Array("\r\n".utf8)
        }
        return out + Array("--\(boundary)--\r\n".utf8)
    }

    @Test func mutatedMultipartBodiesNeverCrash() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        let pool = try Fixtures.referencePool()
        defer { try? FileManager.default.removeItem(atPath: pool) }
        var o = MillraceService.Options()
        o.referencesDir = pool
        o.maxImagePixels = 4096
        let service = MillraceService(folder: folder, options: o)
        defer { service.beginShutdown() }
        let boundary = "fuzzB0undary"
        let gray = try Colorizer.grayscale(Fixtures.picture(12, 10, kind: 0, ink: (0.9, 0.1, 0.1))).pngData()
        let ref = try Fixtures.picture(16, 16, kind: 0, ink: (0.9, 0.1, 0.1)).jpegData()
        let other = try Fixtures.picture(9, 7, kind: 1, ink: (0.1, 0.2, 0.9)).pngData()
        let seeds: [(String, [UInt8])] = [
            ("/v1/colorize", Self.form([("image", "g.png", gray), ("reference", "r.jpg", ref)], boundary: boundary)),
            ("/v1/colorize", Self.form([("image", "g.png", gray)], boundary: boundary)),
            ("/v1/bss", Self.form([("image", "a.png", gray), ("image", "b.png", other), ("ratio_min", nil, Array("0.05".utf8)),
                                   ("ratio_max", nil, Array("0.3".utf8)), ("size", nil, Array("8x6".utf8)), ("seed", nil, Array("4".utf8)),
                                   ("reference", nil, Array("1".utf8))], boundary: boundary)),
        ]
        // The seeds themselves succeed.
        for (path, body) in seeds {
            let r = service.handle(Self.request(method: "POST", path: path, query: [:], headers: ["content-type": "multipart/form-data; boundary=\(boundary)"],
                                               body: body, bodyTooLarge: false))
            #expect(r.status == 200, "\(path) seed: \(Self.errorText(r))")
        }
        let types = ["multipart/form-data; boundary=\(boundary)", "multipart/form-data; boundary=\"\(boundary)\"", "multipart/form-data",
                     "multipart/form-data; boundary=other", "image/png", ""]
        var rng = SplitMix64(seed: 909)
        var ok = 0
        for i in 0..<Self.iterations {
            let (path, seed) = seeds[i % seeds.count]
            let body = Self.mutateMultipart(seed, boundary: boundary, &rng)
            let type = rng.next() % 8 == 0 ? types[Int(rng.next() % UInt64(types.count))] : types[0]
            let query = rng.next() % 3 == 0 ? ["references": "1"] : [:]
            let r = service.handle(Self.request(method: "POST", path: path, query: query, headers: ["content-type": type],
                                               body: body, bodyTooLarge: false))
            checkWellFormed(r, "\(path) #\(i)")
            #expect(r.status != 503, "the pool is there: \(Self.errorText(r))")
            if r.status == 200 { ok += 1 }
        }
        #expect(ok > 0, "some mutants are still valid requests")
    }

    @Test func mutatedMultipartParserInputsNeverCrash() throws {
        let boundary = "B-\u{27}()+_,./:=?"
        let seed = Self.form([("image", "a.png", Array("\u{89}PNG\r\n\u{1A}\n....\r\n--B".utf8)), ("seed", nil, Array("7".utf8)),
                              ("reference", "r \\\"q\\\".png", [])], boundary: boundary)
        #expect(try MultipartFormData.parse(seed, boundary: boundary).count == 3)
        var rng = SplitMix64(seed: 17)
        var parsed = 0
        for _ in 0..<(Self.iterations * 10) {
            let body = Self.mutateMultipart(seed, boundary: boundary, &rng)
            do {
                let parts = try MultipartFormData.parse(body, boundary: boundary, limits: .init(maxParts: 8, maxHeaderBytes: 256))
                parsed += 1
                #expect(!parts.isEmpty && parts.count <= 8)
                // Every part's body is a stretch of the input, and writing the parts and reading them back is lossless.
                let clean = parts.allSatisfy { p in ([p.name] + (p.filename.map { [$0] } ?? [])).allSatisfy { !$0.contains(where: { "\";\r\n\\".contains($0) }) } }
                if clean {
                    let again = MultipartFormData.encode(parts, boundary: MultipartFormData.makeBoundary(avoiding: parts.map(\.body)))
                    let type = "multipart/form-data; boundary=" + String(decoding: again[2..<35], as: UTF8.self)
                    #expect(try MultipartFormData.parse(again, contentType: type).map(\.body) == parts.map(\.body))
                }
            } catch let e as MultipartError {
                #expect([400, 413].contains(e.status) && !e.message.isEmpty)
            }
        }
        #expect(parsed > 0)
    }

    @Test func mutatedJSONParametersNeverCrash() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        var o = MillraceService.Options()
        o.maxStreams = 1000
        let service = MillraceService(folder: folder, options: o)
        defer { service.beginShutdown() }
        var rng = SplitMix64(seed: 2024)
        for i in 0..<Self.iterations {
            let body = Self.mutate(Array(Self.seeds[i % Self.seeds.count].utf8), &rng)
            for (method, path) in [("POST", "/v1/generate"), ("POST", "/v1/streams"), ("PATCH", "/v1/streams/s1")] {
                let r = service.handle(Self.request(method: method, path: path, query: [:], headers: [:], body: body, bodyTooLarge: false))
                checkWellFormed(r, "\(method) \(path) \(String(decoding: body, as: UTF8.self))")
            }
            for s in service.scheduler.streams.dropFirst() { service.scheduler.remove(s.id) }
        }
    }

    @Test func mutatedImageBodiesNeverCrash() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        // The frame-rate limit is checked before decoding: raised, so that every mutated frame
        // reaches the decoders.
        var options = MillraceService.Options()
        options.maxFramesPerSecond = 1e9
        let service = MillraceService(folder: folder, options: options)
        defer { service.beginShutdown() }
        let created = service.handle(Self.request(method: "POST", path: "/v1/streams", query: [:], headers: [:], body: Array("{}".utf8), bodyTooLarge: false))
        #expect(created.status == 201)
        let png = try RGBImage(width: 9, height: 7, fill: (0.1, 0.5, 0.9)).pngData()
        let jpeg = try RGBImage(width: 9, height: 7, fill: (0.1, 0.5, 0.9)).jpegData()
        var rng = SplitMix64(seed: 77)
        var decoded = 0
        for i in 0..<Self.iterations {
            let (seed, type) = i % 2 == 0 ? (png, "image/png") : (jpeg, "image/jpeg")
            let body = Self.mutate(seed, &rng)
            let r = service.handle(Self.request(method: "POST", path: "/v1/streams/s1/frames", query: [:],
                                               headers: ["content-type": type], body: body, bodyTooLarge: false))
            checkWellFormed(r, "frame \(i)")
            #expect(r.status == 202 || r.status == 415, "frame \(i) → \(r.status)")
            decoded += r.status == 202 ? 1 : 0
        }
        // Some mutations leave a decodable image (a flipped bit in a pixel): those reached the decoder and were queued.
        #expect(decoded > 0)
        // Frames were queued and the stream still works.
        while service.scheduler.runOnce() != nil {}
        #expect(service.scheduler.stream("s1") != nil)
    }

    @Test func mutatedPathsAndMethodsNeverCrash() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        var o = MillraceService.Options()
        o.staticDir = ServerTests.Running.staticDir()
        let service = MillraceService(folder: folder, options: o)
        defer { service.beginShutdown() }
        let paths = ["/", "/healthz", "/metrics", "/v1/info", "/v1/streams/s1/output", "/sub/app.css", "/../etc/passwd",
                     "/v1/generate/stream", "/clips/moving/frame-000.png", "/v1/streams//frames", "/%00", "/\u{0}x"]
        let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", ""]
        var rng = SplitMix64(seed: 5)
        for i in 0..<Self.iterations {
            var path = Array(paths[i % paths.count].utf8)
            path = Self.mutate(path, &rng)
            let method = methods[Int(rng.next() % UInt64(methods.count))]
            let query = rng.next() % 2 == 0 ? [:] : ["class": String(decoding: Self.mutate(Array("1".utf8), &rng), as: UTF8.self), "steps": "1"]
            let r = service.handle(Self.request(method: method, path: String(decoding: path, as: UTF8.self), query: query,
                                               headers: [:], body: [], bodyTooLarge: false))
            checkWellFormed(r, "\(method) \(String(decoding: path, as: UTF8.self))")
            if case .bytes(let b) = r.body { #expect(!String(decoding: b, as: UTF8.self).contains("root:x:0")) }
            if case .stream(let s) = r.body { s.cancel() }  // don't leave generation streams open
        }
    }
}
