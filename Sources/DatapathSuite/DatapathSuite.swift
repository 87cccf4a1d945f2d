import Glibc
import NetFormats
import Vhost
import VhostNet
import Virtio
import VhostTestSupport

/// Transmits `total` test frames in batches and checks that each reaches the host side, in order
/// and byte for byte.
public func transmitAndCompare(_ pair: some QueuePairDatapath, host: some HostSide, frames total: Int, batch: Int = 100) throws {
    let errorsBefore = pair.transmitCounters.ringErrors
    var next = 0
    while next < total {
        let count = min(batch, total - next)
        let first = next
        try pair.transmit(count: count) { i, buffer in TestFrame.write(first + i, into: buffer) }
        for sequence in first..<(first + count) {
            guard let frame = host.nextTestFrame(milliseconds: 5000) else {
                throw TestFailure("frame \(sequence) never reached the host side")
            }
            try expect(frame == TestFrame.bytes(sequence), "frame \(sequence) differs (\(frame.count) bytes, expected \(TestFrame.length(sequence)))")
        }
        next += count
    }
    let errors = pair.transmitCounters.ringErrors - errorsBefore
    try expect(errors == 0, "the device signalled \(errors) TX vring errors")
}

/// Sends `total` test frames from the host side in batches and checks each arrives in the RX
/// ring, in order and byte for byte. Other traffic (the host stack's own) is ignored.
public func receiveAndCompare(_ pair: some QueuePairDatapath, host: some HostSide, frames total: Int, batch: Int = 32) throws {
    let errorsBefore = pair.receiveCounters.ringErrors
    var received = 0, other = 0
    var sequence = 0
    while sequence < total {
        let count = min(batch, total - sequence)
        for s in sequence..<(sequence + count) { try host.send(TestFrame.bytes(s)) }
        var expected = sequence
        let deadline = now() + 10
        var mismatch: String? = nil
        while expected < sequence + count && now() < deadline {
            try pair.receive(milliseconds: 1000) { frame in
                let bytes = [UInt8](frame.frame)
                guard EthernetFrame.etherType(of: bytes) == EthernetFrame.experimentalType else { other += 1; return }
                if mismatch == nil && bytes != TestFrame.bytes(expected) {
                    mismatch = "frame \(expected) differs: \(bytes.count) bytes, expected \(TestFrame.length(expected))"
                }
                expected += 1
                received += 1
            }
        }
        if let mismatch { throw TestFailure(mismatch) }
        try expect(expected == sequence + count, "only \(expected - sequence) of frames \(sequence)..<\(sequence + count) arrived in the ring")
        sequence += count
    }
    say("  \(received) frames received and compared, \(other) other frames (host stack traffic) ignored")
    let errors = pair.receiveCounters.ringErrors - errorsBefore
    try expect(errors == 0, "the device signalled \(errors) RX vring errors")
}

/// Polls `condition` every millisecond for up to `seconds`; fails naming `what` if it never holds.
public func waitUntil(_ what: String, seconds: Double = 5, _ condition: () throws -> Bool) throws {
    let deadline = now() + seconds
    while now() < deadline {
        if try condition() { return }
        usleep(1000)
    }
    throw TestFailure("\(what): not within \(seconds) s")
}

