import Glibc
import Testing
import Vhost
@testable import VhostScript

/// A fresh directory under /tmp with a script folder and a folder outside it holding a secret.
private struct TrustFixture {
    let root: String
    var scripts: String { root + "/scripts" }
    var outside: String { root + "/outside" }
    static let secret = "SECRET_MARKER_5f3a9c"

    init() {
        var template = Array("/tmp/vhost-trust-XXXXXX".utf8CString)
        root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        mkdir(scripts, 0o755)
        mkdir(outside, 0o755)
        write(outside + "/secret.vhost", "\(TrustFixture.secret) root:x:0:0\n")
        write(outside + "/good.vhost", "memory 1M\n")
        write(scripts + "/inside.vhost", "memory 1M\n")
        symlink(outside + "/secret.vhost", scripts + "/link-out.vhost")
        symlink(scripts + "/inside.vhost", scripts + "/link-in.vhost")
    }

    func write(_ path: String, _ text: String) {
        let file = fopen(path, "w")!
        fputs(text, file)
        fclose(file)
    }

    func remove() { _ = system("rm -rf '\(root)'") }

    /// The problems of the script `text` saved as scripts/main.vhost and read as the CLI reads it.
    func problems(_ text: String, includeDirectories: [String]? = nil) -> [String] {
        write(scripts + "/main.vhost", text)
        do {
            _ = try Script(contentsOf: scripts + "/main.vhost", includeDirectories: includeDirectories)
            return []
        } catch {
            return error.problems
        }
    }
}

/// Runs `text` against the kernel's device path (nothing on this host needs /dev/vhost-net for a
/// refusal: it comes before the open) and returns the run's failure and the events seen.
private func runOnKernel(_ text: String, options configure: (inout ScriptRunner.Options) -> Void = { _ in }) throws
    -> (failure: ScriptRunner.Failure?, events: [IoctlEvent]) {
    let script = try Script(parsing: text, name: "trust.vhost")
    let events = Locked<[IoctlEvent]>([])
    var options = ScriptRunner.Options()
    options.device = .kernel()
    options.observer = { event in events.withLock { $0.append(event) } }
    configure(&options)
    let runner = ScriptRunner(options: options) { _ in }
    do throws(ScriptRunner.Failure) {
        try runner.run(script)
        return (nil, events.withLock { $0 })
    } catch {
        return (error, events.withLock { $0 })
    }
}

private func isNotAllowed(_ failure: ScriptRunner.Failure?) -> Bool {
    failure?.causes.contains { if case .notAllowed = $0 { true } else { false } } == true
}

/// The file of a device number, for allowing it.
private func number(_ path: String) throws -> DeviceNumber { try CheckedOpen.characterDeviceNumber(at: path) }

@Suite("Scripts as input: what a script may open, include and attach (docs/security.md)")
struct ScriptTrustTests {
    // MARK: refusals

    @Test("refused: open of a regular file, before anything opens it (no open event succeeds)")
    func openRegularFileRefused() throws {
        let (failure, events) = try runOnKernel("open /etc/passwd")
        #expect(isNotAllowed(failure), "\(String(describing: failure))")
        #expect(String(describing: failure).contains("a script opens only the vhost-net character device (10:238)"))
        #expect(!events.contains { if case .open = $0.operation, case .success = $0.result { true } else { false } })
    }

    @Test("refused: open of another character device (/dev/null, 1:3; /dev/watchdog would be 10:130)")
    func openOtherDeviceRefused() throws {
        let (failure, _) = try runOnKernel("open /dev/null")
        #expect(isNotAllowed(failure))
        #expect(String(describing: failure).contains("/dev/null is the character device 1:3"))
    }

    @Test("refused: open of a symbolic link to a regular file, and the default device path when it names one")
    func openSymlinkRefused() throws {
        let fixture = TrustFixture()
        defer { fixture.remove() }
        let (viaLink, _) = try runOnKernel("open \(fixture.scripts)/link-in.vhost")
        #expect(isNotAllowed(viaLink))
        let (viaDefault, _) = try runOnKernel("open") { $0.device = .kernel(path: fixture.scripts + "/inside.vhost") }
        #expect(isNotAllowed(viaDefault), "\(String(describing: viaDefault))")
    }

    @Test("refused: tap NAME on an interface that exists (lo) and that the script did not create: no TUNSETIFF is issued")
    func existingTapRefused() throws {
        let (failure, events) = try runOnKernel("tap lo")
        #expect(isNotAllowed(failure), "\(String(describing: failure))")
        #expect(String(describing: failure).contains("--allow-existing-tap"))
        #expect(!events.contains { if case .tun? = $0.request { true } else { false } })
    }

