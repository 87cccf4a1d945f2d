import Vhost
import Virtio

/// One parameter of one of the script's own commands (requests take theirs from the request's
/// syntax, `RequestParameter`).
public struct ParameterSpec: Sendable {
    public enum Kind: Sendable, Equatable {
        /// A whole number (decimal, `0x` hex, or with a K, M or G suffix) that must fit `range`.
        case number(NumberRange)
        /// One of these words.
        case choice([String])
        /// A word (a path, an interface name); `print` also takes variables.
        case text
        /// Descriptor flags: `NEXT|WRITE|INDIRECT`, `0`, or a 16-bit number.
        case descriptorFlags
    }

    /// The name, as `NAME=` writes it.
    public var name: String
    /// What may be written for it.
    public var kind: Kind
    /// Whether a line without it is malformed.
    public var required: Bool
    /// Takes every remaining positional argument.
    public var variadic: Bool

    init(_ name: String, _ kind: Kind, required: Bool = true, variadic: Bool = false) {
        self.name = name; self.kind = kind; self.required = required; self.variadic = variadic
    }
}

/// A problem a command's arguments have together, found when the script is parsed.
struct CommandProblem: Error { var message: String; init(_ message: String) { self.message = message } }

/// The arguments bound to a script command's parameters, typed, for its builder.
struct CommandArguments {
    enum Bound { case operands([Operand]), words([String]), print([PrintWord]) }
    var values: [String: Bound]
    let limits: ScriptLimits

    func operands(_ name: String) -> [Operand] { if case .operands(let o)? = values[name] { return o }; return [] }
    func optional(_ name: String) -> Operand? { operands(name).first }
    func number(_ name: String) throws(CommandProblem) -> Operand {
        guard let operand = optional(name) else { throw CommandProblem("expected \(name.uppercased())") }
        return operand
    }
    func number(_ name: String, default value: UInt64) -> Operand {
        optional(name) ?? .constant(value, .bits(64), name.uppercased())
    }
    func word(_ name: String) -> String? { if case .words(let w)? = values[name] { return w.first }; return nil }
    func printWords(_ name: String) -> [PrintWord] {
        switch values[name] {
        case .print(let words)?: words
        case .words(let words)?: words.map { .text($0) }
        default: []
        }
    }

    /// The operand with a narrower range; a literal must fit it.
    func narrowed(_ operand: Operand, _ range: NumberRange, _ name: String) throws(CommandProblem) -> Operand {
        var narrowed = operand
        narrowed.range = range
        narrowed.name = name
        if let n = operand.literal, let problem = range.problem(n, limits: limits) {
            throw CommandProblem("expected \(name) to be \(problem.expected), found \(n > 0xffff ? "0x" + String(n, radix: 16) : "\(n)")")
        }
        return narrowed
    }
}

/// One of the script's own commands (those that are not a request): its parameters, the name
/// its answer is kept under, and how its arguments build the typed `Action`.
public struct ScriptCommand: Sendable {
    /// The command as lines start with it.
    public var name: String
    /// Its parameters, in positional order.
    public var parameters: [ParameterSpec]
    /// The name its answer is kept under, for commands that answer one.
    public var answer: String?
    /// One line for `vhostctl script commands`.
    public var summary: String
    let build: @Sendable (CommandArguments) throws(CommandProblem) -> Action

    init(_ name: String, _ parameters: [ParameterSpec], answer: String? = nil, _ summary: String,
         build: @escaping @Sendable (CommandArguments) throws(CommandProblem) -> Action) {
        self.name = name; self.parameters = parameters; self.answer = answer; self.summary = summary; self.build = build
    }

    init(_ name: String, _ summary: String, build: @escaping @Sendable (CommandArguments) throws(CommandProblem) -> Action) {
        self.init(name, [], summary, build: build)
    }
}

