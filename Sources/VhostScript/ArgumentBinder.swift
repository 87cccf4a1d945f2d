import Vhost
import Virtio

/// Binds a command line's words to its command's parameters (positional in order, or
/// `NAME=VALUE`) and converts each to its typed operand: literals become numbers here, checked
/// against the parameter's width or limit, and variables stay names to resolve when the line runs.
/// Problems go to the parser, each with its place.
struct ArgumentBinder {
    let limits: ScriptLimits
    /// Variables set so far (by `let` or a loop), for "not set" errors.
    let defined: Set<String>
    var problems: [(SourceLocation, String)] = []

    init(limits: ScriptLimits, defined: Set<String>) { self.limits = limits; self.defined = defined }

    /// The parse has all the problems it reports (100): no suggestion is looked for (their edit
    /// distances, per unknown word, made a fuzzed script take seconds).
    var muted = false

    mutating func problem(_ location: SourceLocation, _ message: String) { problems.append((location, message)) }

    /// `Parser.hint`, or nothing once the parse is muted.
    func hint(_ word: String, among candidates: some Sequence<String>) -> String { muted ? "" : Parser.hint(word, among: candidates) }

    /// The invocation of `tokens` (the command and its arguments), or nil after reporting why not.
    mutating func invocation(_ tokens: ArraySlice<Token>) -> Invocation? {
        guard let head = tokens.first else { return nil }
        guard let entry = ScriptCommands.byName[head.text], head.kind == .word else {
            problem(head.location, "expected a command, found \(Parser.describe(head))"
                    + hint(head.text, among: ScriptCommands.byName.keys.map { $0 } + ScriptCommands.keywords))
            return nil
        }
        guard let (bound, words) = bind(tokens.dropFirst(), entry: entry, head: head) else { return nil }
        let action: Action
        switch entry {
        case .vhost(let syntax):
            guard let operands = requestOperands(syntax.parameters, bound, command: syntax.name, head: head) else { return nil }
            if syntax.kind == .setFeatures, case .features(let features)? = operands["features"],
               features.contains(where: { if case .words(let w) = $0 { return w.dropFirst().contains { $0 != 0 } }; return false }) {
                problem(head.location, "expected features of bits 0 to 63 for set-features (VHOST_SET_FEATURES takes 64 bits): use set-features-array for higher ones")
                return nil
            }
            action = .vhost(RequestStatement(syntax: syntax, operands: operands))
        case .tun(let syntax):
            guard let operands = requestOperands(syntax.parameters, bound, command: syntax.name, head: head) else { return nil }
            action = .tun(RequestStatement(syntax: syntax, operands: operands))
        case .script(let command):
            var arguments = CommandArguments(values: [:], limits: limits)
            var failed = false
            for parameter in command.parameters {
                guard let tokens = bound[parameter.name] else { continue }
                if let value = convert(tokens, parameter, command: command.name) { arguments.values[parameter.name] = value } else { failed = true }
            }
            guard !failed else { return nil }
            do {
                action = try command.build(arguments)
            } catch {
                problem(head.location, error.message)
                return nil
            }
        }
        return Invocation(command: entry.name, action: action, location: head.location, binding: nil, expected: .success,
                          answer: entry.answer, words: [.text(entry.name)] + words)
    }

    /// Assigns the words to parameters by name or position; nil after reporting a problem.
    mutating func bind(_ tokens: ArraySlice<Token>, entry: CommandEntry, head: Token) -> ([String: [Token]], [DisplayWord])? {
        let shapes = entry.shapes
        var bound: [String: [Token]] = [:]
        var words: [DisplayWord] = []
        var next = 0
        var current: (name: String, required: Bool, variadic: Bool)? = nil
        var i = tokens.startIndex
        var failed = false
        while i < tokens.endIndex {
            let token = tokens[i]
            if token.kind == .word, i + 1 < tokens.endIndex, tokens[i + 1].kind == .equals {
                // NAME=VALUE
                guard let shape = shapes.first(where: { $0.name == token.text }) else {
                    problem(token.location, "expected a parameter of \(entry.name) (\(shapes.map(\.name).joined(separator: ", "))), found '\(token.text)'"
                            + hint(token.text, among: shapes.map(\.name)))
                    failed = true; i += 3; continue
                }
                guard i + 2 < tokens.endIndex else { problem(tokens[i + 1].location, "expected a value after \(token.text)=, found the end of the line"); return nil }
                guard bound[shape.name] == nil else { problem(token.location, "expected each parameter once, found \(shape.name) again"); failed = true; i += 3; continue }
                bound[shape.name] = [tokens[i + 2]]
                words.append(display(tokens[i + 2], prefix: "\(shape.name)="))
                i += 3
                continue
            }
            // Positional: the next unfilled parameter (a variadic one takes the rest).
            if current?.variadic != true {
                current = nil
                while next < shapes.count {
                    let shape = shapes[next]
                    next += 1
                    if bound[shape.name] == nil { current = shape; break }
                }
            }
            guard let shape = current else {
                problem(token.location, "expected the end of the line (\(entry.usage)), found \(Parser.describe(token))")
                return nil
            }
            bound[shape.name, default: []].append(token)
            words.append(display(token, prefix: ""))
            i += 1
        }
        guard !failed else { return nil }
        for shape in shapes where shape.required && bound[shape.name] == nil {
            let end = tokens.last.map { SourceLocation(file: $0.location.file, line: $0.location.line,
                                                       column: $0.location.column + $0.text.unicodeScalars.count + ($0.kind == .variable ? 1 : 0)) }
                ?? SourceLocation(file: head.location.file, line: head.location.line, column: head.location.column + head.text.unicodeScalars.count)
            problem(end, "expected \(shape.name.uppercased()) (\(entry.usage)), found the end of the line")
            return nil
        }
        return (bound, words)
    }

