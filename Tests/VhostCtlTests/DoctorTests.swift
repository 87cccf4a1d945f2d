import Glibc
import Testing
@testable import vhostctl

/// `vhostctl info`'s doctor: the findings for fabricated facts, one per thing that stops a user.
@Suite struct DoctorTests {
    /// A host where everything is in order: 6.1, vhost_net loaded, root.
    static let healthy = DoctorFacts(
        kernelVersion: (6, 1), devicePath: "/dev/vhost-net", vhostNetModule: .loaded,
        deviceNode: DoctorFacts.Node(isCharacterDevice: true, mode: 0o20660, owner: 0, group: 108, accessible: true), deviceOpen: .opened,
        tunModule: .loaded, tunNode: DoctorFacts.Node(isCharacterDevice: true, mode: 0o20666, owner: 0, group: 0, accessible: true), tunProblem: nil,
        userID: 0, userName: "root", groupIDs: [0], hasNetAdmin: true,
        hugePages: DoctorFacts.HugePages(total: 64, free: 64, sizeKiB: 2048), hugePageSizesKiB: [2048, 1_048_576],
        selectableWorkerMode: nil, forkFromOwnerDefault: nil, maxMemoryRegions: 64, lockedMemoryLimit: (8 << 20, 8 << 20),
        cgroupPath: "/user.slice", cgroupPidsMax: "max", cgroupMemoryMax: "max",
        networkNamespace: "net:[4026531840]", initialNetworkNamespace: "net:[4026531840]", kvmPresent: true, tap: nil)

    func finding(_ name: String, _ change: (inout DoctorFacts) -> Void = { _ in }) throws -> Doctor.Finding {
        var facts = Self.healthy
        change(&facts)
        return try #require(Doctor.findings(facts).first { $0.name == name }, "no \(name) check")
    }

    @Test func healthyHostHasEveryCheckAndNoProblem() {
        let findings = Doctor.findings(Self.healthy)
        #expect(findings.map(\.name) == Doctor.checkNames)
        #expect(findings.allSatisfy { $0.status == .ok && $0.fix == nil }, "\(findings.filter { $0.status != .ok })")
    }

    @Test func moduleMissingIsAProblemFixedByModprobe() throws {
        let unloaded: (inout DoctorFacts) -> Void = { $0.vhostNetModule = .absent; $0.deviceNode = nil; $0.deviceOpen = .failed("missing"); $0.maxMemoryRegions = nil }
        let module = try finding("vhost-net-module", unloaded)
        #expect(module.status == .problem && module.fix == "modprobe vhost_net")
        let device = try finding("vhost-net-device", unloaded)
        #expect(device.status == .problem && device.fix == "modprobe vhost_net")
        #expect(try finding("memory-regions", unloaded).fix == "modprobe vhost_net")
    }

    @Test func moduleLoadedByTheFirstOpenIsFine() throws {
        #expect(try finding("vhost-net-module") { $0.vhostNetModule = .absent }.status == .ok)
        #expect(try finding("vhost-net-module") { $0.vhostNetModule = .builtIn }.status == .ok)
    }

    @Test func deviceNodeMissingWithTheModuleLoadedIsMadeWithMknod() throws {
        let device = try finding("vhost-net-device") { $0.deviceNode = nil; $0.deviceOpen = .failed("missing") }
        #expect(device.status == .problem && device.fix == "mknod -m 0660 /dev/vhost-net c 10 238")
    }

    @Test func devicePermissionsNameTheUserAndTheGroupFix() throws {
        let device = try finding("vhost-net-device") {
            $0.userID = 1000; $0.userName = "ada"
            $0.deviceNode?.accessible = false; $0.deviceOpen = .notPermitted("cannot open /dev/vhost-net: EACCES")
        }
        #expect(device.status == .problem)
        #expect(device.fact.contains("mode 660, owner 0:108") && device.fact.contains("user 1000"))
        #expect(device.fix?.contains("usermod -aG kvm ada") == true)
    }

