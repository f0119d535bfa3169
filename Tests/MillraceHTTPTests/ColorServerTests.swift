import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceImaging
@testable import MillracePipelines
import MillraceTestSupport

/// POST /v1/colorize and POST /v1/bss on a real server on loopback (ServerTests.Running), with a
/// small reference pool built here, and the cumulative stream counters of /metrics.
@Suite(.serialized) struct ColorServerTests {
    typealias Running = ServerTests.Running

    // MARK: Fixtures



    struct Field { var name: String; var filename: String?; var type: String?; var body: [UInt8] }

    /// A multipart/form-data body as a browser writes it (no Content-Length in the parts).
    static func form(_ fields: [Field], boundary: String = "----MillraceTestBoundary7MA4YWxk") -> [UInt8] {
        var out: [UInt8] = []
        for f in fields {
            var head = "--\(boundary)\r\nContent-Disposition: form-data; name=\"\(f.name)\""
            if let fn = f.filename { head += "; filename=\"\(fn.replacingOccurrences(of: "\"", with: "\\\""))\"" }
            head += "\r\n"
            if let t = f.type { head += "Content-Type: \(t)\r\n" }
            out += Array((head + "\r\n").utf8) + f.body + Array("\r\n".utf8)
        }
        return out + Array("--\(boundary)--\r\n".utf8)
    }

    static let formType = "multipart/form-data; boundary=----MillraceTestBoundary7MA4YWxk"

    static func file(_ name: String, _ filename: String, _ image: RGBImage) throws -> Field {
        Field(name: name, filename: filename, type: "image/png", body: try image.pngData())
    }

    static func grayDisc() -> RGBImage { Colorizer.grayscale(Fixtures.picture(40, 40, kind: 0, ink: (0.9, 0.1, 0.1))) }

    /// Mean chroma magnitude √(a² + b²) in Lab.
    static func chroma(_ img: RGBImage) -> Double {
        let lab = img.toLab(), n = img.pixelCount
        var s = 0.0
        for p in 0..<n { let a = Double(lab.planes[n + p]), b = Double(lab.planes[2 * n + p]); s += (a * a + b * b).squareRoot() }
        return s / Double(n)
    }

    // MARK: Colorize

    @Test func colorizeWithAnUploadedReference() throws {
        let s = try Running(maxBody: 1 << 20, references: "/nonexistent/pool")
        let original = Fixtures.picture(40, 40, kind: 0, ink: (0.9, 0.1, 0.1))
        let body = Self.form([try Self.file("image", "gray.png", Self.grayDisc()),
                              try Self.file("reference", "red \"disc\".png", Fixtures.picture(48, 48, kind: 0, ink: (0.9, 0.1, 0.1)))])
        let r = s.call("POST", "/v1/colorize", body: body, type: Self.formType)
        #expect(r.status == 200 && r.type == "image/png", "\(r.status) \(r.text.prefix(200))")
        let out = try RGBImage.decode(r.body)
        #expect(out.width == 40 && out.height == 40)
        // The red disc comes back red: much closer to the original than the gray input.
        #expect(ColorMetrics.psnrAB(out, original) > ColorMetrics.psnrAB(Self.grayDisc(), original) + 3)
        let centre = out.pixel(x: 20, y: 20)
        #expect(centre.r > centre.g + 0.2 && centre.r > centre.b + 0.2, "centre \(centre)")

        // With ?references=1: a multipart/form-data response of the result, the canvas and the list.
        let m = s.call("POST", "/v1/colorize?references=1", body: body, type: Self.formType)
        #expect(m.status == 200 && m.type.hasPrefix("multipart/form-data; boundary="))
        let parts = try MultipartFormData.parse(m.body, contentType: m.type)
        #expect(parts.map(\.name) == ["image", "canvas", "references"])
        #expect(parts[0].contentType == "image/png" && parts[1].contentType == "image/png")
        #expect(parts[0].body == r.body, "same result as the plain response")
        let canvas = try RGBImage.decode(parts[1].body)
        #expect(canvas.width == 80 && canvas.height == 80, "2W×2H of the 40×40 working image")
        let info = try #require(try JSONSerialization.jsonObject(with: Data(parts[2].body)) as? [String: Any])
        #expect(info["pool"] as? String == "uploaded" && info["pool_images"] as? Int == 1)
        let refs = try #require(info["references"] as? [[String: Any]])
        #expect(refs.count == 12, "top 3 for each of the 4 query crops")
        #expect(refs.allSatisfy { $0["name"] as? String == "red \"disc\".png" && $0["reference_index"] as? Int == 0 })
        #expect(Set(refs.compactMap { $0["quadrant_name"] as? String }) == ["top-left", "top-right", "bottom-left", "bottom-right"])
        #expect(refs.allSatisfy { ($0["similarity"] as? Double).map { $0 >= -1.0001 && $0 <= 1.0001 } ?? false })
    }

    @Test func colorizeWithTheServerPool() throws {
        let dir = try Fixtures.referencePool()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try Running(maxBody: 1 << 20, references: dir)
        let body = Self.form([try Self.file("image", "q.png", Self.grayDisc())])
        let r = s.call("POST", "/v1/colorize?references=1", body: body, type: Self.formType)
        #expect(r.status == 200, "\(r.text.prefix(300))")
        let parts = try MultipartFormData.parse(r.body, contentType: r.type)
        let out = try RGBImage.decode(parts[0].body)
        #expect(out.width == 40 && Self.chroma(out) > Self.chroma(Self.grayDisc()) + 5)
        let info = try #require(try JSONSerialization.jsonObject(with: Data(parts[2].body)) as? [String: Any])
        #expect(info["pool"] as? String == "server" && info["pool_images"] as? Int == 3)
        let refs = try #require(info["references"] as? [[String: Any]])
        #expect(refs.count == 12)
        #expect(Set(refs.compactMap { $0["name"] as? String }).isSubset(of: ["red-disc.png", "blue-bar.png", "green-stripes.png"]))
        #expect(refs.first { $0["rank"] as? Int == 0 }?["name"] as? String == "red-disc.png", "the disc retrieves the disc first")
        #expect(s.call("GET", "/v1/info").text.contains("\"reference_pool_images\":3"))
        // A new image in the folder is picked up without a restart.
        try Fixtures.picture(48, 48, kind: 1, ink: (0.9, 0.8, 0.1)).writePNG(path: dir + "/yellow-bar.png")
        let again = s.call("POST", "/v1/colorize?references=1", body: body, type: Self.formType)
        let info2 = try JSONSerialization.jsonObject(with: Data(try MultipartFormData.parse(again.body, contentType: again.type)[2].body)) as? [String: Any]
        #expect(info2?["pool_images"] as? Int == 4)
        // And with a real client's encoding: curl -F (installed by scripts/install-deps.sh).
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/curl"), "curl is missing: run scripts/install-deps.sh")
        let file = dir + "/../millrace-curl-\(UUID().uuidString).png"
        try Self.grayDisc().writePNG(path: file)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-s", "-o", "/dev/null", "-w", "%{http_code} %{content_type}", "-F", "image=@\(file)",
                       "http://127.0.0.1:\(s.server.port)/v1/colorize"]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        p.waitUntilExit()
        #expect(String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) == "200 image/png")
    }

    @Test func colorizeErrors() throws {
        let empty = try Fixtures.referencePool(empty: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        let s = try Running(maxBody: 64 << 10, references: empty, maxImagePixels: 10_000)
        let gray = try Self.file("image", "g.png", Self.grayDisc())
        let ref = try Self.file("reference", "r.png", Fixtures.picture(48, 48, kind: 0, ink: (0.9, 0.1, 0.1)))
        func post(_ body: [UInt8], type: String? = Self.formType, path: String = "/v1/colorize") -> Running.Reply {
            s.call("POST", path, body: body, type: type)
        }
        func expectError(_ r: Running.Reply, _ status: Int, _ what: String) {
            #expect(r.status == status, "\(what): \(r.status) \(r.text.prefix(200))")
            #expect((try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])?["error"] is String, "\(what): JSON error")
        }
        // The pool is empty and nothing was uploaded: 503 that says what to do.
        let noPool = post(Self.form([gray]))
        expectError(noPool, 503, "empty pool")
        #expect(noPool.text.contains("empty"))
        // Multipart errors.
        let good = Self.form([gray, ref])
        expectError(post(good, type: "multipart/form-data"), 400, "no boundary")
        expectError(post(good, type: "application/json"), 415, "not multipart")
        expectError(post(good, type: nil), 415, "no Content-Type")
        expectError(post(Array(good.prefix(good.count - 40))), 400, "truncated")
        expectError(post(Array(good.prefix(60))), 400, "truncated in the headers")
        expectError(post([]), 400, "empty body")
        expectError(post(Self.form([ref])), 400, "missing image field")
        expectError(post(Self.form([gray, gray, ref])), 400, "two images")
        expectError(post(Self.form([gray, Field(name: "colour", filename: nil, type: nil, body: Array("x".utf8))])), 400, "unknown field")
        expectError(post(good, path: "/v1/colorize?references=maybe"), 400, "bad query flag")
        // Images.
        expectError(post(Self.form([Field(name: "image", filename: "x.png", type: "image/png", body: Array("not a png".utf8)), ref])), 415, "undecodable image")
        expectError(post(Self.form([gray, Field(name: "reference", filename: "r.gif", type: "image/gif", body: Array("GIF89a....".utf8))])), 415, "undecodable reference")
        expectError(post(Self.form([Field(name: "image", filename: "x.png", type: "image/png", body: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0]), ref])), 415, "truncated PNG")
        expectError(post(Self.form([try Self.file("image", "big.png", RGBImage(width: 200, height: 100, fill: (0.5, 0.5, 0.5))), ref])), 413, "over the pixel limit")
        expectError(post(Self.form([gray] + [Field](repeating: ref, count: 17))), 413, "too many references")
        expectError(post(Self.form([gray] + [Field](repeating: Field(name: "x", filename: nil, type: nil, body: []), count: 41))), 413, "too many parts")
        expectError(post([UInt8](repeating: 0x2D, count: 100 << 10)), 413, "body over --max-body")
        expectError(s.call("GET", "/v1/colorize"), 405, "GET")
        expectError(s.call("PUT", "/v1/colorize", body: good, type: Self.formType), 405, "PUT")
        #expect(s.call("GET", "/v1/colorize").headers["allow"] == "POST")
        // Still serving.
        #expect(s.call("POST", "/v1/colorize", body: good, type: Self.formType).status == 200)
        // A missing pool folder: 503 too.
        let missing = try Running(references: "/nonexistent/millrace-pool")
        let r = missing.call("POST", "/v1/colorize", body: Self.form([gray]), type: Self.formType)
        expectError(r, 503, "missing pool")
        #expect(r.text.contains("does not exist"))
    }

    @Test func tokenIsCheckedOnTheColorRoutes() throws {
        let s = try Running(maxBody: 1 << 20, token: "t0ken")
        let body = Self.form([try Self.file("image", "g.png", Self.grayDisc()),
                              try Self.file("reference", "r.png", Fixtures.picture(48, 48, kind: 0, ink: (0.9, 0.1, 0.1)))])
        for path in ["/v1/colorize", "/v1/bss"] {
            #expect(s.call("POST", path, body: body, type: Self.formType).status == 401)
            #expect(s.call("POST", path, body: body, type: Self.formType, headers: ["Authorization": "Bearer nope"]).status == 401)
        }
        #expect(s.call("POST", "/v1/colorize", body: body, type: Self.formType, headers: ["Authorization": "Bearer t0ken"]).status == 200)
    }

    // MARK: BSS

    @Test func bssReturnsThePNGsInOrder() throws {
        let s = try Running(maxBody: 1 << 20)
        #expect(s.call("GET", "/metrics").text.contains("millrace_bss_images_total 0"), "exported from the start")
        let inputs = [Fixtures.picture(32, 24, kind: 0, ink: (0.9, 0.1, 0.1), fill: (0.9, 0.9, 0.6)),
                      Fixtures.picture(40, 30, kind: 1, ink: (0.1, 0.2, 0.9), fill: (0.2, 0.3, 0.3)),
                      Fixtures.picture(16, 12, kind: 2, ink: (0.1, 0.7, 0.2))]
        var fields = try inputs.enumerated().map { k, img in try Self.file("image", ["a.png", "b.png", "c.png"][k], img) }
        fields += [Field(name: "size", filename: nil, type: nil, body: Array("32x24".utf8)),
                   Field(name: "reference", filename: nil, type: nil, body: Array("1".utf8)),
                   Field(name: "ratio_min", filename: nil, type: nil, body: Array("0.02".utf8)),
                   Field(name: "ratio_max", filename: nil, type: nil, body: Array("0.02".utf8)),
                   Field(name: "seed", filename: nil, type: nil, body: Array("3".utf8))]
        let r = s.call("POST", "/v1/bss", body: Self.form(fields), type: Self.formType)
        #expect(r.status == 200 && r.type.hasPrefix("multipart/form-data; boundary="), "\(r.status) \(r.text.prefix(300))")
        #expect(r.headers["millrace-bss-reference"] == "1" && r.headers["millrace-bss-size"] == "32x24")
        #expect(r.headers["millrace-bss-ratio"].flatMap(Double.init) == 0.02)
        let parts = try MultipartFormData.parse(r.body, contentType: r.type)
        #expect(parts.count == 3 && parts.allSatisfy { $0.name == "image" && $0.contentType == "image/png" })
        #expect(parts.map(\.filename) == ["a.png", "b.png", "c.png"])
        let outs = try parts.map { try RGBImage.decode($0.body) }
        #expect(outs.allSatisfy { $0.width == 32 && $0.height == 24 })
        // The reference (image 1, resized) comes back unchanged up to 8-bit rounding.
        let ref = inputs[1].resizedArea(width: 32, height: 24)
        #expect(zip(outs[1].planes, ref.planes).allSatisfy { abs($0 - $1) <= 1.0 / 255 + 1e-4 })
        // Same order: each output's luma correlates best with its own input.
        func centred(_ img: RGBImage) -> [Float] {
            let sized = img.width == 32 && img.height == 24 ? img
                : (img.width >= 32 ? img.resizedArea(width: 32, height: 24) : img.resizedBilinear(width: 32, height: 24))
            let y = sized.luma(), m = y.reduce(0, +) / Float(y.count)
            let c = y.map { $0 - m }, norm = c.reduce(0) { $0 + $1 * $1 }.squareRoot()
            return c.map { $0 / max(norm, 1e-6) }
        }
        for (k, out) in outs.enumerated() {
            let scores = inputs.map { inp in zip(centred(out), centred(inp)).reduce(Float(0)) { $0 + $1.0 * $1.1 } }
            #expect(scores.firstIndex(of: scores.max()!) == k, "output \(k): \(scores)")
        }
        // Errors.
        let two = try inputs.prefix(2).map { try Self.file("image", "x.png", $0) }
        func field(_ n: String, _ v: String) -> Field { Field(name: n, filename: nil, type: nil, body: Array(v.utf8)) }
        for (bad, status) in [([two[0]], 400), (two + [field("ratio_min", "0")], 400), (two + [field("ratio_min", "0.5"), field("ratio_max", "0.2")], 400),
                              (two + [field("reference", "2")], 400), (two + [field("size", "12")], 400), (two + [field("seed", "-1")], 400),
                              (two + [field("steps", "4")], 400), (two + [field("seed", "1"), field("seed", "2")], 400),
                              (two + [field("size", "4096x4096")], 413),
                              ([two[0], Field(name: "image", filename: "y.jpg", type: "image/jpeg", body: [0xFF, 0xD8, 0xFF, 0])], 415)] as [([Field], Int)] {
            let e = s.call("POST", "/v1/bss", body: Self.form(bad), type: Self.formType)
            #expect(e.status == status, "\(bad.map(\.name)) → \(e.status) \(e.text.prefix(200))")
            #expect(e.text.contains("\"error\""))
        }
        #expect(s.call("POST", "/v1/bss", body: Self.form(two), type: "text/plain").status == 415)
        #expect(s.call("GET", "/v1/bss").status == 405)
        // Metrics in the per-route scheme, and the work counters.
        let metrics = s.call("GET", "/metrics").text
        #expect(metrics.contains("millrace_requests_total{route=\"/v1/bss\",status=\"200\"} 1"))
        #expect(metrics.contains("millrace_requests_total{route=\"/v1/bss\",status=\"400\"}"))
        #expect(metrics.contains("millrace_request_seconds_count{route=\"/v1/bss\"}"))
        #expect(metrics.contains("millrace_bss_images_total 3"))
    }

    // MARK: Metrics

    @Test func streamCountersSurviveDeleteAndExpiry() throws {
        let s = try Running(maxStreams: 2)
        func value(_ name: String) -> Int {
            let text = s.call("GET", "/metrics").text
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + " ") }) else { return -1 }
            return Int(line.split(separator: " ").last!) ?? -1
        }
        func stream() throws -> String {
            let created = s.call("POST", "/v1/streams", body: Array(#"{"steps": 1, "filter": false}"#.utf8))
            return try #require(try JSONSerialization.jsonObject(with: Data(created.body)) as? [String: Any])["id"] as! String
        }
        let png = try ServerTests.png(9, 9)
        let a = try stream()
        for _ in 0..<3 {
            #expect(s.call("POST", "/v1/streams/\(a)/frames", body: png, type: "image/png").status == 202)
            #expect(HardeningTests.Live.waitFor(10) { value("millrace_stream_frames_out_total") >= 1 })
        }
        #expect(HardeningTests.Live.waitFor(10) { !s.call("GET", "/v1/streams/\(a)").text.contains("\"out\":0") })
        let before = ["in", "processed", "out"].map { value("millrace_stream_frames_\($0)_total") }
        let calls = value("millrace_model_calls_total")
        #expect(before[0] == 3 && before[1] >= 1 && before[2] >= 1 && calls >= 1, "\(before) \(calls)")
        #expect(value("millrace_streams_active") == 1)
        #expect(s.call("DELETE", "/v1/streams/\(a)").status == 200)
        let after = ["in", "processed", "out"].map { value("millrace_stream_frames_\($0)_total") }
        #expect(after[0] == 3 && after[1] >= before[1] && after[2] >= before[2], "deleted: \(before) → \(after)")
        #expect(value("millrace_model_calls_total") >= calls)
        #expect(value("millrace_streams_active") == 0)
        // A second stream adds to them; expiring it keeps them too.
        let b = try stream()
        #expect(s.call("POST", "/v1/streams/\(b)/frames", body: png, type: "image/png").status == 202)
        #expect(value("millrace_stream_frames_in_total") == 4)
        #expect(s.service.scheduler.expire(idle: -1) == [b])
        #expect(value("millrace_stream_frames_in_total") == 4)
        #expect(value("millrace_stream_frames_processed_total") >= after[1])
        #expect(value("millrace_streams_active") == 0)
    }
}

