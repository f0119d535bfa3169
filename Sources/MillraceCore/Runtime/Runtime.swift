import Foundation
import MillraceKernels

/// Process-wide runtime settings: who owns the cores.
///
/// Millrace's worker pool owns them: convolutions split their work into one part per core, each
/// part calling single-threaded OpenBLAS (which stays at one thread, so results never depend on
/// its thread count). An inference forward of at least as many rows as cores instead runs whole
/// rows on each core, every kernel unsplit (`UNet2DModel.splitInferenceOverCores`).
public enum Runtime {
    /// Sets how many parts kernels split into (nil: all cores).
    public static func configureThreads(_ n: Int?) {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        mr_set_threads(Int32(max(1, min(n ?? cores, cores))))
    }

    /// How stride-1 "same" convolutions run: `.auto`, the AVX-512 direct kernel where the CPU
    /// has AVX-512F and im2col + sgemm elsewhere (the default: on AVX2-only CPUs OpenBLAS's sgemm
    /// measured faster than the AVX2 direct kernel); `.avx2`, the AVX2 direct kernel; `.gemm`,
    /// im2col + sgemm everywhere. Process-wide; benchmarks compare them.
    public enum ConvolutionPath: Int32, Sendable { case gemm = 0, auto = 1, avx2 = 2 }

    public static var convolutionPath: ConvolutionPath {
        get { convolutionPathSetting }
        set { convolutionPathSetting = newValue; mr_conv2d_set_direct(newValue.rawValue) }
    }
    nonisolated(unsafe) private static var convolutionPathSetting = ConvolutionPath.auto

    /// Whether the direct convolution is on (`.auto`) or off (`.gemm`).
    public static var directConvolution: Bool {
        get { convolutionPath != .gemm }
        set { convolutionPath = newValue ? .auto : .gemm }
    }

    /// The direct kernel that runs now: "AVX-512", "AVX2" or nil (none: off, or no kernel for
    /// this CPU).
    public static var directConvolutionKernel: String? {
        switch mr_conv2d_direct_kernel() {
        case 512: return "AVX-512"
        case 256: return "AVX2"
        default: return nil
        }
    }

    /// Whether 3x3 stride-1 "same" convolutions with at least 16 input and output channels and 32
    /// output tiles in the call run Winograd F(2x2, 3x3) (conv_winograd.c; on where the CPU has
    /// AVX-512F, the default) rather than the direct kernel. Process-wide; benchmarks compare.
    public static var winograd: Bool {
        get { mr_conv2d_winograd_enabled() != 0 }
        set { mr_conv2d_set_winograd(newValue ? 1 : 0) }
    }

    /// Makes the allocator keep freed memory for reuse (`mr_keep_freed_memory`): what a training
    /// loop wants, since it reallocates the same activations every step; `FlowTrainer` calls it.
    /// Process-wide, and the process's peak memory stays held, so a server does not call it.
    public static func keepFreedMemory() { mr_keep_freed_memory() }

    /// Whether this CPU runs the default direct convolution kernel (AVX-512F).
    public static var directConvolutionAvailable: Bool { mr_cpu_has_avx512f() != 0 }

    /// A line describing the machine and the BLAS setup, for benchmark reports.
    public static func describe() -> String {
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last!.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        return "\(cpu), \(ProcessInfo.processInfo.activeProcessorCount) cores, AVX-512F \(mr_cpu_has_avx512f() != 0 ? "yes" : "no"), OpenBLAS core \(String(cString: mr_blas_corename())), \(mr_get_threads()) kernel threads, convolutions \(winograd && directConvolutionAvailable ? "Winograd F(2x2,3x3) + " : "")\(directConvolutionKernel.map { "direct (\($0)) + im2col/sgemm" } ?? "im2col/sgemm")"
    }

    /// Advice when the CPU has AVX-512 but OpenBLAS runs narrower kernels because the environment
    /// chose them (gen keeps a user's OPENBLAS_CORETYPE); nil otherwise.
    public static func blasCoreHint() -> String? {
        let core = String(cString: mr_blas_corename()).lowercased()
        guard mr_cpu_has_avx512f() != 0, !["skylakex", "cooperlake", "sapphirerapids"].contains(where: core.contains),
              let set = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] else { return nil }
        return "OPENBLAS_CORETYPE=\(set) is set in the environment and kept; this CPU has AVX-512, and OPENBLAS_CORETYPE=SKYLAKEX runs sgemm faster on it (1.46× on the AMD EPYC of docs/BENCHMARKS.md)"
    }
}

extension Runtime {
    /// The OpenBLAS build's kernel family (a link check as much as a report; the HTTP layer
    /// reports its libmicrohttpd as `HTTPServer.libraryVersion`).
    public static var openBLASCore: String { String(cString: mr_blas_corename()) }
}
