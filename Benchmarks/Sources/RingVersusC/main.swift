// The Swift ring driver (Virtio.SplitVirtqueueDriver) against a minimal C driver doing the
// same ring operations (CRingLoop), both feeding the same minimal C device, so that the only
// difference between the two loops is the driver. Prints ns per frame (medians of
// interleaved trials) and the ratio. For instruction counts, which are repeatable where
// timings are not, Benchmarks/ring-vs-c runs each loop alone under valgrind --tool=callgrind.
//
// With --rx, the receive side instead: device-writable buffers, one per head, reaped with their
// length checked, the frame touched, every free head refilled (ReceiveQueue's fast path).
//
//   ring-vs-c [--rx] [--frames N] [--trials N] [--batch N] [--queue-size N] [--flags] [--only swift|c]
import CRingLoop
#if canImport(Glibc)
import Glibc
#endif
import Virtio

struct Settings {
    var frames = 2_000_000
    var trials = 7
    var batch = 64
    var queueSize: UInt16 = 256
    var eventIndex = true
    var only: String?
    /// The receive side (device-writable buffers) instead of the transmit side.
    var receive = false
    /// RX: bytes per buffer (header included), and per frame the device writes (header included).
    static let receiveBufferSize = 2048
    static let receiveFrameLength = 12 + 64
    static let headerLength = 12

    static let usage = "usage: ring-vs-c [--rx] [--frames N] [--trials N] [--batch N] [--queue-size N] [--flags] [--only swift|c]"

    init(arguments: [String]) throws(UsageError) {
        var rest = arguments[...]
        func number(_ name: String) throws(UsageError) -> Int {
            guard let text = rest.popFirst() else { throw UsageError("\(name) needs a value") }
            guard let value = Int(text), value > 0 else { throw UsageError("\(name) \(text): want a positive whole number") }
            return value
        }
        while let argument = rest.popFirst() {
            switch argument {
            case "--frames": frames = try number(argument)
            case "--trials": trials = try number(argument)
            case "--batch": batch = try number(argument)
            case "--queue-size":
                let n = try number(argument)
                guard SplitRingLayout.isValidQueueSize(n), n >= 2 else { throw UsageError("--queue-size \(n): want a power of 2 from 2 to 32768") }
                queueSize = UInt16(n)
            case "--flags": eventIndex = false
            case "--rx": receive = true
            case "--only":
                guard let which = rest.popFirst(), which == "swift" || which == "c" else { throw UsageError("--only: want swift or c") }
                only = which
            case "-h", "--help": throw UsageError(nil)
            default: throw UsageError("unknown argument \(argument)")
            }
        }
    }
}

struct UsageError: Error {
    let message: String?
    init(_ message: String?) { self.message = message }
}

/// A ring and its frame buffers (one for TX, one per head for RX) in one page-aligned block at a
/// fake guest-physical base.
final class RingMemory {
    static let guestBase: UInt64 = 0x4000_0000
    let queueSize: UInt16
    let block: UnsafeMutableRawPointer
    let ringBytes: Int
    let size: Int
    /// The three parts of the ring, laid out by SplitRingLayout.offsets at the block's start.
    let descriptors: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    let next: UnsafeMutablePointer<UInt16>
    let count: UnsafeMutablePointer<UInt16>
    /// Bytes per buffer: RX buffers are `bufferSize` apart from `frameAddress` on.
    let bufferSize: Int

    init(queueSize: UInt16, buffers: Int = 1, bufferSize: Int = 4096) {
        self.queueSize = queueSize
        self.bufferSize = bufferSize
        let layout = SplitRingLayout.offsets(queueSize: Int(queueSize))
        ringBytes = (layout.total + 4095) & ~4095
        size = ringBytes + buffers * bufferSize
        block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        descriptors = block + layout.descriptors
        avail = block + layout.avail
        used = block + layout.used
        next = .allocate(capacity: Int(queueSize))
        count = .allocate(capacity: Int(queueSize))
        clear()
    }

    /// Zeroes the ring so that a new driver and device start from index 0.
    func clear() { block.initializeMemory(as: UInt8.self, repeating: 0, count: size) }

    /// The frame's buffer, past the ring: inside the device's one region.
    var frameAddress: UInt64 { RingMemory.guestBase + UInt64(ringBytes) }
    /// Where the buffers start in this process.
    var frameHost: UnsafeMutableRawPointer { block + ringBytes }

    /// The C driver over the ring, cleared first so that driver and device start from index 0.
    func cDriver(eventIndex: Bool) -> cring_driver {
        clear()
        var driver = cring_driver()
        cring_driver_init(&driver, queueSize, descriptors, avail, used, eventIndex ? 1 : 0, next, count)
        return driver
    }