    func display(_ token: Token, prefix: String) -> DisplayWord {
        if token.kind == .variable, let (name, offset) = Parser.splitVariable(token.text) { return .variable(prefix: prefix, name: name, offset: offset) }
        return .text(prefix + token.text)
    }

    // MARK: operands

    /// A number operand: a literal checked against `range`, or a variable that is set.
    mutating func number(_ token: Token, _ range: NumberRange, name: String, command: String) -> Operand? {
        switch token.kind {
        case .variable:
            guard let (variable, offset) = variable(token) else { return nil }
            return Operand(.variable(variable, offset: offset), range: range, name: name)
        case .word, .string:
            let parsed = range == .signed32 ? ScriptLiteral.signedNumber(token.text) : ScriptLiteral.number(token.text)
            guard let n = parsed else {
                problem(token.location, "expected a whole number (like 256, 0x1000 or 4M) for \(name) of \(command), found \(Parser.describe(token))")
                return nil
            }
            if let problem = range.problem(n, limits: limits) {
                self.problem(token.location, "expected \(name) of \(command) to be \(problem.expected), found \(token.text)")
                return nil
            }
            return Operand(.literal(n), range: range, name: name)
        default:
            problem(token.location, "expected a value, found \(Parser.describe(token))")
            return nil
        }
    }

    /// A variable token's name and offset, if the name is set; else reports it.
    mutating func variable(_ token: Token) -> (String, Int64)? {
        guard let (name, offset) = Parser.splitVariable(token.text) else {
            problem(token.location, "expected $NAME+N or $NAME-N with a whole number N below 2^63, found '$\(token.text)'")
            return nil
        }
        guard defined.contains(name) else {
            problem(token.location, "expected a variable set earlier by let or repeat … as, found $\(name), which is not set" + hint(name, among: defined))
            return nil
        }
        return (name, offset)
    }

    /// The value of one of the script's own commands' parameters.
    mutating func convert(_ tokens: [Token], _ parameter: ParameterSpec, command: String) -> CommandArguments.Bound? {
        let label = parameter.name.uppercased()
        switch parameter.kind {
        case .number(let range):
            var operands: [Operand] = []
            for token in tokens { guard let operand = number(token, range, name: label, command: command) else { return nil }; operands.append(operand) }
            return .operands(operands)
        case .descriptorFlags:
            guard let token = tokens.first else { return nil }
            if token.kind == .variable { return number(token, .bits(16), name: label, command: command).map { .operands([$0]) } }
            guard let flags = ScriptLiteral.descriptorFlags(token.text) else {
                problem(token.location, "expected descriptor flags (NEXT, WRITE, INDIRECT joined by |, or a 16-bit number) for \(label) of \(command), found \(Parser.describe(token))")
                return nil
            }
            return .operands([Operand(.literal(UInt64(flags)), range: .bits(16), name: label)])
        case .choice(let choices):
            guard let token = tokens.first, token.kind != .variable, choices.contains(token.text) else {
                let token = tokens.first
                problem(token?.location ?? SourceLocation(file: "", line: 0, column: 0), "expected one of \(choices.joined(separator: ", ")) for \(label) of \(command), found \(Parser.describe(token))"
                        + hint(token?.text ?? "", among: choices))
                return nil
            }
            return .words([token.text])
        case .text:
            if parameter.variadic {
                var words: [PrintWord] = []
                for token in tokens {
                    if token.kind == .variable {
                        guard let (name, offset) = variable(token) else { return nil }
                        words.append(.variable(name, offset: offset))
                    } else {
                        words.append(.text(token.text))
                    }
                }
                return .print(words)
            }
            guard let token = tokens.first, token.kind == .word || token.kind == .string else {
                problem(tokens.first?.location ?? SourceLocation(file: "", line: 0, column: 0), "expected a word for \(label) of \(command), found \(Parser.describe(tokens.first))")
                return nil
            }
            return .words([token.text])
        }
    }