/// Turns IPv6 off on a kernel interface (no router solicitations or DAD frames into the RX ring);
/// nothing to do for the in-process device, which has no host stack.
public func quietHostStack(interface: String) {
    let fd = open("/proc/sys/net/ipv6/conf/\(interface)/disable_ipv6", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = write(fd, "1", 1)
    close(fd)
}

/// Waits up to `seconds` for the device to signal a ring error on `pair`.
public func waitForRingError(_ pair: some QueuePairDatapath, seconds: Double = 5) throws -> RingErrorEvent {
    let deadline = now() + seconds
    while now() < deadline {
        if let event = pair.takeRingErrors().first { return event }
        usleep(2000)
    }
    throw TestFailure("the device signalled no ring error in \(seconds) s")
}

/// One datapath test case.
public struct DatapathCase: Sendable {
    public let name: String
    let body: @Sendable () throws -> Void
}

/// The datapath tests that run on any backend: once against the in-process device in the unit
/// tier, and once per kernel of the matrix in the kernel tier. Where the backends disagree, one
/// of them has a bug: the model is fixed, or the kernel's behaviour is written down.
public enum DatapathSuite {
    /// Every case, bound to `harness`.
    public static func cases<H: DatapathHarness>(_ harness: H) -> [DatapathCase] {
        [
            DatapathCase(name: "tx: back-pressure on an 8-entry ring, 5,000 frames, each counted and compared on the far side") {
                let (p, host) = try harness.pair("vhd-bp") { $0.queueSize = 8; $0.features = [.version1, .eventIndex] }
                try transmitAndCompare(p, host: host, frames: 5_000, batch: 500)
                let counted = try host.transmittedCount(waitingFor: 5_000, milliseconds: 5000)
                try expect(counted == 5_000, "the far side counted \(counted) frames, not 5000")
                let c = p.transmitCounters
                say("  \(c.frames) frames through 8 descriptors: \(c.kicks) kicks, \(c.calls) waits on the call eventfd")
                try expect(c.calls > 0, "an 8-entry ring never filled: no back-pressure was exercised")
            },
            DatapathCase(name: "tx: 2,000 frames arrive byte for byte on the far side") {
                let (p, host) = try harness.pair("vhd-txcmp") { $0.queueSize = 128 }
                try transmitAndCompare(p, host: host, frames: 2_000)
            },
            DatapathCase(name: "rx: 1,024 frames from the host through a 64-entry ring, refilled, payloads compared") {
                let (p, host) = try harness.pair("vhd-rx") { $0.queueSize = 64; $0.features = [.version1, .eventIndex] }
                try receiveAndCompare(p, host: host, frames: 1_024)
            },
            DatapathCase(name: "ring: an 8-entry ring wraps its indices past 65535 over 70,000 frames") {
                let (p, host) = try harness.pair("vhd-wrap") { $0.queueSize = 8 }
                let total = 70_000
                try p.transmit(count: total) { i, buffer in TestFrame.write(i, into: buffer) }
                let counted = try host.transmittedCount(waitingFor: UInt64(total), milliseconds: 10_000)
                try expect(counted == UInt64(total), "the far side counted \(counted) frames, not \(total)")
                let wrapped = UInt16(truncatingIfNeeded: total)
                let (avail, used) = p.withTransmitDriver { ($0.availIndexShadow, $0.lastUsedIndex) }
                try expect(avail == wrapped && used == wrapped, "driver indices \(avail)/\(used), expected \(wrapped)")
                let bases = try p.stop()
                try expect(bases.transmitBase == UInt32(wrapped), "device last_avail_idx \(bases.transmitBase), expected \(wrapped)")
            },
            DatapathCase(name: "ring: a base of 65500 set with SET_VRING_BASE crosses zero on TX and RX") {
                let (p, host) = try harness.pair("vhd-base") { $0.queueSize = 16; $0.ringBase = 65_500 }
                try transmitAndCompare(p, host: host, frames: 300)
                try receiveAndCompare(p, host: host, frames: 300)
                let bases = try p.stop()
                try expect(bases.transmitBase == UInt32(UInt16(truncatingIfNeeded: 65_500 + 300)), "TX base \(bases.transmitBase)")
            },
            DatapathCase(name: "notifications: with EVENT_IDX only the publish that crosses avail_event kicks (a kick-always driver kicks every time); EVENT_IDX and flag mode kick fewer times than frames") {
                // Deterministic: the device drains the ring and goes idle, which publishes
                // avail_event = its last index (vhost.c vhost_enable_notify); then, with the backend
                // detached so that nothing moves it, four publishes follow. Only the first crosses it.
                var kicks: [String: UInt64] = [:]
                for (name, always) in [("EVENT_IDX", false), ("kick always", true)] {
                    let (p, host) = try harness.pair("vhd-kick") { $0.features = [.version1, .eventIndex]; $0.kickEveryPublish = always; $0.queueSize = 256 }
                    try transmitAndCompare(p, host: host, frames: 50)
                    try p.stop()
                    let before = p.transmitCounters.kicks
                    for batch in 0..<4 {
                        let posted = try p.post(count: 16) { i, buffer in TestFrame.write(100 + batch * 16 + i, into: buffer) }
                        try expect(posted == 16, "posted \(posted) of 16")
                    }
                    kicks[name] = p.transmitCounters.kicks - before
                    try p.resume()
                    try p.drainTransmit(milliseconds: 5000)
                    for s in 100..<164 {
                        let frame = host.nextTestFrame(milliseconds: 3000)
                        try expect(frame == TestFrame.bytes(s), "\(name): frame \(s) did not arrive after the resume")
                    }
                }
                say("  four publishes after the device went idle: EVENT_IDX \(kicks["EVENT_IDX"]!) kick(s), kick-always \(kicks["kick always"]!)")
                try expect(kicks["EVENT_IDX"] == 1, "EVENT_IDX kicked \(kicks["EVENT_IDX"]!) times for four publishes past one avail_event")
                try expect(kicks["kick always"] == 4, "the kick-always driver kicked \(kicks["kick always"]!) times for four publishes")
                // And the first session's assertion, kept: both modes kick far fewer times than frames.
                for eventIndex in [true, false] {
                    let (f, _) = try harness.pair(eventIndex ? "vhd-evi" : "vhd-flg") { $0.features = eventIndex ? [.version1, .eventIndex] : [.version1] }
                    try f.transmit(count: 20_000) { i, buffer in TestFrame.write(i, into: buffer) }
                    try expect(f.transmitCounters.kicks < 20_000 / 10, "\(eventIndex ? "EVENT_IDX" : "flag mode") kicked \(f.transmitCounters.kicks) times for 20000 frames")
                    try expect(f.transmitCounters.kicks + f.transmitCounters.suppressedKicks > 0, "no publish was counted")
                }
            },
            DatapathCase(name: "notifications: RX coalescing — with used_event 7 past the last used entry, the device signals the call eventfd at the 8th frame, not before") {
                let (p, host) = try harness.pair("vhd-coal") { $0.features = [.version1, .eventIndex]; $0.queueSize = 64 }
                // Quiet the host stack (IPv6 autoconfiguration would add frames of its own), and
                // pass traffic first: until the device has signalled once, vhost signals whatever
                // used_event says (vhost.c vhost_notify: !signalled_used_valid).
                quietHostStack(interface: "vhd-coal")
                try receiveAndCompare(p, host: host, frames: 4)
                while try p.receive(limit: 64, milliseconds: 300, handler: { _ in }) > 0 {}
                _ = p.takeReceiveSignals()
                try expect(p.armReceiveNotification(after: 8) != nil, "used entries were pending before arming")
                for s in 0..<7 { try host.send(TestFrame.bytes(100 + s)) }
                try waitUntil("7 frames used") { p.withReceiveDriver { $0.usedPending } >= 7 }
                usleep(100_000)  // a late signal would have come by now
                let pending = p.withReceiveDriver { $0.usedPending }
                let early = p.takeReceiveSignals()
                try expect(pending == 7, "\(pending) frames used, not 7: other traffic reached the ring")
                try expect(early == nil, "the device signalled \(early ?? 0) time(s) after 7 frames, before the 8th that used_event asked for")
                try host.send(TestFrame.bytes(107))
                var signals: UInt64? = nil
                try waitUntil("the device's signal after the 8th frame") {
                    signals = p.takeReceiveSignals()
                    return signals != nil
                }
                var got: [[UInt8]] = []
                while got.count < 8, try p.receive(limit: 64, milliseconds: 1000, handler: { got.append([UInt8]($0.frame)) }) > 0 {}
                try expect(got == (100..<108).map(TestFrame.bytes), "the 8 frames did not arrive in order, byte for byte")
                say("  no signal after 7 used frames; \(signals!) signal(s) once the 8th was used")
            },
            DatapathCase(name: "notifications: adaptive RX coalescing — a lone frame is signalled at once, a stream is signalled far less often than once per frame, and a lone frame after it at once again") {
                try checkAdaptiveCoalescing(harness)
            },
            DatapathCase(name: "notifications: adaptive RX coalescing's steps — frames found waiting set the threshold to twice their count, a delay that brought 8 or more sets it to the limit, and at threshold 1 an idle queue sleeps the caller's whole wait") {
                try checkAdaptiveThresholdSteps(harness)
            },
            DatapathCase(name: "descriptors: the header in its own descriptor (2-descriptor chains)") {
                let (p, host) = try harness.pair("vhd-chain") { $0.descriptorLayout = .separateHeader; $0.queueSize = 64 }
                try transmitAndCompare(p, host: host, frames: 500)
                // As `bench` drives TX: EVENT_IDX (a wait for room asks for a signal at 3/4 of the
                // chains in flight: of the chains, not of their two descriptors each, or the device
                // never reaches it and each wait runs its whole time; TX with this layout once moved
                // 319 frames/s on 7.2), a ring of 256 such chains kept full by posts of 64, a wait for
                // room whenever it is full. The tap (or the pipe's reader) counts the frames.
                let (b, bhost) = try harness.pair("vhd-chainb") {
                    $0.features = [.version1, .eventIndex]; $0.descriptorLayout = .separateHeader; $0.queueSize = 512
                }
                let total = 20_000
                let before = try bhost.transmittedCount(waitingFor: 0, milliseconds: 0)
                var posted = 0
                // A wait the device ends takes microseconds; one that runs its 2 s is the bug (the
                // loop stops at the first, so that a broken build fails in seconds, not minutes).
                while posted < total && b.transmitCounters.timedOutSleeps == 0 {
                    let first = posted
                    let added = try b.post(count: min(64, total - posted)) { i, buffer in TestFrame.write(first + i, length: 60, into: buffer) }
                    posted += added
                    if added == 0 { _ = try b.waitForTransmitRoom(milliseconds: 2000) }
                }
                try expect(b.transmitCounters.timedOutSleeps == 0, "a wait for room ran its whole 2 s after \(posted) frames: the device was asked to signal at a used index it never reached")
                try b.drainTransmit(milliseconds: 5000)
                let counted = try bhost.transmittedCount(waitingFor: before + UInt64(total), milliseconds: 5000) - before
                let full = b.transmitCounters
                say("  TX kept full: \(counted) of \(total) frames counted by the host side, \(full.calls) wake-ups, \(full.timedOutSleeps) sleeps that ran their time")
                try expect(counted == UInt64(total), "the host side counted \(counted) of \(total) frames")
                try receiveAndCompare(p, host: host, frames: 256, batch: 16)
            },
            DatapathCase(name: "descriptors: indirect tables in guest memory") {
                let (p, host) = try harness.pair("vhd-ind") { $0.features = [.version1, .eventIndex, .indirectDescriptors]; $0.descriptorLayout = .indirect }
                try transmitAndCompare(p, host: host, frames: 500)
                try receiveAndCompare(p, host: host, frames: 256)
            },
            DatapathCase(name: "receive: MRG_RXBUF reassembles frames larger than one buffer") {
                for layout in [DescriptorLayout.inline, .separateHeader] {
                    let (p, host) = try harness.pair("vhd-mrg") {
                        $0.features = [.version1, .eventIndex, .netMergeableRxBuffers]
                        $0.bufferSize = 512
                        $0.descriptorLayout = layout
                    }
                    try receiveAndCompare(p, host: host, frames: 256, batch: 8)
                    let merged = p.receiveCounters.mergedFrames
                    say("  \(layout): \(merged) of \(p.receiveCounters.frames) frames spanned several 512-byte buffers")
                    try expect(merged > 100, "only \(merged) frames were merged")
                }
            },
            DatapathCase(name: "features: IN_ORDER carries traffic where offered, and is refused by name where not") {
                let offered = try harness.offeredFeatures()
                guard offered.contains(.inOrder) else {
                    do { _ = try harness.pair("vhd-ino") { $0.features = [.version1, .inOrder] } } catch let error as VhostError {
                        try expect(error.description.contains("F_IN_ORDER"), "unexpected error: \(error)")
                        refusalChecked("IN_ORDER is not offered here: requesting it fails with: \(error)")
                        return
                    }
                    throw TestFailure("IN_ORDER is not offered, yet the queue pair started")
                }
                let (p, host) = try harness.pair("vhd-ino") { $0.features = [.version1, .eventIndex, .inOrder]; $0.queueSize = 64 }
                try p.transmit(count: 20_000) { i, buffer in TestFrame.write(i, into: buffer) }
                try transmitAndCompare(p, host: host, frames: 500)
                try receiveAndCompare(p, host: host, frames: 256)
                say("  IN_ORDER: TX chains completed inside batches: \(p.withTransmitDriver { $0.completedInBatch })")
                let (merged, mergedHost) = try harness.pair("vhd-ino2") { $0.features = [.version1, .eventIndex, .inOrder, .netMergeableRxBuffers]; $0.bufferSize = 512 }
                try receiveAndCompare(merged, host: mergedHost, frames: 256, batch: 8)
                say("  IN_ORDER + MRG_RXBUF: \(merged.receiveCounters.mergedFrames) frames reassembled from several buffers")
                try expect(merged.receiveCounters.mergedFrames > 100, "too few merged frames")
            },
            DatapathCase(name: "features: VHOST_NET_F_VIRTIO_NET_HDR — the device adds the header, the socket side has none") {
                let (p, host) = try harness.pair("vhd-vnh") { $0.features = [.version1, .vhostNetVirtioNetHeader] }
                try transmitAndCompare(p, host: host, frames: 300)
                try receiveAndCompare(p, host: host, frames: 128)
            },
            DatapathCase(name: "ring error: a descriptor outside the memory table is a typed event naming the queue and the cause; repaired and kicked, TX and RX carry traffic again") {
                let (p, host) = try harness.pair("vhd-err") { $0.queueSize = 64 }
                try transmitAndCompare(p, host: host, frames: 50)
                guard let fault = p.injectTransmitFault(.addressOutsideMemory, frame: TestFrame.bytes(1000)) else { throw TestFailure("no free TX descriptor") }
                let event = try waitForRingError(p)
                say("  \(event)")
                try expect(event.queue.direction == .transmit && event.likelyCause.isOutsideMemoryTable && event.likelyCause.head == fault.head,
                           "unexpected event: \(event)")
                p.repair(fault, onTransmit: true)
                let repaired = host.nextTestFrame(milliseconds: 5000)
                try expect(repaired == TestFrame.bytes(1000), "the repaired chain's frame did not reach the far side")
                try p.drainTransmit(milliseconds: 5000)
                // Injection kicks twice (publish's kick and its own), and each kick the device
                // handles before the repair finds the broken chain again and signals again (as
                // vhost.c does): take those late signals, so that only new errors count below.
                _ = p.takeRingErrors()
                try transmitAndCompare(p, host: host, frames: 200)
                // RX: the posted buffer the device takes next, found when a frame arrives.
                guard let rxFault = p.injectReceiveFault(.addressOutsideMemory) else { throw TestFailure("no posted RX buffer") }
                try host.send(TestFrame.bytes(2000))
                let rxEvent = try waitForRingError(p)
                say("  \(rxEvent)")
                try expect(rxEvent.queue.direction == .receive && rxEvent.likelyCause.isOutsideMemoryTable, "unexpected event: \(rxEvent)")
                p.repair(rxFault, onTransmit: false)
                var first: [UInt8]? = nil
                let deadline = now() + 5
                while first == nil && now() < deadline {
                    try p.receive(milliseconds: 200) { f in
                        let bytes = [UInt8](f.frame)
                        if first == nil && EthernetFrame.etherType(of: bytes) == EthernetFrame.experimentalType { first = bytes }
                    }
                }
                try expect(first == TestFrame.bytes(2000), "the frame that met the broken buffer did not arrive after the repair")
                _ = p.takeRingErrors()  // signals from before the repair, as on TX
                try receiveAndCompare(p, host: host, frames: 128)
            },
            DatapathCase(name: "resume: frames in flight across stop and resume (same device, fresh device, after RESET_OWNER) arrive exactly once, in order, TX and RX") {
                let (p, host) = try harness.pair("vhd-res") { $0.queueSize = 64; $0.features = [.version1, .eventIndex] }
                var nextTX = 0, nextRX = 10_000
                let ways: [(String, () throws -> Void)] = [
                    ("same device", { try p.resume() }),
                    ("fresh device", { try harness.resumeOnFreshDevice(p) }),
                    ("RESET_OWNER", { try p.resetOwnerAndRestart() }),
                ]
                var report: [String] = []
                for (way, resume) in ways {
                    // TX: fill the ring, stop at once (some chains still unused), resume.
                    let posted = try p.post(count: 64) { i, buffer in TestFrame.write(nextTX + i, into: buffer) }
                    let bases = try p.stop()
                    // RX: the host sends while the device is stopped; the frames wait in its queue.
                    for s in nextRX..<(nextRX + 100) { try host.send(TestFrame.bytes(s)) }
                    try resume()
                    try p.drainTransmit(milliseconds: 5000)
                    for s in nextTX..<(nextTX + posted) {
                        let frame = host.nextTestFrame(milliseconds: 5000)
                        try expect(frame == TestFrame.bytes(s), "\(way): TX frame \(s) lost or out of order (got \(frame.map { "\($0.count) bytes, sequence \(Int($0[14]) << 24 | Int($0[15]) << 16 | Int($0[16]) << 8 | Int($0[17]))" } ?? "nothing"))")
                    }
                    try expect(host.nextTestFrame(milliseconds: 100) == nil, "\(way): a TX frame arrived twice")
                    var sequences: [Int] = []
                    let deadline = now() + 10
                    while sequences.count < 100 && now() < deadline {
                        try p.receive(milliseconds: 200) { f in
                            let b = [UInt8](f.frame)
                            guard EthernetFrame.etherType(of: b) == EthernetFrame.experimentalType else { return }
                            sequences.append(Int(b[14]) << 24 | Int(b[15]) << 16 | Int(b[16]) << 8 | Int(b[17]))
                        }
                    }
                    try p.receive(milliseconds: 100) { f in
                        let b = [UInt8](f.frame)
                        if EthernetFrame.etherType(of: b) == EthernetFrame.experimentalType { sequences.append(-1) }
                    }
                    try expect(sequences == Array(nextRX..<(nextRX + 100)), "\(way): RX sequences \(sequences.prefix(8))… (\(sequences.count)), expected \(nextRX)..<\(nextRX + 100) once each")
                    report.append("\(way): TX \(posted) in flight at stop (base \(bases.transmitBase)), RX 100 queued while stopped")
                    nextTX += posted
                    nextRX += 100
                }
                say("  " + report.joined(separator: "; "))
            },
            DatapathCase(name: "descriptors: ring sizes 2 and 32768 (the kernel maximum) carry traffic") {
                for size: UInt16 in [2, 32768] {
                    let (p, host) = try harness.pair("vhd-size") { $0.queueSize = size }
                    try transmitAndCompare(p, host: host, frames: 300)
                    try receiveAndCompare(p, host: host, frames: 64, batch: size == 2 ? 2 : 32)
                }
            },
        ]
    }

    /// Runs every case (or those whose name contains `filter`), printing `PASS`/`FAIL` per case and
    /// `datapath suite (NAME): N passed, M failed` last. Returns the counts and, per failed case, its name and error.
    @discardableResult
    public static func run<H: DatapathHarness>(_ harness: H, filter: String? = nil) -> (passed: Int, failed: Int, failures: [String]) {
        var passed = 0, failed = 0, refusals = 0
        var failures: [String] = []
        for test in cases(harness) where filter == nil || test.name.contains(filter!) {
            let start = now()
            _ = takeRefusalMark()
            do {
                try test.body()
                passed += 1
                let refusal = takeRefusalMark()
                if refusal { refusals += 1 }
                say("PASS\(refusal ? " (refusal checked)" : "") datapath: \(test.name) (\(seconds(now() - start)) s)")
            } catch {
                failed += 1
                failures.append("\(test.name): \(error)")
                say("FAIL datapath: \(test.name) (\(seconds(now() - start)) s): \(error)")
            }
        }
        sayDetail("datapath suite (\(harness.name))", exercised: passed - refusals, refusals: refusals)
        say("datapath suite (\(harness.name)): \(passed) passed, \(failed) failed")
        return (passed, failed, failures)
    }

    static func seconds(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)"
    }
}

