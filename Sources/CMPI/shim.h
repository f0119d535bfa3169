// The few parts of Open MPI's C interface that data-parallel training uses, declared here so that
// Millrace builds without Open MPI's headers and never links libmpi: the module map has no
// `link` line. MillraceTraining opens libmpi.so.40 with dlopen only when the process was started
// by mpirun, and looks these functions up with dlsym (Train/DataParallel.swift).
//
// The types follow Open MPI's ABI (mpi.h of Open MPI 4 and 5): handles are pointers to opaque
// structs, and the predefined handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_DOUBLE, MPI_SUM) are the
// addresses of the global objects ompi_mpi_comm_world, ompi_mpi_float, ompi_mpi_double and
// ompi_mpi_op_sum. MPICH and its derivatives use another ABI (integer handles) and are not
// supported.
#ifndef MILLRACE_CMPI_SHIM_H
#define MILLRACE_CMPI_SHIM_H

typedef struct ompi_communicator_t *MPI_Comm;
typedef struct ompi_datatype_t *MPI_Datatype;
typedef struct ompi_op_t *MPI_Op;

/// MPI_THREAD_FUNNELED: threads exist, only the one that initialised MPI calls it.
#define MR_MPI_THREAD_FUNNELED 1
/// MPI_SUCCESS. (MPI_IN_PLACE, ((void *) 1) in Open MPI, is spelt in DataParallel.swift: Swift does
/// not import a macro that casts.)
#define MR_MPI_SUCCESS 0

typedef int (*mr_MPI_Init_thread)(int *argc, char ***argv, int required, int *provided);
typedef int (*mr_MPI_Initialized)(int *flag);
typedef int (*mr_MPI_Comm_rank)(MPI_Comm comm, int *rank);
typedef int (*mr_MPI_Comm_size)(MPI_Comm comm, int *size);
typedef int (*mr_MPI_Allreduce)(const void *sendbuf, void *recvbuf, int count, MPI_Datatype datatype, MPI_Op op,
                                MPI_Comm comm);
typedef int (*mr_MPI_Bcast)(void *buffer, int count, MPI_Datatype datatype, int root, MPI_Comm comm);
typedef int (*mr_MPI_Finalize)(void);

#endif
