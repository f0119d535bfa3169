import MillraceKernels
import Testing
import MillraceCore
import MillraceTestSupport

@Suite struct RuntimeTests {
    /// OpenBLAS links and names its kernel family.
    @Test func openBLASLinksAndReportsItsKernels() {
        #expect(!Runtime.openBLASCore.isEmpty)
    }

    @Test func kernelThreadsCanBeSetAndBLASStaysSingleThreaded() {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            Runtime.configureThreads(1)
            #expect(mr_get_threads() == 1)
            #expect(mr_get_blas_threads() == 1, "OpenBLAS stays single-threaded")
            mr_set_threads(before)
            #expect(mr_get_threads() == before)
        }
    }

    /// A resumed job's bar rates only the work done since it started, and claims no rate before
    /// it has one (a bar made right after a step once showed a million images a second).
    @Test func progressRatesCountFromTheBarsStart() {
        let bar = ProgressBar("train", total: 2000, unit: "img", initial: 1000)
        #expect(bar.status(done: 1000, elapsed: 0.001) == "1000/2000 · 50% · ? img/s · ETA ?")
        #expect(bar.status(done: 1001, elapsed: 0.5).hasSuffix("? img/s · ETA ?"))
        // 10 steps of 32 images in 20 s: 16 img/s, 990 steps left at 0.5 step/s.
        #expect(bar.status(done: 1010, elapsed: 20, extra: "loss 0.0800", rateScale: 32)
                == "1010/2000 · 50% · loss 0.0800 · 16.0 img/s · ETA 33:00")
    }

    @Test func sgemmMultiplies() {
        // [2x3] · [3x2]
        let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [7, 8, 9, 10, 11, 12]
        var c = [Float](repeating: 0, count: 4)
        mr_sgemm(2, 2, 3, a, b, &c)
        #expect(c == [58, 64, 139, 154])
    }
}

extension RuntimeTests {
    /// Linear layers large enough to split over the pool match the reference.
    @Test func splitLinearMatchesReference() {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            mr_set_threads(2)
            defer { mr_set_threads(before) }
            var rng = TestRNG(seed: 31)
            let (n, i, o) = (301, 41, 53)
            let x = rng.floats(n * i), w = rng.floats(o * i), b = rng.floats(o), dy = rng.floats(n * o)
            var y = [Float](repeating: .nan, count: n * o), yRef = y
            mr_linear_forward(Int32(n), Int32(i), Int32(o), x, w, b, &y)
            mr_ref_linear_forward(Int32(n), Int32(i), Int32(o), x, w, b, &yRef)
            #expect(relativeError(y, yRef) < 1e-5)
            var dx = [Float](repeating: .nan, count: n * i), dxRef = dx
            var dw = [Float](repeating: 1, count: o * i), dwRef = dw, db = [Float](repeating: 0, count: o), dbRef = db
            mr_linear_backward(Int32(n), Int32(i), Int32(o), x, w, dy, &dx, &dw, &db)
            mr_ref_linear_backward(Int32(n), Int32(i), Int32(o), x, w, dy, &dxRef, &dwRef, &dbRef)
            #expect(relativeError(dx, dxRef) < 1e-5)
            #expect(relativeError(dw, dwRef) < 1e-5)
            #expect(relativeError(db, dbRef) < 1e-5)
        }
    }
}