/// Adaptive RX coalescing on `harness`: the same paced stream into a pair that wakes on the
/// first frame and into one with adaptive coalescing (up to 64 frames or 1 ms), side by side; the
/// calls are the wake-ups the device signalled on the call eventfd (a coalescing delay that
/// passes is not one). A lone frame before and after the stream must be signalled at once.
func checkAdaptiveCoalescing(_ harness: some DatapathHarness) throws {
    func stream(_ p: some QueuePairDatapath, _ host: some HostSide, frames total: Int, pause: UInt32) throws -> UInt64 {
        let callsBefore = p.receiveCounters.calls
        // The host side is used by the sender thread alone until it is joined.
        nonisolated(unsafe) let send: ([UInt8]) throws -> Void = { try host.send($0) }
        let thread = WorkerThread {
            for s in 0..<total {
                try? send(TestFrame.bytes(1000 + s))
                if s % 4 == 3 { usleep(pause) }  // a steady stream: one call per burst is all a burst needs
            }
        }
        defer { thread.join() }
        var expected = 1000, mismatch: String? = nil
        let deadline = now() + 30
        while expected < 1000 + total && now() < deadline {
            // Only the sequence is checked per frame (other cases compare the bytes): a handler
            // slower than the stream would find frames waiting every time and never sleep.
            _ = try p.receive(limit: 256, milliseconds: 100) { frame in
                guard let s = TestFrame.sequence(of: frame.frame) else { return }
                if mismatch == nil && s != expected { mismatch = "frame \(s) arrived where \(expected) was due" }
                expected = s + 1
            }
        }
        if let mismatch { throw TestFailure(mismatch) }
        try expect(expected == 1000 + total, "only \(expected - 1000) of \(total) streamed frames arrived in the ring")
        return p.receiveCounters.calls - callsBefore
    }
    /// Sends lone frames, each while the driver sleeps after idle waits, and receives them: true
    /// once a call (not a passing delay) woke the driver for one. A frame can land between two
    /// waits, where the driver finds it without sleeping: up to 5 tries.
    func loneFrameSignalled(_ p: some QueuePairDatapath, _ host: some HostSide, sequence: Int) throws -> Bool {
        while try p.receive(limit: 256, milliseconds: 20, handler: { _ in }) > 0 {}  // idle
        for attempt in 0..<5 {
            let callsBefore = p.receiveCounters.calls
            nonisolated(unsafe) let send: ([UInt8]) throws -> Void = { try host.send($0) }
            let thread = WorkerThread {
                usleep(20_000)  // the driver is in its idle waits by now
                try? send(TestFrame.bytes(sequence + attempt))
            }
            defer { thread.join() }
            var got = false
            let deadline = now() + 5
            while !got && now() < deadline { _ = try p.receive(limit: 1, milliseconds: 1000) { got = TestFrame.sequence(of: $0.frame) == sequence + attempt } }
            try expect(got, "the lone frame \(sequence + attempt) never arrived")
            if p.receiveCounters.calls > callsBefore { return true }
        }
        return false
    }
    let total = 3000
    let (plain, plainHost) = try harness.pair("vhd-noco") { $0.features = [.version1, .eventIndex] }
    quietHostStack(interface: "vhd-noco")
    try receiveAndCompare(plain, host: plainHost, frames: 4)
    // The control: without coalescing, a stream the driver keeps up with is signalled more than
    // once per 8 frames. A driver slower than the stream finds frames waiting and is seldom
    // signalled with or without coalescing (seen on 6.1 under TCG with a loaded host: 129 calls
    // against 136), and then the stream shows nothing: slow the stream down until the control
    // holds (at most three times), and send the coalescing pair the same stream.
    var pause: UInt32 = 50
    var first = try stream(plain, plainHost, frames: total, pause: pause)
    while first * 8 <= UInt64(total) && pause < 3200 {
        say("  without coalescing, \(first) calls for \(total) frames at \(pause) µs per 4: the driver fell behind; slowing the stream")
        pause *= 4
        first = try stream(plain, plainHost, frames: total, pause: pause)
    }
    // A stream wakes an adaptive driver about once per delay (ReceiveCoalescing), so the delay
    // must hold more than 8 of the stream's frames for "fewer than one call per 8" to be the
    // design's promise: 1 ms at 50 µs per 4; longer when a slow driver forced a slower stream
    // (5.10 under TCG needed 800 µs per 4, where 1 ms holds 5 frames).
    let delay = Int32(max(1, (Int(pause) * 16 / 4 + 999) / 1000))
    let (p, host) = try harness.pair("vhd-adapt") {
        $0.features = [.version1, .eventIndex]
        $0.receiveCoalescing = ReceiveCoalescing(frames: 64, maxDelayMilliseconds: delay, adaptive: true)
    }
    quietHostStack(interface: "vhd-adapt")
    // Until the device has signalled once, vhost signals whatever used_event says
    // (vhost.c vhost_notify: !signalled_used_valid): pass traffic first.
    try receiveAndCompare(p, host: host, frames: 4)
    let signalledBefore = try loneFrameSignalled(p, host, sequence: 900)
    try expect(signalledBefore, "a lone frame after an idle wait was found by the coalescing delay, not signalled by the device: the threshold did not fall to 1")
    let adaptive = try stream(p, host, frames: total, pause: pause)
    say("  \(total) paced frames (\(pause) µs per 4): \(first) calls waking on the first frame, \(adaptive) with adaptive coalescing (delay \(delay) ms, threshold now \(p.receiveAdaptiveThreshold))")
    try expect(adaptive * 8 <= UInt64(total), "adaptive coalescing was signalled \(adaptive) times for \(total) frames, more than one call per 8 frames (without it: \(first))")
    // The baseline, asserted: without coalescing the same stream was signalled more than once per
    // 8 frames (the control above), and coalescing at least halves the calls, in the same run.
    try expect(first * 8 > UInt64(total), "without coalescing the stream was signalled only \(first) times for \(total) frames even at \(pause) µs per 4: the driver fell behind, so this run cannot show what coalescing does")
    try expect(adaptive * 2 <= first, "adaptive coalescing was signalled \(adaptive) times against \(first) without it: not half or less")
    let signalledAfter = try loneFrameSignalled(p, host, sequence: 910)
    try expect(signalledAfter, "a lone frame after the stream was found by the coalescing delay, not signalled by the device: the threshold did not fall back to 1")
}

