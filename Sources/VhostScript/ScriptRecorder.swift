import SystemPackage
import Vhost
import Virtio

/// Writes what a command did to the kernel as a script that `vhostctl script run` replays:
/// every vhost ioctl with the kernel's answer as an expectation (`expect EBUSY` before a call
/// that failed, `expect base 17` after a GET), guest memory and ring addresses as guest-physical
/// addresses (the replay maps its own memory), and the driver's ring operations as `send` and
/// `post` lines. Replaying compares the kernel's answers with the recorded ones and stops at the
/// first difference: the tool for "what changed between kernel A and kernel B".
///
/// What is not replayed is written as a comment: interface ioctls (the tun requests the language
/// has commands for are replayed), the dirty log base (a host address), IOTLB traffic, requests
/// refused before the ioctl, and values that depend on the outside world (the RX vring's base
/// counts the frames the host happened to send).
public final class ScriptRecorder: Sendable {
    struct State {
        var lines: [String] = []
        var table: MemoryTable? = nil
        var nums: [VringIndex: UInt32] = [:]
        var features: UInt64 = 0
        var highFeatures: UInt64 = 0
        /// Ring operations not yet written, per vring: chains and frame bytes.
        var pending: [VringIndex: (chains: Int, bytes: Int)] = [:]
    }
    private let state = Locked(State())

    public init() {}

    /// Give this to the device, tap and session as their observer (chain it with `--trace`'s).
    public var ioctlObserver: IoctlObserver { { [self] event in self.record(event) } }
    /// Give this to the queue pair's configuration.
    public var ringObserver: RingObserver { { [self] event in self.record(event) } }

    /// The script so far, with `header` as its opening comment.
    public func script(header: String) -> String {
        state.withLock { state in
            flush(&state)
            let top = header.split(separator: "\n", omittingEmptySubsequences: false).map { "# \($0)" }
            return (top + state.lines).joined(separator: "\n") + "\n"
        }
    }

