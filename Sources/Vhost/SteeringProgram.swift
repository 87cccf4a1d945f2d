import CVhost
import Glibc
import SystemPackage

// RSS for a multiqueue tap, as QEMU does it: an eBPF program attached with TUNSETSTEERINGEBPF
// chooses the queue of every frame the host sends to the tap. tun.c tun_ebpf_select_queue runs
// it on the skb (skb->data at the Ethernet header: ndo_select_queue runs in __dev_queue_xmit) and
// takes its return value as a u16 (`u16 ret = bpf_prog_run_clear_cb(...)`), modulo the number of
// queues. The program below returns at most 0xffff, so the truncation never matters, also on
// kernels that keep the return as a u32.

/// An eBPF register (`BPF_REG_0` … `BPF_REG_10`).
public enum BPFRegister: UInt8, Sendable {
    case r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10
}

/// One eBPF instruction, `struct bpf_insn` (linux/bpf.h): an opcode, the destination and source
/// registers, a signed 16-bit offset and a signed 32-bit immediate.
public struct BPFInstruction: Sendable, Equatable, CustomStringConvertible {
    /// The opcode: class, size or operation, mode or source (the `BPF_*` constants below).
    public var code: UInt8
    /// dst_reg.
    public var destination: BPFRegister
    /// src_reg.
    public var source: BPFRegister
    /// off: a jump's distance in instructions, or a memory offset.
    public var offset: Int16
    /// imm: the constant operand.
    public var immediate: Int32

    /// An instruction from its fields (the encoders below build the ones the program uses).
    public init(code: UInt8, destination: BPFRegister = .r0, source: BPFRegister = .r0, offset: Int16 = 0, immediate: Int32 = 0) {
        self.code = code
        self.destination = destination
        self.source = source
        self.offset = offset
        self.immediate = immediate
    }

    // Opcode fields (linux/bpf_common.h and linux/bpf.h).
    /// Instruction classes: BPF_LD, BPF_ALU, BPF_JMP, BPF_ALU64.
    public static let classLD: UInt8 = 0x00, classALU: UInt8 = 0x04, classJMP: UInt8 = 0x05, classALU64: UInt8 = 0x07
    /// Load sizes: BPF_W (32 bits), BPF_H (16), BPF_B (8).
    public static let sizeW: UInt8 = 0x00, sizeH: UInt8 = 0x08, sizeB: UInt8 = 0x10
    /// Load modes: BPF_ABS (at a constant offset of the packet), BPF_IND (at src_reg + imm).
    public static let modeABS: UInt8 = 0x20, modeIND: UInt8 = 0x40
    /// Operand sources: BPF_K (the immediate), BPF_X (src_reg).
    public static let sourceK: UInt8 = 0x00, sourceX: UInt8 = 0x08
    /// ALU operations: BPF_MUL, BPF_AND, BPF_LSH, BPF_RSH, BPF_XOR, BPF_MOV.
    public static let opMUL: UInt8 = 0x20, opAND: UInt8 = 0x50, opLSH: UInt8 = 0x60, opRSH: UInt8 = 0x70, opXOR: UInt8 = 0xa0, opMOV: UInt8 = 0xb0
    /// Jumps: BPF_JA (always), BPF_JEQ, BPF_JNE, and BPF_EXIT (return r0).
    public static let jumpJA: UInt8 = 0x00, jumpJEQ: UInt8 = 0x10, jumpJNE: UInt8 = 0x50, jumpEXIT: UInt8 = 0x90

    /// The size field of a packet load.
    public enum LoadSize: Sendable {
        case byte, half, word
        var bits: UInt8 { switch self { case .byte: BPFInstruction.sizeB; case .half: BPFInstruction.sizeH; case .word: BPFInstruction.sizeW } }
        /// Bytes loaded.
        public var length: Int { switch self { case .byte: 1; case .half: 2; case .word: 4 } }
    }

