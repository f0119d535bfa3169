import Foundation
import CMPI

/// The processes of one data-parallel training run, and the two operations training needs
/// between them: a sum of every process's values, and a copy of one process's values.
///
/// Every process draws the same whole batch (same seed, same generator state), computes the loss
/// and gradients of its own rows, and the gradients are summed across processes before the
/// optimizer step, which every process then applies: the weights stay identical everywhere.
/// Rank 0 writes the run's files.
///
/// Calls must come from the thread that created the group, in the same order on every process.
public protocol Collective: AnyObject {
    /// This process's index, 0 ..< size.
    var rank: Int { get }
    /// The number of processes.
    var size: Int { get }
    /// Replaces each value by its sum over all processes (in place).
    func sum(_ values: UnsafeMutableBufferPointer<Float>)
    func sum(_ values: UnsafeMutableBufferPointer<Double>)
    /// Replaces the values by those of process `root`.
    func broadcast(_ values: UnsafeMutableBufferPointer<Double>, from root: Int)
}

extension Collective {
    /// Rows of a `batch`-row batch that this process computes: rank r of K gets
    /// r·batch/K ..< (r+1)·batch/K.
    public func rows(of batch: Int) -> Range<Int> { (rank * batch / size)..<((rank + 1) * batch / size) }

    /// Whether `flag` is true on any process (so that every process takes the same branch).
    public func any(_ flag: Bool) -> Bool {
        if size == 1 { return flag }
        var v: [Double] = [flag ? 1 : 0]
        v.withUnsafeMutableBufferPointer { sum($0) }
        return v[0] > 0
    }
}

/// One process: rank 0 of 1; sums and broadcasts leave the values as they are.
public final class SingleProcess: Collective {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func sum(_ values: UnsafeMutableBufferPointer<Float>) {}
    public func sum(_ values: UnsafeMutableBufferPointer<Double>) {}
    public func broadcast(_ values: UnsafeMutableBufferPointer<Double>, from root: Int) {}
}

/// Choosing the collective from how the process was started.
public enum DataParallel {
    /// Whether the environment shows that mpirun (Open MPI's launcher, which sets
    /// OMPI_COMM_WORLD_SIZE and OMPI_COMM_WORLD_RANK) or another PMIx launcher (PMIX_RANK)
    /// started this process.
    public static func launchedByMPI(environment env: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        env["OMPI_COMM_WORLD_SIZE"] != nil || env["OMPI_COMM_WORLD_RANK"] != nil || env["PMIX_RANK"] != nil
    }

