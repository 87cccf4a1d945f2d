import CVhost
import Glibc
import SystemPackage

/// An XDP program that drops every frame, attached to an interface through a BPF link, as the
/// vhost-net patch series measure TX (testpmd txonly into a tap with XDP drop): the frames leave
/// vhost and die in the tap's XDP hook, so the host stack's cost is out of the measurement.
/// Closing the value (when it goes away) detaches the program.
public struct XDPDropProgram: ~Copyable {
    /// `r0 = XDP_DROP (1); exit`: two `struct bpf_insn`s, little-endian (code, regs, off, imm).
    static let instructions: [UInt64] = [
        0x0000_0001_0000_00b7,  // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 1 (XDP_DROP)
        0x0000_0000_0000_0095,  // BPF_JMP | BPF_EXIT
    ]

    public let interface: String
    let program: Int32
    let link: Int32

    /// Loads the program and attaches it to `interface` (by name). Needs CAP_BPF and CAP_NET_ADMIN.
    public init(interface: String) throws(VhostError) {
        let index = try NetworkInterface(name: interface).index()
        var log = [CChar](repeating: 0, count: 4096)
        let program = Self.instructions.withUnsafeBufferPointer { instructions in
            cvhost_bpf_prog_load(CVHOST_BPF_PROG_TYPE_XDP, instructions.baseAddress, UInt32(instructions.count), "GPL", &log, UInt32(log.count))
        }
        guard program >= 0 else {
            let verifier = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw .system(call: "bpf(BPF_PROG_LOAD)", detail: "an XDP drop program\(verifier.isEmpty ? "" : ": \(verifier)") (needs root and a kernel with BPF syscall support)", errno: Errno(rawValue: -program))
        }
        let link = cvhost_bpf_link_create(program, index, CVHOST_BPF_XDP, 0)
        guard link >= 0 else {
            close(program)
            throw .system(call: "bpf(BPF_LINK_CREATE)", detail: "XDP on \(interface)", errno: Errno(rawValue: -link))
        }
        self.interface = interface
        self.program = program
        self.link = link
    }

    deinit {
        close(link)
        close(program)
    }
}
