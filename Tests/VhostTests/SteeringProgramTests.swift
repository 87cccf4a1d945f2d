import Testing
@testable import Vhost
@testable import VhostNet

/// The RSS steering program, run without a kernel: a small interpreter of the eBPF subset it uses
/// (with the kernel's LD_ABS/LD_IND semantics) runs the encoded words on frames, and every answer
/// must equal `SteeringProgram.hash(of:)`, the documented hash the kernel tier predicts queues by.
@Suite struct SteeringProgramTests {
    /// Runs `words` on `frame` as the kernel would for a socket filter; nil for an instruction
    /// outside the subset (so a new one cannot pass unnoticed), a backward jump or a fall off the end.
    static func run(_ words: [UInt64], on frame: [UInt8]) -> UInt64? {
        var r = [UInt64](repeating: 0, count: 11)
        var pc = 0
        func load(_ offset: Int64, _ size: UInt8) -> UInt64? {
            let length = size == BPFInstruction.sizeB ? 1 : size == BPFInstruction.sizeH ? 2 : 4
            guard offset >= 0, offset + Int64(length) <= Int64(frame.count) else { return nil }
            return frame[Int(offset)..<Int(offset) + length].reduce(0) { $0 << 8 | UInt64($1) }
        }
        var steps = 0
        while pc < words.count, steps < 10_000 {
            steps += 1
            guard let i = BPFInstruction(encoded: words[pc]) else { return nil }
            let d = Int(i.destination.rawValue), s = Int(i.source.rawValue)
            let imm32 = UInt32(bitPattern: i.immediate)
            pc += 1
            switch i.code & 0x07 {
            case BPFInstruction.classLD:
                let mode = i.code & 0xe0, size = i.code & 0x18
                guard mode == BPFInstruction.modeABS || mode == BPFInstruction.modeIND else { return nil }
                let base: Int64 = mode == BPFInstruction.modeIND ? Int64(UInt32(truncatingIfNeeded: r[s])) : 0
                // A load past the end ends the program with 0 (filter.c bpf_skb_load_helper).
                guard let value = load(base + Int64(i.immediate), size) else { return 0 }
                r[0] = value
                for k in 1...5 { r[k] = 0xdead }  // LD_ABS/LD_IND clobber r1–r5
            case BPFInstruction.classALU, BPFInstruction.classALU64:
                let wide = i.code & 0x07 == BPFInstruction.classALU64
                let operand: UInt64 = i.code & BPFInstruction.sourceX != 0 ? r[s] : (wide ? UInt64(bitPattern: Int64(i.immediate)) : UInt64(imm32))
                let a = r[d]
                var result: UInt64
                switch i.code & 0xf0 {
                case BPFInstruction.opMOV: result = operand
                case BPFInstruction.opXOR: result = a ^ operand
                case BPFInstruction.opAND: result = a & operand
                case BPFInstruction.opMUL: result = wide ? a &* operand : UInt64(UInt32(truncatingIfNeeded: a) &* UInt32(truncatingIfNeeded: operand))
                case BPFInstruction.opLSH: result = wide ? a << (operand & 63) : UInt64(UInt32(truncatingIfNeeded: a) << UInt32(operand & 31))
                case BPFInstruction.opRSH: result = wide ? a >> (operand & 63) : UInt64(UInt32(truncatingIfNeeded: a) >> UInt32(operand & 31))
                default: return nil
                }
                r[d] = wide ? result : UInt64(UInt32(truncatingIfNeeded: result))
            case BPFInstruction.classJMP:
                let operation = i.code & 0xf0
                if operation == BPFInstruction.jumpEXIT { return r[0] }
                guard i.code & BPFInstruction.sourceX == 0, i.offset >= 0 else { return nil }
                let value = UInt64(bitPattern: Int64(i.immediate))
                let taken: Bool
                switch operation {
                case BPFInstruction.jumpJA: taken = true
                case BPFInstruction.jumpJEQ: taken = r[d] == value
                case BPFInstruction.jumpJNE: taken = r[d] != value
                default: return nil
                }
                if taken { pc += Int(i.offset) }
            default: return nil
            }
        }
        return nil
    }

