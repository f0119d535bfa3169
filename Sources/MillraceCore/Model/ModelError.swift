/// Why the model layer refused or failed: one case per kind of problem, so that callers can
/// match them (the HTTP layer maps them to statuses, `gen` adds advice on what to run). Every
/// case carries a message that names the file, key or value at fault.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    /// A model folder or one of its files (config.json, flow.json, the weights) cannot be used.
    case invalidModel(String)
    /// A file that belongs beside a model was not found: `path` and what it is.
    case missingFile(path: String, kind: FileKind, detail: String)
    /// A file exists but is not what it must be (a pruning set, schedules, costs, a cache).
    case invalidFile(String)
    /// A value given by the caller is out of range (steps, samples, a class, τ, a shape).
    case invalidArgument(String)
    /// The model cannot do what was asked (not an RGB model, no classes).
    case unsupported(String)
    /// A numerical routine failed (an eigen-decomposition that did not converge, pruned
    /// sampling that found no sample).
    case numerical(String)
    /// Writing a file failed.
    case io(String)

    /// The files that live beside a model and are made by a separate step.
    public enum FileKind: String, Sendable, Equatable {
        case modelFolder = "model folder"
        case pruningSet = "pruning set"
        case bossSchedules = "BOSS schedules"
        case teacherCache = "teacher cache"
        case costs = "cost matrix"
        case classifier = "classifier"
    }

    public var message: String {
        switch self {
        case .invalidModel(let m), .invalidFile(let m), .invalidArgument(let m), .unsupported(let m), .numerical(let m), .io(let m):
            return m
        case .missingFile(let path, let kind, let detail):
            return "no \(kind.rawValue) at \(path)" + (detail.isEmpty ? "" : ": \(detail)")
        }
    }

    public var description: String { message }

    /// The same error with `prefix: ` before its message (a file name, a context).
    public func prefixed(_ prefix: String) -> ModelError {
        switch self {
        case .invalidModel(let m): return .invalidModel("\(prefix): \(m)")
        case .invalidFile(let m): return .invalidFile("\(prefix): \(m)")
        case .invalidArgument(let m): return .invalidArgument("\(prefix): \(m)")
        case .unsupported(let m): return .unsupported("\(prefix): \(m)")
        case .numerical(let m): return .numerical("\(prefix): \(m)")
        case .io(let m): return .io("\(prefix): \(m)")
        case .missingFile: return self
        }
    }
}
