import ArgumentParser
import Glibc
import HostNetwork
import Vhost

/// `vhostctl cleanup`: removes what a vhostctl that is gone left behind (a macvtap or tap whose
/// alias is a vhostctl mark, a device node in the tool's directory), as after a `kill -9` of
/// attach and its reaper together.
struct Cleanup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove the links and device nodes a vhostctl that is no longer running left behind.",
        discussion: """
        Every macvtap (and tap) vhostctl creates carries its creator in the interface alias \
        (vhostctl pid P start S pidns N), and every device node it had to make lives in \
        \(TransientDeviceNode.directory) under a name with the same mark. cleanup removes those \
        whose creator has exited (a pid that is free, reused by a later process, or a zombie) and \
        keeps those of a running vhostctl, printing one line for each, then a summary. Links \
        without a mark, or of another kind than macvtap or tun, are never touched. Exit status \
        0 when nothing is left; 1 when a removal failed. Needs root or CAP_NET_ADMIN.
        """)

    @OptionGroup(title: "Global options") var global: GlobalOptions

    @Flag(name: .customLong("dry-run"), help: "Only list what would be removed.")
    var dryRun = false

    /// `cleanup --json` (docs/json.md): one object with an item per link or node looked at.
    struct Report: Encodable {
        struct Item: Encodable {
            /// removed, would-remove, kept or failed.
            var action: String
            /// macvtap, tun, link, or node.
            var kind: String
            var name: String
            var index: Int32?
            var reason: String
        }
        var dryRun: Bool
        var items: [Item] = []
        var removed = 0, kept = 0, failed = 0
    }

    func run() throws {
        try runReportingErrors { try cleanup() }
    }

    func cleanup() throws {
        guard HostNetwork.canAdministerNetwork else {
            throw CLIError(message: "vhostctl cleanup needs root or CAP_NET_ADMIN (it deletes links and device nodes): run it as root, e.g. with sudo", status: ExitStatus.notPermitted)
        }
        let ourNamespace = try InterfaceMark.current().pidNamespace
        let state = { (mark: InterfaceMark) in Leftovers.creatorState(of: mark, ourPidNamespace: ourNamespace) }
        let verb = dryRun ? "would remove" : "removed"
        let data = DataOutput(json: global.json)
        var report = Report(dryRun: dryRun)
        let action = dryRun ? "would-remove" : "removed"
        var removed = 0, kept = 0, failed = 0

        for decision in Leftovers.plan(links: try RouteNetlink.links(), state: state) {
            switch decision {
            case .keep(let link, let mark, let creator):
                kept += 1
                let why = creator == .running ? "its creator (pid \(mark.pid)) is running" : "its creator is in another pid namespace (\(mark.pidNamespace)), whose pids this one cannot check"
                print("kept \(link.kind ?? "link") \(link.name): \(why)")
                report.items.append(.init(action: "kept", kind: link.kind ?? "link", name: link.name, index: link.index, reason: why))
            case .remove(let link, let mark):
                if !dryRun {
                    do throws(VhostError) {
                        try RouteNetlink.removeLink(index: link.index)
                    } catch .system(_, _, let errno) where errno.rawValue == ENODEV {
                        // Gone meanwhile: nothing left, as asked.
                    } catch {
                        failed += 1
                        printDiagnostic("vhostctl: error: could not remove \(link.kind ?? "link") \(link.name): \(error)")
                        report.items.append(.init(action: "failed", kind: link.kind ?? "link", name: link.name, index: link.index, reason: "\(error)"))
                        continue
                    }
                }
                removed += 1
                let why = "its creator, pid \(mark.pid) started at tick \(mark.startTime), is gone"
                print("\(verb) \(link.kind ?? "link") \(link.name) (index \(link.index)): \(why)")
                report.items.append(.init(action: action, kind: link.kind ?? "link", name: link.name, index: link.index, reason: why))
            }
        }

        let directory = TransientDeviceNode.directory
        for name in TransientDeviceNode.entries(of: directory) {
            guard let stale = Leftovers.isStaleNode(named: name, state: state) else { continue }
            guard stale else {
                kept += 1
                print("kept \(directory)/\(name): its creator is running")
                report.items.append(.init(action: "kept", kind: "node", name: "\(directory)/\(name)", reason: "its creator is running"))
                continue
            }
            if !dryRun && unlink("\(directory)/\(name)") != 0 && errno != ENOENT {
                let problem = String(cString: strerror(errno))
                failed += 1
                printDiagnostic("vhostctl: error: could not remove \(directory)/\(name): \(problem)")
                report.items.append(.init(action: "failed", kind: "node", name: "\(directory)/\(name)", reason: problem))
                continue
            }
            removed += 1
            print("\(verb) node \(directory)/\(name): its creator is gone")
            report.items.append(.init(action: action, kind: "node", name: "\(directory)/\(name)", reason: "its creator is gone"))
        }
        // The directory itself, once empty (attach makes it again when it needs it).
        if !dryRun { rmdir(directory) }

        let things = removed == 1 ? "1 leftover" : "\(removed) leftovers"
        if dryRun {
            print("cleanup --dry-run: \(removed == 0 ? "nothing to remove" : "\(things) to remove"); \(kept) kept (in use)")
        } else {
            print("cleanup: \(removed == 0 ? "nothing to remove" : "\(things) removed")\(failed > 0 ? ", \(failed) could not be removed" : ""); \(kept) kept (in use)")
        }
        if data.json {
            report.removed = removed; report.kept = kept; report.failed = failed
            try data.emit(report)
        }
        if failed > 0 { throw ExitCode(ExitStatus.failure) }
    }
}
