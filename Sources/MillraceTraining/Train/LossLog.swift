import Foundation
import MillraceFormats
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
        try AtomicFile.write(kept.joined(separator: "\n") + "\n", to: path)
        guard let h = FileHandle(forWritingAtPath: path) else { throw TrainError.io("cannot open \(path) for writing") }
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

/// A loss curve as a PNG: smoothed loss (dark line) over the loss of each step (light dots),
/// log-scale y, step on x; drawn by the one chart renderer (`LineChart`).
public enum LossPlot {
    public static func write(csv: String, png: String, width: Int = 640, height: Int = 360) throws {
        let rows = try LossLog.read(path: csv)
        guard rows.count >= 2 else {
            try RGBImage(width: width, height: height, fill: (1, 1, 1)).writePNG(path: png)
            return
        }
        let stride = max(1, rows.count / (4 * width))
        let kept = Swift.stride(from: 0, to: rows.count, by: stride).map { rows[$0] }
        let maxStep = Double(rows.last!.step)
        let chart = LineChart(
            title: "training loss (mean squared velocity error, log scale) by step; dark: smoothed",
            xLabel: "step", yLabel: "", xTicks: (0...4).map { (maxStep * Double($0) / 4).rounded() },
            series: [
                .init(name: "loss", color: (0.7, 0.8, 1.0), style: .dots, points: kept.map { (Double($0.step), $0.loss) }),
                .init(name: "smoothed", color: (0.1, 0.2, 0.7), style: .line, points: kept.map { (Double($0.step), $0.smoothed) }),
            ],
            logScaleY: true, legendWidth: 0)
        try chart.render(width: width, height: height).writePNG(path: png)
    }
}
