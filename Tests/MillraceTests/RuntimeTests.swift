import Millrace
import MillraceKernels
import Testing

@Suite struct RuntimeTests {
    /// The system libraries link and answer (libmicrohttpd is linked now; the server comes later).
    @Test func systemLibrariesLinkAndReportVersions() {
        let v = Runtime.libraryVersions()
        #expect(v["libmicrohttpd"]?.first?.isNumber == true, "\(v)")
        #expect(v["harfbuzz"]?.first?.isNumber == true, "\(v)")
        #expect(!(v["openblas"] ?? "").isEmpty)
    }

    @Test func blasThreadsCanBeSet() {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            Runtime.configureThreads(1)
            #expect(mr_get_threads() == 1)
            mr_set_threads(before)
            #expect(mr_get_threads() == before)
        }
    }

    @Test func sgemmMultiplies() {
        // [2x3] · [3x2]
        let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [7, 8, 9, 10, 11, 12]
        var c = [Float](repeating: 0, count: 4)
        mr_sgemm(2, 2, 3, a, b, &c)
        #expect(c == [58, 64, 139, 154])
    }
}