/// POST /v1/colorize's methods with an in-context colorization model loaded (a random tiny one:
/// these tests check the route, not the model's quality).
@Suite(.serialized) struct InContextServerTests {
    typealias Running = ServerTests.Running

    @Test func inContextIsTheDefaultWhenTheServerHasTheModel() throws {
        let model = try Fixtures.tinyColorizationModel()
        let pool = try Fixtures.referencePool()
        defer { try? FileManager.default.removeItem(atPath: model); try? FileManager.default.removeItem(atPath: pool) }
        let s = try Running(maxBody: 1 << 20, references: pool, colorModel: model)
        let body = ColorServerTests.form([try ColorServerTests.file("image", "gray.png", ColorServerTests.grayDisc())])
        let r = s.call("POST", "/v1/colorize", body: body, type: ColorServerTests.formType)
        #expect(r.status == 200 && r.type == "image/png", "\(r.status) \(r.text.prefix(200))")
        #expect(r.headers["millrace-colorize-method"] == "in-context")
        let out = try RGBImage.decode(r.body)
        #expect(out.width == 40 && out.height == 40)
        // The input's lightness is kept (to PNG rounding).
        let lin = ColorServerTests.grayDisc().toLab(), lout = out.toLab()
        let worst = (0..<out.pixelCount).map { abs(lin.planes[$0] - lout.planes[$0]) }.max() ?? 0
        #expect(worst < 0.6, "L moved by \(worst)")
        // With references=1 the JSON names the method.
        let r2 = s.call("POST", "/v1/colorize?references=1&steps=2&samples=2", body: body, type: ColorServerTests.formType)
        #expect(r2.status == 200, "\(r2.status) \(r2.text.prefix(200))")
        #expect(r2.text.contains("\"method\":\"in-context\""))
        for method in ["retrieval", "prior"] {
            let r3 = s.call("POST", "/v1/colorize?method=\(method)", body: body, type: ColorServerTests.formType)
            #expect(r3.status == 200 && r3.headers["millrace-colorize-method"] == method, "\(method): \(r3.status)")
        }
        let info = s.call("GET", "/v1/info")
        #expect(info.text.contains("\"colorize_methods\":[\"in-context\",\"retrieval\",\"prior\"]"), "\(info.text)")
    }

