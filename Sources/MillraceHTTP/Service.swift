import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging
import MillracePipelines

/// Request counters and latency histograms, rendered in Prometheus' text format.
public final class ServiceMetrics: @unchecked Sendable {
    private let lock = NSLock()
    private var requests: [String: Int] = [:]          // "route|status" → count
    private var latency: [String: [Int]] = [:]         // route → bucket counts
    private var latencySum: [String: Double] = [:]
    private var counters: [String: (help: String, value: Int)] = [:]
    public static let buckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    public init() {}

    public func record(route: String, status: Int, seconds: Double) {
        lock.lock()
        defer { lock.unlock() }
        requests["\(route)|\(status)", default: 0] += 1
        var b = latency[route] ?? [Int](repeating: 0, count: Self.buckets.count + 1)
        let i = Self.buckets.firstIndex { seconds <= $0 } ?? Self.buckets.count
        b[i] += 1
        latency[route] = b
        latencySum[route, default: 0] += seconds
    }

    /// Adds `n` to a named counter (`millrace_<name>_total`), e.g. images colorized.
    public func add(_ name: String, help: String, _ n: Int = 1) {
        lock.lock()
        defer { lock.unlock() }
        let old = counters[name]?.value ?? 0
        counters[name] = (help, old + n)
    }

    /// The exposition text, with the stream counters appended. `streams` are the scheduler's
    /// counters over the server's life (streams deleted or expired included), so they never
    /// decrease; `activeStreams` is the gauge of live ones.
    public func render(streams t: StreamScheduler.Totals, generateCalls: Int, activeStreams: Int) -> String {
        lock.lock()
        defer { lock.unlock() }
        var out = "# HELP millrace_requests_total HTTP requests by route and status.\n# TYPE millrace_requests_total counter\n"
        for key in requests.keys.sorted() {
            let parts = key.split(separator: "|")
            out += "millrace_requests_total{route=\"\(parts[0])\",status=\"\(parts[1])\"} \(requests[key]!)\n"
        }
        out += "# HELP millrace_request_seconds Request latency by route.\n# TYPE millrace_request_seconds histogram\n"
        for route in latency.keys.sorted() {
            var cumulative = 0
            for (i, le) in Self.buckets.enumerated() {
                cumulative += latency[route]![i]
                out += "millrace_request_seconds_bucket{route=\"\(route)\",le=\"\(le)\"} \(cumulative)\n"
            }
            cumulative += latency[route]!.last!
            out += "millrace_request_seconds_bucket{route=\"\(route)\",le=\"+Inf\"} \(cumulative)\n"
            out += "millrace_request_seconds_sum{route=\"\(route)\"} \(latencySum[route]!)\n"
            out += "millrace_request_seconds_count{route=\"\(route)\"} \(cumulative)\n"
        }
        for (name, help, value) in [
            ("millrace_stream_frames_in_total", "Frames received by streams (live, deleted or expired).", t.framesIn),
            ("millrace_stream_frames_processed_total", "Frames run through the pipeline.", t.processed),
            ("millrace_stream_frames_skipped_total", "Frames skipped by the similarity filter.", t.skipped),
            ("millrace_stream_frames_dropped_total", "Frames replaced before the worker took them.", t.dropped),
            ("millrace_stream_frames_out_total", "Frames published to viewers.", t.out),
            ("millrace_model_calls_total", "Batched model calls (generation steps and stream calls).", generateCalls + t.modelCalls),
        ] {
            out += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(value)\n"
        }
        for name in counters.keys.sorted() {
            let (help, value) = counters[name]!
            out += "# HELP millrace_\(name)_total \(help)\n# TYPE millrace_\(name)_total counter\nmillrace_\(name)_total \(value)\n"
        }
        out += "# HELP millrace_streams_active Live streams.\n# TYPE millrace_streams_active gauge\nmillrace_streams_active \(activeStreams)\n"
        return out
    }
}

/// Millrace's HTTP service: generation, streams, static files (docs/API.md).
public final class MillraceService: @unchecked Sendable {
    public struct Options: Sendable {
        public var staticDir = "web-static"
        /// Sample clips served under /clips/ for the page's stream panel.
        public var clipsDir = "assets/clips"
        public var maxStreams = 8
        public var token: String?
        public var maxImagePixels = 4_000_000
        public var idleStreamSeconds: Double = 120
        public var maxFramesPerSecond: Double = 60
        /// The server's reference pool for /v1/colorize without uploaded references.
        public var referencesDir = "assets/references"
        /// Most parts of a multipart body (413 above).
        public var maxParts = 40
        /// Most uploaded `reference` files per colorize request (413 above).
        public var maxReferences = 16
        /// Most images per /v1/bss request (413 above).
        public var maxBSSImages = 16
        /// Most pixels of a whole /v1/bss batch at its working size (413 above).
        public var maxBSSBatchPixels = 16_000_000
        /// Most pixels of all the images one request uploads, read from their headers before
        /// any is decoded (413 above).
        public var maxRequestPixels = 16_000_000
        /// Host names accepted in `Host` besides the loopback names (DNS rebinding guard).
        public var allowedHosts: [String] = []
        /// Whether `Host` is checked at all: on for a loopback server or when `allowedHosts` is
        /// set; a server bound beyond loopback without names relies on its token.
        public var checkHost = true
        /// Long jobs (generation, colorize, bss) running or waiting for the model at once (503 above).
        public var maxJobs = 8
        /// Bytes that request bodies and jobs may hold at once (503 when full).
        public var memoryBudgetBytes = 2 << 30
        /// Seconds a job may run; a generation past it stops at its next step (503).
        public var requestTimeout: Double = 60
        /// Most model rows × steps per generation request (413 above); rows are the images,
        /// twice with classifier-free guidance.
        public var maxGenerateWork = 9216
        /// Most pixels of a generated picture (the grid after upscaling; 413 above).
        public var maxOutputPixels = 8_388_608
        /// Most model rows per call of a generation: a larger request is run in chunks, and
        /// the model lock is given up after each call so that streams keep their pace.
        public var maxRowsPerCall = 32
        /// Most rows of one shared model call (continuous batching of every stream's frame and
        /// every generation's step, ModelBatcher); 0: no sharing, one caller per call. Off by
        /// default: on the machine measured (docs/BENCHMARKS.md, `gen bench serve`) the shipped
        /// model costs the same per row at batch 1 and 32, so sharing gains nothing there.
        public var maxBatchRows = 0
        /// This replica's name behind a reverse proxy: stream ids then read `NAME-BOOT-sN`
        /// (BOOT: random per start, so an id never outlives the process that made it), and the
        /// proxy routes every request for a stream by its first part (deploy/nginx.conf.template).
        public var instance: String?
        public init() {}
    }

