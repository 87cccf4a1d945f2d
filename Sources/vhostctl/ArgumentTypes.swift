import ArgumentParser
import DatapathMeasure
import Glibc
import VhostNet
import Virtio

/// A comma-separated list of the values `bench backends` sweeps (`--frame-size 64,1500`). The
/// argument parser splits it and parses every element as `Element`, so a bad element is refused
/// while parsing, naming the option, before anything runs; each option keeps the element type it
/// has everywhere else (docs/options.md).
struct SweepList<Element: ExpressibleByArgument>: ExpressibleByArgument {
    var values: [Element]

    init(_ values: [Element]) { self.values = values }

    init?(argument: String) {
        var values: [Element] = []
        for part in argument.split(separator: ",", omittingEmptySubsequences: false) {
            let text = String(part).trimmingCharacters(in: " ")
            guard !text.isEmpty, let value = Element(argument: text) else { return nil }
            values.append(value)
        }
        guard !values.isEmpty else { return nil }
        self.values = values
    }

    var defaultValueDescription: String { values.map(\.defaultValueDescription).joined(separator: ",") }
}

/// An Ethernet frame size in bytes; `64k` is 65536 (a TSO superframe).
struct FrameSize: ExpressibleByArgument, CustomStringConvertible {
    var bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        if argument.lowercased() == "64k" { bytes = 65536; return }
        guard let value = Int(argument), value > 0 else { return nil }
        bytes = value
    }

    var description: String { bytes == 65536 ? "64k" : String(bytes) }
}

/// A `bench backends --scenario` value: a scenario, or `latency` for ping and udp-rr.
enum ScenarioChoice: ExpressibleByArgument, CustomStringConvertible {
    case scenario(BenchScenario)
    case latency

    init?(argument: String) {
        if argument == "latency" { self = .latency; return }
        guard let scenario = BenchScenario(rawValue: argument) else { return nil }
        self = .scenario(scenario)
    }

    var scenarios: [BenchScenario] {
        switch self {
        case .scenario(let scenario): [scenario]
        case .latency: [.ping, .udpRR]
        }
    }

    var description: String {
        switch self {
        case .scenario(let scenario): scenario.rawValue
        case .latency: "latency"
        }
    }

    static var allValueStrings: [String] { BenchScenario.allCases.map(\.rawValue) + ["latency"] }
}

/// `on` or `off`.
enum Switch: String, ExpressibleByArgument {
    case on, off
    var isOn: Bool { self == .on }
}

/// Where a thread is pinned in a sweep: a CPU number, or `none` (left where the scheduler puts it).
enum CPUChoice: ExpressibleByArgument, CustomStringConvertible {
    case unpinned
    case cpu(Int)

    init?(argument: String) {
        if argument == "none" { self = .unpinned; return }
        guard let number = Int(argument), number >= 0 else { return nil }
        self = .cpu(number)
    }

    /// The CPU, or nil for `none`.
    var number: Int? {
        switch self {
        case .unpinned: nil
        case .cpu(let number): number
        }
    }

    var description: String { number.map(String.init) ?? "none" }
}

extension BenchBackend: ExpressibleByArgument {}
extension NetHeaderOwner: ExpressibleByArgument {}

extension ReceiveCoalescingSetting: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// Refuses a CPU that is not online: each `(option name, CPU or nil)`, as "--worker-cpu 9:
/// this machine has CPUs 0 to 1". The online list is attach's (`WorkerCPUList.onlineCPUs`); where
/// it cannot be read, CPUs 0 to the count online.
func validateOnlineCPUs(_ options: [(name: String, cpu: Int?)]) throws {
    let online = WorkerCPUList.onlineCPUs() ?? Array(0..<max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
    let described = online == Array(online[0]...online[online.count - 1]) ? "\(online[0]) to \(online[online.count - 1])"
                                                                          : online.map(String.init).joined(separator: ",")
    for (name, cpu) in options {
        if let cpu, !online.contains(cpu) { throw ValidationError("--\(name) \(cpu): this machine has CPUs \(described)") }
    }
}
