import Glibc
import Synchronization
import SystemPackage
import Vhost
import Virtio

/// The ioctl events of one command, shared with the observers (which must be Sendable).
final class EventLog: Sendable {
    private let events = Locked<[IoctlEvent]>([])
    func withLock<T>(_ body: (inout [IoctlEvent]) -> T) -> T { events.withLock { body(&$0) } }
}

/// Runs an `IoctlScript` against the real device, printing every ioctl with its result.
///
/// Memory rule: guest memory that the device has been told about (by `set-mem-table`, or as a
/// ring's address) is never unmapped while that device is open, even when the script maps new
/// memory: the kernel may read and write it at any time until the fd is closed (vhost.c keeps
/// the table and the ring addresses; nothing in the kernel notices an unmap, and a new mapping at
/// the same address would be written instead). Such memory is retired, not freed, and goes only
/// after the device is closed.
public final class IoctlScriptRunner {
    final class DeviceBox { let device: VhostNetDevice; init(_ d: consuming VhostNetDevice) { device = d } }
    final class TapBox { let tap: Tap; init(_ t: consuming Tap) { tap = t } }
    final class MemoryBox {
        var memory: GuestMemory
        /// The open device was given addresses in this memory.
        var handedToDevice = false
        init(_ m: consuming GuestMemory) { memory = m }
    }
    final class EventBox { let event: EventFD; init(_ e: consuming EventFD) { event = e } }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    let output: (String) -> Void
    private var device: DeviceBox?
    private var tap: TapBox?
    private var memory: MemoryBox?
    /// Memory the open device may still use, kept mapped until it is closed.
    private var retired: [MemoryBox] = []
    private var rings: [UInt32: (ring: SplitRing, block: GuestBuffer)] = [:]
    private var eventfds: [EventBox] = []
    /// The ioctls of the command being run, from the device's and the tap's observers.
    private let events = EventLog()

    public init(output: @escaping (String) -> Void) { self.output = output }

    deinit { closeDevice() }

    /// The regions of memory that were replaced while the device could still use them; they stay
    /// mapped until the device is closed.
    public var retiredMappings: [GuestMemoryRegion] { retired.flatMap { $0.memory.map.regions } }
    /// The regions of the current guest memory.
    public var memoryRegions: [GuestMemoryRegion] { memory?.memory.map.regions ?? [] }
    /// The ring laid out for a vring by `ring INDEX SIZE`, while its memory is current.
    public func ring(_ index: UInt32) -> SplitRing? { rings[index]?.ring }

    /// Closes the device, then frees the memory it could reach (in that order).
    private func closeDevice() {
        device = nil
        retired.removeAll()
        memory?.handedToDevice = false
    }

    /// Runs every command; stops at the first one whose outcome differs from what was expected.
    public func run(_ script: IoctlScript, name: String) throws(Failure) {
        for command in script.commands {
            events.withLock { $0.removeAll() }
            var outcome: Result<String?, VhostError>
            do {
                outcome = .success(try execute(command))
            } catch {
                outcome = .failure(error)
            }
            let location = "\(name):\(command.line)"
            let trace = events.withLock { $0.map { "\($0)" }.joined(separator: "; ") }
            switch (outcome, command.expected) {
            case (.success(let note), nil):
                output("\(location): \(command.name) \(command.arguments.joined(separator: " ")) → \(trace.isEmpty ? "ok" : trace)\(note.map { "\n  \($0)" } ?? "")")
            case (.failure(.ioctl(let failure)), let expected?) where failure.errno == expected:
                output("\(location): \(failure.name)(\(failure.arguments)) = -\(failure.errno.name), as expected")
            case (.failure(let error), let expected?):
                throw Failure(description: "\(location): expected \(expected.name) from \(command.name), got: \(error)")
            case (.success, let expected?):
                throw Failure(description: "\(location): expected \(expected.name) from \(command.name), but it succeeded (\(trace))")
            case (.failure(let error), nil):
                throw Failure(description: "\(location): \(command.name) failed: \(error)")
            }
        }
    }

    private func requireDevice(_ command: IoctlScript.Command) throws(VhostError) -> DeviceBox {
        guard let device else { throw .invalidArgument("\(command.name) needs an open device: put `open` first") }
        return device
    }

