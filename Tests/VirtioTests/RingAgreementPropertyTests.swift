import PropertyBased
import Testing
@testable import Virtio

/// Random interleavings of everything the driver and the device do to a split ring. After every
/// step the two sides must agree: the device pops exactly the chains the driver published, in
/// order and with the same segments (host addresses and lengths); the driver reaps exactly what
/// the device pushed, with the lengths it wrote; indices and free descriptors add up; the
/// device's verdict on every chain is the kernel's; and neither side can miss a wake-up: a
/// publish after the device went idle kicks, and a push after the driver went to sleep signals.
///
/// Covered: ring sizes 2 to 16; TX, RX and direction-less devices; flags and EVENT_IDX; IN_ORDER
/// (7.x: heads from next_avail_head, one used element per batch); indirect tables; chains mixing
/// readable and writable segments (refused and consumed by TX and RX as net.c does, accepted by a
/// direction-less device); single, batched (vhost_add_used_n) and MRG_RXBUF-style pushes, with
/// get_rx_bufs' gathering and positional rollback; indices starting just below 65535 through
/// the driver's `startIndex` and the device's `base`.
@Suite("Driver and device model agree on every ring state transition")
struct RingAgreementPropertyTests {
    @Test("random operation sequences over sizes, directions, EVENT_IDX, IN_ORDER, indirect tables, batches and the 16-bit wrap")
    func agreement() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...3), Gen.int(in: 0...2), Gen.bool, Gen.bool, Gen.int(in: 0...63),
                            Gen.int(in: 0...Int(Int32.max)).array(of: 1...400)) {
            sizeExponent, mode, eventIndex, inOrder, start, operations in
            let direction: SplitVirtqueueDevice.Direction = [.transmit, .receive, .any][mode]
            // Half the runs start within 63 of the wrap, the others at small bases.
            let startIndex = start % 2 == 0 ? UInt16(start / 2) : 65535 &- UInt16(start / 2)
            Self.run(queueSize: UInt16(2 << sizeExponent), direction: direction, eventIndex: eventIndex,
                     inOrder: inOrder, startIndex: startIndex, operations: operations)
        }
    }

    static func run(queueSize: UInt16, direction: SplitVirtqueueDevice.Direction, eventIndex: Bool, inOrder: Bool,
                    startIndex: UInt16, operations: [Int]) {
        var harness = Harness(queueSize: queueSize, direction: direction, eventIndex: eventIndex, inOrder: inOrder, startIndex: startIndex)
        for r in operations {
            guard harness.step(r) else { return }
        }
    }
}

/// One driver, one device and the test's model of where every chain is.
private struct Harness: ~Copyable {
    /// What the driver put in a chain, and what the kernel must say about it.
    struct Record {
        var segments: [BufferSegment]
        var descriptors: Int
        /// The error net.c reports for it (the chain is consumed without a used entry), or nil.
        var verdict: SplitVirtqueueDevice.RingError?
        var writableLength: Int { segments.filter(\.deviceWritable).reduce(0) { $0 + Int($1.length) } }
    }

    let memory: TestRingMemory
    let queueSize: UInt16
    let direction: SplitVirtqueueDevice.Direction
    let inOrder: Bool
    var driver: SplitVirtqueueDriver
    var device: SplitVirtqueueDevice

    var chains: [UInt16: Record] = [:]                // in flight in the driver, by head
    var unpublished: [UInt16] = []
    var published: [UInt16] = []                     // published, not yet popped (FIFO)
    var popped: [UInt16] = []                        // popped, not yet pushed, in pop order
    var pushed: [UInt16: UInt32] = [:]               // pushed one element per chain, not yet reaped
    var pushedBatches: [(heads: [UInt16], length: UInt32)] = []   // IN_ORDER pushes, not yet reaped
    var lost: Set<UInt16> = []                       // consumed by the device with no used entry
    var deviceIdle = false                           // enableNotify() said nothing pending
    var driverAsleep = false                         // enableInterrupts() said nothing pending
    /// Set when the device last found the ring empty: how many published chains it had seen then.
    var seenWhenEmpty: Int?

