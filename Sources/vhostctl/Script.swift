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
    @Argument(help: "The script file, or - for standard input.", completion: CompletionHints.scriptFiles)
    var file: String

    @Option(name: .customLong("include-path"), help: ArgumentHelp(
        "A directory includes may read from, besides the script's own (repeatable). A script from standard input includes only from these.",
        valueName: "DIR"))
    var includePaths: [String] = []

    var displayName: String { file == "-" ? "stdin" : file }

    func validate() throws {
        for directory in includePaths {
            var info = stat()
            guard stat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                throw ValidationError("--include-path \(directory): not a directory; name a directory that exists")
            }
        }
    }

    /// The directories includes may read from: the script's own (not for standard input) and
    /// every --include-path.
    var includeDirectories: [String] { (file == "-" ? [] : [Script.directory(of: file)]) + includePaths }

    /// Parses the script; every problem is one `file:line:column` line, and nothing runs.
    /// Standard input and the file are read up to the limit on script text (one byte more, so
    /// that a longer one is reported).
    func parse() throws -> Script {
        let limit = ScriptLimits.standard.inputBytes
        let text: String
        if file == "-" {
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while bytes.count <= limit {
                let n = read(0, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                bytes += buffer.prefix(n)
            }
            text = String(decoding: bytes.prefix(limit + 1), as: UTF8.self)
        } else {
            guard let contents = Script.readRegularFile(file, limit: limit) else {
                throw CLIError(message: "cannot read script \(file): it does not exist, is not a regular file, or is not readable", status: ExitStatus.noInput)
            }
            text = contents
        }
        do {
            return try Script(parsing: text, name: displayName, includeDirectories: includeDirectories)
        } catch {
            // One problem: one line. Several: a count on the first line, then one line each.
            let problems = error.problems
            if problems.count == 1 {
                throw CLIError(message: "\(Script.escapingNonPrintable(problems[0])) (malformed script, nothing was run)", status: ExitStatus.usage)
            }
            throw CLIError(message: "\(displayName): malformed script, nothing was run: \(problems.count) problems:\n\(error)", status: ExitStatus.usage)
        }
    }
}

struct ScriptRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a script against the kernel, printing each command with its ioctls and the kernel's answers.",
        discussion: """
        Exits 0 when everything did what was expected, 1 when something did not, 64 for a malformed script (then nothing runs) \
        or one that asks for more than the tool's limits allow (docs/scripting.md lists them), 77 when it asks for what a \
        script may not do: open a file that is not a vhost device, or attach to a tap it did not create (docs/security.md).
        """)

    @OptionGroup var common: CommonOptions
    @OptionGroup var recording: RecordOptions
    @OptionGroup var script: ScriptFileOptions

    @Flag(help: "Report a missed expectation and go on; the exit status is still 1.")
    var keepGoing = false

    @Flag(help: ArgumentHelp(
        "Run on the in-process device instead of /dev/vhost-net: the kernel's vhost-net rules on a thread of this process, with a frame pipe for `tap NAME`. Needs no root and no vhost module; IOTLB commands are not available."))
    var inProcess = false

    @Option(name: .customLong("allow-device"), help: ArgumentHelp(
        "Let `open` open this character device too (repeatable); without it a script opens only /dev/vhost-net's device (10:238).",
        valueName: "PATH"))
    var allowedDevices: [String] = []

    @Flag(help: "Let `tap NAME` attach to an interface that exists already; without it a script uses only taps it creates.")
    var allowExistingTap = false

    @Option(help: ArgumentHelp("Also write the results as a JUnit XML report to this file (a test case per statement), for CI systems.", valueName: "file"),
            completion: .file(extensions: ["xml"]))
    var junit: String?

    func validate() throws {
        if let junit { try recording.output.check(junit, option: "--junit") }
        for path in allowedDevices {
            do { _ = try CheckedOpen.characterDeviceNumber(at: path) } catch {
                throw ValidationError("--allow-device \(path): \(error); name a vhost character device")
            }
        }
    }

    func run() throws {
        try runReportingErrors {
            // With --json: a statement object per line as it runs, then a summary (docs/json.md).
            let data = DataOutput(json: common.json)
            let log = ScriptRunLog()
            do {
                try execute(log: log, data: data)
            } catch {
                let exit = report(error)
                try finish(log: log, data: data, exitStatus: exit.rawValue, error: ScriptRun.oneLine(error))
                throw exit
            }
            try finish(log: log, data: data, exitStatus: 0, error: nil)
        }
    }

    /// The summary object and the JUnit report, once the run is over (passed or not).
    func finish(log: ScriptRunLog, data: DataOutput, exitStatus: Int32, error: String?) throws {
        let statements = log.statements
        let summary = ScriptRunLog.Summary(script: script.displayName, statements: statements.count, missed: statements.filter { !$0.asExpected }.count,
                                           passed: exitStatus == 0, exitStatus: exitStatus, error: error)
        if data.json { try data.emitLine(summary) }
        if let junit {
            do {
                try OutputFile.write(log.junit(script: script.displayName, summary: summary), to: junit, replacingExisting: recording.output.force)
            } catch {
                throw CLIError(message: "--junit \(junit): \(OutputOptions.problem(of: error))", status: ExitStatus.cannotCreate)
            }
        }
    }

    /// An error's message on one line (a run's several misses joined with "; ").
    static func oneLine(_ error: Error) -> String {
        let text = (error as? CLIError)?.message ?? "\(error)"
        return text.split(separator: "\n").joined(separator: "; ")
    }

    func execute(log: ScriptRunLog, data: DataOutput) throws {
        let parsed = try script.parse()
        let recordFile = try recording.openFile()
        let recorder = recording.makeRecorder()
        defer { recording.save(recorder, to: recordFile, command: "script run \(script.file)") }
        var options = ScriptRunner.Options()
        options.keepGoing = keepGoing
        options.device = inProcess ? .inProcess() : .kernel(path: common.device)
        options.observer = RecordOptions.observer(common, recorder)
        options.ringObserver = recorder?.ringObserver
        options.allowExistingTaps = allowExistingTap
        options.commandObserver = { log.commandRan($0) }
        for path in allowedDevices {
            do { options.acceptedDevices.insert(try CheckedOpen.characterDeviceNumber(at: path)) } catch {
                throw CLIError(message: "--allow-device \(path): \(error); name a vhost character device", status: ExitStatus.usage)
            }
        }
        var writeFailure: Error? = nil
        let runner = ScriptRunner(options: options) { line in
            let text = Script.escapingNonPrintable(line)
            print(text)
            fflush(nil)
            if data.json, writeFailure == nil {
                do {
                    if let statement = log.lineOutput(text) { try data.emitLine(statement) } else { try data.emitLine(ScriptRun.OutputLine(text: text)) }
                } catch { writeFailure = error }
            } else {
                log.lineOutput(text)
            }
        }
        do throws(ScriptRunner.Failure) {
            try runner.run(parsed)
        } catch {
            let message = Script.escapingNonPrintable("\(error)")
            // The statement the run stopped at (a keep-going run's misses are recorded already).
            if !keepGoing, let statement = log.failed(message), data.json { try data.emitLine(statement) }
            throw CLIError(message: message, status: ScriptRun.exitStatus(error))
        }
        if let writeFailure { throw writeFailure }
        print("\(script.displayName): every command did what was expected")
    }

    /// A line of the run's output that reports no statement (`--json`).
    struct OutputLine: Encodable {
        var event = "output"
        var text: String
    }

    /// The exit status of a failed run, by the kind of failure: a limit of the tool is 64, as a
    /// parse error (the script asks for more than the tool does); every other failure (a missing
    /// prerequisite, guest memory exhausted, a timeout, a frame mismatch, an ioctl's answer, a
    /// missed expectation) is 1.
    static func exitStatus(_ failure: ScriptRunner.Failure) -> Int32 {
        for cause in failure.causes {
            switch cause {
            case .limit: return ExitStatus.usage
            case .notAllowed: return ExitStatus.notPermitted
            case .outOfRange, .missingPrerequisite, .outOfGuestMemory, .invalidValue, .timeout, .frameMismatch, .brokenRing,
                 .refusedMessage, .device, .unsupported:
                continue
            }
        }
        return ExitStatus.failure
    }
}

