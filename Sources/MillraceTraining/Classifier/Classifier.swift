import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging

/// Configuration of `EmojiClassifier`, stored as `classifier.json` in its folder.
///
/// The network is a stack of 3×3 convolutions (padding 1, the given strides), each followed by
/// GroupNorm + SiLU, then global average pooling to `channels.last` features and a linear head.
public struct ClassifierConfig: Sendable, Equatable {
    /// Side of the square RGB input images.
    public var imageSize: Int = 32
    /// Output channels of each convolution.
    public var channels: [Int] = [32, 64, 64, 128, 128]
    /// Stride of each convolution (1 or 2); same length as `channels`.
    public var strides: [Int] = [1, 2, 1, 2, 1]
    /// GroupNorm groups (must divide every entry of `channels`).
    public var normNumGroups: Int = 8
    public var normEps: Double = 1e-5
    /// Number of output classes.
    public var numClasses: Int = 9
    /// Class names by index (empty, or exactly `numClasses` names).
    public var classNames: [String] = []

    public init() {}

    /// A config for `classNames.count` classes of `imageSize`² images, with the default layers.
    public init(classNames: [String], imageSize: Int) {
        self.classNames = classNames
        self.numClasses = classNames.count
        self.imageSize = imageSize
    }

    /// Width of the penultimate features (the pooled output of the last convolution).
    public var featureDim: Int { channels.last ?? 0 }

    /// Name of class `i` (its stored name, or `class i`).
    public func className(_ i: Int) -> String {
        i < classNames.count ? classNames[i] : "class \(i)"
    }

    /// Refuses configs the classifier cannot be built from, naming the key.
    public func validate() throws {
        func bad(_ key: String, _ why: String) -> ModelError { ModelError.invalidModel("classifier.json: '\(key)' \(why)") }
        guard imageSize >= 1 && imageSize <= 4096 else { throw bad("image_size", "must be between 1 and 4096, got \(imageSize)") }
        guard !channels.isEmpty else { throw bad("channels", "must not be empty") }
        guard channels.allSatisfy({ $0 >= 1 && $0 <= 65_536 }) else { throw bad("channels", "must be positive, got \(channels)") }
        guard strides.count == channels.count else {
            throw bad("strides", "has \(strides.count) entries but channels has \(channels.count)")
        }
        guard strides.allSatisfy({ $0 == 1 || $0 == 2 }) else { throw bad("strides", "entries must be 1 or 2, got \(strides)") }
        guard normNumGroups >= 1 else { throw bad("norm_num_groups", "must be positive") }
        if let c = channels.first(where: { $0 % normNumGroups != 0 }) {
            throw bad("norm_num_groups", "(\(normNumGroups)) must divide every entry of channels; \(c) is not a multiple")
        }
        guard normEps > 0 && normEps.isFinite else { throw bad("norm_eps", "must be a positive number") }
        guard numClasses >= 1 && numClasses <= 65_536 else { throw bad("num_classes", "must be positive, got \(numClasses)") }
        guard classNames.isEmpty || classNames.count == numClasses else {
            throw bad("class_names", "has \(classNames.count) names but num_classes is \(numClasses)")
        }
    }