    @Test func badMethodsAndStepsAreRefused() throws {
        let model = try Fixtures.tinyColorizationModel()
        let pool = try Fixtures.referencePool()
        defer { try? FileManager.default.removeItem(atPath: model); try? FileManager.default.removeItem(atPath: pool) }
        let body = ColorServerTests.form([try ColorServerTests.file("image", "gray.png", ColorServerTests.grayDisc())])
        let s = try Running(maxBody: 1 << 20, references: pool, colorModel: model)
        for query in ["method=paint", "steps=0", "steps=9", "steps=two", "method=retrieval&steps=2", "samples=0", "samples=9",
                      "method=prior&samples=2"] {
            let r = s.call("POST", "/v1/colorize?" + query, body: body, type: ColorServerTests.formType)
            #expect(r.status == 400, "\(query): \(r.status) \(r.text.prefix(200))")
        }
        // Without the model, retrieval is the default and in-context is refused.
        let plain = try Running(maxBody: 1 << 20, references: pool)
        let r = plain.call("POST", "/v1/colorize", body: body, type: ColorServerTests.formType)
        #expect(r.status == 200 && r.headers["millrace-colorize-method"] == "retrieval")
        let refused = plain.call("POST", "/v1/colorize?method=in-context", body: body, type: ColorServerTests.formType)
        #expect(refused.status == 400 && refused.text.contains("no in-context colorization model"), "\(refused.text)")
    }
}