    /// `dst = src` (64 bits).
    public static func move64(_ destination: BPFRegister, _ source: BPFRegister) -> Self {
        Self(code: classALU64 | opMOV | sourceX, destination: destination, source: source)
    }
    /// A 32-bit ALU operation with an immediate: `dst = (u32)(dst OP imm)`, the upper half zeroed.
    public static func alu32(_ operation: UInt8, _ destination: BPFRegister, _ immediate: Int32) -> Self {
        Self(code: classALU | operation | sourceK, destination: destination, immediate: immediate)
    }
    /// A 32-bit ALU operation with a register: `dst = (u32)(dst OP src)`.
    public static func alu32(_ operation: UInt8, _ destination: BPFRegister, _ source: BPFRegister) -> Self {
        Self(code: classALU | operation | sourceX, destination: destination, source: source)
    }
    /// `r0 = ntoh(*(size *)(skb->data + offset))` (BPF_LD | BPF_ABS; needs r6 = ctx). A load past
    /// the frame's end ends the program with r0 = 0 (net/core/filter.c bpf_skb_load_helper).
    public static func loadAbsolute(_ size: LoadSize, _ offset: Int32) -> Self {
        Self(code: classLD | modeABS | size.bits, immediate: offset)
    }
    /// `r0 = ntoh(*(size *)(skb->data + src + offset))` (BPF_LD | BPF_IND), as `loadAbsolute`.
    public static func loadIndirect(_ size: LoadSize, _ source: BPFRegister, _ offset: Int32) -> Self {
        Self(code: classLD | modeIND | size.bits, source: source, immediate: offset)
    }
    /// `if dst OP imm goto pc + 1 + offset` (64-bit compare).
    public static func jump(_ operation: UInt8, _ destination: BPFRegister, _ immediate: Int32, offset: Int16) -> Self {
        Self(code: classJMP | operation | sourceK, destination: destination, offset: offset, immediate: immediate)
    }
    /// `return r0`.
    public static let exit = Self(code: classJMP | jumpEXIT)

    /// The 8 bytes of `struct bpf_insn` as one little-endian word: code, dst_reg in the low
    /// nibble and src_reg in the high nibble of byte 1, off in bytes 2–3, imm in bytes 4–7.
    public var encoded: UInt64 {
        UInt64(code) | UInt64(destination.rawValue | source.rawValue << 4) << 8
            | UInt64(UInt16(bitPattern: offset)) << 16 | UInt64(UInt32(bitPattern: immediate)) << 32
    }

    /// Decodes `encoded`; nil for a register number above 10.
    public init?(encoded word: UInt64) {
        guard let destination = BPFRegister(rawValue: UInt8(truncatingIfNeeded: word >> 8) & 0xf),
              let source = BPFRegister(rawValue: UInt8(truncatingIfNeeded: word >> 12) & 0xf) else { return nil }
        self.init(code: UInt8(truncatingIfNeeded: word), destination: destination, source: source,
                  offset: Int16(bitPattern: UInt16(truncatingIfNeeded: word >> 16)), immediate: Int32(bitPattern: UInt32(truncatingIfNeeded: word >> 32)))
    }

    /// The fields in words, for failure messages.
    public var description: String {
        "code 0x\(String(code, radix: 16)) dst r\(destination.rawValue) src r\(source.rawValue) off \(offset) imm \(immediate)"
    }
}

/// A straight-line eBPF assembler: instructions and named labels, the jumps resolved to offsets.
public struct BPFAssembler: Sendable {
    enum Line: Sendable {
        case instruction(BPFInstruction)
        case label(String)
        case jump(operation: UInt8, register: BPFRegister, immediate: Int32, target: String)
    }
    var lines: [Line] = []

    /// An empty program.
    public init() {}

    /// Appends `instruction`.
    public mutating func emit(_ instruction: BPFInstruction) { lines.append(.instruction(instruction)) }
    /// Names the position of the next instruction, for `jump(_:_:_:to:)`.
    public mutating func label(_ name: String) { lines.append(.label(name)) }
    /// `if register OP immediate goto label` (`BPF_JA`: always).
    public mutating func jump(_ operation: UInt8, _ register: BPFRegister = .r0, _ immediate: Int32 = 0, to target: String) {
        lines.append(.jump(operation: operation, register: register, immediate: immediate, target: target))
    }

    /// The instructions with each jump's offset counted from the instruction after it; nil when
    /// a label is missing, defined twice, or behind the jump (eBPF programs here jump forward only).
    public func assemble() -> [BPFInstruction]? {
        var positions: [String: Int] = [:]
        var count = 0
        for line in lines {
            switch line {
            case .label(let name):
                guard positions[name] == nil else { return nil }
                positions[name] = count
            case .instruction, .jump: count += 1
            }
        }
        var program: [BPFInstruction] = []
        for line in lines {
            switch line {
            case .label: continue
            case .instruction(let instruction): program.append(instruction)
            case .jump(let operation, let register, let immediate, let target):
                guard let position = positions[target], position > program.count, let offset = Int16(exactly: position - program.count - 1) else { return nil }
                program.append(.jump(operation, register, immediate, offset: offset))
            }
        }
        return program
    }
}

