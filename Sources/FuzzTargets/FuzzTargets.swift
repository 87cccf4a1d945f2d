import Glibc
import NetFormats
import Synchronization
import Vhost
import VhostNet
import VhostScript
import Virtio

/// One parser of untrusted input, as a fuzzing target: a name (the corpus folder
/// `Fuzz/corpus/<name>/`) and a function that feeds it any bytes. A target must return for
/// every input; a crash, a trap or a hang is the bug the fuzzer looks for. Each function
/// checks the promises its parser makes (an error names a place inside its input, a reply goes
/// only to a request) with `FuzzTargets.require`; `brokenPromises(_:)` returns those that did
/// not hold, and the caller decides (the libFuzzer driver stops so that the input is kept, the
/// unit tier records an issue). Nothing here traps.
public struct FuzzTarget: Sendable {
    /// The target's name: `script`, `pcap`, `frames`, `netlink`.
    public let name: String
    /// What the target feeds, for `Scripts/fuzz --list` and the docs.
    public let summary: String
    /// Feeds one input to the parser.
    public let run: @Sendable (UnsafeRawBufferPointer) -> Void

    /// Feeds one input to the parser and returns the promises it broke (none: all held).
    public func brokenPromises(_ bytes: UnsafeRawBufferPointer) -> [String] {
        let log = FuzzTargets.PromiseLog()
        FuzzTargets.$promiseLog.withValue(log) { run(bytes) }
        return log.messages.withLock { $0 }
    }

    public init(name: String, summary: String, run: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) {
        self.name = name; self.summary = summary; self.run = run
    }
}

/// Every parser of input an attacker controls (docs/security.md), one target each; the fuzzer
/// (`Scripts/fuzz`, Sources/vhost-fuzz) and the unit tier's corpus replay
/// (`FuzzCorpusTests`) both take their list from here.
public enum FuzzTargets {
    public static let all: [FuzzTarget] = [script, pcap, frames, netlink]

