import Foundation
import MillraceFormats

/// Millrace's flow-matching conventions for a model folder (flow.json); see docs/METHODS.md §1.
public struct FlowConfig: Codable, Sendable, Equatable {
    /// What the network predicts; Millrace models predict the velocity `x1 − x0`.
    public var prediction: String = "velocity"
    /// The network's timestep input is `timestepScale · t`.
    public var timestepScale: Double = 1000
    /// Class names by index (without the null class).
    public var classNames: [String] = []
    /// Index of the null (unconditional) class, if the model is class-conditional.
    public var nullClass: Int? = nil
    /// Norm-alignment scale s (§4.1): data was trained as `s·x1`; samples are divided by s.
    public var normScale: Double = 1
    /// Guidance scale used when none is asked for (1 = no guidance).
    public var defaultGuidance: Double = 1
    /// For a straightened model (§3.4, `gen straighten`): the guidance scale of the teacher whose
    /// guided chords it learned, so that it samples at guidance 1 in one row per step.
    public var distilledGuidance: Double? = nil
    /// What the model does when it is not a generator of images: "colorize" for an in-context
    /// colorization model (its samples are chroma, conditioned on extra input channels; see
    /// `InContextColorizer`). nil: an image generator.
    public var task: String? = nil

    public init() {}

    enum CodingKeys: String, CodingKey {
        case prediction, timestepScale = "timestep_scale", classNames = "class_names"
        case nullClass = "null_class", normScale = "norm_scale", defaultGuidance = "default_guidance"
        case distilledGuidance = "distilled_guidance", task
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        prediction = try c.decodeIfPresent(String.self, forKey: .prediction) ?? "velocity"
        timestepScale = try c.decodeIfPresent(Double.self, forKey: .timestepScale) ?? 1000
        classNames = try c.decodeIfPresent([String].self, forKey: .classNames) ?? []
        nullClass = try c.decodeIfPresent(Int.self, forKey: .nullClass)
        normScale = try c.decodeIfPresent(Double.self, forKey: .normScale) ?? 1
        defaultGuidance = try c.decodeIfPresent(Double.self, forKey: .defaultGuidance) ?? 1
        distilledGuidance = try c.decodeIfPresent(Double.self, forKey: .distilledGuidance)
        task = try c.decodeIfPresent(String.self, forKey: .task)
    }
}

/// A model folder: config.json, weights, flow.json (see docs/ARCHITECTURE.md).
public struct ModelFolder {
    public let path: String
    public let config: UNetConfig
    public let flow: FlowConfig
    public let model: UNet2DModel

    /// Weight files looked for, in order: Millrace's name, then diffusers' name.
    public static let weightFileNames = ["model.safetensors", "diffusion_pytorch_model.safetensors"]