    func device(eventIndex: Bool) -> cring_device {
        var device = cring_device()
        cring_device_init(&device, queueSize, descriptors, avail, used, RingMemory.guestBase, UInt64(size), eventIndex ? 1 : 0)
        return device
    }

    deinit {
        block.deallocate()
        next.deallocate()
        count.deallocate()
    }
}

/// Frames reaped and kicks asked for (RX: also the frame bytes, and the sum of the bytes the
/// handler read): both loops must agree on these.
struct LoopOutcome: Equatable {
    var reaped = 0
    var kicks = 0
    var bytes = 0
    var touched: UInt64 = 0
}

/// The Swift loop, shaped exactly as cring_loop: add up to `batch`, publish, let the device
/// run, reap everything used.
@inline(never)
func swiftLoop(_ memory: RingMemory, _ settings: Settings) -> LoopOutcome {
    memory.clear()
    var driver = SplitVirtqueueDriver(queueSize: memory.queueSize, descriptors: memory.descriptors, avail: memory.avail, used: memory.used,
                                      eventIndex: settings.eventIndex)
    var device = memory.device(eventIndex: settings.eventIndex)
    let segment = BufferSegment(address: memory.frameAddress, length: 64, deviceWritable: false)
    var outcome = LoopOutcome()
    var added = 0
    while outcome.reaped < settings.frames {
        var n = 0
        while n < settings.batch && added < settings.frames, driver.add(segment) != nil {
            added += 1
            n += 1
        }
        if driver.publish() { outcome.kicks += 1 }
        guard cring_device_run(&device) >= 0 else { return outcome }
        do {
            while try driver.nextUsed() != nil { outcome.reaped &+= 1 }  // as C's reaped++
        } catch {
            return outcome
        }
    }
    return outcome
}

/// Gives every free head its own device-writable buffer, `bufferSize` bytes at
/// `base + head × bufferSize`, as NetQueue.fillWithReceiveBuffers does.
@inline(__always)
func refill(_ driver: inout SplitVirtqueueDriver, base: UInt64, bufferSize: Int) {
    while let head = driver.nextFreeHead {
        _ = driver.add(BufferSegment(address: base &+ UInt64(head) &* UInt64(bufferSize), length: UInt32(bufferSize), deviceWritable: true))
    }
}

/// The Swift RX loop, shaped exactly as cring_rx_loop, with the ring work of ReceiveQueue's fast
/// path (neither MRG_RXBUF nor IN_ORDER) and NetQueue.fillWithReceiveBuffers: every free head
/// gets its own buffer; the device receives up to `batch`; each used entry's length is checked
/// against the buffer (virtio_net receive_buf), the frame's first byte read, every free head
/// refilled and published.
@inline(never)
func swiftReceiveLoop(_ memory: RingMemory, _ settings: Settings) -> LoopOutcome {
    memory.clear()
    var driver = SplitVirtqueueDriver(queueSize: memory.queueSize, descriptors: memory.descriptors, avail: memory.avail, used: memory.used,
                                      eventIndex: settings.eventIndex)
    var device = memory.device(eventIndex: settings.eventIndex)
    let bufferSize = memory.bufferSize, headerLength = Settings.headerLength, capacity = bufferSize - headerLength
    let base = memory.frameAddress, host = memory.frameHost
    var outcome = LoopOutcome()
    refill(&driver, base: base, bufferSize: bufferSize)
    if driver.publish() { outcome.kicks += 1 }
    var arrived = 0
    while arrived < settings.frames {
        let got = cring_device_receive(&device, UInt32(Settings.receiveFrameLength), Int32(min(settings.batch, settings.frames - arrived)))
        guard got >= 0 else { return outcome }
        arrived += Int(got)
        do {
            while let used = try driver.nextUsed() {
                let length = Int(used.length)
                // As ReceiveQueue.deliver: `&-` once `length >= headerLength` holds.
                guard length >= headerLength && length &- headerLength <= capacity else { continue }  // dropped
                // SAFETY: nextUsed returned a head below the queue size, so its buffer lies inside
                // the block; the device wrote it before publishing used->idx (acquire in nextUsed).
                outcome.touched &+= UInt64(host.load(fromByteOffset: Int(used.id) &* bufferSize &+ headerLength, as: UInt8.self))
                outcome.bytes &+= length &- headerLength
                outcome.reaped &+= 1
            }
        } catch {
            return outcome
        }
        refill(&driver, base: base, bufferSize: bufferSize)
        if driver.publish() { outcome.kicks += 1 }
    }
    return outcome
}

