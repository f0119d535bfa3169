import Foundation

/// A small, strict JSON reader for untrusted input (RFC 8259): the one way Millrace reads JSON
/// it did not just write (safetensors headers, config.json, flow.json, request bodies).
///
/// Unlike `JSONSerialization` it keeps integers apart from other numbers (so `3.0`, `1e2` and
/// `true` are never taken for a dimension), reports duplicate object keys, bounds nesting depth
/// so hostile input cannot exhaust the stack, and never traps: every failure is a thrown
/// `StrictJSON.ParseError` naming the byte offset and the key path it happened under.
public enum StrictJSON: Sendable {
    case null
    case bool(Bool)
    /// A number. `.integer` when the literal has no fraction or exponent and fits in `Int`.
    case number(Number)
    case string(String)
    case array([StrictJSON])
    /// Members in the order they appear; keys are unique (duplicates are a parse error).
    case object([(key: String, value: StrictJSON)])

    /// A JSON number as written.
    public enum Number: Sendable, Equatable {
        /// An integer literal (no `.`, `e` or `E`) that fits in `Int`.
        case integer(Int)
        /// Any other number (fraction, exponent or out of `Int` range), as written.
        case other(String)
    }

    /// Why a JSON text was rejected.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        /// Byte offset into the input where the problem was found.
        public var offset: Int
        /// What was wrong.
        public var reason: String
        /// Object keys leading to the problem, outermost first (empty at top level).
        public var path: [String]

