import Foundation
@testable import Millrace
import Testing

/// Mutation fuzzing of everything the service parses from users: JSON parameters, image bodies,
/// paths and methods. Seeded, so a failure reproduces; MILLRACE_FUZZ_ITERATIONS raises the count
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

    func checkWellFormed(_ r: HTTPResponse, _ what: String) {
        #expect([200, 201, 202, 400, 401, 404, 405, 413, 415, 429, 503].contains(r.status), "\(what) → \(r.status)")
        if r.status >= 400, case .bytes(let body) = r.body {
            let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
            #expect(obj?["error"] is String, "\(what): error body is not JSON")
        }
    }

    @Test func mutatedJSONParametersNeverCrash() throws {
        let folder = try ModelFolder.load(DiffusersParityTests.fixture("unet-tiny-a"))
        var o = MillraceService.Options()
        o.maxStreams = 1000
        let service = MillraceService(folder: folder, options: o)
        defer { service.beginShutdown() }
        var rng = SplitMix64(seed: 2024)
        for i in 0..<Self.iterations {
            let body = Self.mutate(Array(Self.seeds[i % Self.seeds.count].utf8), &rng)
            for (method, path) in [("POST", "/v1/generate"), ("POST", "/v1/streams"), ("PATCH", "/v1/streams/s1")] {
                let r = service.handle(HTTPRequest(method: method, path: path, query: [:], headers: [:], body: body, bodyTooLarge: false))
                checkWellFormed(r, "\(method) \(path) \(String(decoding: body, as: UTF8.self))")
            }
            for s in service.scheduler.streams.dropFirst() { service.scheduler.remove(s.id) }
        }
    }

    @Test func mutatedImageBodiesNeverCrash() throws {
        let folder = try ModelFolder.load(DiffusersParityTests.fixture("unet-tiny-a"))
        let service = MillraceService(folder: folder, options: MillraceService.Options())
        defer { service.beginShutdown() }
        let created = service.handle(HTTPRequest(method: "POST", path: "/v1/streams", query: [:], headers: [:], body: Array("{}".utf8), bodyTooLarge: false))
        #expect(created.status == 201)
        let png = try RGBImage(width: 9, height: 7, fill: (0.1, 0.5, 0.9)).pngData()
        let jpeg = try RGBImage(width: 9, height: 7, fill: (0.1, 0.5, 0.9)).jpegData()
        var rng = SplitMix64(seed: 77)
        for i in 0..<Self.iterations {
            let (seed, type) = i % 2 == 0 ? (png, "image/png") : (jpeg, "image/jpeg")
            let body = Self.mutate(seed, &rng)
            let r = service.handle(HTTPRequest(method: "POST", path: "/v1/streams/s1/frames", query: [:],
                                               headers: ["content-type": type], body: body, bodyTooLarge: false))
            checkWellFormed(r, "frame \(i)")
            #expect(r.status == 202 || r.status == 415 || r.status == 429, "frame \(i) → \(r.status)")
        }
        // Frames were queued and the stream still works.
        while service.scheduler.runOnce() != nil {}
        #expect(service.scheduler.stream("s1") != nil)
    }

    @Test func mutatedPathsAndMethodsNeverCrash() throws {
        let folder = try ModelFolder.load(DiffusersParityTests.fixture("unet-tiny-a"))
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
            let r = service.handle(HTTPRequest(method: method, path: String(decoding: path, as: UTF8.self), query: query,
                                               headers: [:], body: [], bodyTooLarge: false))
            checkWellFormed(r, "\(method) \(String(decoding: path, as: UTF8.self))")
            if case .bytes(let b) = r.body { #expect(!String(decoding: b, as: UTF8.self).contains("root:x:0")) }
            if case .stream(let s) = r.body { s.cancel() }  // don't leave generation streams open
        }
    }
}
