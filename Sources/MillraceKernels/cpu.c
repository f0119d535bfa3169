/* CPU feature detection, OpenBLAS thread control and core-type selection. */
#define _GNU_SOURCE
#include "millrace_kernels.h"

#include <cblas.h>
#include <cpuid.h>
#include <ctype.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* These are OpenBLAS extensions; Debian's cblas.h declares them, but not every BLAS does. */
extern char *openblas_get_corename(void);
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);

static unsigned long long read_xcr0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static int os_saves_ymm(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & (1u << 27))) return 0; /* OSXSAVE */
    return (read_xcr0() & 0x6) == 0x6;  /* XMM and YMM state */
}

int mr_cpu_has_avx2_fma(void) {
    unsigned int a, b, c, d;
    if (!os_saves_ymm()) return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int avx2 = (b >> 5) & 1;
    return fma && avx2;
}

int mr_cpu_has_avx512f(void) {
    unsigned int a, b, c, d;
    if (!os_saves_ymm()) return 0;
    if ((read_xcr0() & 0xe6) != 0xe6) return 0; /* opmask, ZMM_Hi256, Hi16_ZMM */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 16) & 1;
}

const char *mr_blas_corename(void) {
    const char *name = openblas_get_corename();
    return name ? name : "unknown";
}

/* Millrace's pool owns the cores; OpenBLAS always runs single-threaded, so that a GEMM's result
   never depends on how many threads OpenBLAS happened to use (it does: 1 and 2 threads give
   different roundings), and nothing toggles a process-wide setting while others compute. */
static int kernel_threads = 1;
static _Thread_local int thread_serial = 0;

__attribute__((constructor)) static void millrace_threads_init(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    kernel_threads = n < 1 ? 1 : (n > 16 ? 16 : (int)n);
    openblas_set_num_threads(1);
}

int mr_get_threads(void) { return kernel_threads; }

void mr_set_threads(int n) {
    kernel_threads = n < 1 ? 1 : (n > 16 ? 16 : n);
    openblas_set_num_threads(1);
}

void mr_set_thread_serial(int serial) { thread_serial = serial; }

int mr_thread_serial(void) { return thread_serial; }

int mr_parallel_parts(void) { return thread_serial ? 1 : kernel_threads; }

void mr_keep_freed_memory(void) {
#if defined(__GLIBC__)
    /* A training step frees and reallocates the same activations, tens of MB, every step. By
       default glibc hands blocks that large back to the kernel on free (mmap, or a heap trimmed
       past 128 KB of free top), so every step paid page faults and zeroing again: 380 K faults
       in 16 steps of `gen bench train`, a twentieth of its time. 32 MB is the highest threshold
       glibc accepts; a trim threshold of 1 GB keeps the freed heap for the next step. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

void mr_set_blas_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }
int mr_get_blas_threads(void) { return openblas_get_num_threads(); }

static int core_is_avx512(const char *name) {
    char lower[64];
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof lower; i++) lower[i] = (char)tolower((unsigned char)name[i]);
    lower[i] = 0;
    return strstr(lower, "skylakex") || strstr(lower, "cooperlake") ||
           strstr(lower, "sapphirerapids");
}

void mr_prefer_avx512_blas(int argc, char **argv) {
    (void)argc;
    const char *off = getenv("MILLRACE_NO_REEXEC");
    if (off && *off && strcmp(off, "0") != 0) return;
    if (getenv("OPENBLAS_CORETYPE")) return;   /* the user chose; respect it */
    if (getenv("MILLRACE_REEXECED")) return;   /* never loop */
    if (!mr_cpu_has_avx512f()) return;
    if (core_is_avx512(mr_blas_corename())) return;
    setenv("OPENBLAS_CORETYPE", "SKYLAKEX", 1);
    setenv("MILLRACE_REEXECED", "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the kernels OpenBLAS chose. */
    unsetenv("OPENBLAS_CORETYPE");
}

void mr_sgemm(int m, int n, int k, const float *a, const float *b, float *c) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
}
