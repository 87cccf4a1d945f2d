import PropertyBased
import Testing
import Vhost
@testable import VhostScript
import Virtio

/// Random scripts, written from the command table itself, run on the in-process device: every
/// command with random arguments (boundary and huge numbers, wrong words, variables with
/// offsets that overflow), `let`, `expect` lines and nested repeats, half of them after a
/// well-formed queue pair so that frames and raw ring writes reach a live device. Whatever the
/// script, parsing and running end with a result or an error: no trap, no hang, and the
/// memory the runner maps stays within the limits.
@Suite("Random scripts on the in-process device")
struct ScriptPropertyTests {
    /// Small limits, so that a run is short whatever it asks: waits of 10 ms, 32 iterations.
    static let limits: ScriptLimits = {
        var limits = ScriptLimits()
        limits.milliseconds = 10
        limits.iterations = 32
        limits.memoryBytes = 8 << 20
        limits.logBytes = 1 << 20
        limits.frames = 64
        limits.statements = 2000
        return limits
    }()

    /// Numbers at and past every boundary the language has.
    static let numbers = ["0", "1", "2", "3", "10", "15", "16", "18", "64", "255", "256", "4096", "32768", "65535", "65536", "60000", "0x7fffffff",
                          "0x80000000", "0xffffffff", "0x100000000", "0x40000000", "0x40001000", "0x4000fff0", "0x40100000", "0xfffffffffffff000",
                          "0xffffffffffffffff", "0x8000000000000000", "4K", "64K", "1M", "8M", "9M", "16G", "17G", "-1", "-2147483648", "2147483647",
                          "99999999999999999999", "0x", "1x", "banana"]

    static let prelude = """
        tap vhp0
        open
        set-owner
        set-features VERSION_1 EVENT_IDX
        memory 1M
        set-mem-table
        ring 0 64
        ring 1 64
        set-vring-num 0 64
        set-vring-num 1 64
        set-vring-addr 0
        set-vring-addr 1
        set-vring-kick 0
        set-vring-kick 1
        set-vring-call 0
        set-vring-call 1
        set-vring-err 0
        set-vring-err 1
        set-backend 0 tap
        set-backend 1 tap

        """

    @Test("random commands with boundary and huge numbers, variables and repeats: no crash, every run ends in bounded time, mappings stay within the limits")
    func randomScripts() async {
        await propertyCheck(count: 300, input: Gen.bool, Gen.int(in: 0...Int(Int32.max)).array(of: 1...24)) { prelude, choices in
            var writer = ScriptWriter(seed: choices)
            let text = (prelude ? Self.prelude : "") + writer.lines(choices.count)
            let start = ContinuousClock.now
            let script: Script
            do throws(Script.ParseError) {
                script = try Script(parsing: text, name: "random.vhost", limits: Self.limits)
            } catch {
                #expect(error.problems.allSatisfy { $0.hasPrefix("random.vhost:") }, "a problem without its place: \(error.problems)")
                return
            }
            var options = ScriptRunner.Options()
            options.device = .inProcess()
            options.limits = Self.limits
            options.keepGoing = choices[0] % 3 != 0
            let runner = ScriptRunner(options: options) { _ in }
            do throws(ScriptRunner.Failure) {
                try runner.run(script)
            } catch {
                #expect(!error.description.isEmpty)
            }
            #expect(runner.mappedBytes <= Self.limits.memoryBytes + Self.limits.logBytes, "\(runner.mappedBytes) bytes mapped after:\n\(text)")
            // Each statement waits at most 10 ms (a default of 2000 ms is cut to the limit), and at
            // most 32 iterations repeat at most 24 statements: about 8 s at the very worst.
            let elapsed = start.duration(to: .now).inMilliseconds
            #expect(elapsed < 10_000, "a run of \(elapsed) ms:\n\(text)")
        }
    }
}

/// Writes random script lines from the command table, deterministically from a seed.
struct ScriptWriter {
    var state: UInt64
    var variables: [String] = []
    /// Most scripts keep their literals within each parameter's range, so they parse and run
    /// (variables still overflow at run time); one in five writes anything.
    var hostile = false

    init(seed: [Int]) {
        state = seed.reduce(0x9e37_79b9_7f4a_7c15) { ($0 ^ UInt64(truncatingIfNeeded: $1)) &* 0xbf58_476d_1ce4_e5b9 }
        hostile = next() % 5 == 0
    }