/// The adaptive threshold's steps on `harness` (`ReceiveQueue`'s adapt), each set up so that one
/// outcome alone is possible: the frames are used before the driver looks, or the delay passes
/// with fewer than the threshold used, or nothing arrives.
func checkAdaptiveThresholdSteps(_ harness: some DatapathHarness) throws {
    let (p, host) = try harness.pair("vhd-steps") {
        $0.features = [.version1, .eventIndex]
        $0.receiveCoalescing = ReceiveCoalescing(frames: 64, maxDelayMilliseconds: 1, adaptive: true)
    }
    quietHostStack(interface: "vhd-steps")
    // Until the device has signalled once, vhost signals whatever used_event says.
    try receiveAndCompare(p, host: host, frames: 4)
    // Idle until a wait brings nothing and the threshold is back at 1 (a frame of the host's
    // own can land in between: a few rounds).
    for _ in 0..<20 {
        if try p.receive(limit: 256, milliseconds: 20, handler: { _ in }) == 0 && p.receiveAdaptiveThreshold == 1 { break }
    }
    try expect(p.receiveAdaptiveThreshold == 1, "after idle waits the threshold is \(p.receiveAdaptiveThreshold), not 1")
    func sendUsed(_ count: Int, from first: Int) throws {
        for s in first..<(first + count) { try host.send(TestFrame.bytes(s)) }
        let deadline = now() + 5
        while p.withReceiveDriver({ $0.usedPending }) < UInt16(count) && now() < deadline { usleep(1000) }
        try expect(p.withReceiveDriver({ $0.usedPending }) >= UInt16(count), "the device did not use \(count) RX buffers within 5 s")
    }
    // 1. Frames found waiting: the stream is at least that fast (a doubling from 1 gave 2).
    try sendUsed(10, from: 3000)
    let found = try p.receive(limit: 256, milliseconds: 20) { _ in }
    try expect(found >= 10 && found <= 32, "received \(found) frames where 10 were sent")
    try expect(p.receiveAdaptiveThreshold == UInt16(2 * found), "\(found) frames found waiting set the threshold to \(p.receiveAdaptiveThreshold), not \(2 * found)")
    // 2. The delay passes with 9 of 20 used: a stream, so the limit (setting it to 9 made the
    // next burst signal early: ReceiveQueue's adapt).
    try sendUsed(9, from: 3100)
    let brought = try p.receive(limit: 256, milliseconds: 20) { _ in }
    try expect(brought >= 9, "received \(brought) frames where 9 were sent")
    try expect(p.receiveAdaptiveThreshold == 64, "a delay that brought \(brought) frames set the threshold to \(p.receiveAdaptiveThreshold), not the limit 64")
    // 3. Idle: the first wait ends at the delay with nothing and falls to 1; at 1 the next wait
    // has no delay to bound and sleeps the caller's 300 ms (it had woken once per delay).
    var early = 0
    for _ in 0..<5 {
        early += try p.receive(limit: 256, milliseconds: 300, handler: { _ in })
        if p.receiveAdaptiveThreshold == 1 { break }
    }
    try expect(early <= 2, "\(early) frames arrived on the idle queue")
    try expect(p.receiveAdaptiveThreshold == 1, "idle delays left the threshold at \(p.receiveAdaptiveThreshold), not 1")
    var slept = 0.0
    for _ in 0..<3 {
        let start = now()
        let stray = try p.receive(limit: 256, milliseconds: 300, handler: { _ in })
        slept = now() - start
        if stray == 0 { break }
    }
    try expect(slept >= 0.2, "at threshold 1 an idle wait of 300 ms ended after \(Int(slept * 1000)) ms")
    say("  10 waiting: threshold \(2 * found); a delay with \(brought): 64; idle at 1: slept \(Int(slept * 1000)) ms of 300")
}