    static func ipv4(protocol proto: UInt8 = 17, source: [UInt8] = [10, 0, 0, 1], destination: [UInt8] = [10, 0, 0, 2],
                     ports: (UInt16, UInt16) = (40000, 7), fragment: UInt16 = 0, headerWords: UInt8 = 5) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 12) + [0x08, 0x00]
        f += [0x40 | headerWords, 0, 0, 40, 0, 1, UInt8(fragment >> 8), UInt8(fragment & 0xff), 64, proto, 0, 0] + source + destination
        f += [UInt8](repeating: 0, count: (Int(headerWords) - 5) * 4)
        f += [UInt8(ports.0 >> 8), UInt8(ports.0 & 0xff), UInt8(ports.1 >> 8), UInt8(ports.1 & 0xff), 0, 12, 0, 0]
        return f
    }

    static func ipv6(next: UInt8 = 6, ports: (UInt16, UInt16) = (1234, 80)) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 12) + [0x86, 0xdd]
        f += [0x60, 0, 0, 0, 0, 8, next, 64]
        f += [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [1]
        f += [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [2]
        f += [UInt8(ports.0 >> 8), UInt8(ports.0 & 0xff), UInt8(ports.1 >> 8), UInt8(ports.1 & 0xff), 0, 8, 0, 0]
        return f
    }

    @Test func theProgramAssembles() {
        #expect(!SteeringProgram.instructions.isEmpty)
        // Each instruction survives its encoding (struct bpf_insn, 8 bytes).
        for instruction in SteeringProgram.instructions { #expect(BPFInstruction(encoded: instruction.encoded) == instruction) }
        // The first instruction is r6 = r1, as LD_ABS requires (the verifier refuses it otherwise).
        #expect(SteeringProgram.instructions.first == .move64(.r6, .r1))
    }

    @Test func encodingMatchesStructBpfInsn() {
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 1: bytes b7 00 00 00 01 00 00 00 (as XDPDropProgram has it).
        #expect(BPFInstruction(code: 0xb7, immediate: 1).encoded == 0x0000_0001_0000_00b7)
        // mov r6, r1: bf 16 00 00 00 00 00 00 (dst in the low nibble, src in the high).
        #expect(BPFInstruction.move64(.r6, .r1).encoded == 0x16bf)
        #expect(BPFInstruction.jump(BPFInstruction.jumpJEQ, .r0, 0x0800, offset: 3).encoded == 0x0000_0800_0003_0015)
    }

    @Test func labelsResolveForwardOnly() {
        var a = BPFAssembler()
        a.jump(BPFInstruction.jumpJA, to: "end")
        a.emit(.exit)
        a.label("end")
        a.emit(.exit)
        #expect(a.assemble()?.first?.offset == 1)
        var backward = BPFAssembler()
        backward.label("start")
        backward.jump(BPFInstruction.jumpJA, to: "start")
        #expect(backward.assemble() == nil)
        var missing = BPFAssembler()
        missing.jump(BPFInstruction.jumpJA, to: "nowhere")
        #expect(missing.assemble() == nil)
    }

    @Test func theInterpreterAgreesWithTheDocumentedHash() {
        let words = SteeringProgram.instructions.map(\.encoded)
        var frames: [[UInt8]] = [
            Self.ipv4(), Self.ipv4(protocol: 6), Self.ipv4(protocol: 1), Self.ipv4(fragment: 0x2000), Self.ipv4(fragment: 5),
            Self.ipv4(headerWords: 6), Self.ipv6(), Self.ipv6(next: 17), Self.ipv6(next: 58), Array(Self.ipv4().prefix(30)),
            Array(Self.ipv4().prefix(35)), Array(Self.ipv6().prefix(50)), [0x08, 0x06], [], [UInt8](repeating: 0xff, count: 60),
        ]
        for port in 0..<256 { frames.append(Self.ipv4(ports: (UInt16(40000 + port), 7))) }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var frame = Self.ipv4(protocol: [6, 17, 1].randomElement(using: &generator)!, source: (0..<4).map { _ in UInt8.random(in: 0...255) },
                                  ports: (UInt16.random(in: 0...65535), UInt16.random(in: 0...65535)), headerWords: UInt8.random(in: 5...7))
            frame = Array(frame.prefix(Int.random(in: 0...frame.count)))
            frames.append(frame)
        }
        for frame in frames {
            #expect(Self.run(words, on: frame) == UInt64(SteeringProgram.hash(of: frame)), "frame \(frame)")
        }
    }

    @Test func theHashSpreadsTheTiersFlows() {
        // The kernel tier's 256 flows (ports 40000…40255 to 7): each of 4 queues gets 10%–40%.
        var counts = [0, 0, 0, 0]
        for port in 0..<256 { counts[SteeringProgram.queue(of: Self.ipv4(ports: (UInt16(40000 + port), 7)), queues: 4)] += 1 }
        for count in counts { #expect((26...102).contains(count), "\(counts)") }
        // Not IP, or too short: queue 0.
        #expect(SteeringProgram.hash(of: [UInt8](repeating: 0, count: 60)) == 0)
        #expect(SteeringProgram.queue(of: Self.ipv4(), queues: 0) == 0)
        // The ports count: two flows that differ only in a port usually differ in hash.
        #expect(SteeringProgram.hash(of: Self.ipv4(ports: (1, 7))) != SteeringProgram.hash(of: Self.ipv4(ports: (2, 7))))
    }
}

/// RX and TX rings sized apart: each queue's memory is carved at its own size, inside the regions.
@Suite struct RingSizesApartTests {
    @Test(arguments: [(1024, 256), (256, 1024), (2, 32768)])
    func eachQueueHasItsSize(receive: Int, transmit: Int) throws {
        let plan = GuestMemoryPlan(queueSize: receive, transmitQueueSize: transmit, bufferSize: 2048, headerLength: 12, layout: .indirect, placement: .belowAndAbove4GiB,
                                   largeTransmitBuffer: 65_550)
        var memory = try GuestMemory(layout: plan.regions, backing: .anonymous)
        let rx = try plan.carveQueue(from: &memory)
        let tx = try plan.carveQueue(from: &memory, transmit: true, largeBuffer: true)
        #expect(rx.buffers.count == receive && tx.buffers.count == transmit && tx.tables.count == transmit)
        #expect(rx.ring.queueSize == UInt16(receive) && tx.ring.queueSize == UInt16(transmit))
        #expect(tx.descriptors.length == 16 * transmit)
    }
}