    /// How many processes of the run share this machine (mpirun's OMPI_COMM_WORLD_LOCAL_SIZE;
    /// 1 when not started by mpirun), so that they can divide its cores.
    public static func processesOnThisMachine(environment env: [String: String] = ProcessInfo.processInfo.environment) -> Int {
        guard launchedByMPI(environment: env), let n = env["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap({ Int($0) }), n >= 1 else { return 1 }
        return n
    }

    /// The processes of this run: a `SingleProcess` unless the environment shows that mpirun
    /// started it; then Open MPI's library is loaded (now, not at link time) and initialised, and
    /// the group is MPI_COMM_WORLD. Throws `TrainError.parallel` when the library is missing.
    public static func join(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> any Collective {
        guard launchedByMPI(environment: environment) else { return SingleProcess() }
        return try OpenMPI.initialise()
    }
}

/// MPI_COMM_WORLD of Open MPI, whose library (libmpi.so.40) is opened with dlopen: gen links no
/// MPI library and starts on machines without one; only a process started by mpirun needs it.
/// Open MPI must be the library mpirun belongs to (the ABI is Open MPI's: CMPI/shim.h).
public final class OpenMPI: Collective {
    /// Where Debian's openmpi-bin (through libopenmpi3) puts the library, tried in this order.
    public static let libraryNames = ["libmpi.so.40", "/usr/lib/x86_64-linux-gnu/libmpi.so.40",
                                      "/usr/lib/aarch64-linux-gnu/libmpi.so.40", "libmpi.so"]

    public let rank: Int
    public let size: Int
    private let allreduce: mr_MPI_Allreduce
    private let bcast: mr_MPI_Bcast
    private let finalizeCall: mr_MPI_Finalize
    private let world: MPI_Comm, float: MPI_Datatype, double: MPI_Datatype, sumOp: MPI_Op
    private var finalized = false
    /// MPI_IN_PLACE in Open MPI's mpi.h: the send buffer is the receive buffer.
    private static var inPlace: UnsafeRawPointer? { UnsafeRawPointer(bitPattern: 1) }

    /// Opens the library, initialises MPI (threads may exist; only this one calls MPI) and reads
    /// this process's rank and the world's size.
    static func initialise(libraryNames: [String] = OpenMPI.libraryNames) throws -> OpenMPI {
        var handle: UnsafeMutableRawPointer?
        var failures: [String] = []
        for name in libraryNames {
            // RTLD_GLOBAL: Open MPI's own plugins, which it opens in turn, resolve libmpi's symbols.
            handle = dlopen(name, RTLD_NOW | RTLD_GLOBAL)
            if handle != nil { break }
            failures.append(dlerror().map { String(cString: $0) } ?? name)
        }
        guard let handle else {
            throw TrainError.parallel("""
                started by mpirun, but Open MPI's library could not be loaded (\(failures.joined(separator: "; "))); \
                install Debian's openmpi-bin and libopenmpi-dev (scripts/install-deps.sh) on every machine of the run
                """)
        }
        func address(_ name: String) throws -> UnsafeMutableRawPointer {
            guard let p = dlsym(handle, name) else {
                throw TrainError.parallel("the MPI library loaded has no \(name), so it is not Open MPI; install Debian's openmpi-bin and libopenmpi-dev")
            }
            return p
        }
        let initThread = unsafeBitCast(try address("MPI_Init_thread"), to: mr_MPI_Init_thread.self)
        let initialized = unsafeBitCast(try address("MPI_Initialized"), to: mr_MPI_Initialized.self)
        let commRank = unsafeBitCast(try address("MPI_Comm_rank"), to: mr_MPI_Comm_rank.self)
        let commSize = unsafeBitCast(try address("MPI_Comm_size"), to: mr_MPI_Comm_size.self)
        let allreduce = unsafeBitCast(try address("MPI_Allreduce"), to: mr_MPI_Allreduce.self)
        let bcast = unsafeBitCast(try address("MPI_Bcast"), to: mr_MPI_Bcast.self)
        let finalize = unsafeBitCast(try address("MPI_Finalize"), to: mr_MPI_Finalize.self)
        // The predefined handles are the addresses of these global objects.
        let world = OpaquePointer(try address("ompi_mpi_comm_world"))
        let float = OpaquePointer(try address("ompi_mpi_float"))
        let double = OpaquePointer(try address("ompi_mpi_double"))
        let sum = OpaquePointer(try address("ompi_mpi_op_sum"))
        var already: Int32 = 0
        _ = initialized(&already)
        if already == 0 {
            // Errors are fatal under MPI's default handler: a failed start ends the process with
            // MPI's own message.
            var provided: Int32 = 0
            _ = initThread(nil, nil, MR_MPI_THREAD_FUNNELED, &provided)
        }
        var rank: Int32 = 0, size: Int32 = 0
        guard commRank(world, &rank) == MR_MPI_SUCCESS, commSize(world, &size) == MR_MPI_SUCCESS, size >= 1 else {
            throw TrainError.parallel("MPI started, but this process's rank in MPI_COMM_WORLD could not be read")
        }
        return OpenMPI(rank: Int(rank), size: Int(size), allreduce: allreduce, bcast: bcast, finalize: finalize,
                       world: world, float: float, double: double, sum: sum)
    }

    private init(rank: Int, size: Int, allreduce: @escaping mr_MPI_Allreduce, bcast: @escaping mr_MPI_Bcast,
                 finalize: @escaping mr_MPI_Finalize, world: MPI_Comm, float: MPI_Datatype, double: MPI_Datatype, sum: MPI_Op) {
        self.rank = rank
        self.size = size
        self.allreduce = allreduce
        self.bcast = bcast
        self.finalizeCall = finalize
        self.world = world
        self.float = float
        self.double = double
        self.sumOp = sum
    }

    public func sum(_ values: UnsafeMutableBufferPointer<Float>) {
        reduce(UnsafeMutableRawPointer(values.baseAddress), count: values.count, stride: MemoryLayout<Float>.stride, type: float)
    }

    public func sum(_ values: UnsafeMutableBufferPointer<Double>) {
        reduce(UnsafeMutableRawPointer(values.baseAddress), count: values.count, stride: MemoryLayout<Double>.stride, type: double)
    }

    /// In-place sums, in chunks that fit MPI's `int` count.
    private func reduce(_ base: UnsafeMutableRawPointer?, count: Int, stride: Int, type: MPI_Datatype) {
        guard let base, count > 0 else { return }
        var start = 0
        while start < count {
            let n = min(count - start, Int(Int32.max))
            let rc = allreduce(Self.inPlace, base + start * stride, Int32(n), type, sumOp, world)
            precondition(rc == MR_MPI_SUCCESS, "MPI_Allreduce failed (\(rc))")
            start += n
        }
    }

    public func broadcast(_ values: UnsafeMutableBufferPointer<Double>, from root: Int) {
        guard let base = values.baseAddress, values.count > 0 else { return }
        precondition(values.count <= Int(Int32.max))
        let rc = bcast(base, Int32(values.count), double, Int32(root), world)
        precondition(rc == MR_MPI_SUCCESS, "MPI_Bcast failed (\(rc))")
    }

    /// Ends MPI on this process; every process calls it once, when the run is over. No operation
    /// is allowed after it.
    public func finalize() {
        guard !finalized else { return }
        finalized = true
        _ = finalizeCall()
    }
}
