import Glibc
import DatapathSuite
import Vhost
import VhostScript

// MARK: scripts: the shipped examples, and scripts that are not in the repository

/// Where the shipped scripts are: `VHOST_EXAMPLES`, else /opt/examples (where Scripts/test puts
/// them in the VM).
let examplesDirectory = getenv("VHOST_EXAMPLES").map { String(cString: $0) } ?? "/opt/examples"

/// Every `.vhost` file under `directory`, except the `lib/` includes, sorted.
func scriptFiles(under directory: String) -> [String] {
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var found: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard !name.hasPrefix(".") else { continue }
        let path = directory + "/" + name
        if entry.pointee.d_type == UInt8(DT_DIR) {
            if name != "lib" { found += scriptFiles(under: path) }
        } else if name.hasSuffix(".vhost") {
            found.append(path)
        }
    }
    return found.sorted()
}

/// Runs a script on the kernel; returns its output, or throws the runner's failure with it.
/// `observer` sees every ioctl and every request refused before one.
@discardableResult
func runScript(_ text: String, name: String, keepGoing: Bool = false, observer: IoctlObserver? = nil) throws -> [String] {
    var output: [String] = []
    var options = ScriptRunner.Options()
    options.keepGoing = keepGoing
    options.observer = observer
    let runner = ScriptRunner(options: options) { output.append($0) }
    do {
        try runner.run(try Script(parsing: text, name: name))
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
            let script = try Script(contentsOf: path)
            var output: [String] = []
            let runner = ScriptRunner { output.append($0) }
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

/// The beginning of a queue pair with a tap, for the inline scripts (tap vhscript9).
let inlineQueuePair = """
    tap vhscript9
    open
    set-owner
    set-features VERSION_1 EVENT_IDX INDIRECT_DESC
    memory 4M
    set-mem-table
    ring 0 64
    ring 1 64
    set-vring-num 0 64
    set-vring-num 1 64
    set-vring-addr 0
    set-vring-addr 1
    set-vring-kick 0
    set-vring-kick 1
    set-vring-call 0
    set-vring-call 1
    set-vring-err 0
    set-vring-err 1
    set-vnet-hdr-size 12
    set-backend 0 tap
    set-backend 1 tap

    """

let inlineScriptTests: [KernelTest] = [
    KernelTest(name: "script (not shipped): raw set-mem-table: a zero-sized region is the kernel's EFAULT, overlapping regions are accepted") {
        // vhost.c vhost_set_memory → vhost_iotlb_add_range_ctx: last < start (size 0) is -EFAULT;
        // the interval tree takes overlapping ranges.
        try runScript("""
            open
            set-owner
            memory 1M
            expect EFAULT
            set-mem-table 0x40000000 0 0x40000000
            expect ok
            set-mem-table 0x40000000 0x10000 0x40000000 0x40008000 0x10000 0x40010000
            """, name: "raw-mem-table.vhost")
    },
    KernelTest(name: "script (not shipped): raw set-vring-addr flags=0x2 is the kernel's EOPNOTSUPP (only VHOST_VRING_F_LOG exists)") {
        try runScript("""
            open
            set-owner
            set-features VERSION_1
            memory 1M
            set-mem-table
            ring 0 256
            set-vring-num 0 256
            expect EOPNOTSUPP
            set-vring-addr 0 flags=0x2
            set-vring-addr 0
            """, name: "raw-vring-flags.vhost")
    },
    KernelTest(name: "script (not shipped): a used ring past the end of mapped memory is refused before the ioctl; no VHOST_SET_VRING_ADDR reaches the kernel") {
        let events = Locked<[IoctlEvent]>([])
        let observer: IoctlObserver = { event in events.withLock { $0.append(event) } }
        do {
            // 64 KiB of guest memory; a used ring of 256 entries (2054 bytes) 16 bytes before its end.
            try runScript("""
                open
                set-owner
                memory 64K
                set-mem-table
                set-vring-num 0 256
                set-vring-addr 0 desc=0x40000000 avail=0x40001000 used=0x4000fff0
                """, name: "used-past-memory.vhost", observer: observer)
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
        try runScript("""
            open
            expect EPERM
            set-vring-num 0 256
            set-owner
            expect EBADF
            set-vring-kick 0 closed
            expect EINVAL
            set-vring-call 0 file
            set-vring-call 0
            """, name: "fds.vhost")
    },
    KernelTest(name: "script (not shipped): a device-writable TX descriptor and an avail index jump are ring errors") {
        try runScript(inlineQueuePair + """
            let buffer = alloc 2048
            desc 1 0 addr=$buffer len=64 flags=WRITE
            avail 1 0 0
            avail-idx 1 1
            kick 1
            expect ring-error 1
            """, name: "writable-tx.vhost")
        try runScript(inlineQueuePair + """
            avail-idx 1 200
            kick 1
            expect ring-error 1
            """, name: "avail-jump.vhost")
    },
    KernelTest(name: "script (not shipped): variables, repeat and value expectations drive frames both ways; the kernel's bases match") {
        let output = try runScript(inlineQueuePair + """
            repeat 5 as i {
                send 1 count=7 size=100
                host-expect count=7
            }
            let b = get-vring-base 1
            expect $b == 35
            post 0 count=16
            host-send count=10 size=300
            receive 0 count=10
            let features = get-features
            expect $features contains VERSION_1 EVENT_IDX
            expect features lacks 0x1000000000000000
            """, name: "frames.vhost")
        try expect(output.contains { $0.contains("$b == 35: yes") }, "no value check in the output: \(output.suffix(5))")
    },
    KernelTest(name: "script (not shipped): a wrong expectation fails the run; with keep-going every miss is reported and the run goes on") {
        let wrong = """
            open
            expect EBUSY
            set-owner
            let f = get-features
            expect $f contains 0x8000000000000000
            expect ok
            set-owner
            """
        do {
            try runScript(wrong, name: "wrong.vhost")
            throw KernelTestFailure("a script expecting EBUSY from the first SET_OWNER passed")
        } catch let failure as KernelTestFailure {
            try expect("\(failure)".contains("wrong.vhost:3:1: expected EBUSY from set-owner, found success"), "unexpected failure text: \(failure)")
        }
        do {
            try runScript(wrong, name: "wrong.vhost", keepGoing: true)
            throw KernelTestFailure("keep-going passed a script with misses")
        } catch let failure as KernelTestFailure {
            let text = "\(failure)"
            try expect(text.contains("3 expectation(s) missed") && text.contains("wrong.vhost:5:1: expected $f contains") && text.contains("wrong.vhost:7:1: set-owner failed"),
                       "keep-going did not report all three misses: \(text)")
        }
    },
]
