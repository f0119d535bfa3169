import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
@testable import MillraceTraining
import MillraceTestSupport

/// The evaluation classifier: gradients against finite differences, cross-entropy, a short
/// training run on synthetic data, and its folder format.
@Suite(.serialized) struct ClassifierTests {
    static func tinyConfig(size: Int = 6, classes: Int = 3) -> ClassifierConfig {
        var c = ClassifierConfig(classNames: (0..<classes).map { "c\($0)" }, imageSize: size)
        c.channels = [4, 8, 8]
        c.strides = [1, 2, 1]
        c.normNumGroups = 2
        return c
    }

    static func tempDir(_ name: String) -> String {
        let dir = Fixtures.tempPath("classifier")
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = (dir as NSString).appendingPathComponent(name)
        try? FileManager.default.removeItem(atPath: path)
        return path
    }

    /// Two classes of 8×8 images on white: a red square (class 0) or a blue disc (class 1) at a
    /// jittered position; a quarter of each class is held out.
    static func syntheticDataset(count: Int = 48) -> ImageDataset {
        var rng = SplitMix64(seed: 7)
        let size = 8, plane = 64
        var pixels: [UInt8] = [], labels: [UInt8] = [], split: [UInt8] = [], items: [DatasetItem] = []
        for n in 0..<count {
            let cls = n % 2
            var img = [UInt8](repeating: 255, count: 3 * plane)
            let jx = Int(rng.next() % 3), jy = Int(rng.next() % 3)
            for y in 0..<size {
                for x in 0..<size {
                    let inside = cls == 0
                        ? (x >= jx && x < jx + 4 && y >= jy && y < jy + 4)
                        : ((x - 3 - jx) * (x - 3 - jx) + (y - 3 - jy) * (y - 3 - jy) <= 5)
                    guard inside else { continue }
                    let rgb: [UInt8] = cls == 0 ? [230, 20, 20] : [20, 20, 230]
                    for c in 0..<3 { img[c * plane + y * size + x] = rgb[c] }
                }
            }
            pixels += img
            labels.append(UInt8(cls))
            split.append(n % 8 >= 6 ? 1 : 0)
            items.append(DatasetItem(codepoints: "1F7E5", name: "shape \(n)", subgroup: "test"))
        }
        return ImageDataset(size: size, classNames: ["square", "disc"], labels: labels, split: split,
                            pixels: pixels, items: items)
    }

    // MARK: Gradients

