import Glibc
import SystemPackage

/// The mark swift-vhost leaves on every interface it creates (as the interface alias,
/// IFLA_IFALIAS) and in the name of every device node it has to make: which process created it,
/// so that `vhostctl cleanup` and the reaper can tell a leftover from a link in use.
///
/// A pid alone is not enough, since pids are reused: the mark adds the process's start time
/// (field 22 of /proc/PID/stat, clock ticks since boot) and its pid namespace (the inode of
/// /proc/PID/ns/pid), so a later process that got the same pid, or a process of another pid
/// namespace, is never taken for the creator. Text form: `vhostctl pid 1234 start 567890 pidns 4026531836`.
public struct InterfaceMark: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The creator's pid, in its own pid namespace.
    public var pid: Int32
    /// The creator's start time: /proc/PID/stat field 22 (clock ticks after boot).
    public var startTime: UInt64
    /// The inode number of the creator's pid namespace (/proc/PID/ns/pid).
    public var pidNamespace: UInt64

    /// The largest pid the kernel hands out (include/linux/threads.h PID_MAX_LIMIT: 4 Mi).
    public static let largestPID: Int32 = 4 * 1024 * 1024
    /// The longest alias the kernel keeps (include/uapi/linux/if.h IFALIASZ 256, with the NUL).
    public static let longestAlias = 255

    public init(pid: Int32, startTime: UInt64, pidNamespace: UInt64) {
        self.pid = pid
        self.startTime = startTime
        self.pidNamespace = pidNamespace
    }

    /// The alias text: `vhostctl pid P start S pidns N`.
    public var description: String { "vhostctl pid \(pid) start \(startTime) pidns \(pidNamespace)" }

    /// Parses an interface alias. Only the exact form `description` writes is a mark: the seven
    /// words separated by single spaces, numbers in plain decimal without sign or leading zero,
    /// a pid from 1 to `largestPID`. Anything else (another tool's alias, a hostile one) is nil.
    public init?(alias: String) {
        let bytes = Array(alias.utf8)
        guard bytes.count <= Self.longestAlias else { return nil }
        let words = bytes.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard words.count == 7, words[0].elementsEqual("vhostctl".utf8), words[1].elementsEqual("pid".utf8),
              words[3].elementsEqual("start".utf8), words[5].elementsEqual("pidns".utf8),
              let pid = Self.decimal(words[2]), let start = Self.decimal(words[4]), let namespace = Self.decimal(words[6]),
              pid >= 1, pid <= UInt64(Self.largestPID)
        else { return nil }
        self.init(pid: Int32(pid), startTime: start, pidNamespace: namespace)
    }

    /// The name of a device node this process makes for `device` (e.g. `tap17`) in the tool's
    /// directory: `vhostctl-pid1234-start567890-pidns4026531836-tap17`.
    public func nodeName(for device: String) -> String {
        "vhostctl-pid\(pid)-start\(startTime)-pidns\(pidNamespace)-\(device)"
    }

    /// Parses a node name `nodeName(for:)` made: the mark and the device, or nil for any other
    /// name. The device is 1 to 32 lower-case letters and digits.
    public static func parse(nodeName name: String) -> (mark: InterfaceMark, device: String)? {
        let bytes = Array(name.utf8)
        guard bytes.count <= 128 else { return nil }
        let parts = bytes.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].elementsEqual("vhostctl".utf8),
              let pid = number(parts[1], after: "pid"), let start = number(parts[2], after: "start"),
              let namespace = number(parts[3], after: "pidns"), pid >= 1, pid <= UInt64(largestPID),
              (1...32).contains(parts[4].count),
              parts[4].allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        else { return nil }
        return (InterfaceMark(pid: Int32(pid), startTime: start, pidNamespace: namespace), String(decoding: parts[4], as: UTF8.self))
    }

    /// This process's mark. Throws when /proc cannot say (no /proc mounted).
    public static func current() throws(VhostError) -> InterfaceMark {
        let pid = getpid()
        guard let identity = ProcessIdentity.read(pid: pid) else {
            throw .system(call: "read", detail: "/proc/self/stat and /proc/self/ns/pid (is /proc mounted?)", errno: .noSuchFileOrDirectory)
        }
        return InterfaceMark(pid: pid, startTime: identity.startTime, pidNamespace: identity.pidNamespace)
    }

    /// Plain decimal: 1 to 20 digits, no leading zero (but "0"), no overflow.
    static func decimal<C: Collection>(_ digits: C) -> UInt64? where C.Element == UInt8 {
        guard (1...20).contains(digits.count), digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
              digits.count == 1 || digits.first != UInt8(ascii: "0") else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(digit - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }

    private static func number(_ word: ArraySlice<UInt8>, after label: String) -> UInt64? {
        let prefix = Array(label.utf8)
        guard word.count > prefix.count, word.prefix(prefix.count).elementsEqual(prefix) else { return nil }
        return decimal(word.dropFirst(prefix.count))
    }
}

