import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// multipart/form-data (RFC 7578 over RFC 2046): a small strict reader for request bodies and a
// writer for responses. This file depends on Foundation alone so that the libFuzzer target in
// Fuzz/Multipart can compile it by itself.
//
// Why not libmicrohttpd's MHD_PostProcessor: the server buffers a request body (to enforce
// --max-body) and hands the router a plain `HTTPRequest`; the routes are pure functions of it,
// and the mutation fuzz tests call them without a socket. MHD_create_post_processor takes a live
// MHD_Connection (it reads Content-Type from the connection, there is no way to pass one), so it
// could only run inside the access callback, could not be driven by those tests or by a
// libFuzzer harness, and reports failures as a bare MHD_NO (a truncated body shows up only when
// the processor is destroyed). A reader of the buffered body with precise errors fits better.

/// Why a multipart body was refused: the HTTP status to answer (400, 413 or 415) and a message.
public struct MultipartError: Error, CustomStringConvertible, Sendable, Equatable {
    public let status: Int
    public let message: String
    public var description: String { message }
    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
}

/// One part of a multipart/form-data body.
public struct MultipartPart: Sendable, Equatable {
    /// The form field name (`Content-Disposition: form-data; name="..."`).
    public var name: String
    /// The file name, for file fields.
    public var filename: String?
    /// The part's media type, when it has a Content-Type header.
    public var contentType: String?
    public var body: [UInt8]

    public init(name: String, filename: String? = nil, contentType: String? = nil, body: [UInt8]) {
        self.name = name
        self.filename = filename
        self.contentType = contentType
        self.body = body
    }

    /// The body as UTF-8 text (for plain fields).
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// Reading and writing multipart/form-data.
///
/// The reader is strict: the Content-Type must be `multipart/form-data` with a valid `boundary`
/// (1–70 characters of RFC 2046's set); every part starts at a delimiter line (transport padding
/// allowed), has CRLF-terminated header lines (no folding, no bare CR or LF) within
/// `maxHeaderBytes`, exactly one `Content-Disposition: form-data` with a `name`, and no
/// Content-Transfer-Encoding other than 7bit, 8bit or binary; the body must end with the close
/// delimiter. A preamble before the first delimiter and an epilogue after the last are ignored,
/// as RFC 2046 says.
public enum MultipartFormData {
    public struct Limits: Sendable {
        /// Most parts in one body (413 above).
        public var maxParts = 64
        /// Most bytes of one part's header block (400 above).
        public var maxHeaderBytes = 8192
        public init(maxParts: Int = 64, maxHeaderBytes: Int = 8192) {
            self.maxParts = maxParts
            self.maxHeaderBytes = maxHeaderBytes
        }
    }

