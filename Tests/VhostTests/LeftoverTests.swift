import Glibc
import PropertyBased
import Testing
@testable import Vhost

/// Issue 21 item 3, the decisions behind "nothing left behind": the creator's mark on links and
/// nodes (and hostile aliases that only look like one), the RTM_GETLINK dump parser on crafted
/// and random datagrams, and what cleanup and the reaper remove.
@Suite("Leftovers: marks, the link dump parser, cleanup's and the reaper's decisions")
struct LeftoverTests {
    static let mark = InterfaceMark(pid: 1234, startTime: 567_890, pidNamespace: 4_026_531_836)

    // ---- marks ----

    @Test("a mark prints as the alias text and parses back; its node name too")
    func markRoundTrip() {
        #expect(Self.mark.description == "vhostctl pid 1234 start 567890 pidns 4026531836")
        #expect(InterfaceMark(alias: Self.mark.description) == Self.mark)
        let node = Self.mark.nodeName(for: "tap17")
        #expect(node == "vhostctl-pid1234-start567890-pidns4026531836-tap17")
        let parsed = InterfaceMark.parse(nodeName: node)
        #expect(parsed?.mark == Self.mark && parsed?.device == "tap17")
        let largest = InterfaceMark(pid: InterfaceMark.largestPID, startTime: UInt64.max, pidNamespace: UInt64.max)
        #expect(InterfaceMark(alias: largest.description) == largest)
    }

    @Test("hostile and foreign aliases are not marks", arguments: [
        "", "vhostctl", "libvirt guest nic", "vhostctl pid 1234 start 567890",               // another tool, or the old form
        "vhostctl pid 1234 start 567890 pidns 4026531836 ", " vhostctl pid 1234 start 567890 pidns 4026531836",
        "vhostctl  pid 1234 start 567890 pidns 4026531836", "vhostctl pid 01234 start 567890 pidns 4026531836",
        "vhostctl pid +1234 start 567890 pidns 4026531836", "vhostctl pid -1 start 567890 pidns 4026531836",
        "vhostctl pid 0 start 567890 pidns 4026531836", "vhostctl pid 4194305 start 1 pidns 1",
        "vhostctl pid 99999999999999999999 start 1 pidns 1", "vhostctl pid 1 start 18446744073709551616 pidns 1",
        "vhostctl pid 1 start 1 pidns 1 extra", "VHOSTCTL pid 1 start 1 pidns 1", "vhostctl pid 1\u{0} start 1 pidns 1",
        "vhostctl pid １ start 1 pidns 1", "vhostctl pid 1 start 0x10 pidns 1", "vhostctl pid 1\tstart 1 pidns 1",
        "vhostctl pid 1 start 1 pidns " + String(repeating: "9", count: 300),
    ])
    func hostileAliases(alias: String) {
        #expect(InterfaceMark(alias: alias) == nil, "\(alias.debugDescription)")
    }

    @Test("node names that are not ours are not parsed", arguments: [
        "tap17", "vhostctl-pid1234-start567890-pidns4026531836", "vhostctl-pid1234-start567890-pidns4026531836-",
        "vhostctl-pid1234-start567890-pidns4026531836-tap17-x", "vhostctl-pid1234-start567890-pidns4026531836-../x",
        "vhostctl-pid0-start1-pidns1-tap1", "vhostctl-pid01-start1-pidns1-tap1", "vhostctl-pid1-start1-pidns1-TAP1",
        "vhostctl-pid-start1-pidns1-tap1", "vhostctl-1-start1-pidns1-tap1",
    ])
    func foreignNodeNames(name: String) {
        #expect(InterfaceMark.parse(nodeName: name) == nil, "\(name)")
    }

