import Foundation
import Testing
@testable import MillraceFormats
import MillraceTestSupport

/// The multipart/form-data reader and writer (Sources/MillraceFormats/Multipart.swift).
struct MultipartTests {
    static func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// What Chromium sends for a form with a file and a text field.
    static let chromeBody = bytes("""
    ------WebKitFormBoundaryq9GvBZ0nA1hT3dkE\r
    Content-Disposition: form-data; name="image"; filename="a b%22c.png"\r
    Content-Type: image/png\r
    \r
    \u{1}PNG\r
    data\r\n\r
    ------WebKitFormBoundaryq9GvBZ0nA1hT3dkE\r
    Content-Disposition: form-data; name="seed"\r
    \r
    7\r
    ------WebKitFormBoundaryq9GvBZ0nA1hT3dkE--\r

    """)
    static let chromeType = "multipart/form-data; boundary=----WebKitFormBoundaryq9GvBZ0nA1hT3dkE"

    @Test func readsWhatBrowsersAndCurlSend() throws {
        let parts = try MultipartFormData.parse(Self.chromeBody, contentType: Self.chromeType)
        #expect(parts.count == 2)
        #expect(parts[0] == MultipartPart(name: "image", filename: "a b%22c.png", contentType: "image/png", body: Self.bytes("\u{1}PNG\r\ndata\r\n")))
        #expect(parts[1].name == "seed" && parts[1].filename == nil && parts[1].contentType == nil && parts[1].text == "7")
        // curl -F: a quoted boundary parameter, mixed-case names, an epilogue, a preamble.
        let curl = Self.bytes("preamble text\r\n--X-Y\r\ncontent-disposition: Form-Data; NAME=image; filename=\"q\\\"uote.png\"\r\nCONTENT-TYPE: application/octet-stream\r\nX-Other: ignored\r\n\r\n\r\n--X-Y  \t\r\nContent-Disposition: form-data; name=\"e\"\r\nContent-Transfer-Encoding: binary\r\n\r\n\r\n--X-Y--epilogue\r\nmore")
        let p2 = try MultipartFormData.parse(curl, contentType: "Multipart/Form-Data; charset=utf-8; boundary=\"X-Y\"")
        #expect(p2.map(\.name) == ["image", "e"])
        #expect(p2[0].filename == "q\"uote.png" && p2[0].body == Self.bytes("") && p2[0].contentType == "application/octet-stream")
        #expect(p2[1].body.isEmpty)
    }

    @Test func refusesMalformedBodies() {
        let b = "multipart/form-data; boundary=B"
        func status(_ body: String, _ type: String? = "multipart/form-data; boundary=B") -> Int? {
            do { _ = try MultipartFormData.parse(Self.bytes(body), contentType: type); return nil } catch let e as MultipartError {
                #expect(!e.message.isEmpty)
                return e.status
            } catch { return -1 }
        }
        let ok = "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B--\r\n"
        #expect(status(ok) == nil)
        #expect(status(ok, nil) == 415)
        #expect(status(ok, "application/json") == 415)
        #expect(status(ok, "multipart/mixed; boundary=B") == 415)
        #expect(status(ok, "multipart/form-data") == 400)
        #expect(status(ok, "multipart/form-data; boundary=") == 400)
        #expect(status(ok, "multipart/form-data; boundary=\"B") == 400)
        #expect(status(ok, "multipart/form-data; boundary=B; boundary=C") == 400)
        #expect(status(ok, "multipart/form-data; boundary=\(String(repeating: "b", count: 71))") == 400)
        #expect(status(ok, "multipart/form-data; boundary=\"B \"") == 400)
        #expect(status(ok, "multipart/form-data; boundary=B junk") == 400)
        for (body, why) in [
            ("", "empty"),
            ("no boundary at all", "no delimiter"),
            ("--B--\r\n", "no parts"),
            ("--B", "truncated after the boundary"),
            ("--Bx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B--", "longer boundary"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx", "no closing boundary"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B", "truncated at the end"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n", "truncated in the headers"),
            ("--B\r\n\r\nx\r\n--B--", "no headers"),
            ("--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--", "no Content-Disposition"),
            ("--B\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--B--", "not form-data"),
            ("--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n--B--", "no name"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"; name=\"b\"\r\n\r\nx\r\n--B--", "two names"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--B--", "unterminated quote"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nx\r\n--B--", "two dispositions"),
            ("--B\r\nContent-Disposition: form-data;\r\n name=\"a\"\r\n\r\nx\r\n--B--", "folded header"),
            ("--B\r\nContent-Disposition form-data\r\n\r\nx\r\n--B--", "no colon"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"\nX: y\r\n\r\nx\r\n--B--", "bare LF"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\u{0}\"\r\n\r\nx\r\n--B--", "NUL in a header"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\neA==\r\n--B--", "base64"),
            ("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B junk\r\n", "junk after a boundary"),
        ] {
            #expect(status(body, b) == 400, "\(why)")
        }
        // Limits.
        let many = String(repeating: "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n", count: 5) + "--B--"
        #expect(status(many) == nil)
        var limited: Int?
        do { _ = try MultipartFormData.parse(Self.bytes(many), boundary: "B", limits: .init(maxParts: 4)) } catch let e as MultipartError {
            limited = e.status
        } catch {}
        #expect(limited == 413)
        let longHeader = "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: \(String(repeating: "p", count: 9000))\r\n\r\nx\r\n--B--"
        #expect(status(longHeader) == 400)
    }

    @Test func writerRoundTripsAndAvoidsItsBoundary() throws {
        var rng = TestRNG(seed: 11)
        for trial in 0..<50 {
            let parts = (0..<(1 + Int(rng.next() % 4))).map { k in
                MultipartPart(name: "f\(k)", filename: trial % 2 == 0 ? "file \(k).png" : nil,
                              contentType: k % 2 == 0 ? "image/png" : nil,
                              body: (0..<Int(rng.next() % 300)).map { _ in [0x0D, 0x0A, 0x2D, UInt8(truncatingIfNeeded: rng.next())][Int(rng.next() % 4)] })
            }
            let boundary = MultipartFormData.makeBoundary(avoiding: parts.map(\.body))
            #expect(boundary.hasPrefix("millrace-") && boundary.count == 33)
            let encoded = MultipartFormData.encode(parts, boundary: boundary)
            let back = try MultipartFormData.parse(encoded, contentType: "multipart/form-data; boundary=\(boundary)")
            #expect(back == parts)
        }
    }

    @Test func searchMatchesANaiveOne() {
        var rng = TestRNG(seed: 3)
        for _ in 0..<2000 {
            let alphabet: [UInt8] = [0x0D, 0x0A, 0x2D, 0x42]
            let hay = (0..<Int(rng.next() % 64)).map { _ in alphabet[Int(rng.next() % 4)] }
            let needle = (0..<(1 + Int(rng.next() % 6))).map { _ in alphabet[Int(rng.next() % 4)] }
            let from = hay.isEmpty ? 0 : Int(rng.next() % UInt64(hay.count + 1))
            var naive: Int?
            if hay.count >= needle.count {
                for i in from...max(from, hay.count - needle.count) where i + needle.count <= hay.count && Array(hay[i..<(i + needle.count)]) == needle {
                    naive = i
                    break
                }
            }
            let fast = hay.withUnsafeBufferPointer { MultipartFormData.find(needle, in: $0, from: from) }
            #expect(fast == naive, "\(hay) \(needle) from \(from)")
        }
    }
}