    public let folder: ModelFolder
    public let sampler: FlowSampler
    public let options: Options
    public let scheduler = StreamScheduler()
    /// `NAME-BOOT-` when the service runs as a named replica (`Options.instance`).
    let streamIDPrefix: String?
    private let streamNumberLock = NSLock()
    private var streamNumber = 0
    private func nextStreamNumber() -> Int { streamNumberLock.withLock { streamNumber += 1; return streamNumber } }
    public let metrics = ServiceMetrics()
    /// Request bodies and jobs reserve their memory here first (docs/SECURITY.md).
    public let budget: MemoryBudget
    /// Serialises every model call (the layers keep per-call state); granted in turn.
    let modelLock: FairLock
    let stateLock = NSLock()
    private var shuttingDown = false
    private var generateCalls = 0
    var runningJobs = 0
    /// Per stream: start of the current one-second window and frames posted in it.
    private var frameWindows: [String: (start: Date, count: Int)] = [:]
    /// The server's reference pool, indexed on first use and again when its folder changes.
    let serverPool: ServerReferencePool
    /// JPEG encodings of stream frames for viewers that ask for format=jpeg.
    let jpegFrames = JPEGFrames()

    /// A model the service runs, with what its folder offers.
    public struct ServedModel: @unchecked Sendable {
        /// The name clients choose it by (its folder's name; made unique).
        public let name: String
        public let folder: ModelFolder
        public let sampler: FlowSampler
        /// Step counts with a BOSS schedule in the folder's schedules.json.
        public let bossSteps: [Int]
        /// Whether the folder has a SourceFM pruning set (`source: pruned`).
        public let hasPruningSet: Bool
        /// Shares this model's calls between callers (nil: batching off).
        public let batcher: ModelBatcher?
        /// The sampler streams and generations run through (the batcher's, when batching is on).
        let streamSampler: FlowSampler, generationSampler: FlowSampler
        /// The pruning set, read on first use rather than once per request (it can be tens of MB).
        private let pruned = PrunedCache()

        final class PrunedCache: @unchecked Sendable {
            private let lock = NSLock()
            private var source: PrunedSource?
            func get(_ folder: String) throws -> PrunedSource {
                lock.lock()
                defer { lock.unlock() }
                if let source { return source }
                let loaded = try PrunedSource.load(modelFolder: folder)
                source = loaded
                return loaded
            }
        }

        /// `count` source samples of `shape` from `source` (the pruning set cached).
        func draw(_ source: SourceDistribution, count: Int, shape: [Int], seed: UInt64) throws -> Tensor {
            switch source {
            case .gaussian: return GaussianSource.draw(count: count, shape: shape, seed: seed)
            case .pruned: return try pruned.get(folder.path).draw(count: count, shape: shape, seed: seed).samples
            }
        }

        init(name: String, folder: ModelFolder, batcher: ModelBatcher?) {
            self.name = name
            self.folder = folder
            self.sampler = FlowSampler(model: folder.model, flow: folder.flow)
            self.batcher = batcher
            var streams = sampler, generations = sampler
            if let batcher {
                streams.forwardCall = { batcher.forward($0, timesteps: $1, classLabels: $2, priority: .stream) }
                generations.forwardCall = { batcher.forward($0, timesteps: $1, classLabels: $2, priority: .generation) }
            }
            self.streamSampler = streams
            self.generationSampler = generations
            let schedules = try? BOSS.Schedules.read(path: BOSS.Schedules.path(inModelFolder: folder.path))
            self.bossSteps = schedules?.stepCounts ?? []
            self.hasPruningSet = FileManager.default.fileExists(atPath: PruningSet.path(modelFolder: folder.path))
        }

        /// What `GET /v1/models` says of it.
        var description: [String: Any] {
            ["name": name, "classes": folder.flow.classNames, "null_class": folder.flow.nullClass as Any? ?? NSNull(),
             "sample_size": folder.config.sampleSize, "default_guidance": folder.flow.defaultGuidance,
             "schedules": ["uniform"] + (bossSteps.isEmpty ? [] : ["boss"]), "boss_steps": bossSteps,
             "sources": ["gaussian"] + (hasPruningSet ? ["pruned"] : []), "solvers": Solver.allCases.map(\.rawValue)]
        }
    }

    /// The models served, the default first.
    public let models: [ServedModel]

    public convenience init(folder: ModelFolder, options: Options) {
        self.init(folders: [folder], options: options)
    }

    /// A service of several models (at least one; the first is the default).
    public init(folders: [ModelFolder], options: Options) {
        precondition(!folders.isEmpty, "a service needs a model")
        streamIDPrefix = options.instance.map { name in
            var rng = SystemRandomNumberGenerator()
            return "\(name)-\(String(UInt32.random(in: 0x1000_0000...UInt32.max, using: &rng), radix: 16))-"
        }
        var served: [ServedModel] = []
        for f in folders {
            let base = URL(fileURLWithPath: f.path).standardizedFileURL.lastPathComponent
            var name = base.isEmpty ? "model" : base
            var k = 2
            while served.contains(where: { $0.name == name }) { name = "\(base)-\(k)"; k += 1 }
            let batcher = options.maxBatchRows > 0
                ? ModelBatcher(model: f.model, modelLock: scheduler.modelLock, maxRows: options.maxBatchRows) : nil
            served.append(ServedModel(name: name, folder: f, batcher: batcher))
        }
        self.models = served
        self.folder = served[0].folder
        self.sampler = served[0].sampler
        self.options = options
        self.modelLock = scheduler.modelLock
        if options.maxBatchRows > 0 {
            let byModel = served.map { ($0.folder.model, $0.batcher) }
            scheduler.batcherFor = { entry in
                byModel.first { $0.0 === entry.session.pipeline.sampler.model }?.1
            }
        }
        self.budget = MemoryBudget(capacity: options.memoryBudgetBytes)
        self.serverPool = ServerReferencePool(folder: options.referencesDir)
        // Exported from the start (as 0), as Prometheus counters should be.
        metrics.add("colorize_images", help: Self.colorizeImagesHelp, 0)
        metrics.add("bss_images", help: Self.bssImagesHelp, 0)
        metrics.add("requests_cancelled", help: Self.cancelledHelp, 0)
        metrics.add("requests_refused_busy", help: Self.busyHelp, 0)
    }