    /// The operands of a request's parameters, typed by their kinds.
    mutating func requestOperands(_ parameters: [RequestParameter], _ bound: [String: [Token]], command: String, head: Token) -> [String: RequestOperand]? {
        var operands: [String: RequestOperand] = [:]
        var failed = false
        for parameter in parameters {
            guard let tokens = bound[parameter.name] else { continue }
            if let operand = requestOperand(tokens, parameter, command: command) { operands[parameter.name] = operand } else { failed = true }
        }
        if case .regions(let values)? = operands["regions"], values.count % 3 != 0 {
            problem(head.location, "expected triples GPA SIZE AT after \(command) (AT: a GPA of the script's memory whose host address the kernel gets), found \(values.count) numbers")
            return nil
        }
        return failed ? nil : operands
    }

    mutating func requestOperand(_ tokens: [Token], _ parameter: RequestParameter, command: String) -> RequestOperand? {
        let label = parameter.name.uppercased()
        guard let first = tokens.first else { return nil }
        func numbers(_ range: NumberRange) -> [Operand]? {
            var operands: [Operand] = []
            for token in tokens { guard let o = number(token, range, name: label, command: command) else { return nil }; operands.append(o) }
            return operands
        }
        let capped: NumberRange? = parameter.maximum.map { .range(0...$0, "the most this tool passes") }
        switch parameter.kind {
        case .vring:
            return number(first, .bits(32), name: label, command: command).map(RequestOperand.number)
        case .unsigned(let bits):
            return number(first, capped ?? .bits(bits), name: label, command: command).map(RequestOperand.number)
        case .signed32:
            return number(first, .signed32, name: label, command: command).map(RequestOperand.number)
        case .guestAddress:
            return number(first, .bits(64), name: label, command: command).map(RequestOperand.guestAddress)
        case .memoryRegions:
            return numbers(.bits(64)).map(RequestOperand.regions)
        case .vringAddressFlags:
            if first.kind == .word, first.text.uppercased() == "LOG" { return .number(Operand(.literal(1), range: .bits(32), name: label)) }
            return number(first, .bits(32), name: label, command: command).map(RequestOperand.number)
        case .choice(let choices):
            if first.kind == .word, let value = choices[first.text] { return .number(Operand(.literal(value), range: capped ?? .bits(64), name: label)) }
            if first.kind == .word, ScriptLiteral.number(first.text) == nil {
                problem(first.location, "expected one of \(choices.keys.sorted().joined(separator: ", ")) or a number for \(label) of \(command), found \(Parser.describe(first))"
                        + hint(first.text, among: choices.keys))
                return nil
            }
            return number(first, capped ?? .bits(64), name: label, command: command).map(RequestOperand.number)
        case .fd:
            if first.kind == .word {
                switch first.text {
                case "-1": return .file(.unbind)
                case "eventfd": return .file(.eventfd)
                case "closed": return .file(.closed)
                case "file": return .file(.file)
                case "tap": return .file(.port)
                default:
                    if ScriptLiteral.signedNumber(first.text) == nil {
                        problem(first.location, "expected a number or one of tap, -1, eventfd, closed, file for \(label) of \(command), found \(Parser.describe(first))")
                        return nil
                    }
                }
            }
            return number(first, .signed32, name: label, command: command).map { .file(.number($0)) }
        case .features, .backendFeatures, .offloads:
            var features: [FeatureOperand] = []
            for token in tokens {
                if token.kind == .variable {
                    guard let operand = number(token, .bits(64), name: label, command: command) else { return nil }
                    features.append(.variable(operand))
                    continue
                }
                guard let words = featureLiteral(token.text, parameter.kind) else {
                    let (what, names): (String, [String]) = switch parameter.kind {
                    case .features: ("a virtio feature name (like VERSION_1 or EVENT_IDX) or 0x bits", Parser.featureNames)
                    case .backendFeatures: ("a vhost backend feature name (like IOTLB_MSG_V2) or 0x bits", VhostBackendFeatures.names.values.map { $0 })
                    default: ("an offload (\(TunRequest.offloadNames.keys.sorted().joined(separator: " "))) or 0x bits up to 32 bits", Array(TunRequest.offloadNames.keys))
                    }
                    problem(token.location, "expected \(what) for \(label) of \(command), found \(Parser.describe(token))" + hint(token.text, among: names))
                    return nil
                }
                features.append(.words(words))
            }
            return .features(features)
        }
    }

    /// A literal feature word of `kind`: names or `0x` bits (offloads within 32 bits).
    func featureLiteral(_ text: String, _ kind: RequestParameter.Kind) -> [UInt64]? {
        switch kind {
        case .features:
            return ScriptLiteral.featureWords([text])
        case .backendFeatures:
            if text.lowercased().hasPrefix("0x") { return ScriptLiteral.number(text).map { [$0] } }
            return VhostBackendFeatures.parse(text).map { [$0.rawValue] }
        default:
            if let bits = TunRequest.offloadNames[text] { return [bits] }
            guard let n = ScriptLiteral.number(text), n <= UInt64(UInt32.max) else { return nil }
            return [n]
        }
    }
}
