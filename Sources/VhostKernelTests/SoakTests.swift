import DatapathSuite
import Glibc
import NetFormats
import Vhost
import VhostNet
import Virtio

/// Frames per direction and per configuration: VHOST_SOAK_FRAMES, or a CI size (10 million is
/// the full soak, by hand). The rings start at `soakRingBase`, so even the CI size carries the
/// 16-bit avail and used indices across 65535 → 0 early on, both ways.
let soakFrames: Int = {
    if let text = getenv("VHOST_SOAK_FRAMES").map({ String(cString: $0) }), let n = Int(text), n > 0 { return n }
    return 50_000
}()
/// Where the soak's rings start (SET_VRING_BASE): 2,048 frames before the indices wrap.
let soakRingBase = UInt16(65_536 - 2_048)

/// TX and RX interleaved on one pair (each layout on its own tap, so that a full soak by hand can
/// run layouts side by side in separate processes): every frame carries its sequence number and bytes derived
/// from it (TestFrame), so the far side and the ring check it whole and in order; at the end no
/// TX descriptor is in flight and every RX descriptor is posted again (no leak).
func soak(_ name: String, tap: String, transmit: Bool = true, _ configure: @escaping @Sendable (inout QueuePairConfiguration) -> Void) -> KernelTest {
    KernelTest(name: "soak: \(soakFrames) frames \(transmit ? "each way, interleaved" : "in (RX)"), \(name): none lost, duplicated or corrupt; no descriptor leaks") {
        let p = try pair(tap) { $0.queueSize = 256; $0.ringBase = soakRingBase; configure(&$0) }
        let host = try KernelHostSide(p)
        let txFrames = transmit ? soakFrames : 0
        var nextTX = 0, seenTX = 0, sentRX = 0, seenRX = 0
        var problems: [String] = []
        var otherRX = 0
        let start = ContinuousClock.now
        // A stall, not a long run, fails the soak: the full 10,000,000 frames take hours under
        // emulation, so the bound is on progress (no frame checked either way for 60 s).
        var lastProgress = start, lastSeen = 0
        while (seenTX < txFrames || seenRX < soakFrames) && problems.isEmpty {
            // TX: keep up to a ring's worth in flight, check what the host stack got, in order.
            if nextTX < txFrames {
                let first = nextTX
                nextTX += try p.post(count: min(128, txFrames - nextTX)) { i, buffer in TestFrame.write(first + i, into: buffer) }
            }
            while seenTX < nextTX, let frame = host.nextTestFrame(milliseconds: nextTX - seenTX >= 128 || nextTX == txFrames ? 2000 : 0) {
                guard let s = TestFrame.sequence(of: frame), TestFrame.matches(s, frame) else { problems.append("TX: a corrupt frame (\(frame.count) bytes)"); break }
                guard s == seenTX else { problems.append("TX: frame \(s) where \(seenTX) was due (\(s < seenTX ? "duplicated" : "lost \(seenTX)..<\(s)"))"); break }
                seenTX += 1
            }
            // RX: the host sends a burst; the ring takes it, in order and whole.
            // Up to 160 in flight (of the ring's 256 buffers; tun queues 500 before it drops).
            if sentRX < soakFrames && sentRX - seenRX < 96 {
                for s in sentRX..<min(sentRX + 64, soakFrames) { try host.send(TestFrame.bytes(s)) }
                sentRX = min(sentRX + 64, soakFrames)
            }
            try p.receive(milliseconds: seenRX < sentRX ? 100 : 0) { f in
                guard let s = TestFrame.sequence(of: f.frame) else { otherRX += 1; return }
                guard TestFrame.matches(s, f.frame) else { problems.append("RX: a corrupt frame \(s)"); return }
                guard s == seenRX else { problems.append("RX: frame \(s) where \(seenRX) was due"); return }
                seenRX += 1
            }
            let now = ContinuousClock.now
            if seenTX + seenRX != lastSeen {
                // A full soak by hand runs for hours: a line per million frames shows it moving.
                if soakFrames >= 1_000_000 && (seenTX + seenRX) / 1_000_000 != lastSeen / 1_000_000 {
                    say("  … TX \(seenTX) and RX \(seenRX) frames checked after \(KernelTestRunner.formatted(start.duration(to: now).inSeconds)) s")
                }
                lastSeen = seenTX + seenRX; lastProgress = now
            }
            if lastProgress.duration(to: now) > .seconds(60) { problems.append("stalled for 60 s: TX \(seenTX)/\(txFrames), RX \(seenRX)/\(soakFrames)") }
        }
        try p.drainTransmit(milliseconds: 5000)
        let inFlight = p.withTransmitDriver { $0.inFlight }
        let rxFree = p.receiveQueue.driver.freeCount
        let elapsed = start.duration(to: .now).inSeconds
        let txIndex = p.withTransmitDriver { $0.availIndexShadow }
        say("  TX \(seenTX) and RX \(seenRX) frames checked in \(KernelTestRunner.formatted(elapsed)) s (indices wrapped from \(soakRingBase): TX \((Int(soakRingBase) + seenTX) / 65536)×, RX \((Int(soakRingBase) + seenRX) / 65536)×; TX avail idx now \(txIndex)); \(otherRX) host-stack frames ignored; ring errors \(p.transmitCounters.ringErrors + p.receiveCounters.ringErrors), RX drops \(p.receiveCounters.drops)")
        try expect(problems.isEmpty, problems.joined(separator: "; "))
        try expect(Int(soakRingBase) + seenRX >= 65_536, "the soak never carried the ring indices across 65535 (VHOST_SOAK_FRAMES below \(65_536 - Int(soakRingBase))?)")
        try expect(inFlight == 0, "\(inFlight) TX descriptors never came back")
        try expect(rxFree == 0, "\(rxFree) RX descriptors were not posted again")
        try expect(p.transmitCounters.ringErrors + p.receiveCounters.ringErrors == 0 && p.receiveCounters.drops == 0, "ring errors or drops")
    }
}

let soakTests: [KernelTest] = [
    soak("inline header", tap: "vht-soak-in") { _ in },
    soak("header in its own descriptor", tap: "vht-soak-sep") { $0.descriptorLayout = .separateHeader },
    soak("indirect tables", tap: "vht-soak-ind") { $0.features = [.version1, .eventIndex, .indirectDescriptors]; $0.descriptorLayout = .indirect },
    // 512-byte buffers hold no whole TX frame of up to 1514 bytes: this one soaks RX, where MRG_RXBUF merges.
    soak("MRG_RXBUF with 512-byte buffers", tap: "vht-soak-mrg", transmit: false) { $0.features = [.version1, .eventIndex, .netMergeableRxBuffers]; $0.bufferSize = 512 },
]
