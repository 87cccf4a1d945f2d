import NetFormats
import Vhost

/// Runs the host side's commands: `tap` (a tap and a packet socket on it, or for the in-process
/// device a frame pipe), `link`, `host-send` and `host-expect`. Receiving waits on the socket
/// with a timeout.
struct HostSideExecutor {
    let session: ScriptSession

    /// `tap NAME`: on the kernel, a tap this run creates (IFF_TUN_EXCL: tun.c tun_set_iff
    /// answers EBUSY when the name exists, so no interface of another's is taken over, even one
    /// made between a check and the create), or one it created earlier; any existing tap only
    /// with `allowExistingTaps`.
    func tap(name: String) throws(ScriptError) {
        let rule = "a script attaches only to a tap it created in this run; --allow-existing-tap allows others"
        let exclusive = !session.options.allowExistingTaps && !session.createdTaps.contains(name)
        do {
            switch session.options.device {
            case .kernel:
                if exclusive && Tap.exists(name: name) { throw ScriptError.notAllowed("tap \(name) refused: an interface of that name exists and this script did not create it; \(rule)") }
                // The port this replaces is closed first: a single-queue tap takes one fd, so
                // `tap NAME` again on the script's own tap would be EBUSY while the old fd is open
                // (tun.c tun_attach). Closing the last fd of a tap the script made removes it, and
                // the TUNSETIFF below makes it again.
                session.port = nil
                session.port = try PortBox.tap(name: name, exclusive: exclusive, observer: session.observer)
                if exclusive { session.createdTaps.insert(name) }
            case .inProcess: session.port = try PortBox.pipe(name: name, observer: session.observer)
            }
        } catch let error as ScriptError {
            throw error
        } catch let error as VhostError {
            if exclusive, case .tap(_, .busy, _) = error {
                throw .notAllowed("tap \(name) refused: an interface of that name appeared before the script could create it (EBUSY with IFF_TUN_EXCL); \(rule)")
            }
            throw .device(error)
        } catch {
            throw .unsupported("\(error)")
        }
    }

    /// `link up|down` (a frame pipe has no link: nothing to do).
    func link(up: Bool) throws(ScriptError) {
        let port = try session.requirePort()
        do { try port.setLink(up: up) } catch { throw .device(error) }
    }

    /// `host-send`: the host side sends COUNT numbered frames towards the RX ring.
    func send(count: Operand, size: Operand?) throws(ScriptError) {
        let port = try session.requirePort()
        let count = try session.int(count)
        let size = try size.map { o throws(ScriptError) in try session.int(o) }
        let header = [UInt8](repeating: 0, count: session.hostHeaderLength)
        let shape = FrameLedger.Shape(first: session.ledger.hostSequence, count: count, size: size, pattern: nil)
        session.ledger.hostShapes.append(shape)
        for _ in 0..<count {
            let frame = FrameLedger.frame(session.ledger.hostSequence, shape, source: ScriptRunner.hostMAC)
            do { try port.send(header + frame) } catch { throw .device(error) }
            session.ledger.hostSequence += 1
        }
    }

    /// `host-expect`: the host side must see the next COUNT frames we sent, in order and intact.
    func expect(count: Operand, timeout: Operand) throws(ScriptError) -> ScriptValue {
        let port = try session.requirePort()
        let count = try session.int(count), timeout = try session.milliseconds(timeout)
        let header = session.hostHeaderLength
        var seen = 0
        var deadline = ContinuousClock.now + .milliseconds(timeout)
        while seen < count {
            let left = ContinuousClock.now.duration(to: deadline).inMilliseconds
            guard left > 0, let message = port.receive(milliseconds: Int32(clamping: left)) else {
                let ledger = session.ledger
                throw .timeout("the host side saw \(seen) of \(count) frames in \(timeout) ms (next expected: \(ledger.hostExpectedSequence), sent up to \(ledger.transmitSequence - 1))")
            }
            let frame = Array(message.dropFirst(header))
            guard frame.count >= TestFrame.minimumLength, MACAddress(frame[6..<12]) == TestFrame.source, let sequence = TestFrame.sequence(of: frame) else { continue }
            let expected = session.ledger.hostExpectedSequence
            guard sequence == Int(UInt32(truncatingIfNeeded: expected)) else {
                throw .frameMismatch("the host side saw frame \(sequence) where \(expected) was next (\(FrameLedger.gap(sequence, expected)))")
            }
            guard frame == FrameLedger.frame(expected, FrameLedger.shape(of: expected, in: session.ledger.transmitShapes), source: TestFrame.source) else {
                throw .frameMismatch("frame \(expected) reached the host side corrupt (\(frame.count) bytes)")
            }
            session.ledger.hostExpectedSequence += 1
            seen += 1
            deadline = ContinuousClock.now + .milliseconds(timeout)
        }
        return .number(UInt64(seen))
    }
}
