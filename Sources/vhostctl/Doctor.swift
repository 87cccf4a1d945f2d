import Glibc
import Vhost

/// `vhostctl info` as a doctor: the facts gathered from this system (`DoctorFacts.gather`), and a
/// pure function from facts to findings (`Doctor.findings`), so the decisions are tested on
/// fabricated facts (Tests/VhostCtlTests/DoctorTests.swift).
enum Doctor {
    /// How bad a finding is: `problem` stops vhost-net (or a feature a user asks for) here;
    /// `warning` stops something optional or is worth knowing; `ok` is a fact.
    enum Status: String, Encodable, Sendable { case ok, warning, problem }

    /// One check: what was looked at, how it stands, the fact, and the command that fixes it.
    struct Finding: Encodable, Equatable, Sendable {
        var name: String
        var status: Status
        var fact: String
        var fix: String?
    }

    /// The names of the checks, in the order they are reported; `tap` only with `info --tap`.
    static let checkNames = ["vhost-net-module", "vhost-net-device", "tun", "net-admin", "huge-pages", "worker-mode",
                             "memory-regions", "locked-memory", "cgroup", "network-namespace", "kvm"]

    /// miscdevice.h: VHOST_NET_MINOR 238 and TUN_MINOR 200, both on the misc major 10.
    static let vhostNetNode = "c 10 238", tunNode = "c 10 200"
    /// The memory table vhostctl's own guest memory needs (GuestMemoryPlan: two regions with a hole).
    static let regionsNeeded = 2

    static func findings(_ facts: DoctorFacts) -> [Finding] {
        var result = [module(facts), device(facts), tun(facts), netAdmin(facts), hugePages(facts), workerMode(facts),
                      memoryRegions(facts), lockedMemory(facts), cgroup(facts), networkNamespace(facts), kvm(facts)]
        if let tap = facts.tap { result.append(self.tap(tap, facts)) }
        return result
    }

    static func module(_ f: DoctorFacts) -> Finding {
        switch f.vhostNetModule {
        case .loaded: return Finding(name: "vhost-net-module", status: .ok, fact: "vhost_net is loaded")
        case .builtIn: return Finding(name: "vhost-net-module", status: .ok, fact: "vhost_net is built into the kernel")
        case .absent:
            if f.deviceOpen == .opened {
                return Finding(name: "vhost-net-module", status: .ok, fact: "vhost_net was loaded by the first open of \(f.devicePath) (its devname:vhost-net alias)")
            }
            return Finding(name: "vhost-net-module", status: .problem, fact: "the vhost_net module is not loaded (no /sys/module/vhost_net)", fix: "modprobe vhost_net")
        }
    }

    static func device(_ f: DoctorFacts) -> Finding {
        let name = "vhost-net-device", path = f.devicePath
        guard let node = f.deviceNode else {
            let fix = f.vhostNetModule == .absent ? "modprobe vhost_net" : "mknod -m 0660 \(path) \(vhostNetNode)"
            return Finding(name: name, status: .problem, fact: "\(path) does not exist", fix: fix)
        }
        guard node.isCharacterDevice else {
            return Finding(name: name, status: .problem, fact: "\(path) is not a character device (\(node.summary))", fix: "rm \(path) && mknod -m 0660 \(path) \(vhostNetNode)")
        }
        switch f.deviceOpen {
        case .opened:
            return Finding(name: name, status: .ok, fact: "\(path) \(node.summary), opened and answered")
        case .notPermitted(let error):
            return Finding(name: name, status: .problem, fact: "\(path) \(node.summary): \(error) (user \(f.userID))",
                           fix: "run as root, or give a group access: chgrp kvm \(path) && chmod 0660 \(path) && usermod -aG kvm \(f.userName ?? "$USER")")
        case .failed(let error):
            let fix = f.vhostNetModule == .absent ? "modprobe vhost_net" : nil
            return Finding(name: name, status: .problem, fact: "\(path) \(node.summary): \(error)", fix: fix)
        }
    }

    static func tun(_ f: DoctorFacts) -> Finding {
        guard let node = f.tunNode else {
            let fix = f.tunModule == .absent ? "modprobe tun" : "mkdir -p /dev/net && mknod -m 0666 /dev/net/tun \(tunNode)"
            return Finding(name: "tun", status: .problem, fact: "/dev/net/tun does not exist: no tap can be made or opened", fix: fix)
        }
        if let problem = f.tunProblem {
            // Not ours to open: the mode, whatever the module; opened but not answering: the module.
            let fix = !node.accessible ? "chmod 0666 /dev/net/tun" : f.tunModule == .absent ? "modprobe tun" : nil
            return Finding(name: "tun", status: .problem, fact: "/dev/net/tun \(node.summary): \(problem)", fix: fix)
        }
        return Finding(name: "tun", status: .ok, fact: "/dev/net/tun \(node.summary), answers TUNGETFEATURES")
    }

