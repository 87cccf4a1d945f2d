import SystemPackage
import Vhost
import Virtio

/// A value written in a script: a literal word, or a variable with an optional offset
/// (`$base+2`), resolved when the line runs.
public enum Operand: Sendable, Equatable {
    case literal(String)
    case variable(String, offset: Int64)
}

/// An argument bound to its parameter.
public struct BoundArgument: Sendable, Equatable {
    public var operands: [Operand]
    public var location: SourceLocation
}

/// What a command must answer: success (the default) or a given errno.
public enum ExpectedOutcome: Sendable, Equatable {
    case success
    case errno(Errno)
}

/// One command line, checked against its `CommandSpec`.
public struct Invocation: Sendable {
    public var command: String
    public var arguments: [String: BoundArgument]
    public var location: SourceLocation
    /// `let NAME = …`: the variable the answer goes into.
    public var binding: String?
    /// Set by a preceding `expect ok` or `expect ERRNO`.
    public var expected: ExpectedOutcome
}

/// `expect SUBJECT [OP] VALUE...`: a check on an answer.
public struct ValueCheck: Sendable {
    public enum Comparison: String, Sendable, CaseIterable {
        case equal = "==", notEqual = "!=", less = "<", lessOrEqual = "<=", greater = ">", greaterOrEqual = ">="
        case contains, lacks
    }
    /// `$name`, or the name of a command's result (`base`, `features`, …).
    public var subject: Operand
    public var comparison: Comparison
    public var values: [Operand]
    public var location: SourceLocation
}

/// One statement of a script.
public indirect enum Statement: Sendable {
    case invoke(Invocation)
    case check(ValueCheck)
    /// `expect ring-error QUEUE [within=MS]`: the queue's error eventfd fires.
    case expectRingError(queue: Operand, milliseconds: Operand?, location: SourceLocation)
    /// `repeat COUNT [as NAME] { … }`.
    case loop(count: Operand, variable: String?, body: [Statement], location: SourceLocation)
}

/// A parsed script: statements, every command checked against the language before anything
/// runs. The grammar, line by line (`#` starts a comment anywhere):
///
///     COMMAND ARG... [NAME=ARG]...        a command; ARG is a word, a number or $var[+N]
///     let NAME = COMMAND ARG...           keep the command's answer in $NAME
///     expect ok | expect ERRNO            the next command must succeed / fail with ERRNO
///     expect SUBJECT [OP] VALUE...        check an answer: SUBJECT is $var or a result name;
///                                         OP is == (default), !=, <, <=, >, >=, contains, lacks
///     expect ring-error QUEUE [within=MS] the queue's error eventfd must fire
///     repeat COUNT [as NAME] {            repeat the lines up to the matching }
///     }
///     include "FILE"                      the lines of FILE (relative to this file)
public struct Script: Sendable {
    public var statements: [Statement]
    /// The file the script came from.
    public var name: String

