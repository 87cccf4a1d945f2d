import Glibc
import SystemPackage
import Vhost
import VhostModel
import Virtio

/// Runs the device's commands: `open`, `close`, every vhost and tun request (built from the
/// request's syntax entry and the typed operands, and passed as written), and the IOTLB
/// messages. Before a request is issued, `VhostRequest.writableRangeProblem` checks that every
/// address the kernel could write through lies in memory mapped for it; a problem is reported
/// to the observer as a refusal and the request is not issued. Nothing else is refused: a
/// zero-sized or overlapping region, an unknown flag or feature bit reach the kernel, which
/// answers them.
struct DeviceExecutor {
    let session: ScriptSession

    func open(path: String?) throws(ScriptError) {
        let opened: DeviceBox
        do {
            switch session.options.device {
            case .kernel(let defaultPath):
                let target = path ?? defaultPath
                opened = DeviceBox(VhostNetDevice(descriptor: try checkedOpen(target), path: target, observer: session.observer))
            case .inProcess(let features):
                if let path { throw ScriptError.unsupported("open \(path): the in-process device has no device node to open; write `open`") }
                opened = DeviceBox(try InProcessVhostNetDevice(features: features, observer: session.observer))
                session.observer(IoctlEvent(.open(path: ScriptRunner.inProcessDeviceName), result: .success(0)))
            }
        } catch let error as ScriptError {
            throw error
        } catch let error as VhostError {
            throw .device(error)
        } catch {
            throw .unsupported("\(error)")
        }
        session.closeDevice()
        session.device = opened
    }

    /// Opens `path` read-write only when it is a character device the options accept
    /// (/dev/vhost-net's 10:238, and `--allow-device`): a regular file, `/dev/watchdog` or a
    /// link to one is refused before anything opens it (`CheckedOpen`).
    func checkedOpen(_ path: String) throws(ScriptError) -> FileDescriptor {
        do {
            return try CheckedOpen.characterDevice(at: path, accepting: session.options.acceptedDevices)
        } catch {
            let rule = "a script opens only the vhost-net character device (\(DeviceNumber.vhostNet)) or one named with --allow-device PATH"
            switch error {
            case .missing: throw .device(.deviceMissing(path: path))
            case .system(_, let errno) where errno == .permissionDenied || errno == .notPermitted:
                throw .device(.permissionDenied(path: path, errno: errno))
            case .system(_, let errno): throw .device(.system(call: "open", detail: path, errno: errno))
            case .wrongKind, .otherDevice, .replaced, .outside:
                throw .notAllowed("open \(path) refused: \(error); \(rule)")
            }
        }
    }

    func close() throws(ScriptError) {
        _ = try session.requireDevice()
        session.observer(IoctlEvent(.close, result: .success(0)))
        session.closeDevice()
    }

    // MARK: requests

    /// Builds the request from the statement, checks the ranges the kernel could write through,
    /// issues it, and keeps what the device now holds.
    func perform(_ statement: RequestStatement<VhostRequest>) throws(ScriptError) -> ScriptValue? {
        let device = try session.requireDevice()
        var resolved = Resolved()
        for parameter in statement.syntax.parameters {
            if let value = try value(statement.operands[parameter.name], parameter, &resolved) { resolved.values[parameter.name] = value }
        }
        try fillDefaults(statement.syntax.kind, &resolved)
        guard let request = statement.syntax.build(resolved.values) else {
            throw .invalidValue("\(statement.syntax.name): the arguments do not make a \(statement.syntax.kind.name) request")
        }
        if case .setFeatures = request, resolved.highFeatures {
            throw .invalidValue("set-features takes bits 0 to 63 (VHOST_SET_FEATURES is 64 bits): use set-features-array for higher ones")
        }
        // The tool's memory stays safe: no address the kernel could write through (the rings,
        // the table's memory) may lie outside memory mapped for it, and the dirty log's bits
        // must land in a log.
        let mapped = session.mappedRanges
        if let problem = request.writableRangeProblem(mapped: mapped, vringSizes: session.vringSizes, addresses: session.vringAddresses)
            ?? session.logReach.applying(request).problem(mapped: session.logRanges) {
            session.observer(IoctlEvent(.refused(.vhost(request), reason: problem), result: .failure(.invalidArgument)))
            throw .device(.refused(.vhost(request), reason: problem))
        }
        switch request {
        case .setMemoryTable, .setVringAddress: session.memory?.handedToDevice = true
        case .setLogBase: session.log?.handedToDevice = true
        default: break
        }
        // SAFETY: every host address in the request lies in memory this runner mapped (the
        // check above), and memory the device was told about stays mapped until it is closed
        // (`handedToDevice`, `ScriptSession.closeDevice`), so what the device keeps stays valid.
        let answer: VhostAnswer
        do { answer = try device.perform(request) } catch { throw .device(error) }
        remember(request, resolved)
        switch answer {
        case .none: return nil
        case .words(let words): return .words(words)
        case .value(let v):
            if case .getFeatures = request { return .words([v, 0]) }
            return .number(v)
        }
    }