    init(queueSize: UInt16, direction: SplitVirtqueueDevice.Direction, eventIndex: Bool, inOrder: Bool, startIndex: UInt16) {
        let memory = TestRingMemory(queueSize: queueSize)
        self.memory = memory
        self.queueSize = queueSize
        self.direction = direction
        self.inOrder = inOrder
        driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: eventIndex, inOrder: inOrder, startIndex: startIndex)
        device = SplitVirtqueueDevice(ring: memory.ring, direction: direction, eventIndex: eventIndex, inOrder: inOrder,
                                      base: startIndex, translate: memory.translate)
    }

    var outstandingUsed: Int { pushed.count + pushedBatches.reduce(0) { $0 + $1.heads.count } }

    /// One operation; false when the run cannot go on.
    mutating func step(_ r: Int) -> Bool {
        switch r % 6 {
        case 0: addChain(r)
        case 1: publish()
        case 2:
            // The device runs, as net.c's handlers do: notifications off, then work. A stopped
            // queue is re-run by the kick that follows the error.
            device.disableNotify()
            deviceIdle = false
            if device.stopped { device.kick() }
            if direction == .receive && (r / 8) % 2 == 0 {
                guard gather(r) else { return false }
            } else {
                guard pop(count: 1 + (r / 16) % 4) else { return false }
            }
        case 3: pushSome(r)
        case 4: guard reap() else { return false }
        default:
            if (r / 8) % 2 == 0 {
                // The device goes idle the race-free way (net.c: vhost_enable_notify after
                // finding the ring empty, and on true vhost_disable_notify and go on).
                guard let seen = seenWhenEmpty, device.notificationsDisabled else { break }
                let pending = device.enableNotify()
                #expect(pending == (published.count > seen), "enableNotify said \(pending) with \(published.count) published, \(seen) seen")
                if pending {
                    device.disableNotify()
                    seenWhenEmpty = nil
                } else {
                    deviceIdle = true
                }
            } else {
                let pending = driver.enableInterrupts()
                #expect(pending == (outstandingUsed > 0), "enableInterrupts said \(pending) with \(outstandingUsed) used entries pending")
                driverAsleep = !pending
            }
        }
        checkInvariants()
        return true
    }

    // MARK: the driver

    mutating func addChain(_ r: Int) {
        let indirect = (r / 4) % 3 == 0
        let count = indirect ? 1 + (r / 8) % 4 : 1 + (r / 8) % 3
        // How many segments are readable; the rest are writable (readable ones come first).
        let malformed = !inOrder && (r / 64) % 8 == 0
        var readable: Int
        var verdict: SplitVirtqueueDevice.RingError?
        switch direction {
        case .transmit:
            readable = count
            if malformed { readable = (r / 512) % count; verdict = .writableOnTransmit }
        case .receive:
            readable = 0
            if malformed { readable = 1 + (r / 512) % count; verdict = .readableOnReceive }
        case .any:
            readable = (r / 512) % (count + 1)
        }
        let segments = (0..<count).map { i in
            BufferSegment(address: memory.bufferAddress((((r >> 3) &+ i * 97) % 240) * 64),
                          length: UInt32(1 + ((r >> 5) + i * 13) % 100), deviceWritable: i >= readable)
        }
        let head: UInt16?
        if indirect {
            // A table per head, in the buffer area past the data.
            if let next = driver.nextFreeHead {
                let offset = 16384 + Int(next) * 4 * SplitRingLayout.descriptorSize
                head = driver.addIndirect(segments, table: memory.block + memory.buffersOffset + offset, tableAddress: memory.bufferAddress(offset))
                #expect(head == next, "addIndirect used \(String(describing: head)), nextFreeHead said \(next)")
            } else {
                head = nil
            }
        } else {
            head = driver.add(segments)
        }
        if let head {
            #expect(chains[head] == nil, "head \(head) handed out twice")
            chains[head] = Record(segments: segments, descriptors: indirect ? 1 : count, verdict: verdict)
            unpublished.append(head)
        } else {
            #expect(driver.freeCount < (indirect ? 1 : count), "add refused with \(driver.freeCount) free")
        }
    }

    mutating func publish() {
        guard !unpublished.isEmpty else { return }
        let kick = driver.publish()
        published += unpublished
        unpublished.removeAll()
        if deviceIdle { #expect(kick, "lost kick: the device was idle and was not kicked") }
        if kick {
            deviceIdle = false
            seenWhenEmpty = nil
            device.kick()
        }
    }

    mutating func reap() -> Bool {
        driver.disableInterrupts()
        driverAsleep = false
        do {
            while let element = try driver.nextUsed() {
                let head = UInt16(element.id)
                if inOrder {
                    guard !pushedBatches.isEmpty else {
                        Issue.record("reaped \(element) with no batch pushed")
                        return false
                    }
                    let batch = pushedBatches.removeFirst()
                    #expect(element == UsedElement(id: UInt32(batch.heads.last!), length: batch.length), "reaped \(element), pushed \(batch)")
                    #expect(driver.lastBatch == batch.heads, "IN_ORDER batch \(driver.lastBatch), pushed \(batch.heads)")
                    for done in batch.heads { chains.removeValue(forKey: done) }
                } else {
                    #expect(pushed.removeValue(forKey: head) == element.length, "reaped \(element), which was not pushed so")
                    chains.removeValue(forKey: head)
                }
            }
        } catch {
            Issue.record("the driver found a violation in the device model's ring: \(error)")
            return false
        }
        #expect(outstandingUsed == 0, "\(outstandingUsed) pushed entries were not reaped")
        return true
    }

    // MARK: the device

    /// The host view of a record's segments: (pointer, length) of the readable and writable ones.
    func expectedSegments(_ record: Record, writable: Bool) -> [(UnsafeMutableRawPointer, Int)] {
        record.segments.filter { $0.deviceWritable == writable }.map { (memory.translate($0.address, $0.length)!, Int($0.length)) }
    }

    func checkSegments(_ chain: SplitVirtqueueDevice.Chain, _ record: Record) {
        for writable in [false, true] {
            let got = writable ? chain.writable : chain.readable
            let expected = expectedSegments(record, writable: writable)
            #expect(got.map(\.pointer) == expected.map(\.0), "head \(chain.head): \(writable ? "writable" : "readable") host addresses differ")
            #expect(got.map(\.length) == expected.map(\.1), "head \(chain.head): \(writable ? "writable" : "readable") lengths differ")
        }
        #expect(chain.descriptorCount == record.descriptors, "head \(chain.head): \(chain.descriptorCount) descriptors walked, \(record.descriptors) added")
    }

    mutating func pop(count: Int) -> Bool {
        for _ in 0..<count {
            let before = device.lastAvailIndex
            if inOrder, let next = published.first {
                #expect(device.nextAvailHead & (queueSize - 1) == next, "IN_ORDER: next_avail_head \(device.nextAvailHead), driver's next chain \(next)")
            }
            do {
                guard let chain = try device.pop() else {
                    #expect(published.isEmpty, "the device sees nothing while \(published.count) are published")
                    seenWhenEmpty = published.count
                    return true
                }
                seenWhenEmpty = nil
                guard !published.isEmpty else {
                    Issue.record("the device popped head \(chain.head) with nothing published")
                    return false
                }
                let expected = published.removeFirst()
                #expect(chain.head == expected, "popped head \(chain.head), published \(expected)")
                guard let record = chains[chain.head] else { return false }
                #expect(record.verdict == nil, "the device accepted head \(chain.head), which the kernel refuses: \(String(describing: record.verdict))")
                checkSegments(chain, record)
                popped.append(chain.head)
            } catch {
                seenWhenEmpty = nil
                guard let head = published.first, let record = chains[head] else {
                    Issue.record("the device rejected an empty ring: \(error)")
                    return false
                }
                #expect(record.verdict == error, "head \(head): the device said \(error), the kernel says \(String(describing: record.verdict))")
                // net.c's checks come after vhost_get_vq_desc consumed the chain.
                #expect(error.consumesChain && device.lastAvailIndex == before &+ 1, "head \(head): \(error) must consume the chain")
                lost.insert(published.removeFirst())
                device.kick()
                return true
            }
        }
        return true
    }

    /// net.c get_rx_bufs for one packet, predicted from the model, then delivered and pushed.
    mutating func gather(_ r: Int) -> Bool {
        if inOrder && !popped.isEmpty {
            // IN_ORDER used entries follow the pop order: finish the popped chains first.
            pushInOrder([(popped, UInt32(r % 200))])
        }
        let frame = 1 + (r / 16) % 300
        let header = VirtioNetHeader.mergeableLength
        let mergeable = (r / 4096) % 2 == 0
        let before = device.lastAvailIndex
        // The prediction: walk the published chains as get_rx_bufs would.
        enum Prediction { case buffers([UInt16], remainder: Int), notEnough, overrun, error(SplitVirtqueueDevice.RingError) }
        var need = frame + header
        var taken: [UInt16] = []
        var prediction: Prediction?
        while need > 0 && taken.count < (mergeable ? 1024 : 1) {
            guard taken.count < published.count else { prediction = .notEnough; break }
            let record = chains[published[taken.count]]!
            if let verdict = record.verdict { prediction = .error(verdict); break }
            taken.append(published[taken.count])
            need -= record.writableLength
        }
        if prediction == nil { prediction = need > 0 ? .overrun : .buffers(taken, remainder: need) }

        let outcome: SplitVirtqueueDevice.ReceiveGathering
        do {
            outcome = try device.gatherReceiveBuffers(frameLength: frame, headerLength: header, mergeable: mergeable)
        } catch {
            seenWhenEmpty = nil
            guard case .error(let verdict) = prediction else {
                Issue.record("get_rx_bufs threw \(error), predicted \(prediction!)")
                return false
            }
            #expect(error == verdict)
            // vhost_discard_vq_desc rolls back by position the heads taken before the bad one:
            // one slot stays consumed, the first one.
            #expect(device.lastAvailIndex == before &+ 1, "after \(error) last_avail_idx moved \(device.lastAvailIndex &- before)")
            lost.insert(published.removeFirst())
            device.kick()
            return true
        }
        switch (outcome, prediction!) {
        case (.buffers(let buffers), .buffers(let heads, let remainder)):
            seenWhenEmpty = nil
            #expect(buffers.chains.map(\.head) == heads, "gathered \(buffers.chains.map(\.head)), predicted \(heads)")
            published.removeFirst(heads.count)
            for chain in buffers.chains { checkSegments(chain, chains[chain.head]!) }
            var lengths = heads.map { UInt32(chains[$0]!.writableLength) }
            lengths[lengths.count - 1] = UInt32(Int(lengths[lengths.count - 1]) + remainder)
            #expect(buffers.usedElements == zip(heads, lengths).map { UsedElement(id: UInt32($0), length: $1) })
            #expect(buffers.inOrderUsed == .init(element: UsedElement(id: UInt32(heads.last!), length: lengths.last!), count: UInt16(heads.count)))
            #expect(buffers.writeNumBuffers(), "12 bytes fit in any packet's buffers")
            device.push(received: buffers)
            if inOrder {
                pushedBatches.append((heads, lengths.last!))
            } else {
                for (head, length) in zip(heads, lengths) { pushed[head] = length }
            }
            checkSignal()
        case (.notEnoughBuffers, .notEnough):
            // Rolled back; the device saw every published chain and waits for more.
            #expect(device.lastAvailIndex == before, "a packet that does not fit consumes nothing")
            seenWhenEmpty = published.count
        case (.overrun, .overrun):
            #expect(device.lastAvailIndex == before, "an overrun is rolled back (and the packet dropped)")
            seenWhenEmpty = nil
        default:
            Issue.record("get_rx_bufs gave \(outcome), predicted \(prediction!)")
            return false
        }
        return true
    }

    mutating func pushSome(_ r: Int) {
        guard !popped.isEmpty else { return }
        if inOrder {
            // A prefix of the popped chains, as one or two batches (vhost_add_used_n_in_order).
            let n = 1 + (r / 8) % popped.count
            let heads = Array(popped.prefix(n))
            if n >= 2 && (r / 256) % 2 == 0 {
                let split = 1 + (r / 512) % (n - 1)
                pushInOrder([(Array(heads[..<split]), UInt32(r % 200)), (Array(heads[split...]), UInt32(r % 150))])
            } else {
                pushInOrder([(heads, UInt32(r % 200))])
            }
            return
        }
        // Any popped chains, in any order, one at a time or in one vhost_add_used_n batch.
        let n = 1 + (r / 8) % min(3, popped.count)
        var elements: [UsedElement] = []
        for k in 0..<n {
            let head = popped.remove(at: (r / 64 + k) % popped.count)
            let length = direction == .transmit ? 0 : UInt32((r / 4 + k * 7) % 200)
            elements.append(UsedElement(id: UInt32(head), length: length))
            pushed[head] = length
        }
        if elements.count == 1 {
            device.push(head: UInt16(elements[0].id), length: elements[0].length)
        } else {
            device.push(elements)
        }
        checkSignal()
    }

    mutating func pushInOrder(_ batches: [([UInt16], UInt32)]) {
        device.pushInOrder(batches.map { .init(element: UsedElement(id: UInt32($0.0.last!), length: $0.1), count: UInt16($0.0.count)) })
        for (heads, length) in batches {
            pushedBatches.append((heads, length))
            popped.removeFirst(heads.count)
        }
        checkSignal()
    }

    mutating func checkSignal() {
        let signal = device.shouldSignal()
        if driverAsleep { #expect(signal, "lost interrupt: the driver was asleep and was not signalled") }
        if signal { driverAsleep = false }
    }

    func checkInvariants() {
        #expect(driver.broken == nil)
        let inFlightDescriptors = chains.values.reduce(0) { $0 + $1.descriptors }
        #expect(driver.freeCount + inFlightDescriptors == Int(queueSize), "descriptors leak")
        #expect(driver.availIndexShadow &- device.lastAvailIndex == UInt16(published.count + unpublished.count), "avail indices disagree")
        #expect(device.lastUsedIndex &- driver.lastUsedIndex == UInt16(outstandingUsed), "used indices disagree")
        let everywhere = unpublished + published + popped + Array(pushed.keys) + pushedBatches.flatMap(\.heads) + Array(lost)
        #expect(everywhere.count == Set(everywhere).count && Set(chains.keys) == Set(everywhere), "the sides disagree on what is in flight")
    }
}
