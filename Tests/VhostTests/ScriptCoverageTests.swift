import Glibc
import KernelTierScripts
import Testing
import Vhost
@testable import VhostScript

/// The commands of every statement in `statements`, includes and repeat bodies too.
private func commands(in statements: [Statement]) -> Set<String> {
    var found: Set<String> = []
    for statement in statements {
        switch statement {
        case .invoke(let invocation): found.insert(invocation.command)
        case .loop(_, _, let body, _): found.formUnion(commands(in: body))
        case .check, .expectRingError: break
        }
    }
    return found
}

/// The repository's Examples/ directory, from this file's path.
private let examplesDirectory: String = {
    var path = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    path.removeLast(3)  // Tests/VhostTests/ScriptCoverageTests.swift
    return path.joined(separator: "/") + "/Examples"
}()

/// The repository's docs/scripting.md, from this file's path.
private let scriptingManual: String = examplesDirectory.dropLast("Examples".count) + "docs/scripting.md"

/// The shipped scripts the kernel tier runs: every `.vhost` file under Examples/ but the `lib/`
/// includes (the tier's own `scriptFiles`).
private func shippedScripts(under directory: String = examplesDirectory) -> [String] { scriptFiles(under: directory) }

@Suite("Coverage of the script language by the kernel tier's scripts")
struct ScriptCoverageTests {
    @Test("every inline script of the kernel tier parses, under a name of its own")
    func inlineScriptsParse() throws {
        for script in KernelTierScripts.all {
            do {
                _ = try Script(parsing: script.text, name: script.name)
            } catch {
                Issue.record("\(script.name) does not parse: \(error)")
            }
        }
        let names = KernelTierScripts.all.map(\.name)
        #expect(Set(names).count == names.count, "two inline scripts share a name: \(names)")
    }

    @Test("every command of the language is written in a shipped script or an inline kernel-tier script (the kernel tier checks that each one ran)")
    func everyCommandHasAUse() throws {
        let shipped = shippedScripts()
        #expect(shipped.count >= 14, "found only \(shipped.count) scripts under \(examplesDirectory)")
        #expect(shipped.contains { $0.hasSuffix("/dirty-log.vhost") } && shipped.contains { $0.hasSuffix("/iotlb.vhost") })
        var used: Set<String> = []
        for path in shipped { used.formUnion(commands(in: try Script(contentsOf: path, includeDirectories: [Script.directory(of: path), examplesDirectory]).statements)) }
        for script in KernelTierScripts.all { used.formUnion(commands(in: try Script(parsing: script.text, name: script.name).statements)) }
        let missing = ScriptCommands.all.map(\.name).filter { !used.contains($0) }
        #expect(missing.isEmpty, "no shipped or inline kernel-tier script uses: \(missing.joined(separator: ", "))")
    }

    @Test("docs/scripting.md's command table lists every command of the language")
    func manualListsEveryCommand() throws {
        let text = try #require(Script.readRegularFile(scriptingManual, limit: 1 << 20), "cannot read \(scriptingManual)")
        let start = try #require(text.range(of: "\n## Commands\n"), "no Commands section")
        let rest = text[start.upperBound...]
        let table = rest.range(of: "\n## ").map { rest[..<$0.lowerBound] } ?? rest
        // Each command appears as `name` or `name ARG…` in the table.
        let missing = ScriptCommands.all.map(\.name).filter { !table.contains("`\($0)`") && !table.contains("`\($0) ") }
        #expect(missing.isEmpty, "docs/scripting.md's Commands section does not list: \(missing.joined(separator: ", "))")
    }

    @Test("the command observer hears each line that ran, as expected or not, and none that did not run")
    func commandObserverHearsWhatRan() throws {
        let text = """
            open
            expect EPERM
            set-vring-num 0 64
            repeat 0 {
                print never
            }
            expect EBUSY
            set-owner
            print after
            """
        func run(keepGoing: Bool) throws -> [ScriptRunner.CommandRun] {
            let runs = Locked<[ScriptRunner.CommandRun]>([])
            var options = ScriptRunner.Options()
            options.device = .inProcess()
            options.keepGoing = keepGoing
            options.commandObserver = { run in runs.withLock { $0.append(run) } }
            let runner = ScriptRunner(options: options) { _ in }
            #expect(throws: ScriptRunner.Failure.self) { try runner.run(try Script(parsing: text, name: "observed.vhost")) }
            return runs.withLock { $0 }
        }
        let all = try run(keepGoing: true)
        #expect(all.map(\.command) == ["open", "set-vring-num", "set-owner", "print"])
        #expect(all.map(\.asExpected) == [true, true, false, true])
        #expect(all.map(\.location.line) == [1, 3, 8, 9])
        #expect(all.allSatisfy { $0.location.file == "observed.vhost" })
        // Without keep-going the miss ends the run: the line after it is never reported.
        let stopped = try run(keepGoing: false)
        #expect(stopped.map(\.command) == ["open", "set-vring-num", "set-owner"])
        #expect(stopped.last?.asExpected == false)
    }