/// The RSS steering program `attach --rss` loads: a hash of each frame's flow, so that every
/// frame of one flow reaches the same queue and flows spread evenly over the queues.
///
/// The hash (`SteeringProgram.hash(of:)` computes the same in Swift): `h = 0`, then for each
/// 32-bit big-endian word `w` of the flow, `h = (h ^ w) * 0x9E3779B1` (mod 2³²); the result is
/// `(h ^ h >> 16) & 0xffff`, so the high bits reach the low ones a modulo keeps. The words:
/// - IPv4 (ethertype 0x0800): the source and destination addresses, then for TCP (6) or UDP (17)
///   in an unfragmented packet (flags MF and offset 0) the word of both ports after the IHL.
/// - IPv6 (0x86dd): the 4 words of the source and the 4 of the destination, then for a next
///   header of TCP or UDP (no extension header) the ports word at byte 40 of the header.
/// - Anything else, or a frame too short for a load: 0 (queue 0).
/// The queue is then the hash modulo the number of queues (tun.c tun_ebpf_select_queue).
public enum SteeringProgram {
    /// The multiplier of the mixing function: 2³² divided by the golden ratio, odd.
    public static let multiplier: UInt32 = 0x9E37_79B1
    static let ethernetHeader: Int32 = 14

    /// The program, instruction by instruction.
    public static let instructions: [BPFInstruction] = {
        typealias I = BPFInstruction
        var a = BPFAssembler()
        // Mixes r0 into the hash in r7: r7 = (r7 ^ r0) * multiplier, in 32 bits.
        func mix(_ a: inout BPFAssembler) {
            a.emit(.alu32(I.opXOR, .r7, .r0))
            a.emit(.alu32(I.opMUL, .r7, Int32(bitPattern: multiplier)))
        }
        a.emit(.move64(.r6, .r1))                         // r6 = ctx (the skb): LD_ABS/LD_IND read it
        a.emit(.alu32(I.opMOV, .r7, 0))                   // r7 = 0: the hash
        a.emit(.loadAbsolute(.half, 12))                  // r0 = ethertype
        a.jump(I.jumpJEQ, .r0, 0x0800, to: "ipv4")
        a.jump(I.jumpJEQ, .r0, 0x86dd, to: "ipv6")
        a.emit(.alu32(I.opMOV, .r0, 0))                   // not IP: queue 0
        a.emit(.exit)

        a.label("ipv4")
        a.emit(.loadAbsolute(.byte, ethernetHeader))      // r0 = version and IHL
        a.emit(.alu32(I.opAND, .r0, 0x0f))
        a.emit(.alu32(I.opLSH, .r0, 2))                   // the IPv4 header's length in bytes
        a.emit(.move64(.r8, .r0))                         // r8 = it, for the ports' LD_IND
        a.emit(.loadAbsolute(.word, ethernetHeader + 12)) // source address
        mix(&a)
        a.emit(.loadAbsolute(.word, ethernetHeader + 16)) // destination address
        mix(&a)
        a.emit(.loadAbsolute(.half, ethernetHeader + 6))  // flags and fragment offset
        a.emit(.alu32(I.opAND, .r0, 0x3fff))              // MF and the offset: a fragment has no ports for all its parts
        a.jump(I.jumpJNE, .r0, 0, to: "finish")
        a.emit(.loadAbsolute(.byte, ethernetHeader + 9))  // protocol
        a.jump(I.jumpJEQ, .r0, 6, to: "ports4")
        a.jump(I.jumpJEQ, .r0, 17, to: "ports4")
        a.jump(I.jumpJA, to: "finish")
        a.label("ports4")
        a.emit(.loadIndirect(.word, .r8, ethernetHeader)) // source and destination ports
        mix(&a)
        a.jump(I.jumpJA, to: "finish")

        a.label("ipv6")
        for word in 0..<8 {                               // source (bytes 8–23), destination (24–39)
            a.emit(.loadAbsolute(.word, ethernetHeader + 8 + Int32(word) * 4))
            mix(&a)
        }
        a.emit(.loadAbsolute(.byte, ethernetHeader + 6))  // next header
        a.jump(I.jumpJEQ, .r0, 6, to: "ports6")
        a.jump(I.jumpJEQ, .r0, 17, to: "ports6")
        a.jump(I.jumpJA, to: "finish")
        a.label("ports6")
        a.emit(.loadAbsolute(.word, ethernetHeader + 40)) // source and destination ports
        mix(&a)

        a.label("finish")
        a.emit(.move64(.r0, .r7))
        a.emit(.alu32(I.opRSH, .r0, 16))
        a.emit(.alu32(I.opXOR, .r0, .r7))                 // r0 = h ^ h >> 16
        a.emit(.alu32(I.opAND, .r0, 0xffff))              // a u16, as tun keeps it
        a.emit(.exit)
        // The labels above are all defined once and ahead of their jumps.
        return a.assemble() ?? []
    }()

