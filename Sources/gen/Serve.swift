import ArgumentParser
import Dispatch
import Foundation
import Millrace

/// `gen serve`: the HTTP service and the browser page.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve generation, streams, colorization and BSS over HTTP, and the page in web-static/ (docs/API.md).",
        discussion: """
        Binds 127.0.0.1 by default; any other host needs --token, and every /v1 route then checks
        `Authorization: Bearer <token>`. SIGINT or SIGTERM shuts down gracefully (exit code 0).
        Examples:
          gen serve                                  then open http://127.0.0.1:8080
          gen serve --host 0.0.0.0 --port 9000 --token s3cret --max-streams 4
          gen serve --refs my-references             POST /v1/colorize without uploads uses this pool
        """)

    @Option(help: "Address to bind (IPv4 or IPv6 literal).")
    var host: String = "127.0.0.1"
    @Option(help: "Port (0: any free port).")
    var port: UInt16 = 8080
    @Option(help: "Model folder (default: the shipped emoji model).")
    var model: String?
    @Option(name: .customLong("static"), help: "Folder of the page's files.")
    var staticDir: String = "web-static"
    @Option(help: "Most live streams.")
    var maxStreams: Int = 8
    @Option(help: "Largest request body in bytes.")
    var maxBody: Int = 8 << 20
    @Option(help: "Bearer token required on /v1 routes (required when --host is not loopback).")
    var token: String?
    @Option(help: "Reference pool of POST /v1/colorize when a request uploads no references (a folder of colour images; default: the shipped assets/references).")
    var refs: String?
    @Option(help: "Most simultaneous connections.")
    var maxConnections: Int = 256
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        let loopback = host == "127.0.0.1" || host == "::1" || host.hasPrefix("127.")
        if !loopback && (token ?? "").isEmpty {
            throw ValidationError("--host \(host) exposes the server beyond this machine: set --token")
        }
        guard maxStreams >= 1, maxBody >= 1024, maxConnections >= 4 else {
            throw ValidationError("--max-streams ≥ 1, --max-body ≥ 1024 and --max-connections ≥ 4")
        }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let folder = try ModelFolder.load(model ?? ModelFolder.defaultPath())
            var opts = MillraceService.Options()
            opts.staticDir = staticDir
            opts.maxStreams = maxStreams
            opts.token = token
            opts.referencesDir = refs ?? ReferencePool.defaultFolder()
            let service = MillraceService(folder: folder, options: opts)
            let server = HTTPServer(host: host, port: port, maxBodyBytes: maxBody, connectionLimit: maxConnections) {
                service.handle($0)
            }
            try server.start()
            // Index the reference pool now rather than on the first colorize request; a missing
            // or empty pool is not fatal (requests that upload references still work).
            let warm = UncheckedPool(service)
            Thread.detachNewThread {
                if let problem = warm.service.prepareReferencePool() {
                    FileHandle.standardError.write(Data("warning: \(problem)\n".utf8))
                }
            }
            print("serving \(folder.path) on http://\(host.contains(":") ? "[\(host)]" : host):\(server.port)")
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
            FileHandle.standardError.write(Data("shutting down: finishing requests in flight\n".utf8))
            service.beginShutdown()
            server.stop()
            expiry.cancel()
            _ = sources
            print("stopped")
        }
    }
}

/// Hands the service to the warm-up thread.
private struct UncheckedPool: @unchecked Sendable {
    let service: MillraceService
    init(_ service: MillraceService) { self.service = service }
}
