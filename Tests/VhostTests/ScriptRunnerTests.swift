import Glibc
import Testing
import Vhost
import VhostModel
@testable import VhostScript
import Virtio

/// Runs `text` on the in-process device; returns the output and the failure, if any.
func runInProcess(_ text: String, name: String = "test.vhost", limits: ScriptLimits = .standard, observer: IoctlObserver? = nil,
                  ringObserver: RingObserver? = nil) throws -> (output: [String], failure: ScriptRunner.Failure?, runner: ScriptRunner) {
    let script = try Script(parsing: text, name: name, limits: limits)
    var options = ScriptRunner.Options()
    options.device = .inProcess()
    options.limits = limits
    options.observer = observer
    options.ringObserver = ringObserver
    let lines = Locked<[String]>([])
    let runner = ScriptRunner(options: options) { line in lines.withLock { $0.append(line) } }
    do throws(ScriptRunner.Failure) {
        try runner.run(script)
        return (lines.withLock { $0 }, nil, runner)
    } catch {
        return (lines.withLock { $0 }, error, runner)
    }
}

/// The problems of a script that must not parse.
func parseProblems(_ text: String, name: String = "s.vhost", limits: ScriptLimits = .standard, loader: Script.FileLoader? = nil) -> [String] {
    do {
        _ = try Script(parsing: text, name: name, limits: limits, loader: loader)
        return []
    } catch {
        return error.problems
    }
}

@Suite("Script limits: every number checked, no input crashes or hangs")
struct ScriptLimitTests {
    @Test("numbers that crashed the runner are parse errors naming the limit or the field's width (exit 64)")
    func hugeLiterals() {
        let cases: [(String, String)] = [
            ("memory 0x7ffffffffffff001", "the limit on guest memory, 16 GiB"),
            ("memory 1M\nalloc 0xffffffffffffffff", "the limit on guest memory, 16 GiB"),
            ("sleep 0x4000000000000000", "the limit on waits, 60000 ms"),
            ("memory 4K 0xfffffffffffff000\nalloc 16", "inside the 64-bit guest-physical space"),
            ("open\nget-features-array 0xffffffffffffffff", "0 to 1024 (the most this tool passes)"),
            ("open\niotlb-miss timeout=0xffffffffffffffff", "the limit on waits, 60000 ms"),
            ("send 1 timeout=0xffffffffffffffff", "the limit on waits, 60000 ms"),
            ("receive 0 timeout=60001", "the limit on waits, 60000 ms"),
            ("host-expect count=5 timeout=1G", "the limit on waits, 60000 ms"),
            ("set-vring-num 0 0x100000000", "at most 32 bits (the kernel's field)"),
            ("set-vring-addr 0 flags=0x100000000", "at most 32 bits"),
            ("set-vnet-hdr-size 2147483648", "from -2147483648 to 2147483647"),
            ("write 0x40000000 0x100 width=1", "at most 8 bits"),
            ("desc 1 65536", "at most 16 bits"),
            ("repeat 0x10000000000 {\n}", "the limit on repeat iterations in one run, 1000000"),
            ("expect ring-error 0 within=99999999999", "the limit on waits"),
            ("log 2G", "the limit on a dirty log, 1 GiB"),
            ("memory 8G 0x40000000 9G 0x500000000", "at most 16 GiB in all"),
            ("memory 4K 0x40000001", "aligned to the page size"),
            ("ring 0 3", "a power of 2"),
            ("set-features HOST_UDP_TUNNEL_GSO", "use set-features-array"),
        ]
        for (text, limit) in cases {
            let problems = parseProblems(text)
            #expect(problems.count == 1 && problems[0].hasPrefix("s.vhost:") && problems[0].contains(limit), "\(text): \(problems)")
        }
    }

    @Test("values from variables are checked when the line runs: overflow and range are run errors (exit 1), not traps")
    func variables() throws {
        let underflow = try runInProcess("memory 1M\nrepeat 3 as i {\n  ring 0 $i-1\n}\n")
        #expect(underflow.failure?.description == "test.vhost:3:3: ring failed: $i-1 with $i = 0 is below 0")
        #expect(underflow.failure?.isLimit == false && underflow.failure?.causes.first == .outOfRange("$i-1 with $i = 0 is below 0"))
        let overflow = try runInProcess("memory 1M\nlet a = alloc 64\nwrite $a 0xffffffffffffffff\nlet v = read $a\nread $v+1\n")
        #expect(overflow.failure?.description == "test.vhost:5:1: read failed: $v+1 with $v = 18446744073709551615 is above 2^64 - 1")
        let outside = try runInProcess("memory 1M\nlet a = alloc 64\nread $a+0x7fffffffffffffff\n")
        #expect(outside.failure?.causes.first.map { if case .outOfGuestMemory = $0 { true } else { false } } == true)
        let wide = try runInProcess("open\nset-owner\nlet f = get-features\nset-vring-num 0 $f\n")
        #expect(wide.failure?.causes.first.map { if case .outOfRange = $0 { true } else { false } } == true, "\(String(describing: wide.failure))")
        let tooLong = try runInProcess("memory 1M\nlet a = alloc 64\nsleep $a\n")
        #expect(tooLong.failure?.isLimit == true && tooLong.failure?.description.contains("the limit on waits") == true)
    }

