import CMicroHTTPD
import CMillraceHTTP
import Foundation
import MillraceCore

/// An HTTP request as the router sees it.
/// Why the server could not start.
public enum HTTPServerError: Error, CustomStringConvertible, Equatable {
    /// libmicrohttpd refused to start (the address is taken, the port is not free, ...).
    case startFailed(String)

    public var description: String {
        switch self {
        case .startFailed(let why): return "cannot start the HTTP server: \(why)"
        }
    }
}

extension HTTPServer {
    /// The version of the libmicrohttpd this program is linked against.
    public static var libraryVersion: String { MHD_get_version().map { String(cString: $0) } ?? "unknown" }
}

public struct HTTPRequest: Sendable {
    public var method: String
    /// The path without the query string, percent-decoded by libmicrohttpd.
    public var path: String
    public var query: [String: String]
    /// Header names lowercased.
    public var headers: [String: String]
    public var body: [UInt8]
    /// The body went over the server's limit (and was discarded).
    public var bodyTooLarge: Bool
    /// Whether the client has disconnected; long work asks between its steps and stops.
    public var isClientGone: @Sendable () -> Bool = { false }

    /// A request as the server hands it over (for callers of the service in the same process).
    public init(method: String, path: String, query: [String: String] = [:], headers: [String: String] = [:],
                body: [UInt8] = [], bodyTooLarge: Bool = false) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.bodyTooLarge = bodyTooLarge
    }
}

/// The body of an endless or long response, fed by a producer on any thread and read by the
/// server without holding a thread while it waits: `offer` replaces a chunk that has not started
/// to go out (a slow reader skips to the newest, as a stream viewer should), `finish` ends the
/// body after a last chunk that is never replaced. When the client goes away the body is
/// cancelled: `offer` returns false and the `onCancel` handlers run, so the producer can stop.
public final class HTTPStreamBody: @unchecked Sendable {
    private let lock = NSLock()
    private var current: [UInt8] = []
    private var offset = 0
    private var latest: [UInt8]?
    private var last: [UInt8]?
    private var ended = false
    private var cancelled = false
    /// The reader found nothing to send and its connection is suspended until `wake` runs.
    private var waiting = false
    private var wake: (() -> Void)?
    private var cancelHandlers: [() -> Void] = []

    public init() {}

    public var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return cancelled }

    /// Queues `chunk`, replacing a queued one that has not started to go out. Returns false once
    /// the client has gone (or the body has ended).
    @discardableResult
    public func offer(_ chunk: [UInt8]) -> Bool {
        lock.lock()
        if cancelled || ended { lock.unlock(); return false }
        latest = chunk
        let w = takeWake()
        lock.unlock()
        w?()
        return true
    }

    /// Ends the body after the queued chunk and `final`.
    public func finish(_ final: [UInt8] = []) {
        lock.lock()
        if cancelled || ended { lock.unlock(); return }
        ended = true
        last = final
        let w = takeWake()
        lock.unlock()
        w?()
    }

    /// Runs `handler` once when the client goes away (at once if it already has).
    public func onCancel(_ handler: @escaping () -> Void) {
        lock.lock()
        if cancelled { lock.unlock(); handler(); return }
        cancelHandlers.append(handler)
        lock.unlock()
    }

    /// Marks the body cancelled, wakes a waiting reader (which then ends the response) and runs
    /// the cancel handlers.
    func cancel() {
        lock.lock()
        if cancelled { lock.unlock(); return }
        cancelled = true
        let handlers = cancelHandlers
        cancelHandlers = []
        let w = takeWake()
        lock.unlock()
        w?()
        for h in handlers { h() }
    }

    /// Whether the reader is waiting for data (its connection suspended).
    var isWaiting: Bool { lock.lock(); defer { lock.unlock() }; return waiting }

    private func takeWake() -> (() -> Void)? {
        guard waiting else { return nil }
        waiting = false
        return wake
    }

    enum ReadResult { case bytes(Int), suspended, end, error }

    /// Copies up to `max` bytes into `buf`. With nothing to send, calls `suspend` under the lock
    /// (so that no producer can resume the connection before it is suspended) and remembers `wake`.
    func read(into buf: UnsafeMutableRawPointer, max: Int, suspend: () -> Void, wake: @escaping () -> Void) -> ReadResult {
        lock.lock()
        defer { lock.unlock() }
        if cancelled { return .error }
        if offset >= current.count {
            if let next = latest {
                current = next; offset = 0; latest = nil
            } else if let final = last {
                current = final; offset = 0; last = nil
            } else if ended {
                return .end
            } else {
                waiting = true
                self.wake = wake
                suspend()
                return .suspended
            }
            if current.isEmpty { return ended && latest == nil && last == nil ? .end : .bytes(0) }
        }
        let n = min(max, current.count - offset)
        current.withUnsafeBytes { src in buf.copyMemory(from: src.baseAddress! + offset, byteCount: n) }
        offset += n
        return .bytes(n)
    }
}

