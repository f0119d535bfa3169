import Foundation
import MillraceCore

/// Mean softmax cross-entropy of logits [B, K] against integer labels, and its gradient
/// dLoss/dLogits = (softmax − onehot) / B. Stable: each row is shifted by its maximum and the
/// log-sum-exp is accumulated in Double.
public func softmaxCrossEntropy(logits: Tensor, labels: [Int]) -> (loss: Double, grad: Tensor) {
    precondition(logits.rank == 2 && logits.shape[0] == labels.count,
                 "cross-entropy expects logits [B, K] and B labels, got \(logits.shape) and \(labels.count)")
    let (b, k) = (logits.shape[0], logits.shape[1])
    var grad = Tensor(uninitialized: logits.shape)
    var total = 0.0
    let invB = 1 / Double(max(b, 1))
    for r in 0..<b {
        let label = labels[r]
        precondition(label >= 0 && label < k, "label \(label) outside 0..<\(k)")
        var m = -Float.infinity
        for j in 0..<k { m = max(m, logits.data[r * k + j]) }
        var sum = 0.0
        for j in 0..<k { sum += Foundation.exp(Double(logits.data[r * k + j] - m)) }
        let logSum = Foundation.log(sum)
        total += logSum - Double(logits.data[r * k + label] - m)
        for j in 0..<k {
            let p = Foundation.exp(Double(logits.data[r * k + j] - m) - logSum)
            grad.data[r * k + j] = Float((p - (j == label ? 1 : 0)) * invB)
        }
    }
    return (total * invB, grad)
}

/// Options of a classifier training run.
public struct ClassifierTrainOptions: Codable, Sendable, Equatable {
    public var steps = 1500
    public var batchSize = 64
    public var seed: UInt64 = 0
    /// Draw a class uniformly, then an image of it (the emoji groups differ in size by 25×);
    /// otherwise draw images uniformly.
    public var balanceClasses = true
    public var horizontalFlips = true
    /// Random translation of up to ± this many pixels in x and y, uncovered pixels white.
    public var maxShift = 2
    public var optimizer: AdamW.Options = {
        var o = AdamW.Options()
        o.learningRate = 2e-3
        o.warmupSteps = 100
        o.weightDecay = 0.05
        o.emaDecay = 0.995
        return o
    }()
    public init() {}
}

/// Held-out (or any split's) accuracy of a classifier.
public struct ClassifierEvaluation: Sendable, Equatable {
    /// Fraction of images classified correctly (NaN when the split is empty).
    public var accuracy: Double
    /// Accuracy per class, indexed like the class names (NaN for a class with no images).
    public var perClassAccuracy: [Double]
    /// Number of images of each class in the split.
    public var perClassCount: [Int]
    /// `confusion[true][predicted]` counts.
    public var confusion: [[Int]]
    /// Mean cross-entropy over the split.
    public var loss: Double
    public var count: Int { perClassCount.reduce(0, +) }
    /// Mean of the per-class accuracies over classes that have images.
    public var balancedAccuracy: Double {
        let present = perClassAccuracy.filter { !$0.isNaN }
        return present.isEmpty ? .nan : present.reduce(0, +) / Double(present.count)
    }
}

extension EmojiClassifier {
    /// Accuracy on one split of a dataset (0 train, 1 held-out), without augmentation.
    public func evaluate(_ dataset: ImageDataset, split: UInt8 = 1, batchSize: Int = 64) -> ClassifierEvaluation {
        precondition(dataset.size == config.imageSize,
                     "dataset images are \(dataset.size)px but the classifier takes \(config.imageSize)px")
        let k = config.numClasses
        let idx = dataset.indices(split: split)
        var confusion = [[Int]](repeating: [Int](repeating: 0, count: k), count: k)
        var lossSum = 0.0
        for start in Swift.stride(from: 0, to: idx.count, by: max(batchSize, 1)) {
            let part = Array(idx[start..<min(start + batchSize, idx.count)])
            let labels = part.map { Int(dataset.labels[$0]) }
            precondition(labels.allSatisfy { $0 < k }, "dataset label outside the classifier's \(k) classes")
            let logits = forward(Self.inputBatch(dataset, indices: part), training: false)
            lossSum += softmaxCrossEntropy(logits: logits, labels: labels).loss * Double(part.count)
            for (t, p) in zip(labels, Self.argmax(logits)) { confusion[t][p] += 1 }
        }
        let counts = confusion.map { $0.reduce(0, +) }
        let perClass = (0..<k).map { counts[$0] > 0 ? Double(confusion[$0][$0]) / Double(counts[$0]) : .nan }
        let correct = (0..<k).reduce(0) { $0 + confusion[$1][$1] }
        return ClassifierEvaluation(
            accuracy: idx.isEmpty ? .nan : Double(correct) / Double(idx.count),
            perClassAccuracy: perClass, perClassCount: counts, confusion: confusion,
            loss: idx.isEmpty ? .nan : lossSum / Double(idx.count))
    }
}

