import Glibc
import DatapathSuite
import KernelTierScripts
import Vhost
import VhostScript

// MARK: scripts: the shipped examples, and scripts that are not in the repository

/// Where the shipped scripts are: `VHOST_EXAMPLES`, else /opt/examples (where Scripts/test puts
/// them in the VM).
let examplesDirectory = getenv("VHOST_EXAMPLES").map { String(cString: $0) } ?? "/opt/examples"


/// The commands the scripts of this tier ran: every script, shipped or inline, runs on a runner
/// from `scriptRunner`, and the tier's last test (`scriptCoverageTests`) fails for each command
/// of the language that none of them ran as expected.
let scriptCoverage = ScriptCoverage()

/// The one way this tier makes a script runner (on the kernel's device): every command line it
/// runs is recorded in `scriptCoverage`.
func scriptRunner(keepGoing: Bool = false, observer: IoctlObserver? = nil, output: @escaping (String) -> Void) -> ScriptRunner {
    var options = ScriptRunner.Options()
    options.keepGoing = keepGoing
    options.observer = observer
    return scriptCoverage.runner(options: options, output: output)
}

/// Runs an inline script on the kernel; returns its output, or throws the runner's failure with
/// it. `observer` sees every ioctl and every request refused before one.
@discardableResult
func runScript(_ script: KernelTierScript, keepGoing: Bool = false, observer: IoctlObserver? = nil) throws -> [String] {
    var output: [String] = []
    let runner = scriptRunner(keepGoing: keepGoing, observer: observer) { output.append($0) }
    do {
        try runner.run(try Script(parsing: script.text, name: script.name))
    } catch let failure as ScriptRunner.Failure {
        throw KernelTestFailure("\(failure)\n  output:\n    " + output.suffix(12).joined(separator: "\n    "))
    }
    return output
}

let shippedScriptTests: [KernelTest] = {
    let files = scriptFiles(under: examplesDirectory)
    guard !files.isEmpty else {
        return [KernelTest(name: "shipped scripts: found in \(examplesDirectory)") {
            throw KernelTestFailure("no .vhost scripts under \(examplesDirectory): Scripts/test copies Examples/ there (set VHOST_EXAMPLES on a host)")
        }]
    }
    return files.map { path in
        KernelTest(name: "shipped script \(path.dropFirst(examplesDirectory.count + 1)) passes") {
            // The kernel-rules scripts include ../lib: the examples' root is allowed, as
            // `--include-path Examples` allows it on the command line.
            let script = try Script(contentsOf: path, includeDirectories: [Script.directory(of: path), examplesDirectory])
            var output: [String] = []
            let runner = scriptRunner { output.append($0) }
            do {
                try runner.run(script)
            } catch {
                throw KernelTestFailure("\(error)\n  output:\n    " + output.suffix(12).joined(separator: "\n    "))
            }
            let answers = output.filter { $0.contains("as expected") || $0.contains(": yes (") }
            say("  \(output.count) lines, \(answers.count) expectations met; " + (answers.last.map { "last: \($0.split(separator: " ", maxSplits: 1).last ?? "")" } ?? ""))
        }
    }
}()