/// Every command a line may start with: the requests of `VhostRequest.syntax` and
/// `TunRequest.syntax`, and the script's own commands.
public enum CommandEntry: Sendable {
    /// A vhost request, from `VhostRequest.syntax`.
    case vhost(RequestSyntax<VhostRequest>)
    /// A tun request on the tap, from `TunRequest.syntax`.
    case tun(RequestSyntax<TunRequest>)
    /// One of the script's own commands.
    case script(ScriptCommand)

    /// The command as lines start with it.
    public var name: String {
        switch self {
        case .vhost(let s): s.name
        case .tun(let s): s.name
        case .script(let c): c.name
        }
    }

    /// The name the command's answer is kept under, if it answers one.
    public var answer: String? {
        switch self {
        case .vhost(let s): s.answer
        case .tun(let s): s.answer
        case .script(let c): c.answer
        }
    }

    /// One line for `vhostctl script commands`.
    public var summary: String {
        switch self {
        case .vhost(let s): s.summary
        case .tun(let s): s.summary
        case .script(let c): c.summary
        }
    }

    /// Each parameter as (name, required, variadic), for binding and the usage line.
    var shapes: [(name: String, required: Bool, variadic: Bool)] {
        switch self {
        case .vhost(let s): s.parameters.map { ($0.name, $0.required, $0.variadic) }
        case .tun(let s): s.parameters.map { ($0.name, $0.required, $0.variadic) }
        case .script(let c): c.parameters.map { ($0.name, $0.required, $0.variadic) }
        }
    }

    /// `name PARAM [param=PARAM] VARIADIC...`, for messages and the manual.
    public var usage: String {
        ([name] + shapes.map { p in
            if p.variadic { return p.required ? "\(p.name.uppercased())..." : "[\(p.name.uppercased())...]" }
            return p.required ? p.name.uppercased() : "[\(p.name)=\(p.name.uppercased())]"
        }).joined(separator: " ")
    }
}

/// The command table: every command by name, in the order `vhostctl script commands` lists them.
public enum ScriptCommands {
    static let queue = ParameterSpec("queue", .number(.bits(32)))
    static let timeout = ParameterSpec("timeout", .number(.limit(.milliseconds, minimum: 0)), required: false)
    static let count = ParameterSpec("count", .number(.limit(.frames, minimum: 0)), required: false)
    static let frameSize = NumberRange.range(UInt64(18)...65535, "a frame's length: the Ethernet header and the sequence number, up to 64 KiB")
    static let widths = ["1", "2", "4", "8"]

    /// The device and the memory the script maps (no ioctl but open and close).
    static let setup: [ScriptCommand] = [
        ScriptCommand("open", [.init("path", .text, required: false)], "open /dev/vhost-net (or PATH), or the in-process device; a second open closes the first device") { a in
            .open(path: a.word("path"))
        },
        ScriptCommand("close", "close the device (the kernel stops its worker and forgets the rings)") { _ in .close },
    ]

