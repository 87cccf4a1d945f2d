import Glibc
import NetFormats
import Vhost
import VhostModel
import Virtio

/// Runs a `Script` against a vhost-net device, the kernel's or the in-process one: every request
/// printed with its decoded arguments and the device's answer, every expectation checked.
///
/// Each group of commands has its executor (`DeviceExecutor`: the device and its requests;
/// `MemoryExecutor`; `RingExecutor`; `RawRingExecutor`; `FrameExecutor`; `HostSideExecutor`),
/// working on one `ScriptSession`; the runner walks the statements, dispatches each typed
/// action, and compares outcomes with what the script expected.
///
/// The tool's memory stays safe whatever a script asks: a request through which the kernel
/// could write outside memory mapped for it is refused before the ioctl (an `IoctlEvent` of
/// `.refused` for the observer, `VhostError.refused`), memory the device was told about stays
/// mapped until the device is closed, raw ring writes stay inside the rings, and every number
/// from the script is checked against its width or limit.
public final class ScriptRunner {
    /// The device `open` opens.
    public enum Device: Sendable, Equatable {
        /// The kernel's vhost-net device at `path` (`open PATH` overrides it).
        case kernel(path: String = VhostNetDevice.defaultPath)
        /// The in-process device of `VhostModel`, offering `features`; `tap NAME` makes a frame
        /// pipe whose host end is the host side. Needs no root and no /dev/vhost-net.
        case inProcess(features: VirtioFeatures = InProcessVhostNetDevice.defaultFeatures)
    }

