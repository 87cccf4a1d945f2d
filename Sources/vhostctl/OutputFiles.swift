import ArgumentParser
import Vhost

/// `--force`, shared by every command that writes files (`--pcap`, `--record`, `--json-file`, `--junit`, `--csv`,
/// `--svg`). Every such file is a `Vhost.OutputFile`: made under a temporary name with mode 0600,
/// never through a symbolic link, renamed to its name once complete.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Replace output files that already exist (--pcap, --record, --json-file, --junit, --csv, --svg). A symbolic link at an output path is refused even then.")
    var force = false

    /// For `validate()`: refuses an output path that cannot be written (a symbolic link, a file
    /// that exists without --force, a missing or read-only folder) with one line and
    /// EX_CANTCREAT (73), before anything is set up. `option` names the option it came from.
    func check(_ path: String, option: String) throws {
        guard let problem = OutputFile.problem(path: path, replacingExisting: force) else { return }
        throw report(CLIError(message: "\(option) \(path): \(problem)", status: ExitStatus.cannotCreate))
    }

    /// Creates `path`'s temporary file now (as `user`, when the process will run as that user
    /// later): an error is one line naming `option`, with EX_CANTCREAT (73).
    func create(_ path: String, option: String, creatingAs user: UserIdentity? = nil) throws -> OutputFile {
        do {
            return try OutputFile(path: path, replacingExisting: force, creatingAs: user)
        } catch {
            throw CLIError(message: "\(option) \(path): \(OutputOptions.problem(of: error))", status: ExitStatus.cannotCreate)
        }
    }

    /// Writes `text` to `path` whole (temporary file, fsync, rename) and says so.
    func write(_ text: String, to path: String, option: String) throws {
        do {
            try OutputFile.write(text, to: path, replacingExisting: force)
            print("wrote \(path)")
        } catch {
            throw CLIError(message: "\(option) \(path): \(OutputOptions.problem(of: error))", status: ExitStatus.cannotCreate)
        }
    }

    /// The problem an `OutputFile` error names, with its errno.
    static func problem(of error: VhostError) -> String {
        guard case .unwritableFile(_, let problem, let errno) = error else { return "\(error)" }
        return problem + (errno.map { " (\($0.name))" } ?? "")
    }
}
