import ArgumentParser
import DatapathMeasure
import Testing
import Vhost
import VhostNet
import Virtio
@testable import vhostctl

/// The driver's choices are dimensions of the one engine: `bench backends` sweeps them, and
/// `bench configs` names them as variants.
@Suite struct BenchDriverChoicesTests {
    private func backends(_ arguments: [String]) throws -> BenchBackends {
        try #require(try VhostCtl.parseAsRoot(["bench", "backends"] + arguments) as? BenchBackends)
    }

    @Test func eachChoiceMultipliesTheVhostCombinations() throws {
        let bench = try backends(["--backend", "vhost,tap", "--scenario", "tx", "--frame-size", "64", "--descriptors", "inline,indirect",
                                  "--in-order", "on,off", "--mrg-rxbuf", "on", "--huge-pages", "off,on", "--buffer-size", "128,2048"])
        let all = bench.combinations()
        let vhost = all.filter { $0.backend == .vhost }
        #expect(vhost.count == 2 * 2 * 2 * 2)
        #expect(Set(vhost.map { BenchBackends.describe($0) }).count == vhost.count, "two combinations were the same run")
        #expect(vhost.contains { $0.descriptorLayout == .indirect && $0.inOrder && $0.hugePages && $0.bufferSize == 128 })
        // The userspace path has no ring: it runs once, with the first values.
        #expect(all.filter { $0.backend == .tap }.count == 1)
        // What the engine configures: IN_ORDER and INDIRECT_DESC asked of vhost, the buffer size given.
        let config = BackendComparison.configuration(try #require(vhost.first { $0.descriptorLayout == .indirect && $0.inOrder && $0.bufferSize == 128 }), tapName: "t")
        #expect(config.features.contains(.inOrder) && config.features.contains(.indirectDescriptors))
        #expect(config.bufferSize == 128)
        // Without --buffer-size: 2,048, or the header and the frame where that is more.
        #expect(BackendComparison.configuration(BenchSettings(backend: .vhost, scenario: .tx, frameSize: 64), tapName: "t").bufferSize == 2048)
        #expect(BackendComparison.configuration(BenchSettings(backend: .vhost, scenario: .tx, frameSize: 9000), tapName: "t").bufferSize == 9012)
    }

    @Test func aBufferMustHoldTheFrameUnlessRXMerges() throws {
        // TX writes a frame into one buffer; an RX buffer without MRG_RXBUF must take any frame
        // the tap passes whole (net.c get_rx_bufs), whatever the scenario.
        #expect(throws: (any Error).self) { try backends(["--backend", "vhost", "--scenario", "tx", "--frame-size", "64", "--mrg-rxbuf", "on", "--buffer-size", "64"]) }
        #expect(throws: (any Error).self) { try backends(["--backend", "vhost", "--scenario", "rx", "--frame-size", "64", "--buffer-size", "128"]) }
        #expect(throws: (any Error).self) { try backends(["--backend", "vhost", "--scenario", "tx", "--frame-size", "64", "--buffer-size", "128"]) }
        #expect(throws: (any Error).self) { try backends(["--backend", "vhost", "--scenario", "tx", "--frame-size", "64", "--mrg-rxbuf", "on", "--buffer-size", "32"]) }
        // RX with MRG_RXBUF takes frames across several small buffers.
        let merged = try backends(["--backend", "vhost", "--scenario", "rx", "--frame-size", "1500", "--mrg-rxbuf", "on", "--buffer-size", "512"])
        #expect(merged.combinations().allSatisfy { $0.mergeableReceiveBuffers && $0.bufferSize == 512 })
        #expect(try backends(["--backend", "vhost", "--scenario", "tx", "--frame-size", "64", "--mrg-rxbuf", "on", "--buffer-size", "128"]).combinations().count == 1)
    }

    @Test func configsNamesTheNewVariants() throws {
        let bench = try #require(try VhostCtl.parseAsRoot(["bench", "configs", "--configs", "event-idx", "in-order", "small-buffers", "busyloop"]) as? Bench)
        let variants = Bench.Variant.all
        func settings(_ name: String) throws -> BenchSettings { bench.settings(try #require(variants.first { $0.name == name }), .rx) }
        #expect(try settings("in-order").inOrder)
        // Header (12) and a 64-byte frame, rounded up to 64; MRG_RXBUF so RX takes larger frames.
        #expect(try settings("small-buffers").bufferSize == 128)
        #expect(try settings("small-buffers").mergeableReceiveBuffers)
        #expect(try settings("busyloop").busyloopMicroseconds == DatapathOptions.lowLatencyBusyloop)
        #expect(try !settings("event-idx").inOrder && settings("event-idx").bufferSize == nil)
        #expect(try settings("event-idx").busyloopMicroseconds == BenchSettings.defaultBusyloopMicroseconds)
        #expect(try settings("no-busyloop").busyloopMicroseconds == 0)
    }

    /// The virtio-net header comes from vhost (the tap without IFF_VNET_HDR) unless the frames are
    /// TSO superframes, whose GSO fields only the tap's header carries, or transmit on a kernel
    /// before 6.9; --net-header sweeps it.
    @Test func netHeaderIsVhostsUnlessTheFramesNeedTheTaps() throws {
        func features(_ s: BenchSettings) -> VirtioFeatures { BackendComparison.configuration(s, tapName: "t").features }
        // TX keeps the tap's header on kernels whose batched TX path reads a stale header (before 6.9).
        let small = BenchSettings(backend: .vhost, scenario: .tx, frameSize: 64)
        let transmits: NetHeaderOwner = NetHeaderOwner.vhostHeaderTransmitsCleanly ? .vhost : .tap
        #expect(small.effectiveNetHeader == transmits && features(small).contains(.vhostNetVirtioNetHeader) == (transmits == .vhost))
        let receive = BenchSettings(backend: .vhost, scenario: .rx, frameSize: 64)
        #expect(receive.effectiveNetHeader == .vhost && features(receive).contains(.vhostNetVirtioNetHeader))
        let jumbo = BenchSettings(backend: .vhost, scenario: .rx, frameSize: 9000)
        #expect(features(jumbo).contains(.vhostNetVirtioNetHeader))
        let superframe = BenchSettings(backend: .vhost, scenario: .tx, frameSize: 65549)
        #expect(superframe.effectiveNetHeader == .tap && !features(superframe).contains(.vhostNetVirtioNetHeader))
        let swept = try backends(["--backend", "vhost", "--scenario", "tx", "--frame-size", "64", "--net-header", "vhost,tap"]).combinations()
        #expect(swept.map(\.effectiveNetHeader) == [.vhost, .tap])
        #expect(!features(swept[1]).contains(.vhostNetVirtioNetHeader))
        #expect(Set(swept.map { BenchBackends.describe($0) }).count == 2, "the two runs were described alike")
        #expect {
            _ = try VhostCtl.parseAsRoot(["bench", "backends", "--scenario", "tx", "--frame-size", "65549", "--net-header", "vhost"])
        } throws: { error in
            VhostCtl.fullMessage(for: error).contains("--net-header vhost with --frame-size 65549")
        }
        let configs = try #require(try VhostCtl.parseAsRoot(["bench", "configs", "--configs", "event-idx", "tap-header"]) as? Bench)
        #expect(configs.settings(try #require(Bench.Variant.all.first { $0.name == "tap-header" }), .tx).effectiveNetHeader == .tap)
        #expect(configs.settings(try #require(Bench.Variant.all.first { $0.name == "event-idx" }), .rx).effectiveNetHeader == .vhost)
    }

    /// bench holds RX frames up to 4 ms by default (attach 1 ms); --rx-coalesce-delay sweeps it
    /// where coalescing applies, and refuses what attach refuses.
    @Test func coalescingDelayIsFourMillisecondsUnlessGiven() throws {
        let rx = BenchSettings(backend: .vhost, scenario: .rx, frameSize: 64)
        var adaptive = rx
        adaptive.receiveCoalescing = .adaptive
        #expect(BackendComparison.configuration(adaptive, tapName: "t").receiveCoalescing?.maxDelayMilliseconds == 4)
        let swept = try backends(["--backend", "vhost", "--scenario", "tx,rx", "--frame-size", "64", "--rx-coalesce-delay", "1,16"]).combinations()
        #expect(swept.filter { $0.scenario == .rx }.map(\.receiveCoalescingDelayMilliseconds) == [1, 16])
        #expect(swept.filter { $0.scenario == .tx }.count == 1, "TX does not coalesce: the delay is not a dimension there")
        #expect(BackendComparison.configuration(try #require(swept.last), tapName: "t").receiveCoalescing?.maxDelayMilliseconds == 16)
        #expect(BenchBackends.describe(try #require(swept.last)).contains("delay 16 ms"))
        for bad in ["0", "1001"] {
            #expect {
                _ = try VhostCtl.parseAsRoot(["bench", "backends", "--rx-coalesce-delay", bad])
            } throws: { error in
                VhostCtl.fullMessage(for: error).contains("--rx-coalesce-delay \(bad): use 1 to 1000 milliseconds")
            }
        }
    }

    /// The worker's busy-loop: the kernel's default unless asked (50 µs before 6.4, where it cut
    /// the worker's RX cost; 0 after), --low-latency's, or the list given.
    @Test func busyLoopFollowsTheKernelUnlessGiven() throws {
        #expect(BenchSettings.defaultBusyloopMicroseconds == (KernelInfo.version < (6, 4) ? 50 : 0))
        #expect(try backends([]).busyloops == [BenchSettings.defaultBusyloopMicroseconds])
        #expect(try backends(["--low-latency"]).busyloops == [DatapathOptions.lowLatencyBusyloop])
        #expect(try backends(["--busyloop-timeout", "0,50"]).busyloops == [0, 50])
        #expect(try backends(["--low-latency", "--busyloop-timeout", "0"]).busyloops == [0])
    }

    /// Both bench commands refuse a CPU the machine does not have, by option name.
    @Test func absentCPUsAreRefused() throws {
        for arguments in [["bench", "configs", "--worker-cpu", "4096"], ["bench", "configs", "--driver-cpu", "4096"],
                          ["bench", "backends", "--worker-cpu", "4096"], ["bench", "backends", "--driver-cpu", "4096"]] {
            #expect {
                _ = try VhostCtl.parseAsRoot(arguments)
            } throws: { error in
                VhostCtl.fullMessage(for: error).contains("\(arguments[2]) 4096: this machine has CPUs 0 to")
            }
        }
        #expect(try VhostCtl.parseAsRoot(["bench", "configs", "--worker-cpu", "0", "--driver-cpu", "0"]) is Bench)
    }
}
