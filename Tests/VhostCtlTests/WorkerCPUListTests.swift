import ArgumentParser
import Testing
@testable import vhostctl
import VhostNet

/// `--worker-cpu LIST`: the kernel's list format, one CPU for all queue pairs or one per pair,
/// each online; and `attach`'s cross-checks of --rss and --sndbuf.
@Suite struct WorkerCPUListTests {
    @Test(arguments: [("0", [0]), ("0,1", [0, 1]), ("0-1", [0, 1]), ("2,0-1", [2, 0, 1]), ("3-3", [3])])
    func parses(text: String, cpus: [Int]) {
        #expect(WorkerCPUList(argument: text)?.cpus == cpus)
    }

    @Test(arguments: ["", "a", "1-0", "-1", "0,,1", "0-", "1-2-3", "99999", "0-99999999999999999999"])
    func refusesWhatIsNotAList(text: String) {
        #expect(WorkerCPUList(argument: text) == nil)
    }

    @Test func countMustBeOneOrOnePerQueuePair() {
        let online = [0, 1, 2, 3]
        #expect(WorkerCPUList(cpus: [1]).problem(queuePairs: 4, online: online) == nil)
        #expect(WorkerCPUList(cpus: [0, 1]).problem(queuePairs: 2, online: online) == nil)
        #expect(WorkerCPUList(cpus: [0, 1, 2]).problem(queuePairs: 2, online: online)?.contains("3 CPUs for 2 queue pair(s)") == true)
        #expect(WorkerCPUList(cpus: [0, 5]).problem(queuePairs: 2, online: online)?.contains("CPU 5 is not online") == true)
        #expect(WorkerCPUList(cpus: [0, 1]).cpu(forQueuePair: 1) == 1)
        #expect(WorkerCPUList(cpus: [3]).cpu(forQueuePair: 1) == 3)
    }

    @Test(arguments: [
        (["--tap", "t0", "--rss"], "add --queue-pairs 2 or more"),
        (["--tap", "t0", "--rss", "--queue-pairs", "1"], "add --queue-pairs 2 or more"),
        (["--tap", "t0", "--sndbuf", "0"], "--sndbuf 0: use 1 to 2147483647"),
        (["--tap", "t0", "--sndbuf=-5"], "--sndbuf -5: use 1 to 2147483647"),
        (["--tap", "t0", "--queue-pairs", "2", "--worker-cpu", "0,0,0"], "3 CPUs for 2 queue pair(s)"),
    ])
    func attachRefuses(arguments: [String], message: String) {
        do {
            _ = try Attach.parse(arguments)
            Issue.record("\(arguments) was accepted")
        } catch {
            #expect(Attach.message(for: error).contains(message), "\(Attach.message(for: error))")
        }
    }

    @Test func attachAcceptsTheTuning() throws {
        let attach = try Attach.parse(["--tap", "t0", "--queue-pairs", "4", "--rss", "--sndbuf", "1048576", "--iommu", "--worker-cpu", "0"])
        #expect(attach.tuning.rss && attach.tuning.iommu && attach.tuning.sndbuf == 1_048_576 && attach.workerCPU?.cpus == [0])
    }
}

/// `--rx-queue-size` and `--tx-queue-size` size the rings apart; `--queue-size` stays the default of both.
@Suite struct RingSizeOptionTests {
    @Test func sizesApart() throws {
        var config = VhostNetQueuePair.Configuration(tapName: "t0")
        let attach = try Attach.parse(["--tap", "t0", "--queue-size", "512", "--rx-queue-size", "1024", "--tx-queue-size", "256"])
        attach.datapath.apply(to: &config)
        attach.tuning.apply(to: &config, trace: nil)
        #expect(config.queueSize == 1024 && config.transmitQueueSize == 256)
        let plan = config.memoryPlan
        #expect(plan.queueSize == 1024 && plan.transmitQueueSize == 256)
    }

    @Test func onlyRXKeepsTXAtQueueSize() throws {
        var config = VhostNetQueuePair.Configuration(tapName: "t0")
        let attach = try Attach.parse(["--tap", "t0", "--queue-size", "512", "--rx-queue-size", "64"])
        attach.datapath.apply(to: &config)
        attach.tuning.apply(to: &config, trace: nil)
        #expect(config.queueSize == 64 && config.transmitQueueSize == 512)
    }

    @Test(arguments: [["--rx-queue-size", "100"], ["--tx-queue-size", "65536"], ["--tx-queue-size", "1"], ["--rx-queue-size", "0"]])
    func refusesBadSizes(arguments: [String]) {
        #expect(throws: (any Error).self) { try Attach.parse(["--tap", "t0"] + arguments) }
    }
}
