import ArgumentParser
import Glibc
import Vhost
import HostNetwork
import NetFormats
import Virtio

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say whether vhost-net is usable here and why not, and what the kernel offers.",
        discussion: "Exits 0 when vhost-net is usable, 69 when it is not, 77 when it is there but not permitted.")

    @OptionGroup var common: CommonOptions

    /// `--json` is the global flag (GlobalOptions): one JSON object instead of text.
    var json: Bool { common.json }

    @Option(help: ArgumentHelp("Also check this existing tap (kind, queues, owner, MTU), read from /sys/class/net without opening it.", valueName: "name"),
            completion: CompletionHints.interfaceNames)
    var tap: String?

    struct Report {
        var kernel = KernelInfo.release()
        var usable = false
        var problem: String? = nil
        var status: Int32 = 0
        var features: VirtioFeatures? = nil
        /// Bits above 63 (VHOST_GET_FEATURES_ARRAY), or why there are none.
        var highFeatures: HighFeatures? = nil
        var highFeaturesProblem: String? = nil
        /// The worker mode the next SET_OWNER uses, or why it cannot be chosen.
        var workerMode: VhostWorkerMode? = nil
        var workerModeProblem: String? = nil
        var backendFeatures: VhostBackendFeatures? = nil
        var tapFeatures: UInt32? = nil
        var tapProblem: String? = nil
        var parameters = KernelInfo.moduleParameters()
        /// The doctor's findings: every check, its status, the fact and the fix.
        var checks: [Doctor.Finding] = []
    }

    func gather() -> Report {
        var report = Report()
        let release = report.kernel
        // Before the device is opened: the open may load vhost_net through its devname alias.
        let vhostNetModule = DoctorFacts.moduleState("vhost_net", release: release)
        let tunModule = DoctorFacts.moduleState("tun", release: release)
        var deviceOpen = DoctorFacts.DeviceOpen.opened
        do {
            let device = try VhostNetDevice(path: common.device, observer: common.observer)
            report.features = try device.features()
            do {
                let words = try device.extendedFeatureWords(count: 2)
                report.highFeatures = HighFeatures(rawValue: words[1])
            } catch {
                report.highFeaturesProblem = "this kernel has no VHOST_GET_FEATURES_ARRAY (Linux 6.17), so no feature above bit 63 (\(error))"
            }
            switch device.workerModeControl() {
            case .success(let mode): report.workerMode = mode
            case .failure(let error): report.workerModeProblem = "this kernel has no VHOST_GET/SET_FORK_FROM_OWNER (Linux 6.17, 6.12.y): \(KernelInfo.version >= (6, 4) ? "the worker is a thread of the owner" : "the worker is a kernel thread") (\(error))"
            }
            report.backendFeatures = try device.backendFeatures()
            report.usable = true
        } catch {
            report.problem = "\(error)"
            report.status = reportStatus(error)
            deviceOpen = report.status == ExitStatus.notPermitted ? .notPermitted("\(error)") : .failed("\(error)")
        }
        do {
            report.tapFeatures = try Tap.driverFeatures()
        } catch {
            report.tapProblem = "\(error)"
        }
        var memlock = rlimit()
        getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &memlock)
        // RLIM_INFINITY is (rlim_t)-1 (bits/resource.h), which Swift does not import.
        func limit(_ value: rlim_t) -> UInt64? { value == rlim_t.max ? nil : UInt64(value) }
        let cgroup = KernelInfo.readFile("/proc/self/cgroup").flatMap(DoctorFacts.cgroupPath)
        func cgroupValue(_ file: String) -> String? { cgroup.flatMap { KernelInfo.readFile("/sys/fs/cgroup\($0)/\(file)")?.trimmed() } }
        let facts = DoctorFacts(
            kernelVersion: KernelInfo.version, devicePath: common.device, vhostNetModule: vhostNetModule,
            deviceNode: DoctorFacts.node(common.device), deviceOpen: deviceOpen,
            tunModule: tunModule, tunNode: DoctorFacts.node("/dev/net/tun"), tunProblem: report.tapProblem,
            userID: geteuid(), userName: DoctorFacts.userName(geteuid()), groupIDs: DoctorFacts.groups(),
            hasNetAdmin: KernelInfo.hasEffectiveCapability(12 /* CAP_NET_ADMIN */),
            hugePages: KernelInfo.readFile("/proc/meminfo").flatMap(DoctorFacts.hugePages(meminfo:)), hugePageSizesKiB: DoctorFacts.hugePageSizes(),
            selectableWorkerMode: report.workerMode, forkFromOwnerDefault: KernelInfo.moduleParameter("vhost", "fork_from_owner_default"),
            maxMemoryRegions: KernelInfo.maxMemoryRegions(), lockedMemoryLimit: (limit(memlock.rlim_cur), limit(memlock.rlim_max)),
            cgroupPath: cgroup, cgroupPidsMax: cgroupValue("pids.max"), cgroupMemoryMax: cgroupValue("memory.max"),
            networkNamespace: DoctorFacts.link("/proc/self/ns/net"), initialNetworkNamespace: DoctorFacts.link("/proc/1/ns/net"),
            kvmPresent: access("/dev/kvm", F_OK) == 0, tap: tap.map { DoctorFacts.tapFacts($0) })
        report.checks = Doctor.findings(facts)
        return report
    }

    func reportStatus(_ error: VhostError) -> Int32 {
        switch error {
        case .permissionDenied: return ExitStatus.notPermitted
        default: return ExitStatus.unavailable
        }
    }

    func run() throws {
        let report = gather()
        if json {
            print(try jsonText(report))
        } else {
            print("kernel: \(report.kernel)")
            if report.usable {
                print("vhost-net: usable (\(common.device))")
            } else {
                print("vhost-net: NOT usable: \(report.problem ?? "unknown")")
            }
            if let f = report.features {
                print("vhost features: 0x\(String(f.rawValue, radix: 16))")
                for name in f.featureNames { print("  \(name)") }
            }
            if let h = report.highFeatures {
                print("vhost features above bit 63: 0x\(String(h.rawValue, radix: 16)) (word 1)")
                for name in h.featureNames { print("  \(name)") }
            } else if let problem = report.highFeaturesProblem {
                print("vhost features above bit 63: none: \(problem)")
            }
            if let mode = report.workerMode {
                print("worker mode: \(mode) (chosen with VHOST_SET_FORK_FROM_OWNER before SET_OWNER)")
            } else if let problem = report.workerModeProblem {
                print("worker mode: not selectable: \(problem)")
            }
            if let b = report.backendFeatures {
                print("backend features: 0x\(String(b.rawValue, radix: 16))")
                for name in b.featureNames { print("  \(name)") }
            }
            if let t = report.tapFeatures {
                print("tap features (TUNGETFEATURES): 0x\(String(t, radix: 16))")
                for name in Tap.flagNames(t) { print("  \(name)") }
            } else if let problem = report.tapProblem {
                print("tap: NOT usable: \(problem)")
            }
            print("module parameters:")
            if report.parameters.isEmpty { print("  (none: the vhost modules are not loaded)") }
            for (name, value) in report.parameters { print("  \(name) = \(value)") }
            print("checks:")
            for check in report.checks {
                let status = check.status.rawValue
                print("  \(status)\(String(repeating: " ", count: max(1, 9 - status.count)))\(check.name): \(check.fact)")
                if let fix = check.fix { print("           fix: \(fix)") }
            }
        }
        if report.status != 0 { throw ExitCode(report.status) }
    }

    /// `info --json`: the report's facts, feature words with their names.
    struct JSONReport: Encodable {
        struct Features: Encodable {
            var raw: UInt64
            var names: [String]
        }
        var kernel: String
        var device: String
        var usable: Bool
        var problem: String?
        var features: Features?
        var featuresAbove63: Features?
        var workerMode: String?
        var backendFeatures: Features?
        var tapFeatures: Features?
        var tapProblem: String?
        var moduleParameters: [String: String]
        /// The doctor's findings, in order: name, status (ok, warning, problem), fact, fix.
        var checks: [Doctor.Finding]

        enum CodingKeys: String, CodingKey {
            case kernel, device, usable, problem, features, workerMode, backendFeatures, tapFeatures, tapProblem, moduleParameters, checks
            case featuresAbove63 = "features_above_63"
        }
    }

    func jsonText(_ r: Report) throws -> String {
        func features(_ raw: UInt64?, _ names: [String]?) -> JSONReport.Features? { raw.flatMap { raw in names.map { JSONReport.Features(raw: raw, names: $0) } } }
        var parameters: [String: String] = [:]
        for (name, value) in r.parameters { parameters[name] = value }
        return try JSONOutput.text(JSONReport(
            kernel: r.kernel, device: common.device, usable: r.usable, problem: r.problem,
            features: features(r.features?.rawValue, r.features?.featureNames),
            featuresAbove63: features(r.highFeatures?.rawValue, r.highFeatures?.featureNames),
            workerMode: r.workerMode?.rawValue,
            backendFeatures: features(r.backendFeatures?.rawValue, r.backendFeatures?.featureNames),
            tapFeatures: features(r.tapFeatures.map(UInt64.init), r.tapFeatures.map(Tap.flagNames)),
            tapProblem: r.tapProblem, moduleParameters: parameters, checks: r.checks))
    }
}