    /// Parses and validates a classifier.json body. Unknown keys are refused.
    public init(json data: Data) throws {
        let d: [String: Any]
        do { d = try StrictJSON.parseObject([UInt8](data)) } catch {
            throw ModelError.invalidModel("classifier.json is not a JSON object: \(error)")
        }
        func bad(_ key: String, _ why: String) -> ModelError { ModelError.invalidModel("classifier.json: '\(key)' \(why)") }
        func int(_ key: String, _ v: Any) throws -> Int {
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(),
                  abs(n.doubleValue) < 1e9 else { throw bad(key, "must be an integer, got \(v)") }
            return n.intValue
        }
        func ints(_ key: String, _ v: Any) throws -> [Int] {
            guard let list = v as? [Any] else { throw bad(key, "must be a list of integers") }
            return try list.map { try int(key, $0) }
        }
        let required = ["image_size", "channels", "strides", "num_classes"]
        if let missing = required.first(where: { d[$0] == nil }) {
            throw ModelError.invalidModel("classifier.json: '\(missing)' is missing")
        }
        for key in d.keys.sorted() {
            let v = d[key]!
            switch key {
            case "_class_name":
                guard v as? String == "EmojiClassifier" else {
                    throw bad(key, "is \(v); this file describes a model other than EmojiClassifier")
                }
            case "_format", "feature_dim": break  // informational (feature_dim is checked below)
            case "image_size": imageSize = try int(key, v)
            case "in_channels":
                guard try int(key, v) == 3 else { throw bad(key, "must be 3 (RGB), got \(v)") }
            case "channels": channels = try ints(key, v)
            case "strides": strides = try ints(key, v)
            case "norm_num_groups": normNumGroups = try int(key, v)
            case "norm_eps":
                guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else {
                    throw bad(key, "must be a number, got \(v)")
                }
                normEps = n.doubleValue
            case "num_classes": numClasses = try int(key, v)
            case "class_names":
                guard let names = v as? [Any], let strings = names as? [String], strings.count == names.count else {
                    throw bad(key, "must be a list of strings")
                }
                classNames = strings
            case "act_fn":
                guard v as? String == "silu" else { throw bad(key, "is \(v); Millrace's classifier uses \"silu\"") }
            default:
                throw bad(key, "is not a key of EmojiClassifier's config")
            }
        }
        if !d.keys.contains("class_names") { classNames = [] }
        try validate()
        if let f = d["feature_dim"] {
            guard try int("feature_dim", f) == featureDim else {
                throw bad("feature_dim", "is \(f) but the last entry of channels is \(featureDim)")
            }
        }
    }

    /// classifier.json bytes (pretty-printed, keys sorted).
    public func jsonData() -> Data {
        let d: [String: Any] = [
            "_class_name": "EmojiClassifier", "_format": "millrace-classifier-1",
            "image_size": imageSize, "in_channels": 3, "channels": channels, "strides": strides,
            "norm_num_groups": normNumGroups, "norm_eps": normEps, "act_fn": "silu",
            "num_classes": numClasses, "class_names": classNames, "feature_dim": featureDim,
        ]
        return try! JSONSerialization.data(withJSONObject: d, options: [.prettyPrinted, .sortedKeys])
    }
}

/// A small CNN that classifies emoji images into their groups. It is the evaluation network of
/// the project: its penultimate (pooled) features feed a Fréchet distance and its predictions a
/// class accuracy of generated images.
///
/// Input: [B, 3, S, S] in [−1, 1] (S = `config.imageSize`). Parameter names are
/// `convs.i.weight/bias`, `norms.i.weight/bias` and `head.weight/bias`.
public final class EmojiClassifier: ParameterContainer {
    public let config: ClassifierConfig
    let convs: [Conv2d]
    let norms: [GroupNorm]
    let head: Linear
    /// Spatial shape of the last feature map, kept by a training forward for the pooling backward.
    var pooledShape: [Int]?

    /// A classifier with PyTorch-style random initial weights from `seed`. The config must be valid.
    public init(config: ClassifierConfig, seed: UInt64 = 0) {
        do { try config.validate() } catch { preconditionFailure("invalid classifier config: \(error)") }
        self.config = config
        var ini = Initializer(rng: SplitMix64(seed: seed))
        var convs: [Conv2d] = [], norms: [GroupNorm] = []
        var inC = 3
        for (c, s) in zip(config.channels, config.strides) {
            convs.append(Conv2d(inC, c, kernel: 3, stride: s, padding: 1, initializer: &ini))
            norms.append(GroupNorm(groups: config.normNumGroups, channels: c, eps: Float(config.normEps), fusedSiLU: true))
            inC = c
        }
        self.convs = convs
        self.norms = norms
        self.head = Linear(inC, config.numClasses, initializer: &ini)
    }

    public func namedParameters() -> [(String, Parameter)] {
        var out: [(String, Parameter)] = []
        for i in convs.indices {
            out += prefixed("convs.\(i)", convs[i])
            out += prefixed("norms.\(i)", norms[i])
        }
        return out + prefixed("head", head)
    }

    /// Total number of learnable values.
    public var parameterCount: Int { namedParameters().reduce(0) { $0 + $1.1.value.count } }

    /// Width of the penultimate features.
    public var featureDim: Int { config.featureDim }

    func checkInput(_ x: Tensor) {
        let s = config.imageSize
        precondition(x.rank == 4 && x.shape[1] == 3 && x.shape[2] == s && x.shape[3] == s,
                     "the classifier expects [B, 3, \(s), \(s)] in [-1, 1], got \(x.shape)")
    }

