import Foundation
import MillraceFormats

/// A problem with a model folder, its config or its weights, said so that a user can act on it.


/// diffusers' `UNet2DModel` configuration: the keys of its config.json, with the same meanings.
/// Values Millrace cannot run are refused by `init(json:)` with an error that names the key.
public struct UNetConfig: Sendable, Equatable {
    public enum DownBlock: String, Sendable { case down = "DownBlock2D", attnDown = "AttnDownBlock2D" }
    public enum UpBlock: String, Sendable { case up = "UpBlock2D", attnUp = "AttnUpBlock2D" }

    public var sampleSize: Int = 32
    public var inChannels: Int = 3
    public var outChannels: Int = 3
    public var centerInputSample = false
    public var timeEmbeddingDim: Int? = nil
    public var freqShift: Double = 0
    public var flipSinToCos = true
    public var downBlockTypes: [DownBlock] = [.down, .attnDown, .attnDown, .attnDown]
    public var upBlockTypes: [UpBlock] = [.attnUp, .attnUp, .attnUp, .up]
    public var hasMidBlock = true
    public var blockOutChannels: [Int] = [224, 448, 672, 896]
    public var layersPerBlock = 2
    public var midBlockScaleFactor: Double = 1
    public var downsamplePadding = 1
    public var dropout: Double = 0
    /// Channels per attention head; nil means one head spanning all channels.
    public var attentionHeadDim: Int? = 8
    public var normNumGroups = 32
    public var attnNormNumGroups: Int? = nil
    public var normEps: Double = 1e-5
    public var addAttention = true
    public var numClassEmbeds: Int? = nil
    public var numTrainTimesteps: Int? = nil

    public init() {}

