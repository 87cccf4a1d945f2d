import DatapathSuite
import NetFormats
import Testing
import Vhost
import VhostModel
import VhostNet
import Virtio
import VhostTestSupport

@Suite("The datapath on the in-process device")
struct InProcessDatapathTests {
    @Test("the datapath suite passes against the in-process device (the kernel tier runs the same cases per kernel)")
    func datapathSuite() {
        let result = DatapathSuite.run(InProcessHarness())
        #expect(result.failed == 0, "\(result.failed) datapath cases failed against the in-process device: \(result.failures.joined(separator: "; "))")
        #expect(result.passed == DatapathSuite.cases(InProcessHarness()).count)
    }

    @Test("the host end of the pipe closed: RX finds no frame, and the device neither crashes nor stops serving TX's kicks")
    func hostEndClosed() throws {
        let (pair, host) = try InProcessHarness().makePair("vhu-eof") { $0.queueSize = 16 }
        try transmitAndCompare(pair, host: host, frames: 20)
        // The device's RX socket now reads end-of-stream (a 0-byte peek), which net.c's
        // handle_rx loop treats as no packet; the model once passed it on as a 0-byte frame.
        _ = consume host
        pair.postReceiveBuffers()
        var frames = 0
        for _ in 0..<3 { frames += try pair.receive(milliseconds: 100) { _ in } }
        #expect(frames == 0)
        // The worker is alive: a stop answers with the TX base it reached.
        let bases = try pair.stop()
        #expect(bases.transmitBase == 20)
    }

    @Test("calls the pair's state does not allow are invalidState, and the pair goes on")
    func invalidState() throws {
        let (pair, host) = try InProcessHarness().makePair("vhu-state") { $0.queueSize = 16 }
        do {
            try pair.resume(on: try InProcessVhostNetDevice())
            Issue.record("moved a running pair to another device")
        } catch {
            guard case .invalidState(let message) = error else { Issue.record("\(error)"); return }
            #expect(message.contains("stop the queue pair"))
        }
        do {
            try pair.unplugMemory(at: GuestAddress(0x7_0000_0000))
            Issue.record("unplugged a region that was never hot-plugged")
        } catch {
            guard case .invalidState = error else { Issue.record("\(error)"); return }
        }
        try transmitAndCompare(pair, host: host, frames: 8)
    }

    @Test("a device that corrupts the TX used ring: the queue is reported broken, RX and the process go on")
    func corruptTransmitUsedRing() throws {
        let (pair, host) = try InProcessHarness().makePair("vhu-bad") { $0.queueSize = 16 }
        try transmitAndCompare(pair, host: host, frames: 40)
        pair.device.corruptNextUsedEntry(index: VhostNetDevice.transmitQueueIndex, id: 999)
        var first: VhostError?
        do {
            try pair.transmit(count: 10) { i, buffer in TestFrame.write(i, into: buffer) }
        } catch {
            first = error
        }
        guard case .brokenQueue(let queue, let reason)? = first else {
            Issue.record("a used id of 999 on a 16-entry ring was accepted: \(String(describing: first))")
            return
        }
        #expect(queue == "tx" && reason.contains("used id 999"), "\(reason)")
        #expect("\(first!)".contains("broken"))
        // It stays broken: no later call trusts the ring again.
        #expect(throws: VhostError.self) { try pair.transmit(count: 1) { i, buffer in TestFrame.write(i, into: buffer) } }
        // The RX queue is untouched.
        try receiveAndCompare(pair, host: host, frames: 64)
    }

    @Test("a device that corrupts the RX used ring: receive reports the broken queue instead of trapping")
    func corruptReceiveUsedRing() throws {
        let (pair, host) = try InProcessHarness().makePair("vhu-badrx") { $0.queueSize = 16 }
        try receiveAndCompare(pair, host: host, frames: 20)
        pair.device.corruptNextUsedEntry(index: VhostNetDevice.receiveQueueIndex, id: 40_000)
        try host.send(TestFrame.bytes(1))
        var caught: VhostError?
        let deadline = ContinuousClock.now + .seconds(5)
        while caught == nil && ContinuousClock.now < deadline {
            do { try pair.receive(milliseconds: 100) { _ in } } catch { caught = error }
        }
        guard case .brokenQueue(let queue, let reason)? = caught else {
            Issue.record("no broken-queue error: \(String(describing: caught))")
            return
        }
        #expect(queue == "rx" && reason.contains("40000"))
    }

    @Test("a device that reports a used length past the RX buffer: the frame is dropped and counted, never read past the buffer, and the next frames arrive")
    func usedLengthPastTheBuffer() throws {
        let (pair, host) = try InProcessHarness().makePair("vhu-len") { $0.queueSize = 16 }
        try receiveAndCompare(pair, host: host, frames: 8)
        let capacity = pair.receiveQueue.frameCapacity
        let dropsBefore = pair.receiveCounters.drops
        // One byte more than the buffer holds after the header: still inside guest memory (the
        // next buffer), so a driver that trusted it would hand that byte to the caller.
        pair.device.corruptNextUsedLength(UInt32(pair.receiveQueue.queue.chainCapacity + 1))
        try host.send(TestFrame.bytes(1))
        var delivered: [Int] = []
        let deadline = ContinuousClock.now + .seconds(5)
        while pair.receiveCounters.drops == dropsBefore && ContinuousClock.now < deadline {
            try pair.receive(milliseconds: 100) { delivered.append($0.frame.count) }
        }
        #expect(pair.receiveCounters.drops == dropsBefore + 1, "the frame with a used length past its buffer was not dropped")
        #expect(delivered.allSatisfy { $0 <= capacity }, "a frame of \(delivered.max() ?? 0) bytes was delivered from a \(capacity)-byte buffer")
        try receiveAndCompare(pair, host: host, frames: 8)
    }

    @Test("the in-process device answers the vhost ioctls with the kernel's errnos")
    func ioctlRules() throws {
        func errno(_ body: () throws -> Void) -> String? {
            do { try body(); return nil } catch VhostError.ioctl(let failure) { return failure.errno.name } catch { return "\(error)" }
        }
        let device = try InProcessVhostNetDevice()
        #expect(errno { try device.setVringNum(index: 0, num: 256) } == "EPERM", "a vring ioctl before SET_OWNER")
        #expect(errno { try device.setOwner() } == nil)
        #expect(errno { try device.setOwner() } == "EBUSY", "a second SET_OWNER")
        #expect(errno { try device.setVringNum(index: 0, num: 3) } == "EINVAL", "a ring of 3")
        #expect(errno { try device.setVringNum(index: 0, num: 65536) } == "EINVAL", "a ring of 65536")
        #expect(errno { try device.setFeatures([.version1, .ringPacked]) } == "EOPNOTSUPP", "the packed ring")
        #expect(errno { try device.setBackend(index: 2, fd: -1) } == "ENOBUFS", "vring 2")
        #expect(errno { try device.setBackend(index: 0, fd: -1) } == "EFAULT", "a backend before the ring's addresses")
        let regions = (0...64).map { MemoryTable.Region(guestAddress: UInt64($0) << 21, size: 1 << 21, userspaceAddress: 0x7000_0000_0000 + (UInt64($0) << 21)) }
        #expect(errno { try device.setMemoryTable(MemoryTable(regions: regions)) } == "E2BIG", "65 regions")
    }
}