/// A response: fixed bytes or a stream.
public struct HTTPResponse {
    public enum Body { case bytes([UInt8]), stream(HTTPStreamBody) }
    public var status: Int
    public var headers: [(String, String)]
    public var body: Body

    public init(status: Int, headers: [(String, String)] = [], body: Body) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON body.
    public static func json(_ object: Any, status: Int = 200) -> HTTPResponse {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return HTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: .bytes([UInt8](data)))
    }

    /// `{"error": message}` with the given status.
    public static func error(_ status: Int, _ message: String) -> HTTPResponse {
        json(["error": message], status: status)
    }

    /// 503 with `Retry-After`: the server is busy now, not broken.
    public static func busy(_ message: String, retryAfter seconds: Int = 1) -> HTTPResponse {
        var r = error(503, message)
        r.headers.append(("Retry-After", "\(seconds)"))
        return r
    }
}

/// A server on libmicrohttpd (docs/SECURITY.md):
/// - an epoll event loop on a small pool of threads, so idle and slow clients cost a socket and
///   a buffer each, not a thread;
/// - handlers run on a pool of worker threads while MHD keeps the connection suspended;
///   streaming bodies hold no thread while they wait for data;
/// - deadlines for headers and bodies, an idle timeout, connection limits, a body limit, and
///   request bodies reserved in a memory budget before they are buffered;
/// - a graceful stop: no new connections, streams end, work in flight is given a deadline.
public final class HTTPServer: @unchecked Sendable {
    /// Limits and sizes; every one is a `gen serve` flag (docs/SECURITY.md).
    public struct Limits: Sendable {
        public var maxBodyBytes = 8 << 20
        public var maxConnections = 4096
        /// Most connections from one address (0: no limit).
        public var maxConnectionsPerIP = 0
        /// Seconds without traffic before a connection is closed.
        public var idleTimeout = 15
        /// Seconds from a connection's start (or the end of its previous request) to the end of
        /// the request's headers.
        public var headerTimeout = 10.0
        /// Seconds from the end of the headers to the end of the body.
        public var bodyTimeout = 30.0
        /// Threads running MHD's event loops.
        public var pollThreads = 2
        /// Threads running handlers (most handlers are quick; long work is admitted by the service).
        public var workerThreads = 32
        /// Bytes MHD may use per connection for its buffers; bounds the size of the headers.
        public var connectionMemory = 64 << 10
        public init() {}
    }

    public let host: String
    public private(set) var port: UInt16
    public let limits: Limits
    public var maxBodyBytes: Int { limits.maxBodyBytes }
    /// Request bodies are reserved here while they are buffered (nil: not counted).
    public let budget: MemoryBudget?
    let handler: (HTTPRequest) -> HTTPResponse
    private var daemon: OpaquePointer?
    private let lock = NSLock()
    private var peers: [OpaquePointer: Peer] = [:]
    /// Streaming bodies being sent, with their connection's socket.
    private var bodies: [ObjectIdentifier: (body: HTTPStreamBody, fd: Int32)] = [:]
    private let workers: WorkerPool
    private var reaper: DispatchSourceTimer?
    /// Requests handed to a worker whose response MHD has not finished sending.
    private let inFlight = NSCondition()
    private var inFlightCount = 0
    /// Set by `stop` (under `inFlight`): requests from then on are answered 503 at once, on MHD's
    /// thread, and never suspended (MHD aborts the process when it is stopped with a suspended
    /// connection).
    private var stopping = false

    public init(host: String = "127.0.0.1", port: UInt16 = 8080, limits: Limits = Limits(), budget: MemoryBudget? = nil,
                handler: @escaping (HTTPRequest) -> HTTPResponse) {
        self.host = host
        self.port = port
        self.limits = limits
        self.budget = budget
        self.handler = handler
        self.workers = WorkerPool(threads: max(1, limits.workerThreads), name: "millrace-http")
    }

    /// A body limit, the other limits at their defaults.
    public convenience init(host: String = "127.0.0.1", port: UInt16 = 8080, maxBodyBytes: Int,
                            handler: @escaping (HTTPRequest) -> HTTPResponse) {
        var l = Limits()
        l.maxBodyBytes = maxBodyBytes
        self.init(host: host, port: port, limits: l, handler: handler)
    }

