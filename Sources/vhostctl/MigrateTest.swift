import ArgumentParser
import Glibc
import HostNetwork
import NetFormats
import Vhost
import VhostNet

struct MigrateTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-test",
        abstract: "Migrate a running queue pair in miniature: dirty-log-driven pre-copy rounds, stop-and-copy, resume on a fresh /dev/vhost-net over the copy; prove no frame is lost.",
        discussion: """
        Creates a tap, sends numbered frames both ways before, during (RX from the host stack in \
        every pre-copy round, TX chains in flight at the start) and after the migration, and \
        checks each arrives exactly once and in order. Prints the pages copied per round, the \
        stop-and-copy, the downtime, and whether the copy equalled the source byte for byte at \
        the switch-over. Exits 0 when all held, 1 otherwise. Needs root.
        """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Tap to create for the run (it must not exist).")
    var tap = "vhmig0"

    @Option(help: "Most pre-copy rounds after the first full copy.")
    var rounds = 8

    @Option(name: .customLong("frames-per-round"), help: "Frames the host sends into the RX ring before each round.")
    var framesPerRound = 16

    func validate() throws {
        do { try Tap.validate(name: tap) } catch { throw ValidationError("--tap: \(error)") }
        guard (1...64).contains(rounds) else { throw ValidationError("--rounds \(rounds): use 1 to 64") }
        guard (0...64).contains(framesPerRound) else { throw ValidationError("--frames-per-round \(framesPerRound): use 0 to 64") }
    }

    func run() throws {
        try runReportingErrors {
            if try !migrate() { throw ExitCode(ExitStatus.failure) }
        }
    }

    /// `migrate-test --json` (docs/json.md): the rounds, the switch-over and the frames, one object.
    struct Report: Encodable {
        struct Frames: Encodable { var sent: Int; var received: Int; var eachOnceInOrder: Bool }
        var kernel: String
        var tap: String
        var queueSize: UInt16
        var pagesPerRound: [Int]
        var stopAndCopyPages: Int
        var downtimeMs: Double
        var identical: Bool
        var tx: Frames
        var rx: Frames
        var passed: Bool
    }

    func migrate() throws -> Bool {
        try requireNetworkAdministration("vhostctl migrate-test")
        let data = DataOutput(json: common.json)
        try requireFreeTapName(tap)
        var config = VhostNetQueuePair.Configuration(tapName: tap)
        config.exclusiveTapCreation = true  // the name was free above; one made meanwhile is refused
        config.queueSize = 1024
        config.features = [.version1, .eventIndex]
        config.observer = common.observer
        config.devicePath = common.device
        let pair = try VhostNetQueuePair(config, logger: common.makeLogger())
        let socket = try PacketSocket(interfaceIndex: try pair.tap.interfaceIndex(), etherType: EthernetFrame.experimentalType)
        socket.setBuffers(bytes: 8 << 20)
        print("migrate-test on \(tap), kernel \(KernelInfo.release()): 1 queue pair of \(config.queueSize)")
        let posted = try pair.post(count: 256) { i, buffer in TestFrame.write(i, into: buffer) }
        var nextRX = 100_000
        let report = try pair.migrate(to: try VhostNetDevice(path: common.device, observer: common.observer), maximumRounds: rounds) {
            for _ in 0..<framesPerRound { try socket.send(TestFrame.bytes(nextRX)); nextRX += 1 }
            usleep(20_000)
        }
        for (round, pages) in report.pagesPerRound.enumerated() { print("round \(round): \(pages) pages copied") }
        print("stop-and-copy: \(report.finalPages) pages; downtime \(fixed(report.downtime * 1000, places: 3)) ms")
        print("copy at the switch-over: \(report.identical ? "identical to the source, byte for byte" : "DIFFERS from the source")")
        // TX chains in flight at the start, and RX frames written during the rounds, on the destination.
        try pair.drainTransmit()
        var tx: [Int] = []
        while tx.count < posted, let frame = socket.receive(milliseconds: 2000) {
            if let s = TestFrame.sequence(of: frame), frame == TestFrame.bytes(s) { tx.append(s) }
        }
        var rx: [Int] = []
        let deadline = ContinuousClock.now + .seconds(5)
        while rx.count < nextRX - 100_000 && ContinuousClock.now < deadline {
            try pair.receive(milliseconds: 200) { f in
                if let s = TestFrame.sequence(of: f.frame), [UInt8](f.frame) == TestFrame.bytes(s) { rx.append(s) }
            }
        }
        let txOK = tx == Array(0..<posted), rxOK = rx == Array(100_000..<nextRX)
        print("TX across the migration: \(tx.count) of \(posted) frames, \(txOK ? "each once, in order" : "LOST, DUPLICATED OR REORDERED")")
        print("RX across the migration: \(rx.count) of \(nextRX - 100_000) frames, \(rxOK ? "each once, in order" : "LOST, DUPLICATED OR REORDERED")")
        try pair.stop()
        let passed = report.identical && txOK && rxOK
        print(passed ? "migration passed" : "migration FAILED")
        if data.json {
            try data.emit(Report(kernel: KernelInfo.release(), tap: tap, queueSize: config.queueSize, pagesPerRound: report.pagesPerRound,
                                 stopAndCopyPages: report.finalPages, downtimeMs: report.downtime * 1000, identical: report.identical,
                                 tx: .init(sent: posted, received: tx.count, eachOnceInOrder: txOK),
                                 rx: .init(sent: nextRX - 100_000, received: rx.count, eachOnceInOrder: rxOK), passed: passed))
        }
        return passed
    }
}