    /// Loss Σ logits · probe: the input gradient and sampled entries of every parameter gradient
    /// against central differences (h = 1e-2).
    @Test func classifierGradientsMatchFiniteDifferences() {
        let model = EmojiClassifier(config: Self.tinyConfig(), seed: 3)
        var rng = TestRNG(seed: 4)
        // Non-trivial norm affines, so their gradients are exercised.
        for (name, p) in model.namedParameters() where name.hasPrefix("norms.") {
            for i in 0..<p.value.count { p.value.data[i] += 0.3 * Float.random(in: -1...1, using: &rng) }
        }
        let x = Tensor(shape: [2, 3, 6, 6], data: rng.floats(2 * 3 * 36))
        let probe = Tensor(shape: [2, 3], data: rng.floats(6))
        for (_, p) in model.namedParameters() { p.zeroGrad() }
        _ = model.forward(x, training: true)
        let dx = model.backward(probe)
        #expect(dx.shape == x.shape)

        func loss(_ input: Tensor) -> Double {
            let y = model.forward(input, training: false)
            return zip(y.data, probe.data).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        let h: Float = 1e-2
        func compare(_ analytic: Float, _ numeric: Double, _ what: String) {
            let scale = max(abs(numeric), abs(Double(analytic)), 0.05)
            #expect(abs(Double(analytic) - numeric) / scale < 2e-2, "\(what): analytic \(analytic) vs numeric \(numeric)")
        }
        var xi = x
        for i in Swift.stride(from: 0, to: x.count, by: 13) {
            let old = xi.data[i]
            xi.data[i] = old + h; let up = loss(xi)
            xi.data[i] = old - h; let down = loss(xi)
            xi.data[i] = old
            compare(dx.data[i], (up - down) / Double(2 * h), "dx[\(i)]")
        }
        var checked = 0
        for (name, p) in model.namedParameters() {
            for i in Swift.stride(from: 0, to: p.value.count, by: max(1, p.value.count / 4)) {
                let old = p.value.data[i]
                p.value.data[i] = old + h; let up = loss(x)
                p.value.data[i] = old - h; let down = loss(x)
                p.value.data[i] = old
                compare(p.grad[i], (up - down) / Double(2 * h), "d\(name)[\(i)]")
                checked += 1
            }
        }
        #expect(checked > 40)
    }

    @Test func globalAveragePoolForwardAndBackward() {
        let x = Tensor(shape: [1, 2, 2, 2], data: [1, 2, 3, 4, 10, 20, 30, 40])
        #expect(EmojiClassifier.globalAveragePool(x).data == [2.5, 25])
        let dx = EmojiClassifier.globalAveragePoolBackward(Tensor(shape: [1, 2], data: [4, 8]), shape: x.shape)
        #expect(dx.data == [1, 1, 1, 1, 2, 2, 2, 2])
    }

    @Test func crossEntropyValueGradientAndStability() {
        var rng = TestRNG(seed: 9)
        let logits = Tensor(shape: [3, 4], data: rng.floats(12, scale: 3))
        let labels = [2, 0, 3]
        let (loss, grad) = softmaxCrossEntropy(logits: logits, labels: labels)
        // Direct definition.
        var expected = 0.0
        for r in 0..<3 {
            let row = (0..<4).map { Double(logits.data[r * 4 + $0]) }
            expected += log(row.map { exp($0) }.reduce(0, +)) - row[labels[r]]
        }
        #expect(abs(loss - expected / 3) < 1e-6)
        let h: Float = 1e-2
        for i in 0..<12 {
            var l = logits
            l.data[i] += h; let up = softmaxCrossEntropy(logits: l, labels: labels).loss
            l.data[i] -= 2 * h; let down = softmaxCrossEntropy(logits: l, labels: labels).loss
            let numeric = (up - down) / Double(2 * h)
            #expect(abs(Double(grad.data[i]) - numeric) < 2e-2 * max(abs(numeric), 0.05), "dlogits[\(i)]")
        }
        // Each row of the gradient sums to zero.
        for r in 0..<3 { #expect(abs((0..<4).reduce(Float(0)) { $0 + grad.data[r * 4 + $1] }) < 1e-6) }
        // Huge logits neither overflow nor lose the answer.
        let big = softmaxCrossEntropy(logits: Tensor(shape: [1, 3], data: [1000, 0, -1000]), labels: [1])
        #expect(abs(big.loss - 1000) < 1e-3)
        #expect(big.grad.data.allSatisfy { $0.isFinite })
        #expect(abs(big.grad.data[0] - 1) < 1e-6 && abs(big.grad.data[1] + 1) < 1e-6)
        let confident = softmaxCrossEntropy(logits: Tensor(shape: [1, 2], data: [50, -50]), labels: [0])
        #expect(confident.loss >= 0 && confident.loss < 1e-6)
    }

    // MARK: Training

    @Test func augmentationFlipsAndShiftsWithWhiteFill() throws {
        let ds = Self.syntheticDataset(count: 8)
        var opts = ClassifierTrainOptions()
        opts.batchSize = 16
        var config = Self.tinyConfig(size: 8, classes: 2)
        config.classNames = ds.classNames
        let trainer = try ClassifierTrainer(config: config, dataset: ds, options: opts)
        let (x, labels) = trainer.drawBatch()
        #expect(x.shape == [16, 3, 8, 8])
        #expect(x.data.allSatisfy { $0 >= -1 && $0 <= 1 })
        #expect(labels.allSatisfy { $0 == 0 || $0 == 1 })
        // Every augmented image keeps its class colour and the white background dominates.
        for n in 0..<16 {
            let img = x.rows(n..<(n + 1)).data
            let white = (0..<64).filter { p in (0..<3).allSatisfy { img[$0 * 64 + p] == 1 } }.count
            #expect(white >= 32)
            let reddish = (0..<64).contains { img[$0] > 0.5 && img[128 + $0] < -0.5 }
            #expect(reddish == (labels[n] == 0))
        }
        // The same seed gives the same batches.
        let again = try ClassifierTrainer(config: config, dataset: ds, options: opts)
        #expect(again.drawBatch().0 == x)
    }

    @Test func aFewDozenStepsReachHighAccuracy() throws {
        let ds = Self.syntheticDataset()
        var config = Self.tinyConfig(size: 8, classes: 2)
        config.classNames = ds.classNames
        var opts = ClassifierTrainOptions()
        opts.steps = 40
        opts.batchSize = 16
        opts.seed = 5
        opts.optimizer.learningRate = 1e-2
        opts.optimizer.warmupSteps = 5
        opts.optimizer.emaDecay = 0.9
        let trainer = try ClassifierTrainer(config: config, dataset: ds, options: opts)
        var losses: [Double] = []
        for _ in 0..<40 { losses.append(trainer.trainStep().loss) }
        #expect(trainer.step == 40)
        let first = losses.prefix(5).reduce(0, +) / 5, last = losses.suffix(5).reduce(0, +) / 5
        #expect(last < 0.5 * first, "loss \(first) → \(last)")
        let train = trainer.evaluate(ds, split: 0)
        #expect(train.accuracy >= 0.9, "train accuracy \(train.accuracy)")
        #expect(train.count == 36)
        let held = trainer.evaluate(ds, split: 1)
        #expect(held.count == 12 && held.perClassCount == [6, 6])
        #expect(held.accuracy >= 0.75, "held-out accuracy \(held.accuracy)")
        #expect(held.perClassAccuracy.count == 2)
        #expect(held.confusion.flatMap { $0 }.reduce(0, +) == 12)
    }

    @Test func trainerRefusesAMismatchedDataset() {
        let ds = Self.syntheticDataset(count: 8)
        #expect(throws: TrainError.self) {
            _ = try ClassifierTrainer(config: Self.tinyConfig(size: 6, classes: 2), dataset: ds, options: ClassifierTrainOptions())
        }
        #expect(throws: TrainError.self) {
            _ = try ClassifierTrainer(config: Self.tinyConfig(size: 8, classes: 3), dataset: ds, options: ClassifierTrainOptions())
        }
    }

