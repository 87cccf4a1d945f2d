import SystemPackage
import Vhost
import Virtio

/// Writes what a command did to the kernel as a script that `vhostctl script run` replays:
/// every vhost ioctl with the kernel's answer as an expectation (`expect EBUSY` before a call
/// that failed, `expect base 17` after a GET), guest memory and ring addresses as guest-physical
/// addresses (the replay maps its own memory), and the driver's ring operations as `send` and
/// `post` lines. Replaying compares the kernel's answers with the recorded ones and stops at the
/// first difference: the tool for "what changed between kernel A and kernel B".
///
/// What is not replayed is written as a comment: tap and interface ioctls other than the
/// tap's creation and header size, IOTLB traffic, and values that depend on the outside
/// world (the RX vring's base counts the frames the host happened to send).
public final class ScriptRecorder: Sendable {
    struct State {
        var lines: [String] = []
        var table: MemoryTable? = nil
        var nums: [UInt32: UInt32] = [:]
        var features: UInt64 = 0
        var highFeatures: UInt64 = 0
        /// Ring operations not yet written, per vring: chains and frame bytes.
        var pending: [UInt32: (chains: Int, bytes: Int)] = [:]
    }
    private let state = Locked(State())

    public init() {}

    /// Give this to the device, tap and session as their observer (chain it with `--trace`'s).
    public var ioctlObserver: IoctlObserver { { [self] event in self.record(event) } }
    /// Give this to the queue pair's configuration.
    public var ringObserver: RingObserver { { [self] event in self.record(event) } }

    /// The script so far, with `header` as its opening comment.
    public func script(header: String) -> String {
        state.withLock { state in
            flush(&state)
            let top = header.split(separator: "\n", omittingEmptySubsequences: false).map { "# \($0)" }
            return (top + state.lines).joined(separator: "\n") + "\n"
        }
    }

    private func flush(_ state: inout State) {
        for queue in state.pending.keys.sorted() {
            let (chains, bytes) = state.pending[queue]!
            let header = HighFeatures(rawValue: state.highFeatures).netHeaderLength ?? VirtioFeatures(rawValue: state.features).netHeaderLength
            if queue == VhostNetDevice.receiveQueueIndex {
                let size = max(bytes / max(chains, 1) + header, header + 14)
                state.lines.append("post \(queue) count=\(chains) size=\(size)")
            } else {
                let size = min(max(bytes / max(chains, 1), 18), 65535)
                state.lines.append("send \(queue) count=\(chains) size=\(size)   # frame contents are not recorded, only their number and mean size")
            }
        }
        state.pending.removeAll()
    }

    func record(_ event: RingEvent) {
        state.withLock { state in
            if case .published(let queue, let chains, let bytes) = event {
                let old = state.pending[queue] ?? (0, 0)
                state.pending[queue] = (old.chains + chains, old.bytes + bytes)
            }
        }
    }