    /// The target called `name`.
    public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }

    /// Where `require` records a promise that did not hold, for the run that `brokenPromises` binds.
    final class PromiseLog: Sendable { let messages = Mutex<[String]>([]) }
    @TaskLocal static var promiseLog: PromiseLog?

    /// A promise of the parser did not hold: recorded for `brokenPromises` (outside it, on
    /// standard error).
    static func require(_ condition: Bool, _ message: @autoclosure () -> String) {
        guard !condition else { return }
        let text = "fuzz target: broken promise: \(message())"
        if let log = promiseLog { log.messages.withLock { $0.append(text) } } else {
            var line = text + "\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
    }

    // MARK: script

    /// Limits smaller than the tool's (the same code paths, with less work per input), so that
    /// the fuzzer runs thousands of inputs a second and a parse that is slow per byte stands out.
    static let scriptLimits: ScriptLimits = {
        var limits = ScriptLimits.standard
        limits.statements = 20_000
        limits.inputBytes = 1 << 20
        limits.includes = 100
        return limits
    }()

    /// The script language: lexer, parser, argument binding and checks, includes (every path
    /// an include names reads the input itself again, so nesting, fan-out and cycles come from
    /// one input), and the statement count `script check` prints. Every problem starts with
    /// `file:line:column`, at most 100 are reported, and an escaped message has no control byte.
    public static let script = FuzzTarget(name: "script", summary: "vhostctl script check: the lexer, parser, argument checks and includes") { bytes in
        let text = String(decoding: bytes, as: UTF8.self)
        do throws(Script.ParseError) {
            let parsed = try Script(parsing: text, name: "fuzz.vhost", limits: scriptLimits, loader: { path in
                path.hasSuffix(".missing") ? nil : text
            })
            _ = parsed.commandCount
        } catch {
            require(!error.problems.isEmpty && error.problems.count <= 100, "\(error.problems.count) problems")
            for problem in error.problems {
                require(problem.contains(":"), "a problem without its place: \(problem)")
                let escaped = Script.escapingNonPrintable(problem)
                require(!escaped.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "a control character in: \(escaped)")
            }
        }
    }

    // MARK: pcap

    /// pcap and pcapng files (`attach --replay`): the reader, then the replay's use of each
    /// packet's recorded virtio-net header, on both link layers and with and without the
    /// offloads. A refusal names a place inside the file.
    public static let pcap = FuzzTarget(name: "pcap", summary: "capture files: pcap and pcapng reading, then replay's virtio-net headers") { bytes in
        let data = Array(bytes)
        let capture: CaptureFile
        do throws(Pcap.ParseError) {
            capture = try CaptureFile(parsing: data)
        } catch {
            switch error {
            case .tooShort, .badMagic, .unsupportedLinkType: break
            case .truncatedRecord(let index, let offset): require(index >= 0 && offset >= 0 && offset <= data.count, "\(error)")
            case .recordTooLarge(let index, let length): require(index >= 0 && length > 0, "\(error)")
            case .malformedBlock(let offset, let reason): require(offset >= 0 && offset <= data.count && !reason.isEmpty, "\(error)")
            }
            return
        }
        for packet in capture.packets { require(packet.bytes.count <= data.count, "a packet of \(packet.bytes.count) bytes from a file of \(data.count)") }
        let all: VirtioFeatures = [.netCsum, .netHostTSO4, .netHostTSO6, .netHostUFO, .netHostUSO]
        for linkLayer in [LinkLayer.ethernet, .none] {
            for features in [VirtioFeatures(), all] {
                if let frames = try? Replay.frames(of: capture, path: "fuzz.pcap", linkLayer: linkLayer, features: features, queues: 4) {
                    require(frames.allSatisfy { (0..<4).contains($0.queue) }, "a frame on a queue past the 4 asked for")
                }
            }
        }
    }

    // MARK: frames

    /// The responders' configurations the `frames` target picks from with its first byte.
    static let responderMAC = MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56)

    static func responder(_ choice: UInt8) -> NetworkResponder {
        let ipv6 = IPv6Interface(address: IPv6Address(parsing: "fd00:6::2")!, prefixLength: 64)
        let offloads = TransmitOffloads(checksum: choice & 2 != 0, udpSegmentation: choice & 4 != 0, largestFrame: choice & 4 != 0 ? 65_535 : 1514)
        return NetworkResponder(mac: responderMAC, ipv4: IPv4Interface(address: IPv4Address(10, 0, 0, 2), prefixLength: 24), ipv6: [ipv6],
                                udpEchoPort: 7, linkLayer: choice & 1 != 0 ? .none : .ethernet, mtu: choice & 8 != 0 ? 9000 : 1500, offloads: offloads)
    }

    /// Frames from the host, as the endpoint hands them to the responder: the first byte picks
    /// the responder (link layer, offloads, MTU) and the virtio-net header's length (10 or 12);
    /// then records of a 2-byte little-endian length and that many bytes, each a header and a
    /// frame, go to one responder in turn (so fragments meet, neighbours are learnt). Every
    /// reply fits the length it announced and the largest frame the responder may send.
    public static let frames = FuzzTarget(name: "frames", summary: "frames from the host: virtio-net header, then the responder (ARP, NDP, ICMP, UDP, fragments)") { bytes in
        guard let choice = bytes.first else { return }
        var responder = responder(choice)
        let headerLength = choice & 16 != 0 ? VirtioNetHeader.mergeableLength : VirtioNetHeader.baseLength
        let largest = max(responder.offloads.largestFrame, responder.mtu + EthernetFrame.headerLength)
        var offset = 1
        while offset + 2 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8
            offset += 2
            let record = UnsafeRawBufferPointer(rebasing: bytes[offset..<min(bytes.count, offset + length)])
            offset += record.count
            guard record.count >= headerLength else { continue }
            let header = VirtioNetHeader(reading: record.baseAddress!, length: headerLength)
            let frame = UnsafeRawBufferPointer(rebasing: record[headerLength...])
            responder.respond(to: frame, header: header) { length, _, write in
                require(length > 0 && length <= largest, "a reply of \(length) bytes (largest \(largest))")
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 8)
                defer { buffer.deallocate() }
                write(buffer)
            }
        }
    }

    // MARK: netlink

    /// The parsers of rtnetlink answers (Sources/Vhost/RouteNetlink.swift). A parser added
    /// there joins the campaign with one line here.
    static let netlinkParsers: [@Sendable (UnsafeRawBufferPointer) -> Void] = [
        { bytes in _ = try? RouteNetlink.acknowledgement(in: bytes) },
        // A link dump's datagram (RTM_NEWLINK messages with their attributes, NLMSG_DONE), as
        // `cleanup` and the reaper read it; the sequence number is the one the first message carries.
        { bytes in
            let datagram = [UInt8](bytes)
            let sequence = datagram.count >= 12 ? UInt32(datagram[8]) | UInt32(datagram[9]) << 8 | UInt32(datagram[10]) << 16 | UInt32(datagram[11]) << 24 : 0
            _ = try? LinkDumpParser.parse(datagram, sequence: sequence)
        },
    ]

    /// rtnetlink answers from the kernel, as the socket returns them: every parser of them.
    public static let netlink = FuzzTarget(name: "netlink", summary: "rtnetlink answers: the acknowledgement (and every parser RouteNetlink adds)") { bytes in
        for parse in netlinkParsers { parse(bytes) }
    }
}
