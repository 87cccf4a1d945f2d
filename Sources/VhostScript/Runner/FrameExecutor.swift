import Glibc
import NetFormats
import Vhost
import Virtio

/// The numbered frames of a run, both ways: the next sequence number of each side and the
/// shape (size, pattern) each run of numbers was sent with, so a receiver can rebuild every
/// frame and compare it byte for byte.
struct FrameLedger {
    struct Shape { var first: Int; var count: Int; var size: Int?; var pattern: UInt8? }
    /// Our next TX frame, the next one the host must see, the host's next frame, and the next
    /// one our RX ring must see.
    var transmitSequence = 0, hostExpectedSequence = 0, hostSequence = 0, receiveSequence = 0
    var transmitShapes: [Shape] = []
    var hostShapes: [Shape] = []

    static func shape(of sequence: Int, in shapes: [Shape]) -> Shape? {
        shapes.last { $0.first <= sequence && sequence - $0.first < $0.count }
    }

    /// The bytes test frame `sequence` was sent with.
    static func frame(_ sequence: Int, _ shape: Shape?, source: MACAddress) -> [UInt8] {
        TestFrame.bytes(sequence, length: shape?.size ?? TestFrame.length(sequence), source: source, pattern: shape?.pattern)
    }

    /// "a duplicate" or "N lost", for a frame `found` where `expected` was next.
    static func gap(_ found: Int, _ expected: Int) -> String { found < expected ? "a duplicate" : "\(found - expected) lost" }
}

/// Runs the frame commands on the script's rings: `send`, `post`, `receive` and `wait-call`,
/// through the ring's `SplitVirtqueueDriver`. Waiting for the device sleeps on the vring's call
/// eventfd (interrupts enabled and the used ring re-checked first); a device that breaks the
/// ring's protocol makes the command throw, never trap.
struct FrameExecutor {
    let session: ScriptSession

    /// The ring's driver, made on first use (starting at the base given to the device).
    func driver(_ index: VringIndex) throws(ScriptError) -> (RingState, DriverBox) {
        let ring = try session.requireRing(index)
        guard !ring.writtenByHand else {
            throw .invalidValue("vring \(index) was written by hand (desc, avail, avail-idx), so the driver no longer knows its state: lay it out again with `ring` to send or post")
        }
        if let box = ring.driver {
            if let violation = box.driver.broken { throw .brokenRing(index, .violation(violation)) }
            return (ring, box)
        }
        let features = VirtioFeatures(rawValue: session.featureWords.first ?? 0)
        let box = DriverBox(SplitVirtqueueDriver(ring: ring.view, eventIndex: features.contains(.eventIndex), inOrder: features.contains(.inOrder),
                                                 startIndex: UInt16(truncatingIfNeeded: session.vringBases[index] ?? 0)))
        ring.driver = box
        return (ring, box)
    }

    /// The buffer of `head`, at least `length` bytes (a bigger one replaces a smaller).
    func buffer(_ ring: RingState, head: UInt16, length: Int) throws(ScriptError) -> GuestBuffer {
        let slot = Int(head)
        guard slot < ring.buffers.count else { throw .invalidValue("head \(head) is outside the ring of \(ring.size) entries") }
        if let buffer = ring.buffers[slot], buffer.length >= length { return buffer }
        let size = max(length, 2048)
        guard let gpa = try session.requireMemory().allocate(UInt64(size), alignment: 64) else {
            throw .outOfGuestMemory("guest memory has no room for a \(size)-byte buffer: give it more memory")
        }
        // SAFETY: the whole buffer lies in one region of guest memory (checked by `host`), which
        // stays mapped while a device may use it; the allocator hands it to nothing else (a ring
        // a script places over it with `at=` writes only through the ring's view).
        let buffer = GuestBuffer(guestAddress: GuestAddress(gpa), host: try session.host(gpa, length: UInt64(size)), length: size)
        ring.buffers[slot] = buffer
        return buffer
    }