    private static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    func record(_ event: IoctlEvent) {
        state.withLock { state in
            flush(&state)
            var lines: [String] = []
            let failed: Errno? = if case .failure(let errno) = event.result { errno } else { nil }
            func call(_ line: String, then check: String? = nil) {
                if let failed { lines.append("expect \(failed.name)") }
                lines.append(line)
                if failed == nil, let check { lines.append(check) }
            }
            guard let request = event.request else {
                if event.name == "open", case .name(let path) = event.payload {
                    call(path == VhostNetDevice.defaultPath ? "open" : "open \(path)")
                } else if event.name == "close" {
                    lines.append("close")
                } else if !event.name.hasPrefix(" ") {
                    lines.append("# \(event) (not replayed)")
                }
                state.lines += lines
                return
            }
            switch (request, event.payload) {
            case (.setOwner, _): call("set-owner")
            case (.resetOwner, _): call("reset-owner")
            case (.getFeatures, .word(let value)): call("get-features", then: "expect features == \(ScriptRecorder.hex(value))")
            case (.setFeatures, .word(let value)):
                call("set-features \(ScriptRecorder.hex(value))")
                if failed == nil { state.features = value; state.highFeatures = 0 }
            case (.getFeaturesArray, .words(let words)):
                call("get-features-array \(words.count)", then: words.first.map { "expect features == \(ScriptRecorder.hex($0))" })
            case (.setFeaturesArray, .words(let words)):
                let high = HighFeatures(rawValue: words.count > 1 ? words[1] : 0).featureNames
                call("set-features-array \(ScriptRecorder.hex(words.first ?? 0))" + (high.isEmpty ? "" : " " + high.joined(separator: " ")))
                if failed == nil { state.features = words.first ?? 0; state.highFeatures = words.count > 1 ? words[1] : 0 }
            case (.getBackendFeatures, .word(let value)): call("get-backend-features", then: "expect backend-features == \(ScriptRecorder.hex(value))")
            case (.setBackendFeatures, .word(let value)): call("set-backend-features \(ScriptRecorder.hex(value))")
            case (.getForkFromOwner, .word(let value)): call("get-fork-owner", then: "expect fork-owner == \(value)")
            case (.setForkFromOwner, .word(let value)): call("set-fork-owner \(value == 0 ? "kthread" : "task")")
            case (.newWorker, .word(let value)): call("new-worker", then: "expect worker == \(value)")
            case (.setMemoryTable, .memoryTable(let table)):
                // The replay maps its own memory at the same guest-physical addresses.
                lines.append("memory " + table.regions.map { "\(ScriptRecorder.hex($0.size)) \(ScriptRecorder.hex($0.guestAddress))" }.joined(separator: " "))
                call("set-mem-table")
                if failed == nil { state.table = table }
            case (.setVringNum, .vringState(let index, let num)):
                call("set-vring-num \(index) \(num)")
                if failed == nil { state.nums[index] = num }
            case (.setVringBase, .vringState(let index, let num)): call("set-vring-base \(index) \(num)")
            case (.getVringBase, .vringState(let index, let num)):
                if index == VhostNetDevice.receiveQueueIndex {
                    call("get-vring-base \(index)   # was \(num) when recorded; RX counts the frames the host happened to send")
                } else {
                    call("get-vring-base \(index)", then: "expect base \(num)")
                }
            case (.setVringAddress, .vringAddress(let index, let addresses)):
                func gpa(_ address: HostAddress) -> String? {
                    guard let table = state.table else { return nil }
                    for region in table.regions where address.rawValue >= region.userspaceAddress && address.rawValue < region.userspaceAddress + region.size {
                        return ScriptRecorder.hex(region.guestAddress + address.rawValue - region.userspaceAddress)
                    }
                    return nil
                }
                if let desc = gpa(addresses.descriptors), let avail = gpa(addresses.avail), let used = gpa(addresses.used) {
                    call("set-vring-addr \(index) desc=\(desc) avail=\(avail) used=\(used)" + (addresses.log.map { " log=\(ScriptRecorder.hex($0.rawValue))" } ?? ""))
                } else {
                    lines.append("# \(event) (not replayed: the addresses are outside the recorded memory table)")
                }
            case (.setVringKick, .vringFile(let index, let fd)): call("set-vring-kick \(index)" + (fd < 0 ? " -1" : ""))
            case (.setVringCall, .vringFile(let index, let fd)): call("set-vring-call \(index)" + (fd < 0 ? " -1" : ""))
            case (.setVringErr, .vringFile(let index, let fd)): call("set-vring-err \(index)" + (fd < 0 ? " -1" : ""))
            case (.setVringBusyloopTimeout, .vringState(let index, let num)): call("set-vring-busyloop-timeout \(index) \(num)")
            case (.getVringBusyloopTimeout, .vringState(let index, let num)): call("get-vring-busyloop-timeout \(index)", then: "expect busyloop-timeout == \(num)")
            case (.netSetBackend, .vringFile(let index, let fd)): call("set-backend \(index) \(fd < 0 ? "-1" : "tap")")
            case (.setLogFD, .fd(let fd)): call("set-log-fd" + (fd < 0 ? " -1" : ""))
            case (.tunSetInterface, .name(let name)): call("tap \(name)")
            case (.tunSetVnetHeaderSize, .word(let size)): call("set-vnet-hdr-size \(size)")
            case (.tunSetOffload, .word(let bits)): call("set-offloads \(ScriptRecorder.hex(bits))")
            default:
                lines.append("# \(event) (not replayed)")
            }
            state.lines += lines
        }
    }
}
