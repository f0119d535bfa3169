import Foundation
import MillraceCore

// Long jobs (generation, colorize, bss): admission against the job slots and the memory
// budget, deadlines, and cancellation when the client leaves or the server stops.
extension MillraceService {
    // MARK: Jobs: admission, deadlines, cancellation

    /// Why a job is refused before it starts: 413 when it could never fit the server's limits,
    /// 503 with `Retry-After` when the job slots or the memory budget are full now.
    struct JobRefusal: Error {
        let status: Int
        let message: String
        var response: HTTPResponse { status == 503 ? .busy(message) : .error(status, message) }
    }

    /// Why a job stopped before its end.
    struct JobStopped: Error { let reason: String }

    /// A long job's slot and memory, held until the job (and this object) ends.
    final class Job: @unchecked Sendable {
        private let service: MillraceService
        private let reservation: MemoryBudget.Reservation
        let deadline: Date
        private let clientGone: @Sendable () -> Bool

        fileprivate init(service: MillraceService, reservation: MemoryBudget.Reservation, deadline: Date,
                         clientGone: @escaping @Sendable () -> Bool) {
            self.service = service
            self.reservation = reservation
            self.deadline = deadline
            self.clientGone = clientGone
        }

        /// Why the job must stop now (shutdown, client gone, deadline), or nil to go on.
        func stopReason() -> String? {
            if service.isShuttingDown { return "the server is shutting down" }
            if clientGone() { return "the client disconnected" }
            if Date() > deadline {
                return "the request ran past the server's deadline of \(Int(service.options.requestTimeout)) s (gen serve --request-timeout)"
            }
            return nil
        }

        /// Throws `JobStopped` (and counts it) when the job must stop.
        func check() throws {
            if let why = stopReason() {
                service.metrics.add("requests_cancelled", help: MillraceService.cancelledHelp)
                throw JobStopped(reason: why)
            }
        }

        deinit {
            reservation.release()
            service.stateLock.lock()
            service.runningJobs -= 1
            service.stateLock.unlock()
        }
    }

    /// Admits a job that will hold `bytes` of working memory, or refuses it.
    func admitJob(bytes: Int, clientGone: @escaping @Sendable () -> Bool) throws -> Job {
        guard bytes <= budget.capacity else {
            throw JobRefusal(status: 413, message: "this request needs about \(bytes >> 20) MiB of working memory, over the server's "
                             + "budget of \(budget.capacity >> 20) MiB (gen serve --memory-budget): ask for less")
        }
        stateLock.lock()
        guard runningJobs < options.maxJobs else {
            stateLock.unlock()
            throw JobRefusal(status: 503, message: "the server is busy (\(options.maxJobs) jobs running or waiting); retry shortly")
        }
        guard let reservation = budget.reserve(bytes) else {
            stateLock.unlock()
            throw JobRefusal(status: 503, message: "the server's memory budget is full; retry shortly")
        }
        runningJobs += 1
        stateLock.unlock()
        return Job(service: self, reservation: reservation, deadline: Date().addingTimeInterval(options.requestTimeout),
                   clientGone: clientGone)
    }
}