    /// Reaps every used entry, handing each to `each`; a ring violation is a broken ring.
    func reap(_ box: DriverBox, _ index: VringIndex, each: (UsedElement) throws(ScriptError) -> Void = { _ in }) throws(ScriptError) -> Int {
        var count = 0
        while true {
            let element: UsedElement?
            do { element = try box.driver.nextUsed() } catch { throw .brokenRing(index, .violation(error)) }
            guard let element else { return count }
            count += 1
            try each(element)
        }
    }

    func publish(_ box: DriverBox, _ index: VringIndex, frameBytes: Int) {
        session.options.ringObserver?(.published(queue: index.rawValue, chains: Int(box.driver.addedSincePublish), frameBytes: frameBytes))
        if box.driver.publish(), let kick = session.doorbells[index]?[.kick] {
            kick.value.signal()
            session.options.ringObserver?(.kicked(queue: index.rawValue))
        }
    }

    /// Sleeps until the device may have used more of the ring, at most `milliseconds`: on the
    /// vring's call eventfd (after enabling interrupts, which re-checks the used ring), in
    /// slices of 100 ms so a call the device never sends costs only time. Without an eventfd of
    /// the script's there is nothing to wait on, and it sleeps a millisecond.
    func waitForUsed(_ box: DriverBox, _ index: VringIndex, milliseconds: Int32) {
        guard let call = session.doorbells[index]?[.call] else {
            _ = poll(nil, 0, min(milliseconds, 1))
            return
        }
        if box.driver.enableInterrupts() { return }
        _ = call.value.wait(milliseconds: min(milliseconds, 100))
    }

    /// `send`: writes COUNT numbered frames, publishes them, and waits until the device used them.
    func send(queue: Operand, count: Operand, size: Operand?, pattern: Operand?, timeout: Operand) throws(ScriptError) {
        let index = try session.index(queue), count = try session.int(count), timeout = try session.milliseconds(timeout)
        let size = try size.map { o throws(ScriptError) in try session.int(o) }
        let pattern = try pattern.map { o throws(ScriptError) in try RawRingExecutor(session: session).narrow(o, as: UInt8.self) }
        let (ring, box) = try driver(index)
        let header = session.headerLength
        session.ledger.transmitShapes.append(.init(first: session.ledger.transmitSequence, count: count, size: size, pattern: pattern))
        var sent = 0
        var deadline = ContinuousClock.now + .milliseconds(timeout)
        while sent < count || box.driver.inFlight > 0 {
            if try reap(box, index) > 0 { deadline = ContinuousClock.now + .milliseconds(timeout) }
            var added = 0, addedBytes = 0
            while sent < count, let head = box.driver.nextFreeHead {
                let sequence = session.ledger.transmitSequence
                let length = size ?? TestFrame.length(sequence)
                let buffer = try buffer(ring, head: head, length: header + length)
                // SAFETY: head `head` is free, so the device does not read its buffer until the
                // avail entry naming it is published (a release store, after these writes); the
                // buffer lies in guest memory this runner keeps mapped, `header + length` long.
                memset(buffer.host, 0, header)
                TestFrame.write(sequence, length: length, pattern: pattern, into: UnsafeMutableRawBufferPointer(start: buffer.host + header, count: buffer.length - header))
                guard box.driver.add(BufferSegment(address: buffer.guestAddress.rawValue, length: UInt32(truncatingIfNeeded: header + length), deviceWritable: false)) != nil else { break }
                session.ledger.transmitSequence += 1
                sent += 1
                added += 1
                addedBytes += length
            }
            if added > 0 { publish(box, index, frameBytes: addedBytes) }
            if sent == count && box.driver.inFlight == 0 { break }
            let left = ContinuousClock.now.duration(to: deadline).inMilliseconds
            guard left > 0 else {
                throw .timeout("the device used \(sent - box.driver.inFlight) of \(count) frames on vring \(index) and then nothing for \(timeout) ms (\(box.driver.inFlight) in flight); is a backend attached and the kick eventfd set?")
            }
            waitForUsed(box, index, milliseconds: Int32(clamping: left))
        }
    }