    static let memory: [ScriptCommand] = [
        ScriptCommand("memory", [.init("regions", .number(.bits(64)), variadic: true)],
                      "map guest memory: SIZE [GPA] [SIZE GPA]... (GPA default 0x40000000); replaces the previous memory", build: memoryAction),
        ScriptCommand("alloc", [.init("size", .number(.limit(.memoryBytes, minimum: 1))), .init("align", .number(.bits(64)), required: false)],
                      answer: "address", "take SIZE bytes of guest memory (aligned to ALIGN, a power of 2, default 64); answers their GPA") { a throws(CommandProblem) in
            let alignment = a.number("align", default: 64)
            if let n = alignment.literal, n == 0 || n & (n - 1) != 0 { throw CommandProblem("expected an ALIGN that is a power of 2, found \(n)") }
            return .alloc(size: try a.number("size"), alignment: alignment)
        },
        ScriptCommand("ring", [.init("index", .number(.bits(32))), .init("size", .number(.range(1...32768, "a ring's size"))), .init("at", .number(.bits(64)), required: false)],
                      answer: "address", "lay out a split ring of SIZE entries (a power of 2) in guest memory (at GPA AT if given); answers its GPA") { a throws(CommandProblem) in
            let size = try a.number("size")
            if let n = size.literal, n & (n - 1) != 0 {
                throw CommandProblem("expected a ring SIZE that is a power of 2 from 1 to 32768 (use set-vring-num to send other numbers to the kernel), found \(n)")
            }
            let at = a.optional("at")
            if let n = at?.literal, n & 15 != 0 { throw CommandProblem("expected AT 16-byte aligned (a descriptor table's alignment), found 0x\(String(n, radix: 16))") }
            return .ring(index: try a.number("index"), size: size, at: at)
        },
        ScriptCommand("ring-address", [.init("index", .number(.bits(32))), .init("part", .choice(RingPart.allCases.map(\.rawValue)))], answer: "address",
                      "the GPA of a ring's descriptor table, avail or used ring") { a throws(CommandProblem) in
            .ringAddress(index: try a.number("index"), part: RingPart(rawValue: a.word("part") ?? "") ?? .used)
        },
        ScriptCommand("log", [.init("size", .number(.limit(.logBytes, minimum: 1)))], answer: "address",
                      "map a dirty log of SIZE bytes (outside guest memory); answers its address") { a throws(CommandProblem) in .log(size: try a.number("size")) },
        ScriptCommand("read-log", [.init("offset", .number(.limit(.logBytes, minimum: 0))), .init("width", .choice(widths), required: false)], answer: "value",
                      "load WIDTH bytes (default 1, little-endian) at byte OFFSET of the dirty log: bit b of byte B is guest page 8·B + b (4 KiB pages)") { a throws(CommandProblem) in
            .readLog(offset: try a.number("offset"), width: Int(a.word("width") ?? "1") ?? 1)
        },
        ScriptCommand("iotlb-update", [.init("iova", .number(.bits(64))), .init("size", .number(.bits(64))), .init("gpa", .number(.bits(64))),
                                       .init("perm", .choice(["r", "w", "rw"]), required: false)],
                      "write a VHOST_IOTLB_UPDATE mapping IOVA..+SIZE to the guest memory at GPA (perm rw by default)") { a throws(CommandProblem) in
            let access: IOTLBMessage.Access = switch a.word("perm") { case "r": .read; case "w": .write; default: .readWrite }
            return .iotlbUpdate(iova: try a.number("iova"), size: try a.number("size"), gpa: try a.number("gpa"), access: access)
        },
        ScriptCommand("iotlb-invalidate", [.init("iova", .number(.bits(64))), .init("size", .number(.bits(64)))], "write a VHOST_IOTLB_INVALIDATE") { a throws(CommandProblem) in
            .iotlbInvalidate(iova: try a.number("iova"), size: try a.number("size"))
        },
        ScriptCommand("iotlb-miss", [timeout], answer: "iova", "wait for the kernel's VHOST_IOTLB_MISS (default 2000 ms); answers its IOVA") { a in
            .iotlbMiss(timeout: a.number("timeout", default: 2000))
        },
    ]

    static let tap: [ScriptCommand] = [
        ScriptCommand("tap", [.init("name", .text)],
                      "create or attach tap NAME (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), bring it up, and listen on its host side; on the in-process device, a frame pipe") { a throws(CommandProblem) in
            let name = a.word("name") ?? ""
            do { try Tap.validate(name: name) } catch { throw CommandProblem("\(error)") }
            return .tap(name: name)
        },
        ScriptCommand("link", [.init("state", .choice(["up", "down"]))], "bring the tap up or down") { a in .link(up: a.word("state") == "up") },
    ]

