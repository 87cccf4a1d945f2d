import Testing
import Vhost
@testable import vhostctl

/// The control socket's request parser: every request either parses or is refused with a reason,
/// never a trap.
@Suite struct ControlProtocolTests {
    private func parse(_ text: String) -> Result<ControlCommand, ControlError> {
        Result { () throws(ControlError) in try ControlCommand.parse(line: Array(text.utf8)) }
    }

    @Test(arguments: [
        (#"{"command":"stats"}"#, ControlCommand.stats),
        (#"{"command":"stop"}"#, .stop),
        (#"{"command":"resume","args":[]}"#, .resume),
        (#"{"command":"link","args":["down"]}"#, .link(up: false)),
        (#"{"command":"link","args":["up"]}"#, .link(up: true)),
        (#"{"command":"queue","args":["1","disable"]}"#, .queue(1, enable: false)),
        (#"{"command":"queue","args":["0","enable"]}"#, .queue(0, enable: true)),
        (#"{"command":"offloads","args":["csum","TSO4"]}"#, .offloads([.checksum, .tso4])),
        (#"{"command":"offloads","args":["none"]}"#, .offloads([])),
        (#"{"command":"pcap","args":["start","/tmp/x.pcap"]}"#, .pcapStart("/tmp/x.pcap")),
        (#"{"command":"pcap","args":["stop"]}"#, .pcapStop),
        (#"{"command":"dirty-log","args":["on"]}"#, .dirtyLog(on: true)),
    ])
    func parses(text: String, expected: ControlCommand) throws {
        #expect(try parse(text).get() == expected)
    }

    @Test(arguments: [
        ("", "not a request"),
        ("garbage", "not a request"),
        ("[]", "not a request"),
        (#"{"args":["up"]}"#, "not a request"),
        (#"{"command":5}"#, "not a request"),
        (#"{"command":"reboot"}"#, "unknown command"),
        (#"{"command":"stats","args":["x"]}"#, "no arguments"),
        (#"{"command":"link"}"#, "up or down"),
        (#"{"command":"link","args":["sideways"]}"#, "not sideways"),
        (#"{"command":"queue","args":["-1","disable"]}"#, "not a queue pair number"),
        (#"{"command":"queue","args":["99999999999999999999999","disable"]}"#, "not a queue pair number"),
        (#"{"command":"queue","args":["1","toggle"]}"#, "enable or disable"),
        (#"{"command":"offloads","args":["warp"]}"#, "unknown offload warp"),
        (#"{"command":"offloads"}"#, "offload names"),
        (#"{"command":"pcap","args":["start"]}"#, "start FILE or stop"),
        (#"{"command":"dirty-log","args":["maybe"]}"#, "on or off"),
    ])
    func refuses(text: String, reason: String) {
        guard case .failure(let error) = parse(text) else { Issue.record("\(text) parsed"); return }
        #expect(error.reason.contains(reason), "\(error.reason)")
    }

    @Test func refusesAnOverLongRequest() {
        let long = #"{"command":""# + String(repeating: "x", count: ControlCommand.maximumRequestLength) + #""}"#
        guard case .failure(let error) = parse(long) else { Issue.record("parsed"); return }
        #expect(error.reason.contains("longer than"))
    }

    @Test func repliesAreOneLineOfJSON() {
        let line = ControlReply.failure("no \"such\"\nthing").line
        #expect(line.hasSuffix("\n") && line.dropLast().allSatisfy { $0 != "\n" })
        #expect(line.contains(#""ok":false"#))
        let text = CtlReplyText(json: String(line.dropLast()))
        #expect(!text.ok && text.human.hasPrefix("error: no \"such\""))
        #expect(!CtlReplyText(json: "not json").ok)
    }
}
