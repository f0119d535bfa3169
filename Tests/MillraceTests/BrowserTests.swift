import Foundation
@testable import Millrace
import Testing

/// The page in a real browser: headless Chromium (Debian's package, installed by
/// scripts/install-deps.sh) loads web-static/index.html#autorun from a live server, runs
/// Generate and a Stream from the sample clip, and the test reads from the DOM what arrived.
@Suite(.serialized) struct BrowserTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func chromium() -> String? {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    @Test func pageRunsGenerateAndAStreamInChromium() throws {
        let browser = try #require(Self.chromium(), "Chromium is missing: run scripts/install-deps.sh")
        let folder = try ModelFolder.load(DiffusersParityTests.fixture("unet-tiny-a"))
        var options = MillraceService.Options()
        options.staticDir = Self.repo.appendingPathComponent("web-static").path
        options.clipsDir = Self.repo.appendingPathComponent("assets/clips").path
        let service = MillraceService(folder: folder, options: options)
        let server = HTTPServer(host: "127.0.0.1", port: 0) { service.handle($0) }
        try server.start()
        defer { service.beginShutdown(); server.stop() }

        let profile = FileManager.default.temporaryDirectory.appendingPathComponent("millrace-chromium-\(getpid())").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: browser)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=\(profile)",
                       "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw", "--dump-dom",
                       "http://127.0.0.1:\(server.port)/#autorun"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let killer = DispatchWorkItem { if p.isRunning { p.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 120, execute: killer)
        let dom = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        killer.cancel()
        try? FileManager.default.removeItem(atPath: profile)

        func attribute(_ name: String) -> Int? {
            guard let r = dom.range(of: "\(name)=\"") else { return nil }
            return Int(dom[r.upperBound...].prefix { $0.isNumber })
        }
        #expect(dom.contains("data-autorun=\"done\""), "the page's self-test did not finish: \(dom.prefix(300))")
        #expect((attribute("data-generate-frames") ?? 0) >= 3, "progress frames and the final image arrived")
        #expect((attribute("data-stream-frames") ?? 0) >= 3, "stream output frames arrived")
        #expect(service.metrics.render(streams: [], modelCalls: 0).contains("route=\"/v1/streams/{id}/frames\",status=\"202\""))
    }
}
