import Glibc
import NetFormats
import Testing
import Vhost
import VhostModel
@testable import VhostNet
import Virtio

/// The host end of a pipe, handed to a thread that sends a little later than the endpoint sleeps.
private final class DelayedSender: @unchecked Sendable {
    let host: PipeHost
    init(_ host: PipeHost) { self.host = host }

    /// Sends `frames` from a new thread after `milliseconds`.
    func send(_ frames: [[UInt8]], after milliseconds: UInt32) -> WorkerThread {
        WorkerThread { [self] in
            usleep(milliseconds * 1000)
            for frame in frames { try? self.host.send(frame) }
        }
    }
}

@Suite("RX coalescing in the endpoint's own sleep (VirtioNetEndpoint.sleep)")
struct EndpointCoalescingTests {
    typealias H = HostFrames

    /// Frames nobody answers (an experimental EtherType to the endpoint's MAC), as a sink takes in.
    func sinkFrames(_ count: Int) -> [[UInt8]] {
        (0..<count).map { H.ethernet(H.myMAC, EthernetFrame.experimentalType, [UInt8](repeating: UInt8(truncatingIfNeeded: $0), count: 46)) }
    }

    func ping(_ sequence: UInt16) -> [UInt8] {
        IPv4Packet.frame(destinationMAC: H.myMAC, sourceMAC: H.hostMAC, source: H.host4, destination: H.me4, protocolNumber: 1,
                         payload: ICMPEcho.request(identifier: 0x51, sequence: sequence, payload: [UInt8](repeating: 7, count: 32)))
    }

    func milliseconds(since start: ContinuousClock.Instant) -> Int64 { Int64(start.duration(to: .now).inNanoseconds / 1_000_000) }

    @Test("frames nobody answers wait for the threshold: the device does not signal for 5 of 8, and signals at the 8th of the next 8")
    func sinkWaitsForTheThreshold() throws {
        let (endpoint, host) = try makeInProcessEndpoint { $0.datapath.receiveCoalescing = ReceiveCoalescing(frames: 8, maxDelayMilliseconds: 1000) }
        let sender = DelayedSender(host)
        // vhost signals its first used entry whatever used_event says (vhost.c vhost_notify:
        // signalled_used_valid is false until then): one frame takes it.
        let warmUp = sender.send(sinkFrames(1), after: 50)
        #expect(try endpoint.service(milliseconds: 3000) == 0)
        warmUp.join()
        #expect(try endpoint.service(milliseconds: 0) == 1)
        let calls = endpoint.receiveCounters.calls
        // Five frames arrive while the endpoint sleeps for eight: it sleeps its whole 400 ms.
        var start = ContinuousClock.now
        let first = sender.send(sinkFrames(5), after: 50)
        #expect(try endpoint.service(milliseconds: 400) == 0)
        first.join()
        #expect(milliseconds(since: start) >= 390, "the sleep ran its time")
        #expect(endpoint.receiveCounters.calls == calls, "the device did not signal below the threshold")
        #expect(endpoint.pairs[0].withReceiveDriver { $0.usedPending } == 5, "the device used all five; they wait for the threshold")
        // Awake, the endpoint takes what is used; the next sleep counts eight from there, and
        // eight more frames end a sleep of 3 s at once: the device signalled at the eighth.
        #expect(try endpoint.service(milliseconds: 0) == 5)
        let second = sender.send(sinkFrames(8), after: 50)
        start = ContinuousClock.now
        #expect(try endpoint.service(milliseconds: 3000) == 0)
        second.join()
        #expect(milliseconds(since: start) < 1000, "woken by the device's signal, not the delay")
        #expect(endpoint.receiveCounters.calls == calls + 1)
        #expect(try endpoint.service(milliseconds: 0) == 8)
        #expect(endpoint.responder.counters.ignored == 14)
        try endpoint.stop()
    }

    @Test("a frame that gets an answer is never held: within a second of a reply every frame wakes the endpoint, an unanswered one between too")
    func answersAreNotHeld() throws {
        let (endpoint, host) = try makeInProcessEndpoint { $0.datapath.receiveCoalescing = ReceiveCoalescing(frames: 8, maxDelayMilliseconds: 1000) }
        let sender = DelayedSender(host)
        // The first request is answered without a sleep.
        try host.send(ping(0))
        let deadline = ContinuousClock.now + .seconds(5)
        while endpoint.pairs[0].withReceiveDriver({ $0.usedPending }) == 0 && ContinuousClock.now < deadline { usleep(1000) }
        #expect(try endpoint.service(milliseconds: 0) == 1)
        #expect(host.receive() != nil)
        for sequence in UInt16(1)...3 {
            // An unanswered frame first (as the host's IPv6 router solicitations come), then the
            // request: within a second of a reply the endpoint still wakes on every frame.
            let noise = sender.send(sinkFrames(1), after: 20)
            let request = sender.send([ping(sequence)], after: 120)
            let start = ContinuousClock.now
            while endpoint.responder.counters.icmpEchoReplies < Int(sequence) + 1 && milliseconds(since: start) < 3000 {
                try endpoint.service(milliseconds: 3000)
            }
            noise.join(); request.join()
            // Sent at 120 ms; held for 8 frames it would wait for the 1,000 ms delay.
            #expect(milliseconds(since: start) < 800, "request \(sequence) was answered at once")
            let reply = try #require(host.receive())
            let ip = try #require(IPv4Packet(frame: reply.frame))
            #expect(ICMPEcho.reply(in: reply.frame[ip.payload])?.sequence == sequence)
        }
        #expect(endpoint.responder.counters.icmpEchoReplies == 4)
        try endpoint.stop()
    }

    @Test("adaptive: a sink's burst raises the threshold; a sleep after a reply wakes on the next frame and leaves it")
    func adaptiveFollowsTheSink() throws {
        let (endpoint, host) = try makeInProcessEndpoint { $0.datapath.receiveCoalescing = ReceiveCoalescing(frames: 128, maxDelayMilliseconds: 1000, adaptive: true) }
        let sender = DelayedSender(host)
        #expect(endpoint.pairs[0].receiveAdaptiveThreshold == 1)
        // A burst of 16 while the endpoint sleeps for one: woken by the first, it finds more.
        let burst = sender.send(sinkFrames(16), after: 50)
        #expect(try endpoint.service(milliseconds: 3000) == 0)
        burst.join()
        let raised = endpoint.pairs[0].receiveAdaptiveThreshold
        #expect(raised >= 2, "the wake-up that found frames waiting raised the threshold")
        var taken = 0
        let deadline = ContinuousClock.now + .seconds(5)
        while taken < 16 && ContinuousClock.now < deadline { taken += try endpoint.service(milliseconds: 0) }
        #expect(taken == 16)
        // A ping answered: the next sleep is for one frame, and moves nothing.
        try host.send(ping(1))
        while endpoint.pairs[0].withReceiveDriver({ $0.usedPending }) == 0 && ContinuousClock.now < deadline { usleep(1000) }
        #expect(try endpoint.service(milliseconds: 0) == 1)
        #expect(host.receive() != nil)
        let request = sender.send([ping(2)], after: 50)
        let start = ContinuousClock.now
        #expect(try endpoint.service(milliseconds: 3000) == 0)
        request.join()
        #expect(milliseconds(since: start) < 700, "the request after a reply was not held")
        #expect(endpoint.pairs[0].receiveAdaptiveThreshold == raised)
        #expect(try endpoint.service(milliseconds: 0) == 1)
        try endpoint.stop()
    }
}