    /// Starts listening (port 0: any free port; `port` then tells which).
    public func start() throws {
        var err = [CChar](repeating: 0, count: 256)
        let me = Unmanaged.passUnretained(self).toOpaque()
        let started: OpaquePointer? = host.withCString { h in
            var c = mr_http_config(host: h, port: port, poll_threads: UInt32(max(1, limits.pollThreads)),
                                   connection_limit: UInt32(max(4, limits.maxConnections)),
                                   per_ip_limit: UInt32(max(0, limits.maxConnectionsPerIP)),
                                   idle_timeout: UInt32(max(1, limits.idleTimeout)),
                                   connection_memory: max(16 << 10, limits.connectionMemory))
            return mr_http_start(&c, HTTPServer.access, me, HTTPServer.completed, me, HTTPServer.notify, me, &err, err.count)
        }
        guard let d = started else {
            throw HTTPServerError.startFailed(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        daemon = d
        port = mr_http_port(d)
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "millrace-http-reaper"))
        timer.schedule(deadline: .now() + 0.25, repeating: 0.25)
        timer.setEventHandler { [weak self] in self?.reap() }
        timer.resume()
        reaper = timer
    }

    /// Limits glibc's malloc arenas for this process (call before the threads start).
    public static func limitMallocArenas(_ n: Int) { mr_limit_malloc_arenas(Int32(n)) }

    /// Open connections (for tests and /metrics).
    public var openConnections: Int { lock.lock(); defer { lock.unlock() }; return peers.count }

    /// Stops accepting connections, ends open streams, waits up to `deadline` seconds for the
    /// handlers in flight (which the service cancels at their next step) and stops. Returns
    /// false when handlers were still running at the deadline: the daemon is then left as it
    /// is (stopping MHD with suspended connections would abort the process), which only
    /// matters to a process that goes on living.
    @discardableResult
    public func stop(deadline: Double = 4) -> Bool {
        guard let d = daemon else { return true }
        // Not MHD_quiesce_daemon: on an epoll daemon with its own threads it races with MHD's
        // event loop over removing the listening socket and can abort the process (an open MHD
        // defect, seen in a test run). New requests are answered 503 instead, without a worker.
        inFlight.lock()
        stopping = true
        inFlight.unlock()
        lock.lock()
        let open = bodies.values.map(\.body)
        lock.unlock()
        for b in open { b.cancel() }
        let end = Date().addingTimeInterval(deadline)
        guard workers.waitIdle(timeout: deadline) else { return false }
        // Let MHD send the responses the workers have just handed back (a generation stopped
        // by the shutdown answers 503) before the daemon closes every connection.
        inFlight.lock()
        while inFlightCount > 0 && inFlight.wait(until: end) {}
        inFlight.unlock()
        // Streaming bodies end once their reader runs again after the cancel resumed it; MHD
        // aborts the process if it is stopped while one is still suspended, so wait until
        // every one is freed (cancelling again any a late handler opened).
        while true {
            lock.lock()
            let left = bodies.values.map(\.body)
            lock.unlock()
            if left.isEmpty { break }
            guard Date() < end else { return false }
            for b in left { b.cancel() }
            usleep(2_000)
        }
        reaper?.cancel()
        reaper = nil
        MHD_stop_daemon(d)
        daemon = nil
        workers.close()
        return true
    }

    // MARK: Connections and the reaper

    /// One TCP connection, from MHD's open notice to its close notice.
    final class Peer {
        let fd: Int32
        /// Start of the current request's headers (the connection's start, or the end of its previous request).
        var since = Date()
        var inHeaders = true
        var bodyStart: Date?
        var closed = false
        init(fd: Int32) { self.fd = fd }
    }

    static let notify: MHD_NotifyConnectionCallback = { cls, connection, _, code in
        guard let cls, let connection else { return }
        let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
        server.lock.lock()
        if code == .CONNECTION_NOTIFY_STARTED {
            server.peers[connection] = Peer(fd: mr_http_connection_fd(connection))
        } else {
            server.peers.removeValue(forKey: connection)?.closed = true
        }
        server.lock.unlock()
    }

    func peer(_ connection: OpaquePointer) -> Peer? {
        lock.lock()
        defer { lock.unlock() }
        return peers[connection]
    }

