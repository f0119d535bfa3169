import Foundation
import Testing
@testable import MillraceTraining

/// A tiny emoji-test.txt: three classes (Component is skipped), a face, a fruit, flags, a keycap,
/// a ZWJ sequence, plus lines that must not become items.
private let miniEmojiTest = """
# emoji-test.txt (test subset)
# Format: code points; status # emoji name

# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
1F603                                                  ; fully-qualified     # 😃 E0.6 grinning face with big eyes

# subgroup: face-affection
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face
1F600 1F603                                            ; fully-qualified     # 😀😃 E0.0 not one glyph

# Smileys & Emotion subtotal:		4

# group: Component

# subgroup: skin-tone
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone

# group: Food & Drink

# subgroup: food-fruit
1F34E                                                  ; fully-qualified     # 🍎 E0.6 red apple
1F34C                                                  ; fully-qualified     # 🍌 E0.6 banana

# group: Symbols

# subgroup: keycap
0023 FE0F 20E3                                         ; fully-qualified     # #️⃣ E0.6 keycap: #
0023 20E3                                              ; unqualified         # #⃣ E0.6 keycap: #

# group: Flags

# subgroup: flag
1F3F3 FE0F 200D 1F308                                  ; fully-qualified     # 🏳️‍🌈 E4.0 rainbow flag

# subgroup: country-flag
1F1EB 1F1F7                                            ; fully-qualified     # 🇫🇷 E0.6 flag: France
1F1EF 1F1F5                                            ; fully-qualified     # 🇯🇵 E0.6 flag: Japan

#EOF
"""

