import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Raw TCP on loopback for tests that must send what no HTTP client sends (half-sent requests,
// dripped headers, clients that leave).

/// A TCP socket connected to 127.0.0.1:`port`, with a receive timeout.
public func loopbackSocket(port: UInt16, timeout: Double = 10) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1e6))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    return fd
}

/// Sends `request` on a new connection to 127.0.0.1:`port` and reads until the peer closes,
/// `marker` appears, or the timeout.
public func loopbackExchange(port: UInt16, _ request: String, until marker: String? = nil, timeout: Double = 10) -> String {
    let fd = loopbackSocket(port: port, timeout: timeout)
    defer { close(fd) }
    _ = request.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n <= 0 { break }
        out += buf[0..<n]
        if let marker, String(decoding: out, as: UTF8.self).contains(marker) { break }
    }
    return String(decoding: out, as: UTF8.self)
}
