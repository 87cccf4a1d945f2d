import DatapathSuite
import Glibc
import NetFormats
import Vhost
import VhostNet
import Virtio

/// The control plane beyond start: migration.
let controlPlaneTests: [KernelTest] = [
    KernelTest(name: "migrate: pre-copy rounds driven by the dirty log, stop-and-copy, resume on a fresh fd over the copy; the copy equals the source and no frame is lost or duplicated") {
        var config = VhostNetQueuePair.Configuration(tapName: "vht-mig")
        config.queueSize = 256
        config.features = [.version1, .eventIndex]
        let pair = try VhostNetQueuePair(config)
        let host = try KernelHostSide(pair)
        try transmitAndCompare(pair, host: host, frames: 200)
        try receiveAndCompare(pair, host: host, frames: 64)
        // TX chains in flight when migration starts, RX frames arriving in every pre-copy round.
        let posted = try pair.post(count: 128) { i, buffer in TestFrame.write(5_000 + i, into: buffer) }
        var nextRX = 10_000
        let report = try pair.migrate(to: try VhostNetDevice()) {
            for _ in 0..<16 { try host.send(TestFrame.bytes(nextRX)); nextRX += 1 }
            usleep(30_000)
        }
        say("  \(report)")
        try expect(report.identical, "the copy differs from the source at the switch-over: the dirty log missed a write")
        try expect(report.pagesPerRound.count >= 2 && report.pagesPerRound.dropFirst().contains { $0 > 0 }, "no round found a dirty page: \(report.pagesPerRound)")
        try expect(report.logSignals > 0, "the log eventfd (VHOST_SET_LOG_FD) was never signalled")
        // On the destination: the TX chains that were in flight, each once and in order…
        try pair.drainTransmit(milliseconds: 5000)
        for s in 5_000..<(5_000 + posted) {
            let frame = host.nextTestFrame(milliseconds: 5000)
            try expect(frame == TestFrame.bytes(s), "TX frame \(s) lost or out of order across the migration (got sequence \(frame.flatMap(TestFrame.sequence(of:)).map(String.init) ?? "none"))")
        }
        try expect(host.nextTestFrame(milliseconds: 100) == nil, "a TX frame arrived twice")
        // …the RX frames written into the source during pre-copy, read from the copy…
        var sequences: [Int] = []
        let deadline = MonotonicClock.seconds() + 10
        while sequences.count < nextRX - 10_000 && MonotonicClock.seconds() < deadline {
            try pair.receive(milliseconds: 200) { f in
                if let s = TestFrame.sequence(of: f.frame) {
                    sequences.append([UInt8](f.frame) == TestFrame.bytes(s) ? s : -s)
                }
            }
        }
        try expect(sequences == Array(10_000..<nextRX), "RX across the migration: \(sequences.count) frames, first differences at \(zip(sequences, 10_000..<nextRX).first { $0 != $1 }.map { "\($0) vs \($1)" } ?? "the end")")
        // …and traffic goes on.
        try transmitAndCompare(pair, host: host, frames: 300)
        try receiveAndCompare(pair, host: host, frames: 128)
    },
]
