import Glibc
import HostNetwork
import NetFormats
import SystemPackage
import Vhost
import Virtio

/// An answer a script can keep in a variable and check: a number, or feature words.
public enum ScriptValue: Sendable, Equatable, CustomStringConvertible {
    case number(UInt64)
    /// Feature bits, 64 to a word (bit 64 × i + b is bit b of word i).
    case words([UInt64])

    public var description: String {
        switch self {
        case .number(let n): return n > 0xffff ? "0x" + String(n, radix: 16) : "\(n)"
        case .words(let words):
            let names = VirtioFeatures(rawValue: words.first ?? 0).featureNames + HighFeatures(rawValue: words.count > 1 ? words[1] : 0).featureNames
            return words.map { "0x" + String($0, radix: 16) }.joined(separator: " ") + (names.isEmpty ? "" : " (\(names.joined(separator: " ")))")
        }
    }

    /// As one number: the number, or the first feature word.
    var number: UInt64 {
        switch self {
        case .number(let n): return n
        case .words(let words): return words.first ?? 0
        }
    }
}

/// The ioctl events of one command, shared with the observers (which must be Sendable).
final class EventLog: Sendable {
    private let events = Locked<[IoctlEvent]>([])
    func append(_ event: IoctlEvent) { events.withLock { $0.append(event) } }
    func take() -> [IoctlEvent] { events.withLock { let taken = $0; $0.removeAll(); return taken } }
}

/// Runs a `Script` against the kernel's vhost-net device: every ioctl printed with its decoded
/// arguments and the kernel's answer, every expectation checked.
///
/// Memory rule: guest memory that the device has been told about (by `set-mem-table`, or as a
/// ring's address) is never unmapped while that device is open, even when the script maps new
/// memory: the kernel may read and write it at any time until the fd is closed (vhost.c keeps
/// the table and the ring addresses; nothing in the kernel notices an unmap, and a new mapping at
/// the same address would be written instead). Such memory is retired, not freed, and goes only
/// after the device is closed. Raw ring writes go through the ring's own view, and are checked
/// against its size, so a script writes only inside the rings it laid out.
public final class ScriptRunner {
    final class DeviceBox { let device: VhostNetDevice; init(_ d: consuming VhostNetDevice) { device = d } }
    final class TapBox { let tap: Tap; init(_ t: consuming Tap) { tap = t } }
    final class SocketBox { let socket: PacketSocket; init(_ s: consuming PacketSocket) { socket = s } }
    final class MemoryBox {
        var memory: GuestMemory
        /// The open device was given addresses in this memory.
        var handedToDevice = false
        /// Guest-physical ranges taken by `alloc`, `ring` and the frame buffers.
        var claimed: [(start: UInt64, size: UInt64)] = []
        init(_ m: consuming GuestMemory) { memory = m }

        func allocate(_ size: UInt64, alignment: UInt64) -> UInt64? {
            func alignUp(_ v: UInt64) -> UInt64 { (v + alignment - 1) & ~(alignment - 1) }
            for region in memory.map.regions {
                let start = region.guestAddress.rawValue, end = start + UInt64(region.size)
                var candidate = alignUp(start)
                while candidate + size <= end {
                    if let clash = claimed.first(where: { $0.start < candidate + size && candidate < $0.start + $0.size }) {
                        candidate = alignUp(clash.start + clash.size)
                    } else {
                        claimed.append((candidate, size))
                        return candidate
                    }
                }
            }
            return nil
        }
    }
    final class EventBox { let event: EventFD; init(_ e: consuming EventFD) { event = e } }
    final class DriverBox { var driver: SplitVirtqueueDriver; init(_ d: consuming SplitVirtqueueDriver) { driver = d } }
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

