import SystemPackage
import Vhost
import Virtio

/// Parses the lines that are not commands: `expect SUBJECT [OP] VALUE...`,
/// `expect ring-error QUEUE [within=MS]` and `repeat COUNT [as NAME] {`.
struct CheckParser {
    let limits: ScriptLimits
    var binder: ArgumentBinder
    var problems: [(SourceLocation, String)] { binder.problems }

    init(limits: ScriptLimits, defined: Set<String>, muted: Bool = false) {
        self.limits = limits
        binder = ArgumentBinder(limits: limits, defined: defined)
        binder.muted = muted
    }

    mutating func problem(_ location: SourceLocation, _ message: String) { binder.problem(location, message) }

    static let errnoNames: [String] = (1...133).map { Errno(rawValue: Int32($0)).name }.filter { $0.hasPrefix("E") }

    mutating func parse(_ tokens: [Token]) -> Statement? {
        let first = tokens[0]
        guard tokens.count >= 2 else {
            problem(first.location, "expected ok, an errno (EINVAL…), ring-error QUEUE, or SUBJECT [OP] VALUE after expect, found the end of the line")
            return nil
        }
        let subject = tokens[1]
        if subject.kind == .word && subject.text == "ring-error" { return parseRingError(tokens) }
        let subjectValue: ValueCheck.Subject
        switch subject.kind {
        case .variable:
            guard let (name, offset) = binder.variable(subject) else { return nil }
            subjectValue = .variable(name, offset: offset)
        case .word where ScriptCommands.answerNames.contains(subject.text):
            subjectValue = .answer(subject.text)
        case .word where subject.text.hasPrefix("E") && subject.text == subject.text.uppercased():
            problem(subject.location, "expected ok or an errno name after expect, found '\(subject.text)', which is not an errno" + binder.hint(subject.text, among: CheckParser.errnoNames))
            return nil
        default:
            problem(subject.location, "expected ok, an errno, ring-error, $var or an answer's name (\(ScriptCommands.answerNames.sorted().joined(separator: ", "))) after expect, found \(Parser.describe(subject))"
                    + binder.hint(subject.text, among: Array(ScriptCommands.answerNames) + ["ok", "ring-error"]))
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
            problem(tokens[tokens.count - 1].location, "expected a value to compare \(Parser.describe(subject)) with, found the end of the line")
            return nil
        }
        if rest.count > 1 && comparison != .contains && comparison != .lacks {
            problem(rest[1].location, "expected one value after \(comparison.rawValue) (several only with contains or lacks), found \(Parser.describe(rest[1]))")
            return nil
        }
        var values: [ValueCheck.Value] = []
        for token in rest {
            switch token.kind {
            case .variable:
                guard let (name, offset) = binder.variable(token) else { return nil }
                values.append(.variable(name, offset: offset))
            case .word:
                if let n = ScriptLiteral.number(token.text) {
                    values.append(.constant(.number(n), text: token.text))
                } else if let words = ScriptLiteral.featureWords([token.text]) {
                    values.append(.constant(.words(words), text: token.text))
                } else if let backend = VhostBackendFeatures.parse(token.text) {
                    values.append(.constant(.number(backend.rawValue), text: token.text))
                } else {
                    problem(token.location, "expected a number or a feature name, found \(Parser.describe(token))" + binder.hint(token.text, among: Parser.featureNames))
                    return nil
                }
            default:
                problem(token.location, "expected a number or a feature name, found \(Parser.describe(token))")
                return nil
            }
        }
        return .check(ValueCheck(subject: subjectValue, comparison: comparison, values: values, location: first.location))
    }

    /// `expect ring-error QUEUE [within=MS]`.
    mutating func parseRingError(_ tokens: [Token]) -> Statement? {
        guard tokens.count >= 3 else {
            problem(tokens[1].location, "expected expect ring-error QUEUE [within=MS], found the end of the line")
            return nil
        }
        guard let queue = binder.number(tokens[2], .bits(32), name: "QUEUE", command: "expect ring-error") else { return nil }
        var within = Operand.constant(2000, .limit(.milliseconds, minimum: 0), "within")
        if tokens.count > 3 {
            guard tokens.count == 6, tokens[3].kind == .word, tokens[3].text == "within", tokens[4].kind == .equals else {
                problem(tokens[3].location, "expected within=MS or the end of the line, found \(Parser.describe(tokens[3]))")
                return nil
            }
            guard let value = binder.number(tokens[5], .limit(.milliseconds, minimum: 0), name: "within", command: "expect ring-error") else { return nil }
            within = value
        }
        return .expectRingError(queue: queue, milliseconds: within, location: tokens[0].location)
    }

    /// `repeat COUNT [as NAME] {`.
    mutating func parseRepeat(_ tokens: [Token]) -> Parser.Header? {
        let first = tokens[0]
        guard tokens.count >= 3 else {
            problem(tokens[tokens.count - 1].location, "expected repeat COUNT [as NAME] {, found \(Parser.describe(tokens.count > 1 ? tokens[1] : nil))")
            return nil
        }
        // A COUNT that is no good is reported, and the block still opens, so its } matches.
        let count = binder.number(tokens[1], .limit(.iterations, minimum: 0), name: "COUNT", command: "repeat")
            ?? .constant(0, .limit(.iterations, minimum: 0), "COUNT")
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
            problem(next < tokens.count ? tokens[next].location : tokens[tokens.count - 1].location,
                    "expected { at the end of the repeat line, found \(Parser.describe(next < tokens.count ? tokens[next] : nil))")
            return nil
        }
        guard next + 1 == tokens.count else {
            problem(tokens[next + 1].location, "expected the end of the line after {, found \(Parser.describe(tokens[next + 1])) (put the block's commands on the following lines)")
            return nil
        }
        return (count, variable, first.location)
    }
}
