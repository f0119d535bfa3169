import Foundation

// Requests refused before any work: cross-site requests (DNS rebinding, foreign origins),
// bodies that are not JSON where JSON is required, methods a route does not take, the token.
extension MillraceService {
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
}

/// A request whose parameters cannot be used (400, or `status`): the message names the
/// parameter and the values it takes.
struct RequestError: Error, CustomStringConvertible {
    let description: String
    let status: Int
    init(_ description: String, status: Int = 400) {
        self.description = description
        self.status = status
    }
}
