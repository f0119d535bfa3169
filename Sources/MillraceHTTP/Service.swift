import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging
import MillracePipelines


/// Millrace's HTTP service: generation, streams, static files (docs/API.md).
public final class MillraceService: @unchecked Sendable {
    public struct Options: Sendable {
        public var staticDir = "web-static"
        /// The served model a stream runs on when its request names none (nil: the one named
        /// `ModelFolder.streamModelName` where it is served, else `compositionModelName`, else
        /// the default model).
        public var streamModel: String?
        /// Sample clips served under /clips/ for the page's stream panel.
        public var clipsDir = "assets/clips"
        public var maxStreams = 8
        public var token: String?
        public var maxImagePixels = 4_000_000
        public var idleStreamSeconds: Double = 120
        public var maxFramesPerSecond: Double = 60
        /// The server's reference pool for /v1/colorize without uploaded references.
        public var referencesDir = "assets/references"
        /// The in-context colorization model folder of /v1/colorize (nil: retrieval only).
        public var colorModel: String?
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
    func nextStreamNumber() -> Int { streamNumberLock.withLock { streamNumber += 1; return streamNumber } }
    public let metrics = ServiceMetrics()
    /// Request bodies and jobs reserve their memory here first (docs/SECURITY.md).
    public let budget: MemoryBudget
    /// Serialises every model call (the layers keep per-call state); granted in turn.
    let modelLock: FairLock
    let stateLock = NSLock()
    private var shuttingDown = false
    var generateCalls = 0
    var runningJobs = 0
    /// Per stream: start of the current one-second window and frames posted in it.
    var frameWindows: [String: (start: Date, count: Int)] = [:]
    /// The server's reference pool, indexed on first use and again when its folder changes.
    let serverPool: ServerReferencePool
    /// The in-context colorization model (`Options.colorModel`), when it loads.
    public let colorFolder: ModelFolder?
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
             "sources": ["gaussian"] + (hasPruningSet ? ["pruned"] : []), "solvers": Solver.allCases.map(\.rawValue),
             "task": folder.flow.task ?? "generate", "stream_defaults": streamDefaults]
        }

        /// What a stream on this model starts from (`StreamPipeline.Defaults`): the page fills its
        /// Stream panel with it when the model is picked.
        var streamDefaults: [String: Any] {
            let d = StreamPipeline.Defaults(flow: folder.flow)
            return ["strength": d.strength, "steps": d.steps, "stepping": d.stepping.rawValue,
                    "rcfg": (folder.flow.nullClass == nil ? StreamGuidance.none : d.guidance).rawValue, "guidance": d.scale,
                    "structure": d.structure, "structure_floor": d.structureFloor,
                    "structure_target": d.structureTarget.rawValue]
        }
    }

    /// The models served, the default first.
    public let models: [ServedModel]
    /// The model a stream runs on when its request names none.
    public let streamDefault: ServedModel

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
        let streamNames = options.streamModel.map { [$0] } ?? [ModelFolder.streamModelName, ModelFolder.compositionModelName]
        self.streamDefault = streamNames.lazy.compactMap { name in served.first { $0.name == name } }.first ?? served[0]
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
        self.colorFolder = options.colorModel.flatMap { try? ModelFolder.load($0) }
            .flatMap { InContextColorizer.isColorizationModel(config: $0.config, flow: $0.flow) ? $0 : nil }
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
                                       "reference_pool_images": serverPool.imageCount as Any? ?? NSNull(),
                                       "colorize_methods": (colorFolder == nil ? [] : ["in-context"]) + ["retrieval", "prior"]]))
        }
        if parts == ["v1", "models"] {
            guard m == "GET" else { return ("/v1/models", methodNotAllowed("GET")) }
            return ("/v1/models", .json(["default": models[0].name, "stream_default": streamDefault.name, "models": models.map(\.description)]))
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
}