    static let frames: [ScriptCommand] = [
        ScriptCommand("send", [queue, count, .init("size", .number(frameSize), required: false), .init("pattern", .number(.bits(8)), required: false), timeout],
                      "transmit COUNT numbered frames (default 1; SIZE bytes, or test sizes) and wait until the device used them all") { a throws(CommandProblem) in
            .send(queue: try a.number("queue"), count: a.number("count", default: 1), size: a.optional("size"), pattern: a.optional("pattern"),
                  timeout: a.number("timeout", default: 2000))
        },
        ScriptCommand("post", [queue, count, .init("size", .number(.range(1...(1 << 20), "a receive buffer, up to 1 MiB")), required: false)],
                      "make up to COUNT receive buffers of SIZE bytes (default 2048) available (as many as are free), and kick if the device asks") { a throws(CommandProblem) in
            .post(queue: try a.number("queue"), count: a.number("count", default: 1), size: a.number("size", default: 2048))
        },
        ScriptCommand("receive", [queue, count, timeout], answer: "received",
                      "wait for COUNT frames the host sent (in order, bytes checked); other host traffic is skipped") { a throws(CommandProblem) in
            .receive(queue: try a.number("queue"), count: a.number("count", default: 1), timeout: a.number("timeout", default: 2000))
        },
        ScriptCommand("host-send", [count, .init("size", .number(frameSize), required: false)],
                      "the host side sends COUNT numbered frames into the tap (towards the RX ring)") { a in
            .hostSend(count: a.number("count", default: 1), size: a.optional("size"))
        },
        ScriptCommand("host-expect", [count, timeout], answer: "host-received", "the host side must see the next COUNT frames we sent, in order and intact") { a in
            .hostExpect(count: a.number("count", default: 1), timeout: a.number("timeout", default: 2000))
        },
        ScriptCommand("wait-call", [queue, timeout], answer: "calls", "wait for the call eventfd (default 2000 ms)") { a throws(CommandProblem) in
            .waitCall(queue: try a.number("queue"), timeout: a.number("timeout", default: 2000))
        },
        ScriptCommand("sleep", [.init("milliseconds", .number(.limit(.milliseconds, minimum: 0)))], "wait") { a throws(CommandProblem) in
            .sleep(milliseconds: try a.number("milliseconds"))
        },
    ]

    static let raw: [ScriptCommand] = [
        ScriptCommand("desc", [queue, .init("index", .number(.bits(16))), .init("addr", .number(.bits(64)), required: false), .init("len", .number(.bits(32)), required: false),
                               .init("flags", .descriptorFlags, required: false), .init("next", .number(.bits(16)), required: false)],
                      "set fields of descriptor INDEX (the others keep their value)") { a throws(CommandProblem) in
            .descriptor(queue: try a.number("queue"), index: try a.number("index"), address: a.optional("addr"), length: a.optional("len"),
                        flags: a.optional("flags"), next: a.optional("next"))
        },
        ScriptCommand("avail", [queue, .init("slot", .number(.bits(16))), .init("head", .number(.bits(16)))], "put HEAD in avail ring slot SLOT (mod the ring size)") { a throws(CommandProblem) in
            .avail(queue: try a.number("queue"), slot: try a.number("slot"), head: try a.number("head"))
        },
        ScriptCommand("avail-idx", [queue, .init("value", .number(.bits(16)))], "store avail->idx (a release store: the device may read the ring at once)") { a throws(CommandProblem) in
            .availIndex(queue: try a.number("queue"), value: try a.number("value"))
        },
        ScriptCommand("used-idx", [queue], answer: "used-idx", "read used->idx") { a throws(CommandProblem) in .usedIndex(queue: try a.number("queue")) },
        ScriptCommand("write", [.init("gpa", .number(.bits(64))), .init("value", .number(.bits(64))), .init("width", .choice(widths), required: false)],
                      "store VALUE (little-endian, WIDTH bytes, default 8) at GPA in guest memory: indirect tables, headers, anything the device reads") { a throws(CommandProblem) in
            let width = Int(a.word("width") ?? "8") ?? 8
            let value = try a.narrowed(try a.number("value"), .bits(8 * width), "VALUE of width \(width)")
            return .write(gpa: try a.number("gpa"), value: value, width: width)
        },
        ScriptCommand("read", [.init("gpa", .number(.bits(64))), .init("width", .choice(widths), required: false)], answer: "value",
                      "load WIDTH bytes (default 8, little-endian) from GPA in guest memory") { a throws(CommandProblem) in
            .read(gpa: try a.number("gpa"), width: Int(a.word("width") ?? "8") ?? 8)
        },
        ScriptCommand("kick", [queue], "signal the queue's kick eventfd") { a throws(CommandProblem) in .kick(queue: try a.number("queue")) },
        ScriptCommand("print", [.init("text", .text, variadic: true)], "print the words (variables substituted)") { a in .print(a.printWords("text")) },
    ]