        public var description: String {
            let location = path.isEmpty
                ? "at byte \(offset)"
                : "at byte \(offset), under \(path.map { "'\($0)'" }.joined(separator: " → "))"
            return "\(reason) (\(location))"
        }
    }

    /// Most arrays/objects allowed to be open at once.
    public static let maximumDepth = 64

    /// Parses one JSON value from `bytes`; only whitespace may follow it.
    public static func parse(_ bytes: [UInt8]) throws(ParseError) -> StrictJSON {
        var parser = Parser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        if parser.index < bytes.count {
            throw parser.error("unexpected \(Parser.describe(bytes[parser.index])) after the JSON value")
        }
        return value
    }

    /// A short human name for the kind of value, for error messages.
    public var kindName: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(.integer(let i)): return "the integer \(i)"
        case .number(.other(let text)): return "the number \(text)"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Writes `text` as a JSON string literal (with quotes) into `out`, escaping as needed.
    static func appendQuoted(_ text: String, to out: inout [UInt8]) {
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x00..<0x20, 0x7F:
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"),
                                        UInt8(ascii: "0"), UInt8(ascii: "0"),
                                        hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

private struct Parser {
    let bytes: [UInt8]
    var index = 0
    var path: [String] = []

    init(bytes: [UInt8]) { self.bytes = bytes }

    func error(_ reason: String) -> StrictJSON.ParseError {
        StrictJSON.ParseError(offset: index, reason: reason, path: path)
    }

    static func describe(_ byte: UInt8) -> String {
        if byte >= 0x21 && byte < 0x7F { return "'\(Character(Unicode.Scalar(byte)))'" }
        let hex = String(byte, radix: 16, uppercase: true)
        return "byte 0x\(byte < 0x10 ? "0" : "")\(hex)"
    }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    /// Consumes `literal` exactly or throws.
    mutating func expectLiteral(_ literal: StaticString) throws(StrictJSON.ParseError) {
        let start = index
        var ok = true
        literal.withUTF8Buffer { lit in
            if bytes.count - index < lit.count { ok = false; return }
            for (k, b) in lit.enumerated() where bytes[index + k] != b { ok = false; return }
        }
        guard ok else {
            index = start
            throw error("invalid literal (expected \(literal))")
        }
        index += literal.utf8CodeUnitCount
    }

    mutating func parseValue(depth: Int) throws(StrictJSON.ParseError) -> StrictJSON {
        guard index < bytes.count else { throw error("unexpected end of JSON, expected a value") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("unexpected \(Parser.describe(bytes[index])), expected a value")
        }
    }

    mutating func parseObject(depth: Int) throws(StrictJSON.ParseError) -> StrictJSON {
        guard depth <= StrictJSON.maximumDepth else {
            throw error("nesting deeper than \(StrictJSON.maximumDepth) levels")
        }
        index += 1  // '{'
        var members: [(key: String, value: StrictJSON)] = []
        var seen = Set<String>()
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of JSON inside an object") }
            guard bytes[index] == UInt8(ascii: "\"") else {
                throw error("unexpected \(Parser.describe(bytes[index])), expected a quoted key")
            }
            let keyOffset = index
            let key = try parseString()
            guard seen.insert(key).inserted else {
                index = keyOffset
                throw error("duplicate key '\(key)'")
            }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                throw error("expected ':' after key '\(key)'")
            }
            index += 1
            skipWhitespace()
            path.append(key)
            let value = try parseValue(depth: depth)
            path.removeLast()
            members.append((key: key, value: value))
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of JSON inside an object") }
            switch bytes[index] {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "}"): index += 1; return .object(members)
            default: throw error("unexpected \(Parser.describe(bytes[index])), expected ',' or '}'")
            }
        }
    }

    mutating func parseArray(depth: Int) throws(StrictJSON.ParseError) -> StrictJSON {
        guard depth <= StrictJSON.maximumDepth else {
            throw error("nesting deeper than \(StrictJSON.maximumDepth) levels")
        }
        index += 1  // '['
        var elements: [StrictJSON] = []
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue(depth: depth))
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of JSON inside an array") }
            switch bytes[index] {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "]"): index += 1; return .array(elements)
            default: throw error("unexpected \(Parser.describe(bytes[index])), expected ',' or ']'")
            }
        }
    }

    /// Reads four hex digits at `index`.
    mutating func parseHex4() throws(StrictJSON.ParseError) -> UInt32 {
        guard bytes.count - index >= 4 else { throw error("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[index]
            let digit: UInt32
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(b - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(b - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(b - UInt8(ascii: "A")) + 10
            default: throw error("invalid hex digit \(Parser.describe(b)) in \\u escape")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    /// Parses a string literal starting at the opening quote. Raw bytes are taken as UTF-8 and
    /// must be valid; escapes are decoded; lone surrogates are rejected.
    mutating func parseString() throws(StrictJSON.ParseError) -> String {
        index += 1  // opening quote
        var scalars = String.UnicodeScalarView()
        var runStart = index
        func flushRun(_ end: Int, into scalars: inout String.UnicodeScalarView) -> Bool {
            guard runStart < end else { return true }
            var iterator = bytes[runStart..<end].makeIterator()
            var decoder = UTF8()
            while true {
                switch decoder.decode(&iterator) {
                case .scalarValue(let s): scalars.append(s)
                case .emptyInput: return true
                case .error: return false
                }
            }
        }
        while true {
            guard index < bytes.count else { throw error("unterminated string") }
            let b = bytes[index]
            if b == UInt8(ascii: "\"") {
                guard flushRun(index, into: &scalars) else { throw error("string is not valid UTF-8") }
                index += 1
                return String(scalars)
            }
            if b < 0x20 {
                throw error("raw control character \(Parser.describe(b)) in a string (must be escaped)")
            }
            if b != UInt8(ascii: "\\") {
                index += 1
                continue
            }
            guard flushRun(index, into: &scalars) else { throw error("string is not valid UTF-8") }
            index += 1
            guard index < bytes.count else { throw error("unterminated escape in a string") }
            let escape = bytes[index]
            index += 1
            switch escape {
            case UInt8(ascii: "\""): scalars.append("\"")
            case UInt8(ascii: "\\"): scalars.append("\\")
            case UInt8(ascii: "/"): scalars.append("/")
            case UInt8(ascii: "b"): scalars.append("\u{08}")
            case UInt8(ascii: "f"): scalars.append("\u{0C}")
            case UInt8(ascii: "n"): scalars.append("\n")
            case UInt8(ascii: "r"): scalars.append("\r")
            case UInt8(ascii: "t"): scalars.append("\t")
            case UInt8(ascii: "u"):
                let first = try parseHex4()
                var code = first
                if first >= 0xD800 && first < 0xDC00 {
                    guard bytes.count - index >= 6,
                          bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
                    else { throw error("unpaired surrogate \\u\(String(first, radix: 16)) in a string") }
                    index += 2
                    let second = try parseHex4()
                    guard second >= 0xDC00 && second < 0xE000 else {
                        throw error("unpaired surrogate \\u\(String(first, radix: 16)) in a string")
                    }
                    code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else if first >= 0xDC00 && first < 0xE000 {
                    throw error("unpaired surrogate \\u\(String(first, radix: 16)) in a string")
                }
                guard let scalar = Unicode.Scalar(code) else {
                    throw error("invalid \\u escape in a string")
                }
                scalars.append(scalar)
            default:
                index -= 1
                throw error("invalid escape \\\(Parser.describe(escape)) in a string")
            }
            runStart = index
        }
    }

    /// Parses a number per the JSON grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    mutating func parseNumber() throws(StrictJSON.ParseError) -> StrictJSON.Number {
        let start = index
        func isDigit(_ i: Int) -> Bool {
            i < bytes.count && bytes[i] >= UInt8(ascii: "0") && bytes[i] <= UInt8(ascii: "9")
        }
        var negative = false
        if bytes[index] == UInt8(ascii: "-") { negative = true; index += 1 }
        guard isDigit(index) else { throw error("invalid number: expected a digit") }
        var integral = true
        var magnitude: Int = 0  // accumulated as a negative number so Int.min fits
        var fits = true
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
            if isDigit(index) { throw error("invalid number: leading zero") }
        } else {
            while isDigit(index) {
                let digit = Int(bytes[index] - UInt8(ascii: "0"))
                if fits {
                    let (m, o1) = magnitude.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.subtractingReportingOverflow(digit)
                    if o1 || o2 { fits = false } else { magnitude = s }
                }
                index += 1
            }
        }
        if index < bytes.count && bytes[index] == UInt8(ascii: ".") {
            integral = false
            index += 1
            guard isDigit(index) else { throw error("invalid number: expected a digit after '.'") }
            while isDigit(index) { index += 1 }
        }
        if index < bytes.count && (bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E")) {
            integral = false
            index += 1
            if index < bytes.count && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) {
                index += 1
            }
            guard isDigit(index) else { throw error("invalid number: expected a digit in the exponent") }
            while isDigit(index) { index += 1 }
        }
        if integral && fits {
            if negative { return .integer(magnitude) }
            if magnitude != Int.min { return .integer(-magnitude) }
        }
        return .other(String(decoding: bytes[start..<index], as: UTF8.self))
    }
}

/// Whether a number that JSONSerialization produced was a JSON `true`/`false` (boxed as a char).
public func isJSONBool(_ n: NSNumber) -> Bool {
    String(cString: n.objCType) == "c"
}

extension StrictJSON {
    /// The value as Foundation objects, the shape JSONSerialization gives: [String: Any],
    /// [Any], String, NSNumber (integers as Int, other numbers as Double, booleans as Bool, so
    /// `isJSONBool` tells them apart) and NSNull.
    public var foundationValue: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let b): return NSNumber(value: b)
        case .number(.integer(let i)): return NSNumber(value: i)
        case .number(.other(let text)): return NSNumber(value: Double(text) ?? .nan)
        case .string(let s): return s
        case .array(let a): return a.map(\.foundationValue)
        case .object(let members):
            var d: [String: Any] = [:]
            for (k, v) in members { d[k] = v.foundationValue }
            return d
        }
    }

    /// Parses `bytes`, which must hold one JSON object, into a dictionary (see `foundationValue`).
    /// Duplicate keys, nesting deeper than `maximumDepth` and anything but an object are errors.
    public static func parseObject(_ bytes: [UInt8]) throws -> [String: Any] {
        let value = try parse(bytes)
        guard case .object = value, let d = value.foundationValue as? [String: Any] else {
            throw ParseError(offset: 0, reason: "expected a JSON object, found \(value.kindName)", path: [])
        }
        return d
    }

    /// Checks `bytes` with the strict reader, then decodes them with JSONDecoder: the strict
    /// reader refuses duplicate keys and deep nesting that JSONDecoder would accept.
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        _ = try parse(bytes)
        return try JSONDecoder().decode(type, from: Data(bytes))
    }
}