let inlineScriptTests: [KernelTest] = [
    KernelTest(name: "script (not shipped): raw set-mem-table: a zero-sized region is the kernel's EFAULT, overlapping regions are accepted") {
        try runScript(KernelTierScripts.rawMemoryTable)
    },
    KernelTest(name: "script (not shipped): raw set-vring-addr flags=0x2 is the kernel's EOPNOTSUPP (only VHOST_VRING_F_LOG exists)") {
        try runScript(KernelTierScripts.rawVringFlags)
    },
    KernelTest(name: "script (not shipped): a used ring past the end of mapped memory is refused before the ioctl; no VHOST_SET_VRING_ADDR reaches the kernel") {
        let events = Locked<[IoctlEvent]>([])
        let observer: IoctlObserver = { event in events.withLock { $0.append(event) } }
        do {
            try runScript(KernelTierScripts.usedRingPastMemory, observer: observer)
            throw KernelTestFailure("a used ring running past mapped memory was not refused")
        } catch let failure as KernelTestFailure {
            try expect("\(failure)".contains("refused before the ioctl"), "the run failed otherwise: \(failure)")
        }
        let seen = events.withLock { $0 }
        try expect(seen.contains { if case .refused(.vhost(.setVringAddress), _) = $0.operation { true } else { false } },
                   "the observer saw no refused VHOST_SET_VRING_ADDR: \(seen)")
        try expect(!seen.contains { $0.reachedKernel && $0.request?.kind == .setVringAddress }, "VHOST_SET_VRING_ADDR reached the kernel: \(seen)")
        try expect(seen.contains { $0.reachedKernel && $0.request?.kind == .setVringNum }, "the requests before it did not reach the kernel: \(seen)")
    },
    KernelTest(name: "script (not shipped): a vring ioctl before SET_OWNER is EPERM; a closed fd as kick is EBADF; a regular file as call is EINVAL") {
        try runScript(KernelTierScripts.fileDescriptors)
    },
    KernelTest(name: "script (not shipped): a device-writable TX descriptor and an avail index jump are ring errors") {
        try runScript(KernelTierScripts.writableTransmitDescriptor)
        try runScript(KernelTierScripts.availIndexJump)
    },
    KernelTest(name: "script (not shipped): variables, repeat and value expectations drive frames both ways; the kernel's bases match") {
        let output = try runScript(KernelTierScripts.frames)
        try expect(output.contains { $0.contains("$b == 35: yes") }, "no value check in the output: \(output.suffix(5))")
    },
    KernelTest(name: "script (not shipped): a wrong expectation fails the run; with keep-going every miss is reported and the run goes on") {
        let wrong = KernelTierScripts.wrongExpectations
        do {
            try runScript(wrong)
            throw KernelTestFailure("a script expecting EBUSY from the first SET_OWNER passed")
        } catch let failure as KernelTestFailure {
            try expect("\(failure)".contains("wrong.vhost:3:1: expected EBUSY from set-owner, found success"), "unexpected failure text: \(failure)")
        }
        do {
            try runScript(wrong, keepGoing: true)
            throw KernelTestFailure("keep-going passed a script with misses")
        } catch let failure as KernelTestFailure {
            let text = "\(failure)"
            try expect(text.contains("3 expectation(s) missed") && text.contains("wrong.vhost:5:1: expected $f contains") && text.contains("wrong.vhost:7:1: set-owner failed"),
                       "keep-going did not report all three misses: \(text)")
        }
    },
]

// MARK: a use of every command on the kernel

/// The features-array requests on this kernel: 6.17 has them (sid's 7.x), older kernels do not.
let featuresArrayScriptTest: KernelTest = kernelVersion() >= (6, 17)
    ? KernelTest(name: "script (not shipped, kernel 6.17 or later): VHOST_GET_FEATURES_ARRAY answers bits 65 and 67 (not 66, 68) without an owner; SET_FEATURES_ARRAY refuses bit 68 (EOPNOTSUPP) and takes 65 and 67") {
        try runScript(KernelTierScripts.featuresArray)
    }
    : KernelTest(name: "script (not shipped, kernel before 6.17): no feature-array requests — GET and SET_FEATURES_ARRAY are EPERM before SET_OWNER, ENOBUFS after (COUNT read as a vring index)") {
        try runScript(KernelTierScripts.featuresArrayAbsent)
    }

/// The worker-mode requests on this kernel: 6.12.y (trixie) and 6.17 (sid) have them, 6.1 does not.
let forkOwnerScriptTest: KernelTest = kernelVersion() >= (6, 12)
    ? KernelTest(name: "script (not shipped, kernel 6.12 or later): VHOST_SET/GET_FORK_FROM_OWNER — kthread and task read back before SET_OWNER, 2 is EINVAL; after it SET is EBUSY and GET still answers") {
        try runScript(KernelTierScripts.forkOwner)
    }
    : KernelTest(name: "script (not shipped, kernel before 6.12): no worker-mode requests — GET and SET_FORK_FROM_OWNER are EPERM before SET_OWNER") {
        try runScript(KernelTierScripts.forkOwnerAbsent)
    }

/// Inline scripts that give the commands no other script of this tier runs a use on the
/// kernel (`scriptCoverageTests` checks that every command has one).
let commandScriptTests: [KernelTest] = [
    KernelTest(name: "script (not shipped): RESET_OWNER drops the owner and every vring setting (EPERM until a new SET_OWNER, which is not EBUSY; base back to 0); close, then open, gives a device with no owner") {
        try runScript(KernelTierScripts.resetOwnerAndClose)
    },
    KernelTest(name: "script (not shipped): VHOST_NEW_WORKER is not routed by vhost-net — EPERM before SET_OWNER, ENOTTY for worker 0, ENOBUFS for worker 5") {
        try runScript(KernelTierScripts.newWorker)
    },
    KernelTest(name: "script (not shipped, Debian's kernels: no CONFIG_VHOST_CROSS_ENDIAN_LEGACY): VHOST_SET/GET_VRING_ENDIAN are EPERM before SET_OWNER, ENOBUFS for index 2, ENOTTY otherwise") {
        try runScript(KernelTierScripts.vringEndianWithoutCrossEndian)
    },
    featuresArrayScriptTest,
    forkOwnerScriptTest,
    KernelTest(name: "script (not shipped): VHOST_SET/GET_VRING_BUSYLOOP_TIMEOUT — EPERM before SET_OWNER, 0 by default, 50 read back, ENOBUFS for index 2; frames both ways while the worker busy-polls") {
        try runScript(KernelTierScripts.busyloop)
    },
    KernelTest(name: "script (not shipped): the tap's requests (TUNGETVNETHDRSZ, TUNSETSNDBUF 0 EINVAL and 65536 read back, TUNSETOFFLOAD TSO without CSUM EINVAL, TUNGETFEATURES, TUNSETQUEUE EINVAL on a single-queue tap); the RX call waited for; TX's used index read with used-idx and read; TUNSETCARRIER and the link off and on") {
        try runScript(KernelTierScripts.tapRequests)
    },
]