    /// SplitMix64.
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    mutating func pick<T>(_ items: [T]) -> T { items[Int(next() % UInt64(items.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { next() % 100 < percent }

    /// A number for a parameter of `range`: a variable with an offset, a boundary value that
    /// fits (or, when hostile, any), or a random one.
    mutating func number(_ range: NumberRange = .bits(64)) -> String {
        if !variables.isEmpty, chance(25) {
            let name = pick(variables)
            return pick(["$\(name)", "$\(name)+1", "$\(name)-1", "$\(name)+0x7fffffffffffffff", "$\(name)-4096", "$\(name)+64"])
        }
        let fitting = ScriptPropertyTests.numbers.filter { text in
            (range == .signed32 ? ScriptLiteral.signedNumber(text) : ScriptLiteral.number(text)).map { range.problem($0, limits: ScriptPropertyTests.limits) == nil } ?? false
        }
        if hostile || fitting.isEmpty { return chance(85) ? pick(ScriptPropertyTests.numbers) : "\(next() >> (next() % 64))" }
        return pick(fitting)
    }

    mutating func value(_ kind: RequestParameter.Kind, maximum: UInt64?) -> String {
        switch kind {
        case .vring: return chance(80) ? pick(["0", "1", "2", "0xffffffff"]) : number(.bits(32))
        case .unsigned(let bits): return number(maximum.map { .range(0...$0, "") } ?? .bits(bits))
        case .signed32: return number(.signed32)
        case .guestAddress: return number()
        case .features: return pick(["VERSION_1", "VERSION_1 EVENT_IDX", "INDIRECT_DESC MRG_RXBUF", "0x8000000000000000", "F_LOG_ALL", "0x0", number()])
        case .backendFeatures: return pick(["IOTLB_MSG_V2", "0x0", "0x2", number()])
        case .fd: return pick(["-1", "eventfd", "closed", "file", "tap", "0", "2", "99999", number(.signed32)])
        case .choice(let words): return chance(80) ? pick(Array(words.keys)) : number(.bits(8))
        case .memoryRegions:
            return pick(["", "0x40000000 0x1000 0x40000000", "0x40000000 0 0x40000000", "0 0x100000 0x40000000 0x40008000 0x10000 0x40000000",
                         "\(number()) \(number()) \(number())"])
        case .vringAddressFlags: return pick(["LOG", "0", "0x2", number(.bits(32))])
        case .offloads: return pick(["csum tso4", "0x1ff", "0xffffffff", "ufo"])
        }
    }

    mutating func value(_ kind: ParameterSpec.Kind) -> String {
        switch kind {
        case .number(let range): return number(range)
        case .choice(let words): return hostile && chance(20) ? pick(["nope", number()]) : pick(words)
        case .text: return hostile ? pick(["vhp0", "x", "$nothing", "a/b", "waytoolongforaninterface"]) : pick(["vhp0", "vhp1"])
        case .descriptorFlags: return pick(["NEXT", "WRITE|NEXT", "INDIRECT", "0", hostile ? "NEXT|BOGUS" : "WRITE", number(.bits(16))])
        }
    }

    /// One command line: the command and its arguments, positional or named, optional ones sometimes left out.
    mutating func command(answering: Bool = false) -> String {
        let entries = answering ? ScriptCommands.all.filter { $0.answer != nil } : ScriptCommands.all
        let entry = pick(entries)
        var words = [entry.name]
        var named = false
        func add(_ name: String, required: Bool, text: String, writer: inout ScriptWriter) {
            if !required && writer.chance(40) { named = true; return }
            if named || writer.chance(15) { words.append("\(name)=\(text.split(separator: " ").first.map(String.init) ?? text)"); named = true } else { words.append(text) }
        }
        switch entry {
        case .vhost(let syntax):
            for p in syntax.parameters { add(p.name, required: p.required, text: value(p.kind, maximum: p.maximum), writer: &self) }
        case .tun(let syntax):
            for p in syntax.parameters { add(p.name, required: p.required, text: value(p.kind, maximum: p.maximum), writer: &self) }
        case .script(let command):
            for p in command.parameters {
                var text = value(p.kind)
                if p.variadic { text += " " + value(p.kind) }
                add(p.name, required: p.required, text: text, writer: &self)
            }
        }
        if hostile && chance(10) { words.append(number()) }
        return words.joined(separator: " ")
    }

    mutating func lines(_ count: Int, depth: Int = 0) -> String {
        var out = ""
        var left = count
        while left > 0 {
            left -= 1
            switch next() % 100 {
            case 0..<60:
                out += command() + "\n"
            case 60..<72:
                let name = "v\(variables.count)"
                out += "let \(name) = \(command(answering: true))\n"
                variables.append(name)
            case 72..<80:
                out += "expect \(pick(["ok", "EINVAL", "EFAULT", "EBUSY", "EPERM", "ENOBUFS", "EOPNOTSUPP", "ETIMEDOUT"]))\n" + command() + "\n"
            case 80..<88:
                let subject = variables.isEmpty || chance(50) ? pick(Array(ScriptCommands.answerNames)) : "$" + pick(variables)
                if chance(20) {
                    out += "expect ring-error \(pick(["0", "1", number(.bits(32))])) within=\(pick(["0", "5", number(.limit(.milliseconds, minimum: 0))]))\n"
                } else {
                    out += "expect \(subject) \(pick(["==", "!=", "<", ">=", "contains", "lacks"])) \(chance(50) ? number() : pick(["EVENT_IDX", "VERSION_1"]))\n"
                }
            default:
                guard depth < 3, left > 0 else { out += command() + "\n"; continue }
                let name = "i\(depth)"
                let inner = Int(next() % UInt64(min(left, 4))) + 1
                left -= inner
                let saved = variables
                let count = chance(80) ? pick(["0", "1", "2", "3", "5"]) : number(.limit(.iterations, minimum: 0))
                variables.append(name)
                out += "repeat \(count) as \(name) {\n" + lines(inner, depth: depth + 1) + "}\n"
                variables = saved
            }
        }
        return out
    }
}