/// Trains an `EmojiClassifier` on the train split of a dataset with AdamW and softmax
/// cross-entropy; batches are drawn with a seeded SplitMix64 and augmented by horizontal flips
/// and small translations with a white fill (the emoji are rendered on white).
public final class ClassifierTrainer {
    public let model: EmojiClassifier
    public let dataset: ImageDataset
    public let options: ClassifierTrainOptions
    public let optimizer: AdamW
    public var rng: SplitMix64
    /// Exponentially smoothed batch loss and accuracy (for display).
    public var smoothedLoss: Double = .nan
    public var smoothedAccuracy: Double = .nan
    /// Train-split image indices by class (empty classes left out).
    let byClass: [[Int]]
    let trainIndices: [Int]

    public var step: Int { optimizer.step }

    public init(config: ClassifierConfig, dataset: ImageDataset, options: ClassifierTrainOptions) throws {
        do { try config.validate() } catch { throw TrainError.invalidSetup("\(error)") }
        guard config.imageSize == dataset.size else {
            throw TrainError.invalidSetup("the classifier takes \(config.imageSize)px images but the dataset's are \(dataset.size)px")
        }
        guard config.numClasses == dataset.classNames.count else {
            throw TrainError.invalidSetup("the classifier has \(config.numClasses) classes but the dataset \(dataset.classNames.count)")
        }
        guard options.batchSize >= 1, options.steps >= 1 else { throw TrainError.invalidSetup("steps and batch size must be positive") }
        guard options.maxShift >= 0 && options.maxShift < dataset.size else {
            throw TrainError.invalidSetup("the translation must be between 0 and \(dataset.size - 1) pixels")
        }
        let train = dataset.indices(split: 0)
        guard !train.isEmpty else { throw TrainError.invalidSetup("the training split is empty") }
        self.model = EmojiClassifier(config: config, seed: options.seed)
        self.dataset = dataset
        self.options = options
        self.optimizer = AdamW(parameters: model.namedParameters(), options: options.optimizer)
        self.rng = SplitMix64(seed: options.seed &+ 0xC1A5)
        var groups = [[Int]](repeating: [], count: config.numClasses)
        for i in train { groups[Int(dataset.labels[i])].append(i) }
        self.byClass = groups.filter { !$0.isEmpty }
        self.trainIndices = train
    }

    /// Draws one augmented batch: images [B, 3, S, S] in [−1, 1] and their labels.
    public func drawBatch() -> (Tensor, [Int]) {
        let b = options.batchSize, size = dataset.size, per = dataset.bytesPerImage
        let plane = size * size
        var x = Tensor(uninitialized: [b, 3, size, size])
        var labels = [Int](repeating: 0, count: b)
        let span = UInt64(2 * options.maxShift + 1)
        x.data.withUnsafeMutableBufferPointer { xp in
            dataset.pixels.withUnsafeBufferPointer { px in
                for n in 0..<b {
                    let i: Int
                    if options.balanceClasses {
                        let members = byClass[Int(rng.next() % UInt64(byClass.count))]
                        i = members[Int(rng.next() % UInt64(members.count))]
                    } else {
                        i = trainIndices[Int(rng.next() % UInt64(trainIndices.count))]
                    }
                    labels[n] = Int(dataset.labels[i])
                    let flip = options.horizontalFlips && rng.next() & 1 == 1
                    let dx = Int(rng.next() % span) - options.maxShift
                    let dy = Int(rng.next() % span) - options.maxShift
                    // Output pixel (y, x) shows source pixel (y − dy, x' − dx), x' flipped if asked.
                    for c in 0..<3 {
                        let src = i * per + c * plane, dst = n * per + c * plane
                        for y in 0..<size {
                            let sy = y - dy
                            for xx in 0..<size {
                                let ux = xx - dx
                                let sx = flip ? size - 1 - ux : ux
                                if sy < 0 || sy >= size || ux < 0 || ux >= size {
                                    xp[dst + y * size + xx] = 1  // white
                                } else {
                                    xp[dst + y * size + xx] = ImageDataset.modelValue(px[src + sy * size + sx])
                                }
                            }
                        }
                    }
                }
            }
        }
        return (x, labels)
    }

    /// One optimisation step; returns the batch loss and the batch accuracy (before the update).
    @discardableResult
    public func trainStep() -> (loss: Double, accuracy: Double) {
        let (x, labels) = drawBatch()
        let logits = model.forward(x, training: true)
        let (loss, grad) = softmaxCrossEntropy(logits: logits, labels: labels)
        let correct = zip(EmojiClassifier.argmax(logits), labels).filter { $0 == $1 }.count
        let acc = Double(correct) / Double(labels.count)
        optimizer.zeroGrad()
        model.backward(grad)
        optimizer.update()
        smoothedLoss = smoothedLoss.isNaN ? loss : 0.98 * smoothedLoss + 0.02 * loss
        smoothedAccuracy = smoothedAccuracy.isNaN ? acc : 0.98 * smoothedAccuracy + 0.02 * acc
        return (loss, acc)
    }

    /// A classifier with the EMA weights (what gets shipped and evaluated).
    public func emaModel() -> EmojiClassifier {
        let ema = EmojiClassifier(config: model.config)
        for ((_, p), w) in zip(ema.namedParameters(), optimizer.ema) { p.value.data = w }
        return ema
    }

    /// Held-out accuracy of the EMA weights (split 1 by default).
    public func evaluate(_ dataset: ImageDataset, split: UInt8 = 1) -> ClassifierEvaluation {
        emaModel().evaluate(dataset, split: split)
    }
}
