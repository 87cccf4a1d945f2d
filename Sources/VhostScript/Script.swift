import Glibc
import SystemPackage
import Vhost
import Virtio

/// A parsed script: typed statements, every command checked against the language before
/// anything runs. The grammar, line by line (`#` starts a comment anywhere):
///
///     COMMAND ARG... [NAME=ARG]...        a command; ARG is a word, a number or $var[+N]
///     let NAME = COMMAND ARG...           keep the command's answer in $NAME
///     expect ok | expect ERRNO            the next command must succeed / fail with ERRNO
///     expect SUBJECT [OP] VALUE...        check an answer: SUBJECT is $var or an answer's name;
///                                         OP is == (default), !=, <, <=, >, >=, contains, lacks
///     expect ring-error QUEUE [within=MS] the queue's error eventfd must fire
///     repeat COUNT [as NAME] {            repeat the lines up to the matching }
///     }
///     include "FILE"                      the lines of FILE (relative to this file)
///
/// Parsing is bounded by `ScriptLimits`: statements, bytes read, nesting of repeats and of
/// includes; includes are followed by their canonical path, so a cycle is found however the
/// path is spelt.
///
/// A script is input, not code the tool trusts (docs/security.md, "Scripts as input"): an
/// include reads only a regular file inside the include directories (by default the script's
/// own directory; `..` and symbolic links are resolved first, and the file actually opened is
/// checked again), so no problem message can quote a file from anywhere else.
public struct Script: Sendable {
    public var statements: [Statement]
    /// The file the script came from.
    public var name: String

    /// Every problem found, each starting with `file:line:column` (up to 100 of them).
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public var problems: [String]
        public var description: String { problems.joined(separator: "\n") }
    }

    /// Reads include files by path; the default reads from the file system.
    public typealias FileLoader = @Sendable (String) -> String?

    /// Parses `text`. Nothing runs here, and a script with any problem is rejected whole.
    /// `includeDirectories` are the directories includes may read from; nil means the
    /// directory of `name` alone (an empty list allows no include at all).
    public init(parsing text: String, name: String = "script", limits: ScriptLimits = .standard, loader: FileLoader? = nil,
                includeDirectories: [String]? = nil) throws(ParseError) {
        let directories = (includeDirectories ?? [Script.directory(of: name)]).map(Script.absoluteCanonicalPath)
        let reader: FileLoader = { path in Script.readRegularFile(path, limit: limits.inputBytes, inside: directories) }
        var parser = Parser(loader: loader ?? reader, limits: limits)
        parser.includeDirectories = directories
        parser.including = [Script.canonicalPath(name)]
        let statements = parser.parse(text, file: name, depth: 0)
        guard parser.problems.isEmpty else { throw ParseError(problems: parser.problems.map(Script.escapingNonPrintable)) }
        self.statements = statements
        self.name = name
    }

    /// Reads and parses a file; `includeDirectories` as for `init(parsing:)`.
    public init(contentsOf path: String, limits: ScriptLimits = .standard, includeDirectories: [String]? = nil) throws(ParseError) {
        guard let text = Script.readRegularFile(path, limit: limits.inputBytes) else {
            throw ParseError(problems: ["\(path): cannot read the script: it does not exist, is not a regular file, or is not readable"])
        }
        try self.init(parsing: text, name: path, limits: limits, includeDirectories: includeDirectories)
    }

    /// The text of the regular file at `path`, read up to one byte past `limit` (so the parser
    /// sees that it is too long); nil for anything else (a FIFO, a device, a directory), which
    /// could block, never end, or act when opened: the file is checked before it is opened
    /// (`CheckedOpen.regularFile`). With `inside`, the file opened must lie in one of those
    /// canonical directories.
    public static func readRegularFile(_ path: String, limit: Int, inside directories: [String]? = nil) -> String? {
        guard let opened = try? CheckedOpen.regularFile(at: path, inside: directories) else { return nil }
        let fd = opened.rawValue
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while bytes.count <= limit {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            bytes.append(contentsOf: buffer.prefix(n))
        }
        return String(decoding: bytes.prefix(limit &+ 1), as: UTF8.self)
    }

    /// The path with symbolic links, `.` and `..` resolved (realpath(3)) when the file exists;
    /// otherwise resolved by its words, so that `././a.vhost` and `a.vhost` are one file.
    static func canonicalPath(_ path: String) -> String {
        if let resolved = realpath(path, nil) {
            defer { free(resolved) }
            return String(cString: resolved)
        }
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            switch part {
            case ".": continue
            case "..": if let last = parts.last, last != ".." { parts.removeLast() } else if !path.hasPrefix("/") { parts.append(part) }
            default: parts.append(part)
            }
        }
        return (path.hasPrefix("/") ? "/" : "") + parts.joined(separator: "/")
    }

    /// The directory a script named `name` includes from by default: the one it is in.
    public static func directory(of name: String) -> String {
        guard let slash = name.lastIndex(of: "/") else { return "." }
        return slash == name.startIndex ? "/" : String(name[..<slash])
    }

    /// `canonicalPath`, made absolute against the working directory when it is relative.
    public static func absoluteCanonicalPath(_ path: String) -> String {
        let canonical = canonicalPath(path)
        if canonical.hasPrefix("/") { return canonical }
        guard let cwd = getcwd(nil, 0) else { return canonical }
        defer { free(cwd) }
        return canonicalPath(String(cString: cwd) + "/" + canonical)
    }

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
        // Recursion follows repeat nesting, which the parser bounds.
        statements.reduce(0) { total, s in
            let add: Int
            switch s {
            case .loop(let count, _, let body, _):
                let times = count.literal.map { Int(clamping: $0) } ?? 1
                let (product, overflow) = times.multipliedReportingOverflow(by: Script.count(body))
                add = overflow ? Int.max : product
            default: add = 1
            }
            let (sum, overflow) = total.addingReportingOverflow(add)
            return overflow ? Int.max : sum
        }
    }
}