    /// tun.c tun_set_iff → tun_not_capable: without CAP_NET_ADMIN only an existing tap whose owner
    /// (or group) is this user can be opened; creating one needs the capability.
    static func netAdmin(_ f: DoctorFacts) -> Finding {
        if f.hasNetAdmin { return Finding(name: "net-admin", status: .ok, fact: "CAP_NET_ADMIN is effective: taps and macvtaps can be made here") }
        return Finding(name: "net-admin", status: .warning,
                       fact: "no CAP_NET_ADMIN: vhostctl can only open an existing tap owned by this user (attach --create fails)",
                       fix: "as root, once: ip tuntap add dev vhost0 mode tap user \(f.userName ?? "$USER") multi_queue")
    }

    /// Only `--hugepages` (memfd MFD_HUGETLB, 2 MiB pages) needs them.
    static func hugePages(_ f: DoctorFacts) -> Finding {
        let name = "huge-pages"
        guard f.hugePageSizesKiB.contains(2048) else {
            let sizes = f.hugePageSizesKiB.isEmpty ? "none" : f.hugePageSizesKiB.map { "\($0) kB" }.joined(separator: ", ")
            return Finding(name: name, status: .warning, fact: "this kernel offers no 2 MiB huge pages (/sys/kernel/mm/hugepages: \(sizes)): --hugepages fails; vhost-net itself does not need them")
        }
        guard let pages = f.hugePages else {
            return Finding(name: name, status: .warning, fact: "/proc/meminfo has no HugePages_Total: --hugepages fails")
        }
        let fix = "sysctl -w vm.nr_hugepages=\(pages.total &+ 64)"
        if pages.total == 0 {
            return Finding(name: name, status: .warning, fact: "no huge pages reserved (HugePages_Total 0): --hugepages fails; vhost-net itself does not need them", fix: fix)
        }
        if pages.free == 0 {
            return Finding(name: name, status: .warning, fact: "all \(pages.total) huge pages are in use (HugePages_Free 0): --hugepages fails", fix: fix)
        }
        return Finding(name: name, status: .ok, fact: "\(pages.free) of \(pages.total) huge pages of \(pages.sizeKiB) kB free, for --hugepages")
    }

    static func workerMode(_ f: DoctorFacts) -> Finding {
        let task = "the worker vhost-<pid> is a thread of the owner process (it counts in the owner's cgroup and limits)"
        let kthread = "the worker vhost-<pid> is a kernel thread (outside the owner's cgroup)"
        // VHOST_SET_FORK_FROM_OWNER (6.17, backported to 6.12.y) chooses per device before SET_OWNER.
        if let mode = f.selectableWorkerMode {
            let fallback = f.forkFromOwnerDefault.map { ", module default fork_from_owner_default=\($0)" } ?? ""
            return Finding(name: "worker-mode", status: .ok,
                           fact: "\(mode == .task ? task : kthread); selectable with VHOST_SET_FORK_FROM_OWNER before SET_OWNER (now \(mode.rawValue)\(fallback))")
        }
        // vhost.c: since 6.4 the worker is a vhost_task of the owner; before, a kthread.
        return Finding(name: "worker-mode", status: .ok, fact: f.kernelVersion >= (6, 4) ? "\(task), as on every Linux from 6.4" : "\(kthread), as on every Linux before 6.4")
    }

    /// vhost.c vhost_set_memory: more regions than max_mem_regions is E2BIG.
    static func memoryRegions(_ f: DoctorFacts) -> Finding {
        guard let limit = f.maxMemoryRegions else {
            return Finding(name: "memory-regions", status: .warning, fact: "max_mem_regions unreadable (/sys/module/vhost/parameters): the vhost module is not loaded",
                           fix: f.vhostNetModule == .absent ? "modprobe vhost_net" : nil)
        }
        let fix = "modprobe -r vhost_net vhost && modprobe vhost max_mem_regions=64 && modprobe vhost_net"
        if limit < regionsNeeded {
            return Finding(name: "memory-regions", status: .problem, fact: "max_mem_regions=\(limit): vhostctl's memory table needs \(regionsNeeded) regions (E2BIG)", fix: fix)
        }
        return Finding(name: "memory-regions", status: .ok, fact: "max_mem_regions=\(limit): a memory table may have up to \(limit) regions (vhostctl uses \(regionsNeeded); fixed while the module is loaded)")
    }

