import Testing
@testable import Virtio

@Suite("Split virtqueue: driver against the device model")
struct SplitVirtqueueTests {
    @Test("layout sizes and offsets follow virtio 1.x §2.7")
    func layout() {
        #expect(SplitRingLayout.descriptorTableSize(queueSize: 256) == 4096)
        #expect(SplitRingLayout.availRingSize(queueSize: 256) == 4 + 512 + 2)
        #expect(SplitRingLayout.usedRingSize(queueSize: 256) == 4 + 2048 + 2)
        let o = SplitRingLayout.offsets(queueSize: 8)
        #expect(o.descriptors == 0 && o.avail == 128 && o.used == 152 && o.used % 4 == 0)
        #expect(SplitRingLayout.isValidQueueSize(32768) && !SplitRingLayout.isValidQueueSize(65536))
        #expect(!SplitRingLayout.isValidQueueSize(3) && !SplitRingLayout.isValidQueueSize(0))
    }

    @Test("a chain travels driver → device → driver, lengths and data intact", arguments: [false, true])
    func roundTrip(eventIndex: Bool) throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: eventIndex)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .receive, eventIndex: eventIndex, translate: memory.translate)
        let added = driver.add([
            BufferSegment(address: memory.bufferAddress(0), length: 12, deviceWritable: true),
            BufferSegment(address: memory.bufferAddress(64), length: 1500, deviceWritable: true),
        ])
        let head = try #require(added)
        #expect(driver.freeCount == 6)
        let early = try device.pop()
        #expect(early == nil, "nothing is visible before publish")
        let kick = driver.publish()
        #expect(kick, "a fresh device wants the first kick")
        let popped = try device.pop()
        let chain = try #require(popped)
        #expect(chain.head == head && chain.writable.count == 2 && chain.writableLength == 1512)
        chain.writable[1].0.storeBytes(of: 0xAB, as: UInt8.self)
        device.push(head: chain.head, length: 100)
        let signal = device.shouldSignal()
        #expect(signal)
        let reaped = try driver.nextUsed()
        #expect(reaped == UsedElement(id: UInt32(head), length: 100))
        let none = try driver.nextUsed()
        #expect(driver.freeCount == 8 && none == nil)
        #expect(memory.block.load(fromByteOffset: memory.buffersOffset + 64, as: UInt8.self) == 0xAB)
    }

    @Test("indices wrap past 65535 on a small ring, and both sides agree on every step")
    func wraparound() throws {
        let memory = TestRingMemory(queueSize: 4)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: true)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: true, translate: memory.translate)
        let total = 70_000
        var completed = 0
        var sent = 0
        while completed < total {
            while sent < total, driver.nextFreeHead != nil {
                _ = driver.add(CollectionOfOne(BufferSegment(address: memory.bufferAddress(sent % 4 * 64), length: 60, deviceWritable: false)))
                sent += 1
            }
            _ = driver.publish()
            while let chain = try device.pop() {
                #expect(chain.readableLength == 60)
                device.push(head: chain.head, length: 0)
            }
            #expect(device.lastAvailIndex == driver.availIndexShadow, "device and driver disagree on avail")
            while try driver.nextUsed() != nil { completed += 1 }
            #expect(driver.lastUsedIndex == device.lastUsedIndex)
        }
        #expect(driver.availIndexShadow == UInt16(truncatingIfNeeded: total))
        #expect(memory.ring.usedIndex.pointee.load(ordering: .acquiring) == UInt16(truncatingIfNeeded: total))
        #expect(driver.freeCount == 4)
    }

    @Test("a driver started at base 65530 crosses zero cleanly")
    func startNearWrap() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false, startIndex: 65530)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, base: 65530, translate: memory.translate)
        for round in 0..<4 {
            for _ in 0..<8 { _ = driver.add(CollectionOfOne(BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false))) }
            _ = driver.publish()
            var popped = 0
            while let chain = try device.pop() { device.push(head: chain.head, length: 0); popped += 1 }
            #expect(popped == 8, "round \(round)")
            var reaped = 0
            while try driver.nextUsed() != nil { reaped += 1 }
            #expect(reaped == 8)
        }
        #expect(driver.availIndexShadow == 65530 &+ 32)
    }

    @Test("IN_ORDER: one used entry completes a batch, and the index advances by the batch (vhost_add_used_in_order)")
    func inOrderBatch() throws {
        let memory = TestRingMemory(queueSize: 8)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false, inOrder: true)
        let segment = BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false)
        var heads: [UInt16] = []
        for _ in 0..<5 { let h = driver.add(CollectionOfOne(segment)); heads.append(try #require(h)) }
        _ = driver.publish()
        // The device completes the first three with one element (id of the third) in slot 0,
        // then the next two with one element in slot 3.
        memory.ring.setUsedEntry(0, UsedElement(id: UInt32(heads[2]), length: 0))
        memory.ring.setUsedEntry(3, UsedElement(id: UInt32(heads[4]), length: 0))
        memory.ring.usedIndex.pointee.store(5, ordering: .releasing)
        let first = try driver.nextUsed()
        #expect(first?.id == UInt32(heads[2]) && driver.lastBatch == Array(heads[0..<3]) && driver.lastUsedIndex == 3)
        let second = try driver.nextUsed()
        #expect(second?.id == UInt32(heads[4]) && driver.lastBatch == Array(heads[3..<5]) && driver.lastUsedIndex == 5)
        let none = try driver.nextUsed()
        #expect(none == nil && driver.freeCount == 8 && driver.completedInBatch == 3)
        // Descriptors are used in ring order (virtio 1.x §2.7.5), wrapping at the table's end.
        #expect(heads == [0, 1, 2, 3, 4])
        var next: [UInt16] = []
        for _ in 0..<5 { let h = driver.add(CollectionOfOne(segment)); next.append(try #require(h)) }
        #expect(next == [5, 6, 7, 0, 1])
    }

    @Test("indirect tables are walked by the device and use one ring slot")
    func indirect() throws {
        let memory = TestRingMemory(queueSize: 4)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: false, translate: memory.translate)
        let tableOffset = 4096
        let segments = (0..<6).map { BufferSegment(address: memory.bufferAddress($0 * 100), length: 100, deviceWritable: false) }
        let head = driver.addIndirect(segments, table: memory.block + memory.buffersOffset + tableOffset, tableAddress: memory.bufferAddress(tableOffset))
        #expect(head != nil)
        #expect(driver.freeCount == 3)
        _ = driver.publish()
        let popped = try device.pop()
        let chain = try #require(popped)
        #expect(chain.readable.count == 6 && chain.readableLength == 600)
    }

    @Test("notification suppression: NO_NOTIFY and avail_event stop kicks, re-enable is race-free")
    func kickSuppression() throws {
        for eventIndex in [false, true] {
            let memory = TestRingMemory(queueSize: 8)
            var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: eventIndex)
            var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: eventIndex, translate: memory.translate)
            let segment = BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false)
            let idleAtStart = device.enableNotify()
            #expect(idleAtStart == false)
            _ = driver.add(CollectionOfOne(segment))
            let first = driver.publish()
            #expect(first, "kick wanted (eventIndex \(eventIndex))")
            device.disableNotify()
            _ = try device.pop()
            // While the device is processing, with EVENT_IDX avail_event still points at 0,
            // so a second publish does not cross it.
            _ = driver.add(CollectionOfOne(segment))
            let second = driver.publish()
            #expect(!second, "no kick while the device polls (eventIndex \(eventIndex))")
            // The device re-enables and sees the entry that arrived meanwhile.
            let pendingAfterReenable = device.enableNotify()
            #expect(pendingAfterReenable, "enableNotify must report the pending entry")
            device.disableNotify() // net.c handle_tx: "vhost_disable_notify(&net->dev, vq); continue;"
            _ = try device.pop()
            let idleAgain = device.enableNotify()
            #expect(idleAgain == false)
            _ = driver.add(CollectionOfOne(segment))
            let third = driver.publish()
            #expect(third, "kick wanted again after re-enable (eventIndex \(eventIndex))")
        }
    }

    @Test("interrupt suppression: NO_INTERRUPT and used_event; enableInterrupts reports pending work")
    func interruptSuppression() throws {
        for eventIndex in [false, true] {
            let memory = TestRingMemory(queueSize: 8)
            var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: eventIndex)
            var device = SplitVirtqueueDevice(ring: memory.ring, direction: .transmit, eventIndex: eventIndex, translate: memory.translate)
            let segment = BufferSegment(address: memory.bufferAddress(0), length: 10, deviceWritable: false)
            for _ in 0..<3 { _ = driver.add(CollectionOfOne(segment)) }
            _ = driver.publish()
            driver.disableInterrupts()
            let firstPopped = try device.pop()
            let first = try #require(firstPopped)
            device.push(head: first.head, length: 0)
            if eventIndex { _ = device.shouldSignal() } // the first signal is always sent
            let secondPopped = try device.pop()
            let second = try #require(secondPopped)
            device.push(head: second.head, length: 0)
            let suppressed = !device.shouldSignal()
            #expect(suppressed, "suppressed (eventIndex \(eventIndex))")
            let pending = driver.enableInterrupts()
            #expect(pending, "work arrived while interrupts were off")
            while try driver.nextUsed() != nil {}
            let idle = driver.enableInterrupts()
            #expect(!idle)
            let thirdPopped = try device.pop()
            let third = try #require(thirdPopped)
            device.push(head: third.head, length: 0)
            let reenabled = device.shouldSignal()
            #expect(reenabled, "re-enabled (eventIndex \(eventIndex))")
        }
    }
}