/// The parser: a line at a time, with a stack for `repeat` blocks (no recursion per block) and
/// one level of recursion per include (bounded by `includeNesting`).
struct Parser {
    let loader: Script.FileLoader
    let limits: ScriptLimits
    var problems: [String] = []
    /// Variables defined so far (by `let` or a loop), for "used before it was set" errors.
    var defined: Set<String> = []
    /// The canonical paths of the files being parsed, outermost first, for cycle detection.
    var including: [String] = []
    var statementCount = 0
    var includeCount = 0
    var bytesRead = 0
    /// A limit of the whole parse was hit: stop reading.
    var stopped = false
    /// Included files read so far, by canonical path: a file included many times is read once.
    var loaded: [String: String] = [:]
    /// The canonical directories includes may read from.
    var includeDirectories: [String] = []

    init(loader: @escaping Script.FileLoader, limits: ScriptLimits) { self.loader = loader; self.limits = limits }

    /// The most problems a parse reports; past it, messages are not even built.
    static let reportedProblems = 100

    mutating func problem(_ location: SourceLocation, _ message: String) {
        if problems.count < Parser.reportedProblems { problems.append("\(location): \(message)") }
    }

    /// Whether every problem that will be reported is found (later ones only stop the parse).
    var muted: Bool { problems.count >= Parser.reportedProblems }

    /// Stops the parse at a limit of the whole script.
    mutating func stop(_ location: SourceLocation, _ message: String) {
        problem(location, message)
        stopped = true
    }

    static func describe(_ token: Token?) -> String {
        guard let token else { return "the end of the line" }
        let text = shortened(token.text)
        switch token.kind {
        case .variable: return "'$\(text)'"
        case .string: return "the string \"\(text)\""
        default: return "'\(text)'"
        }
    }

    /// Words quoted in messages are cut to 40 characters, so that a problem line stays a line
    /// however long the word (a 16 MiB line quoted 100 times would be 1.6 GB of messages).
    static func shortened(_ text: String) -> String {
        let scalars = text.unicodeScalars
        guard scalars.count > 40 else { return text }
        var head = String.UnicodeScalarView()
        head.append(contentsOf: scalars.prefix(32))
        return String(head) + "… (\(scalars.count) characters)"
    }

    static func hint(_ word: String, among candidates: some Sequence<String>) -> String {
        let close = ScriptLiteral.suggestions(for: word, among: candidates)
        return close.isEmpty ? "" : "; did you mean \(close.joined(separator: " or "))?"
    }

    /// `name`, `name+N` or `name-N` (the text after `$`) as the name and a signed offset.
    static func splitVariable(_ text: String) -> (String, Int64)? {
        let name = String(text.prefix { $0 != "+" && $0 != "-" })
        let rest = text.dropFirst(name.count)
        guard !rest.isEmpty else { return (name, 0) }
        guard let n = ScriptLiteral.number(String(rest.dropFirst())), n <= UInt64(Int64.max) else { return nil }
        return (name, rest.first == "-" ? -Int64(n) : Int64(n))
    }

