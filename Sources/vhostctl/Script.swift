import ArgumentParser
import Glibc
import Vhost
import VhostNet
import VhostScript

/// `vhostctl script run FILE`, `vhostctl script check FILE`; `vhostctl script FILE` runs.
struct ScriptGroup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "script",
        abstract: "Run scripts of vhost ioctls, ring writes and frames against the kernel, with expectations; or check them without running.",
        discussion: """
        One command a line; `#` starts a comment. The language is described in docs/scripting.md; \
        `vhostctl script commands` lists every command. Examples/*.vhost are scripts to start from.
        """,
        subcommands: [ScriptRun.self, ScriptCheck.self, ScriptCommandList.self],
        defaultSubcommand: ScriptRun.self)
}

/// The script argument, and reading it.
struct ScriptFileOptions: ParsableArguments {
    @Argument(help: "The script file, or - for standard input.")
    var file: String

    var displayName: String { file == "-" ? "stdin" : file }

    /// Parses the script; every problem is one `file:line:column` line, and nothing runs.
    func parse() throws -> Script {
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
                throw CLIError(message: "cannot read script \(file): it does not exist or is not readable", status: ExitStatus.noInput)
            }
            text = contents
        }
        do {
            return try Script(parsing: text, name: displayName)
        } catch {
            throw CLIError(message: "\(displayName): malformed script, nothing was run:\n\(error)", status: ExitStatus.usage)
        }
    }
}

struct ScriptRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a script against the kernel, printing each command with its ioctls and the kernel's answers.",
        discussion: "Exits 0 when everything did what was expected, 1 when something did not, 64 for a malformed script (then nothing runs).")

    @OptionGroup var common: CommonOptions
    @OptionGroup var recording: RecordOptions
    @OptionGroup var script: ScriptFileOptions

    @Flag(help: "Report a missed expectation and go on; the exit status is still 1.")
    var keepGoing = false

    func run() throws {
        try runReportingErrors {
            let parsed = try script.parse()
            let recorder = recording.makeRecorder()
            defer { recording.save(recorder, command: "script run \(script.file)") }
            var options = ScriptRunner.Options()
            options.keepGoing = keepGoing
            options.devicePath = common.device
            options.observer = RecordOptions.observer(common, recorder)
            options.ringObserver = recorder?.ringObserver
            let runner = ScriptRunner(options: options) { line in print(Script.escapingNonPrintable(line)); fflush(nil) }
            do {
                try runner.run(parsed)
            } catch {
                throw CLIError(message: "\(error)", status: ExitStatus.failure)
            }
            print("\(script.displayName): every command did what was expected")
        }
    }
}

struct ScriptCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Parse and check a script without touching the kernel.",
        discussion: "Prints every problem as file:line:column and exits 64 when there is one; 0 when the script is well formed.")

    @OptionGroup var script: ScriptFileOptions

    func run() throws {
        try runReportingErrors {
            let parsed = try script.parse()
            print("\(script.displayName): well formed; it would run \(parsed.commandCount) statements")
        }
    }
}

struct ScriptCommandList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "commands", abstract: "List every command of the script language.")

    func run() throws {
        for spec in ScriptCommands.all {
            print(spec.usage + String(repeating: " ", count: max(2, 44 - spec.usage.count)) + spec.summary)
        }
        print("""

        let NAME = COMMAND …          keep a command's answer in $NAME ($NAME+N adds N)
        expect ok | expect ERRNO      the next command must succeed, or fail with ERRNO
        expect SUBJECT [OP] VALUE…    SUBJECT: $var or an answer (\(ScriptCommands.resultNames.sorted().joined(separator: ", ")));
                                      OP: == (default) != < <= > >= contains lacks
        expect ring-error QUEUE [within=MS]
        repeat COUNT [as NAME] { … }  (the { ends the line; the } is a line of its own)
        include "FILE"
        """)
    }
}