    /// A command did not do what the script expected (or several did, with `keepGoing`).
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        /// The failures of the commands behind it (empty for value expectations that missed).
        public var causes: [ScriptError]
        /// Whether a limit of the tool stopped the script (the CLI exits 64, as for a parse error).
        public var isLimit: Bool { causes.contains(where: \.isLimit) }
    }

    public struct Options {
        /// Report a missed expectation and go on (the run still fails at the end).
        public var keepGoing = false
        /// The device `open` opens.
        public var device = Device.kernel()
        /// Told of every ioctl and of every request refused before one, as `--trace` and `--record` want.
        public var observer: IoctlObserver? = nil
        /// Told of the `send` and `post` publishes and kicks (`--record`).
        public var ringObserver: RingObserver? = nil
        /// The limits applied while running (the parser applies the script's own).
        public var limits = ScriptLimits.standard
        /// Told of every command line as it runs (see `CommandRun`): a coverage record, a
        /// progress display. Nil costs nothing.
        public var commandObserver: CommandObserver? = nil
        /// The character devices `open` may open on the kernel: /dev/vhost-net's number, and
        /// those the command line adds (`--allow-device`). Anything else is refused before it is
        /// opened (`ScriptError.notAllowed`).
        public var acceptedDevices: Set<DeviceNumber> = [.vhostNet]
        /// Whether `tap NAME` may attach to an interface the script did not create in this run
        /// (`--allow-existing-tap`). Without it, a tap is created with IFF_TUN_EXCL.
        public var allowExistingTaps = false
        public init() {}
    }

    /// A command line that ran: its command and whether it did what the script expected. Lines
    /// that only parsed never make one: those after the run stopped, those in a `repeat` of 0
    /// iterations, those after a failure without `keepGoing`.
    public struct CommandRun: Sendable, Equatable {
        /// The command's name, as `ScriptCommands.all` names it (`set-owner`, `send`).
        public var command: String
        /// Where the line is (the included file's, for a line of an include).
        public var location: SourceLocation
        /// Whether the outcome was the one expected: success, or the errno of its `expect ERRNO`.
        public var asExpected: Bool

        public init(command: String, location: SourceLocation, asExpected: Bool) {
            self.command = command; self.location = location; self.asExpected = asExpected
        }
    }

    /// Told of each command line once it ran and its outcome was compared with the expectation,
    /// before the run reports or stops on a miss.
    public typealias CommandObserver = @Sendable (CommandRun) -> Void

    /// The name an in-process device's `open` is reported under.
    public static let inProcessDeviceName = "in-process"
    /// The source address of frames the host side sends (ours use `TestFrame.source`).
    public static let hostMAC = MACAddress(0x52, 0x54, 0x00, 0x00, 0x00, 0x01)

    let session: ScriptSession
    let output: (String) -> Void
    private var results: [String: ScriptValue] = [:]
    private var iterations: UInt64 = 0
    /// Expectations missed under `keepGoing`.
    public private(set) var missed: [String] = []
    private var missedCauses: [ScriptError] = []

    public init(options: Options = Options(), output: @escaping (String) -> Void) {
        session = ScriptSession(options: options, output: output)
        self.output = output
    }

    /// The regions of memory that were replaced while the device could still use them; they stay
    /// mapped until the device is closed.
    public var retiredMappings: [GuestMemoryRegion] { session.retired.flatMap { $0.memory.map.regions } }
    /// The regions of the current guest memory.
    public var memoryRegions: [GuestMemoryRegion] { session.memory?.memory.map.regions ?? [] }
    /// Guest memory and logs mapped now, kept ones included, in bytes.
    public var mappedBytes: UInt64 { session.mappedBytes }
    /// The ring laid out for a vring, while its memory is current.
    package func ring(_ index: UInt32) -> SplitRing? { session.rings[VringIndex(index)]?.view }
    /// A variable's value after the run.
    public func variable(_ name: String) -> ScriptValue? { session.variables[name] }

    // MARK: running

    /// Runs every statement. Without `keepGoing`, stops at the first one whose outcome differs
    /// from what was expected; with it, goes on and throws at the end if any differed. A limit
    /// of the tool (the repeat iterations of the run) always stops the run.
    public func run(_ script: Script) throws(Failure) {
        try run(script.statements)
        if !missed.isEmpty {
            throw Failure(description: "\(missed.count) expectation(s) missed:\n" + missed.joined(separator: "\n"), causes: missedCauses)
        }
    }

    private func miss(_ message: String, _ cause: ScriptError? = nil) throws(Failure) {
        if options.keepGoing && cause?.isLimit != true {
            output("MISSED \(message)")
            missed.append(message)
            if let cause { missedCauses.append(cause) }
        } else {
            throw Failure(description: message, causes: (cause.map { [$0] } ?? []) + missedCauses)
        }
    }

    private var options: Options { session.options }

    /// Runs a block; recursion follows the nesting of repeats, which the parser bounds.
    private func run(_ statements: [Statement]) throws(Failure) {
        for statement in statements {
            switch statement {
            case .invoke(let invocation):
                try invoke(invocation)
            case .check(let check):
                let outcome: Result<(Bool, String), ScriptError>
                do { outcome = .success(try CheckEvaluator(session: session, results: results).evaluate(check)) } catch { outcome = .failure(error) }
                switch outcome {
                case .success((true, let text)): output("\(check.location): \(text)")
                case .success((false, let text)): try miss("\(check.location): expected \(text)")
                case .failure(let error): try miss("\(check.location): expect: \(error)", error)
                }
            case .expectRingError(let queue, let milliseconds, let location):
                let outcome: Result<(VringIndex, Int32, UInt64?), ScriptError>
                do {
                    let index = try session.index(queue), wait = try session.milliseconds(milliseconds)
                    let event = try session.doorbell(index, .error)
                    outcome = .success((index, wait, event.value.wait(milliseconds: wait)))
                } catch {
                    outcome = .failure(error)
                }
                switch outcome {
                case .success((let index, _, let count?)):
                    output("\(location): ring error on vring \(index) (\(count) signal\(count == 1 ? "" : "s")), as expected")
                case .success((let index, let wait, nil)):
                    try miss("\(location): expected a ring error on vring \(index) within \(wait) ms, found none")
                case .failure(let error):
                    try miss("\(location): expect ring-error: \(error)", error)
                }
            case .loop(let count, let variable, let body, let location):
                let n: UInt64
                do { n = try session.number(count) } catch {
                    try miss("\(location): repeat: \(error)", error)
                    continue
                }
                var i: UInt64 = 0
                while i < n {
                    iterations += 1
                    if iterations > options.limits.iterations {
                        throw Failure(description: "\(location): repeat: more than \(options.limits.iterations) iterations in this run (\(options.limits.describe(.iterations)))",
                                      causes: [.limit("repeat iterations")])
                    }
                    if let variable { session.variables[variable] = .number(i) }
                    try run(body)
                    i += 1
                }
            }
        }
    }

    private func invoke(_ invocation: Invocation) throws(Failure) {
        _ = session.events.take()
        let outcome: Result<ScriptValue?, ScriptError>
        do {
            outcome = .success(try execute(invocation.action))
        } catch {
            outcome = .failure(error)
        }
        let events = session.events.take()
        let trace = events.map { "\($0)" }.joined(separator: "; ")
        // An answer the trace shows already (a GET's) is not repeated.
        let shown = events.contains { $0.answer != .none }
        let location = invocation.location
        if let observer = options.commandObserver {
            let asExpected = switch (outcome, invocation.expected) {
            case (.success, .success): true
            case (.failure(let error), .errno(let expected)): error.errno == expected
            default: false
            }
            observer(CommandRun(command: invocation.command, location: location, asExpected: asExpected))
        }
        let text = describe(invocation)
        switch (outcome, invocation.expected) {
        case (.success(let value), .success):
            if let value {
                if let binding = invocation.binding { session.variables[binding] = value }
                if let answer = invocation.answer { results[answer] = value }
            }
            output("\(location): \(text)\(trace.isEmpty ? "" : " : \(trace)")\(shown ? "" : value.map { " → \($0)" } ?? "")")
        case (.failure(let error), .errno(let expected)) where error.errno == expected:
            output("\(location): \(text) : \(trace.isEmpty ? "\(error)" : trace), \(expected.name) as expected")
        case (.failure(let error), .errno(let expected)):
            try miss("\(location): expected \(expected.name) from \(invocation.command), found: \(error)", error)
        case (.success, .errno(let expected)):
            try miss("\(location): expected \(expected.name) from \(invocation.command), found success (\(trace.isEmpty ? "no ioctl" : trace))")
        case (.failure(let error), .success):
            try miss("\(location): \(invocation.command) failed: \(error)", error)
        }
    }

    /// The command as written, with each variable's value.
    private func describe(_ invocation: Invocation) -> String {
        let words = invocation.words.map { word -> String in
            switch word {
            case .text(let text): return text
            case .variable(let prefix, let name, let offset):
                let value = (try? session.offsetValue(name, offset)).map { "\($0)" } ?? "?"
                return "\(prefix)$\(name)\(ScriptSession.offsetText(offset))(=\(value))"
            }
        }
        return (invocation.binding.map { "let \($0) = " } ?? "") + words.joined(separator: " ")
    }

    /// Runs one action with its group's executor.
    private func execute(_ action: Action) throws(ScriptError) -> ScriptValue? {
        let device = DeviceExecutor(session: session), memory = MemoryExecutor(session: session), rings = RingExecutor(session: session)
        let raw = RawRingExecutor(session: session), frames = FrameExecutor(session: session), host = HostSideExecutor(session: session)
        switch action {
        case .vhost(let statement): return try device.perform(statement)
        case .tun(let statement): return try device.perform(statement)
        case .open(let path): try device.open(path: path)
        case .close: try device.close()
        case .iotlbUpdate(let iova, let size, let gpa, let access): try device.iotlbUpdate(iova: iova, size: size, gpa: gpa, access: access)
        case .iotlbInvalidate(let iova, let size): try device.iotlbInvalidate(iova: iova, size: size)
        case .iotlbMiss(let timeout): return try device.iotlbMiss(timeout: timeout)
        case .memory(let regions): try memory.map(regions)
        case .alloc(let size, let alignment): return try memory.alloc(size: size, alignment: alignment)
        case .log(let size): return try memory.mapLog(size: size)
        case .readLog(let offset, let width): return try memory.readLog(offset: offset, width: width)
        case .write(let gpa, let value, let width): try memory.write(gpa: gpa, value: value, width: width)
        case .read(let gpa, let width): return try memory.read(gpa: gpa, width: width)
        case .ring(let index, let size, let at): return try rings.layOut(index: index, size: size, at: at)
        case .ringAddress(let index, let part): return try rings.address(index: index, part: part)
        case .descriptor(let queue, let index, let address, let length, let flags, let next):
            try raw.descriptor(queue: queue, index: index, address: address, length: length, flags: flags, next: next)
        case .avail(let queue, let slot, let head): try raw.avail(queue: queue, slot: slot, head: head)
        case .availIndex(let queue, let value): try raw.availIndex(queue: queue, value: value)
        case .usedIndex(let queue): return try raw.usedIndex(queue: queue)
        case .kick(let queue): try raw.kick(queue: queue)
        case .send(let queue, let count, let size, let pattern, let timeout):
            try frames.send(queue: queue, count: count, size: size, pattern: pattern, timeout: timeout)
        case .post(let queue, let count, let size): try frames.post(queue: queue, count: count, size: size)
        case .receive(let queue, let count, let timeout): return try frames.receive(queue: queue, count: count, timeout: timeout)
        case .waitCall(let queue, let timeout): return try frames.waitCall(queue: queue, timeout: timeout)
        case .tap(let name): try host.tap(name: name)
        case .link(let up): try host.link(up: up)
        case .hostSend(let count, let size): try host.send(count: count, size: size)
        case .hostExpect(let count, let timeout): return try host.expect(count: count, timeout: timeout)
        case .sleep(let milliseconds):
            // Bounded by the limit on waits; poll(2) with no fds is a sleep that EINTR shortens.
            _ = poll(nil, 0, try session.milliseconds(milliseconds))
        case .print(let words):
            let text = words.map { word -> String in
                switch word {
                case .text(let text): return text
                case .variable(let name, let offset):
                    if offset == 0, let value = session.variables[name] { return "\(value)" }
                    return (try? session.offsetValue(name, offset)).map { "\(ScriptValue.number($0))" } ?? "?"
                }
            }
            output("  " + text.joined(separator: " "))
        }
        return nil
    }
}

