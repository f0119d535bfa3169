import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillracePipelines
@testable import MillraceHTTP
import MillraceTestSupport

/// The HTTP service on a real libmicrohttpd server on loopback, with real clients: URLSession,
/// and raw sockets for what URLSession would normalise (paths) or hide (disconnecting).
@Suite(.serialized) struct ServerTests {
    final class Running: @unchecked Sendable {
        let service: MillraceService
        let server: HTTPServer
        init(maxStreams: Int = 4, maxBody: Int = 64 << 10, token: String? = nil, references: String? = nil,
             maxImagePixels: Int? = nil, framesPerSecond: Double = 1000, colorModel: String? = nil) throws {
            let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
            var o = MillraceService.Options()
            o.maxStreams = maxStreams
            o.token = token
            o.staticDir = Running.staticDir()
            o.maxFramesPerSecond = framesPerSecond
            if let references { o.referencesDir = references }
            if let maxImagePixels { o.maxImagePixels = maxImagePixels }
            o.colorModel = colorModel
            let service = MillraceService(folder: folder, options: o)
            self.service = service
            server = HTTPServer(host: "127.0.0.1", port: 0, maxBodyBytes: maxBody) { service.handle($0) }
            try server.start()
        }
        deinit { service.beginShutdown(); server.stop() }

        static func staticDir() -> String {
            let dir = Fixtures.tempPath("static")
            try? FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
            try? Data("<!doctype html><title>t</title>".utf8).write(to: URL(fileURLWithPath: dir + "/index.html"))
            try? Data("body{}".utf8).write(to: URL(fileURLWithPath: dir + "/sub/app.css"))
            try? Data("secret".utf8).write(to: URL(fileURLWithPath: dir + "/.hidden"))
            return dir
        }

        struct Reply {
            let status: Int; let type: String; let body: [UInt8]
            /// Response headers, names lowercased.
            var headers: [String: String] = [:]
            var text: String { String(decoding: body, as: UTF8.self) }
        }

        func call(_ method: String, _ path: String, body: [UInt8]? = nil, type: String? = nil, headers: [String: String] = [:]) -> Reply {
            var req = URLRequest(url: URL(string: "http://127.0.0.1:\(server.port)\(path)")!)
            req.httpMethod = method
            if let body { req.httpBody = Data(body) }
            // JSON routes take application/json only; a body sent without a type is sent as JSON.
            if let type = type ?? (body == nil ? nil : "application/json") { req.setValue(type, forHTTPHeaderField: "Content-Type") }
            for (k, v) in headers { req.setValue(v, forHTTPHeaderField: k) }
            req.timeoutInterval = 60
            let done = DispatchSemaphore(value: 0)
            let box = ReplyBox()
            URLSession.shared.dataTask(with: req) { data, response, _ in
                let http = response as? HTTPURLResponse
                var headers: [String: String] = [:]
                for (k, v) in http?.allHeaderFields ?? [:] { headers["\(k)".lowercased()] = "\(v)" }
                box.reply = Reply(status: http?.statusCode ?? -1, type: http?.value(forHTTPHeaderField: "Content-Type") ?? "",
                                  body: data.map { [UInt8]($0) } ?? [], headers: headers)
                done.signal()
            }.resume()
            done.wait()
            return box.reply!
        }

        /// Sends raw bytes, reads until `until` bytes or EOF or timeout; `close` right after.
        func raw(_ request: String, readAtMost: Int = 1 << 20, timeout: Double = 5) -> [UInt8] {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = server.port.bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard ok == 0 else { return [] }
            _ = request.withCString { send(fd, $0, strlen($0), 0) }
            var out: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while out.count < readAtMost {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { break }
                out += buf[0..<n]
            }
            return out
        }
    }

    final class ReplyBox: @unchecked Sendable { var reply: Running.Reply? }

    static func png(_ w: Int = 12, _ h: Int = 10) throws -> [UInt8] {
        try RGBImage(width: w, height: h, fill: (0.8, 0.3, 0.2)).pngData()
    }

    /// libmicrohttpd links and names its version.
    @Test func libmicrohttpdLinksAndReportsItsVersion() {
        #expect(HTTPServer.libraryVersion.first?.isNumber == true, "\(HTTPServer.libraryVersion)")
    }

