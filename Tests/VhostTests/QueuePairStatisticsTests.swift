import Testing
@testable import VhostNet

/// The per-queue statistics' arithmetic: rates from two snapshots, never a trap, never a rate
/// from a counter that went backwards.
@Suite struct QueuePairStatisticsTests {
    private func snapshot(rx: UInt64, rxBytes: UInt64, tx: UInt64 = 0, txBytes: UInt64 = 0) -> QueuePairStatistics {
        var r = QueueCounters(), t = QueueCounters()
        r.frames = rx; r.bytes = rxBytes; t.frames = tx; t.bytes = txBytes
        return QueuePairStatistics(queuePair: 0, receive: r, transmit: t, running: true)
    }

    @Test func ratesOverTheInterval() {
        let rates = QueuePairRates(from: snapshot(rx: 100, rxBytes: 6400, tx: 10, txBytes: 640), to: snapshot(rx: 300, rxBytes: 19200, tx: 30, txBytes: 1920), seconds: 2)
        #expect(rates.receiveFramesPerSecond == 100 && rates.receiveBytesPerSecond == 6400)
        #expect(rates.transmitFramesPerSecond == 10 && rates.transmitBytesPerSecond == 640)
    }

    @Test func aCounterThatWentBackwardsIsNoProgress() {
        let rates = QueuePairRates(from: snapshot(rx: .max, rxBytes: 500), to: snapshot(rx: 3, rxBytes: 100), seconds: 1)
        #expect(rates.receiveFramesPerSecond == 0 && rates.receiveBytesPerSecond == 0)
        #expect(QueuePairRates.progress(from: 10, to: 3) == 0)
        #expect(QueuePairRates.progress(from: 0, to: .max) == .max)
    }

    @Test(arguments: [0.0, -1.0, .nan, .infinity, -.infinity])
    func aBadIntervalGivesZero(seconds: Double) {
        let rates = QueuePairRates(from: snapshot(rx: 0, rxBytes: 0), to: snapshot(rx: 10, rxBytes: 10), seconds: seconds)
        #expect(rates == QueuePairRates())
    }

    @Test func theFirstSnapshotHasNoRate() {
        #expect(QueuePairRates(from: nil, to: snapshot(rx: 10, rxBytes: 10), seconds: 1) == QueuePairRates())
    }

    @Test func sumsSaturate() {
        var big = QueueCounters()
        big.frames = .max - 1; big.drops = .max
        var one = QueueCounters()
        one.frames = 5; one.drops = 1; one.bytes = 7
        let sum = big.saturatingSum(one)
        #expect(sum.frames == .max && sum.drops == .max && sum.bytes == 7)
    }

    @Test func tapStatisticsOfAMissingInterfaceAreNil() {
        #expect(TapStatistics.read(interface: "no-such-iface0") == nil)
        // A name is one path component: never a way out of /sys/class/net.
        #expect(TapStatistics.read(interface: "../../../proc/self") == nil)
        #expect(TapStatistics.read(interface: "..") == nil)
    }
}