    @Test("random aliases: never a crash, and a parsed one is exactly what it prints")
    func randomAliases() async {
        let alphabet = Array("vhostcl pidstarn0123456789 -+x\u{0}".unicodeScalars)
        await propertyCheck(count: 3000, input: Gen.int(in: 0...(alphabet.count - 1)).array(of: 0...60)) { picks in
            let text = String(String.UnicodeScalarView(picks.map { alphabet[$0] }))
            if let mark = InterfaceMark(alias: text) { #expect(mark.description == text) }
            if let (mark, device) = InterfaceMark.parse(nodeName: text) { #expect(mark.nodeName(for: device) == text) }
        }
    }

    @Test("/proc/PID/stat: state and start time counted from the last ')', whatever the command name")
    func statParsing() {
        let tail = " 1 1 1 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 1 0 567890 1000 100 18446744073709551615"
        #expect(ProcessIdentity.parseStat("1234 (vhostctl) S" + tail)! == (UInt8(ascii: "S"), 567_890))
        #expect(ProcessIdentity.parseStat("1234 (a) b) (c) Z" + tail)! == (UInt8(ascii: "Z"), 567_890))
        #expect(ProcessIdentity.parseStat("1234 (no close paren S" + tail) == nil)
        #expect(ProcessIdentity.parseStat("1234 (x) S 1 1 1") == nil)
        #expect(ProcessIdentity.parseStat("1234 (x) S 1 1 1 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 1 0 -5 1") == nil)
        #expect(ProcessIdentity.parseNamespaceLink("pid:[4026531836]") == 4_026_531_836)
        for bad in ["pid:[]", "net:[1]", "pid:[12", "pid:[0x1]", ""] { #expect(ProcessIdentity.parseNamespaceLink(bad) == nil, "\(bad)") }
    }

    @Test("this process's mark names this process, which /proc shows as running")
    func currentMark() throws {
        let mark = try InterfaceMark.current()
        #expect(mark.pid == getpid())
        #expect(Leftovers.creatorState(of: mark, ourPidNamespace: mark.pidNamespace) == .running)
        var reused = mark
        reused.startTime += 1   // the same pid, started at another time: a later process
        #expect(Leftovers.creatorState(of: reused, ourPidNamespace: mark.pidNamespace) == .gone)
    }

    @Test("the creator's state: running, gone (no pid, another start, a zombie), another pid namespace")
    func creatorStates() {
        let m = Self.mark
        let running = ProcessIdentity(state: UInt8(ascii: "S"), startTime: m.startTime, pidNamespace: m.pidNamespace)
        #expect(Leftovers.creatorState(of: m, process: running, ourPidNamespace: m.pidNamespace) == .running)
        #expect(Leftovers.creatorState(of: m, process: nil, ourPidNamespace: m.pidNamespace) == .gone)
        var later = running; later.startTime += 100
        #expect(Leftovers.creatorState(of: m, process: later, ourPidNamespace: m.pidNamespace) == .gone)
        var zombie = running; zombie.state = UInt8(ascii: "Z")
        #expect(Leftovers.creatorState(of: m, process: zombie, ourPidNamespace: m.pidNamespace) == .gone)
        #expect(Leftovers.creatorState(of: m, process: nil, ourPidNamespace: m.pidNamespace + 1) == .otherNamespace)
    }

    // ---- decisions ----

    static let dead = InterfaceMark(pid: 200, startTime: 7, pidNamespace: mark.pidNamespace)
    static let alive = InterfaceMark(pid: 300, startTime: 9, pidNamespace: mark.pidNamespace)
    static let elsewhere = InterfaceMark(pid: 400, startTime: 9, pidNamespace: 1)
    static func state(_ mark: InterfaceMark) -> Leftovers.CreatorState {
        mark.pidNamespace != Self.mark.pidNamespace ? .otherNamespace : mark == alive ? .running : .gone
    }

    @Test("cleanup removes only marked macvtaps and taps whose creator is gone")
    func cleanupPlan() {
        let links = [
            LinkRecord(index: 1, name: "lo"),
            LinkRecord(index: 2, name: "mvt-dead", alias: Self.dead.description, kind: "macvtap"),
            LinkRecord(index: 3, name: "tap-dead", alias: Self.dead.description, kind: "tun"),
            LinkRecord(index: 4, name: "mvt-alive", alias: Self.alive.description, kind: "macvtap"),
            LinkRecord(index: 5, name: "mvt-unmarked", kind: "macvtap"),
            LinkRecord(index: 6, name: "mvt-foreign", alias: "guest nic of libvirt", kind: "macvtap"),
            LinkRecord(index: 7, name: "dummy-dead", alias: Self.dead.description, kind: "dummy"),   // not a kind we make
            LinkRecord(index: 8, name: "eth0", alias: Self.dead.description),                       // no kind at all
            LinkRecord(index: 9, name: "mvt-netns", alias: Self.elsewhere.description, kind: "macvtap"),
        ]
        let plan = Leftovers.plan(links: links, state: Self.state)
        #expect(plan == [
            .remove(links[1], Self.dead), .remove(links[2], Self.dead),
            .keep(links[3], Self.alive, .running), .keep(links[8], Self.elsewhere, .otherNamespace),
        ])
    }

    @Test("the reaper deletes only the named links that still carry exactly its parent's mark")
    func reaperDecision() {
        let parent = Self.dead
        var later = parent; later.startTime += 1
        let links = [
            LinkRecord(index: 2, name: "vhmvt1", alias: parent.description, kind: "macvtap"),
            LinkRecord(index: 3, name: "vhmvt2", alias: parent.description, kind: "macvtap"),   // not named to it
            LinkRecord(index: 4, name: "vhmvt3", alias: later.description, kind: "macvtap"),    // same pid, a later process
            LinkRecord(index: 5, name: "vhmvt4", kind: "macvtap"),                              // existed before, unmarked
            LinkRecord(index: 6, name: "vhmvt5", alias: parent.description + " ", kind: "macvtap"),
            LinkRecord(index: 7, name: "vhmvt6", alias: parent.description, kind: "veth"),
        ]
        let targets = Leftovers.reaperTargets(links: links, names: ["vhmvt1", "vhmvt3", "vhmvt4", "vhmvt5", "vhmvt6", "gone0"], parent: parent)
        #expect(targets == [links[0]])
    }

    @Test("stale nodes: ours of a gone creator; ours of a running one kept; foreign names not judged")
    func staleNodes() {
        #expect(Leftovers.isStaleNode(named: Self.dead.nodeName(for: "tap9"), state: Self.state) == true)
        #expect(Leftovers.isStaleNode(named: Self.alive.nodeName(for: "tap9"), state: Self.state) == false)
        #expect(Leftovers.isStaleNode(named: "tap9", state: Self.state) == nil)
    }

    // ---- the RTM_GETLINK dump parser ----

    static func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xff), UInt8((v >> 8) & 0xff)] }
    static func le32(_ v: Int) -> [UInt8] { [UInt8(v & 0xff), UInt8((v >> 8) & 0xff), UInt8((v >> 16) & 0xff), UInt8((v >> 24) & 0xff)] }
    static func attribute(_ type: Int, _ value: [UInt8]) -> [UInt8] {
        var bytes = le16(4 + value.count) + le16(type) + value
        while bytes.count % 4 != 0 { bytes.append(0) }
        return bytes
    }
    static func string(_ type: Int, _ text: String) -> [UInt8] { attribute(type, Array(text.utf8) + [0]) }
    static func message(type: Int, flags: Int = 2, sequence: Int = 1, _ body: [UInt8]) -> [UInt8] {
        le32(16 + body.count) + le16(type) + le16(flags) + le32(sequence) + le32(0) + body
    }
    static func link(_ index: Int, _ name: String, alias: String? = nil, kind: String? = nil) -> [UInt8] {
        var body: [UInt8] = [0, 0] + le16(1) + le32(index) + le32(0) + le32(0)
        body += string(3, name)
        body += attribute(13, le32(1500))   // IFLA_MTU: skipped
        if let alias { body += string(20, alias) }
        if let kind { body += attribute(18 | 0x8000, string(1, kind) + attribute(2, [1, 2, 3, 4])) }  // nested, with NLA_F_NESTED
        return message(type: 16, body)
    }
    static let goodDump = link(1, "lo") + link(7, "vhmvt1", alias: mark.description, kind: "macvtap") + message(type: 3, le32(0))

    @Test("a well-formed dump: every link with index, name, alias and kind; NLMSG_DONE ends it")
    func dumpParses() throws {
        let part = try LinkDumpParser.parse(Self.goodDump, sequence: 1)
        #expect(part.done && !part.interrupted)
        #expect(part.links == [LinkRecord(index: 1, name: "lo"), LinkRecord(index: 7, name: "vhmvt1", alias: Self.mark.description, kind: "macvtap")])
        let interrupted = try LinkDumpParser.parse(Self.message(type: 16, flags: 2 | 0x10, Array(Self.link(1, "lo").dropFirst(16))), sequence: 1)
        #expect(interrupted.interrupted && !interrupted.done && interrupted.links.count == 1)
    }

    /// A refusal of the dump parser is always `corruptInput` (or the kernel's own error).
    static func expectRefused(_ bytes: [UInt8], _ why: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do throws(VhostError) {
            let part = try LinkDumpParser.parse(bytes, sequence: 1)
            Issue.record("accepted \(why): \(part)", sourceLocation: sourceLocation)
        } catch .corruptInput(let path, let problem) {
            #expect(path.contains("RTM_GETLINK") && !problem.isEmpty, sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(why): \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("truncated and lying answers are refused with a reason, never read past the bytes")
    func dumpRefusesLies() {
        let one = Self.link(7, "vhmvt1", alias: "x", kind: "macvtap")
        Self.expectRefused(Array(one.prefix(10)), "a cut header")
        Self.expectRefused(Array(one.prefix(one.count - 4)), "a message cut short of its length")
        Self.expectRefused(Self.le32(one.count + 100) + one.dropFirst(4), "a message longer than the datagram")
        Self.expectRefused(Self.le32(8) + one.dropFirst(4), "a message shorter than its header")
        Self.expectRefused(Self.message(type: 16, [0, 0, 0, 0]), "a link message shorter than ifinfomsg")
        var badAttribute = one
        badAttribute[32] = 0xff; badAttribute[33] = 0x7f   // the first rtattr's length: past the message
        Self.expectRefused(badAttribute, "an attribute longer than its message")
        badAttribute[32] = 2; badAttribute[33] = 0        // shorter than its own header
        Self.expectRefused(badAttribute, "an attribute shorter than its header")
        Self.expectRefused(Self.message(type: 16, [0, 0, 0, 0] + Self.le32(5) + Self.le32(0) + Self.le32(0)), "a link without a name")
        Self.expectRefused(Self.message(type: 16, [0, 0, 0, 0] + Self.le32(0) + Self.le32(0) + Self.le32(0) + Self.string(3, "x")), "interface index 0")
        Self.expectRefused(Self.link(3, String(repeating: "n", count: 16)), "a name of 16 bytes")
        Self.expectRefused(Self.link(3, "ok", alias: String(repeating: "a", count: 256)), "an alias of 256 bytes")
        Self.expectRefused(Self.message(type: 16, sequence: 9, Array(one.dropFirst(16))), "an answer to another request")
        Self.expectRefused(Self.message(type: 99, []), "an unknown message type")
        Self.expectRefused(Self.message(type: 2, [1, 2]), "an error message without its code")
        do throws(VhostError) {
            _ = try LinkDumpParser.parse(Self.message(type: 2, Self.le32(-1)), sequence: 1)  // -EPERM
            Issue.record("an NLMSG_ERROR with -EPERM was accepted")
        } catch .system(let call, _, let errno) {
            #expect(call == "RTM_GETLINK" && errno.rawValue == EPERM)
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test("random and mutated dumps: parsed or refused as corrupt, never a crash, never a name past its bounds")
    func randomDumps() async {
        await propertyCheck(count: 4000, input: Gen.int(in: 0...255).array(of: 0...10), Gen.int(in: 0...(Self.goodDump.count - 1)).array(of: 0...10),
                            Gen.int(in: 0...Self.goodDump.count), Gen.int(in: 0...255).array(of: 0...40)) { values, places, cut, tail in
            var bytes = Self.goodDump
            for (value, place) in zip(values, places) { bytes[place] = UInt8(value) }
            bytes = Array(bytes.prefix(cut)) + tail.map(UInt8.init)
            do throws(VhostError) {
                let part = try LinkDumpParser.parse(bytes, sequence: 1)
                for link in part.links { #expect(link.index > 0 && !link.name.isEmpty && link.name.utf8.count < 16 && (link.alias?.utf8.count ?? 0) <= 255) }
            } catch .corruptInput {
            } catch .system(let call, _, _) {
                #expect(call == "RTM_GETLINK")
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test("the kernel's own dump (unprivileged): the loopback and every link sysfs lists")
    func realDump() throws {
        let links = try RouteNetlink.links()
        #expect(links.contains { $0.name == "lo" && $0.index == 1 })
        let sysfs = TransientDeviceNode.entries(of: "/sys/class/net").filter { !$0.hasPrefix("bonding_masters") }
        #expect(Set(links.map(\.name)) == Set(sysfs))
    }

    // ---- device nodes ----

    @Test("a transient node is opened and gone at once; a directory others may write is refused", .enabled(if: geteuid() == 0, "mknod needs root"))
    func transientNode() throws {
        var template = Array("/tmp/vhost-nodes-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let directory = String(cString: try #require(made))
        defer { rmdir(directory) }
        // /dev/null is character device 1:3 (Documentation/admin-guide/devices.txt).
        let fd = try TransientDeviceNode.open(major: 1, minor: 3, name: Self.mark.nodeName(for: "null"), in: directory)
        defer { close(fd) }
        #expect(TransientDeviceNode.entries(of: directory).isEmpty, "the node outlived the open")
        var info = stat()
        #expect(fstat(fd, &info) == 0 && info.st_mode & S_IFMT == S_IFCHR && info.st_rdev == 0x103)  // makedev(1, 3): minor in the low byte, major above
        #expect(write(fd, "x", 1) == 1)
        chmod(directory, 0o777)
        #expect(throws: VhostError.self) { _ = try TransientDeviceNode.open(major: 1, minor: 3, name: "n", in: directory) }
        #expect(TransientDeviceNode.entries(of: directory).isEmpty)
    }
}
