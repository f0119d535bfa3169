import CMicroHTTPD
import CMillraceHTTP
import Foundation

/// An HTTP request as the router sees it.
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
}

/// Produces the chunks of an endless or long response; `next` blocks until a chunk is ready and
/// returns nil at the end. `cancel` is called when the client goes away.
public final class HTTPStreamBody: @unchecked Sendable {
    private let produce: () -> [UInt8]?
    private let lock = NSLock()
    private var _cancelled = false
    var pending: [UInt8] = []
    var offset = 0

    public init(_ produce: @escaping () -> [UInt8]?) { self.produce = produce }

    public var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return _cancelled }
    func cancel() { lock.lock(); _cancelled = true; lock.unlock() }
    func next() -> [UInt8]? { isCancelled ? nil : produce() }
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
}

/// A server on libmicrohttpd: one thread per connection, a connection limit, a body limit, and a
/// graceful stop (no new connections; requests in flight finish).
public final class HTTPServer: @unchecked Sendable {
    public let host: String
    public private(set) var port: UInt16
    public let maxBodyBytes: Int
    public let connectionLimit: Int
    let handler: (HTTPRequest) -> HTTPResponse
    private var daemon: OpaquePointer?
    private let lock = NSLock()
    private var streams: [ObjectIdentifier: HTTPStreamBody] = [:]

    public init(host: String = "127.0.0.1", port: UInt16 = 8080, maxBodyBytes: Int = 8 << 20,
                connectionLimit: Int = 256, handler: @escaping (HTTPRequest) -> HTTPResponse) {
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
        self.connectionLimit = connectionLimit
        self.handler = handler
    }

    /// Starts listening (port 0: any free port; `port` then tells which).
    public func start() throws {
        var err = [CChar](repeating: 0, count: 256)
        let me = Unmanaged.passUnretained(self).toOpaque()
        guard let d = mr_http_start(host, port, UInt32(connectionLimit), 60, HTTPServer.access, me,
                                    HTTPServer.completed, me, &err, err.count) else {
            throw ModelError(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        daemon = d
        port = mr_http_port(d)
    }

    /// Stops accepting connections, ends open streams, waits for requests in flight, and stops.
    public func stop() {
        guard let d = daemon else { return }
        _ = MHD_quiesce_daemon(d)
        lock.lock()
        let open = Array(streams.values)
        lock.unlock()
        for s in open { s.cancel() }
        MHD_stop_daemon(d)
        daemon = nil
    }

    // MARK: libmicrohttpd callbacks (static: called on MHD's threads)

    /// Per-connection state between the calls MHD makes for one request.
    final class Connection {
        var body: [UInt8] = []
        var tooLarge = false
    }

    static let access: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadSize, conCls in
        guard let cls, let connection, let conCls, let uploadSize else { return .NO }
        let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
        if conCls.pointee == nil {
            conCls.pointee = Unmanaged.passRetained(Connection()).toOpaque()
            return .YES
        }
        let state = Unmanaged<Connection>.fromOpaque(conCls.pointee!).takeUnretainedValue()
        if uploadSize.pointee > 0 {
            let n = uploadSize.pointee
            if !state.tooLarge, let uploadData {
                if state.body.count + n > server.maxBodyBytes {
                    state.tooLarge = true
                    state.body = []
                } else {
                    uploadData.withMemoryRebound(to: UInt8.self, capacity: n) { state.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: n)) }
                }
            }
            uploadSize.pointee = 0
            return .YES
        }
        var request = HTTPRequest(method: method.map { String(cString: $0) } ?? "GET",
                                  path: url.map { String(cString: $0) } ?? "/", query: [:], headers: [:],
                                  body: state.body, bodyTooLarge: state.tooLarge)
        let collector = Unmanaged.passRetained(KeyValues())
        _ = MHD_get_connection_values(connection, .HEADER_KIND, HTTPServer.collect, collector.toOpaque())
        request.headers = collector.takeUnretainedValue().values
        collector.takeUnretainedValue().values = [:]
        _ = MHD_get_connection_values(connection, .GET_ARGUMENT_KIND, HTTPServer.collect, collector.toOpaque())
        request.query = collector.takeRetainedValue().values
        state.body = []
        return server.respond(server.handler(request), on: connection)
    }

    final class KeyValues { var values: [String: String] = [:] }

    static let collect: MHD_KeyValueIterator = { cls, _, key, value in
        guard let cls, let key else { return .YES }
        let kv = Unmanaged<KeyValues>.fromOpaque(cls).takeUnretainedValue()
        kv.values[String(cString: key).lowercased()] = value.map { String(cString: $0) } ?? ""
        return .YES
    }

    static let completed: MHD_RequestCompletedCallback = { _, _, conCls, _ in
        guard let conCls, let p = conCls.pointee else { return }
        Unmanaged<Connection>.fromOpaque(p).release()
        conCls.pointee = nil
    }

    final class StreamContext {
        let body: HTTPStreamBody
        weak var server: HTTPServer?
        init(body: HTTPStreamBody, server: HTTPServer) { self.body = body; self.server = server }
    }

    static let read: MHD_ContentReaderCallback = { cls, _, buf, max in
        guard let cls, let buf else { return mr_http_end_with_error() }
        let body = Unmanaged<StreamContext>.fromOpaque(cls).takeUnretainedValue().body
        while body.offset >= body.pending.count {
            guard let chunk = body.next() else { return mr_http_end_of_stream() }
            body.pending = chunk
            body.offset = 0
        }
        let n = min(max, body.pending.count - body.offset)
        body.pending.withUnsafeBytes { src in
            UnsafeMutableRawPointer(buf).copyMemory(from: src.baseAddress! + body.offset, byteCount: n)
        }
        body.offset += n
        return n
    }

    static let freeStream: MHD_ContentReaderFreeCallback = { cls in
        guard let cls else { return }
        let ctx = Unmanaged<StreamContext>.fromOpaque(cls).takeRetainedValue()
        ctx.body.cancel()
        if let server = ctx.server {
            server.lock.lock()
            server.streams[ObjectIdentifier(ctx.body)] = nil
            server.lock.unlock()
        }
    }

    func respond(_ r: HTTPResponse, on connection: OpaquePointer) -> MHD_Result {
        let response: OpaquePointer?
        switch r.body {
        case .bytes(let bytes):
            response = bytes.withUnsafeBytes { raw in
                MHD_create_response_from_buffer(bytes.count, UnsafeMutableRawPointer(mutating: raw.baseAddress), .RESPMEM_MUST_COPY)
            }
        case .stream(let body):
            lock.lock()
            streams[ObjectIdentifier(body)] = body
            lock.unlock()
            let ctx = Unmanaged.passRetained(StreamContext(body: body, server: self)).toOpaque()
            response = MHD_create_response_from_callback(UInt64.max, 32 * 1024, HTTPServer.read, ctx, HTTPServer.freeStream)
        }
        guard let response else { return .NO }
        for (k, v) in r.headers { _ = MHD_add_response_header(response, k, v) }
        let result = MHD_queue_response(connection, UInt32(r.status), response)
        MHD_destroy_response(response)
        return result
    }
}