    @Test func tunMissingIsFixedByModprobeTun() throws {
        let tun = try finding("tun") { $0.tunModule = .absent; $0.tunNode = nil }
        #expect(tun.status == .problem && tun.fix == "modprobe tun")
        let unreadable = try finding("tun") { $0.tunNode?.accessible = false; $0.tunProblem = "EACCES" }
        #expect(unreadable.status == .problem && unreadable.fix == "chmod 0666 /dev/net/tun")
        // A built-in tun has no /sys/module/tun: a node we may not open is still a matter of its mode.
        let builtIn = try finding("tun") { $0.tunModule = .absent; $0.tunNode?.accessible = false; $0.tunProblem = "EACCES" }
        #expect(builtIn.fix == "chmod 0666 /dev/net/tun")
        let silent = try finding("tun") { $0.tunModule = .absent; $0.tunProblem = "ENODEV" }
        #expect(silent.fix == "modprobe tun")
    }

    @Test func noNetAdminPointsAtAnOwnedTap() throws {
        let check = try finding("net-admin") { $0.hasNetAdmin = false; $0.userName = "ada" }
        #expect(check.status == .warning && check.fix?.contains("ip tuntap add dev vhost0 mode tap user ada") == true)
    }

    @Test func hugePagesUnavailableGiveTheSysctl() throws {
        let none = try finding("huge-pages") { $0.hugePages = DoctorFacts.HugePages(total: 0, free: 0, sizeKiB: 2048) }
        #expect(none.status == .warning && none.fix == "sysctl -w vm.nr_hugepages=64")
        let used = try finding("huge-pages") { $0.hugePages = DoctorFacts.HugePages(total: 16, free: 0, sizeKiB: 2048) }
        #expect(used.status == .warning && used.fix == "sysctl -w vm.nr_hugepages=80")
        let noSize = try finding("huge-pages") { $0.hugePageSizesKiB = [] }
        #expect(noSize.status == .warning && noSize.fix == nil && noSize.fact.contains("no 2 MiB huge pages"))
    }

    @Test func workerModeFollowsTheKernel() throws {
        #expect(try finding("worker-mode").fact.contains("kernel thread"))
        let task = try finding("worker-mode") { $0.kernelVersion = (6, 4) }
        #expect(task.fact.contains("thread of the owner") && !task.fact.contains("selectable"))
        let selectable = try finding("worker-mode") { $0.kernelVersion = (6, 12); $0.selectableWorkerMode = .task; $0.forkFromOwnerDefault = "Y" }
        #expect(selectable.fact.contains("thread of the owner") && selectable.fact.contains("VHOST_SET_FORK_FROM_OWNER before SET_OWNER (now task, module default fork_from_owner_default=Y)"))
        let chosenKthread = try finding("worker-mode") { $0.kernelVersion = (7, 2); $0.selectableWorkerMode = .kthread; $0.forkFromOwnerDefault = "N" }
        #expect(chosenKthread.fact.hasPrefix("the worker vhost-<pid> is a kernel thread") && chosenKthread.fact.contains("(now kthread"))
    }

    @Test func tooFewMemoryRegionsIsAProblem() throws {
        let check = try finding("memory-regions") { $0.maxMemoryRegions = 1 }
        #expect(check.status == .problem && check.fix?.contains("modprobe vhost max_mem_regions=64") == true)
        #expect(try finding("memory-regions").fact.hasPrefix("max_mem_regions=64"))
    }

    @Test func lockedMemoryMattersOnlyBeforeLinux5_11() throws {
        #expect(try finding("locked-memory") { $0.lockedMemoryLimit = (64 << 10, 64 << 10) }.status == .ok)
        let old = try finding("locked-memory") { $0.kernelVersion = (5, 10); $0.lockedMemoryLimit = (64 << 10, 64 << 10) }
        #expect(old.status == .warning && old.fix == "ulimit -l unlimited")
        #expect(try finding("locked-memory") { $0.lockedMemoryLimit = (nil, nil) }.fact.hasPrefix("RLIMIT_MEMLOCK unlimited (hard unlimited)"))
    }

    @Test func aSmallPidsLimitWarnsFromLinux6_4() throws {
        let limited: (inout DoctorFacts) -> Void = { $0.cgroupPidsMax = "10"; $0.kernelVersion = (6, 12) }
        let check = try finding("cgroup", limited)
        #expect(check.status == .warning && check.fix == "echo max > /sys/fs/cgroup/user.slice/pids.max")
        #expect(try finding("cgroup") { $0.cgroupPidsMax = "10" }.status == .ok)  // 6.1: a kthread, not counted
    }

    @Test func anotherNetworkNamespaceIsNamed() throws {
        let check = try finding("network-namespace") { $0.networkNamespace = "net:[4026532000]" }
        #expect(check.status == .ok && check.fact.contains("not PID 1's (net:[4026531840])") && check.fact.contains("nsenter -t 1 -n"))
    }