    @Test func healthMetricsInfoAndStaticFiles() throws {
        let s = try Running()
        #expect(s.call("GET", "/healthz").text.contains("\"ok\""))
        #expect(s.call("POST", "/healthz").status == 405)
        let index = s.call("GET", "/")
        #expect(index.status == 200 && index.type.hasPrefix("text/html"))
        let css = s.call("GET", "/sub/app.css")
        #expect(css.status == 200 && css.type.hasPrefix("text/css"))
        #expect(s.call("GET", "/missing.js").status == 404)
        #expect(s.call("GET", "/.hidden").status == 404)
        #expect(s.call("GET", "/v1/nothing").status == 404)
        // Path traversal, sent raw so no client normalises it.
        for path in ["/../../../etc/passwd", "/sub/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/sub/..%2f..%2fetc/passwd"] {
            let reply = String(decoding: s.raw("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), as: UTF8.self)
            #expect(reply.hasPrefix("HTTP/1.1 404"), "\(path): \(reply.prefix(40))")
            #expect(!reply.contains("root:"))
        }
        let info = s.call("GET", "/v1/info")
        #expect(info.text.contains("class 0"))
        let metrics = s.call("GET", "/metrics")
        #expect(metrics.status == 200 && metrics.text.contains("millrace_requests_total{route=\"/healthz\",status=\"200\"} 1"))
        #expect(metrics.text.contains("millrace_request_seconds_bucket"))
    }

    @Test func generateAndItsErrors() throws {
        try GlobalKernelSettings.exclusive {
            let s = try Running()
            let ok = s.call("POST", "/v1/generate", body: Array(#"{"class": 1, "steps": 3, "count": 2, "seed": 4}"#.utf8), type: "application/json")
            #expect(ok.status == 200 && ok.type == "image/png")
            let image = try RGBImage.decode(ok.body)
            #expect(image.width > 8)
            let again = s.call("POST", "/v1/generate", body: Array(#"{"class": 1, "steps": 3, "count": 2, "seed": 4}"#.utf8))
            #expect(again.body == ok.body, "same inputs, same bytes")
            for bad in [#"{"class": 9}"#, #"{"steps": 0}"#, #"{"steps": "many"}"#, "not json", #"[1, 2]"#, #"{"unknown": 1}"#, #"{"guidance": true}"#] {
                let r = s.call("POST", "/v1/generate", body: Array(bad.utf8))
                #expect(r.status == 400, "\(bad)")
                #expect(r.text.contains("\"error\""))
            }
            #expect(s.call("GET", "/v1/generate").status == 405)
            let big = [UInt8](repeating: 0x20, count: 100 << 10)
            #expect(s.call("POST", "/v1/generate", body: big).status == 413)
            // The progress stream: a part per step's estimate, then the final image, then the end.
            // The latest estimate replaces one that has not started to go out (a slow reader, a
            // loaded machine), so 1 to 4 parts arrive; the final image always does.
            let stream = s.call("GET", "/v1/generate/stream?class=0&steps=4")
            #expect(stream.type.hasPrefix("multipart/x-mixed-replace"))
            let parts = stream.text.components(separatedBy: "Content-Type: image/png").count - 1
            #expect((1...4).contains(parts), "\(parts) parts")
            #expect(stream.text.hasSuffix("--millraceframe--\r\n"))
        }
    }

    @Test func tokenIsRequiredWhenSet() throws {
        let s = try Running(token: "t0ken")
        #expect(s.call("GET", "/v1/info").status == 401)
        #expect(s.call("GET", "/v1/info", headers: ["Authorization": "Bearer wrong"]).status == 401)
        #expect(s.call("GET", "/v1/info", headers: ["Authorization": "Bearer t0ken"]).status == 200)
        #expect(s.call("GET", "/healthz").status == 200)
    }

    @Test func streamLifecycleAndErrors() throws {
        let s = try Running(maxStreams: 1)
        let created = s.call("POST", "/v1/streams", body: Array(#"{"class": 0, "steps": 2, "strength": 0.5, "filter": false}"#.utf8))
        #expect(created.status == 201)
        let id = try #require(try JSONSerialization.jsonObject(with: Data(created.body)) as? [String: Any])["id"] as! String
        #expect(s.call("POST", "/v1/streams", body: Array("{}".utf8)).status == 429)
        #expect(s.call("POST", "/v1/streams/\(id)/frames", body: try Self.png(), type: "image/png").status == 202)
        #expect(s.call("POST", "/v1/streams/\(id)/frames", body: [0x89, 0x50, 0x4E, 0x47, 0, 1], type: "image/png").status == 415)
        #expect(s.call("POST", "/v1/streams/\(id)/frames", body: try Self.png(), type: "text/plain").status == 415)
        #expect(s.call("POST", "/v1/streams/nope/frames", body: try Self.png(), type: "image/png").status == 404)
        #expect(s.call("PATCH", "/v1/streams/\(id)", body: Array(#"{"class": 1, "rcfg": "self"}"#.utf8)).status == 200)
        #expect(s.call("PATCH", "/v1/streams/\(id)", body: Array(#"{"class": 99}"#.utf8)).status == 400)
        // Out-of-range or mistyped filter values are refused, and the refused PATCH changes nothing.
        for bad in [#"{"class": 2, "similarity": 1.5}"#, #"{"class": 2, "max_skip": -1}"#, #"{"class": 2, "max_skip": 2.5}"#,
                    #"{"class": 2, "filter": "no"}"#, #"{"class": 2, "filter": 1}"#, #"{"class": 2, "similarity": true}"#] {
            #expect(s.call("PATCH", "/v1/streams/\(id)", body: Array(bad.utf8)).status == 400, "\(bad)")
        }
        for bad in [#"{"stepping": "rk4"}"#, #"{"blend": 1}"#, #"{"blend": -0.1}"#, #"{"blend": "half"}"#,
                    #"{"structure": 1.5}"#, #"{"structure": -1}"#, #"{"structure": "all"}"#, #"{"structure_sigma": 0}"#,
                    #"{"structure_floor": 1}"#, #"{"structure_floor": -0.2}"#, #"{"structure_target": "luma"}"#,
                    #"{"structure_target": 1}"#] {
            #expect(s.call("PATCH", "/v1/streams/\(id)", body: Array(bad.utf8)).status == 400, "\(bad)")
        }
        let state = try #require(try JSONSerialization.jsonObject(with: Data(s.call("GET", "/v1/streams/\(id)").body)) as? [String: Any])
        #expect(state["class"] as? Int == 1, "a refused PATCH changed the class: \(state)")
        #expect(state["stepping"] as? String == "renoise" && (state["blend"] as? Double) == 0, "\(state)")
        #expect((state["structure"] as? Double) == Double(StreamPipeline.defaultStructure), "the model's default structure guidance: \(state)")
        #expect(s.call("PATCH", "/v1/streams/\(id)", body: Array(#"{"stepping": "euler", "blend": 0.25, "structure": 0.5, "structure_floor": 0.7, "structure_target": "matched"}"#.utf8)).status == 200)
        let changed = try #require(try JSONSerialization.jsonObject(with: Data(s.call("GET", "/v1/streams/\(id)").body)) as? [String: Any])
        #expect(changed["stepping"] as? String == "euler" && (changed["blend"] as? Double) == 0.25, "\(changed)")
        #expect((changed["structure"] as? Double) == 0.5, "\(changed)")
        #expect(abs((changed["structure_floor"] as? Double ?? 0) - 0.7) < 1e-6, "\(changed)")
        #expect(state["structure_target"] as? String == "frame" && changed["structure_target"] as? String == "matched", "\(changed)")
        // A viewer reads the output stream; frames posted meanwhile arrive as PNG parts.
        let viewer = DispatchQueue(label: "viewer")
        let got = ReplyBox()
        let done = DispatchSemaphore(value: 0)
        viewer.async {
            let bytes = s.raw("GET /v1/streams/\(id)/output HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", readAtMost: 3000, timeout: 20)
            got.reply = Running.Reply(status: 0, type: "", body: bytes)
            done.signal()
        }
        for _ in 0..<40 {
            _ = s.call("POST", "/v1/streams/\(id)/frames", body: try Self.png(9, 9), type: "image/png")
            if done.wait(timeout: .now() + 0.1) == .success { done.signal(); break }
        }
        #expect(done.wait(timeout: .now() + 30) == .success, "the viewer got its bytes")
        let text = String(decoding: got.reply?.body ?? [], as: UTF8.self)
        #expect(text.contains("multipart/x-mixed-replace"))
        #expect(text.contains("Content-Type: image/png"))
        // The viewer has disconnected mid-stream: the server carries on.
        #expect(s.call("GET", "/healthz").status == 200)
        let stats = s.call("GET", "/v1/streams/\(id)")
        #expect(stats.text.contains("\"processed\""))
        #expect(s.call("DELETE", "/v1/streams/\(id)").status == 200)
        #expect(s.call("DELETE", "/v1/streams/\(id)").status == 404)
        #expect(s.call("GET", "/v1/streams/\(id)/output").status == 404)
        #expect(s.call("POST", "/v1/streams", body: Array(#"{"filter": "off"}"#.utf8)).status == 400)
        #expect(s.call("POST", "/v1/streams", body: Array(#"{"filter": 0}"#.utf8)).status == 400)
        #expect(s.call("POST", "/v1/streams", body: Array(#"{"max_skip": 2.5}"#.utf8)).status == 400)
    }

    // MARK: Lifecycle over a real server

    /// A stream created over HTTP; returns its scheduler entry.
    static func createStream(_ s: Running, _ json: String = #"{"class": 0, "filter": false}"#) throws -> StreamScheduler.Entry {
        let created = s.call("POST", "/v1/streams", body: Array(json.utf8))
        #expect(created.status == 201)
        let id = try #require(try JSONSerialization.jsonObject(with: Data(created.body)) as? [String: Any])["id"] as? String
        let name = try #require(id)
        return try #require(s.service.scheduler.stream(name))
    }

    /// An HTTP/1.0 viewer of a stream's output (no chunked framing: the parts arrive as sent).
    final class Viewer {
        let fd: Int32
        var bytes: [UInt8] = []
        init(_ s: Running, _ id: String) {
            fd = loopbackSocket(port: s.server.port, timeout: 20)
            _ = "GET /v1/streams/\(id)/output HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        }
        deinit { close(fd) }

        /// The PNG payloads of the parts received so far.
        var parts: [[UInt8]] {
            var out: [[UInt8]] = []
            let marker = Array("Content-Length: ".utf8)
            var i = 0
            while i + marker.count < bytes.count {
                if Array(bytes[i..<(i + marker.count)]) == marker {
                    var j = i + marker.count, n = 0
                    while j < bytes.count, let d = Int(String(UnicodeScalar(bytes[j]))) { n = n * 10 + d; j += 1 }
                    let start = j + 4
                    if start + n <= bytes.count, n > 0 { out.append(Array(bytes[start..<(start + n)])); i = start + n; continue }
                    break
                }
                i += 1
            }
            return out
        }

        /// Reads until `count` parts have arrived, the server closes, or 20 s pass; whether the server closed.
        @discardableResult
        func read(parts count: Int = .max) -> Bool {
            var buf = [UInt8](repeating: 0, count: 65536)
            while parts.count < count {
                let n = recv(fd, &buf, buf.count, 0)
                if n == 0 { return true }
                if n < 0 { return false }
                bytes += buf[0..<n]
            }
            return false
        }
    }

    @Test func beginShutdownAloneEndsStreams() throws {
        let s = try Running()
        let entry = try Self.createStream(s)
        let viewer = Viewer(s, entry.id)
        #expect(HardeningTests.Live.waitFor(10) { entry.output.observerCount == 1 })
        s.service.beginShutdown()
        // No server.stop(): the stream's end alone ends the viewer's response.
        #expect(viewer.read(), "the server ended the response")
        #expect(String(decoding: viewer.bytes, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        #expect(s.call("GET", "/v1/info").status == 503)
        #expect(s.call("GET", "/healthz").text.contains("shutting down"))
    }

    @Test func workInFlightDuringShutdown() throws {
        let s = try Running()
        // Both generations wait for the model; then the shutdown begins.
        s.service.modelLock.lock()
        let oneStep = loopbackSocket(port: s.server.port, timeout: 20), long = loopbackSocket(port: s.server.port, timeout: 20)
        defer { close(oneStep); close(long) }
        for (fd, json) in [(oneStep, #"{"steps": 1}"#), (long, #"{"steps": 50}"#)] {
            _ = HardeningTests.rawPost("/v1/generate", json).withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        }
        #expect(HardeningTests.Live.waitFor(10) { HardeningTests.metric(s.service.metricsText(), "millrace_jobs_running") == 2 })
        s.service.beginShutdown()
        s.service.modelLock.unlock()
        func reply(_ fd: Int32) -> String {
            var out: [UInt8] = [], buf = [UInt8](repeating: 0, count: 65536)
            while !String(decoding: out, as: UTF8.self).contains("\r\n\r\n") {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { break }
                out += buf[0..<n]
            }
            return String(decoding: out, as: UTF8.self)
        }
        // The request in its last step completes; the long one stops at its next step.
        let first = reply(oneStep), second = reply(long)
        #expect(first.hasPrefix("HTTP/1.1 200") && first.contains("image/png"), "\(first.prefix(120))")
        #expect(second.hasPrefix("HTTP/1.1 503"), "\(second.prefix(120))")
        #expect(s.server.stop(deadline: 5))
    }

    @Test func twoViewersSeeTheSameSequence() throws {
        let s = try Running()
        let entry = try Self.createStream(s)
        let a = Viewer(s, entry.id), b = Viewer(s, entry.id)
        #expect(HardeningTests.Live.waitFor(10) { entry.output.observerCount == 2 })
        for k in 1...4 {
            let frame = try RGBImage(width: 9, height: 9, fill: (Float(k) / 4, 0.3, 1 - Float(k) / 4)).pngData()
            #expect(s.call("POST", "/v1/streams/\(entry.id)/frames", body: frame, type: "image/png").status == 202)
            a.read(parts: k)
            b.read(parts: k)
        }
        #expect(a.parts.count == 4)
        #expect(a.parts == b.parts)
        #expect(Set(a.parts.map { $0 }).count > 1, "frames of different inputs differ")
    }

    @Test func latestFrameWinsEndToEnd() throws {
        let s = try Running()
        // One slot: each output is the frame just processed (with n slots it would be the frame
        // n − 1 calls before).
        let entry = try Self.createStream(s, #"{"class": 0, "filter": false, "steps": 1}"#)
        let frames = (1...5).map { RGBImage(width: 10, height: 10, fill: (Float($0) / 5, 0.5, 1 - Float($0) / 5)) }
        // The worker takes frame 1 and waits for the model; frames 2–5 arrive meanwhile.
        s.service.modelLock.lock()
        #expect(s.call("POST", "/v1/streams/\(entry.id)/frames", body: try frames[0].pngData(), type: "image/png").status == 202)
        #expect(HardeningTests.Live.waitFor(10) { !entry.input.hasItem })
        for f in frames.dropFirst() {
            #expect(s.call("POST", "/v1/streams/\(entry.id)/frames", body: try f.pngData(), type: "image/png").status == 202)
        }
        s.service.modelLock.unlock()
        #expect(HardeningTests.Live.waitFor(20) { entry.outputs == 2 })
        let stats = try #require(try JSONSerialization.jsonObject(with: Data(s.call("GET", "/v1/streams/\(entry.id)").body)) as? [String: Any])
        #expect(stats["frames_in"] as? Int == 5 && stats["dropped"] as? Int == 3 && stats["processed"] as? Int == 2, "\(stats)")
        // The second output is frame 5's (the newest, not frame 2): a fresh session given frames
        // 1 and 5 makes the same.
        let reference = try StreamQueueReference.session(s.service)
        _ = try reference.process(try RGBImage.decode(frames[0].pngData()))
        let expected = try reference.process(try RGBImage.decode(frames[4].pngData())).image
        let served = try #require(entry.output.next(after: 1, timeout: 5)).item.image
        // To rounding: suites running alongside may change how the kernels split their sums
        // (GlobalKernelSettings); another frame's output differs by far more.
        #expect(relativeError(served.planes, expected.planes) < 1e-4)
    }

    @Test func streamOutputAsJPEG() throws {
        let s = try Running()
        let entry = try Self.createStream(s)
        #expect(s.call("GET", "/v1/streams/\(entry.id)/output?format=gif").status == 400)
        #expect(s.call("GET", "/v1/streams/\(entry.id)/output?format=jpeg&quality=0").status == 400)
        #expect(s.call("GET", "/v1/streams/\(entry.id)/output?quality=50").status == 400, "quality without jpeg")
        let fd = loopbackSocket(port: s.server.port, timeout: 20)
        defer { close(fd) }
        _ = "GET /v1/streams/\(entry.id)/output?format=jpeg&quality=70 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        #expect(HardeningTests.Live.waitFor(10) { entry.output.observerCount == 1 })
        var bytes: [UInt8] = [], buf = [UInt8](repeating: 0, count: 65536)
        for k in 1...3 {
            let frame = try RGBImage(width: 12, height: 12, fill: (Float(k) / 3, 0.5, 0.2)).pngData()
            #expect(s.call("POST", "/v1/streams/\(entry.id)/frames", body: frame, type: "image/png").status == 202)
            while String(decoding: bytes, as: UTF8.self).components(separatedBy: "Content-Type: image/jpeg").count - 1 < k {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
        }
        let viewer = Viewer(s, entry.id)
        viewer.bytes = bytes
        let parts = viewer.parts
        #expect(parts.count == 3)
        for p in parts {
            #expect(RGBImage.sniffFormat(p) == .jpeg)
            let image = try RGBImage.decode(p)
            #expect(image.width == s.service.folder.config.sampleSize)
        }
    }

    /// A standard client reads the JPEG stream: Debian's ffmpeg with its mpjpeg demuxer, while
    /// frames are posted, writes the frames it read (installed by scripts/install-deps.sh).
    @Test func ffmpegReadsTheJPEGStream() throws {
        let ffmpeg = "/usr/bin/ffmpeg"
        try #require(FileManager.default.isExecutableFile(atPath: ffmpeg), "ffmpeg is missing: run scripts/install-deps.sh")
        let s = try Running()
        let entry = try Self.createStream(s)
        let dir = Fixtures.tempPath("ffmpeg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ffmpeg)
        p.arguments = ["-hide_banner", "-loglevel", "error", "-nostdin", "-f", "mpjpeg",
                       "-i", "http://127.0.0.1:\(s.server.port)/v1/streams/\(entry.id)/output?format=jpeg",
                       "-frames:v", "5", "-c", "copy", "-f", "image2", dir + "/frame%03d.jpg"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        // Frames until ffmpeg has its five (bounded: 60 s).
        let end = Date().addingTimeInterval(60)
        var k = 0
        while p.isRunning && Date() < end {
            k += 1
            let frame = try RGBImage(width: 16, height: 16, fill: (Float(k % 7) / 7, 0.4, 0.6)).pngData()
            _ = s.call("POST", "/v1/streams/\(entry.id)/frames", body: frame, type: "image/png")
            _ = HardeningTests.Live.waitFor(0.05) { !p.isRunning }
        }
        p.waitUntilExit()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0, "ffmpeg: \(message)")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".jpg") }.sorted()
        #expect(files.count == 5, "\(files)")
        for f in files {
            let image = try RGBImage.load(path: dir + "/" + f)
            #expect(image.width == s.service.folder.config.sampleSize)
        }
    }

    @Test func framesFasterThanTheLimitGet429() throws {
        let s = try Running(framesPerSecond: 2)
        let entry = try Self.createStream(s)
        let statuses = try (0..<5).map { _ in s.call("POST", "/v1/streams/\(entry.id)/frames", body: try Self.png(), type: "image/png").status }
        #expect(statuses.prefix(2).allSatisfy { $0 == 202 }, "\(statuses)")
        #expect(statuses.contains(429), "\(statuses)")
    }

    @Test func aFrameThatFailsInTheSchedulerCountsAnErrorAndTheStreamGoesOn() throws {
        let s = try Running()
        let entry = try Self.createStream(s)
        #expect(s.service.scheduler.submit(RGBImage(width: 8, height: 8, fill: (Float.nan, 0, 0)), to: entry.id))
        func stats() -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(s.call("GET", "/v1/streams/\(entry.id)").body)) as? [String: Any]) ?? [:]
        }
        #expect(HardeningTests.Live.waitFor(10) { stats()["errors"] as? Int == 1 })
        #expect((stats()["last_error"] as? String)?.contains("non-finite") == true)
        #expect(s.call("POST", "/v1/streams/\(entry.id)/frames", body: try Self.png(), type: "image/png").status == 202)
        #expect(HardeningTests.Live.waitFor(10) { stats()["out"] as? Int == 1 })
        #expect(stats()["errors"] as? Int == 1)
    }
}

/// The stream session the service builds for `POST /v1/streams` with `{"class": 0, "filter": false, "steps": 1}`.
enum StreamQueueReference {
    static func session(_ service: MillraceService) throws -> StreamSession {
        let pipeline = try StreamPipeline(sampler: service.sampler, times: try StreamPipeline.times(strength: 0.6, steps: 1),
                                          settings: StreamSettings.defaults(classIndex: 0, flow: service.sampler.flow), seed: 0)
        return StreamSession(pipeline: pipeline, filter: nil)
    }
}