    /// Closes connections over their header or body deadline, and cancels streaming bodies
    /// whose client has gone while their connection waited (MHD does not watch suspended ones).
    func reap() {
        let now = Date()
        lock.lock()
        for p in peers.values {
            if p.inHeaders && now.timeIntervalSince(p.since) > limits.headerTimeout {
                mr_http_shutdown_socket(p.fd)
            } else if let b = p.bodyStart, now.timeIntervalSince(b) > limits.bodyTimeout {
                mr_http_shutdown_socket(p.fd)
            }
        }
        let waiting = bodies.values.filter { $0.body.isWaiting }
        lock.unlock()
        // A waiting body's connection is suspended, so MHD cannot close it and its socket stays ours.
        for (b, fd) in waiting where mr_http_peer_gone(fd) != 0 { b.cancel() }
    }

    // MARK: libmicrohttpd callbacks (static: called on MHD's threads)

    /// One request's state between the calls MHD makes for it.
    final class Exchange {
        var body: [UInt8] = []
        var tooLarge = false
        var overBudget = false
        var reservation: MemoryBudget.Reservation?
        var reserved = 0
        /// Set by the worker before it resumes the connection.
        var response: HTTPResponse?
        var dispatched = false
    }

    static let access: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadSize, conCls in
        guard let cls, let connection, let conCls, let uploadSize else { return .NO }
        let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
        let peer = server.peer(connection)
        if conCls.pointee == nil {
            // The headers are in: the header deadline is met; the body's starts.
            let ex = Exchange()
            conCls.pointee = Unmanaged.passRetained(ex).toOpaque()
            let declared = MHD_lookup_connection_value(connection, .HEADER_KIND, "Content-Length")
                .flatMap { Int(String(cString: $0)) } ?? 0
            server.lock.lock()
            peer?.inHeaders = false
            peer?.bodyStart = Date()
            server.lock.unlock()
            if declared > server.limits.maxBodyBytes {
                // A client that waits for "100 Continue", or one that announces a huge body, is
                // answered at once (and the connection closed). Others are read to the end and
                // discarded (nothing is kept; the body deadline bounds the time) so that they see
                // the 413 instead of a connection reset in the middle of their upload.
                let expects = MHD_lookup_connection_value(connection, .HEADER_KIND, "Expect") != nil
                if expects || declared > 8 * server.limits.maxBodyBytes {
                    return server.respond(.error(413, "request body is over the limit (\(server.limits.maxBodyBytes) bytes)"), on: connection)
                }
                ex.tooLarge = true
                return .YES
            }
            if declared > 0, let budget = server.budget {
                guard let r = budget.reserve(declared) else {
                    return server.respond(.busy("the server's memory budget is full; retry shortly"), on: connection)
                }
                ex.reservation = r
                ex.reserved = declared
            }
            return .YES
        }
        let ex = Unmanaged<Exchange>.fromOpaque(conCls.pointee!).takeUnretainedValue()
        if uploadSize.pointee > 0 {
            let n = uploadSize.pointee
            uploadSize.pointee = 0
            if !ex.tooLarge && !ex.overBudget, let uploadData {
                if ex.body.count + n > server.limits.maxBodyBytes {
                    ex.tooLarge = true
                    ex.body = []
                } else {
                    if ex.body.count + n > ex.reserved, let budget = server.budget {
                        // A body without Content-Length (chunked): reserve as it grows.
                        let more = max(64 << 10, ex.body.count + n - ex.reserved)
                        if let r = budget.reserve(more) {
                            ex.reservation = ex.reservation.map { $0.merged(with: r) } ?? r
                            ex.reserved += more
                        } else {
                            ex.overBudget = true
                            ex.body = []
                        }
                    }
                    if !ex.overBudget {
                        uploadData.withMemoryRebound(to: UInt8.self, capacity: n) { ex.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: n)) }
                    }
                }
            }
            return .YES
        }
        if let response = ex.response {
            ex.response = nil
            return server.respond(response, on: connection)
        }
        if ex.dispatched { return .YES }
        server.lock.lock()
        peer?.bodyStart = nil
        server.lock.unlock()
        if ex.overBudget {
            return server.respond(.busy("the server's memory budget is full; retry shortly"), on: connection)
        }

        var request = HTTPRequest(method: method.map { String(cString: $0) } ?? "GET",
                                  path: url.map { String(cString: $0) } ?? "/", query: [:], headers: [:],
                                  body: ex.body, bodyTooLarge: ex.tooLarge)
        let collector = KeyValues()
        let box = Unmanaged.passUnretained(collector).toOpaque()
        _ = MHD_get_connection_values(connection, .HEADER_KIND, HTTPServer.collect, box)
        request.headers = collector.values
        collector.values = [:]
        _ = MHD_get_connection_values(connection, .GET_ARGUMENT_KIND, HTTPServer.collect, box)
        request.query = collector.values
        ex.body = []
        if let peer {
            let p = UncheckedSendable(peer)
            request.isClientGone = { p.value.closed || mr_http_peer_gone(p.value.fd) != 0 }
        }
        // The handler runs on a worker while MHD keeps this connection suspended; the worker
        // stores the response and resumes it, and MHD calls here again to send it.
        // Checked and counted under one lock, so `stop` either sees this request in flight and
        // waits for it, or this request sees `stopping` and is answered at once.
        server.inFlight.lock()
        if server.stopping {
            server.inFlight.unlock()
            return server.respond(.busy("the server is shutting down"), on: connection)
        }
        server.inFlightCount += 1
        server.inFlight.unlock()
        ex.dispatched = true
        MHD_suspend_connection(connection)
        let job = UncheckedSendable((server, ex, connection, request))
        server.workers.submit {
            let (server, ex, connection, request) = job.value
            let response = server.handler(request)
            ex.reservation = nil    // the body is no longer held
            ex.response = response
            MHD_resume_connection(connection)
        }
        return .YES
    }

    final class KeyValues { var values: [String: String] = [:] }

    static let collect: MHD_KeyValueIterator = { cls, _, key, value in
        guard let cls, let key else { return .YES }
        let kv = Unmanaged<KeyValues>.fromOpaque(cls).takeUnretainedValue()
        kv.values[String(cString: key).lowercased()] = value.map { String(cString: $0) } ?? ""
        return .YES
    }

    static let completed: MHD_RequestCompletedCallback = { cls, connection, conCls, _ in
        if let cls, let connection {
            let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
            server.lock.lock()
            if let p = server.peers[connection] {
                // A kept-alive connection: the next request's header deadline starts now.
                p.since = Date()
                p.inHeaders = true
                p.bodyStart = nil
            }
            server.lock.unlock()
        }
        guard let conCls, let p = conCls.pointee else { return }
        let ex = Unmanaged<Exchange>.fromOpaque(p).takeRetainedValue()
        conCls.pointee = nil
        if ex.dispatched, let cls {
            let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
            server.inFlight.lock()
            server.inFlightCount -= 1
            server.inFlight.broadcast()
            server.inFlight.unlock()
        }
    }

    final class StreamContext {
        let body: HTTPStreamBody
        let connection: OpaquePointer
        weak var server: HTTPServer?
        init(body: HTTPStreamBody, connection: OpaquePointer, server: HTTPServer) {
            self.body = body
            self.connection = connection
            self.server = server
        }
    }

    static let read: MHD_ContentReaderCallback = { cls, _, buf, max in
        guard let cls, let buf else { return mr_http_end_with_error() }
        let ctx = Unmanaged<StreamContext>.fromOpaque(cls).takeUnretainedValue()
        let connection = ctx.connection
        switch ctx.body.read(into: UnsafeMutableRawPointer(buf), max: max,
                             suspend: { MHD_suspend_connection(connection) },
                             wake: { MHD_resume_connection(connection) }) {
        case .bytes(let n): return n
        case .suspended: return 0
        case .end: return mr_http_end_of_stream()
        case .error: return mr_http_end_with_error()
        }
    }

    static let freeStream: MHD_ContentReaderFreeCallback = { cls in
        guard let cls else { return }
        let ctx = Unmanaged<StreamContext>.fromOpaque(cls).takeRetainedValue()
        ctx.body.cancel()
        if let server = ctx.server {
            server.lock.lock()
            server.bodies[ObjectIdentifier(ctx.body)] = nil
            server.lock.unlock()
        }
    }

    /// Security headers on every response (docs/SECURITY.md).
    static let commonHeaders = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]

    func respond(_ r: HTTPResponse, on connection: OpaquePointer) -> MHD_Result {
        let response: OpaquePointer?
        switch r.body {
        case .bytes(let bytes):
            response = bytes.withUnsafeBytes { raw in
                MHD_create_response_from_buffer(bytes.count, UnsafeMutableRawPointer(mutating: raw.baseAddress), .RESPMEM_MUST_COPY)
            }
        case .stream(let body):
            lock.lock()
            bodies[ObjectIdentifier(body)] = (body, peers[connection]?.fd ?? -1)
            lock.unlock()
            let ctx = Unmanaged.passRetained(StreamContext(body: body, connection: connection, server: self)).toOpaque()
            response = MHD_create_response_from_callback(UInt64.max, 32 * 1024, HTTPServer.read, ctx, HTTPServer.freeStream)
        }
        guard let response else { return .NO }
        for (k, v) in Self.commonHeaders + r.headers { _ = MHD_add_response_header(response, k, v) }
        let result = MHD_queue_response(connection, UInt32(r.status), response)
        MHD_destroy_response(response)
        return result
    }
}
