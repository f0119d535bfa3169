import Foundation

/// A line chart as a picture: linear x, linear or log-scale y, a few series, a legend. The one
/// chart renderer: metric-vs-NFE plots (`gen eval table`) and loss curves (`LossPlot`).
public struct LineChart {
    public struct Series {
        /// How a series' points are drawn.
        public enum Style { case lineWithMarkers, line, dots }
        public var name: String
        public var color: (Float, Float, Float)
        public var dashed: Bool
        public var style: Style
        /// (x, y) points; a nil y leaves a gap.
        public var points: [(Double, Double?)]
        public init(name: String, color: (Float, Float, Float), dashed: Bool = false, style: Style = .lineWithMarkers,
                    points: [(Double, Double?)]) {
            self.name = name
            self.color = color
            self.dashed = dashed
            self.style = style
            self.points = points
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var xTicks: [Double]
    public var series: [Series]
    /// A log10 y axis with a gridline at every power of ten (values ≤ 0 are left out).
    public var logScaleY: Bool
    /// Pixels kept free on the right for the legend (0: no legend).
    public var legendWidth: Int

    public init(title: String, xLabel: String, yLabel: String, xTicks: [Double], series: [Series],
                logScaleY: Bool = false, legendWidth: Int = 300) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.xTicks = xTicks
        self.series = series
        self.logScaleY = logScaleY
        self.legendWidth = legendWidth
    }

    /// A palette of distinguishable colours.
    public static let palette: [(Float, Float, Float)] = [
        (0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
        (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5),
        (0.74, 0.74, 0.13), (0.09, 0.75, 0.81), (0.0, 0.0, 0.0), (0.4, 0.2, 0.6),
    ]

    public func render(width: Int = 900, height: Int = 520) -> RGBImage {
        var img = RGBImage(width: width, height: height, fill: (1, 1, 1))
        let (left, right, top, bottom) = (60, width - max(legendWidth, 24), 48, height - 46)
        // Plotted y: the value, or its log10 on a log axis (non-positive values dropped).
        func plotted(_ y: Double?) -> Double? {
            guard let y, y.isFinite else { return nil }
            return logScaleY ? (y > 0 ? log10(y) : nil) : y
        }
        let xs = xTicks + series.flatMap { $0.points.map(\.0) }
        let ys = series.flatMap { $0.points.compactMap { plotted($0.1) } }
        let (xa, xb) = (xs.min() ?? 0, max(xs.max() ?? 1, (xs.min() ?? 0) + 1e-9))
        let (x0, x1) = (xa - 0.04 * (xb - xa), xb + 0.04 * (xb - xa))
        var (y0, y1) = (ys.min() ?? 0, ys.max() ?? 1)
        if y1 - y0 < 1e-9 { y1 = y0 + 1 }
        let pad = 0.05 * (y1 - y0)
        y0 = logScaleY ? y0 - pad : max(0, y0 - pad); y1 += pad
        func px(_ x: Double, _ y: Double) -> (Int, Int) {
            (left + Int(Double(right - left) * (x - x0) / (x1 - x0)),
             bottom - Int(Double(bottom - top) * (y - y0) / (y1 - y0)))
        }
        let text = TextRenderer(pixelSize: 12)
        // y gridlines: every power of ten on a log axis, else at 5 round steps
        var gridY: [(Double, String)] = []
        if logScaleY {
            for decade in Int(y0.rounded(.up))...max(Int(y0.rounded(.up)), Int(y1.rounded(.down))) {
                gridY.append((Double(decade), decade >= 0 ? String(format: "%g", pow(10, Double(decade))) : "1e\(decade)"))
            }
        } else {
            let raw = (y1 - y0) / 5
            let mag = pow(10, floor(log10(raw)))
            let step = [1.0, 2, 2.5, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? raw
            var y = ceil(y0 / step) * step
            while y <= y1 { gridY.append((y, String(format: "%g", (y * 1000).rounded() / 1000))); y += step }
        }
        for (y, label) in gridY {
            let p = px(x0, y)
            img.drawLine((left, p.1), (right, p.1), (0.88, 0.88, 0.88))
            text?.draw(label, x: 6, y: p.1 + 4, into: &img)
        }
        for t in xTicks {
            let p = px(t, y0)
            img.drawLine((p.0, top), (p.0, bottom), (0.93, 0.93, 0.93))
            let label = String(format: "%g", t)
            text?.draw(label, x: p.0 - (text?.width(of: label) ?? 0) / 2, y: bottom + 16, into: &img)
        }
        img.drawLine((left, bottom), (right, bottom), (0, 0, 0))
        img.drawLine((left, top), (left, bottom), (0, 0, 0))
        text?.draw(title, x: 6, y: 16, into: &img)
        text?.draw(xLabel, x: (left + right) / 2 - (text?.width(of: xLabel) ?? 0) / 2, y: height - 10, into: &img)
        text?.draw(yLabel, x: 6, y: top - 10, into: &img)
        for (k, s) in series.enumerated() {
            var prev: (Int, Int)?
            for (x, yv) in s.points {
                guard let y = plotted(yv) else { prev = nil; continue }
                let p = px(x, y)
                switch s.style {
                case .dots:
                    img.setPixel(p.0, p.1, s.color)
                case .line, .lineWithMarkers:
                    if let q = prev { img.drawLine(q, p, s.color, thickness: 2, dash: s.dashed ? 6 : 0) }
                    if s.style == .lineWithMarkers { img.fillSquare(p.0, p.1, side: 5, s.color) }
                }
                prev = p
            }
            guard legendWidth > 0 else { continue }
            let ly = top + 8 + 18 * k
            img.drawLine((right + 16, ly), (right + 46, ly), s.color, thickness: 2, dash: s.dashed ? 6 : 0)
            text?.draw(s.name, x: right + 52, y: ly + 4, into: &img)
        }
        return img
    }
}