    /// vhost-net copies through the owner's page tables (copy_from_user, vhost.c translate_desc)
    /// and pins nothing against RLIMIT_MEMLOCK; the XDP drop program's map-less BPF program is
    /// charged to the memory cgroup from Linux 5.11 on, earlier to RLIMIT_MEMLOCK.
    static func lockedMemory(_ f: DoctorFacts) -> Finding {
        let soft = f.lockedMemoryLimit.soft.map { "\($0 / 1024) KiB" } ?? "unlimited"
        let hard = f.lockedMemoryLimit.hard.map { "\($0 / 1024) KiB" } ?? "unlimited"
        let fact = "RLIMIT_MEMLOCK \(soft) (hard \(hard))"
        if f.kernelVersion < (5, 11), let limit = f.lockedMemoryLimit.soft, limit < 1 << 20 {
            return Finding(name: "locked-memory", status: .warning, fact: "\(fact): before Linux 5.11 BPF programs (bench --xdp-drop) are charged to it", fix: "ulimit -l unlimited")
        }
        return Finding(name: "locked-memory", status: .ok, fact: "\(fact): vhost-net pins no memory, so this limit does not stop it")
    }

    static func cgroup(_ f: DoctorFacts) -> Finding {
        guard let path = f.cgroupPath else { return Finding(name: "cgroup", status: .ok, fact: "no /proc/self/cgroup") }
        var fact = "cgroup \(path)"
        if let pids = f.cgroupPidsMax { fact += ", pids.max \(pids)" }
        if let memory = f.cgroupMemoryMax { fact += ", memory.max \(memory)" }
        // From 6.4 each device's worker is a task of the owner, counted in pids.max; each queue
        // pair has its own device, so one task per queue pair.
        if f.kernelVersion >= (6, 4), let pids = f.cgroupPidsMax, let limit = Int(pids), limit < 64 {
            return Finding(name: "cgroup", status: .warning, fact: "\(fact): on Linux 6.4+ each queue pair's worker counts in pids.max",
                           fix: "echo max > /sys/fs/cgroup\(path)/pids.max")
        }
        return Finding(name: "cgroup", status: .ok, fact: fact)
    }

    static func networkNamespace(_ f: DoctorFacts) -> Finding {
        guard let mine = f.networkNamespace else { return Finding(name: "network-namespace", status: .ok, fact: "/proc/self/ns/net unreadable") }
        guard let initial = f.initialNetworkNamespace else {
            return Finding(name: "network-namespace", status: .ok, fact: "\(mine) (PID 1's is unreadable: whether it is the host's is unknown)")
        }
        if mine == initial { return Finding(name: "network-namespace", status: .ok, fact: "\(mine), the same as PID 1's: taps made here are the host's") }
        return Finding(name: "network-namespace", status: .ok,
                       fact: "\(mine), not PID 1's (\(initial)): taps made here are seen only in this namespace; to use the host's, run vhostctl under nsenter -t 1 -n")
    }

    static func kvm(_ f: DoctorFacts) -> Finding {
        if f.kvmPresent { return Finding(name: "kvm", status: .ok, fact: "/dev/kvm is present; vhost-net does not use it") }
        return Finding(name: "kvm", status: .ok,
                       fact: "/dev/kvm is absent, and that does not matter: vhost-net needs no KVM; its rings and buffers are this process's memory, read by the worker through the owner's page tables")
    }

