import Glibc
import SystemPackage

/// Files the CLI writes (`--record`, `--json`, `--csv`, `--svg`): checked in `validate()`,
/// before anything is set up, and written whole at the end.
enum OutputFile {
    /// Why `path` cannot be written, or nil when its directory is writable.
    static func problem(_ path: String) -> String? {
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        let checked = directory.isEmpty ? "/" : directory
        return access(checked, W_OK) == 0 ? nil : "\(path): cannot write in \(checked); give a path in a writable directory"
    }

    /// For `validate()`: refuses an output path that cannot be created with one line and
    /// EX_CANTCREAT (73), before anything is set up. `option` names the option it came from.
    static func check(_ path: String, option: String) throws {
        guard let problem = problem(path) else { return }
        throw report(CLIError(message: "\(option) \(problem)", status: ExitStatus.cannotCreate))
    }

    /// Writes `text` to `path`, replacing what was there.
    static func write(_ text: String, to path: String) throws {
        let fd = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        defer { try? fd.close() }
        _ = try fd.writeAll(Array(text.utf8))
    }
}