@inline(never)
func cReceiveLoop(_ memory: RingMemory, _ settings: Settings) -> LoopOutcome {
    var driver = memory.cDriver(eventIndex: settings.eventIndex)
    var device = memory.device(eventIndex: settings.eventIndex)
    var kicks: Int32 = 0
    var bytes: UInt64 = 0, touched: UInt64 = 0
    let reaped = cring_rx_loop(&driver, &device, UInt64(settings.frames), Int32(settings.batch), memory.frameAddress, memory.frameHost.assumingMemoryBound(to: UInt8.self),
                               UInt32(memory.bufferSize), UInt32(Settings.headerLength), UInt32(Settings.receiveFrameLength), &kicks, &bytes, &touched)
    return LoopOutcome(reaped: Int(reaped), kicks: Int(kicks), bytes: Int(bytes), touched: touched)
}

@inline(never)
func cLoop(_ memory: RingMemory, _ settings: Settings) -> LoopOutcome {
    var driver = memory.cDriver(eventIndex: settings.eventIndex)
    var device = memory.device(eventIndex: settings.eventIndex)
    var kicks: Int32 = 0
    let reaped = cring_loop(&driver, &device, UInt64(settings.frames), Int32(settings.batch), memory.frameAddress, 64, &kicks)
    return LoopOutcome(reaped: Int(reaped), kicks: Int(kicks))
}

func nanosecondsPerFrame(_ body: () -> LoopOutcome, frames: Int) -> (Double, LoopOutcome) {
    let clock = ContinuousClock()
    var outcome = LoopOutcome()
    let elapsed = clock.measure { outcome = body() }
    let (seconds, attoseconds) = elapsed.components
    return ((Double(seconds) * 1e9 + Double(attoseconds) / 1e9) / Double(frames), outcome)
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func fixed(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    var text = "\(rounded)"
    if let dot = text.firstIndex(of: ".") {
        let decimals = text.distance(from: dot, to: text.endIndex) - 1
        if decimals < digits { text += String(repeating: "0", count: digits - decimals) }
    }
    return text
}

let settings: Settings
do {
    settings = try Settings(arguments: Array(CommandLine.arguments.dropFirst()))
} catch {
    if let message = error.message { print("ring-vs-c: \(message) (\(Settings.usage))") } else { print(Settings.usage) }
    exit(error.message == nil ? 0 : 64)
}

let memory = settings.receive ? RingMemory(queueSize: settings.queueSize, buffers: Int(settings.queueSize), bufferSize: Settings.receiveBufferSize)
                              : RingMemory(queueSize: settings.queueSize)
let mode = "\(settings.receive ? "RX" : "TX"), queue \(settings.queueSize), batch \(settings.batch), \(settings.eventIndex ? "EVENT_IDX" : "flags")"
let (swiftRun, cRun) = settings.receive ? (swiftReceiveLoop, cReceiveLoop) : (swiftLoop, cLoop)
if let only = settings.only {
    // One loop, once, for callgrind: the caller subtracts two runs of different lengths.
    let outcome = only == "swift" ? swiftRun(memory, settings) : cRun(memory, settings)
    print("\(only): \(outcome.reaped) frames reaped, \(outcome.kicks) kicks (\(mode))")
    exit(outcome.reaped == settings.frames ? 0 : 1)
}

print("ring driver against a C loop: \(settings.frames) one-descriptor chains per trial, \(mode), \(settings.trials) interleaved trials")
var swiftTimes: [Double] = [], cTimes: [Double] = []
var outcomes: (swift: LoopOutcome, c: LoopOutcome) = (LoopOutcome(), LoopOutcome())
_ = swiftRun(memory, settings)  // warm-up: page faults, caches, branch predictors
_ = cRun(memory, settings)
for _ in 0..<settings.trials {
    let (s, so) = nanosecondsPerFrame({ swiftRun(memory, settings) }, frames: settings.frames)
    let (c, co) = nanosecondsPerFrame({ cRun(memory, settings) }, frames: settings.frames)
    swiftTimes.append(s); cTimes.append(c)
    outcomes = (so, co)
}
guard outcomes.swift == outcomes.c, outcomes.swift.reaped == settings.frames else {
    print("ring-vs-c: the loops disagree: swift \(outcomes.swift), c \(outcomes.c); expected \(settings.frames) frames reaped by each")
    exit(1)
}
for (name, times) in [("swift", swiftTimes), ("c", cTimes)] {
    print("\(name + String(repeating: " ", count: 6 - name.count)) median \(fixed(median(times), 2)) ns/frame (\(fixed(times.min()!, 2))–\(fixed(times.max()!, 2)))")
}
print("both: \(outcomes.swift.reaped) frames reaped, \(outcomes.swift.kicks) kicks per trial")
print("ratio swift/c: \(fixed(median(swiftTimes) / median(cTimes), 2))× (ratio of medians; the target is ≤ 1.10)")