    /// Loads and validates a folder. Every problem is a `ModelError` naming the file and key.
    public static func load(_ path: String) throws -> ModelFolder {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw ModelError.invalidModel("model folder '\(path)' does not exist")
        }
        let configPath = (path as NSString).appendingPathComponent("config.json")
        guard let configData = fm.contents(atPath: configPath) else {
            throw ModelError.invalidModel("'\(configPath)' is missing: a model folder needs config.json")
        }
        let config: UNetConfig
        do { config = try UNetConfig(json: configData) } catch let e as ModelError {
            throw e.prefixed(configPath)
        }
        var flow = FlowConfig()
        let flowPath = (path as NSString).appendingPathComponent("flow.json")
        if let flowData = fm.contents(atPath: flowPath) {
            do { flow = try StrictJSON.decode(FlowConfig.self, from: [UInt8](flowData)) } catch {
                throw ModelError.invalidModel("\(flowPath) is not valid: \(error)")
            }
            try validate(flow: flow, config: config, path: flowPath)
        } else if let n = config.numClassEmbeds {
            // A plain diffusers folder: classes are numbered and the last one is taken as null.
            flow.classNames = (0..<max(n - 1, 0)).map { "class \($0)" }
            flow.nullClass = n - 1
        }
        guard let weightsName = weightFileNames.first(where: {
            fm.fileExists(atPath: (path as NSString).appendingPathComponent($0))
        }) else {
            throw ModelError.invalidModel("no weights in '\(path)': expected \(weightFileNames.joined(separator: " or "))")
        }
        let weightsPath = (path as NSString).appendingPathComponent(weightsName)
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: weightsPath) } catch {
            throw ModelError.invalidModel("\(weightsPath): \(error)")
        }
        let model = UNet2DModel(config: config)
        do { try model.load(file.tensors.mapValues(Tensor.init)) } catch let e as ModelError {
            throw e.prefixed(weightsPath)
        }
        return ModelFolder(path: path, config: config, flow: flow, model: model)
    }

    static func validate(flow: FlowConfig, config: UNetConfig, path: String) throws {
        guard flow.prediction == "velocity" else {
            throw ModelError.invalidModel("\(path): prediction \"\(flow.prediction)\" is not supported; Millrace models predict \"velocity\"")
        }
        guard flow.timestepScale > 0, flow.normScale > 0 else {
            throw ModelError.invalidModel("\(path): timestep_scale and norm_scale must be positive")
        }
        if let n = config.numClassEmbeds {
            guard let null = flow.nullClass, null >= 0, null < n else {
                throw ModelError.invalidModel("\(path): null_class must be an index below num_class_embeds (\(n))")
            }
            guard flow.classNames.count <= n else {
                throw ModelError.invalidModel("\(path): \(flow.classNames.count) class names but num_class_embeds is \(n)")
            }
        }
    }

    /// Writes config.json, model.safetensors (the given model's weights) and flow.json into
    /// `path`, creating it. Each file is written atomically.
    public static func write(model: UNet2DModel, flow: FlowConfig, to path: String,
                             metadata: [String: String] = [:]) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try AtomicFile.write(model.config.jsonData(), to: (path as NSString).appendingPathComponent("config.json"))
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(enc.encode(flow), to: (path as NSString).appendingPathComponent("flow.json"))
        try SafetensorsFile(tensors: model.stateDict(), metadata: metadata)
            .write(path: (path as NSString).appendingPathComponent("model.safetensors"))
    }
}

extension UNet2DModel {
    /// Weights by diffusers' names.
    public func stateDict() -> [String: Tensor] {
        Dictionary(uniqueKeysWithValues: namedParameters().map { ($0.0, $0.1.value) })
    }

    /// Names used by checkpoints saved before diffusers renamed the attention projections.
    static func modernName(_ name: String) -> String {
        let renames = [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]
        for (old, new) in renames where name.contains(old) {
            return name.replacingOccurrences(of: old, with: new)
        }
        return name
    }

    /// Replaces every weight. The set of names and every shape must match the config exactly:
    /// a missing, unexpected or mis-shaped tensor is refused by name.
    public func load(_ tensors: [String: Tensor]) throws {
        var byName: [String: Tensor] = [:]
        for (k, v) in tensors { byName[Self.modernName(k)] = v }
        let params = namedParameters()
        let expected = Set(params.map(\.0))
        let missing = params.map(\.0).filter { byName[$0] == nil }
        if !missing.isEmpty {
            throw ModelError.invalidModel("missing tensor\(missing.count > 1 ? "s" : "") \(missing.prefix(5).map { "'\($0)'" }.joined(separator: ", "))\(missing.count > 5 ? " and \(missing.count - 5) more" : "") that the config needs")
        }
        let unexpected = byName.keys.filter { !expected.contains($0) }.sorted()
        if !unexpected.isEmpty {
            throw ModelError.invalidModel("unexpected tensor\(unexpected.count > 1 ? "s" : "") \(unexpected.prefix(5).map { "'\($0)'" }.joined(separator: ", ")): the weights do not match config.json")
        }
        for (name, p) in params {
            let t = byName[name]!
            guard t.shape == p.value.shape else {
                throw ModelError.invalidModel("tensor '\(name)' has shape \(t.shape) but the config needs \(p.value.shape)")
            }
        }
        for (name, p) in params { p.value = byName[name]! }
    }
}