    /// Width of the time embedding (diffusers: `time_embedding_dim or 4 * block_out_channels[0]`).
    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }

    /// Parses and validates a config.json body.
    public init(json data: Data) throws {
        let dict: [String: Any]
        do { dict = try StrictJSON.parseObject([UInt8](data)) } catch {
            throw ModelError.invalidModel("config.json is not a JSON object: \(error)")
        }
        try self.init(dictionary: dict)
    }

    // Keys that carry no meaning for running the model.
    private static let informational: Set<String> = ["_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"]

    init(dictionary d: [String: Any]) throws {
        func bad(_ key: String, _ why: String) -> ModelError {
            ModelError.invalidModel("config.json: '\(key)' \(why)")
        }
        func int(_ key: String, _ v: Any) throws -> Int {
            guard let n = v as? NSNumber, !isJSONBool(n),
                  n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e9 else {
                throw bad(key, "must be an integer, got \(v)")
            }
            return n.intValue
        }
        func double(_ key: String, _ v: Any) throws -> Double {
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else {
                throw bad(key, "must be a number, got \(v)")
            }
            return n.doubleValue
        }
        func bool(_ key: String, _ v: Any) throws -> Bool {
            guard let n = v as? NSNumber, isJSONBool(n) else {
                throw bad(key, "must be true or false, got \(v)")
            }
            return n.boolValue
        }
        func string(_ key: String, _ v: Any) throws -> String {
            guard let s = v as? String else { throw bad(key, "must be a string, got \(v)") }
            return s
        }
        func require(_ key: String, _ v: Any, is allowed: String) throws {
            let s = try string(key, v)
            guard s == allowed else {
                throw bad(key, "is \"\(s)\"; Millrace runs only \"\(allowed)\"")
            }
        }
        func isNull(_ v: Any) -> Bool { v is NSNull }

        for key in d.keys.sorted() {
            let v = d[key]!
            switch key {
            case _ where Self.informational.contains(key): break
            case "sample_size":
                if let list = v as? [Any] {
                    let dims = try list.map { try int(key, $0) }
                    guard dims.count == 2, dims[0] == dims[1], dims[0] > 0 else {
                        throw bad(key, "must be a positive integer or a square [h, w]")
                    }
                    sampleSize = dims[0]
                } else { sampleSize = try int(key, v) }
            case "in_channels": inChannels = try int(key, v)
            case "out_channels": outChannels = try int(key, v)
            case "center_input_sample": centerInputSample = try bool(key, v)
            case "time_embedding_type": try require(key, v, is: "positional")
            case "time_embedding_dim": timeEmbeddingDim = isNull(v) ? nil : try int(key, v)
            case "freq_shift": freqShift = try double(key, v)
            case "flip_sin_to_cos": flipSinToCos = try bool(key, v)
            case "down_block_types":
                guard let list = v as? [Any] else { throw bad(key, "must be a list") }
                downBlockTypes = try list.map {
                    let s = try string(key, $0)
                    guard let t = DownBlock(rawValue: s) else {
                        throw bad(key, "contains \"\(s)\"; Millrace runs DownBlock2D and AttnDownBlock2D")
                    }
                    return t
                }
            case "up_block_types":
                guard let list = v as? [Any] else { throw bad(key, "must be a list") }
                upBlockTypes = try list.map {
                    let s = try string(key, $0)
                    guard let t = UpBlock(rawValue: s) else {
                        throw bad(key, "contains \"\(s)\"; Millrace runs UpBlock2D and AttnUpBlock2D")
                    }
                    return t
                }
            case "mid_block_type":
                if isNull(v) { hasMidBlock = false } else { try require(key, v, is: "UNetMidBlock2D") }
            case "block_out_channels":
                guard let list = v as? [Any] else { throw bad(key, "must be a list") }
                blockOutChannels = try list.map { try int(key, $0) }
            case "layers_per_block": layersPerBlock = try int(key, v)
            case "mid_block_scale_factor": midBlockScaleFactor = try double(key, v)
            case "downsample_padding": downsamplePadding = try int(key, v)
            case "downsample_type": try require(key, v, is: "conv")
            case "upsample_type": try require(key, v, is: "conv")
            case "dropout": dropout = try double(key, v)
            case "act_fn": try require(key, v, is: "silu")
            case "attention_head_dim": attentionHeadDim = isNull(v) ? nil : try int(key, v)
            case "norm_num_groups":
                if isNull(v) { throw bad(key, "is null; Millrace needs an explicit group count") }
                normNumGroups = try int(key, v)
            case "attn_norm_num_groups": attnNormNumGroups = isNull(v) ? nil : try int(key, v)
            case "norm_eps": normEps = try double(key, v)
            case "resnet_time_scale_shift": try require(key, v, is: "default")
            case "add_attention": addAttention = try bool(key, v)
            case "class_embed_type":
                if !isNull(v) { throw bad(key, "is \(v); Millrace runs only null (a plain class embedding table)") }
            case "num_class_embeds": numClassEmbeds = isNull(v) ? nil : try int(key, v)
            case "num_train_timesteps": numTrainTimesteps = isNull(v) ? nil : try int(key, v)
            default:
                throw ModelError.invalidModel("config.json: unknown key '\(key)'; Millrace cannot run a UNet2DModel that uses it")
            }
        }
        if let name = d["_class_name"] as? String, name != "UNet2DModel" {
            throw bad("_class_name", "is \"\(name)\"; Millrace loads UNet2DModel")
        }
        try validate()
    }

    /// Checks the relations between values (counts, divisibility).
    public func validate() throws {
        func bad(_ key: String, _ why: String) -> ModelError { ModelError.invalidModel("config.json: '\(key)' \(why)") }
        let n = blockOutChannels.count
        guard n >= 1 else { throw bad("block_out_channels", "must not be empty") }
        guard downBlockTypes.count == n else {
            throw bad("down_block_types", "has \(downBlockTypes.count) entries but block_out_channels has \(n)")
        }
        guard upBlockTypes.count == n else {
            throw bad("up_block_types", "has \(upBlockTypes.count) entries but block_out_channels has \(n)")
        }
        guard inChannels >= 1, outChannels >= 1 else { throw bad("in_channels", "and out_channels must be positive") }
        guard layersPerBlock >= 1 else { throw bad("layers_per_block", "must be at least 1") }
        guard normNumGroups >= 1 else { throw bad("norm_num_groups", "must be positive") }
        guard normEps > 0 else { throw bad("norm_eps", "must be positive") }
        guard sampleSize >= 1 else { throw bad("sample_size", "must be positive") }
        for c in blockOutChannels {
            guard c >= 1, c % normNumGroups == 0 else {
                throw bad("block_out_channels", "entry \(c) is not a positive multiple of norm_num_groups \(normNumGroups)")
            }
            if let h = attentionHeadDim {
                guard h >= 1, c % h == 0 else {
                    throw bad("attention_head_dim", "\(h) does not divide block channel count \(c)")
                }
            }
        }
        if let g = attnNormNumGroups, g < 1 || blockOutChannels.last! % g != 0 {
            throw bad("attn_norm_num_groups", "\(g) does not divide \(blockOutChannels.last!)")
        }
        if let k = numClassEmbeds, k < 1 { throw bad("num_class_embeds", "must be positive") }
        if let d = timeEmbeddingDim, d < 1 { throw bad("time_embedding_dim", "must be positive") }
        guard blockOutChannels[0] >= 2 else { throw bad("block_out_channels", "first entry must be at least 2") }
        guard downsamplePadding >= 0 && downsamplePadding <= 2 else { throw bad("downsample_padding", "must be 0, 1 or 2") }
    }

    /// The config as diffusers writes it (all keys, sorted), so the folder loads in diffusers too.
    public func jsonData() -> Data {
        var d: [String: Any] = [
            "_class_name": "UNet2DModel", "_diffusers_version": "0.30.0",
            "sample_size": sampleSize, "in_channels": inChannels, "out_channels": outChannels,
            "center_input_sample": centerInputSample, "time_embedding_type": "positional",
            "time_embedding_dim": timeEmbeddingDim as Any? ?? NSNull(),
            "freq_shift": freqShift == freqShift.rounded() ? Int(freqShift) as Any : freqShift,
            "flip_sin_to_cos": flipSinToCos,
            "down_block_types": downBlockTypes.map(\.rawValue), "up_block_types": upBlockTypes.map(\.rawValue),
            "mid_block_type": hasMidBlock ? "UNetMidBlock2D" as Any : NSNull(),
            "block_out_channels": blockOutChannels, "layers_per_block": layersPerBlock,
            "mid_block_scale_factor": midBlockScaleFactor, "downsample_padding": downsamplePadding,
            "downsample_type": "conv", "upsample_type": "conv", "dropout": dropout, "act_fn": "silu",
            "attention_head_dim": attentionHeadDim as Any? ?? NSNull(),
            "norm_num_groups": normNumGroups,
            "attn_norm_num_groups": attnNormNumGroups as Any? ?? NSNull(), "norm_eps": normEps,
            "resnet_time_scale_shift": "default", "add_attention": addAttention,
            "class_embed_type": NSNull(), "num_class_embeds": numClassEmbeds as Any? ?? NSNull(),
            "num_train_timesteps": numTrainTimesteps as Any? ?? NSNull(),
        ]
        if d["time_embedding_dim"] == nil { d["time_embedding_dim"] = NSNull() }
        return (try? JSONSerialization.data(withJSONObject: d, options: [.prettyPrinted, .sortedKeys])) ?? Data()
    }
}
