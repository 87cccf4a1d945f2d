// Uses swift-vhost from outside, through its public API only: opens a queue pair on the
// in-process device (no root, no /dev/vhost-net), sends a frame and receives one, runs a script, and exits 1
// when a frame is not the one that was sent or the script fails. With `--kernel TAP` it does the same on the
// kernel's /dev/vhost-net and a new tap named TAP (as root, where vhost_net is loaded).
import Glibc
import NetFormats
import Vhost
import VhostModel
import VhostNet
import VhostScript

struct ExampleFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// getting-started: in-process begin
/// Sends one frame through a queue pair on the in-process device, and receives one.
func sendAndReceiveInProcess() throws {
    // The in-process device serves the rings from a thread as the kernel's vhost-net does,
    // with a frame pipe as its backend where the kernel would have a tap.
    var pipe = try FramePipe(name: "example0")
    guard let host = pipe.takeHostEnd(), let port = pipe.takeDeviceEnd() else {
        throw ExampleFailure("the pipe's ends were already taken")
    }
    var configuration = QueuePairConfiguration(tapName: "example0")
    configuration.features = [.version1, .eventIndex]
    // Runs QEMU's start sequence (SET_OWNER, SET_FEATURES, SET_MEM_TABLE, the vrings,
    // NET_SET_BACKEND) against the device, and posts the receive buffers.
    let pair = try VirtioNetQueuePair(configuration, device: try InProcessVhostNetDevice(), port: port)
    // The pipe carries the virtio-net header before each frame, as a tap with IFF_VNET_HDR does.
    let header = [UInt8](repeating: 0, count: pair.session.socketHeaderLength ?? 0)

    // Send: the frame goes on the TX ring, and the device writes it into the pipe.
    let outgoing = TestFrame.bytes(1, length: 64)
    try pair.transmit(frame: outgoing)
    guard let message = host.receive(milliseconds: 1000), Array(message.dropFirst(header.count)) == outgoing else {
        throw ExampleFailure("the device did not deliver the frame that was sent")
    }

    // Receive: the host writes a frame into the pipe, and the device puts it in an RX buffer.
    let incoming = TestFrame.bytes(2, length: 64)
    try host.send(header + incoming)
    var received: [[UInt8]] = []
    try pair.receive(limit: 1, milliseconds: 1000) { frame in received.append(Array(frame.frame)) }
    guard received == [incoming] else {
        throw ExampleFailure("received \(received.count) frame(s), not the one the host sent")
    }
}
// getting-started: in-process end

// scripting-guide: run begin
/// Runs a script of vhost ioctls on the in-process device, with an expectation on the kernel's answer.
func runAScript() throws {
    let script = try Script(parsing: """
        open
        set-owner
        expect EBUSY          # vhost_dev_set_owner: a device has one owner
        set-owner
        """, name: "owner.vhost")
    var options = ScriptRunner.Options()
    options.device = .inProcess()       // or .kernel(path: "/dev/vhost-net"), the default
    var lines: [String] = []
    try ScriptRunner(options: options) { line in lines.append(line) }.run(script)
    guard lines.count >= 3 else { throw ExampleFailure("the script printed \(lines.count) lines, not one per command") }
}
// scripting-guide: run end

// getting-started: kernel begin
/// The same on the kernel: `/dev/vhost-net` and a new tap named `tapName` (needs root or
/// CAP_NET_ADMIN, and the vhost_net module). Frames sent go out of the tap into the host's
/// stack; what the host sends to the tap arrives in `receive`.
func sendOnTheKernel(tapName: String) throws {
    guard !Tap.exists(name: tapName) else { throw ExampleFailure("\(tapName) exists: name a new tap") }
    var configuration = QueuePairConfiguration(tapName: tapName)
    configuration.features = [.version1, .eventIndex]
    // Opens the tap, then /dev/vhost-net, and runs the same start sequence; the tap goes
    // away with the pair.
    let pair = try VhostNetQueuePair(configuration)
    try pair.transmit(frame: TestFrame.bytes(1, length: 64))
    try pair.drainTransmit()
    print("sent a frame through vhost-net into \(tapName)")
}
// getting-started: kernel end

do {
    let arguments = CommandLine.arguments.dropFirst()
    if arguments.first == "--kernel" {
        guard arguments.count == 2, let tapName = arguments.last else {
            throw ExampleFailure("usage: outside-example [--kernel TAP]")
        }
        try sendOnTheKernel(tapName: tapName)
    } else {
        try sendAndReceiveInProcess()
        try runAScript()
        print("outside-example: sent a frame and received one through a queue pair on the in-process device, and ran a script")
    }
} catch {
    var line = "outside-example: error: \(error)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(1)
}