    /// A tun request on the tap (or the in-process device's pipe).
    func perform(_ statement: RequestStatement<TunRequest>) throws(ScriptError) -> ScriptValue? {
        let port = try session.requirePort()
        var resolved = Resolved()
        for parameter in statement.syntax.parameters {
            if let value = try value(statement.operands[parameter.name], parameter, &resolved) { resolved.values[parameter.name] = value }
        }
        guard let request = statement.syntax.build(resolved.values) else {
            throw .invalidValue("\(statement.syntax.name): the arguments do not make a \(statement.syntax.kind.name) request")
        }
        let answer: VhostAnswer
        do { answer = try port.perform(request) } catch { throw .device(error) }
        if case .value(let v) = answer { return .number(v) }
        return nil
    }

    /// The values of one request's arguments, and what resolving them made.
    struct Resolved {
        var values: [String: RequestValue] = [:]
        /// The GPAs of `.guestAddress` parameters, by name.
        var guestAddresses: [String: UInt64] = [:]
        /// The eventfd made for an `eventfd` argument.
        var event: EventBox?
        /// A features argument had bits above 63.
        var highFeatures = false
    }

    func value(_ operand: RequestOperand?, _ parameter: RequestParameter, _ resolved: inout Resolved) throws(ScriptError) -> RequestValue? {
        guard let operand else {
            // An fd left out is a fresh eventfd (the doorbells and the log fd).
            if parameter.kind == .fd { return .fd(try fd(.eventfd, &resolved)) }
            return nil
        }
        switch operand {
        case .number(let o):
            return .number(try session.number(o))
        case .guestAddress(let o):
            let gpa = try session.number(o)
            resolved.guestAddresses[parameter.name] = gpa
            return .host(HostAddress(try session.host(gpa, length: 0)))
        case .regions(let operands):
            var regions: [MemoryTable.Region] = []
            var i = 0
            while i + 2 < operands.count {
                let gpa = try session.number(operands[i]), size = try session.number(operands[i + 1]), at = try session.number(operands[i + 2])
                let host = try session.host(at, length: 0)
                regions.append(MemoryTable.Region(guestAddress: gpa, size: size, userspaceAddress: HostAddress(host).rawValue))
                i += 3
            }
            return .table(MemoryTable(regions: regions))
        case .file(let file):
            return .fd(try fd(file, &resolved))
        case .features(let features):
            var words: [UInt64] = [0, 0]
            for feature in features {
                let add: [UInt64]
                switch feature {
                case .words(let w): add = w
                case .variable(let o):
                    if case .variable(let name, 0) = o.value, case .words(let w)? = session.variables[name] { add = w } else { add = [try session.number(o)] }
                }
                for (i, word) in add.enumerated() {
                    if i >= words.count { words.append(0) }
                    words[i] |= word
                }
            }
            let high = words.dropFirst().contains { $0 != 0 }
            switch parameter.kind {
            case .features:
                resolved.highFeatures = high
                return .words(words)
            case .offloads:
                guard !high, words[0] <= UInt64(UInt32.max) else { throw .outOfRange("\(parameter.name.uppercased()) 0x\(String(words[0], radix: 16)) does not fit TUNSETOFFLOAD's 32 bits") }
                return .number(words[0])
            default:
                guard !high else { throw .outOfRange("\(parameter.name.uppercased()) has bits above 63, which the kernel's 64-bit word cannot carry") }
                return .number(words[0])
            }
        }
    }

    /// The fd an fd argument stands for.
    func fd(_ file: FileOperand, _ resolved: inout Resolved) throws(ScriptError) -> Int32 {
        switch file {
        case .unbind:
            return -1
        case .eventfd:
            do {
                let event = EventBox(try EventFD())
                resolved.event = event
                return event.value.fd
            } catch { throw .device(error) }
        case .closed:
            // An fd number that was just closed: the kernel's fdget finds nothing (EBADF).
            do {
                let event = try EventFD()
                let number = event.fd
                _ = consume event
                return number
            } catch { throw .device(error) }
        case .file:
            if let open = session.openFiles.first { return open }
            let fd = Glibc.open("/proc/self/status", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .device(.system(call: "open", detail: "/proc/self/status", errno: Errno(rawValue: Glibc.errno))) }
            session.openFiles.append(fd)
            return fd
        case .port:
            return try session.requirePort().fd
        case .number(let o):
            let n = try session.number(o)
            guard let fd = Int32(exactly: Int64(bitPattern: n)) else { throw .outOfRange("fd \(Int64(bitPattern: n)) does not fit the kernel's int") }
            return fd
        }
    }