    /// Convolutions and global average pooling: [B, 3, S, S] → [B, F].
    func trunk(_ x: Tensor, training: Bool) -> Tensor {
        checkInput(x)
        var h = x
        for i in convs.indices {
            h = norms[i].forward(convs[i].forward(h, training: training), training: training)
        }
        if training { pooledShape = h.shape }
        return Self.globalAveragePool(h)
    }

    /// Logits [B, classes]. With `training`, caches what `backward` needs.
    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        head.forward(trunk(x, training: training), training: training)
    }

    /// Penultimate features [B, F] (global average of the last feature map).
    public func features(_ x: Tensor) -> Tensor {
        trunk(x, training: false)
    }

    /// Features [B, F] and logits [B, classes] from one pass.
    public func featuresAndLogits(_ x: Tensor) -> (features: Tensor, logits: Tensor) {
        let f = trunk(x, training: false)
        return (f, head.forward(f, training: false))
    }

    /// The most likely class of each image.
    public func predict(_ x: Tensor) -> [Int] {
        Self.argmax(forward(x, training: false))
    }

    /// Backpropagates dLoss/dLogits through a training forward, accumulating every parameter's
    /// gradient; returns dLoss/dInput [B, 3, S, S].
    @discardableResult
    public func backward(_ dLogits: Tensor) -> Tensor {
        guard let shape = pooledShape else { preconditionFailure("EmojiClassifier.backward without a training forward") }
        var g = Self.globalAveragePoolBackward(head.backward(dLogits), shape: shape)
        for i in convs.indices.reversed() {
            g = convs[i].backward(norms[i].backward(g))
        }
        pooledShape = nil
        return g
    }

    // MARK: Pooling

    /// Mean over the spatial dimensions: [B, C, H, W] → [B, C].
    static func globalAveragePool(_ x: Tensor) -> Tensor {
        let (b, c) = (x.shape[0], x.shape[1])
        let hw = x.count / max(b * c, 1)
        var y = Tensor(zeros: [b, c])
        let inv = 1 / Float(hw)
        x.data.withUnsafeBufferPointer { xp in
            for r in 0..<(b * c) {
                var s: Float = 0
                for j in 0..<hw { s += xp[r * hw + j] }
                y.data[r] = s * inv
            }
        }
        return y
    }

    /// Gradient of `globalAveragePool`: every pixel of channel (b, c) gets dy[b, c] / (H·W).
    static func globalAveragePoolBackward(_ dy: Tensor, shape: [Int]) -> Tensor {
        let rows = shape[0] * shape[1]
        let hw = shape.dropFirst(2).reduce(1, *)
        precondition(dy.count == rows, "pooling gradient has \(dy.count) values, expected \(rows)")
        var dx = Tensor(uninitialized: shape)
        let inv = 1 / Float(hw)
        dx.data.withUnsafeMutableBufferPointer { dp in
            for r in 0..<rows {
                let v = dy.data[r] * inv
                for j in 0..<hw { dp[r * hw + j] = v }
            }
        }
        return dx
    }

    /// Index of the largest entry of each row of [B, K].
    public static func argmax(_ logits: Tensor) -> [Int] {
        let k = logits.shape.last ?? 1
        let rows = logits.count / max(k, 1)
        return (0..<rows).map { r in
            var best = 0
            for j in 1..<max(k, 1) where logits.data[r * k + j] > logits.data[r * k + best] { best = j }
            return best
        }
    }

    // MARK: Inputs

    /// Images `indices` of a dataset as a batch [n, 3, S, S] in [−1, 1].
    /// The classifier's input for images of any size: area-resized to its size, scaled to [−1, 1].
    public func inputBatch(_ images: [RGBImage]) -> Tensor {
        let side = config.imageSize
        let resized = images.map { $0.width == side && $0.height == side ? $0 : $0.resizedArea(width: side, height: side) }
        return resized.isEmpty ? Tensor(zeros: [0, 3, side, side]) : try! Tensor(images: resized)  // one size: always converts
    }

    /// Predicted class of each image (batches of 64).
    public func predict(_ images: [RGBImage]) -> [Int] {
        var out: [Int] = []
        for start in stride(from: 0, to: images.count, by: 64) {
            out += Self.argmax(forward(inputBatch(Array(images[start..<min(images.count, start + 64)])), training: false))
        }
        return out
    }

    public static func inputBatch(_ dataset: ImageDataset, indices: [Int]) -> Tensor {
        dataset.modelInputs(indices)
    }

    // MARK: Folder

    public static let configFileName = "classifier.json"
    public static let weightsFileName = "model.safetensors"

    /// Weights by name.
    public func stateDict() -> [String: Tensor] {
        Dictionary(uniqueKeysWithValues: namedParameters().map { ($0.0, $0.1.value) })
    }

    /// Replaces every weight; names and shapes must match the config exactly (nothing changes on error).
    public func load(_ tensors: [String: Tensor]) throws {
        let params = namedParameters()
        let missing = params.map(\.0).filter { tensors[$0] == nil }
        if !missing.isEmpty {
            throw ModelError.invalidModel("missing tensor\(missing.count > 1 ? "s" : "") \(missing.prefix(5).map { "'\($0)'" }.joined(separator: ", "))\(missing.count > 5 ? " and \(missing.count - 5) more" : "") that classifier.json needs")
        }
        let expected = Set(params.map(\.0))
        let unexpected = tensors.keys.filter { !expected.contains($0) }.sorted()
        if !unexpected.isEmpty {
            throw ModelError.invalidModel("unexpected tensor\(unexpected.count > 1 ? "s" : "") \(unexpected.prefix(5).map { "'\($0)'" }.joined(separator: ", ")): the weights do not match classifier.json")
        }
        for (name, p) in params {
            let t = tensors[name]!
            guard t.shape == p.value.shape else {
                throw ModelError.invalidModel("tensor '\(name)' has shape \(t.shape) but classifier.json needs \(p.value.shape)")
            }
            guard t.data.allSatisfy({ $0.isFinite }) else {
                throw ModelError.invalidModel("tensor '\(name)' contains NaN or infinite values")
            }
        }
        for (name, p) in params { p.value = tensors[name]! }
    }

    /// Writes classifier.json and model.safetensors into `path` (created if missing). Each file is
    /// replaced atomically; the weights go first and record the config they belong to, so a
    /// folder left half-updated by a crash is detected by `load(path:)`.
    public func save(to path: String, metadata: [String: String] = [:]) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw ModelError.io("cannot create classifier folder '\(path)': \(error.localizedDescription)")
        }
        var meta = metadata
        meta["format"] = "millrace-classifier-1"
        meta["config"] = String(decoding: config.jsonData(), as: UTF8.self)
        let weightsPath = (path as NSString).appendingPathComponent(Self.weightsFileName)
        do {
            try SafetensorsFile(tensors: stateDict(), metadata: meta).write(path: weightsPath)
        } catch {
            throw ModelError.io("cannot write \(weightsPath): \(error)")
        }
        let configPath = (path as NSString).appendingPathComponent(Self.configFileName)
        do {
            try AtomicFile.write(config.jsonData(), to: configPath)
        } catch {
            throw ModelError.io("cannot write \(configPath): \(error.localizedDescription)")
        }
    }

    /// Loads a folder written by `save(to:)`. Every problem is a `ModelError` naming the file.
    public static func load(path: String) throws -> EmojiClassifier {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw ModelError.missingFile(path: path, kind: .classifier, detail: "")
        }
        let configPath = (path as NSString).appendingPathComponent(configFileName)
        guard let configData = fm.contents(atPath: configPath) else {
            throw ModelError.invalidModel("'\(configPath)' is missing: a classifier folder needs \(configFileName)")
        }
        let config: ClassifierConfig
        do { config = try ClassifierConfig(json: configData) } catch let e as ModelError {
            throw e.prefixed(configPath)
        }
        let weightsPath = (path as NSString).appendingPathComponent(weightsFileName)
        guard fm.fileExists(atPath: weightsPath) else {
            throw ModelError.invalidModel("'\(weightsPath)' is missing: a classifier folder needs \(weightsFileName)")
        }
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: weightsPath) } catch {
            throw ModelError.invalidModel("\(weightsPath): \(error)")
        }
        if let saved = file.metadata["config"] {
            let savedConfig: ClassifierConfig
            do { savedConfig = try ClassifierConfig(json: Data(saved.utf8)) } catch {
                throw ModelError.invalidModel("\(weightsPath): its recorded config is invalid (\(error))")
            }
            guard savedConfig == config else {
                throw ModelError.invalidModel("\(weightsPath) was written for another \(configFileName) than '\(configPath)'; the folder is inconsistent")
            }
        }
        let model = EmojiClassifier(config: config)
        do { try model.load(file.tensors.mapValues(Tensor.init)) } catch let e as ModelError {
            throw e.prefixed(weightsPath)
        }
        return model
    }
}
