import Vhost
import Virtio

/// Runs the ring commands: `ring` lays out a split ring in guest memory, `ring-address` answers
/// where its parts are, and a ring named by address in `set-vring-addr` gets a view too.
struct RingExecutor {
    let session: ScriptSession

    /// `ring INDEX SIZE [at=GPA]`: answers the ring's GPA.
    func layOut(index: Operand, size: Operand, at: Operand?) throws(ScriptError) -> ScriptValue {
        let memory = try session.requireMemory()
        let index = try session.index(index)
        let entries = try session.number(size)
        guard let queueSize = UInt16(exactly: entries), SplitRingLayout.isValidQueueSize(Int(queueSize)) else {
            throw .invalidValue("a ring of \(entries) cannot be laid out: a power of 2 from 1 to 32768 (use set-vring-num to send other numbers to the kernel)")
        }
        let layout = SplitRingLayout.offsets(queueSize: Int(queueSize))
        let total = UInt64(layout.total)
        let gpa: UInt64
        if let at {
            let address = try session.number(at)
            guard address & 15 == 0 else { throw .invalidValue("a ring's descriptor table must be 16-byte aligned; 0x\(String(address, radix: 16)) is not") }
            _ = try session.host(address, length: total)
            memory.claim(address, size: total)
            gpa = address
        } else {
            guard let taken = memory.allocate(total, alignment: 4096) else { throw .outOfGuestMemory("guest memory has no room for a ring of \(queueSize)") }
            gpa = taken
        }
        let base = try session.host(gpa, length: total)
        // SAFETY: the block lies wholly in guest memory this runner mapped (checked by `host`)
        // and keeps mapped while any device may use it; the view's writes stay inside the ring's
        // own layout, so the GPAs below cannot overflow either.
        let view = SplitRing(queueSize: queueSize, descriptors: base + layout.descriptors, avail: base + layout.avail, used: base + layout.used)
        view.reset()
        session.rings[index] = RingState(size: queueSize, descriptors: gpa &+ UInt64(layout.descriptors), avail: gpa &+ UInt64(layout.avail),
                                         used: gpa &+ UInt64(layout.used), view: view)
        return .number(gpa)
    }

    /// `ring-address INDEX desc|avail|used`.
    func address(index: Operand, part: RingPart) throws(ScriptError) -> ScriptValue {
        let ring = try session.requireRing(try session.index(index))
        switch part {
        case .descriptors: return .number(ring.descriptors)
        case .avail: return .number(ring.avail)
        case .used: return .number(ring.used)
        }
    }

    /// After `set-vring-addr` named parts other than the laid-out ring's: a view of the parts
    /// the device now uses, when the vring's size is known and each part lies in guest memory;
    /// otherwise the vring has no ring for the frame and raw commands (they would write a ring
    /// the device does not read).
    func adopt(_ index: VringIndex, descriptors: UInt64, avail: UInt64, used: UInt64) {
        if let ring = session.rings[index], ring.descriptors == descriptors, ring.avail == avail, ring.used == used { return }
        session.rings[index] = nil
        guard let num = session.vringSizes[index], let queueSize = UInt16(exactly: num), SplitRingLayout.isValidQueueSize(Int(num)),
              let memory = session.memory else { return }
        let n = UInt64(num)
        let parts = [(descriptors, 16 * n), (avail, 6 + 2 * n), (used, 6 + 8 * n)]
        guard let d = try? session.host(descriptors, length: parts[0].1), let a = try? session.host(avail, length: parts[1].1),
              let u = try? session.host(used, length: parts[2].1) else { return }
        for (start, size) in parts { memory.claim(start, size: size) }
        // SAFETY: each part lies wholly in guest memory this runner keeps mapped (checked by
        // `host`); writes through the view stay inside the parts' sizes for `n` entries.
        let view = SplitRing(queueSize: queueSize, descriptors: d, avail: a, used: u)
        session.rings[index] = RingState(size: queueSize, descriptors: descriptors, avail: avail, used: used, view: view)
    }
}

/// Runs the raw ring writes: `desc`, `avail`, `avail-idx`, `used-idx` and `kick`. They go
/// through the ring's view and are checked against its size, so a script writes only inside
/// the rings it laid out; after one, `send` and `post` are refused on that vring until `ring`
/// lays it out again (the driver no longer knows the ring's state).
struct RawRingExecutor {
    let session: ScriptSession

    /// A number that fits `T` (its range was checked when parsed or resolved).
    func narrow<T: FixedWidthInteger>(_ operand: Operand, as type: T.Type) throws(ScriptError) -> T {
        let n = try session.number(operand)
        guard let value = T(exactly: n) else { throw .outOfRange("\(operand.name) \(n) does not fit \(T.bitWidth) bits") }
        return value
    }

    func descriptor(queue: Operand, index: Operand, address: Operand?, length: Operand?, flags: Operand?, next: Operand?) throws(ScriptError) {
        let ring = try session.requireRing(try session.index(queue))
        let i = try narrow(index, as: UInt16.self)
        guard i < ring.size else { throw .invalidValue("descriptor \(i) is outside the ring of \(ring.size) entries (a script writes only inside its rings)") }
        // SAFETY: `i` is below the ring's size, so the entry lies inside the descriptor table the
        // view was made over (mapped, and kept mapped while a device may read it); the device
        // reads what it reads, which is the point of a raw write.
        var d = ring.view.descriptor(i)
        if let address { d.address = try session.number(address) }
        if let length { d.length = try narrow(length, as: UInt32.self) }
        if let flags { d.flags = DescriptorFlags(rawValue: try narrow(flags, as: UInt16.self)) }
        if let next { d.next = try narrow(next, as: UInt16.self) }
        ring.view.setDescriptor(i, d)
        ring.writtenByHand = true
    }

    func avail(queue: Operand, slot: Operand, head: Operand) throws(ScriptError) {
        let ring = try session.requireRing(try session.index(queue))
        // SAFETY: the view takes the slot modulo the ring's size, so the store stays inside the
        // avail ring (mapped, and kept mapped while a device may read it).
        ring.view.setAvailEntry(try narrow(slot, as: UInt16.self), head: try narrow(head, as: UInt16.self))
        ring.writtenByHand = true
    }

    func availIndex(queue: Operand, value: Operand) throws(ScriptError) {
        let ring = try session.requireRing(try session.index(queue))
        let value = try narrow(value, as: UInt16.self)
        // SAFETY: the index lives in the ring's memory, which stays mapped (see the memory rule).
        ring.view.availIndex.pointee.store(value, ordering: .releasing)
        ring.writtenByHand = true
    }

    func usedIndex(queue: Operand) throws(ScriptError) -> ScriptValue {
        let ring = try session.requireRing(try session.index(queue))
        // SAFETY: as in `availIndex`; the device writes it with a release store.
        return .number(UInt64(ring.view.usedIndex.pointee.load(ordering: .acquiring)))
    }

    func kick(queue: Operand) throws(ScriptError) {
        try session.doorbell(try session.index(queue), .kick).value.signal()
    }
}