    static let cancelledHelp = "Jobs stopped before the end: client gone, deadline passed or shutdown."
    static let busyHelp = "Requests refused with 503 because the job slots or the memory budget were full."

    /// Waits up to `timeout` seconds, after `beginShutdown`, until no job runs and the stream
    /// worker has ended (model calls use the kernels' threads and buffers, which must not be
    /// torn down under them); false at the timeout.
    @discardableResult
    public func waitIdle(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        guard scheduler.waitStopped(timeout: timeout) else { return false }
        while true {
            stateLock.lock()
            let jobs = runningJobs
            stateLock.unlock()
            if jobs == 0 { return true }
            if Date() >= deadline { return false }
            usleep(5_000)
        }
    }

    /// Whether new work is refused (after `beginShutdown`).
    public var isShuttingDown: Bool { stateLock.lock(); defer { stateLock.unlock() }; return shuttingDown }

    /// Refuse new work (503) from now on and end the streams.
    public func beginShutdown() {
        stateLock.lock()
        shuttingDown = true
        stateLock.unlock()
        scheduler.stop()
        for m in models { m.batcher?.stop() }
    }

    /// The exposition text of /metrics.
    public func metricsText() -> String {
        stateLock.lock()
        let generated = generateCalls
        stateLock.unlock()
        stateLock.lock()
        let jobs = runningJobs
        stateLock.unlock()
        return metrics.render(streams: scheduler.totals(), generateCalls: generated, activeStreams: scheduler.streams.count)
            + "# HELP millrace_jobs_running Long jobs running or waiting for the model.\n# TYPE millrace_jobs_running gauge\nmillrace_jobs_running \(jobs)\n"
            + "# HELP millrace_memory_reserved_bytes Bytes reserved in the memory budget.\n# TYPE millrace_memory_reserved_bytes gauge\nmillrace_memory_reserved_bytes \(budget.reserved)\n"
            + "# HELP millrace_memory_budget_bytes The memory budget.\n# TYPE millrace_memory_budget_bytes gauge\nmillrace_memory_budget_bytes \(budget.capacity)\n"
            + (models[0].batcher.map {
                $0.batchRows.render("millrace_batch_rows", help: "Rows per shared model call (the default model).")
                    + $0.queueWaitMs.render("millrace_batch_queue_wait_ms", help: "Milliseconds a caller waited for its shared call.")
            } ?? "")
    }

