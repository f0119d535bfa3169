import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillracePipelines
@testable import MillraceHTTP
import MillraceTestSupport

/// The limits of docs/SECURITY.md, each one tested where it is enforced: admission and budgets
/// in the service, deadlines and cancellation on a real libmicrohttpd server on loopback with
/// raw-socket clients (which can stall, drip bytes and disconnect as attackers do).
@Suite(.serialized) struct HardeningTests {
    // MARK: Building blocks

    @Test func memoryBudgetReservesAndGivesBack() {
        let budget = MemoryBudget(capacity: 1000)
        let a = budget.reserve(600)
        #expect(a != nil && budget.reserved == 600)
        #expect(budget.reserve(500) == nil, "over the capacity")
        do {
            let b = budget.reserve(400)
            #expect(b != nil && budget.reserved == 1000)
        }
        #expect(budget.reserved == 600, "a reservation is given back when freed")
        a?.release()
        a?.release()
        #expect(budget.reserved == 0, "released once only")
        #expect(budget.reserve(1001) == nil)
    }

    @Test func fairLockGrantsInTheOrderAsked() {
        let lock = FairLock()
        let order = OrderLog()
        lock.lock()
        var threads: [Thread] = []
        for k in 0..<4 {
            let t = Thread { lock.lock(); order.append(k); lock.unlock() }
            threads.append(t)
            t.start()
            // Wait until this thread holds its ticket before the next one asks.
            while lock.queued < k + 2 { usleep(200) }
        }
        lock.unlock()
        while order.values.count < 4 { usleep(200) }
        #expect(order.values == [0, 1, 2, 3])
    }

