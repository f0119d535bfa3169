import Foundation
import MillraceImaging

/// What a stream's outputs keep of their inputs, as `gen stream` reports it (docs/STREAMS.md).
public enum StreamMeasures {
    /// Pearson correlation of two equal-length vectors (0 when either is constant): how much of
    /// the input's layout an output keeps.
    public static func correlation(_ a: [Float], _ b: [Float]) -> Double {
        let n = Double(a.count)
        guard a.count == b.count, a.count > 1 else { return 0 }
        let ma = a.reduce(0.0) { $0 + Double($1) } / n, mb = b.reduce(0.0) { $0 + Double($1) } / n
        var sab = 0.0, saa = 0.0, sbb = 0.0
        for i in 0..<a.count {
            let da = Double(a[i]) - ma, db = Double(b[i]) - mb
            sab += da * db; saa += da * da; sbb += db * db
        }
        return saa == 0 || sbb == 0 ? 0 : sab / (saa * sbb).squareRoot()
    }

    /// Flicker on static pixels between two consecutive outputs: the sum of |Δ output| (RGB planes
    /// in [0, 1], same size) over the pixels whose input luma changed by less than `tolerance`,
    /// and the number of values summed. `inputs` are luma at the outputs' size.
    public static func staticFlicker(inputs: ([Float], [Float]), outputs: (RGBImage, RGBImage),
                                     tolerance: Float = 0.5 / 255) -> (sum: Double, count: Int) {
        let (a, b) = outputs
        let n = a.width * a.height
        guard b.width == a.width, b.height == a.height, inputs.0.count == n, inputs.1.count == n else { return (0, 0) }
        var sum = 0.0, count = 0
        for p in 0..<n where abs(inputs.0[p] - inputs.1[p]) < tolerance {
            for c in 0..<3 { sum += Double(abs(a.planes[c * n + p] - b.planes[c * n + p])) }
            count += 3
        }
        return (sum, count)
    }

    /// The measures of one stream as its frames are processed: each output against the input it
    /// came from (`slots` − 1 processed frames earlier), both at the model's size.
    public struct Running: Sendable {
        /// Processed inputs still waiting for their output (luma at the model's size).
        private var inputs: [[Float]] = []
        private var previous: (input: [Float], output: RGBImage)?
        private var correlationSum = 0.0, correlations = 0
        private var flickerSum = 0.0, flickerCount = 0

        public init() {}

        /// Mean luma correlation of outputs with their inputs (nil before the first output).
        public var lumaCorrelation: Double? { correlations == 0 ? nil : correlationSum / Double(correlations) }
        /// Mean absolute change between consecutive outputs on pixels whose input did not change
        /// (RGB in [0, 1]; nil before two outputs).
        public var flickerStatic: Double? { flickerCount == 0 ? nil : flickerSum / Double(flickerCount) }

        /// Adds a processed frame: `input` its luma at the model's size, `output` the output at
        /// the model's size, `slots` the pipeline's n.
        public mutating func add(input: [Float], output: RGBImage, slots: Int) {
            inputs.append(input)
            let source = inputs[max(0, inputs.count - slots)]
            correlationSum += StreamMeasures.correlation(source, output.luma())
            correlations += 1
            if let previous {
                let f = StreamMeasures.staticFlicker(inputs: (previous.input, source), outputs: (previous.output, output))
                flickerSum += f.sum
                flickerCount += f.count
            }
            previous = (source, output)
            if inputs.count > slots { inputs.removeFirst() }
        }
    }
}