    @Test func kvmAbsentDoesNotMatter() throws {
        let check = try finding("kvm") { $0.kvmPresent = false }
        #expect(check.status == .ok && check.fact.contains("vhost-net needs no KVM"))
    }

    @Test func tapChecks() throws {
        func tap(_ t: DoctorFacts.TapFacts, _ change: (inout DoctorFacts) -> Void = { _ in }) throws -> Doctor.Finding {
            try finding("tap") { $0.tap = t; change(&$0) }
        }
        let good = DoctorFacts.TapFacts(name: "vt0", exists: true, flags: 0x5102, mtu: 1500, owner: -1, group: -1)
        #expect(try tap(good).status == .ok)
        #expect(try tap(good).fact.contains("multi-queue"))
        var single = good; single.flags = 0x1002
        #expect(try tap(single).fact.contains("single-queue"))
        var tun = good; tun.flags = 0x1001
        #expect(try tap(tun).status == .problem && tap(tun).fix == "ip link delete vt0 && ip tuntap add dev vt0 mode tap")
        var small = good; small.mtu = 1280
        #expect(try tap(small).status == .warning && tap(small).fix == "ip link set dev vt0 mtu 1500")
        var notTun = good; notTun.flags = nil
        #expect(try tap(notTun).status == .problem)
        var missing = good; missing.exists = false; missing.flags = nil
        #expect(try tap(missing).status == .warning)
        // tun.c tun_not_capable: another user's tap without CAP_NET_ADMIN is EPERM; our own is fine.
        var others = good; others.owner = 0
        let refused = try tap(others) { $0.hasNetAdmin = false; $0.userID = 1000; $0.userName = "ada" }
        #expect(refused.status == .problem && refused.fix?.hasSuffix("user ada") == true)
        var own = good; own.owner = 1000
        #expect(try tap(own) { $0.hasNetAdmin = false; $0.userID = 1000 }.status == .ok)
        var group = good; group.group = 50
        #expect(try tap(group) { $0.hasNetAdmin = false; $0.userID = 1000; $0.groupIDs = [1000, 50] }.status == .ok)
        #expect(try tap(good) { $0.hasNetAdmin = false; $0.userID = 1000 }.status == .problem)
    }

    @Test func factsParsers() {
        let meminfo = "MemTotal: 100 kB\nHugePages_Total:      16\nHugePages_Free:        3\nHugepagesize:       2048 kB\n"
        #expect(DoctorFacts.hugePages(meminfo: meminfo) == DoctorFacts.HugePages(total: 16, free: 3, sizeKiB: 2048))
        #expect(DoctorFacts.hugePages(meminfo: "MemTotal: 100 kB\n") == nil)
        #expect(DoctorFacts.hugePages(meminfo: "HugePages_Total: x\nHugePages_Free: 1\nHugepagesize: 2048 kB") == nil)
        #expect(DoctorFacts.cgroupPath("0::/user.slice/session-1.scope\n") == "/user.slice/session-1.scope")
        #expect(DoctorFacts.cgroupPath("12:pids:/a\n0::/b\n") == "/b")
        #expect(DoctorFacts.cgroupPath("") == nil)
    }

    /// tun.c's sysfs attributes as the kernel writes them ("0x%x\n", "%d\n"), in a scratch directory.
    @Test func tapFactsFromSysfsAttributes() throws {
        var template = Array("/tmp/doctor-sysfs-XXXXXX".utf8CString)
        let root = try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        defer { for f in ["tun_flags", "mtu", "owner", "group"] { unlink("\(root)/vt0/\(f)") }; rmdir("\(root)/vt0"); rmdir(root) }
        mkdir("\(root)/vt0", 0o755)
        for (file, text) in [("tun_flags", "0x5102\n"), ("mtu", "1500\n"), ("owner", "1000\n"), ("group", "-1\n")] {
            let stream = try #require(fopen("\(root)/vt0/\(file)", "w"))
            fputs(text, stream); fclose(stream)
        }
        #expect(DoctorFacts.tapFacts("vt0", classDirectory: root) == DoctorFacts.TapFacts(name: "vt0", exists: true, flags: 0x5102, mtu: 1500, owner: 1000, group: -1))
        #expect(DoctorFacts.tapFacts("none0", classDirectory: root) == DoctorFacts.TapFacts(name: "none0", exists: false, flags: nil, mtu: nil, owner: nil, group: nil))
    }
}