    /// Entry point for the HTTP server.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        let start = Date()
        var (route, response) = route(request)
        metrics.record(route: route, status: response.status, seconds: Date().timeIntervalSince(start))
        if response.status == 503 && response.headers.contains(where: { $0.0 == "Retry-After" }) {
            metrics.add("requests_refused_busy", help: Self.busyHelp)
        }
        if response.headers.contains(where: { $0.0 == "Content-Type" && $0.1.hasPrefix("text/html") }) {
            response.headers.append(("Content-Security-Policy", Self.pagePolicy))
            response.headers.append(("X-Frame-Options", "DENY"))
        }
        return response
    }

    /// The page's Content-Security-Policy: its own scripts, styles and API only; images also
    /// from blob: URLs (stream frames) and data: URLs; no framing.
    static let pagePolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        + "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"


    func route(_ r: HTTPRequest) -> (String, HTTPResponse) {
        let parts = r.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        stateLock.lock()
        let down = shuttingDown
        stateLock.unlock()
        if parts.first == "v1" {
            if let refusal = crossSiteRefusal(r) { return ("v1", .error(403, refusal)) }
            if down { return ("v1", .error(503, "the server is shutting down")) }
            if let token = options.token {
                guard Self.constantTimeEqual(r.headers["authorization"] ?? "", "Bearer \(token)") else {
                    return ("v1", .error(401, "missing or wrong bearer token"))
                }
            }
            if r.bodyTooLarge { return ("v1", .error(413, "request body is over the limit")) }
            if let refusal = contentTypeRefusal(r, parts: parts) { return ("v1", .error(415, refusal)) }
        }
        let m = r.method
        // The stream id, when the path is /v1/streams/{id} or /v1/streams/{id}/<rest>.
        let id = parts.count >= 3 && parts[0] == "v1" && parts[1] == "streams" ? parts[2] : ""
        if parts == ["healthz"] {
            return ("/healthz", m == "GET" ? .json(["status": down ? "shutting down" : "ok"]) : methodNotAllowed("GET"))
        }
        if parts == ["metrics"] {
            guard m == "GET" else { return ("/metrics", methodNotAllowed("GET")) }
            let text = metricsText()
            return ("/metrics", HTTPResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4")], body: .bytes(Array(text.utf8))))
        }
        if parts == ["v1", "info"] {
            guard m == "GET" else { return ("/v1/info", methodNotAllowed("GET")) }
            let c = folder.config
            return ("/v1/info", .json(["classes": folder.flow.classNames, "null_class": folder.flow.nullClass as Any? ?? NSNull(),
                                       "sample_size": c.sampleSize, "default_guidance": folder.flow.defaultGuidance,
                                       "max_streams": options.maxStreams,
                                       "reference_pool_images": serverPool.imageCount as Any? ?? NSNull()]))
        }
        if parts == ["v1", "models"] {
            guard m == "GET" else { return ("/v1/models", methodNotAllowed("GET")) }
            return ("/v1/models", .json(["default": models[0].name, "models": models.map(\.description)]))
        }
        if parts == ["v1", "generate"] { return ("/v1/generate", m == "POST" ? generate(r) : methodNotAllowed("POST")) }
        if parts == ["v1", "generate", "stream"] {
            return ("/v1/generate/stream", m == "GET" ? generateStream(r) : methodNotAllowed("GET"))
        }
        if parts == ["v1", "colorize"] { return ("/v1/colorize", m == "POST" ? colorize(r) : methodNotAllowed("POST")) }
        if parts == ["v1", "bss"] { return ("/v1/bss", m == "POST" ? bss(r) : methodNotAllowed("POST")) }
        if parts == ["v1", "streams"] { return ("/v1/streams", m == "POST" ? createStream(r) : methodNotAllowed("POST")) }
        if parts.count == 4 && !id.isEmpty && parts[3] == "frames" {
            return ("/v1/streams/{id}/frames", m == "POST" ? postFrame(r, id: id) : methodNotAllowed("POST"))
        }
        if parts.count == 4 && !id.isEmpty && parts[3] == "output" {
            return ("/v1/streams/{id}/output", m == "GET" ? streamOutput(id: id, query: r.query) : methodNotAllowed("GET"))
        }
        if parts.count == 3 && !id.isEmpty {
            switch m {
            case "PATCH": return ("/v1/streams/{id}", patchStream(r, id: id))
            case "GET": return ("/v1/streams/{id}", streamStats(id: id))
            case "DELETE":
                guard scheduler.stream(id) != nil else { return ("/v1/streams/{id}", .error(404, "no stream '\(id)'")) }
                scheduler.remove(id)
                return ("/v1/streams/{id}", .json(["deleted": id]))
            default: return ("/v1/streams/{id}", methodNotAllowed("GET, PATCH, DELETE"))
            }
        }
        if parts.first == "v1" { return ("v1", .error(404, "no route \(m) \(r.path)")) }
        if m == "GET" || m == "HEAD" {
            if parts.first == "clips" { return ("clips", staticFile(Array(parts.dropFirst()), root: options.clipsDir)) }
            return ("static", staticFile(parts, root: options.staticDir))
        }
        return ("other", methodNotAllowed("GET"))
    }

    // MARK: Cross-site requests

    /// Why a /v1 request is refused as cross-site (403), or nil. A browser page from another
    /// site can send requests to a loopback server, and a rebound DNS name can make them look
    /// same-origin: the request's `Host` must be a loopback name (or one the server was told
    /// to accept), its `Origin`, when sent, must be this server, and `Sec-Fetch-Site`, when
    /// sent, must not say another site (browsers send it where they send no `Origin`, as for
    /// an `<img>` on a foreign page).
    func crossSiteRefusal(_ r: HTTPRequest) -> String? {
        let host = (r.headers["host"] ?? "").lowercased()
        if options.checkHost && !Self.isAllowedHost(host, allowed: options.allowedHosts) {
            return "Host '\(host.prefix(100))' is not this server's name: use 127.0.0.1, localhost or ::1 (or start the server with --allow-host NAME)"
        }
        if let origin = r.headers["origin"]?.lowercased() {
            guard Self.isOwnOrigin(origin, host: host, allowed: options.allowedHosts) else {
                return "cross-site request from '\(origin.prefix(100))' refused: the API answers only pages this server serves"
            }
        }
        if let site = r.headers["sec-fetch-site"]?.lowercased(), site == "cross-site" || site == "same-site" {
            return "cross-site request refused (Sec-Fetch-Site: \(site)): the API answers only pages this server serves"
        }
        return nil
    }

    /// Whether `origin` is this server: the request's own `Host`, or another loopback name (or
    /// an allowed one) with the same port (a page from http://localhost:8080 calling
    /// 127.0.0.1:8080 is the same server).
    static func isOwnOrigin(_ origin: String, host: String, allowed: [String]) -> Bool {
        if origin == "http://" + host || origin == "https://" + host { return true }
        guard let schemeEnd = origin.range(of: "://") else { return false }
        let originHost = String(origin[schemeEnd.upperBound...])
        return isAllowedHost(originHost, allowed: allowed) && isAllowedHost(host, allowed: allowed)
            && port(of: originHost) == port(of: host)
    }

    /// The port of a Host value ("" when none is given).
    static func port(of host: String) -> String {
        if host.hasPrefix("[") { return host.range(of: "]:").map { String(host[$0.upperBound...]) } ?? "" }
        return host.lastIndex(of: ":").map { String(host[host.index(after: $0)...]) } ?? ""
    }

    /// Whether `host` (a Host header: name or address, optional port) is a loopback name or
    /// one of `allowed`.
    static func isAllowedHost(_ host: String, allowed: [String]) -> Bool {
        var name = host
        if name.hasPrefix("[") {
            guard let end = name.firstIndex(of: "]") else { return false }
            name = String(name[name.index(after: name.startIndex)..<end])
        } else if let colon = name.lastIndex(of: ":") {
            name = String(name[..<colon])
        }
        if name == "localhost" || name == "::1" || allowed.contains(where: { $0.lowercased() == name }) { return true }
        let octets = name.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }

    /// Why a JSON route's body is refused for its type (415), or nil: a body must be sent as
    /// `application/json` (a page on another site can send `text/plain` without asking first).
    func contentTypeRefusal(_ r: HTTPRequest, parts: [String]) -> String? {
        let json = (parts == ["v1", "generate"] && r.method == "POST") || (parts == ["v1", "streams"] && r.method == "POST")
            || (parts.count == 3 && parts[1] == "streams" && r.method == "PATCH")
        guard json, !r.body.isEmpty else { return nil }
        let type = (r.headers["content-type"] ?? "").split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        return type == "application/json" ? nil : "send the body as Content-Type: application/json (got '\(type.prefix(60))')"
    }

    /// Compares two strings in time that depends on their lengths only, not on where they differ.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) {
            diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
        }
        return diff == 0
    }

    func methodNotAllowed(_ allowed: String) -> HTTPResponse {
        var r = HTTPResponse.error(405, "method not allowed; use \(allowed)")
        r.headers.append(("Allow", allowed))
        return r
    }

    // MARK: Static files

    static let contentTypes = ["html": "text/html; charset=utf-8", "css": "text/css; charset=utf-8",
                               "js": "text/javascript; charset=utf-8", "png": "image/png", "jpg": "image/jpeg",
                               "json": "application/json", "svg": "image/svg+xml", "ico": "image/x-icon", "txt": "text/plain; charset=utf-8"]

    /// A file under `root`; no path escapes it (no "..", no hidden names, no symlinks out).
    func staticFile(_ parts: [String], root rootPath: String) -> HTTPResponse {
        let rel = parts.isEmpty ? ["index.html"] : parts
        // No component may climb out of the folder or be hidden.
        guard rel.allSatisfy({ !$0.isEmpty && $0 != ".." && $0 != "." && !$0.hasPrefix(".") && !$0.contains("\\") && !$0.contains("\0") }) else {
            return .error(404, "not found")
        }
        let root = URL(fileURLWithPath: rootPath).standardizedFileURL.resolvingSymlinksInPath()
        let file = rel.reduce(root) { $0.appendingPathComponent($1) }.standardizedFileURL.resolvingSymlinksInPath()
        guard file.path.hasPrefix(root.path + "/") else { return .error(404, "not found") }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file.path, isDirectory: &isDir), !isDir.boolValue,
              let data = FileManager.default.contents(atPath: file.path) else {
            return .error(404, "not found")
        }
        let type = Self.contentTypes[file.pathExtension.lowercased()] ?? "application/octet-stream"
        return HTTPResponse(status: 200, headers: [("Content-Type", type), ("Cache-Control", "no-cache")], body: .bytes([UInt8](data)))
    }

    // MARK: Generation parameters

    struct GenerateParams {
        var classes: [Int]
        var steps = 16
        var seed: UInt64 = 0
        var guidance: Float = 1
        var count = 1
        var upscale = 4
        var model: ServedModel
        /// nil: uniform; otherwise the BOSS grid for `steps`.
        var grid: [Float]?
        var source = SourceDistribution.gaussian
        var solver = Solver.euler
        /// Model evaluations per step.
        var evaluationsPerStep: Int { solver == .heun ? 2 : 1 }
    }

    /// The served model named `name` (nil: the default); 400 naming the models otherwise.
    func model(named name: Any?) throws -> ServedModel {
        guard let name else { return models[0] }
        guard let s = name as? String, let m = models.first(where: { $0.name == s }) else {
            throw StreamError("'model' must be one of \(models.map(\.name)) (GET /v1/models)")
        }
        return m
    }

    func parseJSONObject(_ body: [UInt8]) throws -> [String: Any] {
        if body.isEmpty { return [:] }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(body)), let dict = obj as? [String: Any] else {
            throw StreamError("body is not a JSON object")
        }
        return dict
    }

    func generateParams(_ d: [String: Any]) throws -> GenerateParams {
        func int(_ key: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let v = d[key] else { return nil }
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(),
                  range.contains(Int(exactly: n.doubleValue.rounded()) ?? Int.min) else {
                throw StreamError("'\(key)' must be an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return n.intValue
        }
        let known: Set = ["class", "steps", "seed", "guidance", "schedule", "source", "solver", "count", "upscale", "model"]
        if let unknown = d.keys.first(where: { !known.contains($0) }) { throw StreamError("unknown parameter '\(unknown)'") }
        let model = try model(named: d["model"])
        if let problem = model.sampler.imageProblem { throw StreamError("model '\(model.name)' cannot generate: \(problem)") }
        let folder = model.folder
        let cls = d["class"].map { "\($0)" } ?? "0"
        var p = GenerateParams(classes: try ClassSelection.parse(cls, flow: folder.flow, config: folder.config), model: model)
        p.steps = try int("steps", 1...200) ?? p.steps
        p.seed = UInt64(try int("seed", 0...Int(Int32.max)) ?? 0)
        p.count = try int("count", 1...16) ?? p.count
        p.upscale = try int("upscale", 1...16) ?? p.upscale
        if let g = d["guidance"] {
            guard let n = g as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite, n.doubleValue >= 0, n.doubleValue <= 20 else {
                throw StreamError("'guidance' must be a number in 0...20")
            }
            p.guidance = n.floatValue
        } else {
            p.guidance = Float(folder.flow.defaultGuidance)
        }
        // The same choices as the CLI's --schedule, --source and --solver, checked against what
        // the model's folder holds (GET /v1/models says it).
        switch d["schedule"].map({ "\($0)" }) ?? "uniform" {
        case "uniform": p.grid = nil
        case "boss":
            guard model.bossSteps.contains(p.steps) else {
                throw StreamError(model.bossSteps.isEmpty
                    ? "model '\(model.name)' has no BOSS schedules (make them with gen schedule boss)"
                    : "model '\(model.name)' has BOSS schedules for steps \(model.bossSteps), not \(p.steps)")
            }
            let grid = try BOSS.Schedules.times(steps: p.steps, modelFolder: folder.path)
            try Schedule.validate(grid)
            p.grid = grid
        default: throw StreamError("'schedule' must be uniform or boss")
        }
        guard let source = SourceDistribution(rawValue: d["source"].map { "\($0)" } ?? "gaussian") else {
            throw StreamError("'source' must be gaussian or pruned")
        }
        if source == .pruned && !model.hasPruningSet {
            throw StreamError("model '\(model.name)' has no pruning set for source 'pruned' (make it with gen prune-axes)")
        }
        p.source = source
        guard let solver = Solver(rawValue: d["solver"].map { "\($0)" } ?? "euler") else { throw StreamError("'solver' must be euler or heun") }
        p.solver = solver
        return p
    }

    // MARK: Jobs: admission, deadlines, cancellation

    /// Why a job is refused before it starts: 413 when it could never fit the server's limits,
    /// 503 with `Retry-After` when the job slots or the memory budget are full now.
    struct JobRefusal: Error {
        let status: Int
        let message: String
        var response: HTTPResponse { status == 503 ? .busy(message) : .error(status, message) }
    }

    /// Why a job stopped before its end.
    struct JobStopped: Error { let reason: String }

    /// A long job's slot and memory, held until the job (and this object) ends.
    final class Job: @unchecked Sendable {
        private let service: MillraceService
        private let reservation: MemoryBudget.Reservation
        let deadline: Date
        private let clientGone: @Sendable () -> Bool

        fileprivate init(service: MillraceService, reservation: MemoryBudget.Reservation, deadline: Date,
                         clientGone: @escaping @Sendable () -> Bool) {
            self.service = service
            self.reservation = reservation
            self.deadline = deadline
            self.clientGone = clientGone
        }

        /// Why the job must stop now (shutdown, client gone, deadline), or nil to go on.
        func stopReason() -> String? {
            if service.isShuttingDown { return "the server is shutting down" }
            if clientGone() { return "the client disconnected" }
            if Date() > deadline {
                return "the request ran past the server's deadline of \(Int(service.options.requestTimeout)) s (gen serve --request-timeout)"
            }
            return nil
        }

        /// Throws `JobStopped` (and counts it) when the job must stop.
        func check() throws {
            if let why = stopReason() {
                service.metrics.add("requests_cancelled", help: MillraceService.cancelledHelp)
                throw JobStopped(reason: why)
            }
        }

        deinit {
            reservation.release()
            service.stateLock.lock()
            service.runningJobs -= 1
            service.stateLock.unlock()
        }
    }

    /// Admits a job that will hold `bytes` of working memory, or refuses it.
    func admitJob(bytes: Int, clientGone: @escaping @Sendable () -> Bool) throws -> Job {
        guard bytes <= budget.capacity else {
            throw JobRefusal(status: 413, message: "this request needs about \(bytes >> 20) MiB of working memory, over the server's "
                             + "budget of \(budget.capacity >> 20) MiB (gen serve --memory-budget): ask for less")
        }
        stateLock.lock()
        guard runningJobs < options.maxJobs else {
            stateLock.unlock()
            throw JobRefusal(status: 503, message: "the server is busy (\(options.maxJobs) jobs running or waiting); retry shortly")
        }
        guard let reservation = budget.reserve(bytes) else {
            stateLock.unlock()
            throw JobRefusal(status: 503, message: "the server's memory budget is full; retry shortly")
        }
        runningJobs += 1
        stateLock.unlock()
        return Job(service: self, reservation: reservation, deadline: Date().addingTimeInterval(options.requestTimeout),
                   clientGone: clientGone)
    }

    // MARK: Generation

    /// Model rows one step of this request costs.
    func generationRows(_ p: GenerateParams) -> Int {
        p.classes.count * p.count * p.model.sampler.rowsPerSample(guidance: p.guidance)
    }

    /// Width and height of the picture a request makes (one image, or a grid of `count` columns).
    func pictureSize(_ p: GenerateParams) -> (width: Int, height: Int) {
        let side = p.model.folder.config.sampleSize * p.upscale
        let n = p.classes.count * p.count
        if n == 1 { return (side, side) }
        let cols = min(p.count, n), rows = (n + cols - 1) / cols
        return (cols * side + (cols - 1) * 2, rows * side + (rows - 1) * 2)
    }

    /// Bytes a generation holds: the samples and their velocities, one model call's
    /// activations (calls are at most `maxRowsPerCall` rows) and the picture.
    func generationBytes(_ p: GenerateParams) -> Int {
        let c = p.model.folder.config
        let sampleFloats = c.inChannels * c.sampleSize * c.sampleSize
        let n = p.classes.count * p.count
        let rowsPerCall = min(generationRows(p), max(1, options.maxRowsPerCall))
        let (w, h) = pictureSize(p)
        return n * sampleFloats * 4 * 6 + rowsPerCall * p.model.folder.model.activationBytesPerRow + w * h * 16
    }

    /// Refuses (413) a request whose rows × steps or picture is over the limits, before any work.
    func checkGenerationCost(_ p: GenerateParams) throws {
        let rows = generationRows(p) * p.evaluationsPerStep
        guard rows * p.steps <= options.maxGenerateWork else {
            throw JobRefusal(status: 413, message: "this request costs \(rows) model rows × \(p.steps) steps = \(rows * p.steps), over the "
                             + "server's limit of \(options.maxGenerateWork) (gen serve --max-generate-work): ask for fewer classes, images or steps")
        }
        let (w, h) = pictureSize(p)
        guard w * h <= options.maxOutputPixels else {
            throw JobRefusal(status: 413, message: "the picture would be \(w)x\(h), over the server's limit of \(options.maxOutputPixels) "
                             + "pixels (gen serve --max-output-pixels): lower 'upscale' or 'count'")
        }
    }

    /// Runs a generation in calls of at most `maxRowsPerCall` rows, taking the model lock for
    /// each call (so streams keep their pace), and checking `job` before every step: it throws
    /// `JobStopped` within one step of a disconnect, the deadline or a shutdown.
    /// `onStep` gets every step's data estimate except the last.
    func runGeneration(_ p: GenerateParams, job: Job, onStep: ((Int, Int, Tensor) -> Void)? = nil) throws -> RGBImage {
        let c = p.model.folder.config
        let batcher = p.model.batcher
        // With batching, the batcher takes the model lock for each shared call; without, each
        // of this generation's calls takes it here.
        // A generation does not make calls wait for it (it has work of its own between steps):
        // its steps join whatever call is next, and the rows that queued meanwhile share it.
        let sampler = p.model.generationSampler
        var labels: [Int] = []
        for cls in p.classes { labels += [Int](repeating: cls, count: p.count) }
        try job.check()
        let x0 = try p.model.draw(p.source, count: labels.count, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: p.seed)
        var stopped: JobStopped?
        let lock = modelLock
        let x1 = sampler.integrate(x0, schedule: p.grid ?? Schedule.uniform(steps: p.steps), labels: c.numClassEmbeds == nil ? nil : labels,
                                   guidance: p.guidance, solver: p.solver,
                                   progress: { step, steps, estimate in
                                       if step == steps { return true }
                                       onStep?(step, steps, estimate)
                                       do { try job.check() } catch { stopped = error as? JobStopped; return step == steps }
                                       return true
                                   },
                                   samplesPerCall: max(1, options.maxRowsPerCall / sampler.rowsPerSample(guidance: p.guidance)),
                                   around: { call in batcher == nil ? lock.withLock(call) : call() })
        stateLock.lock(); generateCalls += p.steps; stateLock.unlock()
        if let stopped { throw stopped }
        return try picture(x1, p)
    }

    func picture(_ x: Tensor, _ p: GenerateParams) throws -> RGBImage {
        let images = try RGBImage.batch(from: x, scale: Float(p.model.sampler.flow.normScale)).map {
            p.upscale > 1 ? $0.resizedNearest(width: $0.width * p.upscale, height: $0.height * p.upscale) : $0
        }
        return images.count == 1 ? images[0] : RGBImage.grid(images, columns: p.count, padding: 2)
    }

    func generate(_ r: HTTPRequest) -> HTTPResponse {
        do {
            let p = try generateParams(try parseJSONObject(r.body))
            try checkGenerationCost(p)
            let job = try admitJob(bytes: generationBytes(p), clientGone: r.isClientGone)
            let png = try runGeneration(p, job: job).pngData()
            return HTTPResponse(status: 200, headers: [("Content-Type", "image/png")], body: .bytes(png))
        } catch let e as JobRefusal {
            return e.response
        } catch let e as JobStopped {
            return .busy("generation stopped: \(e.reason)")
        } catch {
            return .error(400, "\(error)")
        }
    }

    static let boundary = "millraceframe"

    static func multipartPart(_ image: [UInt8], type: String = "image/png") -> [UInt8] {
        Array("--\(boundary)\r\nContent-Type: \(type)\r\nContent-Length: \(image.count)\r\n\r\n".utf8) + image + Array("\r\n".utf8)
    }

    static let multipartEnd = Array("--\(boundary)--\r\n".utf8)

    /// The data estimate after every step, then the final image, as multipart PNG parts. The
    /// generation runs on its own thread and stops within one step when the client leaves.
    func generateStream(_ r: HTTPRequest) -> HTTPResponse {
        var d: [String: Any] = [:]
        for (k, v) in r.query { d[k] = k == "class" || k == "schedule" || k == "source" ? v : (Double(v).map { NSNumber(value: $0) } ?? v) }
        let p: GenerateParams
        let job: Job
        let body = HTTPStreamBody()
        do {
            p = try generateParams(d)
            try checkGenerationCost(p)
            let gone = r.isClientGone
            job = try admitJob(bytes: generationBytes(p), clientGone: { body.isCancelled || gone() })
        } catch let e as JobRefusal {
            return e.response
        } catch {
            return .error(400, "\(error)")
        }
        let work = UncheckedSendable((self, p, job, body))
        Thread.detachNewThread {
            let (service, params, job, body) = work.value
            do {
                let final = try service.runGeneration(params, job: job) { _, _, estimate in
                    // A slow reader gets the newest estimate; the encoding is skipped once it has gone.
                    if !body.isCancelled, let png = try? service.picture(estimate, params).pngData(fast: true) {
                        body.offer(Self.multipartPart(png))
                    }
                }
                body.finish(Self.multipartPart(try final.pngData()) + Self.multipartEnd)
            } catch {
                body.finish(Self.multipartEnd)
            }
        }
        return HTTPResponse(status: 200, headers: [("Content-Type", "multipart/x-mixed-replace; boundary=\(Self.boundary)"),
                                                   ("Cache-Control", "no-cache")], body: .stream(body))
    }

    // MARK: Streams

    func streamSettings(_ d: [String: Any], base: StreamSettings?, sampler: FlowSampler) throws -> StreamSettings {
        var s = base ?? StreamSettings(classIndex: 0)
        if let c = d["class"] {
            s.classIndex = try ClassSelection.parse("\(c)", flow: sampler.flow, config: sampler.model.config)[0]
        }
        if let g = d["rcfg"] {
            guard let str = g as? String, let mode = StreamGuidance(rawValue: str) else { throw StreamError("'rcfg' must be none, full, self or onetime") }
            s.guidance = mode
        }
        if let g = d["guidance"] {
            guard let n = g as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else { throw StreamError("'guidance' must be a number") }
            s.scale = n.floatValue
        }
        if let g = d["delta"] {
            guard let n = g as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else { throw StreamError("'delta' must be a number") }
            s.delta = n.floatValue
        }
        return s
    }

    func createStream(_ r: HTTPRequest) -> HTTPResponse {
        do {
            let d = try parseJSONObject(r.body)
            let known: Set = ["class", "rcfg", "guidance", "delta", "strength", "steps", "t_list", "similarity", "max_skip", "filter",
                              "size", "seed", "model"]
            if let unknown = d.keys.first(where: { !known.contains($0) }) { throw StreamError("unknown parameter '\(unknown)'") }
            guard scheduler.streams.count < options.maxStreams else { return .error(429, "too many streams (limit \(options.maxStreams))") }
            func num(_ key: String) throws -> Double? {
                guard let v = d[key] else { return nil }
                guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else { throw StreamError("'\(key)' must be a number") }
                return n.doubleValue
            }
            let times: [Float]
            if let list = d["t_list"] {
                guard let arr = list as? [NSNumber], !arr.isEmpty, arr.count <= 8 else { throw StreamError("'t_list' must be a list of 1 to 8 numbers") }
                times = arr.map(\.floatValue)
            } else {
                let steps = try num("steps") ?? 2
                guard steps == steps.rounded(), steps >= 1, steps <= 8 else { throw StreamError("'steps' must be an integer in 1...8") }
                times = try StreamPipeline.times(strength: Float(try num("strength") ?? 0.6), steps: Int(steps))
            }
            let model = try model(named: d["model"])
            if let problem = model.sampler.imageProblem { throw StreamError("model '\(model.name)' cannot run a stream: \(problem)") }
            let settings = try streamSettings(d, base: nil, sampler: model.sampler)
            let seed = UInt64(max(0, min(try num("seed") ?? 0, Double(Int32.max))))
            let pipeline = try StreamPipeline(sampler: model.streamSampler, times: times, settings: settings, seed: seed)
            let f = try filterFields(d)
            let session = StreamSession(pipeline: pipeline, filter: f.on ?? true
                ? SimilarityFilter(threshold: f.similarity ?? 0.98, maxSkip: f.maxSkip ?? 10, side: model.folder.config.sampleSize, seed: seed)
                : nil)
            if let size = try num("size") {
                guard size >= 8 && size <= 1024 && size == size.rounded() else { throw StreamError("'size' must be an integer in 8...1024") }
                session.outputSize = (Int(size), Int(size))
            }
            let entry = scheduler.add(session, id: streamIDPrefix.map { "\($0)s\(nextStreamNumber())" })
            scheduler.start()
            return .json(["id": entry.id], status: 201)
        } catch {
            return .error(400, "\(error)")
        }
    }

    func postFrame(_ r: HTTPRequest, id: String) -> HTTPResponse {
        guard scheduler.stream(id) != nil else { return .error(404, "no stream '\(id)'") }
        let type = (r.headers["content-type"] ?? "").lowercased()
        guard type.hasPrefix("image/png") || type.hasPrefix("image/jpeg") else {
            return .error(415, "frames must be image/png or image/jpeg")
        }
        stateLock.lock()
        let now = Date()
        var window = frameWindows[id] ?? (now, 0)
        if now.timeIntervalSince(window.start) >= 1 { window = (now, 0) }
        window.count += 1
        frameWindows[id] = window
        stateLock.unlock()
        if Double(window.count) > options.maxFramesPerSecond {
            return .error(429, "more than \(Int(options.maxFramesPerSecond)) frames per second")
        }
        do {
            // The decoded size is read from the header and reserved before decoding.
            let (_, w, h) = try RGBImage.probe(r.body)
            guard w * h <= options.maxImagePixels else {
                return .error(413, "the frame is \(w)x\(h), over the server's limit of \(options.maxImagePixels) pixels")
            }
            guard let reservation = budget.reserve(w * h * 16) else { return .busy("the server's memory budget is full; retry shortly") }
            defer { reservation.release() }
            let image = try RGBImage.decode(r.body, maxPixels: options.maxImagePixels)
            guard scheduler.submit(image, to: id) else { return .error(404, "no stream '\(id)'") }
            return .json(["accepted": true], status: 202)
        } catch {
            return .error(415, "\(error)")
        }
    }

    /// The output format a viewer asks for: PNG (lossless, the default) or JPEG with a quality,
    /// which standard clients of multipart/x-mixed-replace read (ffmpeg's mpjpeg demuxer,
    /// OpenCV, VLC, OBS; an `<img>` reads both).
    enum OutputFormat: Equatable { case png, jpeg(quality: Int) }

    static func outputFormat(_ query: [String: String]) throws -> OutputFormat {
        let known: Set = ["format", "quality"]
        if let unknown = query.keys.first(where: { !known.contains($0) }) { throw StreamError("unknown query argument '\(unknown.prefix(40))'") }
        switch query["format"]?.lowercased() ?? "png" {
        case "png":
            guard query["quality"] == nil else { throw StreamError("'quality' applies to format=jpeg only") }
            return .png
        case "jpeg", "jpg":
            let q = query["quality"].map { Int($0) } ?? 85
            guard let q, (1...100).contains(q) else { throw StreamError("'quality' must be an integer in 1...100") }
            return .jpeg(quality: q)
        default:
            throw StreamError("'format' must be png or jpeg")
        }
    }

    /// The newest frame of each stream encoded as JPEG, per quality: encoded once for all the
    /// viewers that ask for it (on the thread that publishes the frame).
    final class JPEGFrames: @unchecked Sendable {
        private let lock = NSLock()
        private var cache: [String: (index: Int, bytes: [UInt8])] = [:]

        func bytes(stream: String, frame: StreamFrame, quality: Int) -> [UInt8]? {
            let key = "\(stream)|\(quality)"
            lock.lock()
            defer { lock.unlock() }
            if let c = cache[key], c.index == frame.index { return c.bytes }
            guard let jpeg = try? frame.image.jpegData(quality: quality) else { return nil }
            cache[key] = (frame.index, jpeg)
            return jpeg
        }

        func forget(stream: String) {
            lock.lock()
            cache = cache.filter { !$0.key.hasPrefix(stream + "|") }
            lock.unlock()
        }
    }

    func streamOutput(id: String, query: [String: String] = [:]) -> HTTPResponse {
        guard let entry = scheduler.stream(id) else { return .error(404, "no stream '\(id)'") }
        let format: OutputFormat
        do { format = try Self.outputFormat(query) } catch { return .error(400, "\(error)") }
        // Frames are pushed to the viewer as they are published (no thread waits for them); a
        // slow viewer skips to the newest frame.
        let body = HTTPStreamBody()
        let jpegs = jpegFrames
        let viewer = entry.output.observe { frame in
            guard let frame else { body.finish(Self.multipartEnd); jpegs.forget(stream: id); return }
            switch format {
            case .png:
                body.offer(Self.multipartPart(frame.png))
            case .jpeg(let quality):
                if let jpeg = jpegs.bytes(stream: id, frame: frame, quality: quality) {
                    body.offer(Self.multipartPart(jpeg, type: "image/jpeg"))
                }
            }
        }
        body.onCancel { entry.output.stopObserving(viewer) }
        return HTTPResponse(status: 200, headers: [("Content-Type", "multipart/x-mixed-replace; boundary=\(Self.boundary)"),
                                                   ("Cache-Control", "no-cache")], body: .stream(body))
    }

    func streamStats(id: String) -> HTTPResponse {
        guard let e = scheduler.stream(id) else { return .error(404, "no stream '\(id)'") }
        let (processed, skipped, settings, times) = e.withSession { ($0.framesProcessed, $0.framesSkipped, $0.pipeline.settings, $0.pipeline.times) }
        return .json(["id": id, "frames_in": e.input.received, "dropped": e.input.dropped, "processed": processed,
                      "skipped": skipped, "out": e.outputs, "errors": e.errors, "last_error": e.lastError as Any? ?? NSNull(),
                      "class": settings.classIndex, "rcfg": settings.guidance.rawValue, "guidance": settings.scale,
                      "slots": times])
    }

    /// The similarity filter's fields of a stream request, each nil when absent: `filter`
    /// (true or false), `similarity` (0...1) and `max_skip` (an integer in 0...1000).
    func filterFields(_ d: [String: Any]) throws -> (on: Bool?, similarity: Float?, maxSkip: Int?) {
        var on: Bool?, similarity: Float?, maxSkip: Int?
        if let v = d["filter"] {
            guard let n = v as? NSNumber, isJSONBool(n) else { throw StreamError("'filter' must be true or false") }
            on = n.boolValue
        }
        if let v = d["similarity"] {
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue >= 0 && n.doubleValue <= 1 else {
                throw StreamError("'similarity' must be a number in 0...1")
            }
            similarity = n.floatValue
        }
        if let v = d["max_skip"] {
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(),
                  n.doubleValue >= 0 && n.doubleValue <= 1000 else {
                throw StreamError("'max_skip' must be an integer in 0...1000")
            }
            maxSkip = n.intValue
        }
        return (on, similarity, maxSkip)
    }

    func patchStream(_ r: HTTPRequest, id: String) -> HTTPResponse {
        guard let entry = scheduler.stream(id) else { return .error(404, "no stream '\(id)'") }
        do {
            let d = try parseJSONObject(r.body)
            let known: Set = ["class", "rcfg", "guidance", "delta", "filter", "similarity", "max_skip"]
            if let unknown = d.keys.first(where: { !known.contains($0) }) { throw StreamError("unknown or fixed parameter '\(unknown)'") }
            // Every value is checked before anything changes: a bad PATCH leaves the stream as it was.
            let f = try filterFields(d)
            try entry.withSession { session in
                let s = try streamSettings(d, base: session.pipeline.settings, sampler: session.pipeline.sampler)
                try session.pipeline.update(s)
                if let on = f.on {
                    session.filter = on ? (session.filter ?? SimilarityFilter(side: session.pipeline.sampler.model.config.sampleSize, seed: 0)) : nil
                }
                if let eta = f.similarity { session.filter?.threshold = eta }
                if let maxSkip = f.maxSkip { session.filter?.maxSkip = maxSkip }
            }
            return .json(["id": id, "updated": true])
        } catch {
            return .error(400, "\(error)")
        }
    }
}

