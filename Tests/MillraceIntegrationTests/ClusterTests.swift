import Foundation
import MillraceTestSupport
import Testing

/// Replicas behind nginx (scripts/cluster.sh, deploy/nginx.conf.template): the check drives
/// streams and generation through nginx, then SIGKILLs a replica and checks that generation is
/// answered by another, that the dead replica's streams get 410 at once, and that the others'
/// streams go on (scripts/cluster_check.py). The replicas are the `gen` built with the tests,
/// serving a small model so a debug build keeps pace.
@Suite(.serialized) struct ClusterTests {
    static let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: ClusterTests.nginx != nil, "nginx is missing: run scripts/install-deps.sh to run the cluster through it"))
    func streamsAndGenerationThroughNginxSurviveAKilledReplica() throws {
        let state = Fixtures.tempPath("cluster-\(UUID().uuidString)")
        // A port for nginx with three free ones after it (the replicas').
        let port = 20_000 + Int(getpid() % 5_000) * 4
        var env = ProcessInfo.processInfo.environment
        env["GEN"] = Fixtures.builtExecutable("gen")
        env["CLUSTER_STATE"] = state
        env["REPLICA_ARGS"] = "--model " + Fixtures.path("unet-tiny-a") + " --threads 1"
        env["MILLRACE_NO_REEXEC"] = "1"
        // Long enough on the small model to be running when a replica is killed.
        env["CLUSTER_CHECK_SLOW_GENERATE"] = #"{"steps": 200, "count": 16, "guidance": 1}"#
        let (status, out, err) = try runProcess("/bin/bash", [Fixtures.repositoryRoot + "/scripts/cluster.sh", "check", String(port)],
                                                environment: env)
        let text = out + err
        #expect(status == 0, "\(text.suffix(4000))")
        #expect(text.range(of: #"\b[1-9][0-9]* passed, 0 failed"#, options: .regularExpression) != nil, "\(text.suffix(2000))")
        // Nothing is left running.
        let pids = (try? String(contentsOfFile: state + "/replicas", encoding: .utf8)) ?? ""
        for line in pids.split(separator: "\n") {
            if let pid = line.split(separator: " ").last.flatMap({ Int32($0) }) { #expect(kill(pid, 0) != 0, "replica \(pid) still runs") }
        }
    }
}
