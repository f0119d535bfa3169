// `swift build` makes the safetensors fuzz target a replay tool:
//   .build/debug/fuzz-safetensors Fuzz/Safetensors/seeds [more files or folders]
import FuzzReplay

replayInputs(Array(CommandLine.arguments.dropFirst()), target: "fuzz-safetensors", check: checkSafetensors)