    /// `memory SIZE [GPA] [SIZE GPA]...`: sizes within the limit, in all too, and every region
    /// page-aligned and inside the 64-bit guest-physical space.
    @Sendable static func memoryAction(_ a: CommandArguments) throws(CommandProblem) -> Action {
        let values = a.operands("regions")
        guard values.count == 1 || values.count % 2 == 0 else {
            throw CommandProblem("expected memory SIZE [GPA] [SIZE GPA]...: every further region needs a SIZE and a GPA")
        }
        var regions: [(size: Operand, gpa: Operand)] = []
        var total: UInt64 = 0
        for i in stride(from: 0, to: values.count, by: 2) {
            let size = try a.narrowed(values[i], .limit(.memoryBytes, minimum: 1), "SIZE of memory")
            let gpa = i + 1 < values.count ? values[i + 1] : .constant(GuestMemory.defaultGuestBase.rawValue, .bits(64), "GPA")
            if let s = size.literal {
                let (sum, overflow) = total.addingReportingOverflow(s)
                guard !overflow, sum <= a.limits.memoryBytes else {
                    throw CommandProblem("expected guest memory of at most \(ScriptLimits.bytes(a.limits.memoryBytes)) in all (\(a.limits.describe(.memoryBytes))), found more")
                }
                total = sum
            }
            if let problem = MemoryLayoutCheck.problem(size: size.literal, gpa: gpa.literal) { throw CommandProblem(problem) }
            regions.append((size, gpa))
        }
        return .memory(regions)
    }

    /// Every command in the order the manual lists them.
    public static let all: [CommandEntry] = setup.map(CommandEntry.script) + VhostRequest.syntax.map(CommandEntry.vhost)
        + memory.map(CommandEntry.script) + TunRequest.syntax.map(CommandEntry.tun) + (tap + frames + raw).map(CommandEntry.script)

    /// Every command by name.
    public static let byName: [String: CommandEntry] = Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })

    /// The names `expect NAME …` can check: every command's answer.
    public static let answerNames: Set<String> = Set(all.compactMap(\.answer))

    /// The keywords of the language besides the commands.
    public static let keywords = ["let", "expect", "repeat", "include"]
}

/// The rules a guest-memory region's size and GPA must keep, for literals (at parse time) and
/// variables (when `memory` runs).
enum MemoryLayoutCheck {
    static let page = UInt64(GuestMemory.pageSize)

    /// Why a region of `size` bytes at `gpa` cannot be mapped, or nil (unknown values pass).
    static func problem(size: UInt64?, gpa: UInt64?) -> String? {
        if let gpa, gpa % page != 0 { return "expected a GPA aligned to the page size (\(page)), found 0x\(String(gpa, radix: 16))" }
        guard let size, let gpa else { return nil }
        let (rounded, o1) = size.addingReportingOverflow(page - 1)
        let (_, o2) = gpa.addingReportingOverflow(rounded & ~(page - 1))
        if o1 || o2 { return "expected a region inside the 64-bit guest-physical space, found \(size) bytes at 0x\(String(gpa, radix: 16)), which run past its end" }
        return nil
    }
}

