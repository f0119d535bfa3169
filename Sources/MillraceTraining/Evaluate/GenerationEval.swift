import Foundation
import MillraceCore

/// Quality of one generation setting (docs/METHODS.md §10).
public struct GenerationMetrics: Sendable, Codable, Equatable {
    /// Mean squared error per pixel (images in [−1, 1]) to the reference images; nil without one.
    public var discrepancy: Double?
    /// Fréchet distance of the classifier's penultimate features to the held-out features.
    public var frechet: Double
    /// Fraction of samples the classifier assigns to the class they were drawn for.
    public var accuracy: Double
    /// Accuracy per class, in the order of the evaluated classes.
    public var accuracyPerClass: [Double]
}

/// Evaluates generated samples against held-out images with the evaluation classifier: Fréchet
/// distance, class accuracy, and the discrepancy to reference images made from the same sources.
public struct GenerationEvaluator {
    public let classifier: EmojiClassifier
    public let heldOutFeatures: [Float]

    public init(classifier: EmojiClassifier, heldOut: ImageDataset) {
        self.classifier = classifier
        let held = heldOut.indices(split: 1)
        self.heldOutFeatures = classifier.features(EmojiClassifier.inputBatch(heldOut, indices: held)).data
    }

    /// Images (in [−1, 1], [B, 3, H, W]) of `sampler` from `x0` over `schedule`, in batches.
    public static func generate(_ sampler: FlowSampler, x0: Tensor, labels: [Int], schedule: [Float],
                                guidance: Float, solver: Solver = .euler, batch: Int = 16,
                                progress: ((Int) -> Void)? = nil) -> Tensor {
        var parts: [Tensor] = []
        let n = x0.shape[0]
        for start in stride(from: 0, to: n, by: max(batch, 1)) {
            let range = start..<min(n, start + max(batch, 1))
            let out = sampler.integrate(x0.rows(range), schedule: schedule, labels: Array(labels[range]),
                                        guidance: guidance, solver: solver)
            parts.append(sampler.toImageSpace(out))
            progress?(range.upperBound)
        }
        return Tensor.stack(rows: parts)
    }

    /// Metrics of `images` drawn for `labels` (classes listed in `classes`, in that order).
    public func metrics(images: Tensor, labels: [Int], classes: [Int], reference: Tensor? = nil,
                        batch: Int = 64) throws -> GenerationMetrics {
        var features: [Float] = []
        var predictions: [Int] = []
        let n = images.shape[0]
        for start in stride(from: 0, to: n, by: batch) {
            let (f, logits) = classifier.featuresAndLogits(images.rows(start..<min(n, start + batch)))
            features += f.data
            predictions += EmojiClassifier.argmax(logits)
        }
        var correct = [Int](repeating: 0, count: classes.count), total = correct
        for (i, p) in predictions.enumerated() {
            guard let k = classes.firstIndex(of: labels[i]) else { continue }
            total[k] += 1
            if p == labels[i] { correct[k] += 1 }
        }
        let discrepancy = reference.map { Metrics.meanSquaredError(images.data, $0.data) }
        return GenerationMetrics(
            discrepancy: discrepancy,
            frechet: try Metrics.frechetDistance(features, heldOutFeatures, dim: classifier.featureDim),
            accuracy: Double(correct.reduce(0, +)) / Double(max(n, 1)),
            accuracyPerClass: zip(correct, total).map { Double($0) / Double(max($1, 1)) })
    }
}
