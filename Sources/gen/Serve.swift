import ArgumentParser
import Dispatch
import Foundation
import MillraceCore
import MillracePipelines
import MillraceHTTP

/// `gen serve`: the HTTP service and the browser page.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve generation, streams, colorization and BSS over HTTP, and the page in web-static/ (docs/API.md).",
        discussion: """
        Binds 127.0.0.1 by default; any other host needs a token (--token-file FILE, the
        MILLRACE_TOKEN environment variable, or --token), and every /v1 route then checks
        `Authorization: Bearer <token>`. /v1 refuses cross-site requests (a foreign Origin or Host).
        Every request's cost is bounded before it runs; the limits below, their defaults and the
        attacks they answer are in docs/SECURITY.md. SIGINT or SIGTERM: new requests get 503, work
        in flight stops at its next step, exit code 0 within 5 s.
        Examples:
          gen serve                                  then open http://127.0.0.1:8080
          MILLRACE_TOKEN=s3cret gen serve --host 0.0.0.0 --port 9000 --max-streams 4
          gen serve --token-file /etc/millrace/token --host 0.0.0.0 --allow-host millrace.example
          gen serve --refs my-references             POST /v1/colorize without uploads uses this pool
          gen serve --model assets/models/emoji32 --model runs/straight-4   two models; "model" picks one
          gen serve --memory-budget 1024 --max-jobs 4 --request-timeout 30
        """)

    @Option(help: "Address to bind (IPv4 or IPv6 literal).")
    var host: String = "127.0.0.1"
    @Option(help: "Port (0: any free port).")
    var port: UInt16 = 8080
    @Option(help: "Model folder; repeat to serve several (the first is the default, GET /v1/models lists them; default: the shipped emoji model, the composition model and their shipped students, assets/models/emoji32-* and scenes64-*, and the stream model, scenes128-restyle, which streams default to).")
    var model: [String] = []
    @Option(name: .customLong("static"), help: "Folder of the page's files.")
    var staticDir: String = "web-static"
    @Option(help: "Most live streams.")
    var maxStreams: Int = 8
    @Option(help: "Largest request body in bytes.")
    var maxBody: Int = 8 << 20
    @Option(help: "Bearer token required on /v1 routes (required when --host is not loopback). Visible to other users in the process list: prefer --token-file or MILLRACE_TOKEN.")
    var token: String?
    @Option(help: "File whose first line is the bearer token.")
    var tokenFile: String?
    @Option(help: "A name besides the loopback names that the Host header may carry (repeatable), e.g. the name a reverse proxy forwards.")
    var allowHost: [String] = []
    @Option(help: "Reference pool of POST /v1/colorize when a request uploads no references (a folder of colour images; default: the shipped assets/references).")
    var refs: String?
    @Option(help: "In-context colorization model of POST /v1/colorize (default: the shipped assets/models/colorize32 when present; 'none': retrieval only).")
    var colorModel: String?
    @Option(help: "Most simultaneous connections (idle and slow ones included).")
    var maxConnections: Int = 4096
    @Option(help: "Most simultaneous connections from one address (0: no limit).")
    var maxConnectionsPerIp: Int = 0
    @Option(help: "Seconds a connection may stay silent before it is closed.")
    var idleTimeout: Int = 15
    @Option(help: "Seconds a client may take to send a request's headers.")
    var headerTimeout: Double = 10
    @Option(help: "Seconds a client may take to send a request's body.")
    var bodyTimeout: Double = 30
    @Option(help: "Seconds a job (generation, colorize, bss) may run before it is stopped.")
    var requestTimeout: Double = 60
    @Option(help: "Long jobs running or waiting for the model at once; more get 503.")
    var maxJobs: Int = 8
    @Option(help: "MiB that request bodies and jobs may hold at once; past it requests get 503.")
    var memoryBudget: Int = 2048
    @Option(help: "Most model rows × steps per generation request (rows: images, twice with guidance).")
    var maxGenerateWork: Int = 9216
    @Option(help: "Most pixels of a generated picture (after upscaling).")
    var maxOutputPixels: Int = 8_388_608
    @Option(help: "Most pixels of all images one request uploads (read from their headers before decoding).")
    var maxRequestPixels: Int = 16_000_000
    @Option(help: "Most rows of one shared model call: every stream's frame and every generation's step that are waiting run together (0: off, one caller per call; measure with `gen bench serve` whether the model's cost per row falls with the batch on this machine).")
    var maxBatchRows: Int = 0
    @Option(help: "This replica's name behind a reverse proxy (letters and digits): stream ids start with it, and deploy/nginx.conf.template routes each stream's requests by it (docs/DEPLOY.md).")
    var instance: String?
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        if try !isLoopback && (resolvedToken() ?? "").isEmpty {
            throw ValidationError("--host \(host) exposes the server beyond this machine: set a token (--token-file, MILLRACE_TOKEN or --token)")
        }
        guard maxStreams >= 1, maxBody >= 1024, maxConnections >= 4 else {
            throw ValidationError("--max-streams ≥ 1, --max-body ≥ 1024 and --max-connections ≥ 4")
        }
        guard maxJobs >= 1, memoryBudget >= 64, maxGenerateWork >= 1, maxOutputPixels >= 1024, maxRequestPixels >= 1024,
              idleTimeout >= 1, headerTimeout > 0, bodyTimeout > 0, requestTimeout > 0, maxConnectionsPerIp >= 0 else {
            throw ValidationError("--max-jobs ≥ 1, --memory-budget ≥ 64 (MiB), --max-generate-work ≥ 1, --max-output-pixels and "
                                  + "--max-request-pixels ≥ 1024, timeouts > 0, --max-connections-per-ip ≥ 0")
        }
        guard maxBatchRows >= 0 && maxBatchRows <= 1024 else { throw ValidationError("--max-batch-rows must be in 0...1024") }
        if let instance, instance.isEmpty || instance.count > 32 || !instance.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) {
            throw ValidationError("--instance must be 1 to 32 ASCII letters and digits")
        }
        if token != nil && tokenFile != nil { throw ValidationError("give --token or --token-file, not both") }
    }

    var isLoopback: Bool { host == "127.0.0.1" || host == "::1" || host.hasPrefix("127.") }

    /// The token from --token, --token-file or MILLRACE_TOKEN, in that order.
    func resolvedToken() throws -> String? {
        if let token { return token }
        if let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw ValidationError("cannot read --token-file \(tokenFile)")
            }
            let line = text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            guard !line.isEmpty else { throw ValidationError("--token-file \(tokenFile) is empty") }
            return line
        }
        if let env = ProcessInfo.processInfo.environment["MILLRACE_TOKEN"], !env.isEmpty { return env }
        return nil
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let folders = try (model.isEmpty ? ModelFolder.defaultServedPaths() : model).map { try ModelFolder.load($0) }
            for f in folders {
                // Image models, and restyle models, which serve streams only.
                if let problem = StreamPipeline.streamProblem(FlowSampler(model: f.model, flow: f.flow)) {
                    throw CLIError("\(f.path) cannot be served: \(problem)")
                }
            }
            var opts = MillraceService.Options()
            opts.staticDir = staticDir
            opts.maxStreams = maxStreams
            opts.token = try resolvedToken()
            opts.referencesDir = refs ?? ReferencePool.defaultFolder()
            if colorModel != "none", let path = colorModel ?? ModelFolder.defaultColorizationPath() {
                let f = try ModelFolder.load(path)
                guard InContextColorizer.isColorizationModel(config: f.config, flow: f.flow) else {
                    throw CLIError("--color-model \(path) is not an in-context colorization model (flow.json task \"colorize\")")
                }
                opts.colorModel = path
            }
            opts.allowedHosts = allowHost
            opts.checkHost = isLoopback || !allowHost.isEmpty
            opts.maxJobs = maxJobs
            opts.memoryBudgetBytes = memoryBudget << 20
            opts.requestTimeout = requestTimeout
            opts.maxGenerateWork = maxGenerateWork
            opts.maxOutputPixels = maxOutputPixels
            opts.maxRequestPixels = maxRequestPixels
            opts.maxBatchRows = maxBatchRows
            opts.instance = instance
            let service = MillraceService(folders: folders, options: opts)
            var limits = HTTPServer.Limits()
            limits.maxBodyBytes = maxBody
            limits.maxConnections = maxConnections
            limits.maxConnectionsPerIP = maxConnectionsPerIp
            limits.idleTimeout = idleTimeout
            limits.headerTimeout = headerTimeout
            limits.bodyTimeout = bodyTimeout
            // Many worker threads would each get a malloc arena that keeps the memory freed in it;
            // two arenas keep the resident size close to what is in use (docs/SECURITY.md).
            HTTPServer.limitMallocArenas(2)
            // Every connection is a file descriptor: allow as many as the connection limit needs.
            raiseOpenFileLimit(to: maxConnections + 256)
            let server = HTTPServer(host: host, port: port, limits: limits, budget: service.budget) { service.handle($0) }
            try server.start()
            // Index the reference pool now rather than on the first colorize request; a missing
            // or empty pool is not fatal (requests that upload references still work).
            let warm = UncheckedPool(service)
            Thread.detachNewThread {
                if let problem = warm.service.prepareReferencePool() {
                    FileHandle.standardError.write(Data("warning: \(problem)\n".utf8))
                }
            }
            // Written unbuffered: a script that starts the server reads the port from this line.
            FileHandle.standardOutput.write(Data("serving \(folders.map(\.path).joined(separator: ", ")) on http://\(host.contains(":") ? "[\(host)]" : host):\(server.port)\n".utf8))
            let stop = DispatchSemaphore(value: 0)
            var sources: [DispatchSourceSignal] = []
            for sig in [SIGINT, SIGTERM] {
                signal(sig, SIG_IGN)
                let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                src.setEventHandler { stop.signal() }
                src.resume()
                sources.append(src)
            }
            let expiry = DispatchSource.makeTimerSource(queue: .global())
            expiry.schedule(deadline: .now() + 10, repeating: 10)
            expiry.setEventHandler { service.scheduler.expire(idle: opts.idleStreamSeconds) }
            expiry.resume()
            stop.wait()
            FileHandle.standardError.write(Data("shutting down: new requests get 503, work in flight stops at its next step\n".utf8))
            // A watchdog keeps the promise of an exit within 5 s whatever is still running.
            let watchdog = DispatchSource.makeTimerSource(queue: .global())
            watchdog.schedule(deadline: .now() + 4.8)
            watchdog.setEventHandler {
                FileHandle.standardError.write(Data("shutdown: work still running after 4.8 s; exiting\n".utf8))
                _exit(0)
            }
            watchdog.resume()
            let start = Date()
            service.beginShutdown()
            let clean = server.stop(deadline: 4) && service.waitIdle(timeout: max(0.1, 4.5 - Date().timeIntervalSince(start)))
            expiry.cancel()
            _ = sources
            FileHandle.standardOutput.write(Data((clean ? "stopped\n" : "stopped (work still running was abandoned)\n").utf8))
            // No exit handlers: the kernels' library tears down its threads and buffers there, and
            // a thread still inside a model call (abandoned above) must not run into that.
            _exit(0)
        }
    }

    /// Raises the soft limit on open files towards `wanted` (never above the hard limit).
    func raiseOpenFileLimit(to wanted: Int) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(wanted) else { return }
        limit.rlim_cur = min(limit.rlim_max, rlim_t(wanted))
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

/// Hands the service to the warm-up thread.
private struct UncheckedPool: @unchecked Sendable {
    let service: MillraceService
    init(_ service: MillraceService) { self.service = service }
}