private func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("millrace-ds-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

private func writeMiniEmojiTest(in directory: URL) throws -> String {
    let path = directory.appendingPathComponent("emoji-test.txt").path
    try miniEmojiTest.write(toFile: path, atomically: false, encoding: .utf8)
    return path
}

private func message(of body: () throws -> Void) -> String? {
    do {
        try body()
        return nil
    } catch let error as DatasetError {
        return error.message
    } catch {
        return "unexpected error type: \(error)"
    }
}

/// A small dataset made by hand, independent of the font.
private func handMadeDataset() -> ImageDataset {
    let size = 4
    let count = 3
    let pixels = (0..<(count * 3 * size * size)).map { UInt8(truncatingIfNeeded: $0 * 7) }
    return ImageDataset(
        size: size, classNames: ["A", "B"], labels: [0, 1, 1], split: [0, 0, 1], pixels: pixels,
        items: [DatasetItem(codepoints: "1F600", name: "grinning face", subgroup: "face-smiling"),
                DatasetItem(codepoints: "1F1EB 1F1F7", name: "flag: France", subgroup: "country-flag"),
                DatasetItem(codepoints: "0023 FE0F 20E3", name: "keycap: #", subgroup: "keycap")])
}

private func writeLE(_ value: UInt32, into bytes: inout [UInt8], at offset: Int) {
    for k in 0..<4 { bytes[offset + k] = UInt8(truncatingIfNeeded: value >> (8 * k)) }
}

/// Re-seals a modified file with a correct checksum, so validation past the checksum is exercised.
private func resealed(_ bytes: [UInt8]) -> [UInt8] {
    var body = Array(bytes.dropLast(4))
    let crc = CRC32.checksum(body)
    body += [0, 0, 0, 0]
    writeLE(crc, into: &body, at: body.count - 4)
    return body
}

@Suite struct EmojiDatasetTests {
    @Test func parsesEmojiTestText() throws {
        let file = try EmojiTestFile(text: miniEmojiTest)
        #expect(file.groups == ["Smileys & Emotion", "Component", "Food & Drink", "Symbols", "Flags"])
        #expect(file.classNames == ["Smileys & Emotion", "Food & Drink", "Symbols", "Flags"])
        #expect(file.entries.count == 13)
        let chosen = file.classEntries
        #expect(chosen.count == 10)
        #expect(chosen.allSatisfy { $0.entry.status == "fully-qualified" })
        #expect(!chosen.contains { $0.entry.group == "Component" })
        #expect(chosen.map(\.label) == [0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
        let first = chosen[0].entry
        #expect(first.codePoints == [0x1F600])
        #expect(first.name == "grinning face")
        #expect(first.emojiVersion == "E1.0")
        #expect(first.subgroup == "face-smiling")
        let keycap = chosen.first { $0.entry.name == "keycap: #" }!.entry
        #expect(keycap.codePoints == [0x23, 0xFE0F, 0x20E3])
        #expect(keycap.hexCodePoints == "0023 FE0F 20E3")
        let rainbow = chosen.first { $0.entry.name == "rainbow flag" }!
        #expect(rainbow.entry.codePoints == [0x1F3F3, 0xFE0F, 0x200D, 0x1F308])
        #expect(rainbow.label == 3)
        #expect(rainbow.entry.subgroup == "flag")
    }

    @Test func parserRejectsMalformedLines() {
        let bad = "# group: G\n1F60Z ; fully-qualified # x E1.0 bad\n"
        #expect(message { _ = try EmojiTestFile(text: bad, source: "t.txt") }?.contains("t.txt:2") == true)
        let orphan = "1F600 ; fully-qualified # 😀 E1.0 grinning face\n"
        #expect(message { _ = try EmojiTestFile(text: orphan) }?.contains("group") == true)
        #expect(message { _ = try EmojiTestFile(text: "# nothing here\n") }?.contains("unicode-data") == true)
    }

    @Test func buildsSmallSubsetWithLabels() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let dataset = try EmojiDatasetBuilder.build(size: 32, emojiTestPath: try writeMiniEmojiTest(in: dir))
        #expect(dataset.classNames == ["Smileys & Emotion", "Food & Drink", "Symbols", "Flags"])
        // The two-emoji sequence shapes to two glyphs and is skipped; everything else renders.
        let names = dataset.items.map(\.name)
        #expect(names == ["grinning face", "grinning face with big eyes", "smiling face", "red apple",
                          "banana", "keycap: #", "rainbow flag", "flag: France", "flag: Japan"])
        #expect(dataset.labels == [0, 0, 0, 1, 1, 2, 3, 3, 3])
        #expect(dataset.items[7].codepoints == "1F1EB 1F1F7")
        #expect(dataset.items[7].subgroup == "country-flag")
        #expect(dataset.items[7].text == "🇫🇷")
        #expect(dataset.pixels.count == dataset.count * 3 * 32 * 32)
        #expect(dataset.split == [UInt8](repeating: 0, count: 9))  // fewer than 10 per group
        for i in 0..<dataset.count {
            let n = 3 * 32 * 32
            let image = dataset.pixels[i * n ..< (i + 1) * n]
            // Not all white, and the corners are white background.
            #expect(image.contains { $0 < 200 }, "item \(i) \(names[i]) is blank")
            #expect(image[image.startIndex] >= 250, "item \(i) \(names[i]) has no white background")
        }
        // The French flag has a blue left part and a red right part in the middle row.
        let france = dataset.image(at: 7)
        #expect(france.width == 32 && france.height == 32)
        let plane = 32 * 32, mid = 16 * 32
        let left = (france.planes[mid + 8], france.planes[plane + mid + 8], france.planes[2 * plane + mid + 8])
        let right = (france.planes[mid + 24], france.planes[plane + mid + 24], france.planes[2 * plane + mid + 24])
        #expect(left.2 > left.0 + 0.2, "left of the French flag should be blue: \(left)")
        #expect(right.0 > right.2 + 0.2, "right of the French flag should be red: \(right)")
    }

    @Test func buildingTwiceGivesIdenticalBytes() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let testPath = try writeMiniEmojiTest(in: dir)
        let a = try EmojiDatasetBuilder.build(size: 16, emojiTestPath: testPath)
        let b = try EmojiDatasetBuilder.build(size: 16, emojiTestPath: testPath)
        let pathA = dir.appendingPathComponent("a.mrds").path
        let pathB = dir.appendingPathComponent("b.mrds").path
        try a.write(path: pathA)
        try b.write(path: pathB)
        let bytesA = try Data(contentsOf: URL(fileURLWithPath: pathA))
        let bytesB = try Data(contentsOf: URL(fileURLWithPath: pathB))
        #expect(bytesA == bytesB)
        #expect(bytesA.count > 9 * 3 * 16 * 16)
    }

    @Test func limitOnRealEmojiTestKeepsFirstEmoji() throws {
        var calls = 0
        var last = (0, 0)
        let dataset = try EmojiDatasetBuilder.build(size: 16, limit: 12) { done, total in
            calls += 1
            last = (done, total)
        }
        #expect(dataset.count == 12)
        #expect(dataset.classNames == ["Smileys & Emotion", "People & Body", "Animals & Nature",
                                       "Food & Drink", "Travel & Places", "Activities", "Objects",
                                       "Symbols", "Flags"])
        #expect(dataset.labels.allSatisfy { $0 == 0 })
        #expect(dataset.items[0].name == "grinning face")
        #expect(dataset.indices(split: 1) == [9])
        #expect(dataset.indices(split: 0).count == 11)
        #expect(calls == 13)
        #expect(last == (12, 12))
        // The sprites are the same emoji with their coverage: quantised, the very same bytes.
        let sprites = try EmojiDatasetBuilder.buildSprites(size: 16, limit: 12)
        #expect(EmojiDatasetBuilder.quantize(sprites.colour) == dataset.pixels)
        #expect(sprites.labels == dataset.labels && sprites.split == dataset.split && sprites.items == dataset.items)
        #expect(sprites.alpha.count == 12 * 16 * 16 && sprites.alpha.allSatisfy { $0 >= 0 && $0 <= 1 })
        // Uncovered pixels are white, and a face covers its middle.
        for p in 0..<(16 * 16) where sprites.alpha[p] == 0 { #expect(sprites.colour[p] == 1) }
        #expect(sprites.alpha[8 * 16 + 8] > 0.99)
    }

    @Test func writeReadRoundTrip() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let dataset = handMadeDataset()
        let path = dir.appendingPathComponent("nested/dir/set.mrds").path
        try dataset.write(path: path)
        let back = try ImageDataset.read(path: path)
        #expect(back == dataset)
        #expect(back.indices(split: 1) == [2])
        #expect(back.countsPerClass == [1, 2])
        // No temporary file is left behind.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("nested/dir").path)
        #expect(leftovers == ["set.mrds"])
        // The documented layout: magic, then little-endian header fields.
        let bytes = try dataset.serialized()
        #expect(Array(bytes[0..<4]) == Array("MRDS".utf8))
        #expect(bytes[4] == 1 && bytes[8] == 4 && bytes[12] == 4 && bytes[16] == 3 && bytes[20] == 3 && bytes[24] == 2)
        let jsonLength = Int(bytes[28]) | Int(bytes[29]) << 8
        #expect(bytes.count == 32 + jsonLength + 3 + 3 + 3 * 3 * 4 * 4 + 4)
        let json = String(decoding: bytes[32..<(32 + jsonLength)], as: UTF8.self)
        #expect(json.hasPrefix("{\"classes\":[\"A\",\"B\"],\"items\":[{\"codepoints\":\"1F600\",\"name\""))
        // image(at:) scales bytes to [0, 1].
        let image = back.image(at: 1)
        #expect(image.planes.count == 3 * 16)
        #expect(image.planes[0] == Float(dataset.pixels[48]) / 255)
    }

    @Test func corruptFilesGiveClearErrors() throws {
        let good = try handMadeDataset().serialized()
        let path = "runs/x.mrds"

        let truncated = message { _ = try ImageDataset.parse(Array(good.dropLast(10)), path: path) }
        #expect(truncated?.contains("truncated") == true)
        #expect(truncated?.contains("rebuild it") == true)
        #expect(throws: DatasetError.notFound(path: "/nonexistent/x.mrds")) { try ImageDataset.read(path: "/nonexistent/x.mrds") }
        #expect(message { _ = try ImageDataset.parse(Array(good.prefix(20)), path: path) }?.contains("truncated") == true)
        #expect(message { _ = try ImageDataset.parse([], path: path) } != nil)

        var badMagic = good
        badMagic[0] = UInt8(ascii: "X")
        #expect(message { _ = try ImageDataset.parse(badMagic, path: path) }?.contains("MRDS") == true)

        var flipped = good
        flipped[good.count - 20] ^= 0x10
        #expect(message { _ = try ImageDataset.parse(flipped, path: path) }?.contains("checksum") == true)

        var hugeCount = good
        writeLE(0xFFFF_FFFF, into: &hugeCount, at: 20)
        #expect(message { _ = try ImageDataset.parse(resealed(hugeCount), path: path) }?.contains("truncated") == true)

        var hugeJSON = good
        writeLE(0xFFFF_FFF0, into: &hugeJSON, at: 28)
        #expect(message { _ = try ImageDataset.parse(hugeJSON, path: path) }?.contains("truncated") == true)

        var hugeSize = good
        writeLE(0xFFFF_FFFF, into: &hugeSize, at: 8)
        writeLE(0xFFFF_FFFF, into: &hugeSize, at: 12)
        #expect(message { _ = try ImageDataset.parse(hugeSize, path: path) }?.contains("size") == true)

        var badVersion = good
        writeLE(99, into: &badVersion, at: 4)
        #expect(message { _ = try ImageDataset.parse(badVersion, path: path) }?.contains("version 99") == true)

        // A label outside the class range, behind a valid checksum.
        let jsonLength = Int(good[28]) | Int(good[29]) << 8 | Int(good[30]) << 16
        var badLabel = good
        badLabel[32 + jsonLength] = 7
        #expect(message { _ = try ImageDataset.parse(resealed(badLabel), path: path) }?.contains("label 7") == true)

        var trailing = good
        trailing.append(0)
        #expect(message { _ = try ImageDataset.parse(trailing, path: path) }?.contains("wrong length") == true)

        #expect(message { _ = try ImageDataset.read(path: "/nonexistent/set.mrds") }?.contains("not found") == true)
    }

    @Test func checksumIsStandardCRC32() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
    }

    @Test func missingFilesNameTheirPackages() throws {
        let font = message { _ = try EmojiDatasetBuilder.build(fontPath: "/nonexistent/NotoColorEmoji.ttf") }
        #expect(font?.contains("fonts-noto-color-emoji") == true)
        #expect(font?.contains("/nonexistent/NotoColorEmoji.ttf") == true)
        let data = message { _ = try EmojiDatasetBuilder.build(emojiTestPath: "/nonexistent/emoji-test.txt") }
        #expect(data?.contains("unicode-data") == true)
        #expect(data?.contains("/nonexistent/emoji-test.txt") == true)
    }
}