@Suite("Device model enforces the kernel's vq_err rules")
struct DeviceModelRuleTests {
    typealias RingError = SplitVirtqueueDevice.RingError

    func setUp(_ queueSize: UInt16 = 8) -> TestRingMemory {
        let memory = TestRingMemory(queueSize: queueSize)
        _ = SplitVirtqueueDriver(ring: memory.ring, eventIndex: false)
        return memory
    }

    func makeDevice(_ memory: TestRingMemory, direction: SplitVirtqueueDevice.Direction = .transmit) -> SplitVirtqueueDevice {
        SplitVirtqueueDevice(ring: memory.ring, direction: direction, eventIndex: false, translate: memory.translate)
    }

    func expectError(_ expected: RingError, _ device: inout SplitVirtqueueDevice) {
        #expect(throws: expected) { _ = try device.pop() }
        let stopped = device.stopped
        #expect(stopped, "the queue stops after an error")
        let again = try? device.pop()
        #expect(again == nil, "and stays stopped")
        device.kick()
        let kicked = device.stopped
        #expect(!kicked, "until the next kick")
    }

    @Test func availIndexMovedTooFar() {
        let memory = setUp()
        var device = makeDevice(memory)
        memory.ring.availIndex.pointee.store(9, ordering: .releasing)
        expectError(.availIndexMovedTooFar(from: 0, to: 9), &device)
    }