/// Evaluates `expect SUBJECT [OP] VALUE...` against the answers and variables.
struct CheckEvaluator {
    let session: ScriptSession
    let results: [String: ScriptValue]

    /// Whether the check passed, and the text of the comparison (with what was found).
    func evaluate(_ check: ValueCheck) throws(ScriptError) -> (Bool, String) {
        let subjectName: String
        let subject: ScriptValue
        switch check.subject {
        case .answer(let name):
            subjectName = name
            guard let value = results[name] else { throw .missingPrerequisite("no command has answered \(name) yet") }
            subject = value
        case .variable(let name, let offset):
            subjectName = "$\(name)\(ScriptSession.offsetText(offset))"
            guard let value = session.variables[name] else { throw .missingPrerequisite("$\(name) has no value yet (its let has not run, or failed)") }
            subject = offset == 0 ? value : .number(try session.offsetValue(name, offset))
        }
        var values: [ScriptValue] = []
        for value in check.values {
            switch value {
            case .constant(let v, _): values.append(v)
            case .variable(let name, let offset):
                guard let v = session.variables[name] else { throw .missingPrerequisite("$\(name) has no value yet (its let has not run, or failed)") }
                values.append(offset == 0 ? v : .number(try session.offsetValue(name, offset)))
            }
        }
        let passed: Bool
        switch check.comparison {
        case .contains, .lacks:
            var want: [UInt64] = [0, 0]
            for v in values {
                switch v {
                case .number(let n): want[0] |= n
                case .words(let w): for (i, x) in w.enumerated() where i < 2 { want[i] |= x }
                }
            }
            let have: [UInt64] = if case .words(let w) = subject { w + [0, 0] } else { [subject.number, 0] }
            let present = (0..<2).allSatisfy { have[$0] & want[$0] == want[$0] }
            let absent = (0..<2).allSatisfy { have[$0] & want[$0] == 0 }
            passed = check.comparison == .contains ? present : absent
        default:
            let a = subject.number, b = values.first?.number ?? 0
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
        let wanted = check.values.map { value -> String in
            switch value {
            case .constant(_, let text): return text
            case .variable(let name, let offset): return "$\(name)\(ScriptSession.offsetText(offset))"
            }
        }.joined(separator: " ")
        let text = "\(subjectName) \(check.comparison.rawValue) \(wanted)"
        return (passed, passed ? "\(text): yes (\(subject))" : "\(text), found \(subject)")
    }
}
