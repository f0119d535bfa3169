/* Private to MillraceKernels: the per-thread convolution workspace (conv.c). */
#ifndef MILLRACE_CONV_WORKSPACE_H
#define MILLRACE_CONV_WORKSPACE_H

#include <stddef.h>

/* A buffer of at least n floats owned by the calling thread, 64-byte aligned, reused by the
   thread's next call (NULL if out of memory). */
float *mr_conv_workspace(size_t n);

#endif
