import ArgumentParser
import MillraceCore
import MillracePipelines

// Typed command-line values: an option of one of these types takes exactly the listed words,
// and `--help` and the error for a wrong word list them (ArgumentParser does both).

extension Solver: ExpressibleByArgument {}
extension SourceDistribution: ExpressibleByArgument {}
extension StreamGuidance: ExpressibleByArgument {}
extension StreamStepping: ExpressibleByArgument {}
extension StructureTarget: ExpressibleByArgument {}

/// Where the step times come from.
enum ScheduleChoice: String, ExpressibleByArgument, CaseIterable {
    /// Equal steps from t = 0 to 1.
    case uniform
    /// The model folder's BOSS schedules (schedules.json, made by `gen schedule boss`).
    case boss
}
