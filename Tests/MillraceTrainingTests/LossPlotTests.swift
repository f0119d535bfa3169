import Foundation
import Testing
import MillraceImaging
import MillraceTraining
import MillraceTestSupport

/// The loss plot, drawn by the one chart renderer: a falling loss gives a dark curve that
/// starts high on the left and ends low on the right, over lighter per-step dots.
@Suite struct LossPlotTests {
    @Test func aFallingLossIsDrawnFallingOnALogAxis() throws {
        let csv = Fixtures.tempPath("loss-\(UUID().uuidString).csv"), png = csv + ".png"
        var log = try LossLog(path: csv, keepUpTo: 0)
        var smoothed = 1.0
        for step in 1...400 {
            let loss = 0.5 * pow(0.99, Double(step)) * (step % 2 == 0 ? 1.3 : 0.7)
            smoothed = step == 1 ? loss : 0.9 * smoothed + 0.1 * loss
            try log.append(step: step, loss: loss, smoothed: smoothed, lr: 1e-3, imagesPerSecond: 10, elapsed: Double(step))
        }
        try log.close()
        try LossPlot.write(csv: csv, png: png, width: 320, height: 200)
        let img = try RGBImage.load(path: png)
        #expect(img.width == 320 && img.height == 200)
        // The dark curve (blue well above red and green): its mean row in the left and right
        // quarters of the plot.
        func darkRows(_ columns: Range<Int>) -> [Int] {
            var rows: [Int] = []
            let n = img.width * img.height
            for x in columns {
                for y in 0..<img.height {
                    let i = y * img.width + x
                    let (r, g, b) = (img.planes[i], img.planes[n + i], img.planes[2 * n + i])
                    if b > 0.5 && r < 0.3 && g < 0.4 { rows.append(y) }
                }
            }
            return rows
        }
        let left = darkRows(70..<120), right = darkRows(200..<250)
        #expect(!left.isEmpty && !right.isEmpty, "the smoothed curve is drawn")
        let mean = { (v: [Int]) in Double(v.reduce(0, +)) / Double(max(v.count, 1)) }
        #expect(mean(left) + 20 < mean(right), "the curve falls (rows grow downwards): \(mean(left)) vs \(mean(right))")
    }
}
