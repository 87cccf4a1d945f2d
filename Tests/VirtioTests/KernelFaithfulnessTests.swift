import Synchronization
import Testing
@testable import Virtio

/// Stores one descriptor in an indirect table at `table` entry `index`.
private func storeTableEntry(_ table: UnsafeMutableRawPointer, _ index: Int, _ d: Descriptor) {
    let base = table + index * SplitRingLayout.descriptorSize
    base.storeBytes(of: d.address.littleEndian, as: UInt64.self)
    base.storeBytes(of: d.length.littleEndian, toByteOffset: 8, as: UInt32.self)
    base.storeBytes(of: d.flags.rawValue.littleEndian, toByteOffset: 12, as: UInt16.self)
    base.storeBytes(of: d.next.littleEndian, toByteOffset: 14, as: UInt16.self)
}

/// `#require` for an expression on a `~Copyable` value (the macro cannot take those apart).
private func required<T>(_ value: T?, sourceLocation: SourceLocation = #_sourceLocation) throws -> T {
    try #require(value, sourceLocation: sourceLocation)
}

/// Makes `heads` available as the driver would (avail entries, then avail->idx).
private func makeAvailable(_ memory: TestRingMemory, _ heads: [UInt16], from start: UInt16 = 0) {
    for (i, head) in heads.enumerated() { memory.ring.setAvailEntry(start &+ UInt16(i), head: head) }
    memory.ring.availIndex.pointee.store(start &+ UInt16(heads.count), ordering: .releasing)
}

@Suite("Driver: a device that breaks the protocol is a RingViolation, not a crash (virtio_ring.c BAD_RING)")
struct DriverViolationTests {
    let readable = { (memory: TestRingMemory) in BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false) }

    /// Expects `nextUsed` to throw, the driver to stay broken with the same violation, and
    /// nothing to have been freed or reaped.
    func expectBroken(_ driver: inout SplitVirtqueueDriver, reason: String) {
        let freeBefore = driver.freeCount
        let usedBefore = driver.lastUsedIndex
        var first: RingViolation?
        do {
            let element = try driver.nextUsed()
            Issue.record("nextUsed returned \(String(describing: element)) instead of a violation")
        } catch {
            first = error
        }
        #expect(first?.reason == reason)
        #expect(first?.description == "\(reason); \(first?.ringState ?? "")")
        #expect(first?.ringState.hasPrefix("used->idx ") == true, "the dump names both indices: \(first?.ringState ?? "")")
        let broken = driver.broken
        #expect(broken != nil && broken == first, "the driver stays broken")
        var again: RingViolation?
        do { _ = try driver.nextUsed() } catch { again = error }
        #expect(again == first, "every later nextUsed throws the same violation")
        let hasUsed = driver.hasUsed()
        #expect(hasUsed, "hasUsed stays true so a poller reaps and sees the violation")
        let freeAfter = driver.freeCount
        let usedAfter = driver.lastUsedIndex
        #expect(freeAfter == freeBefore && usedAfter == usedBefore, "nothing is freed or reaped on a violation")
    }

    @Test("a used id that is not in flight: RingViolation, and the driver stays broken")
    func idNotInFlight() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        let head = try required(driver.add(CollectionOfOne(readable(memory))))
        _ = driver.publish()
        #expect(head != 5)
        memory.ring.setUsedEntry(0, UsedElement(id: 5, length: 0))
        memory.ring.usedIndex.pointee.store(1, ordering: .releasing)
        expectBroken(&driver, reason: "used id 5 at used index 0 is not in flight")
    }

    @Test("a used id ≥ the queue size (virtio_ring.c \"id %u out of range\")")
    func idOutOfRange() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: true)
        _ = driver.add(CollectionOfOne(readable(memory)))
        _ = driver.publish()
        memory.ring.setUsedEntry(0, UsedElement(id: 8, length: 0))
        memory.ring.usedIndex.pointee.store(1, ordering: .releasing)
        expectBroken(&driver, reason: "used id 8 at used index 0 is out of range (queue size 8)")
    }

    @Test("a chain already reaped is not in flight any more")
    func idReapedTwice() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        let a = try required(driver.add(CollectionOfOne(readable(memory))))
        _ = driver.add(CollectionOfOne(readable(memory)))
        _ = driver.publish()
        memory.ring.setUsedEntry(0, UsedElement(id: UInt32(a), length: 0))
        memory.ring.setUsedEntry(1, UsedElement(id: UInt32(a), length: 0))
        memory.ring.usedIndex.pointee.store(2, ordering: .releasing)
        let first = try driver.nextUsed()
        #expect(first?.id == UInt32(a))
        expectBroken(&driver, reason: "used id \(a) at used index 1 is not in flight")
    }

    @Test("used->idx ahead of the chains made available")
    func usedIndexAhead() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false, startIndex: 65535)
        let head = try required(driver.add(CollectionOfOne(readable(memory))))
        _ = driver.publish()
        memory.ring.setUsedEntry(65535, UsedElement(id: UInt32(head), length: 0))
        memory.ring.usedIndex.pointee.store(1, ordering: .releasing)   // 65535 → 1: two entries
        expectBroken(&driver, reason: "used->idx 1 is 2 entries past used index 65535, but only 1 chains are available to the device")
    }

    @Test("a chain added but not yet published cannot be used")
    func unpublishedChain() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        _ = driver.add(CollectionOfOne(readable(memory)))
        _ = driver.publish()
        let hidden = try required(driver.add(CollectionOfOne(readable(memory))))
        memory.ring.setUsedEntry(0, UsedElement(id: UInt32(hidden), length: 0))
        memory.ring.usedIndex.pointee.store(1, ordering: .releasing)
        expectBroken(&driver, reason: "used id \(hidden) at used index 0 was added but never published")
    }

    @Test("IN_ORDER: an id not among the chains in flight, and a batch longer than used->idx moved")
    func inOrderViolations() throws {
        for (id, usedIndex, reason) in [
            (UInt32(5), UInt16(1), "IN_ORDER: used id 5 at used index 0 is not among the chains in flight"),
            (UInt32(2), UInt16(1), "IN_ORDER: used id 2 at used index 0 completes 3 chains, but used->idx is only 1 ahead"),
        ] {
            let memory = TestRingMemory(queueSize: 8)
            var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false, inOrder: true)
            for _ in 0..<3 { _ = driver.add(CollectionOfOne(readable(memory))) }
            _ = driver.publish()
            memory.ring.setUsedEntry(0, UsedElement(id: id, length: 0))
            memory.ring.usedIndex.pointee.store(usedIndex, ordering: .releasing)
            expectBroken(&driver, reason: reason)
            let batch = driver.lastBatch
            #expect(batch.isEmpty, "no chain was completed")
        }
    }
}

