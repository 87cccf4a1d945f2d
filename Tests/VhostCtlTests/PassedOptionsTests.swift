import ArgumentParser
import Testing
@testable import vhostctl

/// attach's --tap-fd, --vhost-fd and --netns: what is refused before anything runs (the checks
/// of the descriptors themselves: Tests/VhostTests/PassedDescriptorTests.swift).
@Suite struct PassedOptionsTests {
    private func refusal(_ arguments: [String]) -> String? {
        do { _ = try VhostCtl.parseAsRoot(["attach"] + arguments); return nil } catch {
            return VhostCtl.exitCode(for: error) == .validationFailure ? VhostCtl.message(for: error) : "exit \(VhostCtl.exitCode(for: error))"
        }
    }

    @Test func accepted() {
        #expect(refusal(["--tap-fd", "3", "--vhost-fd", "4"]) == nil)
        #expect(refusal(["--tap-fd", "3", "--tap-fd", "5", "--vhost-fd", "4", "--vhost-fd", "6", "--queue-pairs", "2"]) == nil)
        #expect(refusal(["--tap-fd", "3"]) == nil)
        #expect(refusal(["--netns", "vhns1", "--tap", "x", "--create"]) == nil)
        #expect(refusal(["--netns", "/proc/1/ns/net", "--tap", "x"]) == nil)
        #expect(refusal(["--tap", "x", "--net-header", "vhost"]) == nil)
        #expect(refusal(["--tap", "x", "--net-header", "vhost", "--offloads", "none"]) == nil)
    }

    @Test(arguments: [
        (["--tap-fd", "3", "--tap", "x"], "--tap-fd replaces --tap"),
        (["--tap-fd", "3", "--create"], "--tap-fd replaces"),
        (["--tap-fd", "3", "--packet-socket", "lo"], "--tap-fd replaces"),
        (["--tap-fd", "3", "--queue-pairs", "2"], "--tap-fd given 1 time(s) for 2 queue pair(s)"),
        (["--tap-fd", "3", "--tap-fd", "5", "--vhost-fd", "4", "--queue-pairs", "2"], "--vhost-fd given 1 time(s) for 2"),
        (["--tap", "x", "--vhost-fd", "4"], "--vhost-fd applies with --tap-fd"),
        (["--tap-fd", "1"], "--tap-fd 1: descriptors 0, 1 and 2"),
        (["--tap-fd", "3", "--vhost-fd", "3"], "the same descriptor twice"),
        (["--tap-fd=-5"], "--tap-fd -5"),
        (["--netns", "", "--tap", "x"], "--netns"),
        (["--netns", "a b", "--tap", "x"], "--netns a b"),
        // Who adds the virtio-net header: offloads need the tap's; a packet socket has none.
        (["--tap", "x", "--net-header", "vhost", "--features", "VERSION_1", "GUEST_CSUM"], "--net-header vhost: offloads (NET_F_GUEST_CSUM)"),
        (["--tap", "x", "--net-header", "vhost", "--offloads", "csum"], "--net-header vhost: offloads (--offloads csum)"),
        (["--packet-socket", "lo", "--net-header", "tap"], "--net-header tap: a packet socket carries no virtio-net header"),
    ])
    func refused(arguments: [String], text: String) {
        let message = refusal(arguments)
        #expect(message?.contains(text) == true, "\(arguments): \(message ?? "accepted")")
    }
}
