import Glibc
import Vhost
import Virtio

/// The ioctl events of one command, shared with the observers (which must be Sendable).
final class EventLog: Sendable {
    private let events = Locked<[IoctlEvent]>([])
    func append(_ event: IoctlEvent) { events.withLock { $0.append(event) } }
    func take() -> [IoctlEvent] { events.withLock { let taken = $0; $0.removeAll(); return taken } }
}

/// A ring the script laid out (or named by address), with the driver the frame commands use.
final class RingState {
    let size: UInt16
    let descriptors: UInt64, avail: UInt64, used: UInt64
    let view: SplitRing
    var driver: DriverBox?
    /// One buffer per head, made on first use.
    var buffers: [GuestBuffer?]
    /// Raw writes happened: the driver's picture of the ring is no longer true.
    var writtenByHand = false

    init(size: UInt16, descriptors: UInt64, avail: UInt64, used: UInt64, view: SplitRing) {
        self.size = size; self.descriptors = descriptors; self.avail = avail; self.used = used; self.view = view
        buffers = Array(repeating: nil, count: Int(size))
    }
}

/// The driver of one ring, mutable in place (the driver is `~Copyable`).
final class DriverBox {
    var driver: SplitVirtqueueDriver
    init(_ driver: consuming SplitVirtqueueDriver) { self.driver = driver }
}

/// What a script's commands share while it runs: the device and what it was told, the memory
/// and rings, the tap, the variables. The executors of each group of commands work on it.
///
/// Memory rule: guest memory the device was told about (by `set-mem-table`, a ring's address or
/// an IOTLB update) is never unmapped while that device is open, even when the script maps new
/// memory: the kernel may read and write it at any time until the fd is closed. Such memory is
/// retired, not freed, and goes only after the device is closed.
final class ScriptSession {
    let options: ScriptRunner.Options
    let output: (String) -> Void
    let events = EventLog()
    var limits: ScriptLimits { options.limits }

    var device: DeviceBox?
    var port: PortBox?
    var memory: GuestArena?
    var log: GuestArena?
    /// Memory the open device may still use, kept mapped until it is closed.
    var retired: [GuestArena] = []
    var rings: [VringIndex: RingState] = [:]
    var doorbells: [VringIndex: [VringDoorbell: EventBox]] = [:]
    /// Eventfds given as backends or as the log fd, kept open while the device may hold them.
    var keptEvents: [EventBox] = []
    /// Regular files opened for `file` arguments, closed with the session.
    var openFiles: [Int32] = []
    /// What the open device was told and accepted: vring sizes, bases and addresses.
    var vringSizes: [VringIndex: UInt32] = [:]
    var vringBases: [VringIndex: UInt32] = [:]
    var vringAddresses: [VringIndex: VringAddresses] = [:]
    /// The memory table and the log base the open device accepted.
    var table: [MemoryTable.Region] = []
    var logBase: UInt64 = 0
    var featureWords: [UInt64] = [0, 0]
    var variables: [String: ScriptValue] = [:]
    var ledger = FrameLedger()
    /// The taps this run created (with IFF_TUN_EXCL): `tap NAME` may attach to them again.
    var createdTaps: Set<String> = []

    /// Told of every operation: the command's event log first, then the caller's observer.
    let observer: IoctlObserver

    init(options: ScriptRunner.Options, output: @escaping (String) -> Void) {
        self.options = options
        self.output = output
        let events = events
        let chained = options.observer
        observer = { event in
            events.append(event)
            chained?(event)
        }
    }

    deinit {
        closeDevice()
        for fd in openFiles { close(fd) }
    }

    /// Closes the device, then frees the memory it could reach (in that order).
    func closeDevice() {
        device = nil
        retired.removeAll()
        memory?.handedToDevice = false
        log?.handedToDevice = false
        vringSizes.removeAll()
        vringAddresses.removeAll()
        table.removeAll()
        logBase = 0
        featureWords = [0, 0]
    }

    /// Where the open device may set dirty-log bits, as it holds its settings now.
    var logReach: LogReach {
        LogReach(base: logBase, logAll: (featureWords.first ?? 0) & LogReach.logAllBit != 0, table: table, addresses: vringAddresses, sizes: vringSizes)
    }

    // MARK: values

    /// The number an operand stands for: a literal as parsed, a variable's value plus its offset
    /// (overflow is an error, not a wrap), checked against the operand's range.
    func number(_ operand: Operand) throws(ScriptError) -> UInt64 {
        switch operand.value {
        case .literal(let n):
            return n
        case .variable(let name, let offset):
            let value = try offsetValue(name, offset)
            if let problem = operand.range.problem(value, limits: limits) {
                let text = "\(operand.name) = $\(name)\(ScriptSession.offsetText(offset)) = \(value): expected \(problem.expected)"
                throw problem.isLimit ? .limit(text) : .outOfRange(text)
            }
            return value
        }
    }

