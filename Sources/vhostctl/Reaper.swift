import ArgumentParser
import Glibc
import HostNetwork
import Vhost

/// `vhostctl _reaper` (hidden): the privileged half of `attach` with a macvtap. `attach` drops
/// every capability after set-up, and an rtnetlink request is checked against both the socket's
/// opener and the sender (net/netlink/af_netlink.c __netlink_ns_capable), so once dropped it can
/// no longer delete the macvtap it made, not even through a socket opened before. This process
/// keeps CAP_NET_ADMIN for that one job: it waits on a pipe from attach and, at end-of-file (attach
/// closed it at teardown, or died for any reason, kill -9 included), deletes the links it was
/// named that still carry attach's mark, then exits. See docs/security.md.
struct Reaper: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "_reaper",
        abstract: "Internal: deletes the links of a vhostctl attach once it is gone (spawned by attach).",
        shouldDisplay: false)

    @Option(name: .customLong("pipe-fd"), help: "The read end of the pipe from the parent.")
    var pipeFD: Int32

    @Option(help: "The parent's mark (vhostctl pid P start S pidns N).")
    var mark: String

    @Option(name: .customLong("link"), help: "A link to delete if it still carries the mark (repeat).")
    var links: [String] = []

    func run() throws {
        // Ctrl-C reaches the whole process group, and a SIGTERM or SIGHUP aimed at attach may
        // reach us too: the job is to outlive attach, so they are ignored (attach spawned us with
        // them blocked, so none could land before this), then unblocked.
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { Glibc.signal(signal, SIG_IGN) }
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&unblock, signal) }
        sigprocmask(SIG_UNBLOCK, &unblock, nil)
        try runReportingErrors {
            guard let parent = InterfaceMark(alias: mark) else {
                throw CLIError(message: "_reaper: --mark \"\(mark)\" is not a vhostctl mark (vhostctl pid P start S pidns N)", status: ExitStatus.usage)
            }
            var info = stat()
            guard fstat(pipeFD, &info) == 0, info.st_mode & S_IFMT == S_IFIFO else {
                throw CLIError(message: "_reaper: --pipe-fd \(pipeFD) is not a pipe; this command is run by vhostctl attach, not by hand", status: ExitStatus.usage)
            }
            guard HostNetwork.canAdministerNetwork else {
                throw CLIError(message: "_reaper needs root or CAP_NET_ADMIN (it deletes links)", status: ExitStatus.notPermitted)
            }
            chdir("/")
            // Nothing but deleting links is left to do: keep CAP_NET_ADMIN alone, no new privileges.
            _ = try PrivilegeDrop.perform(switchingTo: nil, keeping: [Capabilities.networkAdministration])
            waitForEndOfFile(pipeFD, parent: parent)
            try reap(parent: parent)
        }
    }

    /// Blocks until every write end of the pipe is closed; anything written is ignored. Should the
    /// pipe fail otherwise (it cannot, short of a kernel bug), it watches the parent in /proc
    /// instead: deleting a running parent's link would be worse than waiting.
    func waitForEndOfFile(_ fd: Int32, parent: InterfaceMark) {
        var scratch = [UInt8](repeating: 0, count: 64)
        while true {
            let n = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return }
            if n < 0 && errno != EINTR { break }
        }
        while Leftovers.creatorState(of: parent, ourPidNamespace: parent.pidNamespace) == .running { usleep(500_000) }
    }

    func reap(parent: InterfaceMark) throws {
        let targets = Leftovers.reaperTargets(links: try RouteNetlink.links(), names: links, parent: parent)
        var failures: [String] = []
        for link in targets {
            do throws(VhostError) {
                try RouteNetlink.removeLink(index: link.index)
            } catch .system(_, _, let errno) where errno.rawValue == ENODEV {
                continue // gone meanwhile (attach deleted it itself)
            } catch {
                failures.append("\(link.name): \(error)")
            }
        }
        guard failures.isEmpty else {
            throw CLIError(message: "_reaper: could not delete \(failures.joined(separator: "; ")); run `vhostctl cleanup`", status: ExitStatus.failure)
        }
    }
}

/// The reaper as `attach` holds it: the child's pid and the write end of its pipe.
final class ReaperProcess {
    let pid: pid_t
    private var writeEnd: Int32

    private init(pid: pid_t, writeEnd: Int32) {
        self.pid = pid
        self.writeEnd = writeEnd
    }

    /// Spawns `vhostctl _reaper` (posix_spawn of /proc/self/exe: a fresh process, not a fork of
    /// this multithreaded one) to delete `links` should this process end before deleting them.
    /// Call it while this process still has CAP_NET_ADMIN, before the links are created: the
    /// reaper deletes only links carrying this process's mark, so a name that never gets created
    /// (or one that existed before, unmarked) is left alone.
    static func spawn(links: [String]) throws -> ReaperProcess {
        let mark = try InterfaceMark.current()
        let (readEnd, writeEnd) = try ProcessPipe.make()
        defer { close(readEnd) }
        // dup2 onto another number clears O_CLOEXEC for the copy: the reaper keeps exactly the
        // read end; the write end (O_CLOEXEC) is closed by the exec, so EOF means this process is gone.
        let childFD: Int32 = readEnd == 3 ? 4 : 3
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, readEnd, childFD)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        // Started with the stop signals blocked, so none can kill it before it ignores them.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var blocked = sigset_t()
        sigemptyset(&blocked)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&blocked, signal) }
        posix_spawnattr_setsigmask(&attributes, &blocked)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let arguments = ["vhostctl", "_reaper", "--pipe-fd", "\(childFD)", "--mark", mark.description] + links.flatMap { ["--link", $0] }
        // SAFETY: strdup'd C strings live until the free below, after posix_spawn has copied them.
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        // The privileged reaper starts with an empty environment: nothing of the caller's (no
        // variable a runtime or a library could read) reaches a process that keeps CAP_NET_ADMIN.
        var environment: [UnsafeMutablePointer<CChar>?] = [nil]
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, &argv, &environment)
        guard rc == 0 else {
            close(writeEnd)
            throw CLIError(message: "cannot start the reaper (posix_spawn /proc/self/exe): \(String(cString: strerror(rc)))", status: ExitStatus.failure)
        }
        return ReaperProcess(pid: pid, writeEnd: writeEnd)
    }

    /// Closes the pipe, so the reaper deletes what this process left, and waits up to
    /// `seconds` for it to exit. Returns its exit status, or nil when it did not exit in time.
    @discardableResult
    func finish(seconds: Double = 5) -> Int32? {
        if writeEnd >= 0 { close(writeEnd); writeEnd = -1 }
        let deadline = ContinuousClock.now + .clampedSeconds(seconds)
        while true {
            var status: Int32 = 0
            let waited = waitpid(pid, &status, WNOHANG)
            if waited == pid { return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }
            if waited < 0 && errno != EINTR { return nil }
            if ContinuousClock.now >= deadline { return nil }
            usleep(10_000)
        }
    }

    deinit { finish() }
}
