/// What is left of a process that created interfaces and nodes and is gone: the decisions of
/// `vhostctl cleanup` and of the reaper `vhostctl attach` spawns, kept apart from the system
/// calls so the unit tier can check them on made-up links and processes.
public enum Leftovers {
    /// The kinds of link swift-vhost creates (IFLA_INFO_KIND): a macvtap, or a tap (the tun
    /// driver's kind). Links of any other kind are never touched, whatever their alias says.
    public static let kindsWeCreate: Set<String> = ["macvtap", "tun"]

    /// Whether the creator a mark names still runs, as seen from this process.
    public enum CreatorState: Equatable, Sendable {
        /// A process with that pid and start time exists and has not exited.
        case running
        /// No such process: the pid is free, was reused (another start time), or the process
        /// is a zombie (it has exited and closed its files).
        case gone
        /// The mark names another pid namespace than ours: its pids mean nothing here.
        case otherNamespace
    }

    /// The state of the creator `mark` names, from what /proc says of its pid (`process`, nil
    /// when there is no such process) and of our own pid namespace.
    public static func creatorState(of mark: InterfaceMark, process: ProcessIdentity?, ourPidNamespace: UInt64) -> CreatorState {
        guard mark.pidNamespace == ourPidNamespace else { return .otherNamespace }
        guard let process, process.startTime == mark.startTime, process.pidNamespace == mark.pidNamespace, !process.hasExited else { return .gone }
        return .running
    }

    /// The creator's state, read from /proc now.
    public static func creatorState(of mark: InterfaceMark, ourPidNamespace: UInt64) -> CreatorState {
        creatorState(of: mark, process: ProcessIdentity.read(pid: mark.pid), ourPidNamespace: ourPidNamespace)
    }

    /// What `cleanup` does with one marked link.
    public enum Decision: Equatable, Sendable {
        /// Its creator is gone: delete it.
        case remove(LinkRecord, InterfaceMark)
        /// Its creator still runs (or lives in another pid namespace): leave it, and say why.
        case keep(LinkRecord, InterfaceMark, CreatorState)
    }

    /// The decision for every link of a kind we create whose alias is a mark; unmarked links
    /// and links of other kinds get none (they are not ours to judge).
    public static func plan(links: [LinkRecord], state: (InterfaceMark) -> CreatorState) -> [Decision] {
        links.compactMap { link in
            guard let kind = link.kind, kindsWeCreate.contains(kind), let alias = link.alias, let mark = InterfaceMark(alias: alias) else { return nil }
            let creator = state(mark)
            return creator == .gone ? .remove(link, mark) : .keep(link, mark, creator)
        }
    }

    /// The links a reaper deletes once its parent is gone: those named in `names` that still
    /// carry exactly the parent's mark and are of a kind we create. A link of that name made by
    /// anyone else since (another alias, or none) is spared.
    public static func reaperTargets(links: [LinkRecord], names: [String], parent: InterfaceMark) -> [LinkRecord] {
        let wanted = Set(names)
        return links.filter { link in
            guard wanted.contains(link.name), let kind = link.kind, kindsWeCreate.contains(kind),
                  let alias = link.alias, let mark = InterfaceMark(alias: alias) else { return false }
            return mark == parent
        }
    }

    /// Whether a node in the tool's directory is a leftover: its name is one `nodeName(for:)`
    /// makes and its creator is gone. Nil for a name that is not ours (left alone).
    public static func isStaleNode(named name: String, state: (InterfaceMark) -> CreatorState) -> Bool? {
        guard let (mark, _) = InterfaceMark.parse(nodeName: name) else { return nil }
        return state(mark) == .gone
    }
}
