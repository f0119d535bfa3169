// The check of the multipart/form-data fuzz target (Sources/MillraceFormats/Multipart.swift).
// `swift build` makes it a replay tool (main.swift); ./run.sh builds this file alone with
// libFuzzer, which calls LLVMFuzzerTestOneInput.
//
// An input is a Content-Type header value, a newline, then the body, so both the header parser
// and the body parser are fuzzed. Every input must either throw MultipartError with status 400,
// 413 or 415 and a message, or parse into 1...maxParts parts. When it parses, the parts are
// written out again with a fresh boundary and re-read: names, file names, types and bodies
// must come back identical (when the names can be written at all).

import Foundation
import MillraceFormats

let limits = MultipartFormData.Limits(maxParts: 16, maxHeaderBytes: 512)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMultipart(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    checkMultipart(size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : [])
    return 0
}

/// Parses `bytes` (Content-Type line, then the body); parts that can be written again must
/// come back identical.
func checkMultipart(_ bytes: [UInt8]) {
    let split = bytes.firstIndex(of: 0x0A) ?? bytes.count
    let type = String(decoding: bytes[0..<split], as: UTF8.self)
    let body = split < bytes.count ? Array(bytes[(split + 1)...]) : []
    let parts: [MultipartPart]
    do {
        parts = try MultipartFormData.parse(body, contentType: type, limits: limits)
    } catch let e as MultipartError {
        precondition([400, 413, 415].contains(e.status), "status \(e.status) for: \(e.message)")
        precondition(!e.message.isEmpty, "an error without a message")
        return
    } catch {
        fatalError("parse threw a non-MultipartError: \(error)")
    }
    precondition(!parts.isEmpty && parts.count <= limits.maxParts, "\(parts.count) parts")
    let writable = parts.allSatisfy { p in
        ([p.name] + (p.filename.map { [$0] } ?? [])).allSatisfy { !$0.contains(where: { "\";\r\n\\".contains($0) }) }
            && !(p.contentType ?? "").contains(where: { "\r\n".contains($0) })
    }
    guard writable else { return }
    let boundary = MultipartFormData.makeBoundary(avoiding: parts.map(\.body))
    let again: [MultipartPart]
    do {
        again = try MultipartFormData.parse(MultipartFormData.encode(parts, boundary: boundary),
                                            contentType: "multipart/form-data; boundary=\(boundary)")
    } catch {
        fatalError("re-reading written parts failed: \(error)")
    }
    precondition(again.count == parts.count, "part count changed in a round trip")
    for (a, b) in zip(parts, again) {
        precondition(a.name == b.name && a.filename == b.filename && a.body == b.body, "part '\(a.name)' changed in a round trip")
        precondition((a.contentType ?? "") == (b.contentType ?? ""), "content type of '\(a.name)' changed")
    }
}