    static let tokenChars: Set<UInt8> = Set(Array("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8))
    static let boundaryChars: Set<UInt8> = Set(Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ".utf8))

    /// The boundary of a request's Content-Type. 415 when the type is not multipart/form-data,
    /// 400 when the boundary is missing or invalid.
    public static func boundary(contentType: String?) throws -> String {
        guard let contentType, !contentType.isEmpty else {
            throw MultipartError(415, "Content-Type must be multipart/form-data (none given)")
        }
        let bytes = Array(contentType.utf8)
        let semi = bytes.firstIndex(of: UInt8(ascii: ";")) ?? bytes.count
        let media = String(decoding: bytes[0..<semi], as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased()
        guard media == "multipart/form-data" else {
            throw MultipartError(415, "Content-Type must be multipart/form-data, got '\(media.prefix(80))'")
        }
        let params: [(String, String)]
        do { params = try parameters(bytes[semi...]) } catch let e as MultipartError {
            throw MultipartError(400, "bad Content-Type parameters: \(e.message)")
        }
        let boundaries = params.filter { $0.0 == "boundary" }
        guard boundaries.count == 1, let b = boundaries.first?.1 else {
            throw MultipartError(400, boundaries.isEmpty ? "multipart/form-data without a boundary parameter"
                                                          : "more than one boundary parameter")
        }
        let u = Array(b.utf8)
        guard (1...70).contains(u.count), u.allSatisfy({ boundaryChars.contains($0) }), u.last != UInt8(ascii: " ") else {
            throw MultipartError(400, "invalid multipart boundary (1 to 70 characters of RFC 2046's set, not ending in a space)")
        }
        return b
    }

    /// Parses a body given its Content-Type header.
    public static func parse(_ body: [UInt8], contentType: String?, limits: Limits = Limits()) throws -> [MultipartPart] {
        try parse(body, boundary: try boundary(contentType: contentType), limits: limits)
    }

    /// Parses a body with a known boundary.
    public static func parse(_ body: [UInt8], boundary: String, limits: Limits = Limits()) throws -> [MultipartPart] {
        guard !body.isEmpty else { throw MultipartError(400, "the multipart body is empty") }
        let dash = Array("--".utf8) + Array(boundary.utf8)       // delimiter at the very start
        let delimiter = Array("\r\n".utf8) + dash                  // delimiter anywhere else
        return try body.withUnsafeBufferPointer { buf -> [MultipartPart] in
            let n = buf.count
            // The first delimiter: at offset 0, or after a preamble that ends in CRLF.
            var pos: Int
            if n >= dash.count && buf.starts(with: dash) {
                pos = dash.count
            } else if let at = find(delimiter, in: buf, from: 0) {
                pos = at + delimiter.count
            } else {
                throw MultipartError(400, "the body does not contain the boundary '\(boundary)'")
            }
            var parts: [MultipartPart] = []
            while true {
                // After a delimiter: "--" closes; otherwise padding, then CRLF, then a part.
                if pos + 2 <= n && buf[pos] == UInt8(ascii: "-") && buf[pos + 1] == UInt8(ascii: "-") {
                    guard !parts.isEmpty else { throw MultipartError(400, "the multipart body has no parts") }
                    return parts
                }
                while pos < n && (buf[pos] == 0x20 || buf[pos] == 0x09) { pos += 1 }
                guard pos + 2 <= n, buf[pos] == 0x0D, buf[pos + 1] == 0x0A else {
                    throw MultipartError(400, pos >= n ? "the multipart body is truncated after a boundary"
                                                       : "a boundary line is followed by other characters")
                }
                pos += 2
                guard parts.count < limits.maxParts else {
                    throw MultipartError(413, "more than \(limits.maxParts) parts in the multipart body")
                }
                // Header block, up to the empty line.
                let headerEnd: Int
                if pos + 2 <= n && buf[pos] == 0x0D && buf[pos + 1] == 0x0A {
                    headerEnd = pos   // no header lines at all
                } else {
                    let window = min(n, pos + limits.maxHeaderBytes + 4)
                    guard let at = find(Array("\r\n\r\n".utf8), in: UnsafeBufferPointer(rebasing: buf[0..<window]), from: pos) else {
                        throw MultipartError(400, window < n ? "a part's headers are longer than \(limits.maxHeaderBytes) bytes"
                                                             : "the multipart body is truncated in a part's headers")
                    }
                    headerEnd = at + 2
                }
                var part = try partHeaders(buf[pos..<headerEnd])
                let bodyStart = headerEnd + 2
                guard let end = find(delimiter, in: buf, from: bodyStart) else {
                    throw MultipartError(400, "the multipart body is truncated: part '\(part.name)' has no closing boundary")
                }
                part.body = Array(buf[bodyStart..<end])
                parts.append(part)
                pos = end + delimiter.count
            }
        }
    }

    /// Parses the header lines of one part (each line ends in CRLF).
    static func partHeaders(_ block: Slice<UnsafeBufferPointer<UInt8>>) throws -> MultipartPart {
        var disposition: [UInt8]?
        var type: String?
        var i = block.startIndex
        while i < block.endIndex {
            var j = i
            while j < block.endIndex && block[j] != 0x0D && block[j] != 0x0A { j += 1 }
            guard j + 1 < block.endIndex, block[j] == 0x0D, block[j + 1] == 0x0A else {
                throw MultipartError(400, "a part header line has a bare CR or LF")
            }
            let line = block[i..<j]
            i = j + 2
            guard let first = line.first, first != 0x20, first != 0x09 else {
                throw MultipartError(400, "folded or empty part header line")
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex,
                  line[line.startIndex..<colon].allSatisfy({ tokenChars.contains($0) }) else {
                throw MultipartError(400, "a part header line is not 'Name: value'")
            }
            guard line.allSatisfy({ $0 >= 0x20 || $0 == 0x09 }) && !line.contains(0x7F) else {
                throw MultipartError(400, "control characters in a part header")
            }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self).lowercased()
            let value = Array(line[(colon + 1)...])
            switch name {
            case "content-disposition":
                guard disposition == nil else { throw MultipartError(400, "a part has two Content-Disposition headers") }
                disposition = value
            case "content-type":
                guard type == nil else { throw MultipartError(400, "a part has two Content-Type headers") }
                type = String(decoding: value, as: UTF8.self).trimmingCharacters(in: .whitespaces)
            case "content-transfer-encoding":
                let enc = String(decoding: value, as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased()
                guard ["7bit", "8bit", "binary"].contains(enc) else {
                    throw MultipartError(400, "Content-Transfer-Encoding '\(enc.prefix(40))' is not supported (send binary)")
                }
            default:
                break   // other part headers are ignored (RFC 7578 §4.8)
            }
        }
        guard let disposition else { throw MultipartError(400, "a part has no Content-Disposition header") }
        let semi = disposition.firstIndex(of: UInt8(ascii: ";")) ?? disposition.count
        let kind = String(decoding: disposition[0..<semi], as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased()
        guard kind == "form-data" else {
            throw MultipartError(400, "a part's Content-Disposition is '\(kind.prefix(40))', not form-data")
        }
        let params = try parameters(disposition[semi...])
        var fieldName: String?, filename: String?
        for (k, v) in params {
            switch k {
            case "name":
                guard fieldName == nil else { throw MultipartError(400, "a part has two name parameters") }
                fieldName = v
            case "filename":
                guard filename == nil else { throw MultipartError(400, "a part has two filename parameters") }
                filename = v
            default:
                break   // filename* and others: ignored
            }
        }
        guard let fieldName else { throw MultipartError(400, "a part's Content-Disposition has no name") }
        return MultipartPart(name: fieldName, filename: filename, contentType: type, body: [])
    }

    /// Parses `; key=value` parameters (value a token or a quoted string); keys lowercased.
    static func parameters<C: Collection>(_ bytes: C) throws -> [(String, String)] where C.Element == UInt8 {
        let b = Array(bytes)
        var out: [(String, String)] = []
        var i = 0
        func skipSpace() { while i < b.count && (b[i] == 0x20 || b[i] == 0x09) { i += 1 } }
        while true {
            skipSpace()
            if i == b.count { return out }
            guard b[i] == UInt8(ascii: ";") else { throw MultipartError(400, "expected ';' between parameters") }
            i += 1
            skipSpace()
            if i == b.count { return out }   // a trailing ';' is tolerated
            let k0 = i
            while i < b.count && tokenChars.contains(b[i]) { i += 1 }
            guard i > k0 else { throw MultipartError(400, "a parameter has no name") }
            let key = String(decoding: b[k0..<i], as: UTF8.self).lowercased()
            skipSpace()
            guard i < b.count && b[i] == UInt8(ascii: "=") else { throw MultipartError(400, "parameter '\(key.prefix(40))' has no value") }
            i += 1
            skipSpace()
            var value: [UInt8] = []
            if i < b.count && b[i] == UInt8(ascii: "\"") {
                i += 1
                var closed = false
                while i < b.count {
                    let c = b[i]
                    if c == UInt8(ascii: "\"") { closed = true; i += 1; break }
                    if c == UInt8(ascii: "\\") && i + 1 < b.count { value.append(b[i + 1]); i += 2; continue }
                    value.append(c)
                    i += 1
                }
                guard closed else { throw MultipartError(400, "unterminated quoted parameter '\(key.prefix(40))'") }
            } else {
                let v0 = i
                while i < b.count && tokenChars.contains(b[i]) { i += 1 }
                guard i > v0 else { throw MultipartError(400, "parameter '\(key.prefix(40))' has an empty value") }
                value = Array(b[v0..<i])
            }
            out.append((key, String(decoding: value, as: UTF8.self)))
        }
    }

    /// First index ≥ `from` where `needle` occurs in `hay`: Knuth–Morris–Pratt (linear time, so
    /// no body can make the search quadratic), skipping ahead with memchr while nothing matches.
    static func find(_ needle: [UInt8], in hay: UnsafeBufferPointer<UInt8>, from: Int) -> Int? {
        let m = needle.count, n = hay.count
        guard m > 0, from >= 0, from <= n, n - from >= m, let base = hay.baseAddress else { return nil }
        var fail = [Int](repeating: 0, count: m)
        var k = 0
        for i in 1..<max(1, m) {
            while k > 0 && needle[i] != needle[k] { k = fail[k - 1] }
            if needle[i] == needle[k] { k += 1 }
            fail[i] = k
        }
        var q = 0, i = from
        while i < n {
            if q == 0 {
                guard let p = memchr(base + i, Int32(needle[0]), n - i) else { return nil }
                i = UnsafeRawPointer(base).distance(to: UnsafeRawPointer(p))
            }
            let c = base[i]
            while q > 0 && c != needle[q] { q = fail[q - 1] }
            if c == needle[q] { q += 1 }
            if q == m { return i - m + 1 }
            i += 1
        }
        return nil
    }

    // MARK: Writing

    /// A boundary that occurs in none of `bodies` ("millrace-" and 24 random hex digits).
    public static func makeBoundary(avoiding bodies: [[UInt8]]) -> String {
        while true {
            var rng = SystemRandomNumberGenerator()
            let hex = (0..<2).map { _ -> String in
                let h = String(rng.next() as UInt64, radix: 16)
                return String(repeating: "0", count: 16 - h.count) + h
            }.joined().prefix(24)
            let b = "millrace-\(hex)"
            let needle = Array(b.utf8)
            let clash = bodies.contains { body in body.withUnsafeBufferPointer { find(needle, in: $0, from: 0) != nil } }
            if !clash { return b }
        }
    }

    /// Encodes parts as a multipart/form-data body (each part with Content-Disposition,
    /// Content-Type when known, and Content-Length). Names and file names must not contain '"',
    /// ';', CR or LF (they are replaced by '_').
    public static func encode(_ parts: [MultipartPart], boundary: String) -> [UInt8] {
        func clean(_ s: String) -> String {
            String(s.map { "\";\r\n\\".contains($0) ? "_" : $0 })
        }
        var out: [UInt8] = []
        out.reserveCapacity(parts.reduce(0) { $0 + $1.body.count + 200 })
        for p in parts {
            var head = "--\(boundary)\r\nContent-Disposition: form-data; name=\"\(clean(p.name))\""
            if let f = p.filename { head += "; filename=\"\(clean(f))\"" }
            head += "\r\n"
            if let t = p.contentType { head += "Content-Type: \(t)\r\n" }
            head += "Content-Length: \(p.body.count)\r\n\r\n"
            out += Array(head.utf8)
            out += p.body
            out += Array("\r\n".utf8)
        }
        out += Array("--\(boundary)--\r\n".utf8)
        return out
    }
}