/// The tier's last test: every command of the script language ran, as its script expected, in
/// a script of this tier. It reads what `scriptCoverage` recorded, so it comes after every test
/// that runs a script.
let scriptCoverageTests: [KernelTest] = [
    KernelTest(name: "script coverage: every command of the script language (ScriptCommands.all) ran, as its script expected, in a shipped or inline script of this tier") {
        let counts = scriptCoverage.counts, missing = scriptCoverage.missing
        say("  \(ScriptCommands.all.count - missing.count) of \(ScriptCommands.all.count) commands ran in \(scriptCoverage.runners) script runs; least used: "
            + counts.sorted { $0.value != $1.value ? $0.value < $1.value : $0.key < $1.key }.prefix(5).map { "\($0.key) \($0.value)×" }.joined(separator: ", "))
        try expect(missing.isEmpty, "\(missing.count) command(s) never ran as expected in this tier's scripts: \(missing.joined(separator: ", ")) "
                   + "(give each a use in Examples/ or Sources/KernelTierScripts; a test filter that skips script tests leaves their commands out)")
    },
]

/// The scripts that crashed (SIGILL) or hung the runner before the typed rewrite, run against the
/// real `/dev/vhost-net`: each must end in a parse error or a run failure that names what was
/// wrong, within a second, and the process must go on (Tests/cli/hostile-scripts.sh checks the
/// CLI's exit codes and single error line for the same scripts on the host).
let crashScriptTests: [KernelTest] = [
    KernelTest(name: "script (not shipped): the scripts that once crashed or hung the runner end in one typed error within a second on the kernel's device") {
        let scripts: [(name: String, text: String)] = [
            ("memory near the top of the address space", "memory 0x7ffffffffffff001"),
            ("alloc of 2^64 - 1 bytes", "memory 1M\nalloc 0xffffffffffffffff"),
            ("sleep of 2^62 ms", "sleep 0x4000000000000000"),
            ("memory at the top of the GPA space", "memory 4K 0xfffffffffffff000\nalloc 16"),
            ("features array of 2^64 - 1 words", "open\nset-owner\nget-features-array 0xffffffffffffffff"),
            ("an IOTLB wait of 2^64 - 1 ms", "open\nset-owner\niotlb-miss timeout=0xffffffffffffffff"),
            ("a ring size of $i-1 with $i = 0", "open\nset-owner\nmemory 1M\nrepeat 2 as i {\nring 0 $i-1\n}"),
        ]
        for (name, text) in scripts {
            let started = ContinuousClock.now
            var outcome = ""
            do {
                let script = try Script(parsing: text, name: "crash")
                try scriptRunner { _ in }.run(script)
                outcome = "ran to the end"
            } catch let error as Script.ParseError {
                outcome = "refused at parse: \(error.problems.first ?? "")"
                try expect(error.problems.count == 1 && error.problems[0].hasPrefix("crash:"), "\(name): \(error.problems)")
            } catch {
                outcome = "stopped: \(error)"
            }
            let seconds = started.duration(to: .now).inSeconds
            say("  \(name): \(outcome.prefix(140)) (\(KernelTestRunner.formatted(seconds)) s)")
            try expect(outcome != "ran to the end", "\(name) ran to the end")
            try expect(seconds < 1, "\(name) took \(seconds) s")
        }
        // Include fan-out: six includes of itself and one through ./, cycles found on canonical paths.
        let directory = "/tmp/vht-fanout"
        mkdir(directory, 0o755)
        let file = directory + "/a.vhost"
        let text = String(repeating: "include \"./a.vhost\"\n", count: 6) + "include \"././a.vhost\"\n"
        guard let handle = fopen(file, "w") else { throw KernelTestFailure("cannot write \(file)") }
        fputs(text, handle); fclose(handle)
        let started = ContinuousClock.now
        do {
            _ = try Script(contentsOf: file)
            throw KernelTestFailure("the include fan-out parsed")
        } catch let error as Script.ParseError {
            let seconds = started.duration(to: .now).inSeconds
            say("  include fan-out: \(error.problems.count) problems, the first \(error.problems[0]) (\(KernelTestRunner.formatted(seconds)) s)")
            try expect(seconds < 1 && error.problems.allSatisfy { $0.contains("would include itself") }, "\(error.problems)")
        }
    },
]