    // MARK: Folder

    @Test func predictOnImagesMatchesTheDatasetPath() throws {
        let ds = Self.syntheticDataset(count: 10)
        var c = Self.tinyConfig(size: 8, classes: 2)
        c.classNames = ["square", "disc"]
        let cls = EmojiClassifier(config: c, seed: 5)
        let indices = Array(0..<ds.count)
        // Same input tensor from images as from the dataset's bytes (to float rounding).
        let fromImages = cls.inputBatch(indices.map { ds.image(at: $0) })
        let fromBytes = EmojiClassifier.inputBatch(ds, indices: indices)
        #expect(relativeError(fromImages.data, fromBytes.data) < 1e-6)
        #expect(cls.predict(indices.map { ds.image(at: $0) }) == EmojiClassifier.argmax(cls.forward(fromBytes, training: false)))
        // Images of another size are area-resized to the classifier's size first.
        let big = ds.image(at: 0).resizedNearest(width: 16, height: 16)
        #expect(cls.inputBatch([big]).shape == [1, 3, 8, 8])
    }

    @Test func saveLoadRoundTrip() throws {
        let model = EmojiClassifier(config: Self.tinyConfig(), seed: 11)
        let dir = Self.tempDir("roundtrip")
        try model.save(to: dir, metadata: ["step": "7"])
        #expect(FileManager.default.fileExists(atPath: dir + "/classifier.json"))
        let loaded = try EmojiClassifier.load(path: dir)
        #expect(loaded.config == model.config)
        for ((a, p), (b, q)) in zip(model.namedParameters(), loaded.namedParameters()) {
            #expect(a == b && p.value == q.value, "\(a) differs after a round trip")
        }
        var rng = TestRNG(seed: 12)
        let x = Tensor(shape: [2, 3, 6, 6], data: rng.floats(216))
        #expect(loaded.forward(x, training: false) == model.forward(x, training: false))
        let (f, logits) = loaded.featuresAndLogits(x)
        #expect(f.shape == [2, 8] && f == loaded.features(x))
        #expect(logits.shape == [2, 3] && loaded.predict(x) == EmojiClassifier.argmax(logits))
        // Overwriting an existing folder works.
        try loaded.save(to: dir)
        #expect(try EmojiClassifier.load(path: dir).stateDict() == model.stateDict())
    }

