import Glibc
import Vhost
import Virtio

/// What a live migration in miniature did: pre-copy rounds driven by the dirty log, the
/// stop-and-copy, and whether the copy equalled the source at the switch-over.
public struct MigrationReport: Sendable, CustomStringConvertible {
    /// Pages copied per pre-copy round; round 0 copies every page.
    public var pagesPerRound: [Int]
    /// Dirty pages copied while the device was stopped.
    public var finalPages: Int
    /// From `stop` on the source to the backends attached on the destination, in seconds.
    public var downtime: Double
    /// Whether every byte of the copy equalled the source at the switch-over.
    public var identical: Bool
    /// Where each vring resumed (GET_VRING_BASE at the stop).
    public var bases: VringBases
    /// How often the device signalled the log eventfd (VHOST_SET_LOG_FD).
    public var logSignals: UInt64

    public var description: String {
        let rounds = pagesPerRound.enumerated().map { "round \($0.offset): \($0.element) pages" }.joined(separator: ", ")
        return "\(rounds); stop-and-copy: \(finalPages) pages; downtime \(Int((downtime * 1e6).rounded())) µs; copy \(identical ? "equals" : "DIFFERS FROM") the source at the switch-over; resumed at avail idx rx \(bases.receive), tx \(bases.transmit); log eventfd signalled \(logSignals)×"
    }
}

extension VirtioNetQueuePair where Backend: ~Copyable, Port: ~Copyable {
    /// Migration in miniature, as QEMU migrates a VM with vhost-net: dirty logging on
    /// (VHOST_F_LOG_ALL, SET_LOG_BASE, SET_LOG_FD), a copy of guest memory made in pre-copy rounds
    /// driven by the log while the device keeps running, then `stop`, GET_VRING_BASE, the last
    /// dirty pages copied, and a resume on `device` (a fresh `/dev/vhost-net`) over the copy.
    ///
    /// `between` runs before each round: the host side's traffic, which the device writes into
    /// guest memory. It must not run this pair's driver (the log records the device's writes,
    /// not the driver's; a real VM's hypervisor tracks those separately). Rounds stop after
    /// `maximumRounds` or when a round finds fewer than `convergedBelow` dirty pages.
    public func migrate(to device: consuming Backend, maximumRounds: Int = 8, convergedBelow: Int = 4,
                        between: () throws -> Void) throws -> MigrationReport {
        let doorbell = try EventFD()
        try enableDirtyLog()
        guard let log = dirtyLog else { throw VhostError.invalidState("the dirty log did not start") }
        try session.setLogDoorbell(doorbell)
        let copy = try GuestMemory(layout: session.memory.map.regions.map { GuestMemory.Layout(guestAddress: $0.guestAddress, size: $0.size) },
                                   backing: session.memory.backing)
        let source = session.memory.map, target = copy.map
        func copyPage(_ page: GuestAddress) {
            let length = Int(DirtyLog.pageSize)
            guard let from = source.host(guest: page, length: length), let to = target.host(guest: page, length: length) else { return }
            // SAFETY: both pages lie in mappings this pair owns; the device only writes the
            // source, and a page it writes during the copy is dirty again for the next round.
            to.copyMemory(from: from, byteCount: length)
        }
        _ = log.sync()
        var rounds: [Int] = []
        // Round 0: everything.
        var all = 0
        for region in source.regions {
            (copy.map.regions.first { $0.guestAddress == region.guestAddress }!.host).copyMemory(from: region.host, byteCount: region.size)
            all += region.size / Int(DirtyLog.pageSize)
        }
        rounds.append(all)
        for _ in 0..<maximumRounds {
            try between()
            let dirty = log.sync()
            dirty.forEach(copyPage)
            rounds.append(dirty.count)
            if dirty.count < convergedBelow { break }
        }
        // Stop-and-copy.
        let stopped = ContinuousClock.now
        try stop()
        guard let bases = session.savedBases else { throw VhostError.invalidState("the pair was not running") }
        let last = log.sync()
        last.forEach(copyPage)
        var identical = true
        for region in source.regions {
            let twin = target.regions.first { $0.guestAddress == region.guestAddress }!
            if memcmp(region.host, twin.host, region.size) != 0 { identical = false }
        }
        let signals = doorbell.consume() ?? 0
        // Switch over: the queues follow the copy, the session takes the fresh device and the
        // copy (closing the old device before unmapping the old memory), and resumes.
        try receiveQueue.queue.move(to: target)
        try transmitQueue.queue.move(to: target)
        try session.migrate(to: device, memory: copy, receive: receiveQueue.queue, transmit: transmitQueue.queue)
        try resume()
        let downtime = stopped.duration(to: .now).inSeconds
        return MigrationReport(pagesPerRound: rounds, finalPages: last.count, downtime: downtime, identical: identical,
                               bases: .init(receive: bases.receive, transmit: bases.transmit), logSignals: signals)
    }
}