    @Test("ScriptCoverage counts the commands that ran as expected and names every other command of the table as missing")
    func coverageRecord() throws {
        let coverage = ScriptCoverage()
        var options = ScriptRunner.Options()
        options.device = .inProcess()
        let told = Locked<Int>(0)
        options.commandObserver = { _ in told.withLock { $0 += 1 } }
        try coverage.runner(options: options) { _ in }.run(try Script(parsing: "open\nset-owner\nexpect EBUSY\nset-owner\nget-features", name: "a.vhost"))
        // A miss does not count: close ran, but not as expected.
        #expect(throws: ScriptRunner.Failure.self) {
            try coverage.runner(options: options) { _ in }.run(try Script(parsing: "open\nexpect EPERM\nclose", name: "b.vhost"))
        }
        #expect(coverage.counts == ["open": 2, "set-owner": 2, "get-features": 1])
        #expect(coverage.runners == 2)
        #expect(told.withLock { $0 } == 6, "the options' own observer is told too")
        let missing = coverage.missing
        #expect(missing.count == ScriptCommands.all.count - 3)
        #expect(missing.contains("close") && !missing.contains("open") && !missing.contains("get-features"))
        #expect(missing == ScriptCommands.all.map(\.name).filter { !["open", "set-owner", "get-features"].contains($0) }, "in the table's order")
    }

    @Test("read-log reads the dirty log's bytes, little-endian, by offset; outside the log, or with no log, it fails")
    func readLog() throws {
        var options = ScriptRunner.Options()
        options.device = .inProcess()
        let runner = ScriptRunner(options: options) { _ in }
        try runner.run(try Script(parsing: "open\nlog 8K\nread-log 0x1000\nexpect value == 0", name: "log.vhost"))
        // What the kernel would set (vhost.c log_write: bit page % 8 of byte page / 8), set by hand.
        let start = try #require(runner.session.log?.hostRanges.first?.start)
        let log = try #require(UnsafeMutableRawPointer(bitPattern: UInt(start)))
        log.storeBytes(of: 0x30, toByteOffset: 0x1000, as: UInt8.self)
        log.storeBytes(of: 0x01, toByteOffset: 0x1001, as: UInt8.self)
        try runner.run(try Script(parsing: """
            read-log 0x1000
            expect value == 0x30
            expect value contains 0x10
            expect value lacks 0x0f
            let two = read-log 0x1000 width=2
            expect $two == 0x130
            read-log 0x1fff
            """, name: "log.vhost"))
        let outside = try runInProcess("open\nlog 8K\nread-log 0x1fff width=2")
        #expect((outside.failure?.description ?? "").contains("outside the dirty log of 8192 bytes"))
        let none = try runInProcess("open\nread-log 0")
        #expect((none.failure?.description ?? "").contains("read-log needs a log: put `log SIZE` first"))
    }
}

@Suite("The frame pipe's tun requests")
struct PipeTunRequestTests {
    @Test("TUNSETOFFLOAD on the in-process device's pipe takes what tun.c set_offload takes: every offload needs CSUM, USO4 and USO6 go together, UDP-tunnel GSO needs a plain GSO, an unknown bit is EINVAL")
    func offloads() throws {
        let run = try runInProcess("""
            tap vhu-off
            open
            expect EINVAL
            set-offloads tso4
            expect EINVAL
            set-offloads csum uso4
            expect EINVAL
            set-offloads csum tso-ecn
            expect EINVAL
            set-offloads csum udp-tunnel-gso
            expect EINVAL
            set-offloads csum 0x200
            set-offloads csum tso4 tso6 tso-ecn ufo
            set-offloads csum uso4 uso6 udp-tunnel-gso udp-tunnel-gso-csum
            set-offloads csum
            set-offloads
            """)
        #expect(run.failure == nil, "\(run.failure?.description ?? "")")
    }
}
