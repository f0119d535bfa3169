import MillraceKernels

// OpenBLAS chose its kernels when it loaded; on AVX-512 machines it may need to be told
// (see mr_prefer_avx512_blas). This re-executes gen once if so, before anything else runs.
mr_prefer_avx512_blas(CommandLine.argc, CommandLine.unsafeArgv)
Gen.main()
