import Foundation

/// A one-line progress bar on stderr: `label [#####.....] 12/100 12% · extra · 3.1 it/s · ETA 0:28`.
/// Redraws at most ~10 times a second; prints plain lines instead when stderr is not a terminal
/// (at every 10% of the work and at least once a minute), so logs stay readable.
public final class ProgressBar {
    let label: String
    let total: Int
    let start = Date()
    var lastDraw = Date.distantPast
    var lastPercentLogged = -1
    let isTTY = isatty(STDERR_FILENO) != 0
    let unit: String

    let initial: Int

    /// `initial`: work already done before this run (a resumed job); rates count from it.
    public init(_ label: String, total: Int, unit: String = "it", initial: Int = 0) {
        self.label = label
        self.total = max(total, 1)
        self.unit = unit
        self.initial = initial
    }

    /// Reports `done` of `total` items finished; `extra` is shown after the count (loss, ...).
    /// `rateScale` converts items/s into the unit shown (e.g. batch size for images/s).
    public func update(_ done: Int, extra: String = "", rateScale: Double = 1, force: Bool = false) {
        let now = Date()
        let pct = Int(100 * Double(done) / Double(total))
        let text = status(done: done, elapsed: now.timeIntervalSince(start), extra: extra, rateScale: rateScale)
        if isTTY {
            guard force || done >= total || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
            lastDraw = now
            let width = 24
            let filled = min(width, width * done / total)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r\u{1B}[2K\(label) [\(bar)] \(text)".utf8))
        } else {
            let decile = pct / 10
            guard force || decile > lastPercentLogged || done >= total
                    || now.timeIntervalSince(lastDraw) >= 60 else { return }
            lastPercentLogged = decile
            lastDraw = now
            FileHandle.standardError.write(Data("\(label): \(text)\n".utf8))
        }
    }

    /// The text after the bar: `12/100 · 12% · extra · 3.1 it/s · ETA 0:28`. The rate counts the
    /// items done since this bar started (after `initial`); until a second has passed, or while
    /// nothing new is done, there is no rate to speak of, and rate and ETA read `?`.
    public func status(done: Int, elapsed: Double, extra: String = "", rateScale: Double = 1) -> String {
        let fresh = done - initial
        let known = elapsed >= 1 && fresh > 0
        let rate = known ? Double(fresh) / elapsed : 0
        let pct = Int(100 * Double(done) / Double(total))
        var parts = ["\(done)/\(total)", "\(pct)%"]
        if !extra.isEmpty { parts.append(extra) }
        parts.append(known ? String(format: "%.1f %@/s", rate * rateScale, unit) : "? \(unit)/s")
        parts.append("ETA \(known ? Self.clock(Double(total - done) / rate) : "?")")
        return parts.joined(separator: " · ")
    }

    /// Ends the bar's line.
    public func finish() {
        if isTTY { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    /// h:mm:ss or m:ss.
    public static func clock(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                         : String(format: "%d:%02d", s / 60, s % 60)
    }
}
