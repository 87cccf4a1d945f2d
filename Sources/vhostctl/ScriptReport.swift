import Synchronization
import VhostScript

/// What `script run --json` and `--junit FILE` report: one record per statement that ran, in the
/// order they ran, and the run's outcome (docs/json.md).
final class ScriptRunLog: Sendable {
    /// One statement that ran: a command (`set-owner`, `send`, …) or an expectation.
    struct Statement: Encodable {
        var event = "statement"
        /// The command's name, or "expect" for an `expect` line.
        var command: String
        var file: String
        var line: Int
        var column: Int
        var asExpected: Bool
        /// The line the text output prints for it (its ioctls and the kernel's answers).
        var text: String
    }

    /// The last object of `script run --json`.
    struct Summary: Encodable {
        var event = "summary"
        var script: String
        var statements: Int
        var missed: Int
        var passed: Bool
        var exitStatus: Int32
        /// Why the run failed (absent when it passed).
        var error: String?
    }

    private struct State {
        var statements: [Statement] = []
        var pending: ScriptRunner.CommandRun?
    }
    private let state = Mutex(State())

    /// For `ScriptRunner.Options.commandObserver`: the runner tells the command before it prints its line.
    func commandRan(_ run: ScriptRunner.CommandRun) {
        state.withLock { $0.pending = run }
    }

    /// Takes a line of the runner's output; returns the statement it reports, if it is one (a line
    /// that starts with its `file:line:column`, or `MISSED ` and that).
    @discardableResult
    func lineOutput(_ text: String) -> Statement? {
        let missed = text.hasPrefix("MISSED ")
        let body = missed ? String(text.dropFirst("MISSED ".count)) : text
        guard let location = ScriptRunLog.location(prefixing: body) else { return nil }
        return record(location: location, text: text, missed: missed)
    }

    /// The statement a run stopped at (the failure's first line names its location), if it names one.
    func failed(_ description: String) -> Statement? {
        let first = String(description.prefix { $0 != "\n" })
        guard let location = ScriptRunLog.location(prefixing: first) else { return nil }
        return record(location: location, text: first, missed: true)
    }

    private func record(location: SourceLocation, text: String, missed: Bool) -> Statement {
        state.withLock { state in
            var statement = Statement(command: "expect", file: location.file, line: location.line, column: location.column, asExpected: !missed, text: text)
            if let pending = state.pending, pending.location == location {
                statement.command = pending.command
                statement.asExpected = pending.asExpected && !missed
            }
            state.pending = nil
            state.statements.append(statement)
            return statement
        }
    }

    var statements: [Statement] { state.withLock { $0.statements } }

    /// The `file:line:column` a runner line starts with (`FILE:LINE:COLUMN: …`); the file name may
    /// hold colons, the line and column are decimal numbers.
    static func location(prefixing line: String) -> SourceLocation? {
        var searchFrom = line.startIndex
        while let separator = line[searchFrom...].firstRange(of: ": ") {
            let head = line[..<separator.lowerBound]
            let parts = head.split(separator: ":", omittingEmptySubsequences: false)
            if parts.count >= 3, let column = Int(parts[parts.count - 1]), let number = Int(parts[parts.count - 2]), column > 0, number > 0 {
                let file = parts[..<(parts.count - 2)].joined(separator: ":")
                if !file.isEmpty { return SourceLocation(file: file, line: number, column: column) }
            }
            searchFrom = separator.upperBound
        }
        return nil
    }

    /// The run as JUnit XML (the format CI systems read): a test suite for the script, a test case
    /// per statement, a `<failure>` for each one that missed, and one for a failure that stopped the
    /// run before any statement (a malformed script).
    func junit(script: String, summary: Summary) -> String {
        let statements = self.statements
        var cases: [String] = []
        for statement in statements {
            let name = xmlEscaped("\(statement.file):\(statement.line):\(statement.column) \(statement.command)")
            if statement.asExpected {
                cases.append("    <testcase classname=\"\(xmlEscaped(script))\" name=\"\(name)\"/>")
            } else {
                cases.append("""
                    <testcase classname="\(xmlEscaped(script))" name="\(name)">
                      <failure message="\(xmlEscaped(statement.text))" type="missed">\(xmlEscaped(statement.text))</failure>
                    </testcase>
                """)
            }
        }
        var failures = statements.filter { !$0.asExpected }.count
        if !summary.passed && failures == 0 {
            // A run that failed without a statement to blame: the script as a whole.
            let error = summary.error ?? "exit status \(summary.exitStatus)"
            cases.append("""
                <testcase classname="\(xmlEscaped(script))" name="\(xmlEscaped(script))">
                  <failure message="\(xmlEscaped(error))" type="error">\(xmlEscaped(error))</failure>
                </testcase>
            """)
            failures = 1
        }
        return """
        <?xml version="1.0" encoding="UTF-8"?>
        <testsuites name="vhostctl script run" tests="\(cases.count)" failures="\(failures)" errors="0">
          <testsuite name="\(xmlEscaped(script))" tests="\(cases.count)" failures="\(failures)" errors="0" skipped="0">
        \(cases.joined(separator: "\n"))
          </testsuite>
        </testsuites>

        """
    }
}

/// `text` as XML character data or an attribute value: the five special characters escaped, and
/// every character XML 1.0 does not allow (most C0 controls) replaced with U+FFFD.
func xmlEscaped(_ text: String) -> String {
    var escaped = ""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": escaped += "&amp;"
        case "<": escaped += "&lt;"
        case ">": escaped += "&gt;"
        case "\"": escaped += "&quot;"
        case "'": escaped += "&apos;"
        case "\t", "\n", "\r": escaped += "&#\(scalar.value);"
        // XML 1.0 section 2.2 Char: no C0 control besides tab, newline and carriage return; no
        // U+FFFE or U+FFFF.
        case _ where scalar.value < 0x20 || scalar.value == 0xFFFE || scalar.value == 0xFFFF:
            escaped += "\u{FFFD}"
        default: escaped.unicodeScalars.append(scalar)
        }
    }
    return escaped
}