    @Test("repeat iterations of a whole run are bounded, however loops nest; the limit ends the run as a limit")
    func iterations() throws {
        var limits = ScriptLimits()
        limits.iterations = 1000
        let nested = try runInProcess("repeat 100 {\n repeat 100 {\n  print x\n }\n}\n", limits: limits)
        #expect(nested.failure?.isLimit == true && nested.failure?.description.contains("more than 1000 iterations") == true)
        #expect(nested.output.filter { $0.hasSuffix(": print x") }.count < 1000)
    }

    @Test("includes: a cycle however the path is spelt is found by canonical path, fan-out stops at the include limit, devices are not read")
    func includes() throws {
        let directory = "/tmp/vhost-script-includes-\(getpid())"
        mkdir(directory, 0o755)
        defer { _ = try? FileManagerLite.removeTree(directory) }
        let cyclic = (0..<6).map { _ in "include \"./a.vhost\"" }.joined(separator: "\n") + "\ninclude \"././a.vhost\"\n"
        #expect(KernelInfo.writeFile(directory + "/a.vhost", cyclic))
        let start = ContinuousClock.now
        do {
            _ = try Script(contentsOf: directory + "/a.vhost")
            Issue.record("a cyclic include parsed")
        } catch {
            #expect(error.problems.count == 7 && error.problems.allSatisfy { $0.contains("would include itself") }, "\(error.problems)")
        }
        // Fan-out without a cycle: 10 levels of 10 includes each would be 10^10 statements.
        for level in 0..<10 {
            let body = level == 9 ? "print leaf\n" : String(repeating: "include \"l\(level + 1).vhost\"\n", count: 10)
            #expect(KernelInfo.writeFile(directory + "/l\(level).vhost", body))
        }
        do {
            _ = try Script(contentsOf: directory + "/l0.vhost")
            Issue.record("an include fan-out of 10^10 statements parsed")
        } catch {
            #expect(error.problems.last?.contains("expected at most 1000 includes in all") == true, "\(error.problems.suffix(2))")
        }
        // A device is never read as an include, even from a directory the options allow.
        do {
            _ = try Script(parsing: "include \"/dev/zero\"", name: "s.vhost", includeDirectories: ["/dev"])
            Issue.record("an include of /dev/zero parsed")
        } catch {
            #expect(error.problems.first?.contains("cannot read the included file /dev/zero") == true, "\(error.problems)")
        }
        #expect(start.duration(to: .now).inMilliseconds < 10_000)
        let deep = parseProblems("include \"d.vhost\"", name: "d0.vhost", loader: { path in "include \"x\(path)\"" })
        #expect(deep.first?.contains("at most 16 deep (the limit)") == true, "\(deep)")
    }
}

/// Removes a directory of plain files (the tests' scratch space).
enum FileManagerLite {
    static func removeTree(_ path: String) throws {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(path + "/" + name) }
            }
            closedir(dir)
        }
        rmdir(path)
    }
}

@Suite("Script requests: raw forms reach the device; the tool's memory stays safe")
struct ScriptRequestTests {
    static let owned = "open\nset-owner\nset-features VERSION_1\nmemory 64K\nset-mem-table\n"

