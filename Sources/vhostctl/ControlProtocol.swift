import FoundationEssentials
import Vhost

/// The control socket's requests (`attach --control PATH`, `vhostctl ctl`): one JSON object a
/// line, `{"command":"NAME","args":["ARG",…]}` (`args` may be left out). docs/json.md documents
/// them and their replies.
enum ControlCommand: Equatable {
    case stats
    case stop
    case resume
    case link(up: Bool)
    case queue(Int, enable: Bool)
    case offloads(Tap.Offloads)
    case pcapStart(String)
    case pcapStop
    case dirtyLog(on: Bool)

    /// The longest request line accepted, newline included: a longer one is refused.
    static let maximumRequestLength = 4096

    /// Every command with its arguments, as `vhostctl ctl --help` and an error reply list them.
    static let usage = "stats | stop | resume | link up|down | queue N enable|disable | offloads NAME… | pcap start FILE | pcap stop | dirty-log on|off"

    private struct Request: Decodable {
        var command: String
        var args: [String]?
    }

    /// Parses one request line (without its newline). Throws a `ControlError` naming what was
    /// wrong: not JSON, no command, an unknown command, missing or bad arguments.
    static func parse(line: some Collection<UInt8>) throws(ControlError) -> ControlCommand {
        guard line.count < maximumRequestLength else { throw ControlError("request longer than \(maximumRequestLength) bytes") }
        let request: Request
        do {
            request = try JSONDecoder().decode(Request.self, from: Data(line))
        } catch {
            throw ControlError("not a request: send one JSON object a line, e.g. {\"command\":\"stats\"}")
        }
        return try parse(command: request.command, arguments: request.args ?? [])
    }

    /// Parses a command and its arguments (also what `vhostctl ctl` checks before sending).
    static func parse(command: String, arguments: [String]) throws(ControlError) -> ControlCommand {
        func count(_ n: Int, _ form: String) throws(ControlError) {
            guard arguments.count == n else { throw ControlError("\(command) takes \(form)") }
        }
        switch command {
        case "stats": try count(0, "no arguments"); return .stats
        case "stop": try count(0, "no arguments"); return .stop
        case "resume": try count(0, "no arguments"); return .resume
        case "link":
            try count(1, "up or down")
            switch arguments[0] {
            case "up": return .link(up: true)
            case "down": return .link(up: false)
            default: throw ControlError("link takes up or down, not \(arguments[0])")
            }
        case "queue":
            try count(2, "a queue pair number and enable or disable, e.g. queue 1 disable")
            guard let index = Int(arguments[0]), index >= 0 else { throw ControlError("queue: \(arguments[0]) is not a queue pair number") }
            switch arguments[1] {
            case "enable": return .queue(index, enable: true)
            case "disable": return .queue(index, enable: false)
            default: throw ControlError("queue takes enable or disable, not \(arguments[1])")
            }
        case "offloads":
            guard !arguments.isEmpty else { throw ControlError("offloads takes offload names (\(DatapathOptions.offloadNames.keys.sorted().joined(separator: " ")))") }
            var offloads = Tap.Offloads()
            for name in arguments {
                guard let one = DatapathOptions.offloadNames[name.lowercased()] else {
                    throw ControlError("offloads: unknown offload \(name); known: \(DatapathOptions.offloadNames.keys.sorted().joined(separator: " "))")
                }
                offloads.formUnion(one)
            }
            return .offloads(offloads)
        case "pcap":
            if arguments == ["stop"] { return .pcapStop }
            guard arguments.count == 2, arguments[0] == "start", !arguments[1].isEmpty else { throw ControlError("pcap takes start FILE or stop") }
            return .pcapStart(arguments[1])
        case "dirty-log":
            try count(1, "on or off")
            switch arguments[0] {
            case "on": return .dirtyLog(on: true)
            case "off": return .dirtyLog(on: false)
            default: throw ControlError("dirty-log takes on or off, not \(arguments[0])")
            }
        default:
            throw ControlError("unknown command \(command.prefix(64)); commands: \(usage)")
        }
    }
}

/// Why a control request was refused: the `error` of `{"ok":false,"error":…}`.
struct ControlError: Error, Equatable {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

/// A control reply: `{"ok":true,"message":…,…}` or `{"ok":false,"error":…}`, one line.
struct ControlReply: Encodable {
    var ok: Bool
    /// One human line saying what was done (ok replies).
    var message: String?
    /// Why the request was refused (error replies).
    var error: String?
    /// `stats`: whether the datapath is stopped (`stop`), the counters as attach's stats event has them.
    var stopped: Bool?
    var counters: AttachEvent.Counters?
    var queues: [AttachEvent.QueuePair]?
    var tap: AttachEvent.TapCounters?
    /// `stats`: the seconds since the previous `stats`, which the rates are over (absent for the first).
    var intervalSeconds: Double?
    /// `dirty-log on`: the pages the dirty log has marked so far.
    var dirtyPages: Int?

    static func failure(_ reason: String) -> ControlReply { ControlReply(ok: false, error: reason) }
    static func done(_ message: String) -> ControlReply { ControlReply(ok: true, message: message) }

    /// The reply as one JSON line with its newline.
    var line: String {
        ((try? JSONOutput.line(self)) ?? #"{"error":"cannot encode the reply","ok":false}"#) + "\n"
    }
}
