/// Where something is in a script: the file (as the user named it), the line and the column,
/// both from 1. Every parse and run message starts with it, as compilers print it.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) { self.file = file; self.line = line; self.column = column }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One token of a script line.
struct Token: Equatable {
    enum Kind: Equatable {
        /// A bare word: a command, a name, a number, a feature, an errno.
        case word
        /// `$name`.
        case variable
        /// A double-quoted string (include paths); the text is the content, unescaped.
        case string
        case equals
        case openBrace
        case closeBrace
    }
    var kind: Kind
    var text: String
    var location: SourceLocation
}

/// Splits one line into tokens. Words run until white space or one of `=`, `{`, `}`, `#`, `"`;
/// `#` starts a comment. Columns count Unicode scalars, as terminals show them.
enum Lexer {
    struct Failure: Error { var location: SourceLocation; var message: String }

    static func tokens(_ line: Substring, file: String, lineNumber: Int) throws(Failure) -> [Token] {
        var tokens: [Token] = []
        let scalars = Array(line.unicodeScalars)
        var i = 0
        func location(_ index: Int) -> SourceLocation { SourceLocation(file: file, line: lineNumber, column: index + 1) }
        func isSpace(_ s: Unicode.Scalar) -> Bool { s == " " || s == "\t" || s == "\r" }
        func isDelimiter(_ s: Unicode.Scalar) -> Bool { isSpace(s) || s == "=" || s == "{" || s == "}" || s == "#" || s == "\"" }
        while i < scalars.count {
            let s = scalars[i]
            if isSpace(s) { i += 1; continue }
            if s == "#" { break }
            switch s {
            case "=" where i + 1 < scalars.count && scalars[i + 1] == "=":
                tokens.append(Token(kind: .word, text: "==", location: location(i))); i += 2
            case "=": tokens.append(Token(kind: .equals, text: "=", location: location(i))); i += 1
            case "{": tokens.append(Token(kind: .openBrace, text: "{", location: location(i))); i += 1
            case "}": tokens.append(Token(kind: .closeBrace, text: "}", location: location(i))); i += 1
            case "\"":
                let start = i
                i += 1
                var text = String.UnicodeScalarView()
                while i < scalars.count, scalars[i] != "\"" {
                    if scalars[i] == "\\", i + 1 < scalars.count { i += 1 }
                    text.append(scalars[i]); i += 1
                }
                guard i < scalars.count else { throw Failure(location: location(start), message: "expected a closing \" for the string, found the end of the line") }
                i += 1
                tokens.append(Token(kind: .string, text: String(text), location: location(start)))
            default:
                let start = i
                while i < scalars.count, !isDelimiter(scalars[i]) { i += 1 }
                // No command, name, number or feature is this long; refusing it here saves building
                // a string of megabytes from a hostile line (an 8 MiB word took a second).
                guard i - start <= Lexer.longestWord else {
                    throw Failure(location: location(start), message: "expected a word of at most \(Lexer.longestWord) characters, found one of \(i - start)")
                }
                // The comparisons !=, <= and >= end in what is otherwise a delimiter.
                if i - start == 1, ["!", "<", ">"].contains(scalars[start]), i < scalars.count, scalars[i] == "=" { i += 1 }
                var text = String.UnicodeScalarView()
                text.append(contentsOf: scalars[start..<i])
                let word = String(text)
                if word.hasPrefix("$") {
                    let name = String(word.dropFirst())
                    // `$name` or `$name+N` / `$name-N` (an offset, for addresses).
                    let base = name.prefix { $0 != "+" && $0 != "-" }
                    guard let first = base.unicodeScalars.first, isNameStart(first), base.unicodeScalars.allSatisfy(isNameCharacter) else {
                        throw Failure(location: location(start), message: "expected a variable name after $ (a letter, then letters, digits or _), found '\(word)'")
                    }
                    tokens.append(Token(kind: .variable, text: name, location: location(start)))
                } else {
                    tokens.append(Token(kind: .word, text: word, location: location(start)))
                }
            }
        }
        return tokens
    }

    /// The longest word the lexer takes (paths go in strings, which may be longer).
    static let longestWord = 1024

    static func isNameStart(_ s: Unicode.Scalar) -> Bool { ("a"..."z").contains(s) || ("A"..."Z").contains(s) || s == "_" }
    static func isNameCharacter(_ s: Unicode.Scalar) -> Bool { isNameStart(s) || ("0"..."9").contains(s) }
    static func isName(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, isNameStart(first) else { return false }
        return text.unicodeScalars.allSatisfy(isNameCharacter)
    }
}