struct ScriptCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Parse and check a script without touching the kernel.",
        discussion: "Prints every problem as file:line:column and exits 64 when there is one; 0 when the script is well formed.")

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @OptionGroup var script: ScriptFileOptions

    /// `script check --json` (docs/json.md). A malformed script prints nothing on standard output:
    /// its problems go to standard error, with exit status 64.
    struct Report: Encodable {
        var script: String
        var wellFormed: Bool
        var statements: Int
    }

    func run() throws {
        try runReportingErrors {
            let data = DataOutput(json: global.json)
            let parsed = try script.parse()
            print("\(script.displayName): well formed; it would run \(parsed.commandCount) statements")
            if data.json { try data.emit(Report(script: script.displayName, wellFormed: true, statements: parsed.commandCount)) }
        }
    }
}

struct ScriptCommandList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "commands", abstract: "List every command of the script language.")

    @OptionGroup(title: "Global options") var global: GlobalOptions

    /// `script commands --json` (docs/json.md): every command of the language.
    struct Entry: Encodable {
        var name: String
        var usage: String
        /// The name its answer is kept under (`expect NAME …`), for commands that answer one.
        var answer: String?
        var summary: String
    }

    func run() throws {
        if global.json {
            try DataOutput(json: true).emit(ScriptCommands.all.map { Entry(name: $0.name, usage: $0.usage, answer: $0.answer, summary: $0.summary) })
            return
        }
        for entry in ScriptCommands.all {
            print(entry.usage + String(repeating: " ", count: max(2, 44 - entry.usage.count)) + entry.summary)
        }
        print("""

        let NAME = COMMAND …          keep a command's answer in $NAME ($NAME+N adds N)
        expect ok | expect ERRNO      the next command must succeed, or fail with ERRNO
        expect SUBJECT [OP] VALUE…    SUBJECT: $var or an answer (\(ScriptCommands.answerNames.sorted().joined(separator: ", ")));
                                      OP: == (default) != < <= > >= contains lacks
        expect ring-error QUEUE [within=MS]
        repeat COUNT [as NAME] { … }  (the { ends the line; the } is a line of its own)
        include "FILE"
        """)
    }
}
