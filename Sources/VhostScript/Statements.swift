import SystemPackage
import Vhost
import Virtio

/// A number written in a script: a literal, converted and checked against its range when the
/// script is parsed, or a variable with an offset (`$base+2`), resolved with checked arithmetic
/// when the line runs.
public struct Operand: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        /// A number written in the script (negative ones as the bits of an `Int64`).
        case literal(UInt64)
        /// `$name`, `$name+N` or `$name-N`.
        case variable(String, offset: Int64)
    }
    /// The literal or the variable.
    public var value: Value
    /// What the number must fit.
    public var range: NumberRange
    /// The parameter, for messages (`SIZE of memory`).
    public var name: String

    public init(_ value: Value, range: NumberRange, name: String) {
        self.value = value; self.range = range; self.name = name
    }

    /// A literal known to fit (a default).
    static func constant(_ n: UInt64, _ range: NumberRange, _ name: String) -> Operand { Operand(.literal(n), range: range, name: name) }

    /// The literal's value, when the operand is one.
    public var literal: UInt64? { if case .literal(let n) = value { return n }; return nil }
}

/// The arguments of a request command, typed by the parameter's kind in the request's syntax.
public enum RequestOperand: Sendable, Equatable {
    /// A vring index, a sized number, a signed number, a choice word (its number), descriptor-address flags.
    case number(Operand)
    /// Feature names, `0x` bits and variables, or'ed into feature words; also backend features and offloads.
    case features([FeatureOperand])
    /// An fd argument.
    case file(FileOperand)
    /// A guest-physical address in the script's memory, given to the kernel as its host address.
    case guestAddress(Operand)
    /// Memory-table regions as triples GPA SIZE AT.
    case regions([Operand])
}

/// One word of a feature argument.
public enum FeatureOperand: Sendable, Equatable {
    /// A name or `0x` bits, as feature words (bit 64·i+b is bit b of word i).
    case words([UInt64])
    /// A variable: its words when it holds features and has no offset, else its number.
    case variable(Operand)
}

/// What an fd argument stands for.
public enum FileOperand: Sendable, Equatable {
    /// `-1`: unbind.
    case unbind
    /// `eventfd`: a fresh eventfd, kept by the runner (a vring's kick, call or error doorbell).
    case eventfd
    /// `closed`: the number of an fd just closed (the kernel's fdget finds nothing: EBADF).
    case closed
    /// `file`: a regular file (not an eventfd, not a socket).
    case file
    /// `tap`: the script's tap, or the in-process device's frame pipe.
    case port
    /// Any fd number.
    case number(Operand)
}

/// One request statement: the syntax entry (which names the command, its parameters and how
/// they build the request) and the operands written for its parameters, by name.
public struct RequestStatement<Request: Sendable>: Sendable {
    /// The request's entry in `VhostRequest.syntax` or `TunRequest.syntax`.
    public var syntax: RequestSyntax<Request>
    /// The operands written, by parameter name (absent optional parameters are missing).
    public var operands: [String: RequestOperand]
}

/// Which part of a ring `ring-address` answers.
public enum RingPart: String, Sendable, CaseIterable {
    case descriptors = "desc", avail, used
}

/// A word of `print`: text, or a variable whose value is printed.
public enum PrintWord: Sendable, Equatable {
    /// A word printed as written.
    case text(String)
    /// A variable whose value is printed.
    case variable(String, offset: Int64)
}

/// What one command line does, typed when the script is parsed.
public enum Action: Sendable {
    /// A vhost request (`VhostRequest.syntax`).
    case vhost(RequestStatement<VhostRequest>)
    /// A tun request on the tap (`TunRequest.syntax`).
    case tun(RequestStatement<TunRequest>)
    /// `open [PATH]`: the device (`/dev/vhost-net`, PATH, or the in-process device).
    case open(path: String?)
    /// `close`: the device, then the memory it kept mapped.
    case close
    /// `memory SIZE [GPA] [SIZE GPA]...`: (SIZE, GPA) per region; a lone region's GPA defaults.
    case memory([(size: Operand, gpa: Operand)])
    /// `alloc SIZE [align=N]`: answers the GPA.
    case alloc(size: Operand, alignment: Operand)
    /// `ring INDEX SIZE [at=GPA]`: answers the GPA.
    case ring(index: Operand, size: Operand, at: Operand?)
    /// `ring-address INDEX desc|avail|used`.
    case ringAddress(index: Operand, part: RingPart)
    /// `log SIZE`: answers the log's host address.
    case log(size: Operand)
    /// `read-log OFFSET [width=]`: answers the bytes at OFFSET of the dirty log.
    case readLog(offset: Operand, width: Int)
    /// `iotlb-update IOVA SIZE GPA [perm=]`.
    case iotlbUpdate(iova: Operand, size: Operand, gpa: Operand, access: IOTLBMessage.Access)
    /// `iotlb-invalidate IOVA SIZE`.
    case iotlbInvalidate(iova: Operand, size: Operand)
    /// `iotlb-miss [timeout=]`: answers the IOVA.
    case iotlbMiss(timeout: Operand)
    /// `tap NAME`: a tap and its host side, or a frame pipe on the in-process device.
    case tap(name: String)
    /// `link up|down`.
    case link(up: Bool)
    /// `send Q [count=] [size=] [pattern=] [timeout=]`.
    case send(queue: Operand, count: Operand, size: Operand?, pattern: Operand?, timeout: Operand)
    /// `post Q [count=] [size=]`.
    case post(queue: Operand, count: Operand, size: Operand)
    /// `receive Q [count=] [timeout=]`: answers the frames received.
    case receive(queue: Operand, count: Operand, timeout: Operand)
    /// `host-send [count=] [size=]`.
    case hostSend(count: Operand, size: Operand?)
    /// `host-expect [count=] [timeout=]`: answers the frames seen.
    case hostExpect(count: Operand, timeout: Operand)
    /// `wait-call Q [timeout=]`: answers the call count.
    case waitCall(queue: Operand, timeout: Operand)
    /// `sleep MS`.
    case sleep(milliseconds: Operand)
    /// `desc Q I [addr=] [len=] [flags=] [next=]`: the fields given.
    case descriptor(queue: Operand, index: Operand, address: Operand?, length: Operand?, flags: Operand?, next: Operand?)
    /// `avail Q SLOT HEAD`.
    case avail(queue: Operand, slot: Operand, head: Operand)
    /// `avail-idx Q VALUE`.
    case availIndex(queue: Operand, value: Operand)
    /// `used-idx Q`: answers used->idx.
    case usedIndex(queue: Operand)
    /// `write GPA VALUE [width=]`.
    case write(gpa: Operand, value: Operand, width: Int)
    /// `read GPA [width=]`: answers the value.
    case read(gpa: Operand, width: Int)
    /// `kick Q`.
    case kick(queue: Operand)
    /// `print WORD...`.
    case print([PrintWord])
}

