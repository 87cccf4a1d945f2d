import ArgumentParser
import Glibc
import Vhost
import VhostNet

/// attach's options for running on what another process set up: descriptors it passed
/// (`--tap-fd`, `--vhost-fd`) and a network namespace (`--netns`).
struct PassedOptions: ParsableArguments {
    @Option(name: .customLong("tap-fd"), help: "Use this inherited descriptor, a tun/tap queue another process opened (TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, IFF_MULTI_QUEUE for more than one), instead of --tap; one per queue pair. Needs no privilege: the link is not brought up, nor its MTU set.")
    var tapFD: [Int32] = []

    @Option(name: .customLong("vhost-fd"), help: "With --tap-fd: use this inherited descriptor of /dev/vhost-net, not yet set up, instead of opening the device; one per queue pair.")
    var vhostFD: [Int32] = []

    @Option(help: "Run in this network namespace: a name of `ip netns` (/run/netns/NAME) or a namespace file (/proc/PID/ns/net). The interface is created or opened there. Needs root.", completion: .file())
    var netns: String?

    /// Checks what can be checked before anything runs.
    func check(queuePairs: Int, tap: String?, create: Bool, macvtap: String?, packetSocket: String?) throws {
        if let netns {
            guard !netns.isEmpty, netns.contains("/") || (try? Tap.validate(name: netns)) != nil else {
                throw ValidationError("--netns \(netns): give a name of `ip netns` (/run/netns/NAME) or the path of a namespace file (/proc/PID/ns/net)")
            }
        }
        guard !tapFD.isEmpty else {
            if !vhostFD.isEmpty { throw ValidationError("--vhost-fd applies with --tap-fd: a tap opened here comes with its own /dev/vhost-net") }
            return
        }
        if tap != nil || create || macvtap != nil || packetSocket != nil {
            throw ValidationError("--tap-fd replaces --tap, --create, --macvtap and --packet-socket: the interface is the one the descriptor is a queue of")
        }
        guard tapFD.count == queuePairs else {
            throw ValidationError("--tap-fd given \(tapFD.count) time(s) for \(queuePairs) queue pair(s): pass one tap queue per queue pair")
        }
        guard vhostFD.isEmpty || vhostFD.count == queuePairs else {
            throw ValidationError("--vhost-fd given \(vhostFD.count) time(s) for \(queuePairs) queue pair(s): pass one per queue pair, or none to open /dev/vhost-net")
        }
        for (option, fd) in tapFD.map({ ("--tap-fd", $0) }) + vhostFD.map({ ("--vhost-fd", $0) }) where fd < 3 {
            throw ValidationError("\(option) \(fd): descriptors 0, 1 and 2 are standard input, output and error; pass the number of the descriptor the helper opened (3 or more)")
        }
        let all = tapFD + vhostFD
        if Set(all).count != all.count { throw ValidationError("--tap-fd and --vhost-fd name the same descriptor twice: each queue and device is its own descriptor") }
    }

    /// Whether attach needs no privilege: descriptors passed, and no namespace to enter.
    var needsNoPrivilege: Bool { !tapFD.isEmpty && netns == nil }

    /// Enters --netns, before any socket, tap or thread (NetworkNamespace.enter).
    func enterNamespace() throws {
        guard let netns else { return }
        do {
            try NetworkNamespace.enter(path: NetworkNamespace.path(for: netns))
        } catch .invalidConfiguration(let reason) {
            throw CLIError(message: "--netns \(netns): \(reason)", status: ExitStatus.usage)
        } catch {
            throw CLIError(message: "--netns \(netns): cannot enter it: \(error)\(geteuid() != 0 ? " (entering a namespace needs root)" : "")", status: ExitStatus.notPermitted)
        }
    }

    /// Checks every passed descriptor (each refusal one line naming the option and the fd) and
    /// returns the interface's name and the pairs for `EndpointConfiguration.adopted`.
    func adopt(_ datapath: QueuePairConfiguration, queuePairs: Int) throws -> (name: String, pairs: [AdoptedQueuePair])? {
        guard !tapFD.isEmpty else { return nil }
        var configuration = datapath
        configuration.multiQueueTap = queuePairs > 1
        var name: String? = nil
        for fd in tapFD {
            let interface: (name: String, flags: Tap.Flags)
            do { interface = try PassedDescriptor.tunInterface(fd) } catch { throw refusal("--tap-fd", error) }
            if let problem = configuration.adoptedTapProblem(interface.flags, name: interface.name) {
                throw refusal("--tap-fd", PassedDescriptor.Refusal(fd: fd, problem: problem))
            }
            if let name, name != interface.name {
                throw CLIError(message: "--tap-fd \(fd) is a queue of \(interface.name), the others of \(name): every descriptor must be a queue of the same tap", status: ExitStatus.usage)
            }
            name = interface.name
        }
        for fd in vhostFD {
            do {
                try PassedDescriptor.requireVhostNet(fd)
                try PassedDescriptor.requireUnowned(fd)
            } catch { throw refusal("--vhost-fd", error) }
        }
        let pairs = tapFD.indices.map { AdoptedQueuePair(tap: tapFD[$0], device: vhostFD.isEmpty ? nil : vhostFD[$0]) }
        return (name ?? "", pairs)
    }

    private func refusal(_ option: String, _ error: PassedDescriptor.Refusal) -> CLIError {
        CLIError(message: "\(option) \(error.fd) \(error.problem)", status: ExitStatus.usage)
    }

    /// A warning when the passed tap's link is down: bringing it up needs CAP_NET_ADMIN, so the
    /// helper that opened it must (`ip link set dev NAME up`).
    static func linkWarning(_ name: String) -> String? {
        guard let up = try? NetworkInterface(name: name).isUp(), !up else { return nil }
        return "vhostctl: warning: \(name) is down, and attach cannot bring up a tap it was passed (that needs CAP_NET_ADMIN): run `ip link set dev \(name) up` as its owner"
    }
}