    /// Feature names as scripts write them (VERSION_1, EVENT_IDX, …), for suggestions.
    static let featureNames: [String] = (Array(VirtioFeatures.names.values) + Array(HighFeatures.names.values))
        .flatMap { $0.split(separator: "/") }
        .map { name in
            for prefix in featureNamePrefixes where name.hasPrefix(prefix) { return String(name.dropFirst(prefix.count)) }
            return String(name)
        }

    typealias Header = (count: Operand, variable: String?, location: SourceLocation)

    mutating func parse(_ text: String, file: String, depth: Int) -> [Statement] {
        var stack: [([Statement], Header?)] = [([], nil)]
        var pending: (ExpectedOutcome, SourceLocation)? = nil
        var lineNumber = 0
        let (bytes, overflow) = bytesRead.addingReportingOverflow(text.utf8.count)
        bytesRead = overflow ? Int.max : bytes
        if bytesRead > limits.inputBytes {
            stop(SourceLocation(file: file, line: 1, column: 1), "expected at most \(limits.inputBytes) bytes of script in all (the limit; includes count each time), found more")
            return []
        }
        // "\r\n" is one Character in Swift, so a script saved with CRLF line ends splits on it too.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            guard !stopped else { break }
            lineNumber += 1
            let tokens: [Token]
            do {
                tokens = try Lexer.tokens(rawLine, file: file, lineNumber: lineNumber)
            } catch {
                problem(error.location, error.message)
                continue
            }
            guard let first = tokens.first else { continue }
            func append(_ statement: Statement?) {
                statementCount += 1
                if statementCount > limits.statements, !stopped {
                    stop(first.location, "expected at most \(limits.statements) statements (the limit; includes count each time they are included), found more")
                }
                if let statement { stack[stack.count - 1].0.append(statement) }
            }
            if let (_, location) = pending {
                // `expect ok|ERRNO` must be followed by the command it is about.
                let commandLine = first.kind == .word && !["expect", "repeat", "include"].contains(first.text)
                let anotherOutcome = first.kind == .word && first.text == "expect" && tokens.count > 1 && outcome(tokens[1]) != nil
                if !commandLine && !anotherOutcome {
                    problem(location, "expected a command after this expect, found \(Parser.describe(first)) on line \(lineNumber)")
                    pending = nil
                }
            }
            switch first.kind {
            case .closeBrace:
                guard tokens.count == 1 else { problem(tokens[1].location, "expected the end of the line after }, found \(Parser.describe(tokens[1]))"); continue }
                guard stack.count > 1, let (body, header) = stack.popLast(), let header else {
                    problem(first.location, "expected a command, found '}' with no repeat block open"); continue
                }
                if let variable = header.variable { defined.remove(variable) }
                append(.loop(count: header.count, variable: header.variable, body: body, location: header.location))
                continue
            case .word:
                break
            default:
                problem(first.location, "expected a command, found \(Parser.describe(first))")
                continue
            }
            switch first.text {
            case "expect":
                if tokens.count >= 2, let expected = outcome(tokens[1]) {
                    guard tokens.count == 2 else { problem(tokens[2].location, "expected the end of the line after expect \(tokens[1].text), found \(Parser.describe(tokens[2]))"); continue }
                    if let (_, earlier) = pending { problem(earlier, "expected a command after this expect, found another expect on line \(lineNumber)") }
                    pending = (expected, first.location)
                    continue
                }
                var checks = CheckParser(limits: limits, defined: defined, muted: muted)
                let statement = checks.parse(tokens)
                for (location, message) in checks.problems { problem(location, message) }
                if let statement { append(statement) }
            case "repeat":
                var checks = CheckParser(limits: limits, defined: defined, muted: muted)
                let header = checks.parseRepeat(tokens)
                for (location, message) in checks.problems { problem(location, message) }
                guard let header else { continue }
                // Reported once, at the first block past the limit (the deeper ones say nothing new).
                if stack.count == limits.repeatNesting + 1 {
                    problem(first.location, "expected at most \(limits.repeatNesting) repeat blocks inside each other (the limit), found more")
                }
                if let variable = header.variable { defined.insert(variable) }
                stack.append(([], header))
            case "include":
                // The include line counts as a statement; the included ones were counted as parsed.
                append(nil)
                stack[stack.count - 1].0.append(contentsOf: include(tokens, file: file, depth: depth))
            case "let":
                guard tokens.count >= 4, tokens[1].kind == .word, Lexer.isName(tokens[1].text), tokens[2].kind == .equals, tokens[3].kind == .word else {
                    let culprit: Token? = tokens.count >= 2 && !(tokens[1].kind == .word && Lexer.isName(tokens[1].text)) ? tokens[1]
                        : tokens.count >= 3 && tokens[2].kind != .equals ? tokens[2] : tokens.count >= 4 ? tokens[3] : nil
                    problem(culprit?.location ?? first.location, "expected let NAME = COMMAND ARGUMENTS..., found \(Parser.describe(culprit))")
                    continue
                }
                guard var invocation = invocation(tokens[3...]) else { pending = nil; continue }
                guard invocation.answer != nil else {
                    problem(tokens[3].location, "expected a command that answers a value after let \(tokens[1].text) =, found \(invocation.command), which answers none")
                    continue
                }
                invocation.binding = tokens[1].text
                invocation.expected = pending?.0 ?? .success
                pending = nil
                defined.insert(tokens[1].text)
                append(.invoke(invocation))
            default:
                guard var invocation = invocation(tokens[...]) else { pending = nil; continue }
                invocation.expected = pending?.0 ?? .success
                pending = nil
                append(.invoke(invocation))
            }
        }
        guard !stopped else { return [] }
        if let (_, location) = pending { problem(location, "expected a command after this expect, found the end of the file") }
        while stack.count > 1, let (_, header) = stack.popLast() {
            if let header { problem(header.location, "expected a } to close this repeat block, found the end of the file") }
        }
        return stack[0].0
    }

    mutating func invocation(_ tokens: ArraySlice<Token>) -> Invocation? {
        var binder = ArgumentBinder(limits: limits, defined: defined)
        binder.muted = muted
        let invocation = binder.invocation(tokens)
        for (location, message) in binder.problems { problem(location, message) }
        return invocation
    }

    /// `include "FILE"`: the file's statements, parsed in place; a cycle (by canonical path),
    /// nesting beyond the limit, or an unreadable file is a problem.
    mutating func include(_ tokens: [Token], file: String, depth: Int) -> [Statement] {
        guard tokens.count == 2, tokens[1].kind == .string || tokens[1].kind == .word else {
            problem(tokens.count > 1 ? tokens[1].location : tokens[0].location, "expected include \"FILE\", found \(Parser.describe(tokens.count > 1 ? tokens[1] : nil))")
            return []
        }
        includeCount += 1
        guard includeCount <= limits.includes else {
            stop(tokens[1].location, "expected at most \(limits.includes) includes in all (the limit; an include counts each time it is followed), found more")
            return []
        }
        let path = Parser.resolve(tokens[1].text, relativeTo: file)
        let canonical = Script.canonicalPath(path)
        // Only files inside the include directories are read (docs/security.md, "Scripts as
        // input"); the default loader checks the file it opened once more.
        let absolute = Script.absoluteCanonicalPath(path)
        guard includeDirectories.contains(where: { CheckedOpen.path(absolute, isInside: $0) }) else {
            problem(tokens[1].location, "include \"\(Parser.shortened(tokens[1].text))\" is outside the directories a script may include from (\(includeDirectories.isEmpty ? "none" : includeDirectories.joined(separator: ", "))); name its directory with --include-path DIR to allow it")
            return []
        }
        guard !including.contains(canonical) else {
            problem(tokens[1].location, "include \(tokens[1].text) would include itself (\(canonical) is already being read)")
            return []
        }
        guard depth + 1 <= limits.includeNesting else {
            problem(tokens[1].location, "expected includes at most \(limits.includeNesting) deep (the limit), found \(tokens[1].text) deeper")
            return []
        }
        guard let text = loaded[canonical] ?? loader(path) else {
            problem(tokens[1].location, "cannot read the included file \(path) (it does not exist, is not a regular file, or is not readable)")
            return []
        }
        loaded[canonical] = text
        including.append(canonical)
        defer { including.removeLast() }
        return parse(text, file: path, depth: depth + 1)
    }

    func outcome(_ token: Token) -> ExpectedOutcome? {
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
}

extension Errno {
    /// The errno with this symbolic name (EINVAL, EBUSY, …), as `name` prints it.
    public init?(named name: String) {
        let key = name.uppercased()
        guard let value = (1...133).first(where: { Errno(rawValue: Int32($0)).name == key }) else { return nil }
        self.init(rawValue: Int32(value))
    }
}
