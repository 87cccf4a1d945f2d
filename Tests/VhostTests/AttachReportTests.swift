import NetFormats
import Testing
import Vhost
import VhostModel
import VhostNet
import VhostTestSupport

/// `vhostctl attach` prints `RingErrorEvent.report` for each ring error its endpoint hands to
/// `ringErrorHandler`: checked here without a kernel, on the in-process device, whose worker
/// signals the error eventfd as vhost.c's vq_err does when fault injection breaks a ring.
@Suite("attach's ring-error report on the in-process device")
struct AttachReportTests {
    /// Services the endpoint until its ring-error handler has given a report, for up to 5 s.
    func reports(_ endpoint: VirtioNetEndpoint<InProcessVhostNetDevice, FramePipeEnd>) throws -> [String] {
        var lines: [String] = []
        endpoint.ringErrorHandler = { _, event in lines.append(event.report) }
        let deadline = ContinuousClock.now + .seconds(5)
        while lines.isEmpty && ContinuousClock.now < deadline { try endpoint.service(milliseconds: 50) }
        endpoint.ringErrorHandler = nil
        return lines
    }

    @Test("a TX descriptor outside the memory table: one line naming pair 0's TX queue, the chain and the cause")
    func transmitDescriptorOutsideMemory() throws {
        let (endpoint, _) = try makeInProcessEndpoint { _ in }
        let fault = try #require(endpoint.pairs[0].injectTransmitFault(.addressOutsideMemory, frame: TestFrame.bytes(1)))
        let lines = try reports(endpoint)
        let line = try #require(lines.first, "no ring error was reported")
        #expect(!line.contains("\n"), "the report is not one line: \(line)")
        #expect(line.hasPrefix("warning: ring error on pair 0 tx ("), "\(line)")
        #expect(line.contains("likely cause: descriptor \(fault.head) of head \(fault.head) points at gpa 0x7ff000000000"), "\(line)")
        #expect(line.contains("outside the memory table (translate_desc: EFAULT)"), "\(line)")
        #expect(line.hasSuffix("; the device waits for the next kick"), "\(line)")
    }

    @Test("a chain loop on RX, met when the host sends: one line naming pair 0's RX queue and the loop")
    func receiveChainLoop() throws {
        let (endpoint, host) = try makeInProcessEndpoint { _ in }
        _ = try #require(endpoint.pairs[0].injectReceiveFault(.chainLoop))
        try host.send(TestFrame.bytes(2))
        let lines = try reports(endpoint)
        let line = try #require(lines.first, "no ring error was reported")
        #expect(!line.contains("\n"), "the report is not one line: \(line)")
        #expect(line.hasPrefix("warning: ring error on pair 0 rx ("), "\(line)")
        #expect(line.contains("loops (vhost.c: \"Loop detected\")"), "\(line)")
    }
}