    /// Every problem found, each starting with `file:line:column`, all of them (not just the first).
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public var problems: [String]
        public var description: String { problems.joined(separator: "\n") }
    }

    /// Reads include files; the default reads from the file system.
    public typealias FileLoader = @Sendable (String) -> String?

    /// Parses `text`. Nothing runs here, and a script with any problem is rejected whole.
    public init(parsing text: String, name: String = "script", loader: FileLoader? = nil) throws(ParseError) {
        var parser = Parser(loader: loader ?? Script.readFile)
        let statements = parser.parse(text, file: name, depth: 0)
        guard parser.problems.isEmpty else { throw ParseError(problems: parser.problems.map(Script.escapingNonPrintable)) }
        self.statements = statements
        self.name = name
    }

    /// Reads and parses a file.
    public init(contentsOf path: String) throws(ParseError) {
        guard let text = Script.readFile(path) else { throw ParseError(problems: ["\(path): cannot read the script: it does not exist or is not readable"]) }
        try self.init(parsing: text, name: path)
    }

    @Sendable static func readFile(_ path: String) -> String? { KernelInfo.readFile(path) }

    /// The text with every control character (and DEL, and the C1 controls) written as
    /// `\u{XX}`, so that a message never echoes raw bytes from the script to the terminal.
    public static func escapingNonPrintable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            if (scalar.value < 0x20 && scalar != "\n") || scalar.value == 0x7f || (0x80..<0xa0).contains(scalar.value) {
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// How many statements run, loops unrolled (saturating at `Int.max`; a loop whose count is
    /// a variable counts once), for the summary line.
    public var commandCount: Int { Script.count(statements) }
    static func count(_ statements: [Statement]) -> Int {
        statements.reduce(0) { total, s in
            let add: Int
            switch s {
            case .loop(let count, _, let body, _):
                let times: Int = if case .literal(let text) = count, let n = ScriptLiteral.number(text) { Int(clamping: n) } else { 1 }
                let (product, overflow) = times.multipliedReportingOverflow(by: Script.count(body))
                add = overflow ? Int.max : product
            default: add = 1
            }
            let (sum, overflow) = total.addingReportingOverflow(add)
            return overflow ? Int.max : sum
        }
    }
}

/// The parser: a line at a time, with a stack for `repeat` blocks.
struct Parser {
    let loader: Script.FileLoader
    var problems: [String] = []
    /// Variables defined so far (by `let` or a loop), for "used before it was set" errors.
    var defined: Set<String> = []
    /// The include chain, for cycle detection.
    var including: [String] = []

    init(loader: @escaping Script.FileLoader) { self.loader = loader }

    mutating func problem(_ location: SourceLocation, _ message: String) {
        if problems.count < 100 { problems.append("\(location): \(message)") }
    }

    static func describe(_ token: Token?) -> String {
        guard let token else { return "the end of the line" }
        switch token.kind {
        case .variable: return "'$\(token.text)'"
        case .string: return "the string \"\(token.text)\""
        default: return "'\(token.text)'"
        }
    }

