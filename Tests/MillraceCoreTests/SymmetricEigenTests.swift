import Testing
import MillraceCore
import MillraceTestSupport

/// LAPACK's dsyevd through the CLAPACK module: the one eigensolver (PCA, Fréchet distance).
@Suite struct SymmetricEigenTests {
    @Test func aKnownMatrix() throws {
        let (w, v) = try SymmetricEigen.decompose([2, 1, 0, 1, 2, 0, 0, 0, 5], dimension: 3)
        #expect(zip(w, [1.0, 3, 5]).allSatisfy { abs($0 - $1) < 1e-12 })
        let r = 0.5.squareRoot()
        // Eigenvector 0 (for 1) is ±(1, −1, 0)/√2; eigenvector 2 (for 5) is ±(0, 0, 1).
        #expect(abs(abs(v[0]) - r) < 1e-12 && abs(v[0] + v[1]) < 1e-12 && v[2] == 0)
        #expect(abs(abs(v[8]) - 1) < 1e-12)
    }

    /// A v_k = λ_k v_k for a random symmetric matrix, and the vectors are orthonormal.
    @Test func aRandomSymmetricMatrix() throws {
        let n = 7
        var rng = TestRNG(seed: 1)
        var a = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in i..<n { let v = Double(Float.random(in: -1...1, using: &rng)); a[i * n + j] = v; a[j * n + i] = v } }
        let (values, vectors) = try SymmetricEigen.decompose(a, dimension: n)
        #expect(zip(values, values.dropFirst()).allSatisfy { $0 <= $1 }, "ascending")
        for k in 0..<n {
            for i in 0..<n {
                var av = 0.0
                for j in 0..<n { av += a[i * n + j] * vectors[k * n + j] }
                #expect(abs(av - values[k] * vectors[k * n + i]) < 1e-9)
            }
            for m in 0..<n {
                var dot = 0.0
                for i in 0..<n { dot += vectors[k * n + i] * vectors[m * n + i] }
                #expect(abs(dot - (k == m ? 1 : 0)) < 1e-9)
            }
        }
    }

    @Test func badInputIsAnErrorNotATrap() {
        #expect(throws: ModelError.self) { try SymmetricEigen.decompose([1, 2, 3], dimension: 2) }
        #expect(throws: ModelError.self) { try SymmetricEigen.decompose([.nan], dimension: 1) }
        #expect(throws: ModelError.self) { try SymmetricEigen.decompose([], dimension: 0) }
    }
}
