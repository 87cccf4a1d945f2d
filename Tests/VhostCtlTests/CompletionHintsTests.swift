import Testing
import Virtio
@testable import vhostctl

/// The candidates the completion scripts offer are values the options accept.
@Suite struct CompletionHintsTests {
    /// Every offered feature name parses back, and every named bit is offered.
    @Test func featureNamesParseAndCoverEveryNamedBit() {
        let names = CompletionHints.featureNames
        var low = VirtioFeatures()
        var high = HighFeatures()
        for name in names {
            if let bit = VirtioFeatures.parse(name) { low.formUnion(bit) }
            else if let bit = HighFeatures.parse(name) { high.formUnion(bit) }
            else { Issue.record("offered feature \(name) does not parse") }
        }
        #expect(Set(low.bits) == Set(VirtioFeatures.names.keys))
        #expect(Set(high.bits) == Set(HighFeatures.names.keys))
        // The spellings people type, as docs and --help use them.
        for expected in ["VERSION_1", "EVENT_IDX", "INDIRECT_DESC", "MRG_RXBUF", "CSUM", "HOST_USO", "VHOST_NET_F_VIRTIO_NET_HDR", "GUEST_UDP_TUNNEL_GSO"] {
            #expect(names.contains(expected), "\(expected) is not offered")
        }
        #expect(Set(names).count == names.count, "a name is offered twice")
    }

    /// The options that take features use the list.
    @Test func datapathFeaturesOfferTheList() throws {
        let dump = VhostCtl.completionScript(for: .bash)
        #expect(dump.contains("EVENT_IDX"))
        #expect(dump.contains("VERSION_1"))
    }

    @Test(arguments: [
        ("0\n", [0]), ("0-3\n", [0, 1, 2, 3]), ("0-1,3,6-7", [0, 1, 3, 6, 7]), ("", []), ("8191", [8191]),
    ])
    func cpuListsParse(text: String, cpus: [Int]) {
        #expect(CompletionHints.parseCPUList(text) == cpus)
    }

    /// Text that is not a CPU list, or names absurd CPUs, offers nothing (and does not trap).
    @Test(arguments: ["x", "3-1", "-1", "1-", "0-99999999999999999999", "8192", "0-8192", "1,,2", "0--3", "\u{0}"])
    func malformedCPUListsAreRefused(text: String) {
        #expect(CompletionHints.parseCPUList(text) == nil)
    }

    /// On this host: the CPUs online are found, and the interface list includes loopback.
    @Test func hostCandidates() {
        #expect(!CompletionHints.onlineCPUs().isEmpty)
        #expect(CompletionHints.onlineCPUs(path: "/nonexistent") == [])
        #expect(CompletionHints.interfaces(in: "/sys/class/net").contains("lo"))
        #expect(CompletionHints.interfaces(in: "/nonexistent") == [])
    }
}