    private func number(_ s: String) -> UInt64 { s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16)! : UInt64(s)! }

    private func execute(_ command: IoctlScript.Command) throws(VhostError) -> String? {
        let a = command.arguments
        let record: IoctlObserver = { [events] event in events.withLock { $0.append(event) } }
        func index() -> UInt32 { UInt32(truncatingIfNeeded: number(a[0])) }
        switch command.name {
        case "open":
            let opened = try VhostNetDevice(path: a.first ?? VhostNetDevice.defaultPath, observer: record)
            closeDevice()
            device = DeviceBox(opened)
            return nil
        case "set-owner": try requireDevice(command).device.setOwner()
        case "reset-owner": try requireDevice(command).device.resetOwner()
        case "get-features": return "features \(try requireDevice(command).device.features())"
        case "set-features":
            let features = a.count == 1 && a[0].hasPrefix("0x") ? VirtioFeatures(rawValue: number(a[0]))
                : a.reduce(into: VirtioFeatures()) { $0.formUnion(VirtioFeatures.parse($1)!) }
            try requireDevice(command).device.setFeatures(features)
        case "get-backend-features": return "backend features \(try requireDevice(command).device.backendFeatures())"
        case "set-backend-features":
            let features = a.count == 1 && a[0].hasPrefix("0x") ? VhostBackendFeatures(rawValue: number(a[0]))
                : a.reduce(into: VhostBackendFeatures()) { $0.formUnion(VhostBackendFeatures.parse($1)!) }
            try requireDevice(command).device.setBackendFeatures(features)
        case "memory":
            let bytes = IoctlScript.size(a[0])!
            let rounded = (bytes + GuestMemory.pageSize - 1) & ~(GuestMemory.pageSize - 1)
            let gpa = a.count == 2 ? GuestAddress(number(a[1])) : GuestMemory.defaultGuestBase
            let mapped = MemoryBox(try GuestMemory(size: rounded, guestAddress: gpa))
            var note = ""
            if let old = memory, old.handedToDevice, device != nil {
                retired.append(old)
                note = "; the previous mapping stays mapped until the device is closed, since the kernel may still use it"
            }
            memory = mapped
            rings.removeAll()
            return "guest memory: \(rounded) bytes at GPA 0x\(String(gpa.rawValue, radix: 16))\(note)"
        case "set-mem-table":
            guard let memory else { throw .invalidArgument("set-mem-table needs guest memory: put `memory SIZE` first") }
            let box = try requireDevice(command)
            memory.handedToDevice = true
            try box.device.setMemoryTable(memory.memory.map.memoryTable)
        case "ring":
            guard let memory else { throw .invalidArgument("ring needs guest memory: put `memory SIZE` first") }
            let size = Int(number(a[1]))
            guard SplitRingLayout.isValidQueueSize(size) else {
                throw .invalidArgument("a ring of \(size) cannot be laid out: a power of 2 from 1 to 32768 (use set-vring-num to send other values to the kernel)")
            }
            let layout = SplitRingLayout.offsets(queueSize: size)
            let block = try memory.memory.allocate(layout.total, alignment: 4096)
            // SAFETY: the block is fresh guest memory no device was told about yet; once a script
            // hands its address over, the memory is kept mapped until the device is closed.
            let ring = SplitRing(queueSize: UInt16(size), descriptors: block.host + layout.descriptors, avail: block.host + layout.avail, used: block.host + layout.used)
            ring.reset()
            rings[index()] = (ring, block)
            return "vring \(index()): \(size) entries at GPA 0x\(String(block.guestAddress.rawValue, radix: 16))"
        case "set-vring-num": try requireDevice(command).device.setVringNum(index: index(), num: UInt32(number(a[1])))
        case "set-vring-base": try requireDevice(command).device.setVringBase(index: index(), base: UInt32(number(a[1])))
        case "get-vring-base": return "last_avail_idx \(try requireDevice(command).device.vringBase(index: index()))"
        case "set-vring-addr":
            guard let (ring, _) = rings[index()] else { throw .invalidArgument("set-vring-addr \(index()) needs a ring: put `ring \(index()) SIZE` first") }
            let box = try requireDevice(command)
            memory?.handedToDevice = true
            try box.device.setVringAddress(index: index(), VringAddresses(descriptors: HostAddress(ring.descriptors),
                                                                           avail: HostAddress(ring.avail), used: HostAddress(ring.used)))
        case "set-vring-kick", "set-vring-call", "set-vring-err":
            let box = try requireDevice(command)
            let doorbell: VringDoorbell = command.name == "set-vring-kick" ? .kick : command.name == "set-vring-call" ? .call : .error
            guard a.count == 1 else {
                try box.device.unbindVring(index: index(), doorbell)
                return nil
            }
            let event = EventBox(try EventFD())
            eventfds.append(event)
            switch doorbell {
            case .kick: try box.device.setVringKick(index: index(), event.event)
            case .call: try box.device.setVringCall(index: index(), event.event)
            case .error: try box.device.setVringErr(index: index(), event.event)
            }
        case "set-vring-busyloop-timeout": try requireDevice(command).device.setVringBusyloopTimeout(index: index(), microseconds: UInt32(number(a[1])))
        case "get-vring-busyloop-timeout": return "busyloop timeout \(try requireDevice(command).device.vringBusyloopTimeout(index: index())) µs"
        case "tap":
            let opened = try Tap(name: a[0], observer: record)
            try opened.setLinkUp(true)
            tap = TapBox(opened)
        case "set-vnet-hdr-size":
            guard let tap else { throw .invalidArgument("set-vnet-hdr-size needs a tap: put `tap NAME` first") }
            try tap.tap.setVnetHeaderSize(Int32(number(a[0])))
        case "set-backend":
            let box = try requireDevice(command)
            if a[1] == "tap" {
                guard let tap else { throw .invalidArgument("set-backend \(index()) tap needs a tap: put `tap NAME` first") }
                try box.device.setBackend(index: index(), tap.tap)
            } else {
                try box.device.detachBackend(index: index())
            }
        default:
            // The parser admits only the commands of IoctlScript.grammar.
            throw .invalidArgument("\(command.name) is not a command this runner knows")
        }
        return nil
    }
}