    /// A command did not do what the script expected.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public struct Options {
        /// Report a missed expectation and go on (the run still fails at the end).
        public var keepGoing = false
        /// The device to open (`open` without a path).
        public var devicePath = VhostNetDevice.defaultPath
        /// Told of every ioctl, as `--trace` and `--record` want.
        public var observer: IoctlObserver? = nil
        /// Told of the `send` and `post` publishes and kicks (`--record`).
        public var ringObserver: RingObserver? = nil
        public init() {}
    }

    let output: (String) -> Void
    let options: Options
    private var device: DeviceBox?
    private var tap: TapBox?
    private var hostSide: SocketBox?
    private var memory: MemoryBox?
    private var logMemory: MemoryBox?
    /// Memory the open device may still use, kept mapped until it is closed.
    private var retired: [MemoryBox] = []
    private var rings: [UInt32: RingState] = [:]
    private var doorbells: [UInt32: [VringDoorbell: EventBox]] = [:]
    private var spareFDs: [EventBox] = []
    /// Regular files opened for `file` arguments, closed with the runner.
    private var openFiles: [Int32] = []
    private var logFD: EventBox?
    private var ringNums: [UInt32: UInt32] = [:]
    private var ringBases: [UInt32: UInt32] = [:]
    private var featureWords: [UInt64] = [0, 0]
    private var variables: [String: ScriptValue] = [:]
    private var results: [String: ScriptValue] = [:]
    /// Sequence numbers: our next TX frame, the next one the host must see, the host's next
    /// frame, and the next one our RX ring must see.
    private var transmitSequence = 0, hostExpectedSequence = 0, hostSequence = 0, receiveSequence = 0
    /// How each TX frame was built (size nil: test sizes), as runs of sequence numbers.
    private var transmitShapes: [(first: Int, count: Int, size: Int?, pattern: UInt8?)] = []
    private var hostShapes: [(first: Int, count: Int, size: Int?)] = []
    private let events = EventLog()
    /// Expectations missed under `keepGoing`.
    public private(set) var missed: [String] = []

    /// The source address of frames the host side sends (ours use `TestFrame.source`).
    public static let hostMAC = MACAddress(0x52, 0x54, 0x00, 0x00, 0x00, 0x01)

    public init(options: Options = Options(), output: @escaping (String) -> Void) {
        self.options = options
        self.output = output
    }

    deinit {
        closeDevice()
        for fd in openFiles { close(fd) }
    }

    /// The regions of memory that were replaced while the device could still use them; they stay
    /// mapped until the device is closed.
    public var retiredMappings: [GuestMemoryRegion] { retired.flatMap { $0.memory.map.regions } }
    /// The regions of the current guest memory.
    public var memoryRegions: [GuestMemoryRegion] { memory?.memory.map.regions ?? [] }
    /// The ring laid out for a vring, while its memory is current.
    public func ring(_ index: UInt32) -> SplitRing? { rings[index]?.view }
    /// A variable's value after the run.
    public func variable(_ name: String) -> ScriptValue? { variables[name] }

    /// Closes the device, then frees the memory it could reach (in that order).
    private func closeDevice() {
        device = nil
        retired.removeAll()
        memory?.handedToDevice = false
    }

    // MARK: running

    /// Runs every statement. Without `keepGoing`, stops at the first one whose outcome differs
    /// from what was expected; with it, goes on and throws at the end if any differed.
    public func run(_ script: Script) throws(Failure) {
        try run(script.statements)
        if !missed.isEmpty {
            throw Failure(description: "\(missed.count) expectation(s) missed:\n" + missed.joined(separator: "\n"))
        }
    }

    private func miss(_ message: String) throws(Failure) {
        if options.keepGoing {
            output("MISSED \(message)")
            missed.append(message)
        } else {
            throw Failure(description: message)
        }
    }

    private func run(_ statements: [Statement]) throws(Failure) {
        for statement in statements {
            switch statement {
            case .invoke(let invocation):
                try invoke(invocation)
            case .check(let check):
                try evaluate(check)
            case .expectRingError(let queue, let milliseconds, let location):
                do {
                    let index = UInt32(truncatingIfNeeded: try resolveNumber(queue))
                    let wait = Int32(clamping: try milliseconds.map { o throws(VhostError) in try resolveNumber(o) } ?? 2000)
                    guard let error = doorbells[index]?[.error] else {
                        throw VhostError.invalidArgument("vring \(index) has no error eventfd: put set-vring-err \(index) first")
                    }
                    if let count = error.event.wait(milliseconds: wait) {
                        output("\(location): ring error on vring \(index) (\(count) signal\(count == 1 ? "" : "s")), as expected")
                    } else {
                        try miss("\(location): expected a ring error on vring \(index) within \(wait) ms, found none")
                    }
                } catch {
                    try miss("\(location): expect ring-error: \(error)")
                }
            case .loop(let count, let variable, let body, let location):
                let n: UInt64
                do { n = try resolveNumber(count) } catch {
                    try miss("\(location): repeat: \(error)")
                    continue
                }
                for i in 0..<n {
                    if let variable { variables[variable] = .number(i) }
                    try run(body)
                }
            }
        }
    }

    private func invoke(_ invocation: Invocation) throws(Failure) {
        _ = events.take()
        let outcome: Result<ScriptValue?, VhostError>
        do {
            outcome = .success(try execute(invocation))
        } catch {
            outcome = .failure(error)
        }
        let trace = events.take()
        let location = invocation.location
        let text = describe(invocation)
        let traceText = trace.map { "\($0)" }.joined(separator: "; ")
        switch (outcome, invocation.expected) {
        case (.success(let value), .success):
            if let value {
                if let binding = invocation.binding { variables[binding] = value }
                if let key = ScriptCommands.byName[invocation.command]?.result { results[key] = value }
            }
            let answer = value.map { " → \($0)" } ?? ""
            output("\(location): \(text)\(traceText.isEmpty ? "" : " : \(traceText)")\(answer)")
        case (.failure(let error), .errno(let expected)) where error.errno == expected:
            output("\(location): \(text) : \(traceText.isEmpty ? "\(error)" : traceText), \(expected.name) as expected")
        case (.failure(let error), .errno(let expected)):
            try miss("\(location): expected \(expected.name) from \(invocation.command), found: \(error)")
        case (.success, .errno(let expected)):
            try miss("\(location): expected \(expected.name) from \(invocation.command), found success (\(traceText.isEmpty ? "no ioctl" : traceText))")
        case (.failure(let error), .success):
            try miss("\(location): \(invocation.command) failed: \(error)")
        }
    }

    private func describe(_ invocation: Invocation) -> String {
        let spec = ScriptCommands.byName[invocation.command]!
        var words = [invocation.command]
        for parameter in spec.parameters {
            guard let argument = invocation.arguments[parameter.name] else { continue }
            let values = argument.operands.map { operand -> String in
                switch operand {
                case .literal(let text): return text
                case .variable(let name, let offset):
                    let value = variables[name].map { "\($0.number &+ UInt64(bitPattern: offset))" } ?? "?"
                    return "$\(name)\(offset == 0 ? "" : offset > 0 ? "+\(offset)" : "\(offset)")(=\(value))"
                }
            }
            words.append((parameter.required ? "" : "\(parameter.name)=") + values.joined(separator: " "))
        }
        return (invocation.binding.map { "let \($0) = " } ?? "") + words.joined(separator: " ")
    }

    // MARK: values

    private func resolve(_ operand: Operand) throws(VhostError) -> ScriptValue {
        switch operand {
        case .literal(let text):
            if let n = ScriptLiteral.number(text) { return .number(n) }
            if let words = ScriptLiteral.featureWords([text]) { return .words(words) }
            if let backend = VhostBackendFeatures.parse(text) { return .number(backend.rawValue) }
            if let value = results[text] { return value }
            throw .invalidArgument("'\(text)' is not a number")
        case .variable(let name, let offset):
            guard let value = variables[name] else { throw .invalidArgument("$\(name) has no value yet (its let has not run, or failed)") }
            if offset == 0 { return value }
            return .number(value.number &+ UInt64(bitPattern: offset))
        }
    }

    private func resolveNumber(_ operand: Operand) throws(VhostError) -> UInt64 { try resolve(operand).number }

    private func number(_ invocation: Invocation, _ name: String) throws(VhostError) -> UInt64? {
        guard let argument = invocation.arguments[name] else { return nil }
        return try resolveNumber(argument.operands[0])
    }

    private func require(_ invocation: Invocation, _ name: String) throws(VhostError) -> UInt64 {
        guard let value = try number(invocation, name) else { throw .invalidArgument("\(invocation.command) needs \(name.uppercased())") }
        return value
    }

    private func uint32(_ invocation: Invocation, _ name: String) throws(VhostError) -> UInt32 {
        let value = try require(invocation, name)
        guard value <= UInt64(UInt32.max) else { throw .invalidArgument("\(name.uppercased()) \(value) does not fit the kernel's 32 bits") }
        return UInt32(value)
    }

    private func word(_ invocation: Invocation, _ name: String) -> String? {
        guard let argument = invocation.arguments[name], case .literal(let text) = argument.operands[0] else { return nil }
        return text
    }

    /// Feature arguments as words (names, 0x bits and variables).
    private func features(_ invocation: Invocation) throws(VhostError) -> [UInt64] {
        var words: [UInt64] = [0, 0]
        for operand in invocation.arguments["features"]?.operands ?? [] {
            switch try resolve(operand) {
            case .number(let n): words[0] |= n
            case .words(let w): for (i, x) in w.enumerated() { if i >= words.count { words.append(0) }; words[i] |= x }
            }
        }
        return words
    }

    private func evaluate(_ check: ValueCheck) throws(Failure) {
        let subjectName: String
        let subject: ScriptValue
        do {
            switch check.subject {
            case .literal(let name):
                subjectName = name
                guard let value = results[name] else { throw VhostError.invalidArgument("no command has answered \(name) yet") }
                subject = value
            case .variable(let name, _):
                subjectName = "$\(name)"
                subject = try resolve(check.subject)
            }
            let values = try check.values.map { v throws(VhostError) in try resolve(v) }
            let passed: Bool
            switch check.comparison {
            case .contains, .lacks:
                let want = values.reduce(into: [UInt64](repeating: 0, count: 2)) { acc, v in
                    switch v {
                    case .number(let n): acc[0] |= n
                    case .words(let w): for (i, x) in w.enumerated() where i < 2 { acc[i] |= x }
                    }
                }
                let have: [UInt64] = { if case .words(let w) = subject { return w + [0, 0] }; return [subject.number, 0] }()
                let present = (0..<2).allSatisfy { have[$0] & want[$0] == want[$0] }
                let absent = (0..<2).allSatisfy { have[$0] & want[$0] == 0 }
                passed = check.comparison == .contains ? present : absent
            default:
                let a = subject.number, b = values[0].number
                switch check.comparison {
                case .equal: passed = a == b
                case .notEqual: passed = a != b
                case .less: passed = a < b
                case .lessOrEqual: passed = a <= b
                case .greater: passed = a > b
                case .greaterOrEqual: passed = a >= b
                case .contains, .lacks: passed = false
                }
            }
            let wanted = check.values.map { v -> String in if case .literal(let t) = v { return t }; if case .variable(let n, _) = v { return "$\(n)" }; return "" }.joined(separator: " ")
            if passed {
                output("\(check.location): \(subjectName) \(check.comparison.rawValue) \(wanted): yes (\(subject))")
            } else {
                try miss("\(check.location): expected \(subjectName) \(check.comparison.rawValue) \(wanted), found \(subject)")
            }
        } catch let error as Failure {
            throw error
        } catch {
            try miss("\(check.location): expect: \(error)")
        }
    }

    // MARK: commands

    private func requireDevice() throws(VhostError) -> DeviceBox {
        guard let device else { throw .invalidArgument("this needs an open device: put `open` first") }
        return device
    }

    private func requireMemory() throws(VhostError) -> MemoryBox {
        guard let memory else { throw .invalidArgument("this needs guest memory: put `memory SIZE` first") }
        return memory
    }

    private func requireRing(_ index: UInt32) throws(VhostError) -> RingState {
        guard let ring = rings[index] else { throw .invalidArgument("vring \(index) has no ring: put `ring \(index) SIZE` first") }
        return ring
    }

    private func host(_ gpa: UInt64, length: Int) throws(VhostError) -> UnsafeMutableRawPointer {
        guard let pointer = try requireMemory().memory.map.host(guest: GuestAddress(gpa), length: length) else {
            throw .invalidArgument("GPA 0x\(String(gpa, radix: 16))+\(length) is outside guest memory: the kernel gets this process's addresses, so they must lie in memory the script mapped")
        }
        return pointer
    }

    /// An fd for the doorbell and backend commands: a fresh eventfd, -1, a closed fd, a file.
    private func fileArgument(_ invocation: Invocation, _ name: String) throws(VhostError) -> (fd: Int32, event: EventBox?) {
        let text = word(invocation, name) ?? "eventfd"
        switch text {
        case "-1":
            return (-1, nil)
        case "eventfd":
            let event = EventBox(try EventFD())
            return (event.event.fd, event)
        case "closed":
            // An fd number that was just closed: the kernel's fdget finds nothing (EBADF).
            let event = try EventFD()
            let number = event.fd
            _ = consume event
            return (number, nil)
        case "file":
            let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .system(call: "open", detail: "/proc/self/status", errno: Errno(rawValue: Glibc.errno)) }
            openFiles.append(fd)
            return (fd, nil)
        default:
            let n = try require(invocation, name)
            return (Int32(truncatingIfNeeded: Int64(bitPattern: n)), nil)
        }
    }

    private var headerLength: Int {
        HighFeatures(rawValue: featureWords.count > 1 ? featureWords[1] : 0).netHeaderLength
            ?? VirtioFeatures(rawValue: featureWords[0]).netHeaderLength
    }

    private func execute(_ invocation: Invocation) throws(VhostError) -> ScriptValue? {
        let record: IoctlObserver = { [events, observer = options.observer] event in
            events.append(event)
            observer?(event)
        }
        func index() throws(VhostError) -> UInt32 { try uint32(invocation, invocation.arguments["queue"] != nil ? "queue" : "index") }
        switch invocation.command {
        case "open":
            let opened = try VhostNetDevice(path: word(invocation, "path") ?? options.devicePath, observer: record)
            closeDevice()
            device = DeviceBox(opened)
        case "close":
            _ = try requireDevice()
            options.observer?(IoctlEvent(.close, result: .success(0)))
            closeDevice()
        case "set-owner": try requireDevice().device.setOwner()
        case "reset-owner": try requireDevice().device.resetOwner()
        case "get-features": return .words([try requireDevice().device.features().rawValue, 0])
        case "set-features":
            let words = try features(invocation)
            try requireDevice().device.setFeatures(VirtioFeatures(rawValue: words[0]))
            featureWords = [words[0], 0]
        case "get-features-array":
            return .words(try requireDevice().device.extendedFeatureWords(count: Int(try number(invocation, "count") ?? 2)))
        case "set-features-array":
            let words = try features(invocation)
            try requireDevice().device.setFeatureWords(words)
            featureWords = words
        case "get-backend-features": return .number(try requireDevice().device.backendFeatures().rawValue)
        case "set-backend-features":
            try requireDevice().device.setBackendFeatures(VhostBackendFeatures(rawValue: try features(invocation)[0]))
        case "get-fork-owner": return .number(try requireDevice().device.forkFromOwner() == .task ? 1 : 0)
        case "set-fork-owner":
            let text = word(invocation, "mode")
            let task = text == "task" ? true : text == "kthread" ? false : try require(invocation, "mode") != 0
            try requireDevice().device.setForkFromOwner(task ? .task : .kthread)
        case "new-worker": return .number(UInt64(try requireDevice().device.newWorker()))
        case "memory":
            let values = try (invocation.arguments["regions"]?.operands ?? []).map { o throws(VhostError) in try resolveNumber(o) }
            var layout: [GuestMemory.Layout] = []
            var i = 0
            while i < values.count {
                let size = (Int(clamping: values[i]) + GuestMemory.pageSize - 1) & ~(GuestMemory.pageSize - 1)
                guard size > 0, size <= 1 << 34 else { throw .invalidArgument("a memory region of \(values[i]) bytes: give 1 byte to 16 GiB") }
                let gpa = i + 1 < values.count ? values[i + 1] : GuestMemory.defaultGuestBase.rawValue
                layout.append(GuestMemory.Layout(guestAddress: GuestAddress(gpa), size: size))
                i += 2
            }
            let mapped = MemoryBox(try GuestMemory(layout: layout))
            var note = ""
            if let old = memory, old.handedToDevice, device != nil {
                retired.append(old)
                note = " (the previous memory stays mapped until the device is closed: the kernel may still use it)"
            }
            memory = mapped
            rings.removeAll()
            output("  guest memory: " + layout.map { "\($0.size) bytes at GPA 0x\(String($0.guestAddress.rawValue, radix: 16))" }.joined(separator: ", ") + note)
        case "alloc":
            let size = try require(invocation, "size"), align = try number(invocation, "align") ?? 64
            guard size > 0, align > 0, align & (align - 1) == 0 else { throw .invalidArgument("alloc takes a SIZE above 0 and a power-of-2 ALIGN") }
            guard let gpa = try requireMemory().allocate(size, alignment: align) else { throw .invalidArgument("guest memory has no \(size) bytes free") }
            return .number(gpa)
        case "ring":
            let memory = try requireMemory()
            let index = try index(), size = Int(try require(invocation, "size"))
            guard SplitRingLayout.isValidQueueSize(size) else { throw .invalidArgument("a ring of \(size) cannot be laid out: a power of 2 from 1 to 32768") }
            let layout = SplitRingLayout.offsets(queueSize: size)
            let gpa: UInt64
            if let at = try number(invocation, "at") {
                guard at & 15 == 0 else { throw .invalidArgument("a ring's descriptor table must be 16-byte aligned; 0x\(String(at, radix: 16)) is not") }
                _ = try host(at, length: layout.total)
                memory.claimed.append((at, UInt64(layout.total)))
                gpa = at
            } else {
                guard let taken = memory.allocate(UInt64(layout.total), alignment: 4096) else { throw .invalidArgument("guest memory has no room for a ring of \(size)") }
                gpa = taken
            }
            let base = try host(gpa, length: layout.total)
            // SAFETY: the block lies in guest memory this runner mapped and keeps mapped while
            // any device may use it; the view's writes stay inside the ring's own layout.
            let view = SplitRing(queueSize: UInt16(size), descriptors: base + layout.descriptors, avail: base + layout.avail, used: base + layout.used)
            view.reset()
            rings[index] = RingState(size: UInt16(size), descriptors: gpa + UInt64(layout.descriptors), avail: gpa + UInt64(layout.avail),
                                     used: gpa + UInt64(layout.used), view: view)
            return .number(gpa)
        case "ring-address":
            let ring = try requireRing(try index())
            switch word(invocation, "part") {
            case "desc": return .number(ring.descriptors)
            case "avail": return .number(ring.avail)
            default: return .number(ring.used)
            }
        case "set-mem-table":
            let memory = try requireMemory()
            let box = try requireDevice()
            memory.handedToDevice = true
            try box.device.setMemoryTable(memory.memory.map.memoryTable)
        case "set-vring-num":
            let index = try index(), num = try uint32(invocation, "num")
            try requireDevice().device.setVringNum(index: index, num: num)
            ringNums[index] = num
        case "set-vring-base":
            let index = try index(), base = try uint32(invocation, "base")
            try requireDevice().device.setVringBase(index: index, base: base)
            ringBases[index] = base
        case "get-vring-base": return .number(UInt64(try requireDevice().device.vringBase(index: try index())))
        case "set-vring-addr":
            let index = try index()
            let laidOut = rings[index]
            guard let desc = try number(invocation, "desc") ?? laidOut?.descriptors,
                  let avail = try number(invocation, "avail") ?? laidOut?.avail,
                  let used = try number(invocation, "used") ?? laidOut?.used else {
                throw .invalidArgument("set-vring-addr \(index) needs a ring: put `ring \(index) SIZE` first, or give desc=, avail= and used=")
            }
            let box = try requireDevice()
            let memory = try requireMemory()
            let log = try number(invocation, "log")
            memory.handedToDevice = true
            try box.device.setVringAddress(index: index, VringAddresses(descriptors: HostAddress(try host(desc, length: 16)), avail: HostAddress(try host(avail, length: 4)),
                                                                          used: HostAddress(try host(used, length: 4)), log: log.map { GuestAddress($0) }))
            // A ring named by address (not laid out here) gets a view, when its size is known.
            if laidOut == nil || laidOut!.descriptors != desc || laidOut!.avail != avail || laidOut!.used != used, let num = ringNums[index],
               SplitRingLayout.isValidQueueSize(Int(num)) {
                let n = Int(num)
                memory.claimed += [(desc, UInt64(16 * n)), (avail, UInt64(6 + 2 * n)), (used, UInt64(6 + 8 * n))]
                // SAFETY: each part lies wholly in guest memory this runner keeps mapped (checked
                // by `host`); writes through the view stay inside the parts' sizes for `n` entries.
                let view = SplitRing(queueSize: UInt16(n), descriptors: try host(desc, length: 16 * n), avail: try host(avail, length: 6 + 2 * n), used: try host(used, length: 6 + 8 * n))
                rings[index] = RingState(size: UInt16(n), descriptors: desc, avail: avail, used: used, view: view)
            }
        case "set-vring-kick", "set-vring-call", "set-vring-err":
            let box = try requireDevice()
            let index = try index()
            let doorbell: VringDoorbell = invocation.command == "set-vring-kick" ? .kick : invocation.command == "set-vring-call" ? .call : .error
            let (fd, event) = try fileArgument(invocation, "fd")
            switch doorbell {
            case .kick: try box.device.setVringKick(index: index, rawFD: fd)
            case .call: try box.device.setVringCall(index: index, rawFD: fd)
            case .error: try box.device.setVringErr(index: index, rawFD: fd)
            }
            doorbells[index, default: [:]][doorbell] = event
        case "set-vring-busyloop-timeout": try requireDevice().device.setVringBusyloopTimeout(index: try index(), microseconds: try uint32(invocation, "microseconds"))
        case "get-vring-busyloop-timeout": return .number(UInt64(try requireDevice().device.vringBusyloopTimeout(index: try index())))
        case "log":
            let size = try require(invocation, "size")
            guard size > 0, size <= 1 << 30 else { throw .invalidArgument("a dirty log of \(size) bytes: give 1 byte to 1 GiB") }
            let rounded = (Int(size) + GuestMemory.pageSize - 1) & ~(GuestMemory.pageSize - 1)
            if let old = logMemory, device != nil { retired.append(old) }
            // The log is not guest memory: the GPA of this mapping means nothing to the kernel.
            logMemory = MemoryBox(try GuestMemory(size: rounded, guestAddress: 0))
            return .number(UInt64(UInt(bitPattern: logMemory!.memory.map.regions[0].host)))
        case "set-log-base":
            guard let log = logMemory else { throw .invalidArgument("set-log-base needs a log: put `log SIZE` first") }
            log.handedToDevice = true
            try requireDevice().device.setLogBase(HostAddress(log.memory.map.regions[0].host))
        case "set-log-fd":
            let (fd, event) = try fileArgument(invocation, "fd")
            try requireDevice().device.setLogFD(rawFD: fd)
            logFD = event
        case "iotlb-update":
            let gpa = try require(invocation, "gpa"), size = try require(invocation, "size")
            let hva = try host(gpa, length: Int(clamping: size))
            let access: IOTLBMessage.Access = switch word(invocation, "perm") ?? "rw" { case "r": .read; case "w": .write; default: .readWrite }
            try requireMemory().handedToDevice = true
            try IOTLBMessage(kind: .update, iova: try require(invocation, "iova"), length: size, userAddress: UInt64(UInt(bitPattern: hva)), access: access)
                .write(to: try requireDevice().device.fd.rawValue, observer: record)
        case "iotlb-invalidate":
            try IOTLBMessage(kind: .invalidate, iova: try require(invocation, "iova"), length: try require(invocation, "size"))
                .write(to: try requireDevice().device.fd.rawValue, observer: record)
        case "iotlb-miss":
            let fd = try requireDevice().device.fd.rawValue
            let deadline = MonotonicClock.milliseconds() + Int(try number(invocation, "timeout") ?? 2000)
            while MonotonicClock.milliseconds() < deadline {
                if let message = try IOTLBMessage.read(from: fd, milliseconds: 50, observer: record), message.kind == .miss { return .number(message.iova) }
            }
            throw .timeout("no VHOST_IOTLB_MISS from the kernel")
        case "tap":
            let name = word(invocation, "name") ?? ""
            let opened = try Tap(name: name, observer: record)
            try opened.setLinkUp(true)
            // The host side hears only test frames' EtherType, so host-stack chatter does not fill it.
            let socket = try PacketSocket(interfaceIndex: try opened.interfaceIndex(), etherType: EthernetFrame.experimentalType)
            socket.setBuffers(bytes: 16 << 20)
            tap = TapBox(opened)
            hostSide = SocketBox(socket)
        case "set-vnet-hdr-size":
            guard let tap else { throw .invalidArgument("set-vnet-hdr-size needs a tap: put `tap NAME` first") }
            try tap.tap.setVnetHeaderSize(Int32(clamping: try require(invocation, "size")))
        case "link":
            guard let tap else { throw .invalidArgument("link needs a tap: put `tap NAME` first") }
            try tap.tap.setLinkUp(word(invocation, "state") == "up")
        case "set-offloads":
            guard let tap else { throw .invalidArgument("set-offloads needs a tap: put `tap NAME` first") }
            var bits: UInt32 = 0
            for operand in invocation.arguments["offloads"]?.operands ?? [] {
                if case .literal(let text) = operand, let bit = ScriptCommands.offloadBits[text] { bits |= bit } else { bits |= UInt32(truncatingIfNeeded: try resolveNumber(operand)) }
            }
            try tap.tap.setOffloads(Tap.Offloads(rawValue: bits))
        case "set-backend":
            let box = try requireDevice()
            let index = try index()
            if word(invocation, "fd") == "tap" {
                guard let tap else { throw .invalidArgument("set-backend \(index) tap needs a tap: put `tap NAME` first") }
                try box.device.setBackend(index: index, tap.tap)
            } else {
                let (fd, event) = try fileArgument(invocation, "fd")
                if let event { spareFDs.append(event) }
                try box.device.setBackend(index: index, fd: fd)
            }
        case "send": return try send(invocation)
        case "post": try post(invocation)
        case "receive": return try receive(invocation)
        case "host-send": try hostSend(invocation)
        case "host-expect": return try hostExpect(invocation)
        case "wait-call":
            let index = try index()
            guard let call = doorbells[index]?[.call] else { throw .invalidArgument("vring \(index) has no call eventfd: put set-vring-call \(index) first") }
            guard let count = call.event.wait(milliseconds: Int32(clamping: try number(invocation, "timeout") ?? 2000)) else {
                throw .timeout("no call on vring \(index)")
            }
            return .number(count)
        case "sleep": usleep(UInt32(clamping: (try require(invocation, "milliseconds")) * 1000))
        case "desc":
            let ring = try requireRing(try index())
            let i = try require(invocation, "index")
            guard i < UInt64(ring.size) else { throw .invalidArgument("descriptor \(i) is outside the ring of \(ring.size) entries (a script writes only inside its rings)") }
            var d = ring.view.descriptor(UInt16(i))
            if let addr = try number(invocation, "addr") { d.address = addr }
            if let len = try number(invocation, "len") { d.length = UInt32(truncatingIfNeeded: len) }
            if let text = word(invocation, "flags"), let flags = ScriptLiteral.descriptorFlags(text) { d.flags = DescriptorFlags(rawValue: flags) }
            else if let flags = try number(invocation, "flags") { d.flags = DescriptorFlags(rawValue: UInt16(truncatingIfNeeded: flags)) }
            if let next = try number(invocation, "next") { d.next = UInt16(truncatingIfNeeded: next) }
            ring.view.setDescriptor(UInt16(i), d)
            ring.writtenByHand = true
        case "avail":
            let ring = try requireRing(try index())
            let slot = try require(invocation, "slot"), head = try require(invocation, "head")
            ring.view.setAvailEntry(UInt16(truncatingIfNeeded: slot), head: UInt16(truncatingIfNeeded: head))
            ring.writtenByHand = true
        case "avail-idx":
            let ring = try requireRing(try index())
            // SAFETY: the index lives in the ring's memory, which stays mapped (see the memory rule).
            ring.view.availIndex.pointee.store(UInt16(truncatingIfNeeded: try require(invocation, "value")), ordering: .releasing)
            ring.writtenByHand = true
        case "used-idx":
            return .number(UInt64(try requireRing(try index()).view.usedIndex.pointee.load(ordering: .acquiring)))
        case "write", "read":
            let widthText = invocation.arguments["width"] == nil ? "8" : word(invocation, "width")
            guard let width = widthText.flatMap({ Int($0) }), [1, 2, 4, 8].contains(width) else {
                throw .invalidArgument("\(invocation.command): width takes 1, 2, 4 or 8 (a literal, not a variable)")
            }
            let pointer = try host(try require(invocation, "gpa"), length: width)
            // SAFETY: `host` checked that all WIDTH bytes lie in guest memory this runner maps;
            // unaligned stores and loads are byte-wise.
            if invocation.command == "write" {
                var value = (try require(invocation, "value")).littleEndian
                withUnsafeBytes(of: &value) { pointer.copyMemory(from: $0.baseAddress!, byteCount: width) }
                return nil
            }
            var value: UInt64 = 0
            withUnsafeMutableBytes(of: &value) { $0.baseAddress!.copyMemory(from: pointer, byteCount: width) }
            return .number(UInt64(littleEndian: value))
        case "kick":
            let index = try index()
            guard let kick = doorbells[index]?[.kick] else { throw .invalidArgument("vring \(index) has no kick eventfd: put set-vring-kick \(index) first") }
            kick.event.signal()
        case "print":
            let words = try (invocation.arguments["text"]?.operands ?? []).map { operand throws(VhostError) -> String in
                if case .literal(let text) = operand { return text }
                return "\(try resolve(operand))"
            }
            output("  " + words.joined(separator: " "))
        default:
            // The parser admits only the commands of ScriptCommands.all.
            throw .invalidArgument("\(invocation.command) is not a command this runner knows")
        }
        return nil
    }

    // MARK: frames

    /// The ring's driver, made on first use (starting at the base given to the kernel).
    private func driver(_ index: UInt32) throws(VhostError) -> (RingState, DriverBox) {
        let ring = try requireRing(index)
        guard !ring.writtenByHand else {
            throw .invalidArgument("vring \(index) was written by hand (desc, avail, avail-idx), so the driver no longer knows its state: lay it out again with `ring` to send or post")
        }
        if let box = ring.driver { return (ring, box) }
        let features = VirtioFeatures(rawValue: featureWords[0])
        let box = DriverBox(SplitVirtqueueDriver(ring: ring.view, eventIndex: features.contains(.eventIndex), inOrder: features.contains(.inOrder),
                                                 startIndex: UInt16(truncatingIfNeeded: ringBases[index] ?? 0)))
        ring.driver = box
        return (ring, box)
    }

    /// The buffer of `head`, at least `length` bytes (a bigger one replaces a smaller).
    private func buffer(_ ring: RingState, head: UInt16, length: Int) throws(VhostError) -> GuestBuffer {
        if let buffer = ring.buffers[Int(head)], buffer.length >= length { return buffer }
        let size = max(length, 2048)
        let memory = try requireMemory()
        guard let gpa = memory.allocate(UInt64(size), alignment: 64) else { throw .invalidArgument("guest memory has no room for a \(size)-byte buffer") }
        let buffer = GuestBuffer(guestAddress: GuestAddress(gpa), host: try host(gpa, length: size), length: size)
        ring.buffers[Int(head)] = buffer
        return buffer
    }

    /// Reaps used entries, throwing the ring violation as a broken queue.
    private func reap(_ box: DriverBox, queue: UInt32, each: (UsedElement) throws(VhostError) -> Void = { _ in }) throws(VhostError) -> Int {
        var count = 0
        do {
            while let element = try box.driver.nextUsed() {
                count += 1
                try each(element)
            }
        } catch let violation as RingViolation {
            throw .brokenQueue(queue: "vring \(queue)", reason: violation.description)
        } catch let error as VhostError {
            throw error
        } catch {
            throw .invalidArgument("\(error)")
        }
        return count
    }

    private func publish(_ box: DriverBox, queue: UInt32, frameBytes: Int) {
        options.ringObserver?(.published(queue: queue, chains: Int(box.driver.addedSincePublish), frameBytes: frameBytes))
        if box.driver.publish(), let kick = doorbells[queue]?[.kick] {
            kick.event.signal()
            options.ringObserver?(.kicked(queue: queue))
        }
    }

    static func frame(sequence: Int, size: Int?, pattern: UInt8?, source: MACAddress) -> [UInt8] {
        let length = max(18, size ?? TestFrame.length(sequence))
        var frame = EthernetFrame.build(destination: .broadcast, source: source, etherType: EthernetFrame.experimentalType, payload: [UInt8]())
        let seq = UInt32(truncatingIfNeeded: sequence)
        frame += [UInt8(seq >> 24), UInt8((seq >> 16) & 0xff), UInt8((seq >> 8) & 0xff), UInt8(seq & 0xff)]
        for i in 18..<length { frame.append(pattern ?? UInt8(truncatingIfNeeded: i &* 31 &+ sequence)) }
        return frame
    }

    private func send(_ invocation: Invocation) throws(VhostError) -> ScriptValue? {
        let queue = try uint32(invocation, "queue")
        let count = Int(clamping: try number(invocation, "count") ?? 1)
        let size = try number(invocation, "size").map { Int(clamping: $0) }
        let pattern = try number(invocation, "pattern").map { UInt8(truncatingIfNeeded: $0) }
        let timeout = Int(clamping: try number(invocation, "timeout") ?? 2000)
        if let size, size < 18 || size > 65535 { throw .invalidArgument("a frame of \(size) bytes: give 18 to 65535 (room for the sequence number)") }
        let (ring, box) = try driver(queue)
        let header = headerLength
        transmitShapes.append((transmitSequence, count, size, pattern))
        var sent = 0
        var deadline = MonotonicClock.milliseconds() + timeout
        while sent < count || box.driver.inFlight > 0 {
            if try reap(box, queue: queue) > 0 { deadline = MonotonicClock.milliseconds() + timeout }
            var added = 0, addedBytes = 0
            while sent < count, let head = box.driver.nextFreeHead {
                let frame = ScriptRunner.frame(sequence: transmitSequence, size: size, pattern: pattern, source: TestFrame.source)
                let buffer = try buffer(ring, head: head, length: header + frame.count)
                // SAFETY: head `head` is free, so the device does not read its buffer until the
                // avail entry naming it is published (a release store, after these writes).
                memset(buffer.host, 0, header)
                frame.withUnsafeBytes { (buffer.host + header).copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
                guard box.driver.add(BufferSegment(address: buffer.guestAddress.rawValue, length: UInt32(header + frame.count), deviceWritable: false)) != nil else { break }
                transmitSequence += 1
                sent += 1
                added += 1
                addedBytes += frame.count
            }
            if added > 0 { publish(box, queue: queue, frameBytes: addedBytes) }
            if sent == count && box.driver.inFlight == 0 { break }
            if MonotonicClock.milliseconds() > deadline {
                throw .timeout("the device used \(sent - box.driver.inFlight) of \(count) frames on vring \(queue) and then nothing for \(timeout) ms (\(box.driver.inFlight) in flight); is a backend attached and the kick eventfd set?")
            }
            usleep(100)
        }
        return nil
    }

    private func post(_ invocation: Invocation) throws(VhostError) {
        let queue = try uint32(invocation, "queue")
        let count = Int(clamping: try number(invocation, "count") ?? 1)
        let size = Int(clamping: try number(invocation, "size") ?? 2048)
        guard size >= headerLength + 14, size <= 1 << 20 else { throw .invalidArgument("a receive buffer of \(size) bytes: give \(headerLength + 14) (a header and an Ethernet header) to 1 MiB") }
        let (ring, box) = try driver(queue)
        // As many as fit: the rest would wait for `receive` to free descriptors.
        let fitting = min(count, box.driver.freeCount)
        for _ in 0..<fitting {
            guard let head = box.driver.nextFreeHead else { break }
            let buffer = try buffer(ring, head: head, length: size)
            _ = box.driver.add(BufferSegment(address: buffer.guestAddress.rawValue, length: UInt32(size), deviceWritable: true))
        }
        if fitting < count { output("  \(fitting) of \(count) buffers posted: vring \(queue) has no more free descriptors until frames are received") }
        if fitting > 0 { publish(box, queue: queue, frameBytes: fitting * (size - headerLength)) }
    }

    private func receive(_ invocation: Invocation) throws(VhostError) -> ScriptValue? {
        let queue = try uint32(invocation, "queue")
        let count = Int(clamping: try number(invocation, "count") ?? 1)
        let timeout = Int(clamping: try number(invocation, "timeout") ?? 2000)
        let (ring, box) = try driver(queue)
        let header = headerLength
        var received = 0, other = 0
        var deadline = MonotonicClock.milliseconds() + timeout
        while received < count {
            let reaped = try reap(box, queue: queue) { element throws(VhostError) in
                guard element.id < ring.size, let buffer = ring.buffers[Int(element.id)] else {
                    throw .brokenQueue(queue: "vring \(queue)", reason: "used entry names head \(element.id), which holds no buffer of ours")
                }
                let length = min(Int(element.length), buffer.length)
                guard length >= header else { other += 1; return }
                let frame = Array(UnsafeRawBufferPointer(start: buffer.host + header, count: length - header))
                guard frame.count >= 18, MACAddress(frame[6..<12]) == ScriptRunner.hostMAC, let sequence = TestFrame.sequence(of: frame) else { other += 1; return }
                guard sequence == receiveSequence else {
                    throw .invalidArgument("vring \(queue) received host frame \(sequence) where \(receiveSequence) was next (\(sequence < receiveSequence ? "a duplicate" : "\(sequence - receiveSequence) lost"))")
                }
                let shape = hostShapes.last { $0.first <= sequence && sequence < $0.first + $0.count }
                guard frame == ScriptRunner.frame(sequence: sequence, size: shape?.size, pattern: nil, source: ScriptRunner.hostMAC) else {
                    throw .invalidArgument("host frame \(sequence) arrived corrupt on vring \(queue) (\(frame.count) bytes)")
                }
                receiveSequence += 1
                received += 1
            }
            if reaped > 0 { deadline = MonotonicClock.milliseconds() + timeout; continue }
            if MonotonicClock.milliseconds() > deadline {
                throw .timeout("vring \(queue) received \(received) of \(count) host frames in \(timeout) ms (\(other) other frames); are buffers posted and the backend attached?")
            }
            usleep(100)
        }
        if other > 0 { output("  (\(other) other frames from the host stack skipped)") }
        return .number(UInt64(received))
    }

    private func requireHostSide() throws(VhostError) -> SocketBox {
        guard let hostSide else { throw .invalidArgument("this needs the tap's host side: put `tap NAME` first") }
        return hostSide
    }

    private func hostSend(_ invocation: Invocation) throws(VhostError) {
        let side = try requireHostSide()
        let count = Int(clamping: try number(invocation, "count") ?? 1)
        let size = try number(invocation, "size").map { Int(clamping: $0) }
        if let size, size < 18 || size > 65535 { throw .invalidArgument("a frame of \(size) bytes: give 18 to 65535") }
        hostShapes.append((hostSequence, count, size))
        for _ in 0..<count {
            try side.socket.send(ScriptRunner.frame(sequence: hostSequence, size: size, pattern: nil, source: ScriptRunner.hostMAC))
            hostSequence += 1
        }
    }

    private func hostExpect(_ invocation: Invocation) throws(VhostError) -> ScriptValue? {
        let side = try requireHostSide()
        let count = Int(clamping: try number(invocation, "count") ?? 1)
        let timeout = Int(clamping: try number(invocation, "timeout") ?? 2000)
        var seen = 0
        var deadline = MonotonicClock.milliseconds() + timeout
        while seen < count {
            let left = deadline - MonotonicClock.milliseconds()
            guard left > 0, let frame = side.socket.receive(milliseconds: Int32(clamping: left)) else {
                throw .timeout("the host side saw \(seen) of \(count) frames in \(timeout) ms (next expected: \(hostExpectedSequence), sent up to \(transmitSequence - 1))")
            }
            guard frame.count >= 18, MACAddress(frame[6..<12]) == TestFrame.source, let sequence = TestFrame.sequence(of: frame) else { continue }
            guard sequence == hostExpectedSequence else {
                throw .invalidArgument("the host side saw frame \(sequence) where \(hostExpectedSequence) was next (\(sequence < hostExpectedSequence ? "a duplicate" : "\(sequence - hostExpectedSequence) lost"))")
            }
            let shape = transmitShapes.last { $0.first <= sequence && sequence < $0.first + $0.count }
            guard frame == ScriptRunner.frame(sequence: sequence, size: shape?.size, pattern: shape?.pattern, source: TestFrame.source) else {
                throw .invalidArgument("frame \(sequence) reached the host side corrupt (\(frame.count) bytes)")
            }
            hostExpectedSequence += 1
            seen += 1
            deadline = MonotonicClock.milliseconds() + timeout
        }
        return .number(UInt64(seen))
    }
}

extension VhostError {
    /// The errno behind the error, for `expect ERRNO`: an ioctl's, or a system call's.
    var errno: Errno? {
        switch self {
        case .ioctl(let failure): failure.errno
        case .system(_, _, let errno), .permissionDenied(_, let errno): errno
        case .deviceMissing: .noSuchFileOrDirectory
        case .timeout: .timedOut
        default: nil
        }
    }
}