    @Test("refused: includes outside the script's directory (../, absolute, through a symbolic link), and the outside file's content never appears")
    func includeOutsideRefused() {
        let fixture = TrustFixture()
        defer { fixture.remove() }
        for include in ["../outside/secret.vhost", fixture.outside + "/secret.vhost", "link-out.vhost", "/etc/passwd", "../../../../../../etc/shadow"] {
            let problems = fixture.problems("include \"\(include)\"\n")
            #expect(problems.count == 1 && problems[0].contains("is outside the directories a script may include from"), "\(include): \(problems)")
            #expect(problems[0].hasPrefix(fixture.scripts + "/main.vhost:1:9: "), "\(problems)")
            #expect(!problems.joined().contains(TrustFixture.secret) && !problems.joined().contains("root:"), "\(include) leaked: \(problems)")
        }
    }

    @Test("refused: a file read through CheckedOpen is checked where it really is, and a device is never opened as a script")
    func checkedOpenRefusals() {
        let fixture = TrustFixture()
        defer { fixture.remove() }
        #expect(throws: CheckedOpen.Refusal.self) { try CheckedOpen.regularFile(at: fixture.scripts + "/link-out.vhost", inside: [fixture.scripts]) }
        #expect(throws: CheckedOpen.Refusal.self) { try CheckedOpen.regularFile(at: "/dev/null") }
        #expect(Script.readRegularFile("/dev/zero", limit: 100) == nil)
        #expect(throws: CheckedOpen.Refusal.self) { try CheckedOpen.characterDevice(at: "/dev/null", accepting: [.vhostNet]) }
        #expect(!CheckedOpen.path("/a/bc", isInside: "/a/b") && CheckedOpen.path("/a/b/c", isInside: "/a/b") && CheckedOpen.path("/a/b", isInside: "/a/b"))
    }

    // MARK: what is allowed

    @Test("allowed: a character device named with --allow-device (acceptedDevices) opens")
    func allowedDeviceOpens() throws {
        let null = try number("/dev/null")
        #expect(null == DeviceNumber(major: 1, minor: 3))
        let (failure, events) = try runOnKernel("open /dev/null") { $0.acceptedDevices.insert(null) }
        #expect(failure == nil, "\(String(describing: failure))")
        #expect(events.contains { if case .open(let path) = $0.operation, case .success = $0.result { path == "/dev/null" } else { false } })
    }

    @Test("allowed: with --allow-existing-tap, tap NAME on an existing interface reaches the tun driver (lo is no tap: its EINVAL, not a refusal)")
    func allowedExistingTap() throws {
        let (failure, events) = try runOnKernel("tap lo") { $0.allowExistingTaps = true }
        #expect(!isNotAllowed(failure), "\(String(describing: failure))")
        #expect(failure != nil)
        // /dev/net/tun answered (TUNSETIFF EINVAL), or is missing on this host: either way no refusal of ours.
        _ = events
    }

    @Test("allowed: includes inside the script's directory, through a link that stays inside, and from a directory added with --include-path")
    func allowedIncludes() {
        let fixture = TrustFixture()
        defer { fixture.remove() }
        #expect(fixture.problems("include \"inside.vhost\"\n") == [])
        #expect(fixture.problems("include \"link-in.vhost\"\n") == [])
        #expect(fixture.problems("include \"./sub/../inside.vhost\"\n").allSatisfy { !$0.contains("is outside") })
        #expect(fixture.problems("include \"../outside/good.vhost\"\n", includeDirectories: [fixture.scripts, fixture.outside]) == [])
        // Allowed, the outside file is read and its problem reported as that file's.
        let problems = fixture.problems("include \"../outside/secret.vhost\"\n", includeDirectories: [fixture.scripts, fixture.outside])
        #expect(problems.count == 1 && problems[0].contains("secret.vhost:1:1"), "\(problems)")
    }

    @Test("an empty include list allows no include (a script from standard input without --include-path)")
    func noIncludeDirectories() {
        let fixture = TrustFixture()
        defer { fixture.remove() }
        let problems = fixture.problems("include \"inside.vhost\"\n", includeDirectories: [])
        #expect(problems.count == 1 && problems[0].contains("(none)"), "\(problems)")
    }

    @Test("a word over 1,024 characters is one lexer problem naming the limit (no string of megabytes is built); 1,024 is still a word")
    func longestWord() {
        let long = parseProblems(String(repeating: "a", count: 1025) + "\n")
        #expect(long.count == 1 && long[0].contains("expected a word of at most 1024 characters, found one of 1025"), "\(long)")
        let atLimit = parseProblems(String(repeating: "a", count: 1024) + "\n")
        #expect(atLimit.count == 1 && atLimit[0].contains("expected a command") && atLimit[0].contains("(1024 characters)"), "\(atLimit)")
    }

    @Test("device numbers decode as glibc encodes them (makedev), small and large")
    func deviceNumbers() {
        #expect(DeviceNumber(UInt64(10) << 8 | 238) == .vhostNet)
        // makedev(300, 70000): major bits 8-19 and 32-63, minor bits 0-7 and 20-31.
        let major: UInt64 = 300, minor: UInt64 = 70000
        let rdev = ((major & 0xfff) << 8) | ((major & ~0xfff) << 32) | (minor & 0xff) | ((minor & ~0xff) << 12)
        #expect(DeviceNumber(rdev) == DeviceNumber(major: 300, minor: 70000))
    }
}
