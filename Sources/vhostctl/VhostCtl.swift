import ArgumentParser
import Glibc
import Logging
import HostNetwork
import Vhost

@main
struct VhostCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhostctl",
        abstract: "Drive the Linux kernel's vhost-net from userspace: be the virtio-net driver for a tap.",
        discussion: """
        Exit codes: 0 success; 1 a runtime failure (a kernel error while running, a call the \
        state did not allow, guest memory out of room, a demo check that failed); 64 bad usage \
        or configuration (malformed IP, MAC, tap name, option, a queue or buffer size or feature \
        combination the library refuses, a malformed script); 65 corrupt input data (a corrupt or \
        truncated pcap file); 66 an input file cannot be read (a missing pcap or script file); \
        69 vhost-net or a requested feature is unavailable; 73 an output file cannot be created \
        or written (--pcap, --record, --json-file, --junit, --csv, --svg); 75 the tap is busy; 77 not permitted (needs \
        root or CAP_NET_ADMIN).
        """,
        version: VhostCtlVersion.description,
        subcommands: [Info.self, Attach.self, Ctl.self, Cleanup.self, Demo.self, BenchGroup.self, ScriptGroup.self, MigrateTest.self, Reaper.self]
    )

    /// `--verbose`, `--quiet`, `--trace` and `--json` before the subcommand (`vhostctl --trace info`). The
    /// root parses the whole command line first and takes them wherever they stand; each
    /// subcommand's `CommonOptions` then reuses this same `GlobalOptions` value (swift-argument-parser
    /// hands a group already decoded by a parent command to a child's `@OptionGroup` of that type).
    /// `--version` is the parser's own: it is honoured after a subcommand too.
    @OptionGroup(title: "Global options") var global: GlobalOptions

    /// ArgumentParser's own main, except that a bad argument prints one line
    /// (`vhostctl: error: …`) instead of the error plus the usage text.
    static func main() {
        ignoreBrokenPipes()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let exit as ExitCode {
            // Already reported by runReportingErrors (or a plain status, as from info).
            Glibc.exit(exit.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                fflush(nil)
                var line = "vhostctl: error: \(message(for: error)) (see vhostctl --help)\n"
                line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
                Glibc.exit(code.rawValue)
            }
            exit(withError: error)
        }
    }
}

/// The options every command accepts (`--json` included: every command prints JSON with it), before or after the subcommand's name.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Log what is being set up.")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Print errors only: no warnings or notes on standard error (the command's results still print).")
    var quiet = false

    @Flag(help: "Print every ioctl with its decoded arguments and result, to standard error.")
    var trace = false

    @Flag(name: [.customShort("j"), .long], help: "Print the command's results as JSON on standard output (docs/json.md has each command's schema); the human lines go to standard error.")
    var json = false

    func validate() throws {
        guard !(verbose && quiet) else {
            throw ValidationError("--verbose and --quiet contradict each other: pass one of them")
        }
    }

    /// The log level these flags ask for.
    var logLevel: Logger.Level {
        if verbose { return .debug }
        if quiet { return .error }
        return .info
    }
}

/// Options every command that opens a device shares: the global ones and `--device`.
struct CommonOptions: ParsableArguments {
    @OptionGroup(title: "Global options") var global: GlobalOptions

    @Option(help: "The vhost-net device node.", completion: .file())
    var device = VhostNetDevice.defaultPath

    var verbose: Bool { global.verbose }
    var quiet: Bool { global.quiet }
    var trace: Bool { global.trace }
    var json: Bool { global.json }

    func makeLogger() -> Logger {
        var logger = Logger(label: "vhostctl") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = global.logLevel
        return logger
    }

    var observer: IoctlObserver? {
        guard trace else { return nil }
        return { event in
            var line = "trace: \(event)\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
    }
}

/// The documented exit codes (sysexits.h names in parentheses).
enum ExitStatus {
    /// A runtime failure: a kernel error while running, a call the state did not allow, guest
    /// memory out of room.
    static let failure: Int32 = 1
    /// Bad usage or configuration, as the user typed it (EX_USAGE).
    static let usage: Int32 = 64
    /// Input data that is corrupt (EX_DATAERR).
    static let dataError: Int32 = 65
    /// An input file that cannot be read (EX_NOINPUT).
    static let noInput: Int32 = 66
    /// vhost-net or a requested feature is unavailable (EX_UNAVAILABLE).
    static let unavailable: Int32 = 69
    /// An output file that cannot be created or written (EX_CANTCREAT).
    static let cannotCreate: Int32 = 73
    /// The tap is busy (EX_TEMPFAIL).
    static let busy: Int32 = 75
    /// Not permitted: needs root or CAP_NET_ADMIN (EX_NOPERM).
    static let notPermitted: Int32 = 77
}

/// Prints `vhostctl: error: …` and returns the exit code that fits the error.
func report(_ error: Error) -> ExitCode {
    let message: String
    let status: Int32
    switch error {
    case let error as VhostError:
        message = error.description
        switch error {
        case .deviceMissing, .featureUnavailable, .unsupportedByKernel: status = ExitStatus.unavailable
        case .permissionDenied: status = ExitStatus.notPermitted
        // What the user typed (or configured) is refused: usage. invalidArgument is VhostScript's
        // (being replaced), and is a problem of the script the user wrote.
        case .invalidConfiguration, .invalidArgument: status = ExitStatus.usage
        case .invalidState, .outOfGuestMemory: status = ExitStatus.failure
        case .unreadableFile: status = ExitStatus.noInput
        case .corruptInput: status = ExitStatus.dataError
        case .unwritableFile: status = ExitStatus.cannotCreate
        case .tap(_, let problem, _):
            switch problem {
            case .driverMissing: status = ExitStatus.unavailable
            case .permission: status = ExitStatus.notPermitted
            case .busy: status = ExitStatus.busy
            case .nameTaken, .missing, .exists: status = ExitStatus.usage
            case .other: status = ExitStatus.failure
            }
        case .ioctl(let failure) where failure.errno == .notPermitted || failure.errno == .permissionDenied:
            status = ExitStatus.notPermitted
        default: status = ExitStatus.failure
        }
    case let error as CLIError:
        message = error.message
        status = error.status
    default:
        message = "\(error)"
        status = ExitStatus.failure
    }
    var line = "vhostctl: error: \(message)\n"
    // What was printed before the failure comes out first (with --json, standard output's
    // buffer goes to standard error too): the error stays the last line.
    fflush(nil)
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    return ExitCode(status)
}

struct CLIError: Error {
    var message: String
    var status: Int32
}

/// Runs a command body, turning every error into one clear line and its exit code.
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let exit as ExitCode {
        throw exit
    } catch {
        throw report(error)
    }
}

/// For commands that create their own tap: the name must be free.
func requireFreeTapName(_ name: String) throws {
    guard !Tap.exists(name: name) else {
        throw VhostError.tap(name: name, problem: .exists, reason: "already exists; pass --tap with a free name")
    }
}

/// Refuses early, with one line, when the process cannot administer the network.
func requireNetworkAdministration(_ what: String) throws {
    guard HostNetwork.canAdministerNetwork else {
        throw CLIError(message: "\(what) needs root or CAP_NET_ADMIN (it creates or attaches a tap and opens /dev/vhost-net): run it as root, e.g. with sudo",
                       status: ExitStatus.notPermitted)
    }
}