extension ModelFolder {
    /// Where the shipped emoji model is looked for: $MILLRACE_MODEL, then assets/models/emoji32
    /// under the current directory or any parent of the running executable (so `swift run gen`
    /// and `.build/release/gen` both find the repo's copy).
    /// The model folders shipped beside `base` as its students: sibling folders named
    /// `<base name>-<suffix>` (assets/models/emoji32-1step) that hold a model, sorted by name.
    public static func studentPaths(of base: String) -> [String] {
        let url = URL(fileURLWithPath: base).standardizedFileURL
        let parent = url.deletingLastPathComponent(), name = url.lastPathComponent
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: parent.path) else { return [] }
        return entries.filter { $0.hasPrefix(name + "-") }.sorted().map { parent.appendingPathComponent($0).path }
            .filter { FileManager.default.fileExists(atPath: $0 + "/config.json") && FileManager.default.fileExists(atPath: $0 + "/model.safetensors") }
    }

    public static func defaultPath() -> String {
        if let env = ProcessInfo.processInfo.environment["MILLRACE_MODEL"], !env.isEmpty { return env }
        return shippedPath("emoji32") ?? "assets/models/emoji32"
    }

    /// The shipped model streams run on by default: the restyle model of scenes (docs/STREAMS.md),
    /// named by `streamModelName`, else the composition model itself;
    /// `MILLRACE_STREAM_MODEL` overrides it. Falls back to `defaultPath()` where neither is shipped.
    public static func defaultStreamPath() -> String {
        if let env = ProcessInfo.processInfo.environment["MILLRACE_STREAM_MODEL"], !env.isEmpty { return env }
        return shippedPath(streamModelName) ?? shippedPath(compositionModelName) ?? defaultPath()
    }

    /// What `gen serve` serves without `--model`: the emoji model first (the default), then the
    /// composition model, each with the shipped models made from it (folders named after it:
    /// emoji32-1step, scenes64-i2i, scenes64-restyle), then the stream model where it is not
    /// among them (scenes128-restyle, drawn at 128×128).
    public static func defaultServedPaths() -> [String] {
        let base = defaultPath()
        var paths = [base] + studentPaths(of: base)
        if let scenes = shippedPath(compositionModelName) { paths += [scenes] + studentPaths(of: scenes) }
        if let stream = shippedPath(streamModelName), !paths.contains(stream) { paths.append(stream) }
        return paths
    }

    /// The folder name, under assets/models, of the composition model (scenes of emoji).
    public static let compositionModelName = "scenes64"
    /// The folder name, under assets/models, of the default stream model: a one-step restyle
    /// model of scenes at 128×128 (docs/STREAMS.md).
    public static let streamModelName = "scenes128-restyle"

    /// The folder name, under assets/models, of the in-context colorization model.
    public static let colorizationModelName = "colorize32"

    /// The in-context colorization model `gen colorize`, the service and `gen eval colorize` use
    /// by default: `MILLRACE_COLOR_MODEL`, else the shipped one; nil when neither exists.
    public static func defaultColorizationPath() -> String? {
        if let env = ProcessInfo.processInfo.environment["MILLRACE_COLOR_MODEL"], !env.isEmpty { return env }
        return shippedPath(colorizationModelName)
    }

    /// assets/models/`name`, found from the working directory or above the executable (a build
    /// folder of a checkout); nil when neither has it.
    public static func shippedPath(_ name: String) -> String? {
        let relative = "assets/models/" + name
        let fm = FileManager.default
        if fm.fileExists(atPath: relative + "/config.json") { return relative }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            let candidate = dir.appendingPathComponent(relative).path
            if fm.fileExists(atPath: candidate + "/config.json") { return candidate }
            dir.deleteLastPathComponent()
        }
        return nil
    }
}