/// What /proc says of a process: its state, start time and pid namespace.
public struct ProcessIdentity: Equatable, Sendable {
    /// The state letter of /proc/PID/stat field 3 (R, S, D, Z, X, …).
    public var state: UInt8
    /// /proc/PID/stat field 22: clock ticks after boot.
    public var startTime: UInt64
    /// The inode number in /proc/PID/ns/pid's link (`pid:[4026531836]`).
    public var pidNamespace: UInt64

    public init(state: UInt8, startTime: UInt64, pidNamespace: UInt64) {
        self.state = state
        self.startTime = startTime
        self.pidNamespace = pidNamespace
    }

    /// Reads /proc/PID/stat and /proc/PID/ns/pid; nil when the process does not exist (or /proc
    /// says something unreadable).
    public static func read(pid: Int32) -> ProcessIdentity? {
        guard pid > 0, let stat = KernelInfo.readFile("/proc/\(pid)/stat"), let fields = parseStat(stat),
              let namespace = parseNamespaceLink(readLink("/proc/\(pid)/ns/pid") ?? "") else { return nil }
        return ProcessIdentity(state: fields.state, startTime: fields.startTime, pidNamespace: namespace)
    }

    /// The state (field 3) and start time (field 22) of a /proc/PID/stat line. The command name
    /// (field 2) is in parentheses and may hold spaces and parentheses itself, so the fields are
    /// counted from the last ')' (fs/proc/array.c do_task_stat writes it as `(%s)`).
    public static func parseStat(_ text: String) -> (state: UInt8, startTime: UInt64)? {
        let bytes = Array(text.utf8)
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
        // After ')': field 3 (state) is fields[0], so field 22 is fields[19].
        guard fields.count >= 20, fields[0].count == 1, let state = fields[0].first,
              let start = InterfaceMark.decimal(fields[19].filter { $0 != UInt8(ascii: "\n") }) else { return nil }
        return (state, start)
    }

    /// The inode number of a namespace link: `pid:[4026531836]`.
    public static func parseNamespaceLink(_ text: String) -> UInt64? {
        let bytes = Array(text.utf8)
        let prefix = Array("pid:[".utf8)
        guard bytes.count > prefix.count + 1, bytes.starts(with: prefix), bytes.last == UInt8(ascii: "]") else { return nil }
        return InterfaceMark.decimal(bytes[prefix.count..<(bytes.count - 1)])
    }

    /// Whether the process is a zombie or dead (state Z or X): it has exited and holds no files.
    public var hasExited: Bool { state == UInt8(ascii: "Z") || state == UInt8(ascii: "X") }

    private static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 64)
        // SAFETY: readlink writes at most `count` bytes into the buffer it is given.
        let n = buffer.withUnsafeMutableBufferPointer { readlink(path, $0.baseAddress!, $0.count) }
        guard n > 0, n < buffer.count else { return nil }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