    /// `$name+offset`, with checked arithmetic.
    func offsetValue(_ name: String, _ offset: Int64) throws(ScriptError) -> UInt64 {
        guard let value = variables[name] else { throw .missingPrerequisite("$\(name) has no value yet (its let has not run, or failed)") }
        let base = value.number
        let (result, overflow) = offset >= 0 ? base.addingReportingOverflow(offset.magnitude) : base.subtractingReportingOverflow(offset.magnitude)
        guard !overflow else {
            throw .outOfRange("$\(name)\(ScriptSession.offsetText(offset)) with $\(name) = \(base) is \(offset >= 0 ? "above 2^64 - 1" : "below 0")")
        }
        return result
    }

    static func offsetText(_ offset: Int64) -> String { offset == 0 ? "" : offset > 0 ? "+\(offset)" : "\(offset)" }

    /// A 32-bit operand as a vring index.
    func index(_ operand: Operand) throws(ScriptError) -> VringIndex {
        let n = try number(operand)
        guard let value = UInt32(exactly: n) else { throw .outOfRange("\(operand.name) \(n) does not fit 32 bits") }
        return VringIndex(value)
    }

    /// An operand as an `Int` (sizes, counts, milliseconds), which its range keeps small.
    func int(_ operand: Operand) throws(ScriptError) -> Int {
        let n = try number(operand)
        guard let value = Int(exactly: n) else { throw .outOfRange("\(operand.name) \(n) is too large") }
        return value
    }

    /// Milliseconds for a wait, as poll(2) takes them: a default (2000 ms) is cut to the limit
    /// on waits; a value written or from a variable was checked against it.
    func milliseconds(_ operand: Operand) throws(ScriptError) -> Int32 {
        let n = min(try number(operand), limits.milliseconds)
        guard let value = Int32(exactly: n) else { throw .limit("\(operand.name) \(n) ms: expected at most \(Int32.max) (the limit of poll(2))") }
        return value
    }

    // MARK: prerequisites

    func requireDevice() throws(ScriptError) -> DeviceBox {
        guard let device else { throw .missingPrerequisite("this needs an open device: put `open` first") }
        return device
    }

    func requireMemory() throws(ScriptError) -> GuestArena {
        guard let memory else { throw .missingPrerequisite("this needs guest memory: put `memory SIZE` first") }
        return memory
    }

    func requireRing(_ index: VringIndex) throws(ScriptError) -> RingState {
        guard let ring = rings[index] else { throw .missingPrerequisite("vring \(index) has no ring: put `ring \(index) SIZE` first") }
        return ring
    }

    func requirePort() throws(ScriptError) -> PortBox {
        guard let port else { throw .missingPrerequisite("this needs a tap: put `tap NAME` first") }
        return port
    }

    func doorbell(_ index: VringIndex, _ kind: VringDoorbell) throws(ScriptError) -> EventBox {
        guard let event = doorbells[index]?[kind] else {
            let command = switch kind { case .kick: "set-vring-kick"; case .call: "set-vring-call"; case .error: "set-vring-err" }
            throw .missingPrerequisite("vring \(index) has no \(kind) eventfd of the script's: put `\(command) \(index)` first")
        }
        return event
    }

    // MARK: memory

    /// The host address of `length` bytes at `gpa`, which must lie wholly in one region of the
    /// script's guest memory.
    func host(_ gpa: UInt64, length: UInt64) throws(ScriptError) -> UnsafeMutableRawPointer {
        guard let length = Int(exactly: length), let pointer = try requireMemory().memory.map.host(guest: GuestAddress(gpa), length: length) else {
            throw .outOfGuestMemory("GPA 0x\(String(gpa, radix: 16))+\(length) is outside guest memory: the kernel gets this process's addresses, so they must lie in memory the script mapped")
        }
        return pointer
    }

    /// Everything mapped that the device may be allowed to write through: the current guest
    /// memory, memory kept for the device, and the dirty log.
    var mappedRanges: MappedRanges {
        MappedRanges(([memory, log].compactMap { $0 } + retired).flatMap(\.hostRanges))
    }

    /// The dirty logs mapped, the current one and those kept for the device: where the kernel's
    /// log bits must land. Guest memory mapped after a log too small does not count, or whether
    /// a log is refused would follow where mmap happened to put the next mapping.
    var logRanges: MappedRanges {
        MappedRanges(([log].compactMap { $0 } + retired.filter(\.holdsLog)).flatMap(\.hostRanges))
    }

    /// Guest memory and logs mapped now, in bytes.
    var mappedBytes: UInt64 { ([memory, log].compactMap { $0 } + retired).reduce(0) { $0 &+ $1.bytes } }

    /// The virtio-net header length the negotiated features imply.
    var headerLength: Int {
        HighFeatures(rawValue: featureWords.count > 1 ? featureWords[1] : 0).netHeaderLength
            ?? VirtioFeatures(rawValue: featureWords.first ?? 0).netHeaderLength
    }

    /// The header on the port's host side: the in-process device's socket carries it unless
    /// VHOST_NET_F_VIRTIO_NET_HDR moved it to the device (net.c vhost_net_set_features).
    var hostHeaderLength: Int {
        guard port?.carriesHeader == true else { return 0 }
        return VirtioFeatures(rawValue: featureWords.first ?? 0).contains(.vhostNetVirtioNetHeader) ? 0 : headerLength
    }
}