    private func flush(_ state: inout State) {
        for (queue, (chains, bytes)) in state.pending.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            let header = HighFeatures(rawValue: state.highFeatures).netHeaderLength ?? VirtioFeatures(rawValue: state.features).netHeaderLength
            if queue == .receive {
                let size = max(bytes / max(chains, 1) + header, header + 14)
                state.lines.append("post \(queue) count=\(chains) size=\(size)")
            } else {
                let size = min(max(bytes / max(chains, 1), 18), 65535)
                state.lines.append("send \(queue) count=\(chains) size=\(size)   # frame contents are not recorded, only their number and mean size")
            }
        }
        state.pending.removeAll()
    }

    func record(_ event: RingEvent) {
        state.withLock { state in
            if case .published(let queue, let chains, let bytes) = event {
                let index = VringIndex(queue)
                let old = state.pending[index] ?? (0, 0)
                state.pending[index] = (old.chains &+ chains, old.bytes &+ bytes)
            }
        }
    }

    func record(_ event: IoctlEvent) {
        state.withLock { state in
            flush(&state)
            state.lines += ScriptRecorder.lines(for: event, &state)
        }
    }

    /// The script lines of one event: the request written as its command (the syntax tables'
    /// names and parameters), preceded by `expect ERRNO` when it failed and followed by a check
    /// of what a GET answered.
    static func lines(for event: IoctlEvent, _ state: inout State) -> [String] {
        let failed: Errno? = if case .failure(let errno) = event.result { errno } else { nil }
        var lines: [String] = []
        func call(_ line: String, then check: String? = nil) {
            if let failed { lines.append("expect \(failed.name)") }
            lines.append(line)
            if failed == nil, let check { lines.append(check) }
        }
        switch event.operation {
        case .open(let path) where path != "/dev/net/tun":
            // A replay opens the device its runner is given; another node is named.
            call(path == VhostNetDevice.defaultPath || path == ScriptRunner.inProcessDeviceName ? "open" : "open \(path)")
            return lines
        case .close:
            return ["close"]
        case .request(.vhost(.setLogBase)):
            // The log is a host address; a replay maps its own with `log SIZE`.
            return ["# \(event) (not replayed: the dirty log is a host address; write `log SIZE` and `set-log-base` here to log)"]
        case .request(.vhost(let request)):
            guard let line = line(for: request, state) else { return ["# \(event) (not replayed: the addresses are outside the recorded memory)"] }
            var check: String? = nil
            if let answer = request.syntax.answer {
                switch request {
                case .getVringBase(let index) where index == .receive:
                    // RX's base counts the frames the host happened to send: not an expectation.
                    return [line + "   # was \(event.answer) when recorded; RX counts the frames the host happened to send"]
                case .getFeaturesArray:
                    check = "expect \(answer) == \(hex(event.answer.value))"
                default:
                    check = "expect \(answer) == \(event.answer.value > 0xffff ? hex(event.answer.value) : "\(event.answer.value)")"
                }
            }
            if case .setMemoryTable(let table) = request {
                // The replay maps its own memory at the same guest-physical addresses.
                lines.append("memory " + table.regions.map { "\(hex($0.size)) \(hex($0.guestAddress))" }.joined(separator: " "))
                call("set-mem-table")
                if failed == nil { state.table = table }
                return lines
            }
            call(line, then: check)
            if failed == nil {
                switch request {
                case .setFeatures(let bits): state.features = bits; state.highFeatures = 0
                case .setFeaturesArray(let words): state.features = words.first ?? 0; state.highFeatures = words.count > 1 ? words[1] : 0
                case .setVringNum(let index, let num): state.nums[index] = num
                default: break
                }
            }
            return lines
        case .request(.tun(.setInterface(let name, _))):
            call("tap \(name)")
            return lines
        case .request(.tun(let request)):
            guard let syntax = request.syntax else { return ["# \(event) (not replayed)"] }
            call(([syntax.name] + words(syntax.parameters, request.scriptValues, state)).joined(separator: " "))
            return lines
        default:
            return ["# \(event) (not replayed)"]
        }
    }

    /// The command line of a vhost request: nil when an address lies outside the recorded table.
    static func line(for request: VhostRequest, _ state: State) -> String? {
        let syntax = request.syntax
        var values = request.scriptValues
        if case .setMemoryTable = request { values["regions"] = nil }
        for (key, value) in values {
            if case .host(let address) = value {
                guard let gpa = guestAddress(of: address, state) else { return nil }
                values[key] = .number(gpa)
            }
        }
        return ([syntax.name] + words(syntax.parameters, values, state, fdWord: request.kind == .netSetBackend ? "tap" : "eventfd")).joined(separator: " ")
    }

    /// The words of the parameters, positional while every earlier one is given, then NAME=VALUE.
    static func words(_ parameters: [RequestParameter], _ values: [String: RequestValue], _ state: State, fdWord: String = "eventfd") -> [String] {
        var words: [String] = []
        var positional = true
        for parameter in parameters {
            guard let value = values[parameter.name] else { positional = false; continue }
            let text: String
            switch value {
            case .number(let n):
                if case .choice(let choices) = parameter.kind, let name = choices.first(where: { $0.value == n })?.key { text = name }
                else if case .vring = parameter.kind { text = "\(n)" }
                else if case .signed32 = parameter.kind { text = "\(Int32(truncatingIfNeeded: n))" }
                else { text = n > 0xffff || parameter.kind == .features || parameter.kind == .backendFeatures || parameter.kind == .offloads ? hex(n) : "\(n)" }
            case .words(let w):
                let high = HighFeatures(rawValue: w.count > 1 ? w[1] : 0).featureNames
                text = ([hex(w.first ?? 0)] + high).joined(separator: " ")
            case .fd(let fd): text = fd < 0 ? "-1" : fdWord
            case .host(let address): text = hex(address.rawValue)
            case .table: continue
            }
            words.append(positional ? text : "\(parameter.name)=\(text)")
        }
        return words
    }

    static func guestAddress(of address: HostAddress, _ state: State) -> UInt64? {
        guard let table = state.table else { return nil }
        for region in table.regions where address.rawValue >= region.userspaceAddress && address.rawValue - region.userspaceAddress < region.size {
            return region.guestAddress + (address.rawValue - region.userspaceAddress)
        }
        return nil
    }

    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}