    /// The arguments a request takes from the script's state when they are left out: the
    /// script memory's table, the log's address, the laid-out ring's parts.
    func fillDefaults(_ kind: IoctlRequest, _ resolved: inout Resolved) throws(ScriptError) {
        switch kind {
        case .setMemoryTable where resolved.values["regions"] == nil:
            resolved.values["regions"] = .table(try session.requireMemory().memory.map.memoryTable)
        case .setLogBase:
            guard let log = session.log, let region = log.memory.map.regions.first else {
                throw .missingPrerequisite("set-log-base needs a log: put `log SIZE` first")
            }
            resolved.values["log"] = .host(region.hostAddress)
        case .setVringAddress:
            var index: UInt32 = 0
            if case .number(let n)? = resolved.values["index"], let exact = UInt32(exactly: n) { index = exact }
            let ring = session.rings[VringIndex(index)]
            for (name, part) in [("desc", ring?.descriptors), ("avail", ring?.avail), ("used", ring?.used)] where resolved.values[name] == nil {
                guard let part else {
                    throw .missingPrerequisite("set-vring-addr \(index) needs a ring: put `ring \(index) SIZE` first, or give desc=, avail= and used=")
                }
                resolved.guestAddresses[name] = part
                resolved.values[name] = .host(HostAddress(try session.host(part, length: 0)))
            }
        default:
            break
        }
    }

    /// What the device holds after `request` succeeded, as later requests and commands need it.
    func remember(_ request: VhostRequest, _ resolved: Resolved) {
        switch request {
        case .setFeatures(let bits): session.featureWords = [bits, 0]
        case .setFeaturesArray(let words): session.featureWords = words + [UInt64](repeating: 0, count: max(0, 2 - words.count))
        case .setVringNum(let index, let num): session.vringSizes[index] = num
        case .setVringBase(let index, let base): session.vringBases[index] = base
        case .setMemoryTable(let table): session.table = table.regions
        case .setLogBase(let address): session.logBase = address.rawValue
        case .setVringAddress(let index, let addresses):
            session.vringAddresses[index] = addresses
            if let d = resolved.guestAddresses["desc"], let a = resolved.guestAddresses["avail"], let u = resolved.guestAddresses["used"] {
                RingExecutor(session: session).adopt(index, descriptors: d, avail: a, used: u)
            }
        case .setVringKick(let index, _): session.doorbells[index, default: [:]][.kick] = resolved.event
        case .setVringCall(let index, _): session.doorbells[index, default: [:]][.call] = resolved.event
        case .setVringErr(let index, _): session.doorbells[index, default: [:]][.error] = resolved.event
        case .netSetBackend, .setLogFD: if let event = resolved.event { session.keptEvents.append(event) }
        case .resetOwner:
            // vhost_dev_reset_owner drops every vring's size and addresses.
            session.vringSizes.removeAll()
            session.vringAddresses.removeAll()
            session.table.removeAll()
            session.logBase = 0
            session.featureWords = [0, 0]
        default: break
        }
    }

    // MARK: IOTLB

    func iotlbDescriptor() throws(ScriptError) -> Int32 {
        let device = try session.requireDevice()
        guard let fd = device.iotlbDescriptor else { throw .unsupported("the \(device.name) has no IOTLB (it offers no ACCESS_PLATFORM)") }
        return fd
    }

    /// `VHOST_IOTLB_UPDATE` mapping IOVA..+SIZE to the host address of GPA: refused before the
    /// write unless the whole `uaddr` range is mapped for the device.
    func iotlbUpdate(iova: Operand, size: Operand, gpa: Operand, access: IOTLBMessage.Access) throws(ScriptError) {
        let fd = try iotlbDescriptor()
        let length = try session.number(size)
        let start = HostAddress(try session.host(try session.number(gpa), length: 0)).rawValue
        let message = IOTLBMessage(kind: .update, iova: try session.number(iova), length: length, userAddress: start, access: access)
        guard session.mappedRanges.contains(start, length: length) else {
            let reason = "its uaddr range 0x\(String(start, radix: 16))+\(length) runs outside memory mapped for the device"
            session.observer(IoctlEvent(.refusedMessage(message, reason: reason), result: .failure(.invalidArgument)))
            throw .refusedMessage(message, reason: reason)
        }
        session.memory?.handedToDevice = true
        do { try message.write(to: fd, observer: session.observer) } catch { throw .device(error) }
    }

    func iotlbInvalidate(iova: Operand, size: Operand) throws(ScriptError) {
        let fd = try iotlbDescriptor()
        let message = IOTLBMessage(kind: .invalidate, iova: try session.number(iova), length: try session.number(size))
        do { try message.write(to: fd, observer: session.observer) } catch { throw .device(error) }
    }

    /// Waits for the kernel's `VHOST_IOTLB_MISS` on the vhost fd (poll(2) on it, up to the timeout).
    func iotlbMiss(timeout: Operand) throws(ScriptError) -> ScriptValue {
        let fd = try iotlbDescriptor()
        let milliseconds = try session.milliseconds(timeout)
        let deadline = ContinuousClock.now + .milliseconds(milliseconds)
        while true {
            let left = ContinuousClock.now.duration(to: deadline).inMilliseconds
            guard left > 0 else { throw .timeout("no VHOST_IOTLB_MISS from the kernel in \(milliseconds) ms") }
            do {
                if let message = try IOTLBMessage.read(from: fd, milliseconds: Int32(clamping: left), observer: session.observer), message.kind == .miss {
                    return .number(message.iova)
                }
            } catch { throw .device(error) }
        }
    }
}
