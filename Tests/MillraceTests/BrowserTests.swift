import Foundation
@testable import Millrace
import Testing

/// The page in a real browser: headless Chromium (Debian's package, installed by
/// scripts/install-deps.sh) loads web-static/index.html#autorun from a live server, runs
/// Generate, a Stream from the sample clip and Colorize on a shipped sample (with a small
/// reference pool made here). When done, the page POSTs what arrived (its <body data-*>
/// attributes) to /__selftest, which this test serves.
///
/// The browser runs in real time, without --virtual-time-budget: virtual time races ahead while
/// the page waits on a streaming response, so on a busy machine the budget ran out before the
/// first progress frame arrived (the test failed in about 1 run in 5 of the full suite).
@Suite(.serialized) struct BrowserTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func chromium() -> String? {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    final class Report: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        var values: [String: String] = [:]
    }

    @Test func pageRunsGenerateStreamAndColorizeInChromium() throws {
        let browser = try #require(Self.chromium(), "Chromium is missing: run scripts/install-deps.sh")
        let folder = try ModelFolder.load(DiffusersParityTests.fixture("unet-tiny-a"))
        var options = MillraceService.Options()
        options.staticDir = Self.repo.appendingPathComponent("web-static").path
        options.clipsDir = Self.repo.appendingPathComponent("assets/clips").path
        let pool = try ColorServerTests.pool()
        defer { try? FileManager.default.removeItem(atPath: pool) }
        options.referencesDir = pool
        let service = MillraceService(folder: folder, options: options)
        let report = Report()
        let server = HTTPServer(host: "127.0.0.1", port: 0) { request in
            if request.method == "POST" && request.path == "/__selftest" {
                let object = (try? JSONSerialization.jsonObject(with: Data(request.body))) as? [String: Any] ?? [:]
                report.values = object.mapValues { "\($0)" }
                report.done.signal()
                return .json(["received": true])
            }
            return service.handle(request)
        }
        try server.start()
        defer { service.beginShutdown(); server.stop() }

        let profile = FileManager.default.temporaryDirectory.appendingPathComponent("millrace-chromium-\(getpid())").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: browser)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=\(profile)",
                       "--no-first-run", "http://127.0.0.1:\(server.port)/#autorun"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let finished = report.done.wait(timeout: .now() + 180) == .success
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        try? FileManager.default.removeItem(atPath: profile)

        #expect(finished, "the page's self-test did not report within 180 s")
        let r = report.values
        func int(_ key: String) -> Int? { r[key].flatMap { Int($0) } }
        #expect(r["autorun"] == "done")
        #expect((int("generateFrames") ?? 0) >= 3, "progress frames and the final image arrived: \(r)")
        #expect((int("streamFrames") ?? 0) >= 3, "stream output frames arrived: \(r)")
        #expect((int("colorizeBytes") ?? 0) > 100, "the colorized PNG arrived: \(r["colorizeError"] ?? "")")
        #expect(int("colorizeRefs") == 12, "the retrieved patches were listed")
        #expect(int("colorizeWidth") == 32, "the result decoded in the page at the sample's size")
        let metrics = service.metricsText()
        #expect(metrics.contains("route=\"/v1/streams/{id}/frames\",status=\"202\""))
        #expect(metrics.contains("millrace_requests_total{route=\"/v1/colorize\",status=\"200\"} 1"))
    }
}