    @Test func configJSONRoundTripAndValidation() throws {
        let c = Self.tinyConfig()
        #expect(try ClassifierConfig(json: c.jsonData()) == c)
        func json(_ edit: (inout [String: Any]) -> Void) throws -> Data {
            var d = try JSONSerialization.jsonObject(with: c.jsonData()) as! [String: Any]
            edit(&d)
            return try JSONSerialization.data(withJSONObject: d)
        }
        let bad: [(inout [String: Any]) -> Void] = [
            { $0["strides"] = [1, 3, 1] },
            { $0["strides"] = [1, 2] },
            { $0["channels"] = [4, 7, 8] },
            { $0["num_classes"] = 4 },
            { $0["channels"] = "4,8,8" },
            { $0["surprise"] = 1 },
            { $0["feature_dim"] = 16 },
            { $0.removeValue(forKey: "channels") },
            { $0["_class_name"] = "UNet2DModel" },
        ]
        for edit in bad {
            #expect(throws: ModelError.self) { _ = try ClassifierConfig(json: try json(edit)) }
        }
        #expect(throws: ModelError.self) { _ = try ClassifierConfig(json: Data("[1, 2]".utf8)) }
    }

    @Test func corruptFoldersGiveModelErrors() throws {
        let model = EmojiClassifier(config: Self.tinyConfig(), seed: 13)
        let good = Self.tempDir("good")
        try model.save(to: good)
        let fm = FileManager.default

        func variant(_ name: String, _ edit: (String) throws -> Void) throws -> String {
            let dir = Self.tempDir(name)
            try fm.copyItem(atPath: good, toPath: dir)
            try edit(dir)
            return dir
        }
        func expectModelError(_ dir: String, mentioning needle: String) {
            do {
                _ = try EmojiClassifier.load(path: dir)
                Issue.record("\(dir) loaded but should not")
            } catch let e as ModelError {
                #expect(e.message.contains(needle), "message: \(e.message)")
            } catch {
                Issue.record("expected ModelError, got \(error)")
            }
        }

        expectModelError(Self.tempDir("nothing-here"), mentioning: "no classifier at")
        expectModelError(try variant("no-config") { try fm.removeItem(atPath: $0 + "/classifier.json") }, mentioning: "classifier.json")
        expectModelError(try variant("no-weights") { try fm.removeItem(atPath: $0 + "/model.safetensors") }, mentioning: "model.safetensors")
        expectModelError(try variant("bad-json") {
            try Data("{ not json".utf8).write(to: URL(fileURLWithPath: $0 + "/classifier.json"))
        }, mentioning: "not a JSON object")
        expectModelError(try variant("truncated") {
            let path = $0 + "/model.safetensors"
            let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path))
        }, mentioning: "model.safetensors")
        // Weights without the config record, one tensor missing / mis-shaped / extra.
        var tensors = model.stateDict()
        tensors.removeValue(forKey: "head.weight")
        expectModelError(try variant("missing-tensor") {
            try SafetensorsFile(tensors: tensors).write(path: $0 + "/model.safetensors")
        }, mentioning: "'head.weight'")
        tensors = model.stateDict()
        tensors["convs.1.weight"] = Tensor(zeros: [8, 4, 1, 1])
        expectModelError(try variant("wrong-shape") {
            try SafetensorsFile(tensors: tensors).write(path: $0 + "/model.safetensors")
        }, mentioning: "'convs.1.weight' has shape")
        tensors = model.stateDict()
        tensors["extra.bias"] = Tensor(zeros: [3])
        expectModelError(try variant("extra-tensor") {
            try SafetensorsFile(tensors: tensors).write(path: $0 + "/model.safetensors")
        }, mentioning: "'extra.bias'")
        // classifier.json changed after the weights were written.
        var other = Self.tinyConfig()
        other.channels = [4, 8, 16]
        expectModelError(try variant("other-config") {
            try other.jsonData().write(to: URL(fileURLWithPath: $0 + "/classifier.json"))
        }, mentioning: "another classifier.json")
    }
}
