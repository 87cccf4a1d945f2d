import PropertyBased
import Testing
@testable import Virtio

/// Random interleavings of everything the driver and the device do to a split ring. After every
/// step the two sides must agree: the device pops exactly the chains the driver published, in
/// order and with the same segments; the driver reaps exactly what the device pushed, with the
/// lengths it wrote; indices and free descriptors add up; the kernel's rules are never broken;
/// and neither side can miss a wake-up: a publish after the device went idle kicks, and a push
/// after the driver went to sleep signals.
@Suite("Driver and device model agree on every ring state transition")
struct RingAgreementPropertyTests {
    @Test("random operation sequences, TX and RX, flags and EVENT_IDX, ring sizes 2 to 16")
    func agreement() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...3), Gen.bool, Gen.bool, Gen.int(in: 0...Int(Int32.max)).array(of: 1...400)) {
            sizeExponent, eventIndex, receive, operations in
            Self.run(queueSize: UInt16(2 << sizeExponent), eventIndex: eventIndex, receive: receive, operations: operations)
        }
    }

    static func run(queueSize: UInt16, eventIndex: Bool, receive: Bool, operations: [Int]) {
        let memory = TestRingMemory(queueSize: queueSize)
        var driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: eventIndex)
        var device = SplitVirtqueueDevice(ring: memory.ring, direction: receive ? .receive : .transmit,
                                          eventIndex: eventIndex, translate: memory.translate)
        var chains: [UInt16: [BufferSegment]] = [:]     // in flight, by head
        var unpublished: [UInt16] = []
        var published: [UInt16] = []                     // published, not yet popped (FIFO)
        var popped: [UInt16] = []                        // popped, not yet pushed
        var pushed: [UInt16: UInt32] = [:]               // pushed, not yet reaped
        var deviceIdle = false                           // enableNotify() said nothing pending
        var driverAsleep = false                         // enableInterrupts() said nothing pending

        for r in operations {
            switch r % 6 {
            case 0: // the driver adds a chain of 1...3 segments
                let count = 1 + (r / 8) % 3
                let segments = (0..<count).map { i in
                    BufferSegment(address: memory.bufferAddress(i * 128), length: UInt32(1 + (r / 32 + i) % 100), deviceWritable: receive)
                }
                if let head = driver.add(segments) {
                    chains[head] = segments
                    unpublished.append(head)
                } else {
                    #expect(driver.freeCount < count, "add refused with \(driver.freeCount) free for \(count)")
                }
            case 1: // the driver publishes
                guard !unpublished.isEmpty else { break }
                let kick = driver.publish()
                published += unpublished
                unpublished.removeAll()
                if deviceIdle { #expect(kick, "lost kick: the device was idle and was not kicked") }
                if kick { deviceIdle = false; device.kick() }
            case 2: // the device runs: notifications off, pops up to 4 chains
                device.disableNotify()
                deviceIdle = false
                for _ in 0..<(1 + (r / 8) % 4) {
                    let chain: SplitVirtqueueDevice.Chain?
                    do { chain = try device.pop() } catch {
                        Issue.record("the device model rejected the driver's ring: \(error)")
                        return
                    }
                    guard let chain else {
                        #expect(published.isEmpty, "the device sees nothing while \(published.count) are published")
                        break
                    }
                    let expected = published.removeFirst()
                    #expect(chain.head == expected, "popped head \(chain.head), published \(expected)")
                    let segments = chains[chain.head] ?? []
                    let lengths = (receive ? chain.writable : chain.readable).map(\.1)
                    #expect(lengths == segments.map { Int($0.length) }, "segments differ for head \(chain.head)")
                    popped.append(chain.head)
                }
            case 3: // the device pushes one popped chain (any order), then decides on a signal
                guard !popped.isEmpty else { break }
                let head = popped.remove(at: (r / 8) % popped.count)
                let length = receive ? UInt32(r % 200) : 0
                device.push(head: head, length: length)
                pushed[head] = length
                let signal = device.shouldSignal()
                if driverAsleep { #expect(signal, "lost interrupt: the driver was asleep and was not signalled") }
                if signal { driverAsleep = false }
            case 4: // the driver runs: interrupts off, reaps everything
                driver.disableInterrupts()
                driverAsleep = false
                while let element = (try? driver.nextUsed()) ?? nil {
                    let head = UInt16(element.id)
                    #expect(pushed.removeValue(forKey: head) == element.length, "reaped \(element), which was not pushed so")
                    chains.removeValue(forKey: head)
                }
                #expect(pushed.isEmpty, "\(pushed.count) pushed entries were not reaped")
            default: // one side goes to sleep, race-free
                if (r / 8) % 2 == 0 {
                    let pending = device.enableNotify()
                    #expect(pending == !published.isEmpty, "enableNotify said \(pending) with \(published.count) published")
                    deviceIdle = !pending
                } else {
                    let pending = driver.enableInterrupts()
                    #expect(pending == !pushed.isEmpty, "enableInterrupts said \(pending) with \(pushed.count) pushed")
                    driverAsleep = !pending
                }
            }
            // Invariants after every step.
            let inFlightDescriptors = chains.values.reduce(0) { $0 + $1.count }
            #expect(driver.freeCount + inFlightDescriptors == Int(queueSize), "descriptors leak")
            #expect(driver.availIndexShadow &- device.lastAvailIndex == UInt16(published.count + unpublished.count), "avail indices disagree")
            #expect(device.lastUsedIndex &- driver.lastUsedIndex == UInt16(pushed.count), "used indices disagree")
            #expect(Set(chains.keys) == Set(unpublished + published + popped + pushed.keys), "the sides disagree on what is in flight")
        }
    }
}
