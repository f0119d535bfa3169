import Foundation
import MillraceImaging

/// The training loss log, loss.csv: `step,loss,smoothed_loss,lr,images_per_second,elapsed_s`.
/// On resume, rows past the checkpoint's step (written after the last checkpoint by a run that
/// then stopped) are dropped, so the log matches the weights.
public struct LossLog {
    public static let header = "step,loss,smoothed_loss,lr,images_per_second,elapsed_s"
    let handle: FileHandle
    var pending = ""

    public init(path: String, keepUpTo step: Int) throws {
        var kept = [Self.header]
        if step > 0, let text = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in text.split(separator: "\n").dropFirst() {
                if let s = Int(line.split(separator: ",").first ?? ""), s <= step { kept.append(String(line)) }
            }
        }
        try (kept.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        guard let h = FileHandle(forWritingAtPath: path) else { throw TrainError("cannot open \(path) for writing") }
        h.seekToEndOfFile()
        handle = h
    }

    public mutating func append(step: Int, loss: Double, smoothed: Double, lr: Double,
                                imagesPerSecond: Double, elapsed: Double) throws {
        pending += String(format: "%d,%.6f,%.6f,%.3g,%.2f,%.1f\n", step, loss, smoothed, lr, imagesPerSecond, elapsed)
        if pending.utf8.count > 4096 { flush() }
    }

    /// Writes buffered rows to the file.
    public mutating func flush() {
        handle.write(Data(pending.utf8))
        pending = ""
    }

    public mutating func close() throws {
        flush()
        try handle.close()
    }

    /// The elapsed seconds of the last row, if the log exists.
    public static func lastElapsed(path: String) -> Double? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let last = text.split(separator: "\n").last, !last.hasPrefix("step") else { return nil }
        return Double(last.split(separator: ",").last ?? "")
    }

    /// (step, smoothed loss) rows of a log.
    public static func read(path: String) throws -> [(step: Int, loss: Double, smoothed: Double)] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return text.split(separator: "\n").dropFirst().compactMap { line in
            let f = line.split(separator: ",")
            guard f.count >= 3, let s = Int(f[0]), let l = Double(f[1]), let m = Double(f[2]) else { return nil }
            return (s, l, m)
        }
    }
}

/// A loss curve as a PNG: smoothed loss (dark) over raw loss (light), log-scale y, step on x.
public enum LossPlot {
    public static func write(csv: String, png: String, width: Int = 640, height: Int = 360) throws {
        let rows = try LossLog.read(path: csv)
        var img = RGBImage(width: width, height: height, fill: (1, 1, 1))
        guard rows.count >= 2 else { try img.writePNG(path: png); return }
        let margin = 48
        let maxStep = Double(rows.last!.step)
        let values = rows.flatMap { [$0.loss, $0.smoothed] }.filter { $0 > 0 && $0.isFinite }
        let lo = log10(values.min() ?? 1e-3), hi = log10(values.max() ?? 1)
        let span = max(hi - lo, 1e-6)
        func px(_ step: Int, _ v: Double) -> (Int, Int) {
            let x = margin + Int(Double(width - 2 * margin) * Double(step) / max(maxStep, 1))
            let y = height - margin - Int(Double(height - 2 * margin) * (log10(max(v, 1e-12)) - lo) / span)
            return (x, y)
        }
        func dot(_ x: Int, _ y: Int, _ c: (Float, Float, Float)) { img.setPixel(x, y, c) }
        func line(_ a: (Int, Int), _ b: (Int, Int), _ c: (Float, Float, Float)) { img.drawLine(a, b, c) }
        // axes, and a faint gridline at every power of ten
        line((margin, height - margin), (width - margin, height - margin), (0, 0, 0))
        line((margin, margin), (margin, height - margin), (0, 0, 0))
        for decade in Int(lo.rounded(.up))...max(Int(lo.rounded(.up)), Int(hi.rounded(.down))) {
            let y = px(0, pow(10, Double(decade))).1
            line((margin, y), (width - margin, y), (0.85, 0.85, 0.85))
        }
        if let text = TextRenderer(pixelSize: 11) {
            for decade in Int(lo.rounded(.up))...max(Int(lo.rounded(.up)), Int(hi.rounded(.down))) {
                let y = px(0, pow(10, Double(decade))).1
                text.draw(decade >= 0 ? String(format: "%g", pow(10, Double(decade))) : "1e\(decade)", x: 4, y: y + 4, into: &img)
            }
            for k in 0...4 {
                let step = Int(maxStep) * k / 4
                let label = String(step)
                text.draw(label, x: px(step, 1).0 - text.width(of: label) / 2, y: height - margin + 16, into: &img)
            }
            text.draw("training loss (mean squared velocity error, log scale) by step; dark: smoothed", x: margin, y: 16, into: &img)
        }
        let stride = max(1, rows.count / (4 * width))
        var prev: (Int, Int)?
        for r in Swift.stride(from: 0, to: rows.count, by: stride) {
            let p = px(rows[r].step, rows[r].loss)
            dot(p.0, p.1, (0.7, 0.8, 1.0))
        }
        for r in Swift.stride(from: 0, to: rows.count, by: stride) {
            let p = px(rows[r].step, rows[r].smoothed)
            if let q = prev { line(q, p, (0.1, 0.2, 0.7)) }
            prev = p
        }
        try img.writePNG(path: png)
    }
}