    @Test func headOutOfRange() {
        let memory = setUp()
        var device = makeDevice(memory)
        memory.ring.setAvailEntry(0, head: 8)
        memory.ring.availIndex.pointee.store(1, ordering: .releasing)
        expectError(.headOutOfRange(8), &device)
    }

    @Test func loopInChain() {
        let memory = setUp()
        var device = makeDevice(memory)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 1, flags: [.next], next: 1))
        memory.ring.setDescriptor(1, Descriptor(address: memory.bufferAddress(0), length: 1, flags: [.next], next: 0))
        memory.ring.setAvailEntry(0, head: 0)
        memory.ring.availIndex.pointee.store(1, ordering: .releasing)
        expectError(.loop(head: 0), &device)
    }

    @Test func addressOutsideTheTable() {
        let memory = setUp()
        var device = makeDevice(memory)
        memory.ring.setDescriptor(0, Descriptor(address: 0x1000, length: 64, flags: [], next: 0))
        memory.ring.availIndex.pointee.store(1, ordering: .releasing)
        expectError(.addressNotMapped(address: 0x1000, length: 64), &device)
    }

    @Test func writableOnTransmitAndReadableOnReceive() {
        let memory = setUp()
        var device = makeDevice(memory)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 64, flags: [.write], next: 0))
        memory.ring.availIndex.pointee.store(1, ordering: .releasing)
        expectError(.writableOnTransmit, &device)
        let rxMemory = setUp()
        var rxDevice = makeDevice(rxMemory, direction: .receive)
        rxMemory.ring.setDescriptor(0, Descriptor(address: rxMemory.bufferAddress(0), length: 64, flags: [], next: 0))
        rxMemory.ring.availIndex.pointee.store(1, ordering: .releasing)
        expectError(.readableOnReceive, &rxDevice)
        _ = rxMemory
    }

    @Test func readableAfterWritable() {
        let memory = setUp()
        var device = makeDevice(memory, direction: .receive)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 64, flags: [.write, .next], next: 1))
        memory.ring.setDescriptor(1, Descriptor(address: memory.bufferAddress(64), length: 64, flags: [], next: 0))
        memory.ring.availIndex.pointee.store(1, ordering: .releasing)
        expectError(.readableAfterWritable, &device)
    }

    @Test func indirectRules() {
        let memory = setUp()
        var device = makeDevice(memory)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 24, flags: [.indirect], next: 0))
        memory.ring.availIndex.pointee.store(1, ordering: .releasing)
        expectError(.indirectLengthNotMultipleOf16(24), &device)
        // A nested indirect descriptor inside the table.
        let table = memory.block + memory.buffersOffset
        table.storeBytes(of: memory.bufferAddress(512).littleEndian, as: UInt64.self)
        table.storeBytes(of: UInt32(16).littleEndian, toByteOffset: 8, as: UInt32.self)
        table.storeBytes(of: DescriptorFlags.indirect.rawValue.littleEndian, toByteOffset: 12, as: UInt16.self)
        memory.ring.setDescriptor(0, Descriptor(address: memory.bufferAddress(0), length: 16, flags: [.indirect], next: 0))
        expectError(.nestedIndirect, &device)
    }
}