    /// A tap given with `info --tap NAME`, from /sys/class/net/NAME (tun.c's tun_flags, owner and
    /// group attributes): nothing is opened, so a tap in use stays untouched.
    static func tap(_ t: DoctorFacts.TapFacts, _ f: DoctorFacts) -> Finding {
        let name = "tap"
        guard t.exists else {
            return Finding(name: name, status: .warning, fact: "\(t.name) does not exist: attach --create makes it",
                           fix: "ip tuntap add dev \(t.name) mode tap multi_queue\(f.hasNetAdmin ? "" : " user \(f.userName ?? "$USER")")")
        }
        guard let flags = t.flags else {
            return Finding(name: name, status: .problem, fact: "\(t.name) is not a tun/tap device (no tun_flags in /sys/class/net/\(t.name))",
                           fix: "give attach the name of a tap, or a free name with --create (e.g. ip tuntap add dev vhost0 mode tap)")
        }
        guard flags & 0x0002 != 0 else {  // IFF_TAP
            return Finding(name: name, status: .problem, fact: "\(t.name) is a tun (layer 3), not a tap: it carries no Ethernet frames",
                           fix: "ip link delete \(t.name) && ip tuntap add dev \(t.name) mode tap")
        }
        // tun.c tun_not_capable: an owner or group set, not ours, and no CAP_NET_ADMIN → EPERM.
        let ownerRefuses = t.owner.map { $0 >= 0 && UInt32($0) != f.userID } ?? false
        let groupRefuses = t.group.map { $0 >= 0 && !f.groupIDs.contains(UInt32($0)) } ?? false
        if !f.hasNetAdmin && (ownerRefuses || groupRefuses || (t.owner ?? -1) < 0 && (t.group ?? -1) < 0) {
            return Finding(name: name, status: .problem, fact: "\(t.name) belongs to owner \(t.owner ?? -1), group \(t.group ?? -1), and this process (user \(f.userID)) has no CAP_NET_ADMIN: TUNSETIFF gives EPERM",
                           fix: "ip link delete \(t.name) && ip tuntap add dev \(t.name) mode tap multi_queue user \(f.userName ?? "$USER")")
        }
        let queues = flags & 0x0100 != 0 ? "multi-queue (attach --queue-pairs N)" : "single-queue (attach --queue-pairs 1 only; tun.c tun_set_iff refuses IFF_MULTI_QUEUE on it with EINVAL)"
        let header = flags & 0x4000 != 0 ? "IFF_VNET_HDR set by its last opener" : "no IFF_VNET_HDR from its last opener"
        let facts = "\(t.name): tap, \(queues), \(header) (vhostctl sets IFF_VNET_HDR and the offloads, TUNSETOFFLOAD, itself when it attaches)"
        guard let mtu = t.mtu else { return Finding(name: name, status: .warning, fact: "\(facts); MTU unreadable") }
        // The responder's MTU follows the tap's, and the host sends the driver nothing larger:
        // below Ethernet's 1500, 1514-byte frames (bench's largest default) do not fit.
        if mtu < 1500 {
            return Finding(name: name, status: .warning, fact: "\(facts); MTU \(mtu), below Ethernet's 1500 that 1514-byte frames need",
                           fix: "ip link set dev \(t.name) mtu 1500")
        }
        return Finding(name: name, status: .ok, fact: "\(facts); MTU \(mtu)")
    }
}

/// What `vhostctl info` gathers from the system for the doctor; every field can be fabricated in
/// a test. Nothing read here is trusted: a file that does not parse is a fact left unknown.
struct DoctorFacts: Sendable {
    enum ModuleState: Equatable, Sendable { case loaded, builtIn, absent }
    enum DeviceOpen: Equatable, Sendable { case opened, notPermitted(String), failed(String) }

    /// A device node's stat and whether this process may read and write it.
    struct Node: Equatable, Sendable {
        var isCharacterDevice: Bool
        var mode: UInt32
        var owner: UInt32
        var group: UInt32
        var accessible: Bool
        var summary: String { "(mode \(String(mode & 0o7777, radix: 8)), owner \(owner):\(group))" }
    }

    struct HugePages: Equatable, Sendable { var total: Int; var free: Int; var sizeKiB: Int }

    struct TapFacts: Equatable, Sendable {
        var name: String
        var exists: Bool
        var flags: UInt32?
        var mtu: Int?
        /// tun.c tun_show_owner/tun_show_group: -1 when unset.
        var owner: Int64?
        var group: Int64?
    }

    var kernelVersion: (major: Int, minor: Int)
    var devicePath: String
    var vhostNetModule: ModuleState
    var deviceNode: Node?
    var deviceOpen: DeviceOpen
    var tunModule: ModuleState
    var tunNode: Node?
    var tunProblem: String?
    var userID: UInt32
    var userName: String?
    var groupIDs: [UInt32]
    var hasNetAdmin: Bool
    var hugePages: HugePages?
    var hugePageSizesKiB: [Int]
    var selectableWorkerMode: VhostWorkerMode?
    var forkFromOwnerDefault: String?
    var maxMemoryRegions: Int?
    /// RLIMIT_MEMLOCK in bytes; nil is RLIM_INFINITY.
    var lockedMemoryLimit: (soft: UInt64?, hard: UInt64?)
    var cgroupPath: String?
    var cgroupPidsMax: String?
    var cgroupMemoryMax: String?
    var networkNamespace: String?
    var initialNetworkNamespace: String?
    var kvmPresent: Bool
    var tap: TapFacts?
}

