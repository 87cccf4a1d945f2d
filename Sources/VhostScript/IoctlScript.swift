import Glibc
import Synchronization
import SystemPackage
import Vhost
import Virtio

/// A script of vhost ioctls, one command a line, for reproducing and tracing sequences:
///
///     open                      # /dev/vhost-net (or open PATH)
///     set-owner
///     get-features
///     set-features VERSION_1 EVENT_IDX
///     memory 4M 0x40000000      # map guest memory (no ioctl)
///     set-mem-table
///     ring 0 256                # lay out vring 0 in guest memory (no ioctl)
///     set-vring-num 0 256
///     expect EINVAL             # the next command must fail with EINVAL
///     set-vring-num 0 3
///
/// The whole script is parsed before anything runs, so a malformed script changes nothing.
public struct IoctlScript: Sendable {
    public struct Command: Sendable, Equatable {
        public var line: Int
        public var name: String
        public var arguments: [String]
        /// Set by a preceding `expect`: nil means success is expected.
        public var expected: Errno?
    }

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public var problems: [String]
        public var description: String { problems.joined(separator: "\n") }
    }

    /// name → allowed argument counts and a usage line.
    public static let grammar: [String: (ClosedRange<Int>, String)] = [
        "open": (0...1, "open [PATH]"),
        "set-owner": (0...0, "set-owner"),
        "reset-owner": (0...0, "reset-owner"),
        "get-features": (0...0, "get-features"),
        "set-features": (1...64, "set-features NAME...|0xBITS"),
        "get-backend-features": (0...0, "get-backend-features"),
        "set-backend-features": (1...64, "set-backend-features NAME...|0xBITS"),
        "memory": (1...2, "memory SIZE [GPA]   (SIZE like 4M; GPA defaults to 0x40000000)"),
        "set-mem-table": (0...0, "set-mem-table"),
        "ring": (2...2, "ring INDEX SIZE"),
        "set-vring-num": (2...2, "set-vring-num INDEX NUM"),
        "set-vring-base": (2...2, "set-vring-base INDEX NUM"),
        "get-vring-base": (1...1, "get-vring-base INDEX"),
        "set-vring-addr": (1...1, "set-vring-addr INDEX   (the ring laid out by `ring INDEX SIZE`)"),
        "set-vring-kick": (1...2, "set-vring-kick INDEX [-1]"),
        "set-vring-call": (1...2, "set-vring-call INDEX [-1]"),
        "set-vring-err": (1...2, "set-vring-err INDEX [-1]"),
        "set-vring-busyloop-timeout": (2...2, "set-vring-busyloop-timeout INDEX MICROSECONDS"),
        "get-vring-busyloop-timeout": (1...1, "get-vring-busyloop-timeout INDEX"),
        "tap": (1...1, "tap NAME   (create or attach, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)"),
        "set-vnet-hdr-size": (1...1, "set-vnet-hdr-size 10|12"),
        "set-backend": (2...2, "set-backend INDEX tap|-1"),
        "expect": (1...1, "expect ERRNO|ok   (applies to the next command)"),
    ]

    public let commands: [Command]

    public init(parsing text: String, name: String = "script") throws(ParseError) {
        var commands: [Command] = []
        var problems: [String] = []
        var pendingExpect: (Errno?, Int)? = nil
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = offset + 1
            let content = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = content.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let command = words.first else { continue }
            let arguments = Array(words.dropFirst())
            guard let (counts, usage) = IoctlScript.grammar[command] else {
                let hint = IoctlScript.closest(to: command).map { "; did you mean \($0)?" } ?? ""
                problems.append("\(name):\(line): unknown command '\(command)'\(hint)")
                continue
            }
            guard counts.contains(arguments.count) else {
                problems.append("\(name):\(line): \(command) takes \(counts.lowerBound == counts.upperBound ? "\(counts.lowerBound)" : "\(counts.lowerBound) to \(counts.upperBound)") argument(s): \(usage)")
                continue
            }
            if let problem = IoctlScript.checkArguments(command, arguments) {
                problems.append("\(name):\(line): \(problem) (usage: \(usage))")
                continue
            }
            if command == "expect" {
                if arguments[0].lowercased() == "ok" {
                    pendingExpect = (nil, line)
                } else if let errno = Errno(named: arguments[0]) {
                    pendingExpect = (errno, line)
                } else {
                    problems.append("\(name):\(line): unknown errno '\(arguments[0])': write a name like EINVAL, EBUSY, E2BIG")
                }
                continue
            }
            commands.append(Command(line: line, name: command, arguments: arguments, expected: pendingExpect?.0))
            pendingExpect = nil
        }
        if let (_, line) = pendingExpect { problems.append("\(name):\(line): expect is not followed by a command") }
        guard problems.isEmpty else { throw ParseError(problems: problems.map(IoctlScript.escapingNonPrintable)) }
        self.commands = commands
    }

    static func checkArguments(_ command: String, _ arguments: [String]) -> String? {
        func number(_ s: String) -> UInt64? { s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s) }
        switch command {
        case "set-vring-num", "set-vring-base", "set-vring-busyloop-timeout", "ring":
            guard arguments.allSatisfy({ number($0) != nil && number($0)! <= UInt64(UInt32.max) }) else { return "\(command) takes whole numbers" }
        case "get-vring-base", "set-vring-addr", "get-vring-busyloop-timeout", "set-vnet-hdr-size":
            guard number(arguments[0]) != nil else { return "\(command) takes a whole number" }
        case "set-vring-kick", "set-vring-call", "set-vring-err":
            guard number(arguments[0]) != nil, arguments.count == 1 || arguments[1] == "-1" else { return "\(command) takes an index, then optionally -1 to unbind" }
        case "set-backend":
            guard number(arguments[0]) != nil, arguments[1] == "tap" || arguments[1] == "-1" else { return "set-backend takes an index, then tap or -1" }
        case "set-features":
            if arguments.count == 1, arguments[0].hasPrefix("0x") { return number(arguments[0]) == nil ? "bad feature bits \(arguments[0])" : nil }
            for name in arguments where VirtioFeatures.parse(name) == nil { return "unknown feature \(name)" }
        case "set-backend-features":
            if arguments.count == 1, arguments[0].hasPrefix("0x") { return number(arguments[0]) == nil ? "bad feature bits \(arguments[0])" : nil }
            for name in arguments where VhostBackendFeatures.parse(name) == nil { return "unknown backend feature \(name)" }
        case "memory":
            guard IoctlScript.size(arguments[0]) != nil else { return "bad size \(arguments[0]): write bytes, or a number with K, M or G" }
            if arguments.count == 2, number(arguments[1]) == nil { return "bad guest-physical address \(arguments[1])" }
        case "tap":
            do { try Tap.validate(name: arguments[0]) } catch { return "\(error)" }
        default:
            break
        }
        return nil
    }

    /// The text with every control character (and DEL) written as `\u{XX}`, so that a message
    /// never echoes raw bytes from the script to the terminal.
    static func escapingNonPrintable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7f || (0x80..<0xa0).contains(scalar.value) {
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func size(_ text: String) -> Int? {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        if let unit = text.last.flatMap({ units[Character($0.uppercased())] }) {
            return Int(text.dropLast()).map { $0 * unit }
        }
        return Int(text)
    }

    static func closest(to word: String) -> String? {
        func distance(_ a: String, _ b: String) -> Int {
            let a = Array(a), b = Array(b)
            var row = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var previous = row[0]; row[0] = i
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    let old = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                    previous = old
                }
            }
            return row[b.count]
        }
        let best = grammar.keys.map { ($0, distance(word, $0)) }.min { $0.1 < $1.1 }
        return best.flatMap { $0.1 <= 3 ? $0.0 : nil }
    }
}

extension VhostBackendFeatures {
    public static func parse(_ text: String) -> VhostBackendFeatures? {
        let key = text.uppercased().replacingPrefix("VHOST_BACKEND_F_", with: "")
        return names.first { $0.value == key }.map { VhostBackendFeatures(rawValue: 1 << UInt64($0.key)) }
    }
}

extension String {
    func replacingPrefix(_ prefix: String, with replacement: String) -> String {
        hasPrefix(prefix) ? replacement + dropFirst(prefix.count) : self
    }
}

extension Errno {
    /// The errno with this symbolic name (EINVAL, EBUSY, …), as `name` prints it.
    public init?(named name: String) {
        let key = name.uppercased()
        guard let value = (1...133).first(where: { Errno(rawValue: Int32($0)).name == key }) else { return nil }
        self.init(rawValue: Int32(value))
    }
}
