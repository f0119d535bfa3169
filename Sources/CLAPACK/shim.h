// LAPACK routines that Millrace calls, from the OpenBLAS it links against (Debian's OpenBLAS
// builds carry LAPACK; Debian ships no LAPACK header with it, so the Fortran prototypes are
// declared here). Fortran calling convention (gfortran): every argument by pointer, then one
// hidden length per CHARACTER argument, in order.
#ifndef MILLRACE_CLAPACK_SHIM_H
#define MILLRACE_CLAPACK_SHIM_H

#include <stddef.h>

/// Eigenvalues and (with jobz "V") eigenvectors of a real symmetric matrix, divide and conquer.
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork, int *info,
             size_t jobz_len, size_t uplo_len);

#endif