    /// `post`: makes up to COUNT receive buffers available (as many as are free).
    func post(queue: Operand, count: Operand, size: Operand) throws(ScriptError) {
        let index = try session.index(queue), count = try session.int(count), size = try session.int(size)
        let header = session.headerLength
        guard size >= header + 14 else { throw .invalidValue("a receive buffer of \(size) bytes: give \(header + 14) (a header and an Ethernet header) to 1 MiB") }
        let (ring, box) = try driver(index)
        // As many as fit: the rest would wait for `receive` to free descriptors.
        let fitting = min(count, box.driver.freeCount)
        var posted = 0
        while posted < fitting, let head = box.driver.nextFreeHead {
            let buffer = try buffer(ring, head: head, length: size)
            guard box.driver.add(BufferSegment(address: buffer.guestAddress.rawValue, length: UInt32(truncatingIfNeeded: size), deviceWritable: true)) != nil else { break }
            posted += 1
        }
        if posted < count { session.output("  \(posted) of \(count) buffers posted: vring \(index) has no more free descriptors until frames are received") }
        if posted > 0 { publish(box, index, frameBytes: posted * (size - header)) }
    }

    /// `receive`: waits for COUNT frames the host sent, in order and intact; skips other traffic.
    func receive(queue: Operand, count: Operand, timeout: Operand) throws(ScriptError) -> ScriptValue {
        let index = try session.index(queue), count = try session.int(count), timeout = try session.milliseconds(timeout)
        let (ring, box) = try driver(index)
        let header = session.headerLength
        var received = 0, other = 0
        var deadline = ContinuousClock.now + .milliseconds(timeout)
        while received < count {
            let reaped = try reap(box, index) { element throws(ScriptError) in
                guard element.id < UInt32(ring.size), let buffer = ring.buffers[Int(element.id)] else { throw .brokenRing(index, .headWithoutBuffer(element.id)) }
                let length = min(Int(element.length), buffer.length)
                guard length >= header else { other += 1; return }
                // SAFETY: the device wrote this buffer and returned it through the used ring (an
                // acquire load of used->idx); it lies in mapped guest memory, and the length is
                // capped at the buffer's.
                let frame = Array(UnsafeRawBufferPointer(start: buffer.host + header, count: length - header))
                guard frame.count >= TestFrame.minimumLength, MACAddress(frame[6..<12]) == ScriptRunner.hostMAC, let sequence = TestFrame.sequence(of: frame) else {
                    other += 1; return
                }
                let expected = session.ledger.receiveSequence
                guard sequence == Int(UInt32(truncatingIfNeeded: expected)) else {
                    throw .frameMismatch("vring \(index) received host frame \(sequence) where \(expected) was next (\(FrameLedger.gap(sequence, expected)))")
                }
                let shape = FrameLedger.shape(of: expected, in: session.ledger.hostShapes)
                guard frame == FrameLedger.frame(expected, shape, source: ScriptRunner.hostMAC) else {
                    throw .frameMismatch("host frame \(expected) arrived corrupt on vring \(index) (\(frame.count) bytes)")
                }
                session.ledger.receiveSequence += 1
                received += 1
            }
            if reaped > 0 { deadline = ContinuousClock.now + .milliseconds(timeout); continue }
            let left = ContinuousClock.now.duration(to: deadline).inMilliseconds
            guard left > 0 else {
                throw .timeout("vring \(index) received \(received) of \(count) host frames in \(timeout) ms (\(other) other frames); are buffers posted and the backend attached?")
            }
            waitForUsed(box, index, milliseconds: Int32(clamping: left))
        }
        if other > 0 { session.output("  (\(other) other frames from the host stack skipped)") }
        return .number(UInt64(received))
    }

    /// `wait-call`: waits for the vring's call eventfd; answers its count.
    func waitCall(queue: Operand, timeout: Operand) throws(ScriptError) -> ScriptValue {
        let index = try session.index(queue), timeout = try session.milliseconds(timeout)
        let call = try session.doorbell(index, .call)
        guard let count = call.value.wait(milliseconds: timeout) else { throw .timeout("no call on vring \(index) in \(timeout) ms") }
        return .number(count)
    }
}
