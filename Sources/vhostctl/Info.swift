import ArgumentParser
import Vhost
import HostNetwork
import NetFormats
import Virtio

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say whether vhost-net is usable here and why not, and what the kernel offers.",
        discussion: "Exits 0 when vhost-net is usable, 69 when it is not, 77 when it is there but not permitted.")

    @OptionGroup var common: CommonOptions

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    struct Report {
        var kernel = KernelInfo.release()
        var usable = false
        var problem: String? = nil
        var status: Int32 = 0
        var features: VirtioFeatures? = nil
        var backendFeatures: VhostBackendFeatures? = nil
        var tapFeatures: UInt32? = nil
        var tapProblem: String? = nil
        var parameters = KernelInfo.moduleParameters()
    }

    func gather() -> Report {
        var report = Report()
        do {
            let device = try VhostNetDevice(path: common.device, observer: common.observer)
            report.features = try device.features()
            report.backendFeatures = try device.backendFeatures()
            report.usable = true
        } catch {
            report.problem = "\(error)"
            report.status = reportStatus(error)
        }
        do {
            report.tapFeatures = try Tap.driverFeatures()
        } catch {
            report.tapProblem = "\(error)"
        }
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
            print(jsonText(report))
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
        }
        if report.status != 0 { throw ExitCode(report.status) }
    }

    func jsonText(_ r: Report) -> String {
        func features(_ raw: UInt64?, _ names: [String]?) -> JSON {
            guard let raw, let names else { return .null }
            return .object([("raw", .number(raw)), ("names", .array(names.map(JSON.string)))])
        }
        return JSON.object([
            ("kernel", .string(r.kernel)),
            ("device", .string(common.device)),
            ("usable", .bool(r.usable)),
            ("problem", r.problem.map(JSON.string) ?? .null),
            ("features", features(r.features?.rawValue, r.features?.featureNames)),
            ("backend_features", features(r.backendFeatures?.rawValue, r.backendFeatures?.featureNames)),
            ("tap_features", features(r.tapFeatures.map(UInt64.init), r.tapFeatures.map(Tap.flagNames))),
            ("tap_problem", r.tapProblem.map(JSON.string) ?? .null),
            ("module_parameters", .object(r.parameters.map { ($0.name, JSON.string($0.value)) })),
        ]).text
    }
}
