import Vhost
import Virtio

/// Runs the memory commands: `memory`, `alloc`, `log`, `write` and `read`. Sizes are checked
/// against the limits with overflow-checked arithmetic before anything is mapped; memory the
/// open device was told about is retired, not unmapped, when new memory replaces it.
struct MemoryExecutor {
    let session: ScriptSession

    /// Bytes still mapped for the open device after the current memory (or log) is replaced.
    private func keptBytes(replacing current: GuestArena?) -> UInt64 {
        var kept = session.retired.reduce(UInt64(0)) { $0 &+ $1.bytes }
        if let current, session.device != nil, current.handedToDevice || current === session.log { kept &+= current.bytes }
        for other in [session.memory, session.log].compactMap({ $0 }) where other !== current { kept &+= other.bytes }
        return kept
    }

    /// Refuses a mapping that would take the tool's mappings past its limit.
    private func checkTotal(adding bytes: UInt64, replacing current: GuestArena?) throws(ScriptError) {
        let allowed = session.limits.memoryBytes &+ session.limits.logBytes
        let (total, overflow) = keptBytes(replacing: current).addingReportingOverflow(bytes)
        guard !overflow, total <= allowed else {
            throw .limit("mapping \(ScriptLimits.bytes(bytes)) more would keep \(total) bytes mapped (memory kept for the open device included); expected at most \(ScriptLimits.bytes(allowed)) (\(session.limits.describe(.memoryBytes)), and \(session.limits.describe(.logBytes))); close the device to free what it kept")
        }
    }

    /// `memory SIZE [GPA] [SIZE GPA]...`: maps new guest memory, page-rounded, at those GPAs.
    func map(_ regions: [(size: Operand, gpa: Operand)]) throws(ScriptError) {
        let page = MemoryLayoutCheck.page
        var layout: [GuestMemory.Layout] = []
        var total: UInt64 = 0
        for region in regions {
            let size = try session.number(region.size), gpa = try session.number(region.gpa)
            if let problem = MemoryLayoutCheck.problem(size: size, gpa: gpa) { throw .invalidValue(problem) }
            let (padded, o1) = size.addingReportingOverflow(page - 1)
            let rounded = padded & ~(page - 1)
            let (sum, o2) = total.addingReportingOverflow(rounded)
            guard !o1, !o2, sum <= session.limits.memoryBytes, let bytes = Int(exactly: rounded) else {
                throw .limit("guest memory of more than \(ScriptLimits.bytes(session.limits.memoryBytes)): expected at most that (\(session.limits.describe(.memoryBytes)))")
            }
            total = sum
            layout.append(GuestMemory.Layout(guestAddress: GuestAddress(gpa), size: bytes))
        }
        try checkTotal(adding: total, replacing: session.memory)
        let mapped: GuestArena
        do { mapped = GuestArena(try GuestMemory(layout: layout)) } catch { throw .device(error) }
        var note = ""
        if let old = session.memory, old.handedToDevice, session.device != nil {
            session.retired.append(old)
            note = " (the previous memory stays mapped until the device is closed: the kernel may still use it)"
        }
        session.memory = mapped
        session.rings.removeAll()
        session.output("  guest memory: " + layout.map { "\($0.size) bytes at GPA 0x\(String($0.guestAddress.rawValue, radix: 16))" }.joined(separator: ", ") + note)
    }

    /// `alloc SIZE [align=N]`: SIZE bytes of guest memory; answers their GPA.
    func alloc(size: Operand, alignment: Operand) throws(ScriptError) -> ScriptValue {
        let size = try session.number(size), alignment = try session.number(alignment)
        guard alignment > 0, alignment & (alignment - 1) == 0 else { throw .invalidValue("alloc takes an ALIGN that is a power of 2, found \(alignment)") }
        guard let gpa = try session.requireMemory().allocate(size, alignment: alignment) else {
            throw .outOfGuestMemory("guest memory has no \(size) bytes free (aligned to \(alignment)): give it more memory")
        }
        return .number(gpa)
    }

    /// `log SIZE`: maps a dirty log outside guest memory; answers its host address.
    func mapLog(size: Operand) throws(ScriptError) -> ScriptValue {
        let size = try session.number(size)
        let page = MemoryLayoutCheck.page
        let (padded, overflow) = size.addingReportingOverflow(page - 1)
        guard !overflow, let bytes = Int(exactly: padded & ~(page - 1)), bytes > 0 else {
            throw .limit("a dirty log of \(size) bytes: expected at most \(ScriptLimits.bytes(session.limits.logBytes)) (\(session.limits.describe(.logBytes)))")
        }
        try checkTotal(adding: UInt64(bytes), replacing: session.log)
        // The log is not guest memory: the GPA of this mapping means nothing to the kernel.
        let mapped: GuestArena
        do { mapped = GuestArena(try GuestMemory(size: bytes, guestAddress: 0), holdsLog: true) } catch { throw .device(error) }
        if let old = session.log, session.device != nil { session.retired.append(old) }
        session.log = mapped
        return .number(mapped.hostRanges.first?.start ?? 0)
    }

    /// `read-log OFFSET [width=]`: loads WIDTH bytes of the dirty log at byte OFFSET,
    /// little-endian: what the kernel logged there (bit b of byte B is guest page 8·B + b).
    func readLog(offset: Operand, width: Int) throws(ScriptError) -> ScriptValue {
        guard let log = session.log else { throw .missingPrerequisite("read-log needs a log: put `log SIZE` first") }
        let offset = try session.number(offset)
        // The log is mapped at GPA 0 of its own arena, so an offset is its address there.
        guard let pointer = log.memory.map.host(guest: GuestAddress(offset), length: width) else {
            throw .outOfGuestMemory("byte \(offset)+\(width) is outside the dirty log of \(log.bytes) bytes")
        }
        var value: UInt64 = 0
        // SAFETY: `host` checked that all WIDTH bytes lie in the log this runner maps; the kernel
        // sets bits in it at any time (set_bit_to_user), so the bytes are read as they are.
        for i in 0..<width { value |= UInt64(pointer.load(fromByteOffset: i, as: UInt8.self)) << UInt64(8 * i) }
        return .number(value)
    }

    /// `write GPA VALUE [width=]`: stores WIDTH bytes, little-endian.
    func write(gpa: Operand, value: Operand, width: Int) throws(ScriptError) {
        let pointer = try session.host(try session.number(gpa), length: UInt64(width))
        let value = try session.number(value)
        // SAFETY: `host` checked that all WIDTH bytes lie in guest memory this runner maps; the
        // device may read them at any time, so they are stored byte by byte, as a guest would.
        for i in 0..<width { pointer.storeBytes(of: UInt8(truncatingIfNeeded: value >> UInt64(8 * i)), toByteOffset: i, as: UInt8.self) }
    }

    /// `read GPA [width=]`: loads WIDTH bytes, little-endian.
    func read(gpa: Operand, width: Int) throws(ScriptError) -> ScriptValue {
        let pointer = try session.host(try session.number(gpa), length: UInt64(width))
        var value: UInt64 = 0
        // SAFETY: as in `write`; bytes the device writes meanwhile are read as they are.
        for i in 0..<width { value |= UInt64(pointer.load(fromByteOffset: i, as: UInt8.self)) << UInt64(8 * i) }
        return .number(value)
    }
}