    @Test("a used ring past the end of memory is refused before VHOST_SET_VRING_ADDR, and a ring grown past it before VHOST_SET_VRING_NUM")
    func refusedBeforeTheIoctl() throws {
        let events = Locked<[IoctlEvent]>([])
        let observer: IoctlObserver = { event in events.withLock { $0.append(event) } }
        let pastEnd = try runInProcess(Self.owned + "set-vring-num 0 256\nset-vring-addr 0 desc=0x40000000 avail=0x40001000 used=0x4000fff0\n", observer: observer)
        #expect(pastEnd.failure?.description.contains("refused before the ioctl") == true, "\(String(describing: pastEnd.failure))")
        let seen = events.withLock { $0 }
        #expect(seen.contains { if case .refused(.vhost(.setVringAddress), _) = $0.operation { true } else { false } })
        #expect(!seen.contains { $0.request?.kind == .setVringAddress }, "VHOST_SET_VRING_ADDR reached the device")
        #expect(seen.contains { $0.request?.kind == .setVringNum && $0.reachedKernel })

        events.withLock { $0.removeAll() }
        let grown = try runInProcess(Self.owned + "ring 0 256\nset-vring-num 0 256\nset-vring-addr 0\nset-vring-num 0 32768\n", observer: observer)
        #expect(grown.failure?.description.contains("set-vring-num failed: VHOST_SET_VRING_NUM(index: 0, num: 32768) refused before the ioctl") == true,
                "\(String(describing: grown.failure))")
        #expect(events.withLock { $0 }.filter { $0.request?.kind == .setVringNum }.count == 1)
    }

    @Test("raw set-mem-table triples: a zero-sized region reaches the device (EFAULT), overlapping ones are accepted, a region past memory is refused")
    func rawMemoryTable() throws {
        let base = "open\nset-owner\nmemory 1M\n"
        let zero = try runInProcess(base + "expect EFAULT\nset-mem-table 0x40000000 0 0x40000000\n")
        #expect(zero.failure == nil, "\(String(describing: zero.failure))")
        #expect(zero.output.contains { $0.contains("VHOST_SET_MEM_TABLE(nregions: 1, {gpa: 0x40000000, size: 0x0") && $0.contains("EFAULT as expected") })
        let overlapping = try runInProcess(base + "expect ok\nset-mem-table 0x40000000 0x10000 0x40000000 0x40008000 0x10000 0x40010000\n")
        #expect(overlapping.failure == nil, "\(String(describing: overlapping.failure))")
        let past = try runInProcess(base + "set-mem-table 0x40000000 0x200000 0x40000000\n")
        #expect(past.failure?.description.contains("refused before the ioctl") == true)
        #expect(parseProblems("set-mem-table 0x40000000 0x1000").first?.contains("expected triples GPA SIZE AT") == true)
    }

    @Test("the dirty log must cover what the kernel would log: no log, or one too small for the memory, is refused before the ioctl")
    func logCoverage() throws {
        let noLog = try runInProcess(Self.owned + "ring 0 64\nset-vring-num 0 64\nset-vring-addr 0 flags=LOG log=0x40000000\n")
        #expect(noLog.failure?.description.contains("refused before the ioctl") == true && noLog.failure?.description.contains("no dirty log") == true,
                "\(String(describing: noLog.failure))")
        // 64 KiB at GPA 1 GiB needs the log's bytes 32768 to 32769: a 4 KiB log is too small.
        let small = try runInProcess(Self.owned + "log 4K\nset-log-base\nset-features VERSION_1 F_LOG_ALL\n")
        #expect(small.failure?.description.contains("VHOST_SET_FEATURES") == true && small.failure?.description.contains("refused before the ioctl") == true,
                "\(String(describing: small.failure))")
        // Big enough: the device answers (the in-process device offers no LOG_ALL: EOPNOTSUPP).
        let big = try runInProcess(Self.owned + "log 64K\nset-log-base\nexpect EOPNOTSUPP\nset-features VERSION_1 F_LOG_ALL\n")
        #expect(big.failure == nil, "\(String(describing: big.failure))")
        // A table that grows past the log once LOG_ALL would be on is refused too.
        #expect(LogReach(base: 0x1000, logAll: true, table: [.init(guestAddress: 0, size: 1 << 30, userspaceAddress: 0)])
            .problem(mapped: MappedRanges([(0x1000, 4096)])) != nil)
        #expect(LogReach(base: 0x1000, logAll: true, table: [.init(guestAddress: 0, size: 128 << 20, userspaceAddress: 0)])
            .problem(mapped: MappedRanges([(0x1000, 4096)])) == nil)
    }

    @Test("raw flags and features reach the device: flags=0x2 is EOPNOTSUPP, an unoffered feature bit is EOPNOTSUPP")
    func rawFlagsAndFeatures() throws {
        let flags = try runInProcess(Self.owned + "ring 0 64\nset-vring-num 0 64\nexpect EOPNOTSUPP\nset-vring-addr 0 flags=0x2\nlog 64K\nset-log-base\nset-vring-addr 0 flags=LOG log=0x40000000\n")
        #expect(flags.failure == nil, "\(String(describing: flags.failure))")
        let features = try runInProcess("open\nset-owner\nexpect EOPNOTSUPP\nset-features 0x8000000000000000\n")
        #expect(features.failure == nil, "\(String(describing: features.failure))")
    }
}

