/// Source samples x0 ~ N(0, I), one seeded stream per sample: sample i of seed S is the same
/// whatever the batch size, so a grid of 16 starts with the 8 images of a grid of 8.
public enum GaussianSource {
    public static func draw(count: Int, shape: [Int], seed: UInt64) -> Tensor {
        let per = shape.reduce(1, *)
        var data = [Float](repeating: 0, count: count * per)
        for i in 0..<count {
            var rng = SplitMix64(seed: seed, stream: i)
            let g = rng.gaussians(per)
            data.replaceSubrange((i * per)..<((i + 1) * per), with: g)
        }
        return Tensor(shape: [count] + shape, data: data)
    }
}

/// Parses `--class NAME|INDEX|all` against a model's classes.
public enum ClassSelection {
    public static func parse(_ text: String, flow: FlowConfig, config: UNetConfig) throws -> [Int] {
        guard let k = config.numClassEmbeds else {
            guard text == "all" || text == "0" else { throw ModelError.unsupported("this model has no classes; ask for none") }
            return [0]
        }
        let names = flow.classNames
        let real = names.isEmpty ? (0..<k).filter { $0 != flow.nullClass } : Array(names.indices)
        if text.lowercased() == "all" { return real }
        if let i = Int(text) {
            guard i >= 0 && i < k else {
                throw ModelError.invalidArgument("class index \(i) is out of range: this model has classes 0...\(k - 1)")
            }
            return [i]
        }
        if text.lowercased() == "null" || text.lowercased() == "none", let null = flow.nullClass { return [null] }
        let lower = text.lowercased()
        if let exact = names.firstIndex(where: { $0.lowercased() == lower }) { return [exact] }
        let matches = names.indices.filter { names[$0].lowercased().hasPrefix(lower) }
        if matches.count == 1 { return matches }
        let list = names.enumerated().map { "\($0.offset): \($0.element)" }.joined(separator: ", ")
        throw ModelError.invalidArgument(matches.isEmpty ? "unknown class '\(text)'; classes are \(list), or 'all'"
                                         : "class '\(text)' is ambiguous; classes are \(list)")
    }
}

/// The source distributions `--source` names: N(0, I), or SourceFM's pruned Gaussian (§4.3).
public enum SourceDistribution: String, Sendable, CaseIterable {
    case gaussian, pruned

    /// `count` source samples of `shape`, sample i seeded from (seed, i). Pruned sampling needs
    /// the model folder's prune-axes.safetensors and reports its acceptance rate.
    public func draw(count: Int, shape: [Int], seed: UInt64, modelFolder: String) throws
        -> (samples: Tensor, acceptanceRate: Double?) {
        switch self {
        case .gaussian:
            return (GaussianSource.draw(count: count, shape: shape, seed: seed), nil)
        case .pruned:
            let drawn = try PrunedSource.load(modelFolder: modelFolder).draw(count: count, shape: shape, seed: seed)
            return (drawn.samples, drawn.acceptanceRate)
        }
    }
}