/// What a command must answer: success (the default) or a given errno.
public enum ExpectedOutcome: Sendable, Equatable {
    /// `expect ok`, or no expectation.
    case success
    /// `expect ERRNO`.
    case errno(Errno)
}

/// A word of a command as written, for the run's output: text, or a variable shown with its value.
public enum DisplayWord: Sendable, Equatable {
    /// A word as written (with its `NAME=` when it had one).
    case text(String)
    /// A variable, after `prefix` (`count=` or nothing).
    case variable(prefix: String, name: String, offset: Int64)
}

/// One command line.
public struct Invocation: Sendable {
    /// The command's name, as written.
    public var command: String
    /// What the line does.
    public var action: Action
    /// Where the line is.
    public var location: SourceLocation
    /// `let NAME = …`: the variable the answer goes into.
    public var binding: String?
    /// Set by a preceding `expect ok` or `expect ERRNO`.
    public var expected: ExpectedOutcome
    /// The name the answer is kept under (`base`, `features`, …), for commands that answer one.
    public var answer: String?
    /// The line as written, for the output.
    public var words: [DisplayWord]
}

/// `expect SUBJECT [OP] VALUE...`: a check on an answer.
public struct ValueCheck: Sendable {
    public enum Comparison: String, Sendable, CaseIterable {
        case equal = "==", notEqual = "!=", less = "<", lessOrEqual = "<=", greater = ">", greaterOrEqual = ">="
        case contains, lacks
    }
    /// What is checked: the last answer of a name, or a variable.
    public enum Subject: Sendable, Equatable {
        case answer(String)
        case variable(String, offset: Int64)
    }
    /// A value compared with: a literal (a number or feature words), or a variable.
    public enum Value: Sendable, Equatable {
        case constant(ScriptValue, text: String)
        case variable(String, offset: Int64)
    }
    /// What is checked.
    public var subject: Subject
    /// How it is compared.
    public var comparison: Comparison
    /// What it is compared with (several only for `contains` and `lacks`).
    public var values: [Value]
    /// Where the `expect` is.
    public var location: SourceLocation
}

/// One statement of a script.
public indirect enum Statement: Sendable {
    /// A command line.
    case invoke(Invocation)
    /// `expect SUBJECT [OP] VALUE...`.
    case check(ValueCheck)
    /// `expect ring-error QUEUE [within=MS]`: the queue's error eventfd fires.
    case expectRingError(queue: Operand, milliseconds: Operand, location: SourceLocation)
    /// `repeat COUNT [as NAME] { … }`.
    case loop(count: Operand, variable: String?, body: [Statement], location: SourceLocation)
}

/// An answer a script can keep in a variable and check: a number, or feature words.
public enum ScriptValue: Sendable, Equatable, CustomStringConvertible {
    /// One number (an address, a base, a count).
    case number(UInt64)
    /// Feature bits, 64 to a word (bit 64 × i + b is bit b of word i).
    case words([UInt64])

    public var description: String {
        switch self {
        case .number(let n): return n > 0xffff ? "0x" + String(n, radix: 16) : "\(n)"
        case .words(let words):
            let names = VirtioFeatures(rawValue: words.first ?? 0).featureNames + HighFeatures(rawValue: words.count > 1 ? words[1] : 0).featureNames
            return words.map { "0x" + String($0, radix: 16) }.joined(separator: " ") + (names.isEmpty ? "" : " (\(names.joined(separator: " ")))")
        }
    }

    /// As one number: the number, or the first feature word.
    public var number: UInt64 {
        switch self {
        case .number(let n): return n
        case .words(let words): return words.first ?? 0
        }
    }
}