/// Parses literal values of the language.
public enum ScriptLiteral {
    /// A whole number: decimal, `0x` hex, or with a K, M or G suffix (powers of 1024).
    public static func number(_ text: String) -> UInt64? {
        let lower = text.lowercased()
        if lower.hasPrefix("0x") { return UInt64(lower.dropFirst(2), radix: 16) }
        let units: [Character: UInt64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30]
        if let last = lower.last, let unit = units[last] {
            guard let n = UInt64(lower.dropLast()) else { return nil }
            let (product, overflow) = n.multipliedReportingOverflow(by: unit)
            return overflow ? nil : product
        }
        return UInt64(lower)
    }

    /// A number that may be negative (`-N`), as the two's-complement bits of an `Int64`.
    static func signedNumber(_ text: String) -> UInt64? {
        guard text.hasPrefix("-") else { return number(text) }
        guard let magnitude = number(String(text.dropFirst())), magnitude <= UInt64(Int64.max) else { return nil }
        return UInt64(bitPattern: -Int64(magnitude))
    }

    /// Feature names (low and high) or 0x bits, as words of 64 bits.
    public static func featureWords(_ names: [String]) -> [UInt64]? {
        var words: [UInt64] = [0, 0]
        for name in names {
            // 0x… is raw bits; a decimal number is a bit number, as `--features` reads it.
            if name.lowercased().hasPrefix("0x") {
                guard let bits = number(name) else { return nil }
                words[0] |= bits
                continue
            }
            if let low = VirtioFeatures.parse(name) { words[0] |= low.rawValue; continue }
            if let high = HighFeatures.parse(name) { words[1] |= high.rawValue; continue }
            return nil
        }
        return words
    }

    /// Descriptor flags: a 16-bit number, or NEXT, WRITE and INDIRECT joined by `|`.
    static func descriptorFlags(_ text: String) -> UInt16? {
        if let n = number(text) { return n <= UInt64(UInt16.max) ? UInt16(n) : nil }
        var flags: UInt16 = 0
        for part in text.uppercased().split(separator: "|", omittingEmptySubsequences: false) {
            switch part {
            case "NEXT": flags |= DescriptorFlags.next.rawValue
            case "WRITE": flags |= DescriptorFlags.write.rawValue
            case "INDIRECT": flags |= DescriptorFlags.indirect.rawValue
            default: return nil
            }
        }
        return flags
    }

    /// The names a misspelt `word` may have meant: those within a small edit distance, closest first.
    static func suggestions(for word: String, among candidates: some Sequence<String>) -> [String] {
        // A word longer than any name is no misspelling of one: nothing to compare (a word of
        // megabytes lowercased once per candidate took seconds).
        guard word.utf8.count <= 64 else { return [] }
        let limit = word.count <= 4 ? 1 : 2
        let lowered = word.lowercased()
        let scored = candidates.map { ($0, editDistance(lowered, $0.lowercased())) }.filter { $0.1 <= limit }
        return scored.sorted { $0.1 != $1.1 ? $0.1 < $1.1 : $0.0 < $1.0 }.prefix(3).map(\.0)
    }

    /// Levenshtein distance, bounded in cost by the (short) words it is used on: inputs longer
    /// than 64 characters are not compared (their distance is reported as large).
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
        guard a.count <= 64, b.count <= 64 else { return Int.max }
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var previous = row[0]; row[0] = i
            for j in 1...b.count {
                let old = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = old
            }
        }
        return row[b.count]
    }
}

extension VhostBackendFeatures {
    /// The backend feature with this name (`IOTLB_MSG_V2` or `VHOST_BACKEND_F_IOTLB_MSG_V2`).
    public static func parse(_ text: String) -> VhostBackendFeatures? {
        let upper = text.uppercased()
        let key = upper.hasPrefix("VHOST_BACKEND_F_") ? String(upper.dropFirst("VHOST_BACKEND_F_".count)) : upper
        return names.first { $0.value == key }.map { VhostBackendFeatures(rawValue: 1 << UInt64($0.key)) }
    }
}
