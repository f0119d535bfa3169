import CLAPACK

/// Eigen-decomposition of real symmetric matrices: LAPACK's `dsyevd` (divide and conquer, in
/// double) from the OpenBLAS the kernels link against. The one eigensolver in Millrace: PCA for
/// pruning sets and the matrix square root of the Fréchet distance both use it.
public enum SymmetricEigen {
    /// The eigenvalues of the symmetric n × n matrix `a` (row- or column-major: it is symmetric),
    /// ascending, and the orthonormal eigenvectors: eigenvector j is `vectors[j*n ..< (j+1)*n]`
    /// (a row of the returned row-major matrix), for eigenvalue `values[j]`.
    public static func decompose(_ a: [Double], dimension n: Int) throws -> (values: [Double], vectors: [Double]) {
        var vectors = a
        let values = try decomposeInPlace(&vectors, dimension: n)
        return (values, vectors)
    }

    /// As `decompose`, overwriting `a` with the eigenvectors (eigenvector j in row j) to spare a
    /// copy of a large matrix. Returns the eigenvalues, ascending.
    public static func decomposeInPlace(_ a: inout [Double], dimension n: Int) throws -> [Double] {
        guard n >= 1, a.count == n * n, n <= Int(Int32.max) else {
            throw ModelError.invalidArgument("an eigen-decomposition needs an n × n matrix with n ≥ 1; got \(a.count) values for n = \(n)")
        }
        guard a.allSatisfy(\.isFinite) else {
            throw ModelError.invalidArgument("the matrix to decompose holds a value that is not finite (NaN or infinity)")
        }
        var nn = Int32(n), lda = Int32(n), info: Int32 = 0
        var w = [Double](repeating: 0, count: n)
        var workSize = 0.0, iworkSize: Int32 = 0
        var query: Int32 = -1, iquery: Int32 = -1
        dsyevd_("V", "U", &nn, &a, &lda, &w, &workSize, &query, &iworkSize, &iquery, &info, 1, 1)
        guard info == 0 else { throw ModelError.numerical("dsyevd's workspace query failed (info \(info))") }
        var lwork = Int32(max(workSize.rounded(.up), 1)), liwork = max(iworkSize, 1)
        var work = [Double](repeating: 0, count: Int(lwork))
        var iwork = [Int32](repeating: 0, count: Int(liwork))
        dsyevd_("V", "U", &nn, &a, &lda, &w, &work, &lwork, &iwork, &liwork, &info, 1, 1)
        guard info == 0 else {
            throw ModelError.numerical("dsyevd failed (info \(info)): the eigen-decomposition did not converge")
        }
        return w
    }
}