@Suite("Script recorder round trip")
struct ScriptRecorderRoundTripTests {
    @Test("requests performed on the in-process device through the runner with a recorder make a script that passes on a fresh in-process device")
    func roundTrip() throws {
        let recorder = ScriptRecorder()
        let original = """
            tap vhrec1
            open
            set-owner
            get-features
            set-features VERSION_1 EVENT_IDX
            memory 1M
            set-mem-table
            ring 0 64
            ring 1 64
            set-vring-num 0 64
            set-vring-num 1 64
            set-vring-base 1 0
            set-vring-addr 0
            set-vring-addr 1
            set-vring-kick 0
            set-vring-kick 1
            set-vring-call 0
            set-vring-call 1
            set-vnet-hdr-size 12
            set-backend 0 tap
            set-backend 1 tap
            send 1 count=20 size=100
            expect EBUSY
            set-vring-num 1 128
            set-backend 1 -1
            get-vring-base 1
            set-backend 0 -1
            expect EINVAL
            set-vring-num 0 3
            """
        let first = try runInProcess(original, observer: recorder.ioctlObserver, ringObserver: recorder.ringObserver)
        #expect(first.failure == nil, "\(String(describing: first.failure))")
        let text = recorder.script(header: "round trip")
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains("tap vhrec1") && lines.contains("open") && lines.contains("expect base == 20"))
        #expect(lines.contains { $0.hasPrefix("set-vring-addr 1 0x4") && $0.split(separator: " ").count == 5 })
        #expect(lines.contains("set-vring-kick 1 eventfd") && lines.contains("set-backend 1 tap") && lines.contains { $0.hasPrefix("send 1 count=20 size=100") })
        let replay = try runInProcess(text, name: "replay.vhost")
        #expect(replay.failure == nil, "the replay failed: \(String(describing: replay.failure))\n\(text)")
    }
}

@Suite("Script expectations: each holds where it should and is missed where it should not")
struct ScriptExpectationTests {
    /// A value of 5 in `$v`, and the in-process device's features as the answer `features`.
    static let setUp = "open\nset-owner\nget-features\nmemory 1M\nlet a = alloc 64\nwrite $a 5\nlet v = read $a\n"

    @Test("every comparison passes when it holds and is missed, with what was found, when it does not")
    func comparisons() throws {
        let holding = ["$v == 5", "$v != 4", "$v < 6", "$v <= 5", "$v > 4", "$v >= 5",
                       "features contains EVENT_IDX VERSION_1", "features lacks F_LOG_ALL"]
        for check in holding {
            let run = try runInProcess(Self.setUp + "expect \(check)\n")
            #expect(run.failure == nil, "expect \(check): \(String(describing: run.failure))")
            #expect(run.output.contains { $0.contains(": \(check): yes") }, "expect \(check): \(run.output.suffix(2))")
        }
        let missed = ["$v == 4", "$v != 5", "$v < 5", "$v <= 4", "$v > 5", "$v >= 6",
                      "features contains F_LOG_ALL", "features lacks EVENT_IDX", "features contains EVENT_IDX F_LOG_ALL"]
        for check in missed {
            let run = try runInProcess(Self.setUp + "expect \(check)\n")
            #expect(run.failure?.description.contains("expected \(check), found") == true, "expect \(check): \(String(describing: run.failure))")
        }
    }

    @Test("an errno expectation holds only for that errno: another errno, or success, is missed")
    func errnos() throws {
        let right = try runInProcess("open\nset-owner\nexpect EINVAL\nset-vring-num 0 3\n")
        #expect(right.failure == nil, "\(String(describing: right.failure))")
        #expect(right.output.contains { $0.contains("EINVAL as expected") })
        let wrong = try runInProcess("open\nset-owner\nexpect EBUSY\nset-vring-num 0 3\n")
        #expect(wrong.failure?.description.contains("expected EBUSY from set-vring-num, found") == true, "\(String(describing: wrong.failure))")
        let success = try runInProcess("open\nset-owner\nexpect EINVAL\nset-vring-num 0 4\n")
        #expect(success.failure?.description.contains("expected EINVAL from set-vring-num, found success") == true, "\(String(describing: success.failure))")
    }
}

@Suite("Script memory limit: memory kept for the open device counts")
struct ScriptMemoryLimitTests {
    @Test("mapping memory again while the device may still use the old memory is refused as a limit when both would pass it; after close it is not")
    func keptMemoryCounts() throws {
        var limits = ScriptLimits()
        limits.memoryBytes = 1 << 20
        limits.logBytes = 64 << 10
        let kept = try runInProcess("open\nset-owner\nmemory 1M\nset-mem-table\nmemory 1M\n", limits: limits)
        #expect(kept.failure?.isLimit == true && kept.failure?.description.contains("memory kept for the open device included") == true,
                "\(String(describing: kept.failure))")
        #expect(kept.runner.mappedBytes <= limits.memoryBytes + limits.logBytes, "\(kept.runner.mappedBytes) bytes mapped")
        let closed = try runInProcess("open\nset-owner\nmemory 1M\nset-mem-table\nclose\nmemory 1M\n", limits: limits)
        #expect(closed.failure == nil, "\(String(describing: closed.failure))")
    }
}