    final class OrderLog: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [Int] = []
        func append(_ k: Int) { lock.lock(); items.append(k); lock.unlock() }
        var values: [Int] { lock.lock(); defer { lock.unlock() }; return items }
    }

    @Test func fastFourierSizes() {
        #expect(FFT2D.isFast(1024) && FFT2D.isFast(1000) && FFT2D.isFast(1) && FFT2D.isFast(360))
        #expect(!FFT2D.isFast(1021) && !FFT2D.isFast(7) && !FFT2D.isFast(0) && !FFT2D.isFast(4094))
        #expect(FFT2D.fastSize(atLeast: 1021) == 1024)
        #expect(FFT2D.fastSize(atLeast: 7) == 8)
        #expect(FFT2D.fastSize(atLeast: 4095) == 4096)
    }

    @Test func hostNamesAndTokens() {
        for ok in ["127.0.0.1", "127.0.0.1:8080", "localhost", "localhost:80", "[::1]", "[::1]:9000", "127.1.2.3:1"] {
            #expect(MillraceService.isAllowedHost(ok, allowed: []), "\(ok)")
        }
        for bad in ["", "evil.example", "evil.example:8080", "127.0.0.1.evil.example", "128.0.0.1", "[::2]", "localhost.evil", "127.0.0.256"] {
            #expect(!MillraceService.isAllowedHost(bad, allowed: []), "\(bad)")
        }
        #expect(MillraceService.isAllowedHost("millrace.example:443", allowed: ["Millrace.example"]))
        #expect(MillraceService.constantTimeEqual("Bearer abc", "Bearer abc"))
        #expect(!MillraceService.constantTimeEqual("Bearer abd", "Bearer abc"))
        #expect(!MillraceService.constantTimeEqual("Bearer ab", "Bearer abc"))
        #expect(!MillraceService.constantTimeEqual("", "Bearer abc"))
    }

    @Test func velocityInChunksCallsTheModelPerChunk() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        let sampler = FlowSampler(model: folder.model, flow: folder.flow)
        let c = folder.config
        let x = GaussianSource.draw(count: 5, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: 3)
        let labels = c.numClassEmbeds == nil ? nil : [0, 1, 0, 1, 0]
        var calls = 0
        let chunked = sampler.velocity(x, t: [Float](repeating: 0.3, count: 5), labels: labels, guidance: 1,
                                       samplesPerCall: 2) { calls += 1; return $0() }
        #expect(calls == 3, "5 samples in calls of at most 2")
        // Each chunk is computed alone; the rows agree with the one-call result (to rounding:
        // a kernel's sums may be split differently at another batch size).
        let whole = sampler.velocity(x, t: [Float](repeating: 0.3, count: 5), labels: labels, guidance: 1)
        #expect(chunked.shape == whole.shape)
        #expect(relativeError(chunked.data, whole.data) < 1e-5)
    }

    // MARK: The service's checks (no sockets)

    static func service(_ configure: (inout MillraceService.Options) -> Void = { _ in }) throws -> MillraceService {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        var o = MillraceService.Options()
        o.staticDir = ServerTests.Running.staticDir()
        configure(&o)
        return MillraceService(folder: folder, options: o)
    }

    static func request(_ method: String, _ path: String, body: String = "", headers: [String: String] = [:]) -> HTTPRequest {
        var h = ["host": "127.0.0.1:8080"]
        if !body.isEmpty { h["content-type"] = "application/json" }
        for (k, v) in headers { h[k.lowercased()] = v }
        return HTTPRequest(method: method, path: path, query: [:], headers: h, body: Array(body.utf8), bodyTooLarge: false)
    }

    @Test func crossSiteRequestsAreRefused() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        let ok = #"{"steps": 1}"#
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok)).status == 200)
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Origin": "http://127.0.0.1:8080"])).status == 200)
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Sec-Fetch-Site": "same-origin"])).status == 200)
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Origin": "http://evil.example"])).status == 403)
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Origin": "http://127.0.0.1:9999"])).status == 403)
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Origin": "http://localhost:8080"])).status == 200, "another name of this server")
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Origin": "http://localhost:8081"])).status == 403, "another port is another server")
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Origin": "http://evil.example:8080"])).status == 403)
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Origin": "null"])).status == 403)
        #expect(s.handle(Self.request("GET", "/v1/info", headers: ["Sec-Fetch-Site": "cross-site"])).status == 403)
        #expect(s.handle(Self.request("GET", "/v1/info", headers: ["Host": "evil.example:8080"])).status == 403, "DNS rebinding")
        #expect(s.handle(Self.request("GET", "/v1/info", headers: ["Host": "evil.example:8080", "Origin": "http://evil.example:8080"])).status == 403)
        // A form or no-cors fetch from another site can send text/plain without asking first.
        let plain = s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Content-Type": "text/plain"]))
        #expect(plain.status == 415)
        #expect(s.handle(Self.request("PATCH", "/v1/streams/s1", body: "{}", headers: ["Content-Type": "application/x-www-form-urlencoded"])).status == 415)
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok, headers: ["Content-Type": "application/json; charset=utf-8"])).status == 200)
        // Static files are not the API: a foreign Host still gets the page (nothing to steal there).
        #expect(s.handle(Self.request("GET", "/", headers: ["Host": "evil.example"])).status == 200)

        let named = try Self.service { $0.allowedHosts = ["millrace.example"] }
        defer { named.beginShutdown() }
        #expect(named.handle(Self.request("GET", "/v1/info", headers: ["Host": "millrace.example"])).status == 200)
        #expect(named.handle(Self.request("GET", "/v1/info", headers: ["Host": "other.example"])).status == 403)
        let open = try Self.service { $0.checkHost = false; $0.token = "t" }
        defer { open.beginShutdown() }
        #expect(open.handle(Self.request("GET", "/v1/info", headers: ["Host": "10.1.2.3:8080", "Authorization": "Bearer t"])).status == 200)
    }

    @Test func securityHeadersOnThePage() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        let page = s.handle(Self.request("GET", "/"))
        let csp = page.headers.first { $0.0 == "Content-Security-Policy" }?.1 ?? ""
        #expect(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"))
        #expect(HTTPServer.commonHeaders.contains { $0 == ("X-Content-Type-Options", "nosniff") })
        #expect(HTTPServer.commonHeaders.contains { $0.0 == "Referrer-Policy" })
    }

    /// A JSON parameter body larger than any parameters need is refused before it is parsed, on
    /// every JSON route; one just under the limit is parsed (and refused for its contents).
    @Test func oversizedJSONParametersAreRefusedUnparsed() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        let limit = MillraceService.maxJSONBodyBytes
        let big = #"{"x": ["# + String(repeating: "0,", count: limit / 2) + "0]}"
        for (method, path) in [("POST", "/v1/generate"), ("POST", "/v1/streams")] {
            let r = s.handle(Self.request(method, path, body: big))
            #expect(r.status == 413 && Self.text(r).contains("byte limit of parameters"), "\(path): \(Self.text(r).prefix(200))")
        }
        let near = #"{"x": ["# + String(repeating: "0,", count: limit / 2 - 20) + "0]}"
        #expect(near.utf8.count <= limit)
        let r = s.handle(Self.request("POST", "/v1/generate", body: near))
        #expect(r.status == 400 && Self.text(r).contains("unknown parameter 'x'"))
    }

    @Test func generationCostIsBoundedBeforeWork() throws {
        let s = try Self.service { $0.maxGenerateWork = 100; $0.maxOutputPixels = 200 * 200 }
        defer { s.beginShutdown() }
        let before = s.metricsText()
        // 1 class × 4 images × 2 rows (guidance) × 20 steps = 160 > 100.
        let costly = s.handle(Self.request("POST", "/v1/generate", body: #"{"class": 0, "count": 4, "steps": 20, "guidance": 2}"#))
        #expect(costly.status == 413)
        #expect(Self.text(costly).contains("max-generate-work"))
        var stream = Self.request("GET", "/v1/generate/stream")
        stream.query = ["class": "0", "count": "4", "steps": "20", "guidance": "2"]
        #expect(s.handle(stream).status == 413)
        // 4 images of 8x8 upscaled 16 in a row: 518 x 128 pixels > 40,000.
        #expect(s.handle(Self.request("POST", "/v1/generate", body: #"{"count": 4, "steps": 1, "upscale": 16}"#)).status == 413)
        // Refused before any model call.
        #expect(Self.metric(s.metricsText(), "millrace_model_calls_total") == Self.metric(before, "millrace_model_calls_total"))
        #expect(s.handle(Self.request("POST", "/v1/generate", body: #"{"count": 2, "steps": 10}"#)).status == 200)
    }

    @Test func jobSlotsAndMemoryBudgetGive503WithRetryAfter() throws {
        let s = try Self.service { $0.maxJobs = 1; $0.memoryBudgetBytes = 64 << 20 }
        defer { s.beginShutdown() }
        let ok = #"{"steps": 1}"#
        do {
            let held = try s.admitJob(bytes: 0, clientGone: { false })
            let busy = s.handle(Self.request("POST", "/v1/generate", body: ok))
            #expect(busy.status == 503)
            #expect(busy.headers.contains { $0.0 == "Retry-After" })
            withExtendedLifetime(held) {}
        }
        #expect(s.handle(Self.request("POST", "/v1/generate", body: ok)).status == 200, "the slot is free again")
        do {
            let hog = s.budget.reserve(s.budget.capacity - 1024)
            let full = s.handle(Self.request("POST", "/v1/generate", body: ok))
            #expect(full.status == 503 && full.headers.contains { $0.0 == "Retry-After" })
            withExtendedLifetime(hog) {}
        }
        #expect(Self.metric(s.metricsText(), "millrace_requests_refused_busy_total") == 2)
        #expect(s.budget.reserved == 0, "every job gave its memory back")
        // A job that could never fit is 413, not 503.
        #expect(throws: MillraceService.JobRefusal.self) { try s.admitJob(bytes: s.budget.capacity + 1, clientGone: { false }) }
    }

    /// A PNG whose header declares `w`×`h` but whose pixel data is cut short: it can be probed,
    /// never decoded (a decode would answer 415), so a 413 proves the size was checked first.
    static func declaredPNG(_ w: Int, _ h: Int) -> [UInt8] {
        func be(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 255), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
        func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
            let td = Array(type.utf8) + data
            return be(data.count) + td + be(Int(crc32(td)))
        }
        let ihdr = be(w) + be(h) + [8, 2, 0, 0, 0]
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", ihdr) + chunk("IDAT", [0x78, 0x9C, 0x01])
    }

    /// CRC-32 as PNG chunks carry it (bitwise, reflected polynomial 0xEDB88320).
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
        }
        return c ^ 0xFFFF_FFFF
    }

    /// A POST of a JSON body as raw HTTP.
    static func rawPost(_ path: String, _ json: String) -> String {
        "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
    }

    static func form(_ s: MillraceService, _ path: String, _ fields: [ColorServerTests.Field]) -> HTTPResponse {
        var r = request("POST", path)
        r.headers["content-type"] = ColorServerTests.formType
        r.body = ColorServerTests.form(fields)
        return s.handle(r)
    }

    @Test func uploadedImagesAreSizedFromTheirHeadersFirst() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        #expect(throws: (any Error).self) { try RGBImage.decode(Self.declaredPNG(100, 100)) }
        // 16 images declaring 2000×2000 each: 64 MP, over the 16 MP a request may hold.
        let bomb = (0..<16).map { ColorServerTests.Field(name: "image", filename: "b\($0).png", type: "image/png", body: Self.declaredPNG(2000, 2000)) }
        let r = Self.form(s, "/v1/bss", bomb + [ColorServerTests.Field(name: "size", body: Array("8x8".utf8))])
        #expect(r.status == 413, "\(Self.text(r))")
        let huge = Self.form(s, "/v1/colorize", [ColorServerTests.Field(name: "image", filename: "x.png", type: "image/png", body: Self.declaredPNG(20000, 20000))])
        #expect(huge.status == 413)
        // Within the limits, the same cut-short file reaches the decoder and is refused there.
        let cut = Self.form(s, "/v1/colorize", [ColorServerTests.Field(name: "image", filename: "x.png", type: "image/png", body: Self.declaredPNG(10, 10))])
        #expect(cut.status == 415)
        #expect(s.budget.reserved == 0)
    }

    @Test func bssSizesWithSlowTransformsAreRefusedOrRounded() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        let tiny = try (0..<2).map { try ColorServerTests.file("image", "t\($0).png", RGBImage(width: 1, height: 1, fill: (0.2, 0.4, Float($0)))) }
        let prime = Self.form(s, "/v1/bss", tiny + [ColorServerTests.Field(name: "size", body: Array("1021x1021".utf8))])
        #expect(prime.status == 400)
        #expect(Self.text(prime).contains("1024x1024"))
        let seven = try (0..<2).map { try ColorServerTests.file("image", "s\($0).png", RGBImage(width: 7, height: 7, fill: (0.2, 0.4, Float($0)))) }
        let rounded = Self.form(s, "/v1/bss", seven)
        #expect(rounded.status == 200)
        #expect(rounded.headers.first { $0.0 == "Millrace-BSS-Size" }?.1 == "8x8", "7 has a slow transform: worked at 8")
    }

    static func text(_ r: HTTPResponse) -> String {
        if case .bytes(let b) = r.body { return String(decoding: b, as: UTF8.self) }
        return ""
    }

    static func metric(_ text: String, _ name: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }

    // MARK: A real server

    final class Live: @unchecked Sendable {
        let service: MillraceService
        let server: HTTPServer
        init(limits: HTTPServer.Limits = HTTPServer.Limits(), _ configure: (inout MillraceService.Options) -> Void = { _ in }) throws {
            service = try HardeningTests.service(configure)
            let s = service
            server = HTTPServer(host: "127.0.0.1", port: 0, limits: limits, budget: service.budget) { s.handle($0) }
            try server.start()
        }
        deinit { service.beginShutdown(); server.stop() }

        /// A connected socket with a receive timeout.
        func connect(timeout: Double = 10) -> Int32 { loopbackSocket(port: server.port, timeout: timeout) }

        func send(_ fd: Int32, _ text: String) { _ = text.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }

        /// Reads until the peer closes or `until` appears (or the receive timeout): the bytes
        /// and whether the peer closed.
        func read(_ fd: Int32, until marker: String? = nil, atMost: Int = 1 << 22) -> (String, closed: Bool) {
            var out: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while out.count < atMost {
                let n = recv(fd, &buf, buf.count, 0)
                if n == 0 { return (String(decoding: out, as: UTF8.self), true) }
                if n < 0 { break }
                out += buf[0..<n]
                if let marker, String(decoding: out, as: UTF8.self).contains(marker) { break }
            }
            return (String(decoding: out, as: UTF8.self), false)
        }

        /// Whether the peer closed every socket (a read returns end of file) within `within` seconds.
        func allClosed(_ fds: [Int32], within seconds: Double) -> Bool {
            var open = Set(fds)
            var buf = [UInt8](repeating: 0, count: 4096)
            return waitFor(seconds) {
                for fd in open {
                    let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
                    if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { open.remove(fd) }
                }
                return open.isEmpty
            }
        }

        func get(_ path: String) -> String {
            let fd = connect()
            defer { close(fd) }
            send(fd, "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return read(fd).0
        }

        func metric(_ name: String) -> Double? { HardeningTests.metric(service.metricsText(), name) }

        /// Waits (up to `timeout` s) for `condition`; no fixed sleeps.
        func waitFor(_ timeout: Double = 20, _ condition: () -> Bool) -> Bool { Self.waitFor(timeout, condition) }

        static func waitFor(_ timeout: Double = 20, _ condition: () -> Bool) -> Bool {
            let end = Date().addingTimeInterval(timeout)
            while Date() < end {
                if condition() { return true }
                usleep(10_000)
            }
            return condition()
        }
    }

    @Test func aDisconnectCancelsGenerations() throws {
        let live = try Live()
        for (k, request) in [
            "GET /v1/generate/stream?class=0&steps=50&count=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            Self.rawPost("/v1/generate", #"{"steps": 50, "count": 2}"#),
        ].enumerated() {
            // The model is held, so the generation waits inside its first step while the client leaves.
            live.service.modelLock.lock()
            let fd = live.connect()
            live.send(fd, request)
            #expect(live.waitFor { live.metric("millrace_jobs_running") == 1 })
            close(fd)
            live.service.modelLock.unlock()
            #expect(live.waitFor { live.metric("millrace_jobs_running") == 0 }, "the job ended")
            #expect(live.metric("millrace_requests_cancelled_total") == Double(k + 1), "stopped, not run to the end")
        }
        #expect(live.service.budget.reserved == 0, "its memory was given back")
        #expect(live.get("/healthz").contains("200 OK"))
    }

    @Test func aJobPastItsDeadlineStops() throws {
        let live = try Live { $0.requestTimeout = 0.2 }
        live.service.modelLock.lock()
        let fd = live.connect()
        defer { close(fd) }
        live.send(fd, Self.rawPost("/v1/generate", #"{"steps": 20}"#))
        #expect(live.waitFor { live.metric("millrace_jobs_running") == 1 })
        // Held past the deadline; the generation stops after the step it is in.
        let end = Date().addingTimeInterval(0.3)
        while Date() < end { usleep(10_000) }
        live.service.modelLock.unlock()
        let reply = live.read(fd, until: "deadline").0
        #expect(reply.hasPrefix("HTTP/1.1 503") && reply.contains("--request-timeout"), "\(reply.prefix(300))")
        #expect(live.metric("millrace_requests_cancelled_total") == 1)
    }

    @Test func connectionLimitAndHeaderSize() throws {
        var limits = HTTPServer.Limits()
        limits.maxConnections = 8
        let live = try Live(limits: limits)
        // Headers larger than a connection's buffer are refused (431), not buffered.
        let big = live.connect()
        live.send(big, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + String(repeating: "a", count: 200_000) + "\r\n\r\n")
        #expect(live.read(big, until: "\r\n\r\n").0.hasPrefix("HTTP/1.1 431"))
        close(big)
        #expect(live.waitFor { live.server.openConnections == 0 })
        // At the connection limit a new connection waits in the listen queue, unanswered, until
        // one of the others closes (the header deadline closes idle ones); then it is served.
        let held = (0..<8).map { _ in live.connect() }
        for fd in held { live.send(fd, "GET / HTTP/1.1\r\nHost: x\r\n") }
        #expect(live.waitFor { live.server.openConnections == 8 })
        let extra = live.connect(timeout: 1)
        defer { close(extra) }
        live.send(extra, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        let waiting = live.read(extra)
        #expect(waiting.0.isEmpty && !waiting.closed, "not served past the limit")
        close(held[0])
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(extra, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(live.read(extra).0.hasPrefix("HTTP/1.1 200"), "served once a connection closed")
        for fd in held.dropFirst() { close(fd) }
        #expect(live.waitFor { live.server.openConnections == 0 })
    }

    @Test func idleAndSlowClientsDoNotStarveOthersAndAreClosed() throws {
        var limits = HTTPServer.Limits()
        limits.headerTimeout = 1
        limits.bodyTimeout = 1
        let live = try Live(limits: limits)
        // Hundreds of connections that send half a request hold no thread: others are answered.
        let idle = (0..<300).map { _ in live.connect(timeout: 15) }
        for fd in idle { live.send(fd, "GET / HTTP/1.1\r\nHost: x\r\n") }
        #expect(live.waitFor { live.server.openConnections >= 300 })
        #expect(live.get("/healthz").contains("\"ok\""))
        // Past the header deadline (1 s; the idle timeout is 15 s) the server closes them.
        #expect(live.allClosed(idle, within: 8))
        for fd in idle { close(fd) }
        // A body that stops arriving is cut at the body deadline.
        let slow = live.connect(timeout: 15)
        live.send(slow, "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        #expect(live.allClosed([slow], within: 8))
        close(slow)
        #expect(live.waitFor { live.server.openConnections == 0 })
        #expect(live.service.budget.reserved == 0, "the body's reservation was given back")
    }

    @Test func oversizedAndOverBudgetBodies() throws {
        var limits = HTTPServer.Limits()
        limits.maxBodyBytes = 1 << 20
        let live = try Live(limits: limits) { $0.memoryBudgetBytes = 2 << 20 }
        // Refused from the declared length, before the body is sent: a client that waits for
        // "100 Continue", and any body announced far over the limit.
        for headers in ["Expect: 100-continue\r\nContent-Length: 5000000", "Content-Length: 900000000"] {
            let big = live.connect()
            live.send(big, "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\(headers)\r\n\r\n")
            #expect(live.read(big, until: "\r\n\r\n").0.hasPrefix("HTTP/1.1 413"), "\(headers)")
            close(big)
        }
        // A body a little over the limit is read and dropped (nothing kept), then refused.
        let over = live.connect()
        live.send(over, "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1500000\r\n\r\n"
                  + String(repeating: " ", count: 1_500_000))
        #expect(live.read(over, until: "\r\n\r\n").0.hasPrefix("HTTP/1.1 413"))
        #expect(live.service.budget.reserved == 0)
        close(over)
        // Two bodies of 0.9 MiB fit a 2 MiB budget; the third waits for room: 503 + Retry-After.
        let held = (0..<2).map { _ in live.connect() }
        for fd in held {
            live.send(fd, "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n{")
        }
        #expect(live.waitFor { live.service.budget.reserved >= 1_800_000 })
        let third = live.connect()
        live.send(third, "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n{")
        let reply = live.read(third, until: "\r\n\r\n").0
        #expect(reply.hasPrefix("HTTP/1.1 503") && reply.contains("Retry-After"))
        for fd in held + [third] { close(fd) }
        #expect(live.waitFor { live.service.budget.reserved == 0 })
    }

    @Test func viewersThatLeaveAreDropped() throws {
        let live = try Live()
        let created = live.service.handle(Self.request("POST", "/v1/streams", body: #"{"filter": false}"#))
        #expect(created.status == 201)
        let entry = try #require(live.service.scheduler.streams.first)
        let fd = live.connect()
        live.send(fd, "GET /v1/streams/\(entry.id)/output HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        #expect(live.read(fd, until: "\r\n\r\n").0.contains("multipart/x-mixed-replace"))
        #expect(live.waitFor { entry.output.observerCount == 1 })
        // The viewer waits for a frame (its connection suspended, unwatched by MHD) and leaves:
        // the server notices without a frame being sent.
        close(fd)
        #expect(live.waitFor { entry.output.observerCount == 0 })
        #expect(live.waitFor { live.server.openConnections == 0 })
    }

    @Test func shutdownCancelsWorkInFlightAndStops() throws {
        let live = try Live()
        live.service.modelLock.lock()
        let fd = live.connect()
        live.send(fd, Self.rawPost("/v1/generate", #"{"steps": 50, "count": 2}"#))
        #expect(live.waitFor { live.metric("millrace_jobs_running") == 1 })
        live.service.beginShutdown()
        live.service.modelLock.unlock()
        // The generation stops at its next step and its client is told why.
        let reply = live.read(fd, until: "shutting down").0
        #expect(reply.hasPrefix("HTTP/1.1 503") && reply.contains("shutting down"))
        close(fd)
        #expect(live.server.stop(deadline: 5), "no work left running")
    }
}

