import ArgumentParser
import Glibc
import Vhost
import VhostNet
import VhostScript

struct Script: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a script of vhost ioctls against the kernel, printing each with its decoded arguments and result.",
        discussion: """
        One command a line; `#` starts a comment. Commands: \(IoctlScript.grammar.keys.sorted().joined(separator: ", ")). \
        `expect ERRNO` makes the next command pass only if the kernel answers that errno. The \
        whole script is checked before anything runs. Exits 0 when every command did what was \
        expected, 1 at the first that did not, 64 for a malformed script. See Examples/*.vhost.
        """)

    @OptionGroup var common: CommonOptions

    @Argument(help: "The script file, or - for standard input.")
    var file: String

    func run() throws {
        try runReportingErrors {
            let text: String
            if file == "-" {
                var bytes: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let n = read(0, &buffer, buffer.count)
                    if n <= 0 { break }
                    bytes += buffer.prefix(n)
                }
                text = String(decoding: bytes, as: UTF8.self)
            } else {
                guard let contents = KernelInfo.readFile(file) else {
                    throw CLIError(message: "cannot read script \(file): it does not exist or is not readable", status: ExitStatus.usage)
                }
                text = contents
            }
            let script: IoctlScript
            do {
                script = try IoctlScript(parsing: text, name: file == "-" ? "stdin" : file)
            } catch {
                throw CLIError(message: "malformed script, nothing was run:\n\(error)", status: ExitStatus.usage)
            }
            let runner = IoctlScriptRunner { line in print(line); fflush(nil) }
            do {
                try runner.run(script, name: file == "-" ? "stdin" : file)
            } catch {
                throw CLIError(message: "\(error)", status: ExitStatus.failure)
            }
            print("\(script.commands.count) commands ran as expected")
        }
    }
}
