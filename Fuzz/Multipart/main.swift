// `swift build` makes the multipart fuzz target a replay tool:
//   .build/debug/fuzz-multipart Fuzz/Multipart/seeds [more files or folders]
import FuzzReplay

replayInputs(Array(CommandLine.arguments.dropFirst()), target: "fuzz-multipart", check: checkMultipart)
