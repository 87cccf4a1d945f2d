import Testing
@testable import vhostctl

/// --low-latency keeps its two spinners apart: the driver on one CPU, every worker on another.
@Suite struct LowLatencyTests {
    @Test func driverFirstWorkersOnTheOthers() {
        #expect(LowLatencyPlacement.choose(allowed: [0, 1], workers: 1) == LowLatencyPlacement(driverCPU: 0, workerCPUs: [1]))
        #expect(LowLatencyPlacement.choose(allowed: [2, 5, 7], workers: 4) == LowLatencyPlacement(driverCPU: 2, workerCPUs: [5, 7, 5, 7]))
        #expect(LowLatencyPlacement.choose(allowed: [3, 4], workers: 0) == LowLatencyPlacement(driverCPU: 3, workerCPUs: []))
    }

    @Test func oneCPUCannotKeepThemApart() {
        #expect(LowLatencyPlacement.choose(allowed: [0], workers: 1) == nil)
        #expect(LowLatencyPlacement.choose(allowed: [], workers: 1) == nil)
    }

    @Test func neverTheDriversCPU() {
        for count in 2...8 {
            let allowed = Array(0..<count)
            let placement = LowLatencyPlacement.choose(allowed: allowed, workers: 9)!
            #expect(!placement.workerCPUs.contains(placement.driverCPU))
            #expect(placement.workerCPUs.allSatisfy(allowed.contains))
        }
    }

    @Test func thisThreadHasCPUs() {
        #expect(!LowLatencyPlacement.allowedCPUs().isEmpty)
    }
}
