/// The most a script may ask of this tool, so that no input crashes it, exhausts its memory or
/// keeps it busy without end. A literal above a limit is a parse error (nothing runs); a value
/// that comes from a variable above one, or more repeat iterations than allowed, stops the run.
/// Every message names the limit it hit.
public struct ScriptLimits: Sendable, Equatable {
    /// Statements parsed in all: includes count each time they are included, loop bodies once.
    public var statements = 100_000
    /// `repeat` blocks inside each other.
    public var repeatNesting = 16
    /// Includes inside each other.
    public var includeNesting = 16
    /// Include lines followed in all (each costs a path resolution: 100 files each including
    /// the 100 took 9 s through the statement limit alone).
    public var includes = 1_000
    /// Bytes of script text read in all (includes count each time they are included).
    public var inputBytes = 16 << 20
    /// Repeat iterations executed in one run, all loops together (and so the COUNT of one repeat).
    public var iterations: UInt64 = 1_000_000
    /// Guest memory mapped at once: the current memory and the memory kept for the open device.
    public var memoryBytes: UInt64 = 16 << 30
    /// One dirty log's size.
    public var logBytes: UInt64 = 1 << 30
    /// `sleep`, every `timeout=` and `within=`, in milliseconds.
    public var milliseconds: UInt64 = 60_000
    /// Frames in one `send`, `post`, `receive`, `host-send` or `host-expect`.
    public var frames: UInt64 = UInt64(UInt32.max)

    public init() {}

    /// The limits `vhostctl script` applies.
    public static let standard = ScriptLimits()

    /// Which limit bounds a number.
    public enum Kind: Sendable, Equatable {
        case memoryBytes, logBytes, milliseconds, frames, iterations
    }

    /// The largest value a number bound by `kind` may take.
    public func maximum(_ kind: Kind) -> UInt64 {
        switch kind {
        case .memoryBytes: memoryBytes
        case .logBytes: logBytes
        case .milliseconds: milliseconds
        case .frames: frames
        case .iterations: iterations
        }
    }

    /// The limit in words, for messages: "the limit on guest memory, 16 GiB".
    public func describe(_ kind: Kind) -> String {
        switch kind {
        case .memoryBytes: "the limit on guest memory, \(ScriptLimits.bytes(memoryBytes))"
        case .logBytes: "the limit on a dirty log, \(ScriptLimits.bytes(logBytes))"
        case .milliseconds: "the limit on waits, \(milliseconds) ms"
        case .frames: "the limit on frames in one command, \(frames)"
        case .iterations: "the limit on repeat iterations in one run, \(iterations)"
        }
    }

    /// `16 GiB`, `64 KiB`, or the number of bytes when it is no whole unit.
    static func bytes(_ n: UInt64) -> String {
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] where n >= 1 << shift && n % (1 << shift) == 0 {
            return "\(n >> UInt64(shift)) \(unit)"
        }
        return "\(n) bytes"
    }
}

/// What a number written in a script must fit: a kernel field's width, a limit of the tool, or
/// a command's own range. Literals are checked against it when the script is parsed, values of
/// variables when the line runs.
public enum NumberRange: Sendable, Equatable {
    /// A kernel field of this many bits (8, 16, 32, 64), unsigned.
    case bits(Int)
    /// A signed 32-bit field (an `int` of the kernel's); a literal may be negative.
    case signed32
    /// From `minimum` up to a limit of the tool.
    case limit(ScriptLimits.Kind, minimum: UInt64)
    /// A range of the command's own, described for messages (`a frame's length`).
    case range(ClosedRange<UInt64>, String)

    /// Why `value` does not fit (and whether a limit of the tool is what it broke), or nil.
    func problem(_ value: UInt64, limits: ScriptLimits) -> (expected: String, isLimit: Bool)? {
        switch self {
        case .bits(let bits):
            guard bits < 64, value >> UInt64(bits) != 0 else { return nil }
            return ("a number of at most \(bits) bits (the kernel's field), up to 0x\(String((UInt64(1) << UInt64(bits)) - 1, radix: 16))", false)
        case .signed32:
            let signed = Int64(bitPattern: value)
            guard signed < Int64(Int32.min) || signed > Int64(Int32.max) else { return nil }
            return ("a number from \(Int32.min) to \(Int32.max) (the kernel's int)", false)
        case .limit(let kind, let minimum):
            let maximum = limits.maximum(kind)
            if value > maximum { return ("at most \(maximum) (\(limits.describe(kind)))", true) }
            if value < minimum { return ("at least \(minimum)", false) }
            return nil
        case .range(let range, let what):
            guard !range.contains(value) else { return nil }
            return ("\(range.lowerBound) to \(range.upperBound) (\(what))", false)
        }
    }
}
