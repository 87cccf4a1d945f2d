import FoundationEssentials
import Glibc

/// `--json` output: `Encodable` reports written by Foundation's `JSONEncoder`
/// (FoundationEssentials, which links into the static binary without ICU), keys in snake_case.
/// Keys are sorted; an optional that is nil is left out of its object. docs/json.md documents
/// each command's schema.
enum JSONOutput {
    /// One document, pretty-printed (a command that prints one object).
    static func text<T: Encodable>(_ value: T) throws -> String {
        try encode(value, pretty: true)
    }

    /// One object on one line (JSON Lines: a command that prints an object per event).
    static func line<T: Encodable>(_ value: T) throws -> String {
        try encode(value, pretty: false)
    }

    private static func encode<T: Encodable>(_ value: T, pretty: Bool) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

/// Where a command's data goes: standard output. With `--json` the data is JSON and every human
/// line (progress, notes, the text report) goes to standard error instead, so that standard
/// output parses as JSON and a person watching still sees the progress.
final class DataOutput {
    /// The descriptor JSON is written to: the original standard output.
    private let dataDescriptor: Int32
    /// Whether this output carries JSON.
    let json: Bool

    /// With `json`, moves standard output's human lines to standard error: `print` writes to fd
    /// 1, which from here on is a copy of fd 2, while the data goes to a copy of the original fd 1.
    /// Without it, nothing changes and `emit` is never called.
    init(json: Bool) {
        self.json = json
        guard json else { dataDescriptor = 1; return }
        fflush(nil)
        let saved = dup(1)
        // dup can only fail for lack of descriptors: then JSON and the human lines share stdout
        // (still a valid report for a person), rather than no output at all.
        guard saved >= 0, dup2(2, 1) >= 0 else { dataDescriptor = 1; return }
        dataDescriptor = saved
    }

    /// Writes one JSON value (pretty-printed) and a newline to standard output.
    func emit<T: Encodable>(_ value: T) throws {
        try write(JSONOutput.text(value) + "\n")
    }

    /// Writes one JSON value on one line (JSON Lines) to standard output.
    func emitLine<T: Encodable>(_ value: T) throws {
        try write(JSONOutput.line(value) + "\n")
    }

    /// Writes `text` whole, retrying after signals and short writes. To a closed standard output
    /// (EPIPE: the reader has gone) it writes nothing, as `print` does; other errors throw.
    func write(_ text: String) throws {
        fflush(nil)
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer in
                // SAFETY: the range offset..<count lies inside `buffer`, which lives for the call.
                Glibc.write(dataDescriptor, buffer.baseAddress! + offset, buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                // The reader went away (`vhostctl attach --json | head -1`): there is no one to
                // give the rest to; attach stops on the SIGPIPE it recorded (Signals.swift).
                if errno == EPIPE { return }
                throw CLIError(message: "standard output: cannot write the JSON (\(String(cString: strerror(errno))))", status: ExitStatus.failure)
            }
            offset += written
        }
    }
}

/// Writes `text` and a newline to standard error: diagnostics (warnings, errors, notes) never go
/// to standard output, which carries only the command's data.
func printDiagnostic(_ text: String) {
    fflush(nil)
    var line = text + "\n"
    line.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let written = Glibc.write(2, buffer.baseAddress! + offset, buffer.count - offset)
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { return }
            offset += written
        }
    }
}
