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
@discardableResult
func runScript(_ text: String, name: String, keepGoing: Bool = false) throws -> [String] {
    var output: [String] = []
    var options = ScriptRunner.Options()
    options.keepGoing = keepGoing
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
