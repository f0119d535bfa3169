import Foundation

/// One data line of Unicode's `emoji-test.txt`.
///
/// A line looks like
/// `1F600 ; fully-qualified # 😀 E1.0 grinning face`: code points, a qualification status,
/// and a comment holding the rendered emoji, the Emoji version it appeared in, and its name.
public struct EmojiTestEntry: Sendable, Equatable {
    /// The code points of the emoji sequence, in order.
    public var codePoints: [UInt32]
    /// The qualification status: `fully-qualified`, `minimally-qualified`, `unqualified` or `component`.
    public var status: String
    /// The `# group:` the line belongs to, e.g. `Smileys & Emotion`.
    public var group: String
    /// The `# subgroup:` the line belongs to, e.g. `face-smiling`.
    public var subgroup: String
    /// The CLDR short name, e.g. `grinning face`.
    public var name: String
    /// The Emoji version that introduced it, e.g. `E1.0` (empty when the file does not give one).
    public var emojiVersion: String
    /// 1-based line number in the source file.
    public var line: Int

    /// The code points as upper-case hex separated by single spaces, as in the file: `1F3F3 FE0F 200D 1F308`.
    public var hexCodePoints: String {
        codePoints.map { String($0, radix: 16, uppercase: true) }.map {
            $0.count < 4 ? String(repeating: "0", count: 4 - $0.count) + $0 : $0
        }.joined(separator: " ")
    }
}

/// A parsed Unicode `emoji-test.txt` (Debian package `unicode-data`,
/// `/usr/share/unicode/emoji/emoji-test.txt`).
///
/// Only the structure is interpreted: `# group:` and `# subgroup:` comment lines, and data lines
/// `code points ; status # emoji Eversion name`. Other comments and blank lines are ignored.
public struct EmojiTestFile: Sendable {
    /// Groups that are not classes: `Component` holds skin-tone and hair swatches, not emoji.
    public static let excludedGroups: Set<String> = ["Component"]

    /// Every `# group:` name, in file order (including excluded ones).
    public var groups: [String]
    /// Every data line, in file order, whatever its status or group.
    public var entries: [EmojiTestEntry]

    /// Parses the text of an emoji-test file. `source` names the file in error messages.
    public init(text: String, source: String = "emoji-test.txt") throws {
        var groups: [String] = []
        var entries: [EmojiTestEntry] = []
        var group: String?
        var subgroup = ""
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                let comment = line.dropFirst().trimmingCharacters(in: .whitespaces)
                if let name = Self.value(of: "group:", in: comment) {
                    if groups.contains(name) {
                        throw DatasetError.corrupt("\(source):\(lineNumber): group \"\(name)\" appears twice")
                    }
                    groups.append(name)
                    group = name
                    subgroup = ""
                } else if let name = Self.value(of: "subgroup:", in: comment) {
                    subgroup = name
                }
                continue
            }
            guard let currentGroup = group else {
                throw DatasetError.corrupt("\(source):\(lineNumber): emoji line before any '# group:' line; "
                    + "is this Unicode's emoji-test.txt (Debian package unicode-data)?")
            }
            entries.append(try Self.parseEntry(line, group: currentGroup, subgroup: subgroup,
                                               source: source, lineNumber: lineNumber))
        }
        if entries.isEmpty {
            throw DatasetError.corrupt("\(source) contains no emoji lines; expected Unicode's emoji-test.txt "
                + "from the Debian package unicode-data")
        }
        self.groups = groups
        self.entries = entries
    }

    /// Reads and parses an emoji-test file. A missing file gives an error naming the Debian package.
    public init(path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw DatasetError.missingSource("emoji test data \(path) not found; it comes from the Debian package "
                + "unicode-data (install it: apt-get install unicode-data)")
        }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw DatasetError.missingSource("cannot read emoji test data \(path): \(error.localizedDescription)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw DatasetError.missingSource("emoji test data \(path) is not valid UTF-8; reinstall unicode-data")
        }
        try self.init(text: text, source: path)
    }

    /// The class names: the groups in file order, leaving out `excludedGroups`.
    public var classNames: [String] {
        groups.filter { !Self.excludedGroups.contains($0) }
    }

    /// The fully-qualified entries of non-excluded groups in file order, each with its class
    /// index into `classNames`.
    public var classEntries: [(label: Int, entry: EmojiTestEntry)] {
        let names = classNames
        var index: [String: Int] = [:]
        for (i, name) in names.enumerated() { index[name] = i }
        return entries.compactMap { entry in
            guard entry.status == "fully-qualified", let label = index[entry.group] else { return nil }
            return (label, entry)
        }
    }

    private static func value(of key: String, in comment: String) -> String? {
        guard comment.hasPrefix(key) else { return nil }
        let value = comment.dropFirst(key.count).trimmingCharacters(in: .whitespaces)
        return value.isEmpty ? nil : value
    }

    private static func parseEntry(_ line: String, group: String, subgroup: String,
                                   source: String, lineNumber: Int) throws -> EmojiTestEntry {
        func fail(_ why: String) -> DatasetError {
            DatasetError.corrupt("\(source):\(lineNumber): \(why) in line \"\(line)\"")
        }
        let hashSplit = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
        let data = hashSplit[0]
        let comment = hashSplit.count > 1 ? String(hashSplit[1]) : ""
        let fields = data.split(separator: ";", omittingEmptySubsequences: false)
        guard fields.count == 2 else { throw fail("expected 'code points ; status'") }
        let status = fields[1].trimmingCharacters(in: .whitespaces)
        guard !status.isEmpty else { throw fail("missing status") }
        var codePoints: [UInt32] = []
        for token in fields[0].split(whereSeparator: { $0 == " " || $0 == "\t" }) {
            guard token.count <= 6, let value = UInt32(token, radix: 16), value <= 0x10FFFF,
                  !(0xD800...0xDFFF).contains(value)
            else { throw fail("bad code point \"\(token)\"") }
            codePoints.append(value)
        }
        guard !codePoints.isEmpty else { throw fail("no code points") }

        // Comment: "<emoji> E<version> <name>"; the version is absent in files before Emoji 12.
        var words = comment.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        if !words.isEmpty { words.removeFirst() }  // the rendered emoji itself
        var version = ""
        if let first = words.first, first.count >= 2, first.hasPrefix("E"),
           first.dropFirst().allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
            version = first
            words.removeFirst()
        }
        let name = words.joined(separator: " ")
        return EmojiTestEntry(codePoints: codePoints, status: status, group: group, subgroup: subgroup,
                              name: name, emojiVersion: version, line: lineNumber)
    }
}