    mutating func parse(_ text: String, file: String, depth: Int) -> [Statement] {
        // Blocks under construction: (statements, loop header).
        var stack: [([Statement], (count: Operand, variable: String?, location: SourceLocation)?)] = [([], nil)]
        var pending: (ExpectedOutcome, SourceLocation)? = nil
        var lineNumber = 0
        // "\r\n" is one Character in Swift, so a script saved with CRLF line ends splits on it too.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            let tokens: [Token]
            do {
                tokens = try Lexer.tokens(rawLine, file: file, lineNumber: lineNumber)
            } catch {
                problem(error.location, error.message)
                continue
            }
            guard let first = tokens.first else { continue }
            func append(_ statement: Statement) { stack[stack.count - 1].0.append(statement) }
            if let (_, location) = pending {
                // `expect ok|ERRNO` must be followed by the command it is about.
                let commandLine = first.kind == .word && !["expect", "repeat", "include"].contains(first.text)
                let anotherOutcome = first.kind == .word && first.text == "expect" && tokens.count > 1 && isOutcome(tokens[1]) != nil
                if !commandLine && !anotherOutcome {
                    problem(location, "expected a command after this expect, found \(Parser.describe(first)) on line \(lineNumber)")
                    pending = nil
                }
            }
            switch first.kind {
            case .closeBrace:
                guard tokens.count == 1 else { problem(tokens[1].location, "expected the end of the line after }, found \(Parser.describe(tokens[1]))"); continue }
                guard stack.count > 1 else { problem(first.location, "expected a command, found '}' with no repeat block open"); continue }
                let (body, header) = stack.removeLast()
                if let variable = header!.variable { defined.remove(variable) }
                stack[stack.count - 1].0.append(.loop(count: header!.count, variable: header!.variable, body: body, location: header!.location))
                continue
            case .word:
                break
            default:
                problem(first.location, "expected a command, found \(Parser.describe(first))")
                continue
            }
            switch first.text {
            case "expect":
                if tokens.count >= 2, let outcome = isOutcome(tokens[1]) {
                    guard tokens.count == 2 else { problem(tokens[2].location, "expected the end of the line after expect \(tokens[1].text), found \(Parser.describe(tokens[2]))"); continue }
                    if let (_, earlier) = pending { problem(earlier, "expected a command after this expect, found another expect on line \(lineNumber)") }
                    pending = (outcome, first.location)
                    continue
                }
                if let statement = parseCheck(tokens) { append(statement) }
            case "repeat":
                guard let header = parseRepeat(tokens) else { continue }
                if let variable = header.variable { defined.insert(variable) }
                stack.append(([], header))
            case "include":
                guard tokens.count == 2, tokens[1].kind == .string || tokens[1].kind == .word else {
                    problem(tokens.count > 1 ? tokens[1].location : first.location, "expected a file name after include (include \"common.vhost\"), found \(Parser.describe(tokens.count > 1 ? tokens[1] : nil))")
                    continue
                }
                let path = Parser.resolve(tokens[1].text, relativeTo: file)
                guard depth < 16, !including.contains(path), path != file else {
                    problem(tokens[1].location, "include \(tokens[1].text) would include itself (or nest more than 16 deep)")
                    continue
                }
                guard let text = loader(path) else { problem(tokens[1].location, "cannot read the included file \(path)"); continue }
                including.append(file)
                for statement in parse(text, file: path, depth: depth + 1) { append(statement) }
                including.removeLast()
            case "let":
                guard tokens.count >= 4, tokens[1].kind == .word, Lexer.isName(tokens[1].text), tokens[2].kind == .equals, tokens[3].kind == .word else {
                    let bad = tokens.count < 2 ? nil : tokens.count < 3 ? nil : tokens.count < 4 ? nil : tokens[3]
                    let where_ = tokens.count >= 2 && !(tokens[1].kind == .word && Lexer.isName(tokens[1].text)) ? tokens[1]
                        : tokens.count >= 3 && tokens[2].kind != .equals ? tokens[2] : bad
                    problem(where_?.location ?? first.location, "expected let NAME = COMMAND ARGUMENTS..., found \(Parser.describe(where_))")
                    continue
                }
                guard var invocation = parseInvocation(Array(tokens[3...])) else { continue }
                guard ScriptCommands.byName[invocation.command]?.result != nil else {
                    problem(tokens[3].location, "expected a command that answers a value after let \(tokens[1].text) =, found \(invocation.command), which answers none")
                    continue
                }
                invocation.binding = tokens[1].text
                invocation.expected = pending?.0 ?? .success
                pending = nil
                defined.insert(tokens[1].text)
                append(.invoke(invocation))
            default:
                guard var invocation = parseInvocation(tokens) else { pending = nil; continue }
                invocation.expected = pending?.0 ?? .success
                pending = nil
                append(.invoke(invocation))
            }
        }
        if let (_, location) = pending { problem(location, "expected a command after this expect, found the end of the file") }
        while stack.count > 1 {
            let (_, header) = stack.removeLast()
            problem(header!.location, "expected a } to close this repeat block, found the end of the file")
        }
        return stack[0].0
    }

    func isOutcome(_ token: Token) -> ExpectedOutcome? {
        guard token.kind == .word else { return nil }
        if token.text == "ok" { return .success }
        if token.text.hasPrefix("E"), let errno = Errno(named: token.text) { return .errno(errno) }
        return nil
    }

    static func resolve(_ path: String, relativeTo file: String) -> String {
        if path.hasPrefix("/") { return path }
        guard let slash = file.lastIndex(of: "/") else { return path }
        return String(file[...slash]) + path
    }

    mutating func operand(_ token: Token) -> Operand? {
        switch token.kind {
        case .word, .string: return .literal(token.text)
        case .variable:
            let name = String(token.text.prefix { $0 != "+" && $0 != "-" })
            let rest = token.text.dropFirst(name.count)
            var offset: Int64 = 0
            if !rest.isEmpty {
                guard let n = ScriptLiteral.number(String(rest.dropFirst())), n <= UInt64(Int64.max) else {
                    problem(token.location, "expected $\(name)+N or $\(name)-N with a whole number N, found '$\(token.text)'")
                    return nil
                }
                offset = rest.first == "-" ? -Int64(n) : Int64(n)
            }
            guard defined.contains(name) else {
                problem(token.location, "expected a variable set earlier by let or repeat … as, found $\(name), which is not set" + hint(name, among: defined))
                return nil
            }
            return .variable(name, offset: offset)
        default:
            problem(token.location, "expected a value, found \(Parser.describe(token))")
            return nil
        }
    }

    func hint(_ word: String, among candidates: some Sequence<String>) -> String {
        let close = ScriptLiteral.suggestions(for: word, among: candidates)
        return close.isEmpty ? "" : "; did you mean \(close.joined(separator: " or "))?"
    }

    /// COMMAND ARG... [NAME=ARG]...: binds the arguments to the command's parameters and checks
    /// every literal against its parameter's kind.
    mutating func parseInvocation(_ tokens: [Token]) -> Invocation? {
        let head = tokens[0]
        guard let spec = ScriptCommands.byName[head.text] else {
            problem(head.location, "expected a command, found '\(head.text)'" + hint(head.text, among: ScriptCommands.byName.keys.map { $0 } + ScriptCommands.keywords))
            return nil
        }
        var bound: [String: BoundArgument] = [:]
        var positional = spec.parameters.makeIterator()
        var current: ParameterSpec? = nil
        var failed = false
        var i = 1
        while i < tokens.count {
            let token = tokens[i]
            // NAME=VALUE
            if token.kind == .word, i + 2 < tokens.count || (i + 1 < tokens.count && tokens[i + 1].kind == .equals), i + 1 < tokens.count, tokens[i + 1].kind == .equals {
                guard let parameter = spec.parameters.first(where: { $0.name == token.text }) else {
                    problem(token.location, "expected a parameter of \(spec.name) (\(spec.parameters.map(\.name).joined(separator: ", "))), found '\(token.text)'" + hint(token.text, among: spec.parameters.map(\.name)))
                    failed = true; i += 3; continue
                }
                guard i + 2 < tokens.count else { problem(tokens[i + 1].location, "expected a value after \(token.text)=, found the end of the line"); failed = true; break }
                guard bound[parameter.name] == nil else { problem(token.location, "expected each parameter once, found \(parameter.name) again"); failed = true; i += 3; continue }
                if let value = check(tokens[i + 2], parameter, spec) {
                    bound[parameter.name] = BoundArgument(operands: [value], location: tokens[i + 2].location)
                } else { failed = true }
                i += 3
                continue
            }
            // Positional: the next unfilled parameter (a variadic one takes the rest).
            if current?.variadic != true {
                current = nil
                while let next = positional.next() {
                    if bound[next.name] == nil { current = next; break }
                }
            }
            guard let parameter = current else {
                problem(token.location, "expected the end of the line (\(spec.usage)), found \(Parser.describe(token))")
                failed = true; break
            }
            if let value = check(token, parameter, spec) {
                bound[parameter.name, default: BoundArgument(operands: [], location: token.location)].operands.append(value)
            } else { failed = true }
            i += 1
        }
        for parameter in spec.parameters where parameter.required && bound[parameter.name] == nil && !failed {
            let end = SourceLocation(file: head.location.file, line: head.location.line,
                                     column: (tokens.last.map { $0.location.column + $0.text.unicodeScalars.count + ($0.kind == .variable ? 1 : 0) } ?? head.location.column))
            problem(end, "expected \(parameter.name.uppercased()) (\(spec.usage)), found the end of the line")
            failed = true
            break
        }
        if !failed, let problemText = ScriptCommands.crossCheck(spec.name, bound) {
            problem(head.location, problemText)
            failed = true
        }
        return failed ? nil : Invocation(command: spec.name, arguments: bound, location: head.location, binding: nil, expected: .success)
    }

    mutating func check(_ token: Token, _ parameter: ParameterSpec, _ spec: CommandSpec) -> Operand? {
        guard let value = operand(token) else { return nil }
        if case .literal(let text) = value, let expected = ScriptLiteral.problem(text, kind: parameter.kind) {
            var message = "expected \(expected) for \(parameter.name.uppercased()) of \(spec.name), found \(Parser.describe(token))"
            if case .features = parameter.kind { message += hint(text, among: Parser.featureNames) }
            if case .choice(let words) = parameter.kind { message += hint(text, among: words) }
            problem(token.location, message)
            return nil
        }
        return value
    }

    /// Feature names as scripts write them (VERSION_1, EVENT_IDX, …), for suggestions.
    static let featureNames: [String] = (Array(VirtioFeatures.names.values) + Array(HighFeatures.names.values))
        .flatMap { $0.split(separator: "/") }
        .map { name in
            for prefix in ["NET_F_", "F_", "VHOST_"] where name.hasPrefix(prefix) { return String(name.dropFirst(prefix.count)) }
            return String(name)
        }

    mutating func parseCheck(_ tokens: [Token]) -> Statement? {
        let first = tokens[0]
        guard tokens.count >= 2 else {
            problem(first.location, "expected ok, an errno (EINVAL…), ring-error QUEUE, or SUBJECT [OP] VALUE after expect, found the end of the line")
            return nil
        }
        let subject = tokens[1]
        if subject.kind == .word && subject.text == "ring-error" {
            guard tokens.count >= 3, let queue = operandChecked(tokens[2], kind: .number, what: "QUEUE of expect ring-error") else {
                if tokens.count < 3 { problem(subject.location, "expected expect ring-error QUEUE [within=MS], found the end of the line") }
                return nil
            }
            var within: Operand? = nil
            if tokens.count > 3 {
                guard tokens.count == 6, tokens[3].kind == .word, tokens[3].text == "within", tokens[4].kind == .equals,
                      let value = operandChecked(tokens[5], kind: .number, what: "within=MS") else {
                    problem(tokens[3].location, "expected within=MS or the end of the line, found \(Parser.describe(tokens[3]))")
                    return nil
                }
                within = value
            }
            return .expectRingError(queue: queue, milliseconds: within, location: first.location)
        }
        let subjectOperand: Operand
        switch subject.kind {
        case .variable:
            guard let value = operand(subject) else { return nil }
            subjectOperand = value
        case .word where ScriptCommands.resultNames.contains(subject.text):
            subjectOperand = .literal(subject.text)
        case .word where subject.text.hasPrefix("E") && subject.text == subject.text.uppercased():
            problem(subject.location, "expected ok or an errno name after expect, found '\(subject.text)', which is not an errno" + hint(subject.text, among: Parser.errnoNames))
            return nil
        default:
            problem(subject.location, "expected ok, an errno, ring-error, $var or an answer's name (\(ScriptCommands.resultNames.sorted().joined(separator: ", "))) after expect, found \(Parser.describe(subject))"
                    + hint(subject.text, among: Array(ScriptCommands.resultNames) + ["ok", "ring-error"]))
            return nil
        }
        var rest = Array(tokens.dropFirst(2))
        var comparison = ValueCheck.Comparison.equal
        if let op = rest.first, op.kind == .word, let parsed = ValueCheck.Comparison(rawValue: op.text) {
            comparison = parsed
            rest.removeFirst()
        } else if let op = rest.first, op.kind == .equals {
            problem(op.location, "expected == (two equals signs) or a value, found '='")
            return nil
        }
        guard !rest.isEmpty else {
            problem(tokens.last!.location, "expected a value to compare \(Parser.describe(subject)) with, found the end of the line")
            return nil
        }
        if rest.count > 1 && comparison != .contains && comparison != .lacks {
            problem(rest[1].location, "expected one value after \(comparison.rawValue) (several only with contains or lacks), found \(Parser.describe(rest[1]))")
            return nil
        }
        var values: [Operand] = []
        for token in rest {
            guard let value = operand(token) else { return nil }
            if case .literal(let text) = value, ScriptLiteral.number(text) == nil, ScriptLiteral.featureWords([text]) == nil, VhostBackendFeatures.parse(text) == nil {
                problem(token.location, "expected a number or a feature name, found \(Parser.describe(token))" + hint(text, among: Parser.featureNames))
                return nil
            }
            values.append(value)
        }
        return .check(ValueCheck(subject: subjectOperand, comparison: comparison, values: values, location: first.location))
    }

    static let errnoNames: [String] = (1...133).map { Errno(rawValue: Int32($0)).name }.filter { $0.hasPrefix("E") }

    mutating func operandChecked(_ token: Token, kind: ParameterSpec.Kind, what: String) -> Operand? {
        guard let value = operand(token) else { return nil }
        if case .literal(let text) = value, let expected = ScriptLiteral.problem(text, kind: kind) {
            problem(token.location, "expected \(expected) for \(what), found \(Parser.describe(token))")
            return nil
        }
        return value
    }

    /// repeat COUNT [as NAME] {
    mutating func parseRepeat(_ tokens: [Token]) -> (count: Operand, variable: String?, location: SourceLocation)? {
        let first = tokens[0]
        guard tokens.count >= 3, let count = operandChecked(tokens[1], kind: .number, what: "the COUNT of repeat") else {
            if tokens.count < 3 { problem(tokens.last!.location, "expected repeat COUNT [as NAME] {, found \(Parser.describe(tokens.count > 1 ? tokens[1] : nil))") }
            return nil
        }
        if case .literal(let text) = count, let n = ScriptLiteral.number(text), n > 100_000_000 {
            problem(tokens[1].location, "expected a COUNT of at most 100000000, found \(text)")
            return nil
        }
        var variable: String? = nil
        var next = 2
        if tokens[2].kind == .word && tokens[2].text == "as" {
            guard tokens.count >= 4, tokens[3].kind == .word, Lexer.isName(tokens[3].text) else {
                problem(tokens.count > 3 ? tokens[3].location : tokens[2].location, "expected a variable name after as, found \(Parser.describe(tokens.count > 3 ? tokens[3] : nil))")
                return nil
            }
            variable = tokens[3].text
            next = 4
        }
        guard next < tokens.count, tokens[next].kind == .openBrace else {
            problem(next < tokens.count ? tokens[next].location : tokens.last!.location, "expected { at the end of the repeat line, found \(Parser.describe(next < tokens.count ? tokens[next] : nil))")
            return nil
        }
        guard next + 1 == tokens.count else {
            problem(tokens[next + 1].location, "expected the end of the line after {, found \(Parser.describe(tokens[next + 1])) (put the block's commands on the following lines)")
            return nil
        }
        return (count, variable, first.location)
    }
}

extension ScriptCommands {
    /// Rules between arguments that no single parameter kind can state.
    static func crossCheck(_ command: String, _ arguments: [String: BoundArgument]) -> String? {
        func literal(_ name: String) -> String? {
            guard let argument = arguments[name], argument.operands.count == 1, case .literal(let text) = argument.operands[0] else { return nil }
            return text
        }
        switch command {
        case "memory":
            let count = arguments["regions"]?.operands.count ?? 0
            if count > 1 && count % 2 == 1 { return "expected memory SIZE [GPA] [SIZE GPA]...: every further region needs a SIZE and a GPA" }
        case "set-features-array", "set-features":
            break
        case "ring":
            if let size = literal("size").flatMap(ScriptLiteral.number), !(size >= 1 && size <= 32768 && size & (size - 1) == 0) {
                return "expected a ring SIZE that is a power of 2 from 1 to 32768 (use set-vring-num to send other numbers to the kernel), found \(size)"
            }
        default:
            break
        }
        return nil
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