@Suite("Device model: faithful to vhost.c and net.c")
struct DeviceFaithfulnessTests {
    typealias RingError = SplitVirtqueueDevice.RingError

    /// A reset ring with nothing published, and a device on it.
    func fresh(_ queueSize: UInt16 = 8) -> TestRingMemory {
        let memory = TestRingMemory(queueSize: queueSize)
        memory.ring.reset()
        return memory
    }

    // MARK: indirect tables (vhost.c get_indirect)

    @Test("an indirect table is read in order: the next fields only say whether the walk goes on")
    func indirectScrambledNext() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        let table = memory.block + memory.buffersOffset + 4096
        // next fields point backwards and out of the table; only the NEXT flags count.
        let nexts: [UInt16] = [3, 0, 1, 7]
        for i in 0..<4 {
            storeTableEntry(table, i, Descriptor(address: memory.bufferAddress(i * 100), length: UInt32(10 + i),
                                                 flags: i < 3 ? [.next] : [], next: nexts[i]))
        }
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(4096), length: 64, flags: [.indirect], next: 0))
        makeAvailable(memory, [0])
        let popped = try device.pop()
        let chain = try #require(popped)
        #expect(chain.readable.map(\.pointer) == (0..<4).map { memory.translate(memory.bufferAddress($0 * 100), 1)! })
        #expect(chain.readable.map(\.length) == [10, 11, 12, 13])
        #expect(chain.descriptorCount == 1)

        // Entry 0 says next = 2, but the walk reads entry 1 and stops there (no NEXT).
        storeTableEntry(table, 0, Descriptor(address: memory.bufferAddress(0), length: 10, flags: [.next], next: 2))
        storeTableEntry(table, 1, Descriptor(address: memory.bufferAddress(100), length: 11, flags: [], next: 0))
        makeAvailable(memory, [0], from: 1)
        let second = try required(try device.pop())
        #expect(second.readable.map(\.length) == [10, 11])
    }

    @Test("more than len/16 entries is a loop, also for a zero-length table; nothing is consumed")
    func indirectLoop() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        let table = memory.block + memory.buffersOffset + 4096
        for i in 0..<3 {
            storeTableEntry(table, i, Descriptor(address: memory.bufferAddress(0), length: 1, flags: [.next], next: UInt16(i + 1)))
        }
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(4096), length: 48, flags: [.indirect], next: 0))
        makeAvailable(memory, [0])
        #expect(throws: RingError.loop(head: 0)) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 0)
        device.kick()
        memory.ring.setDescriptor(0, Descriptor(address: 0xdead_0000, length: 0, flags: [.indirect], next: 0))
        #expect(throws: RingError.loop(head: 0)) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 0)
    }

    @Test("an indirect table of more than 65536 entries is too big (checked after translation)")
    func indirectTooLarge() throws {
        let memory = fresh()
        let block = memory.block
        nonisolated(unsafe) let anywhere = block
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false) { _, _ in anywhere }
        let length = UInt32(65537 * 16)
        memory.ring.setDescriptor(0, Descriptor(address: 0x1000, length: length, flags: [.indirect], next: 0))
        makeAvailable(memory, [0])
        #expect(throws: RingError.indirectTooLarge(length)) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 0)
    }

    @Test("a chain needing more than UIO_MAXIOV segments: ENOBUFS, not consumed")
    func tooManySegments() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        let entries = SplitVirtqueueDevice.maximumSegments + 1
        let table = memory.block + memory.buffersOffset + 20000
        for i in 0..<entries {
            storeTableEntry(table, i, Descriptor(address: memory.bufferAddress(i), length: 1, flags: i < entries - 1 ? [.next] : [], next: 0))
        }
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(20000), length: UInt32(entries * 16), flags: [.indirect], next: 0))
        makeAvailable(memory, [0])
        #expect(throws: RingError.tooManySegments) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 0 && device.lastError == .tooManySegments)
    }

    @Test("a zero-length descriptor makes no segment and is not translated; a zero-length writable one does not trip out-after-in")
    func zeroLengthDescriptors() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 10, flags: [.next], next: 1))
        memory.ring.setDescriptor(1, Descriptor(address: 0xdead_0000, length: 0, flags: [.next], next: 2))
        memory.ring.setDescriptor(2, Descriptor(address: memory.bufferAddress(64), length: 20, flags: [], next: 0))
        // translate_desc gives no iovec for len 0, so in_num stays 0 and the readable one after is fine.
        memory.ring.setDescriptor(3, Descriptor(address: memory.bufferAddress(0), length: 0, flags: [.write, .next], next: 4))
        memory.ring.setDescriptor(4, Descriptor(address: memory.bufferAddress(0), length: 30, flags: [], next: 0))
        makeAvailable(memory, [0, 3])
        let first = try required(try device.pop())
        #expect(first.readable.map(\.length) == [10, 20] && first.descriptorCount == 3)
        let second = try required(try device.pop())
        #expect(second.readable.map(\.length) == [30] && second.writable.isEmpty)
    }

    // MARK: what is consumed (vhost.c errors vs net.c checks)

    @Test("TX: a writable descriptor is consumed with no used entry (get_tx_bufs), and the queue goes on after a kick")
    func transmitWritableConsumed() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        let bad = try required(driver.add([
            BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false),
            BufferSegment(address: memory.bufferAddress(64), length: 10, deviceWritable: true),
        ]))
        let good = try required(driver.add(CollectionOfOne(BufferSegment(address: memory.bufferAddress(128), length: 10, deviceWritable: false))))
        _ = driver.publish()
        var thrown: RingError?
        do { _ = try device.pop() } catch { thrown = error }
        #expect(thrown == .writableOnTransmit && thrown?.consumesChain == true)
        #expect(device.lastAvailIndex == 1, "vhost_get_vq_desc had advanced last_avail_idx")
        #expect(memory.ring.usedIndex.pointee.load(ordering: .acquiring) == 0, "no used entry")
        let stopped = device.stopped
        #expect(stopped)
        let whileStopped = try device.pop()
        #expect(whileStopped == nil)
        device.kick()
        let next = try required(try device.pop())
        #expect(next.head == good)
        device.push(head: next.head, length: 0)
        let reaped = try driver.nextUsed()
        #expect(reaped?.id == UInt32(good))
        let none = try driver.nextUsed()
        #expect(none == nil && driver.inFlight == 2, "the consumed chain's two descriptors stay with the device for good (head \(bad))")
    }

    @Test("TX: writable then readable fails inside vhost_get_vq_desc (\"out after in\") and is not consumed")
    func transmitOutAfterInNotConsumed() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 10, flags: [.write, .next], next: 1))
        memory.ring.setDescriptor(1, Descriptor(address: memory.bufferAddress(64), length: 10, flags: [], next: 0))
        makeAvailable(memory, [0])
        var thrown: RingError?
        do { _ = try device.pop() } catch { thrown = error }
        #expect(thrown == .readableAfterWritable && thrown?.consumesChain == false)
        #expect(device.lastAvailIndex == 0)
    }

    @Test("TX: nothing after vhost's own header (\"Unexpected header len for TX\") is consumed")
    func transmitNoPayload() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, vhostHeaderLength: 12, translate: memory.translate)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 12, flags: [], next: 0))
        memory.ring.setDescriptor(1, Descriptor(address: memory.bufferAddress(0), length: 13, flags: [], next: 0))
        makeAvailable(memory, [0, 1])
        #expect(throws: RingError.noPayloadOnTransmit(length: 12)) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 1)
        device.kick()
        let chain = try required(try device.pop())
        #expect(chain.head == 1)
    }

    @Test("head ≥ num is not consumed: the same slot fails again after a kick, and is read again once fixed")
    func headOutOfRangeNotConsumed() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        memory.ring.setDescriptor(3, Descriptor(address: memory.bufferAddress(0), length: 10, flags: [], next: 0))
        makeAvailable(memory, [8])
        #expect(throws: RingError.headOutOfRange(8)) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 0 && device.cachedAvailIndex == 1)
        device.kick()
        #expect(throws: RingError.headOutOfRange(8)) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 0)
        memory.ring.setAvailEntry(0, head: 3)
        device.kick()
        let chain = try required(try device.pop())
        #expect(chain.head == 3 && device.lastAvailIndex == 1)
    }

    @Test("next ≥ num (\"Desc index is %u > %u\") is not consumed")
    func nextOutOfRangeNotConsumed() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 10, flags: [.next], next: 8))
        makeAvailable(memory, [0])
        #expect(throws: RingError.nextOutOfRange(8)) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 0)
    }

    @Test("RX: a readable descriptor, or no writable byte, is consumed (get_rx_bufs)")
    func receiveReadableConsumed() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .receive, eventIndex: false, translate: memory.translate)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 64, flags: [], next: 0))
        memory.ring.setDescriptor(1, Descriptor(address: memory.bufferAddress(0), length: 0, flags: [.write], next: 0))
        makeAvailable(memory, [0, 1])
        #expect(throws: RingError.readableOnReceive) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 1)
        device.kick()
        #expect(throws: RingError.readableOnReceive) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 2)
    }

    @Test("RX: get_rx_bufs rolls back by position: after a bad chain the first gathered head's slot is lost and the bad one is read again")
    func receiveRollbackIsPositional() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .receive, eventIndex: false, translate: memory.translate)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 100, flags: [.write], next: 0))   // A
        memory.ring.setDescriptor(1, Descriptor(address: memory.bufferAddress(128), length: 10, flags: [], next: 0))      // B: readable
        memory.ring.setDescriptor(2, Descriptor(address: memory.bufferAddress(256), length: 100, flags: [.write], next: 0)) // C
        makeAvailable(memory, [0, 1, 2])
        #expect(throws: RingError.readableOnReceive) {
            _ = try device.gatherReceiveBuffers(frameLength: 150, headerLength: 12, mergeable: true)
        }
        // A (slot 0) and B (slot 1) were taken, then vhost_discard_vq_desc(vq, 1): slot 0 is gone.
        #expect(device.lastAvailIndex == 1)
        device.kick()
        #expect(throws: RingError.readableOnReceive) { _ = try device.pop() }
        #expect(device.lastAvailIndex == 2, "B is read again and now consumed")
        device.kick()
        let c = try required(try device.pop())
        #expect(c.head == 2)
    }

    // MARK: the cached avail index

    @Test("avail->idx is cached: re-read only when last_avail_idx reaches it, and the 'moved too far' check happens then")
    func cachedAvailIndex() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        for i in 0..<2 { memory.ring.setDescriptor(UInt16(i), Descriptor(address: memory.bufferAddress(0), length: 10, flags: [], next: 0)) }
        makeAvailable(memory, [0, 1])
        let first = try required(try device.pop())
        #expect(first.head == 0 && device.cachedAvailIndex == 2)
        memory.ring.availIndex.pointee.store(102, ordering: .releasing)   // bogus, but not read yet
        let second = try required(try device.pop())
        #expect(second.head == 1)
        #expect(throws: RingError.availIndexMovedTooFar(from: 2, to: 102)) { _ = try device.pop() }
        #expect(device.cachedAvailIndex == 2, "6.1.y/6.12/7.x do not cache an invalid index")
        memory.ring.availIndex.pointee.store(2, ordering: .releasing)
        device.kick()
        let none = try device.pop()
        #expect(none == nil)
    }

    @Test("enableNotify: false at once when kicks were on, and an invalid avail->idx is reported and taken as empty")
    func enableNotifyEdges() throws {
        let memory = fresh()
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: true, translate: memory.translate)
        memory.ring.availEvent.pointee.store(77, ordering: .releasing)
        makeAvailable(memory, [0])
        let notDisabled = device.enableNotify()
        #expect(!notDisabled && memory.ring.availEvent.pointee.load(ordering: .acquiring) == 77, "no write when kicks were not disabled")
        device.disableNotify()
        let pending = device.enableNotify()
        #expect(pending && memory.ring.availEvent.pointee.load(ordering: .acquiring) == 0, "avail_event is the cached index")
        device.disableNotify()
        memory.ring.availIndex.pointee.store(50, ordering: .releasing)
        let invalid = device.enableNotify()
        #expect(!invalid && device.lastError == .availIndexMovedTooFar(from: 0, to: 50))
    }

    // MARK: signalling (vhost_notify, __vhost_add_used_n)

    @Test("signalled_used starts invalid, and is invalidated after 65536 pushes without a signal decision")
    func signalledUsedWraps() throws {
        let memory = fresh(4)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: true, translate: memory.translate)
        memory.ring.usedEvent.pointee.store(1000, ordering: .releasing)   // no interrupt wanted near 0
        #expect(device.signalledUsedValid == false, "vhost_vq_init_access")
        device.push(head: 0, length: 0)
        let first = device.shouldSignal()
        #expect(first, "the first decision always signals")
        device.push(head: 0, length: 0)
        let second = device.shouldSignal()
        #expect(!second && device.signalledUsedValid && device.signalledUsed == 2)
        // With new == old after a full round, vring_need_event can never say yes.
        memory.ring.usedEvent.pointee.store(1, ordering: .releasing)
        for _ in 0..<65535 { device.push(head: 0, length: 0) }
        #expect(device.signalledUsedValid == true, "65535 pushes do not reach signalled_used again")
        device.push(head: 0, length: 0)
        #expect(device.signalledUsedValid == false && device.lastUsedIndex == 2, "the 65536th push does")
        let afterWrap = device.shouldSignal()
        #expect(afterWrap, "an invalid signalled_used signals regardless of used_event")

        // A batch that jumps over signalled_used invalidates it too.
        for _ in 0..<65534 { device.push(head: 0, length: 0) }
        #expect(device.signalledUsedValid == true)
        device.push([UsedElement](repeating: UsedElement(id: 0, length: 0), count: 4))
        #expect(device.signalledUsedValid == false)
        _ = device.shouldSignal()
        device.pushInOrder([.init(element: UsedElement(id: 0, length: 0), count: 65535)])
        #expect(device.signalledUsedValid == true, "65535 chains in order do not reach it")
        device.pushInOrder([.init(element: UsedElement(id: 0, length: 0), count: 2)])
        #expect(device.signalledUsedValid == false, "and two more pass it")
    }

    @Test("NOTIFY_ON_EMPTY compares the cached avail index with last_avail_idx, without re-reading")
    func notifyOnEmptyUsesTheCache() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, notifyOnEmpty: true, translate: memory.translate)
        let segment = BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false)
        driver.disableInterrupts()
        _ = driver.add(CollectionOfOne(segment))
        _ = driver.publish()
        _ = try device.pop()
        let empty = device.shouldSignal()
        #expect(empty, "everything the device saw is used")
        _ = driver.add(CollectionOfOne(segment))
        _ = driver.publish()
        let stillEmpty = device.shouldSignal()
        #expect(stillEmpty, "a chain published since the last read does not count")
        for _ in 0..<2 { _ = driver.add(CollectionOfOne(segment)) }
        _ = driver.publish()
        _ = try device.pop()   // re-reads: cache 4, last 2
        let busy = device.shouldSignal()
        #expect(!busy, "with entries the device knows of, NO_INTERRUPT decides")
    }

    // MARK: used entries: batches, MRG_RXBUF, IN_ORDER

    @Test("a batch push wraps past the ring's end and publishes used->idx once (vhost_add_used_n)")
    func batchPushWraps() throws {
        let memory = TestRingMemory(queueSize: 4)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false, startIndex: 3)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, base: 3, translate: memory.translate)
        var heads: [UInt16] = []
        for i in 0..<3 { heads.append(try required(driver.add(CollectionOfOne(BufferSegment(address: memory.bufferAddress(i * 64), length: 10, deviceWritable: false))))) }
        _ = driver.publish()
        var popped: [UInt16] = []
        while let chain = try device.pop() { popped.append(chain.head) }
        #expect(popped == heads)
        device.push(popped.map { UsedElement(id: UInt32($0), length: 0) })
        #expect(memory.ring.usedIndex.pointee.load(ordering: .acquiring) == 6)
        #expect([3, 4, 5].map { memory.ring.usedEntry($0).id } == heads.map(UInt32.init), "slots 3, 0, 1")
        var reaped: [UInt32] = []
        while let element = try driver.nextUsed() { reaped.append(element.id) }
        #expect(reaped == heads.map(UInt32.init) && driver.freeCount == 4)
    }

    @Test("MRG_RXBUF: get_rx_bufs takes as many chains as the packet needs; the last length is the remainder; num_buffers is written at byte 10")
    func mergeableReceive() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .receive, eventIndex: false, translate: memory.translate)
        // The first chain splits its 100 bytes 8 + 92, so num_buffers lands in its second segment.
        let h0 = try required(driver.add([
            BufferSegment(address: memory.bufferAddress(0), length: 8, deviceWritable: true),
            BufferSegment(address: memory.bufferAddress(64), length: 92, deviceWritable: true),
        ]))
        let h1 = try required(driver.add(CollectionOfOne(BufferSegment(address: memory.bufferAddress(256), length: 100, deviceWritable: true))))
        let h2 = try required(driver.add(CollectionOfOne(BufferSegment(address: memory.bufferAddress(512), length: 100, deviceWritable: true))))
        _ = driver.publish()

        // Without MRG_RXBUF one chain must hold it all: overrun, rolled back.
        let overrun = try device.gatherReceiveBuffers(frameLength: 250, headerLength: 12, mergeable: false)
        guard case .overrun = overrun else { Issue.record("expected an overrun, got \(overrun)"); return }
        #expect(device.lastAvailIndex == 0)
        // More than the three chains hold: not enough, rolled back.
        let short = try device.gatherReceiveBuffers(frameLength: 300, headerLength: 12, mergeable: true)
        guard case .notEnoughBuffers = short else { Issue.record("expected notEnoughBuffers, got \(short)"); return }
        #expect(device.lastAvailIndex == 0 && device.cachedAvailIndex == 3)

        // Gathered, then given back as handle_rx does when recvmsg comes up short.
        let firstTry = try device.gatherReceiveBuffers(frameLength: 250, headerLength: 12, mergeable: true)
        guard case .buffers(let given) = firstTry else { Issue.record("expected buffers, got \(firstTry)"); return }
        #expect(device.lastAvailIndex == 3)
        device.discard(given)
        #expect(device.lastAvailIndex == 0)

        let outcome = try device.gatherReceiveBuffers(frameLength: 250, headerLength: 12, mergeable: true)
        guard case .buffers(let buffers) = outcome else { Issue.record("expected buffers, got \(outcome)"); return }
        #expect(buffers.chains.map(\.head) == [h0, h1, h2] && buffers.length == 262 && buffers.headCount == 3)
        #expect(buffers.usedElements == [UsedElement(id: UInt32(h0), length: 100), UsedElement(id: UInt32(h1), length: 100),
                                         UsedElement(id: UInt32(h2), length: 62)])
        let packet = [UInt8](repeating: 0xEE, count: 262)
        let written = packet.withUnsafeBytes { buffers.write($0, at: 0) }
        #expect(written == 262)
        #expect(buffers.writeNumBuffers())
        let base = memory.buffersOffset
        #expect(memory.block.load(fromByteOffset: base + 64 + 2, as: UInt8.self) == 3, "byte 10 is byte 2 of the second segment")
        #expect(memory.block.load(fromByteOffset: base + 64 + 3, as: UInt8.self) == 0)
        #expect(memory.block.load(fromByteOffset: base + 512 + 61, as: UInt8.self) == 0xEE)
        #expect(memory.block.load(fromByteOffset: base + 512 + 62, as: UInt8.self) == 0, "nothing past the packet")
        device.push(received: buffers)
        #expect(memory.ring.usedIndex.pointee.load(ordering: .acquiring) == 3)
        var reaped: [UsedElement] = []
        while let element = try driver.nextUsed() { reaped.append(element) }
        #expect(reaped == buffers.usedElements)
    }

    @Test("IN_ORDER RX (7.x): one used element per packet, id of its last chain, length of what the last buffer holds")
    func inOrderReceive() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false, inOrder: true)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .receive, eventIndex: false, inOrder: true, translate: memory.translate)
        for i in 0..<3 { _ = driver.add(CollectionOfOne(BufferSegment(address: memory.bufferAddress(i * 128), length: 100, deviceWritable: true))) }
        _ = driver.publish()
        let outcome = try device.gatherReceiveBuffers(frameLength: 250, headerLength: 12, mergeable: true)
        guard case .buffers(let buffers) = outcome else { Issue.record("expected buffers, got \(outcome)"); return }
        #expect(buffers.inOrderUsed == .init(element: UsedElement(id: 2, length: 62), count: 3))
        device.push(received: buffers)
        #expect(memory.ring.usedIndex.pointee.load(ordering: .acquiring) == 3)
        #expect(memory.ring.usedEntry(0) == UsedElement(id: 2, length: 62), "in the batch's first slot")
        let element = try driver.nextUsed()
        #expect(element == UsedElement(id: 2, length: 62) && driver.lastBatch == [0, 1, 2] && driver.lastUsedIndex == 3)
    }

    @Test("IN_ORDER (7.x): heads come from next_avail_head, which starts at the base; the avail ring is not read")
    func inOrderHeadsFromNextAvailHead() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false, inOrder: true, startIndex: 65533)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, inOrder: true, base: 65533, translate: memory.translate)
        let two = [BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false),
                   BufferSegment(address: memory.bufferAddress(64), length: 10, deviceWritable: false)]
        let a = try required(driver.add(two))
        let b = try required(driver.add(two))
        let c = try required(driver.add(CollectionOfOne(two[0])))
        #expect([a, b, c] == [5, 7, 1], "the circle starts at the base's slot (65533 & 7) and wraps at the table's end")
        _ = driver.publish()
        for i in 0..<3 { memory.ring.setAvailEntry(65533 &+ UInt16(i), head: 6) }   // ignored with IN_ORDER
        var heads: [UInt16] = []
        while let chain = try device.pop() { heads.append(chain.head) }
        #expect(heads == [a, b, c] && device.nextAvailHead == 65533 &+ 5)
        device.pushInOrder([.init(element: UsedElement(id: UInt32(b), length: 0), count: 2),
                            .init(element: UsedElement(id: UInt32(c), length: 0), count: 1)])
        #expect(memory.ring.usedEntry(65533).id == UInt32(b) && memory.ring.usedEntry(65535).id == UInt32(c), "each batch in its first slot")
        let first = try driver.nextUsed()
        #expect(first?.id == UInt32(b) && driver.lastBatch == [a, b])
        let second = try driver.nextUsed()
        #expect(second?.id == UInt32(c) && driver.lastBatch == [c] && driver.freeCount == 8 && driver.lastUsedIndex == 0)
    }
}
