import Glibc
import Testing
import Vhost
import VhostNet

/// `OutputFile`: the one way the tools write files. Each test works in a fresh folder.
@Suite("Safe output files and process credentials")
struct OutputFileTests {
    /// A fresh folder for one test, removed with what is in it.
    final class Folder {
        let path: String
        init() {
            var template = Array("/tmp/swift-vhost-output-XXXXXX".utf8CString)
            path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        }
        func file(_ name: String) -> String { path + "/" + name }
        /// The names in the folder, sorted (hidden ones too).
        var names: [String] {
            guard let directory = opendir(path) else { return [] }
            defer { closedir(directory) }
            var result: [String] = []
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                if name != "." && name != ".." { result.append(name) }
            }
            return result.sorted()
        }
        func contents(_ name: String) -> String? { KernelInfo.readFile(file(name)) }
        deinit { for name in names { unlink(file(name)) }; rmdir(path) }
    }

    func writeText(_ text: String, to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    func problem(_ body: () throws(VhostError) -> Void) -> String? {
        do { try body(); return nil } catch {
            if case .unwritableFile(_, let problem, _) = error { return problem }
            return "not unwritableFile: \(error)"
        }
    }

    @Test("a file appears under its name only at commit, complete, with mode 0600 whatever the umask")
    func commitRenames() throws {
        let folder = Folder()
        let old = umask(0)
        defer { umask(old) }
        let file = try OutputFile(path: folder.file("out.txt"))
        try file.write("hello ")
        #expect(folder.names == [String(file.temporaryPath.split(separator: "/").last!)])
        #expect(file.temporaryPath.hasPrefix(folder.file(".out.txt.vhostctl-\(getpid())-")))
        try file.write("world\n")
        try file.commit()
        #expect(file.state == .committed && file.bytesWritten == 12)
        #expect(folder.names == ["out.txt"])
        #expect(folder.contents("out.txt") == "hello world\n")
        var status = stat()
        #expect(stat(folder.file("out.txt"), &status) == 0 && status.st_mode & 0o7777 == 0o600)
    }

    @Test("a symbolic link at the name is refused, with or without replacing, and its target is untouched")
    func symbolicLinkRefused() throws {
        let folder = Folder()
        writeText("keep", to: folder.file("victim"))
        symlink(folder.file("victim"), folder.file("planted.pcap"))
        for replacing in [false, true] {
            let refusal = problem { () throws(VhostError) in _ = try OutputFile(path: folder.file("planted.pcap"), replacingExisting: replacing) }
            #expect(refusal?.contains("is a symbolic link") == true)
            #expect(OutputFile.problem(path: folder.file("planted.pcap"), replacingExisting: replacing)?.contains("symbolic link") == true)
        }
        #expect(folder.contents("victim") == "keep")
        #expect(folder.names == ["planted.pcap", "victim"])
    }

    @Test("a dangling symbolic link is refused too: nothing is created where it points")
    func danglingLinkRefused() throws {
        let folder = Folder()
        symlink(folder.file("nowhere"), folder.file("dangling.pcap"))
        let refusal = problem { () throws(VhostError) in _ = try OutputFile(path: folder.file("dangling.pcap"), replacingExisting: true) }
        #expect(refusal?.contains("is a symbolic link") == true)
        #expect(folder.names == ["dangling.pcap"])
    }

    @Test("an existing file is refused without replacing, and replaced with it")
    func existingFile() throws {
        let folder = Folder()
        writeText("old", to: folder.file("report.json"))
        #expect(problem { () throws(VhostError) in _ = try OutputFile(path: folder.file("report.json")) }?.contains("already exists; pass --force") == true)
        #expect(OutputFile.problem(path: folder.file("report.json"))?.contains("already exists") == true)
        #expect(folder.contents("report.json") == "old")
        try OutputFile.write("new", to: folder.file("report.json"), replacingExisting: true)
        #expect(folder.contents("report.json") == "new" && folder.names == ["report.json"])
        mkdir(folder.file("sub"), 0o755)
        #expect(problem { () throws(VhostError) in _ = try OutputFile(path: folder.file("sub"), replacingExisting: true) }?.contains("not a regular file") == true)
        #expect(problem { () throws(VhostError) in _ = try OutputFile(path: folder.path + "/") }?.contains("names a folder") == true)
    }

    @Test("a file that appears while the output is written is not replaced: the output stays under its temporary name")
    func appearedMeanwhile() throws {
        let folder = Folder()
        let file = try OutputFile(path: folder.file("race.vhost"))
        try file.write("complete")
        writeText("someone else's", to: folder.file("race.vhost"))
        #expect(problem { () throws(VhostError) in try file.commit() }?.contains("kept as \(file.temporaryPath)") == true)
        #expect(file.state == .keptUnderTemporaryName)
        #expect(folder.contents("race.vhost") == "someone else's")
        #expect(KernelInfo.readFile(file.temporaryPath) == "complete")
    }

    @Test("never committed (a failure half-way), the temporary file is removed and nothing has the name")
    func failureLeavesNothing() throws {
        let folder = Folder()
        do {
            let file = try OutputFile(path: folder.file("partial.pcap"))
            try file.write(Array(repeating: 0xAB, count: 100_000))
            #expect(folder.names.count == 1)
        }
        #expect(folder.names.isEmpty)
        let discarded = try OutputFile(path: folder.file("partial.pcap"))
        discarded.discard()
        #expect(discarded.state == .discarded && folder.names.isEmpty)
        // A capture: frames written, no finish(): no file under either name.
        do {
            let writer = try PcapWriter(path: folder.file("capture.pcap"))
            writer.write([UInt8](repeating: 0x11, count: 60))
            try writer.flush()
            #expect(folder.names.count == 1 && !folder.names.contains("capture.pcap"))
        }
        #expect(folder.names.isEmpty)
        let writer = try PcapWriter(path: folder.file("capture.pcap"))
        writer.write([UInt8](repeating: 0x11, count: 60))
        try writer.finish()
        #expect(folder.names == ["capture.pcap"] && writer.isFinished)
        #expect(try readPcapFrames(path: folder.file("capture.pcap")).count == 1)
    }

    @Test("a missing folder: one line, ENOENT, nothing created")
    func missingFolder() {
        do {
            _ = try OutputFile(path: "/tmp/swift-vhost-no-such-folder-\(getpid())/x.pcap")
            Issue.record("created a file in a missing folder")
        } catch {
            guard case .unwritableFile(_, let problem, let errno) = error else { Issue.record("\(error)"); return }
            #expect(problem.contains("does not exist") && errno == .noSuchFileOrDirectory)
        }
    }

    static let status = """
        Name:\tvhostctl
        Umask:\t0022
        State:\tS (sleeping)
        Uid:\t65534\t65534\t65534\t65534
        Gid:\t65534\t65534\t65534\t65534
        FDSize:\t64
        Groups:\t65534 100 
        NoNewPrivs:\t1
        CapInh:\t0000000000000000
        CapPrm:\t0000000000000000
        CapEff:\t0000000000000000
        CapBnd:\t0000000000000000
        CapAmb:\t0000000000000000
        Seccomp:\t0
        """

    @Test("credentials from /proc/PID/status: ids, groups, every capability set and NoNewPrivs, in one line")
    func credentialsParse() throws {
        let credentials = try ProcessCredentials(status: OutputFileTests.status)
        #expect(credentials.uids == [65534, 65534, 65534, 65534] && credentials.gids == [65534, 65534, 65534, 65534])
        #expect(credentials.groups == [65534, 100] && credentials.noNewPrivileges && credentials.holdsNoCapability && credentials.bounding == 0)
        #expect(credentials.description == "uid 65534/65534/65534/65534 gid 65534/65534/65534/65534 groups 65534,100 CapInh 0000000000000000 CapPrm 0000000000000000 CapEff 0000000000000000 CapBnd 0000000000000000 CapAmb 0000000000000000 NoNewPrivs 0x".replacingOccurrences(of: "0x", with: "1"))
        let root = try ProcessCredentials(status: OutputFileTests.status.replacingOccurrences(of: "CapEff:\t0000000000000000", with: "CapEff:\t000001ffffffffff")
            .replacingOccurrences(of: "NoNewPrivs:\t1", with: "NoNewPrivs:\t0").replacingOccurrences(of: "Groups:\t65534 100 ", with: "Groups:\t"))
        #expect(root.effective == 0x1ff_ffff_ffff && !root.holdsNoCapability && !root.noNewPrivileges && root.groups.isEmpty)
        #expect(root.description.contains("groups none CapInh"))
        // This process's own status parses.
        #expect(try ProcessCredentials.current().uids.count == 4)
    }

    @Test("credentials: a missing or malformed line throws corruptInput naming it, never traps")
    func credentialsHostile() {
        func rejects(_ text: String, _ fragment: String) {
            do { _ = try ProcessCredentials(status: text); Issue.record("accepted: \(fragment)") } catch {
                guard case .corruptInput(_, let problem) = error else { Issue.record("\(error)"); return }
                #expect(problem.contains(fragment), "\(problem)")
            }
        }
        let status = OutputFileTests.status
        rejects(status.replacingOccurrences(of: "CapBnd:", with: "CapBnx:"), "no CapBnd")
        rejects(status.replacingOccurrences(of: "Uid:\t65534\t65534\t65534\t65534", with: "Uid:\t65534\t65534"), "Uid: 2 ids")
        rejects(status.replacingOccurrences(of: "Uid:\t65534\t", with: "Uid:\t-1\t"), "not an id")
        rejects(status.replacingOccurrences(of: "Gid:\t65534\t", with: "Gid:\t99999999999\t"), "not an id")
        rejects(status.replacingOccurrences(of: "CapEff:\t0000000000000000", with: "CapEff:\t10000000000000000"), "CapEff")
        rejects(status.replacingOccurrences(of: "CapPrm:\t0000000000000000", with: "CapPrm:\tzz"), "CapPrm")
        rejects(status.replacingOccurrences(of: "NoNewPrivs:\t1", with: "NoNewPrivs:\t2"), "neither 0 nor 1")
        rejects("", "no Uid")
        rejects(String(repeating: "Uid:", count: 10_000), "Uid")
    }

    @Test("user lookup: names through the user database, uid[:gid] as numbers, malformed text refused")
    func userLookup() throws {
        let root = try UserIdentity.lookup("root")
        #expect(root?.uid == 0 && root?.gid == 0 && root?.groups.contains(0) == true)
        #expect(try UserIdentity.lookup("no-such-user-\(getpid())") == nil)
        #expect(try UserIdentity.lookup("65534:100") == UserIdentity(name: "65534:100", uid: 65534, gid: 100, groups: [100]))
        #expect(try UserIdentity.lookup("1234") == UserIdentity(name: "1234", uid: 1234, gid: 1234, groups: [1234]))
        for bad in ["4294967295", "1:4294967295", "1:2:3", "1:x", "name:group", ""] {
            #expect(throws: VhostError.self, "\(bad)") { _ = try UserIdentity.lookup(bad) }
        }
    }
}
