import Vhost
import Virtio

/// One parameter of a script command.
public struct ParameterSpec: Sendable {
    public enum Kind: Sendable, Equatable {
        /// A whole number: decimal, `0x` hex, or with a K, M or G suffix.
        case number
        /// Virtio feature names (`VERSION_1`, `EVENT_IDX`, high ones such as `HOST_UDP_TUNNEL_GSO`) or `0x` bits.
        case features
        /// vhost backend feature names (`IOTLB_MSG_V2`, …) or `0x` bits.
        case backendFeatures
        /// One of these words.
        case choice([String])
        /// A number, or one of these words (`-1`, `eventfd`, …).
        case numberOrChoice([String])
        /// Any text: a path, an interface name.
        case text
        /// Descriptor flags: `NEXT|WRITE|INDIRECT`, `0`, or a number.
        case descriptorFlags
        /// IOTLB access: `r`, `w` or `rw`.
        case access
    }

    public var name: String
    public var kind: Kind
    public var required: Bool
    /// Takes every remaining positional argument.
    public var variadic: Bool

    init(_ name: String, _ kind: Kind, required: Bool = true, variadic: Bool = false) {
        self.name = name; self.kind = kind; self.required = required; self.variadic = variadic
    }
}

/// A command of the script language: its parameters, what it does, and the name under which
/// its answer is kept (for `expect NAME …` and `let`).
public struct CommandSpec: Sendable {
    public var name: String
    public var parameters: [ParameterSpec]
    public var summary: String
    /// The result's name, for commands that answer a value.
    public var result: String?

    init(_ name: String, _ parameters: [ParameterSpec] = [], result: String? = nil, _ summary: String) {
        self.name = name; self.parameters = parameters; self.summary = summary; self.result = result
    }

    init(_ name: String, result: String? = nil, _ summary: String) {
        self.init(name, [], result: result, summary)
    }

    /// `name PARAM [OPTIONAL] VARIADIC...`, for messages and the manual.
    public var usage: String {
        ([name] + parameters.map { p in
            let text = p.variadic ? "\(p.name.uppercased())..." : p.name.uppercased()
            return p.required ? text : "[\(p.name)=\(p.name.uppercased())]"
        }).joined(separator: " ")
    }
}

/// Every command, by name. Each vhost ioctl command is the ioctl's name in lower case without
/// `VHOST_`, so a reader who knows the kernel's API reads a script without the manual.
public enum ScriptCommands {
    static let fileChoices = ["-1", "eventfd", "closed", "file"]
    static let backendChoices = ["tap", "-1", "eventfd", "closed", "file"]