extension DoctorFacts {
    /// The module states, read before anything opens a device (an open can load vhost_net).
    static func moduleState(_ module: String, release: String) -> ModuleState {
        if access("/sys/module/\(module)", F_OK) == 0 { return .loaded }
        // A built-in module has no /sys/module entry unless it has parameters; modules.builtin lists it.
        for directory in ["/lib/modules", "/usr/lib/modules"] {
            if let list = KernelInfo.readFile("\(directory)/\(release)/modules.builtin"),
               list.split(separator: "\n").contains(where: { $0.hasSuffix("/\(module).ko") }) { return .builtIn }
        }
        return .absent
    }

    static func node(_ path: String) -> Node? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Node(isCharacterDevice: info.st_mode & S_IFMT == S_IFCHR, mode: info.st_mode, owner: info.st_uid, group: info.st_gid,
                    accessible: access(path, R_OK | W_OK) == 0)
    }

    /// HugePages_Total, HugePages_Free and Hugepagesize from /proc/meminfo (fs/proc/meminfo.c, hugetlb_report_meminfo).
    static func hugePages(meminfo: String) -> HugePages? {
        var values: [String: Int] = [:]
        for line in meminfo.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == ":" || $0 == " " })
            if parts.count >= 2, let value = Int(parts[1]) { values[String(parts[0])] = value }
        }
        guard let total = values["HugePages_Total"], let free = values["HugePages_Free"], let size = values["Hugepagesize"] else { return nil }
        return HugePages(total: total, free: free, sizeKiB: size)
    }

    /// The sizes in /sys/kernel/mm/hugepages ("hugepages-2048kB").
    static func hugePageSizes() -> [Int] {
        guard let dir = opendir("/sys/kernel/mm/hugepages") else { return [] }
        defer { closedir(dir) }
        var sizes: [Int] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix("hugepages-"), name.hasSuffix("kB"), let size = Int(name.dropFirst("hugepages-".count).dropLast(2)) { sizes.append(size) }
        }
        return sizes.sorted()
    }

    /// The cgroup v2 path ("0::/PATH") from /proc/self/cgroup, or the first v1 line's path.
    static func cgroupPath(_ text: String) -> String? {
        let lines = text.split(separator: "\n")
        let line = lines.first(where: { $0.hasPrefix("0::") }) ?? lines.first
        guard let line, let colon = line.lastIndex(of: ":") else { return nil }
        return String(line[line.index(after: colon)...])
    }

    static func link(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func tapFacts(_ name: String, classDirectory: String = "/sys/class/net") -> TapFacts {
        let directory = "\(classDirectory)/\(name)"
        func read(_ attribute: String) -> String? { KernelInfo.readFile("\(directory)/\(attribute)")?.trimmed() }
        let flags = read("tun_flags").flatMap { text in text.hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : nil }
        return TapFacts(name: name, exists: access(directory, F_OK) == 0, flags: flags, mtu: read("mtu").flatMap { Int($0) },
                        owner: read("owner").flatMap { Int64($0) }, group: read("group").flatMap { Int64($0) })
    }

    /// This user's name (getpwuid_r: also users from LDAP or sssd), or nil.
    static func userName(_ uid: uid_t) -> String? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>? = nil
        var buffer = [CChar](repeating: 0, count: 4096)
        // SAFETY: pw_name points into `buffer`, read inside the closure that keeps it alive.
        return buffer.withUnsafeMutableBufferPointer { bytes in
            guard let base = bytes.baseAddress, getpwuid_r(uid, &entry, base, bytes.count, &result) == 0, result != nil, let name = entry.pw_name else { return nil }
            return String(cString: name)
        }
    }

    static func groups() -> [UInt32] {
        let count = getgroups(0, nil)
        guard count > 0 else { return [getegid()] }
        var list = [gid_t](repeating: 0, count: Int(count))
        let got = getgroups(count, &list)
        return [getegid()] + list.prefix(Int(max(got, 0)))
    }
}

extension String {
    /// Without leading and trailing spaces and newlines (a sysfs attribute's value).
    func trimmed() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\n" { s.removeLast() }
        return String(s)
    }
}
