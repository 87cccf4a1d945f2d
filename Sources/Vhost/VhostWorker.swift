import CVhost
import Glibc
import SystemPackage

/// How a vhost device runs its worker (vhost.c vhost_worker_create).
public enum VhostWorkerMode: String, Sendable {
    /// A thread of the owner process (`vhost_task`, Linux 6.4 on; `VHOST_FORK_OWNER_TASK` = 1).
    case task
    /// A kernel thread, a child of kthreadd (always on 6.1; `VHOST_FORK_OWNER_KTHREAD` = 0).
    case kthread
}

/// The thread that moves a device's frames: `vhost-<tid>`, named after the thread that called
/// `VHOST_SET_OWNER`.
public struct VhostWorkerThread: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var tid: Int32
    public var mode: VhostWorkerMode
    /// The CPU it last ran on (field 39 of /proc/<tid>/stat).
    public var cpu: Int
    /// The CPUs it may run on (the first 64), as a bit mask.
    public var allowedCPUs: UInt64

    public var description: String {
        let cpus = (0..<64).filter { allowedCPUs >> UInt64($0) & 1 == 1 }.map(String.init).joined(separator: ",")
        return "\(name): tid \(tid), \(mode == .task ? "a thread of this process" : "a kernel thread"), last on CPU \(cpu), allowed CPUs \(cpus)"
    }

    /// Finds the worker of a device this thread made the owner of: first among this process's
    /// threads (task mode), then among all processes (kthread mode). Nil when there is none.
    public static func find(ownerTID: Int32 = cvhost_gettid()) -> VhostWorkerThread? { findAll(ownerTID: ownerTID).first }

    /// Every worker of the devices this thread made the owner of (one per device, all named
    /// `vhost-<tid>`), task-mode ones first.
    public static func findAll(ownerTID: Int32 = cvhost_gettid()) -> [VhostWorkerThread] {
        let name = "vhost-\(ownerTID)"
        var found: [VhostWorkerThread] = []
        for (directory, mode) in [("/proc/self/task", VhostWorkerMode.task), ("/proc", .kthread)] {
            guard let dir = opendir(directory) else { continue }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let entryName = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                guard let tid = Int32(entryName), !found.contains(where: { $0.tid == tid }) else { continue }
                guard KernelInfo.readFile("\(directory)/\(tid)/comm")?.trimmingTrailingNewlines() == name else { continue }
                found.append(VhostWorkerThread(name: name, tid: tid, mode: mode, cpu: lastCPU(tid), allowedCPUs: affinity(tid)))
            }
        }
        return found
    }

    /// Pins the worker to one CPU (sched_setaffinity), as libvirt's emulatorpin does.
    public func pin(to cpu: Int) throws(VhostError) {
        let rc = cvhost_pin_thread(tid, Int32(cpu))
        guard rc == 0 else { throw .system(call: "sched_setaffinity", detail: "\(name) (tid \(tid)) to CPU \(cpu)", errno: Errno(rawValue: -rc)) }
    }

    static func lastCPU(_ tid: Int32) -> Int {
        // comm may hold spaces; fields after the closing parenthesis are space-separated.
        guard let stat = KernelInfo.readFile("/proc/\(tid)/stat"), let close = stat.lastIndex(of: ")") else { return -1 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After ")" come field 3 (state) onwards: "processor" is field 39, so index 36.
        return fields.count > 36 ? Int(fields[36]) ?? -1 : -1
    }

    /// The CPUs thread `tid` may run on (sched_getaffinity(2)) as a mask of CPUs 0 to 63 (bit n:
    /// CPU n); 0 when it cannot be read.
    public static func affinity(_ tid: Int32) -> UInt64 {
        let mask = cvhost_thread_affinity(tid)
        return mask < 0 ? 0 : UInt64(mask)
    }
}

extension VhostBackend where Self: ~Copyable {
    /// `VHOST_GET_FORK_FROM_OWNER`: the worker mode the next `SET_OWNER` will use. Works before
    /// and after SET_OWNER on kernels that have it (6.12.y, 6.17 on); on others the kernel treats
    /// it as a vring ioctl and answers EPERM before SET_OWNER, which `workerModeControl` reports.
    public func forkFromOwner() throws(VhostError) -> VhostWorkerMode {
        try perform(.getForkFromOwner).value == 0 ? .kthread : .task
    }

    /// `VHOST_SET_FORK_FROM_OWNER`: chooses the worker mode; before SET_OWNER only (EBUSY after).
    public func setForkFromOwner(_ mode: VhostWorkerMode) throws(VhostError) { try perform(.setForkFromOwner(mode == .task ? 1 : 0)) }

    /// `VHOST_NEW_WORKER` with `workerID` in the argument, for probing: vhost-net does not route
    /// the worker ioctls (only vhost-scsi does), so the kernel answers as for a vring ioctl.
    public func newWorker(workerID: UInt32 = 0) throws(VhostError) -> UInt32 {
        UInt32(truncatingIfNeeded: try perform(.newWorker(workerID)).value)
    }

    /// Whether this kernel lets the worker mode be chosen, probed on this fd before SET_OWNER
    /// (the request numbers changed during 6.12.y, so a version number proves nothing): the
    /// current mode, or nil with the kernel's answer when it has no such control.
    public func workerModeControl() -> Result<VhostWorkerMode, VhostError> {
        do { return .success(try forkFromOwner()) } catch { return .failure(error) }
    }
}