    public static let all: [CommandSpec] = [
        // The device and its owner.
        CommandSpec("open", [.init("path", .text, required: false)], "open /dev/vhost-net (or PATH); a second open closes the first device"),
        CommandSpec("close", "close the vhost fd (the kernel stops its worker and forgets the rings)"),
        CommandSpec("set-owner", "VHOST_SET_OWNER"),
        CommandSpec("reset-owner", "VHOST_RESET_OWNER"),
        CommandSpec("get-features", result: "features", "VHOST_GET_FEATURES"),
        CommandSpec("set-features", [.init("features", .features, variadic: true)], "VHOST_SET_FEATURES: names, or 0x bits"),
        CommandSpec("get-features-array", [.init("count", .number, required: false)], result: "features",
                    "VHOST_GET_FEATURES_ARRAY (Linux 6.17): COUNT words, default 2; the kernel's answer if it has none"),
        CommandSpec("set-features-array", [.init("features", .features, variadic: true)], "VHOST_SET_FEATURES_ARRAY: names (high ones too), or 0x words"),
        CommandSpec("get-backend-features", result: "backend-features", "VHOST_GET_BACKEND_FEATURES"),
        CommandSpec("set-backend-features", [.init("features", .backendFeatures, variadic: true)], "VHOST_SET_BACKEND_FEATURES"),
        CommandSpec("get-fork-owner", result: "fork-owner", "VHOST_GET_FORK_FROM_OWNER: 1 task, 0 kthread"),
        CommandSpec("set-fork-owner", [.init("mode", .numberOrChoice(["task", "kthread"]))], "VHOST_SET_FORK_FROM_OWNER: task (1) or kthread (0), before set-owner"),
        CommandSpec("new-worker", result: "worker", "VHOST_NEW_WORKER"),
        // Guest memory and rings (no ioctl).
        CommandSpec("memory", [.init("regions", .number, variadic: true)], "map guest memory: SIZE [GPA] [SIZE GPA]... (GPA default 0x40000000); replaces the previous memory"),
        CommandSpec("alloc", [.init("size", .number), .init("align", .number, required: false)], result: "address", "take SIZE bytes of guest memory; answers their GPA"),
        CommandSpec("ring", [.init("index", .number), .init("size", .number), .init("at", .number, required: false)], result: "address",
                    "lay out a split ring of SIZE entries in guest memory (at GPA AT if given); answers its GPA"),
        CommandSpec("ring-address", [.init("index", .number), .init("part", .choice(["desc", "avail", "used"]))], result: "address", "the GPA of a ring's descriptor table, avail or used ring"),
        CommandSpec("set-mem-table", "VHOST_SET_MEM_TABLE with the guest memory's regions"),
        // Vrings.
        CommandSpec("set-vring-num", [.init("index", .number), .init("num", .number)], "VHOST_SET_VRING_NUM"),
        CommandSpec("set-vring-base", [.init("index", .number), .init("base", .number)], "VHOST_SET_VRING_BASE"),
        CommandSpec("get-vring-base", [.init("index", .number)], result: "base", "VHOST_GET_VRING_BASE: the kernel's last_avail_idx"),
        CommandSpec("set-vring-addr", [.init("index", .number), .init("desc", .number, required: false), .init("avail", .number, required: false),
                                       .init("used", .number, required: false), .init("log", .number, required: false)],
                    "VHOST_SET_VRING_ADDR: the ring laid out by `ring`, or other GPAs (translated to this process's addresses); LOG sets VHOST_VRING_F_LOG"),
        CommandSpec("set-vring-kick", [.init("index", .number), .init("fd", .numberOrChoice(fileChoices), required: false)], "VHOST_SET_VRING_KICK INDEX [fd=-1|eventfd|closed|file]"),
        CommandSpec("set-vring-call", [.init("index", .number), .init("fd", .numberOrChoice(fileChoices), required: false)], "VHOST_SET_VRING_CALL INDEX [fd=…]"),
        CommandSpec("set-vring-err", [.init("index", .number), .init("fd", .numberOrChoice(fileChoices), required: false)], "VHOST_SET_VRING_ERR INDEX [fd=…]"),
        CommandSpec("set-vring-busyloop-timeout", [.init("index", .number), .init("microseconds", .number)], "VHOST_SET_VRING_BUSYLOOP_TIMEOUT"),
        CommandSpec("get-vring-busyloop-timeout", [.init("index", .number)], result: "busyloop-timeout", "VHOST_GET_VRING_BUSYLOOP_TIMEOUT"),
        // Dirty log and IOTLB.
        CommandSpec("log", [.init("size", .number)], result: "address", "map a dirty log of SIZE bytes (outside guest memory); answers its address"),
        CommandSpec("set-log-base", "VHOST_SET_LOG_BASE with the log mapped by `log`"),
        CommandSpec("set-log-fd", [.init("fd", .numberOrChoice(fileChoices), required: false)], "VHOST_SET_LOG_FD [fd=-1|eventfd|…]"),
        CommandSpec("iotlb-update", [.init("iova", .number), .init("size", .number), .init("gpa", .number), .init("perm", .access, required: false)],
                    "write a VHOST_IOTLB_UPDATE mapping IOVA..+SIZE to the guest memory at GPA (perm rw by default)"),
        CommandSpec("iotlb-invalidate", [.init("iova", .number), .init("size", .number)], "write a VHOST_IOTLB_INVALIDATE"),
        CommandSpec("iotlb-miss", [.init("timeout", .number, required: false)], result: "iova", "wait for the kernel's VHOST_IOTLB_MISS (default 2000 ms); answers its IOVA"),
        // The tap and the backend.
        CommandSpec("tap", [.init("name", .text)], "create or attach tap NAME (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), bring it up, and listen on its host side"),
        CommandSpec("set-vnet-hdr-size", [.init("size", .number)], "TUNSETVNETHDRSZ on the tap"),
        CommandSpec("link", [.init("state", .choice(["up", "down"]))], "bring the tap up or down"),
        CommandSpec("set-offloads", [.init("offloads", .numberOrChoice(ScriptCommands.offloadNames), required: false, variadic: true)],
                    "TUNSETOFFLOAD on the tap: csum tso4 tso6 tso-ecn ufo uso4 uso6 udp-tunnel-gso udp-tunnel-gso-csum, or 0x bits (none: all off)"),
        CommandSpec("set-backend", [.init("index", .number), .init("fd", .numberOrChoice(backendChoices))], "VHOST_NET_SET_BACKEND INDEX tap|-1|eventfd|closed|file"),
        // Frames.
        CommandSpec("send", [.init("queue", .number), .init("count", .number, required: false), .init("size", .number, required: false),
                             .init("pattern", .number, required: false), .init("timeout", .number, required: false)],
                    "transmit COUNT numbered frames (default 1; SIZE bytes, or test sizes) and wait until the device used them all"),
        CommandSpec("post", [.init("queue", .number), .init("count", .number, required: false), .init("size", .number, required: false)],
                    "make up to COUNT receive buffers of SIZE bytes (default 2048) available (as many as are free), and kick if the device asks"),
        CommandSpec("receive", [.init("queue", .number), .init("count", .number, required: false), .init("timeout", .number, required: false)], result: "received",
                    "wait for COUNT frames the host sent (in order, bytes checked); other host traffic is skipped"),
        CommandSpec("host-send", [.init("count", .number, required: false), .init("size", .number, required: false)],
                    "the host side sends COUNT numbered frames into the tap (towards the RX ring)"),
        CommandSpec("host-expect", [.init("count", .number, required: false), .init("timeout", .number, required: false)], result: "host-received",
                    "the host side must see the next COUNT frames we sent, in order and intact"),
        CommandSpec("wait-call", [.init("queue", .number), .init("timeout", .number, required: false)], result: "calls",
                    "wait for the call eventfd (default 2000 ms)"),
        CommandSpec("sleep", [.init("milliseconds", .number)], "wait"),
        // Raw ring writes.
        CommandSpec("desc", [.init("queue", .number), .init("index", .number), .init("addr", .number, required: false), .init("len", .number, required: false),
                             .init("flags", .descriptorFlags, required: false), .init("next", .number, required: false)],
                    "set fields of descriptor INDEX (the others keep their value)"),
        CommandSpec("avail", [.init("queue", .number), .init("slot", .number), .init("head", .number)], "put HEAD in avail ring slot SLOT (mod the ring size)"),
        CommandSpec("avail-idx", [.init("queue", .number), .init("value", .number)], "store avail->idx (a release store: the device may read the ring at once)"),
        CommandSpec("used-idx", [.init("queue", .number)], result: "used-idx", "read used->idx"),
        CommandSpec("write", [.init("gpa", .number), .init("value", .number), .init("width", .choice(["1", "2", "4", "8"]), required: false)],
                    "store VALUE (little-endian, WIDTH bytes, default 8) at GPA in guest memory: indirect tables, headers, anything the device reads"),
        CommandSpec("read", [.init("gpa", .number), .init("width", .choice(["1", "2", "4", "8"]), required: false)], result: "value",
                    "load WIDTH bytes (default 8, little-endian) from GPA in guest memory"),
        CommandSpec("kick", [.init("queue", .number)], "signal the queue's kick eventfd"),
        CommandSpec("print", [.init("text", .text, variadic: true)], "print the words (variables substituted)"),
    ]

