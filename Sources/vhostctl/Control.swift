import FoundationEssentials
import ArgumentParser
import Glibc
import Vhost

/// `vhostctl ctl PATH COMMAND [ARGS]`: one request to a running attach's control socket
/// (`attach --control PATH`), its reply printed; exit 1 on an error reply.
struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Send one command to a running attach's control socket (attach --control PATH) and print the reply.",
        discussion: "Commands: \(ControlCommand.usage). With --json the reply is printed as the JSON line the socket sent. Exit status 1 when attach refused the request.")

    @OptionGroup(title: "Global options") var global: GlobalOptions

    @Argument(help: "The control socket (attach --control PATH).", completion: .file())
    var path: String

    @Argument(help: "The command: stats, stop, resume, link, queue, offloads, pcap, dirty-log.")
    var command: String

    @Argument(help: "The command's arguments, e.g. `link down`, `queue 1 disable`.")
    var arguments: [String] = []

    func validate() throws {
        do { _ = try ControlCommand.parse(command: command, arguments: arguments) } catch { throw ValidationError(error.reason) }
    }

    func run() throws {
        try runReportingErrors {
            let request = try JSONOutput.line(CtlRequest(command: command, args: arguments.isEmpty ? nil : arguments)) + "\n"
            let line: [UInt8]
            do { line = try Ctl.exchange(path: path, request: request) } catch let error as ControlError {
                throw CLIError(message: "vhostctl ctl: \(error.reason)", status: ExitStatus.failure)
            }
            let text = String(decoding: line, as: UTF8.self)
            let reply = CtlReplyText(json: text)
            if global.json { print(text) } else { print(reply.human) }
            if !reply.ok { throw ExitCode(ExitStatus.failure) }
        }
    }

    /// Sends `request` and reads one reply line (10 s at most).
    static func exchange(path: String, request: String) throws(ControlError) -> [UInt8] {
        let fd = try ControlServer.connectSocket(path)
        defer { close(fd) }
        let bytes = Array(request.utf8)
        guard bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
            throw ControlError("\(path): cannot send: \(String(cString: strerror(errno)))")
        }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while reply.count < 1 << 20 {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 10_000) > 0 else { throw ControlError("\(path): no reply within 10 s") }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            reply.append(contentsOf: chunk[0..<n])
            if let newline = reply.firstIndex(of: 10) { return Array(reply[..<newline]) }
        }
        guard !reply.isEmpty else { throw ControlError("\(path): the socket closed without a reply") }
        return reply
    }
}

struct CtlRequest: Encodable {
    var command: String
    var args: [String]?
}

/// A reply as a person reads it.
struct CtlReplyText {
    var ok: Bool
    var human: String

    init(json text: String) {
        struct Reply: Decodable {
            struct Side: Decodable { var frames: UInt64; var bytes: UInt64; var drops: UInt64; var ringErrors: UInt64; var calls: UInt64; var kicks: UInt64; var framesPerSecond: Double; var bytesPerSecond: Double }
            struct Queue: Decodable { var queuePair: Int; var running: Bool; var rx: Side; var tx: Side }
            struct TapCounters: Decodable { var txPacketsTowardUs: UInt64; var txDroppedTowardUs: UInt64; var rxPacketsFromUs: UInt64; var rxDroppedFromUs: UInt64 }
            var ok: Bool
            var message: String?
            var error: String?
            var stopped: Bool?
            var queues: [Queue]?
            var tap: TapCounters?
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        guard let reply = try? decoder.decode(Reply.self, from: Data(text.utf8)) else {
            ok = false
            human = "error: not a control reply: \(text.prefix(200))"
            return
        }
        ok = reply.ok
        guard reply.ok else { human = "error: \(reply.error ?? "refused")"; return }
        var lines = [reply.message ?? "ok"]
        if let stopped = reply.stopped { lines.append(stopped ? "datapath: stopped" : "datapath: running") }
        for q in reply.queues ?? [] {
            func side(_ s: Reply.Side) -> String { "\(s.frames) frames \(s.bytes) bytes drops \(s.drops) ring-errors \(s.ringErrors) calls \(s.calls) kicks \(s.kicks)" }
            lines.append("queue \(q.queuePair)\(q.running ? "" : " (stopped)"): rx \(side(q.rx)) | tx \(side(q.tx))")
        }
        if let tap = reply.tap {
            lines.append("tap: host sent toward us \(tap.txPacketsTowardUs), dropped before our ring \(tap.txDroppedTowardUs) | received from us \(tap.rxPacketsFromUs), dropped \(tap.rxDroppedFromUs)")
        }
        human = lines.joined(separator: "\n")
    }
}