    /// The hash the program returns for `frame` (an Ethernet frame), computed in Swift.
    public static func hash(of frame: [UInt8]) -> UInt16 {
        func load(_ offset: Int, _ length: Int) -> UInt32? {
            guard offset >= 0, offset + length <= frame.count else { return nil }
            return frame[offset..<offset + length].reduce(0) { $0 << 8 | UInt32($1) }
        }
        var h: UInt32 = 0
        func mix(_ word: UInt32) { h = (h ^ word) &* multiplier }
        let e = Int(ethernetHeader)
        // A load past the end stops the program with 0, whatever was mixed before.
        guard let type = load(12, 2) else { return 0 }
        switch type {
        case 0x0800:
            guard let versionLength = load(e, 1), let source = load(e + 12, 4), let destination = load(e + 16, 4),
                  let fragment = load(e + 6, 2) else { return 0 }
            mix(source)
            mix(destination)
            if fragment & 0x3fff == 0 {
                guard let proto = load(e + 9, 1) else { return 0 }
                if proto == 6 || proto == 17 {
                    guard let ports = load(e + Int(versionLength & 0x0f) * 4, 4) else { return 0 }
                    mix(ports)
                }
            }
        case 0x86dd:
            for word in 0..<8 {
                guard let value = load(e + 8 + word * 4, 4) else { return 0 }
                mix(value)
            }
            guard let next = load(e + 6, 1) else { return 0 }
            if next == 6 || next == 17 {
                guard let ports = load(e + 40, 4) else { return 0 }
                mix(ports)
            }
        default:
            return 0
        }
        return UInt16(truncatingIfNeeded: h ^ h >> 16)
    }

    /// The queue tun chooses for `frame` with the program attached (tun.c tun_ebpf_select_queue).
    public static func queue(of frame: [UInt8], queues: Int) -> Int { queues > 0 ? Int(hash(of: frame)) % queues : 0 }

    /// Loads the program (bpf(2) BPF_PROG_LOAD as a BPF_PROG_TYPE_SOCKET_FILTER, which tun.c
    /// tun_set_ebpf requires). Needs CAP_BPF or root where unprivileged BPF is disabled (Debian).
    /// A refusal carries the verifier's log.
    public static func load() throws(VhostError) -> LoadedBPFProgram {
        let words = instructions.map(\.encoded)
        var log = [CChar](repeating: 0, count: 16384)
        let fd = words.withUnsafeBufferPointer { words in
            // SAFETY: the buffers outlive the call; the count is the buffer's own, the log's size its length.
            cvhost_bpf_prog_load(CVHOST_BPF_PROG_TYPE_SOCKET_FILTER, words.baseAddress, UInt32(words.count), "GPL", &log, UInt32(log.count))
        }
        guard fd >= 0 else {
            let verifier = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                .split(separator: "\n").suffix(8).joined(separator: " | ")
            throw .system(call: "bpf(BPF_PROG_LOAD)", detail: "the RSS steering program (\(words.count) instructions)\(verifier.isEmpty ? "" : "; the verifier said: \(verifier)"); loading BPF needs root or CAP_BPF",
                          errno: Errno(rawValue: -fd))
        }
        return LoadedBPFProgram(fd: fd)
    }
}

/// A loaded BPF program's fd, closed when the value goes away (whatever holds the program, such
/// as a tap it steers, keeps its own reference).
public struct LoadedBPFProgram: ~Copyable {
    /// The program's descriptor (closed when this value goes away).
    public let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}

extension Tap {
    /// `TUNSETSTEERINGEBPF`: the program chooses the queue of each frame the host sends (on any
    /// queue's fd: the program belongs to the whole tap, tun.c tun_set_ebpf). The tap keeps the
    /// program until it is replaced, detached (`detachSteeringProgram`) or the tap is gone.
    public func setSteeringProgram(_ program: borrowing LoadedBPFProgram) throws(VhostError) { try perform(.setSteeringProgram(fd: program.fd)) }

    /// `TUNSETSTEERINGEBPF` with -1: tun's own flow steering again.
    public func detachSteeringProgram() throws(VhostError) { try perform(.setSteeringProgram(fd: -1)) }
}