    static let offloadNames = ["csum", "tso4", "tso6", "tso-ecn", "ufo", "uso4", "uso6", "udp-tunnel-gso", "udp-tunnel-gso-csum"]
    static let offloadBits: [String: UInt32] = ["csum": 0x1, "tso4": 0x2, "tso6": 0x4, "tso-ecn": 0x8, "ufo": 0x10, "uso4": 0x20, "uso6": 0x40,
                                                 "udp-tunnel-gso": 0x80, "udp-tunnel-gso-csum": 0x100]

    public static let byName: [String: CommandSpec] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    /// The names `expect NAME …` can check: every command's result.
    public static let resultNames: Set<String> = Set(all.compactMap(\.result))

    /// The keywords of the language besides the commands.
    public static let keywords = ["let", "expect", "repeat", "include"]
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

    static func descriptorFlags(_ text: String) -> UInt16? {
        if let n = number(text) { return n <= UInt64(UInt16.max) ? UInt16(n) : nil }
        var flags: UInt16 = 0
        for part in text.uppercased().split(separator: "|") {
            switch part {
            case "NEXT": flags |= DescriptorFlags.next.rawValue
            case "WRITE": flags |= DescriptorFlags.write.rawValue
            case "INDIRECT": flags |= DescriptorFlags.indirect.rawValue
            default: return nil
            }
        }
        return flags
    }

    /// Whether `text` is a valid literal of `kind`; nil when it is, else what was expected.
    static func problem(_ text: String, kind: ParameterSpec.Kind) -> String? {
        switch kind {
        case .number:
            return number(text) == nil ? "a whole number (like 256, 0x1000 or 4M)" : nil
        case .features:
            return featureWords([text]) == nil ? "a virtio feature name (like VERSION_1 or EVENT_IDX) or 0x bits" : nil
        case .backendFeatures:
            if text.lowercased().hasPrefix("0x") { return number(text) == nil ? "0x bits" : nil }
            return VhostBackendFeatures.parse(text) == nil ? "a vhost backend feature name (like IOTLB_MSG_V2)" : nil
        case .choice(let words):
            return words.contains(text) ? nil : "one of \(words.joined(separator: ", "))"
        case .numberOrChoice(let words):
            return words.contains(text) || number(text) != nil ? nil : "a number or one of \(words.joined(separator: ", "))"
        case .text:
            return nil
        case .descriptorFlags:
            return descriptorFlags(text) == nil ? "descriptor flags (NEXT, WRITE, INDIRECT joined by |, or a number)" : nil
        case .access:
            return ["r", "w", "rw"].contains(text) ? nil : "r, w or rw"
        }
    }

    /// The names a misspelt `word` may have meant: those within a small edit distance, closest first.
    static func suggestions(for word: String, among candidates: some Sequence<String>) -> [String] {
        let limit = word.count <= 4 ? 1 : 2
        let scored = candidates.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }.filter { $0.1 <= limit }
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
