/// A script the kernel tier runs that is not shipped in Examples/: its name (the file name its
/// messages give) and its text.
public struct KernelTierScript: Sendable, Equatable {
    /// The name lines are reported under (`frames.vhost:3:1: …`).
    public let name: String
    /// The script.
    public let text: String

    public init(_ name: String, _ text: String) { self.name = name; self.text = text }
}

/// The inline scripts of the kernel tier (vhost-kernel-tests), here rather than in the tier
/// itself so that the unit tier parses every one of them (a kernel-tier script that does not
/// parse would fail only in a VM). Where kernels answer differently, each answer has its own
/// script, and the kernel tier picks one by the kernel's version.
public enum KernelTierScripts {
    /// The beginning of a queue pair with a tap (tap vhscript9), for the scripts that need one.
    public static let queuePair = """
        tap vhscript9
        open
        set-owner
        set-features VERSION_1 EVENT_IDX INDIRECT_DESC
        memory 4M
        set-mem-table
        ring 0 64
        ring 1 64
        set-vring-num 0 64
        set-vring-num 1 64
        set-vring-addr 0
        set-vring-addr 1
        set-vring-kick 0
        set-vring-kick 1
        set-vring-call 0
        set-vring-call 1
        set-vring-err 0
        set-vring-err 1
        set-vnet-hdr-size 12
        set-backend 0 tap
        set-backend 1 tap

        """

    // MARK: wrong input and the kernel's answers

    /// vhost.c vhost_set_memory → vhost_iotlb_add_range_ctx: a zero-sized region is EFAULT; the
    /// interval tree takes overlapping ranges.
    public static let rawMemoryTable = KernelTierScript("raw-mem-table.vhost", """
        open
        set-owner
        memory 1M
        expect EFAULT
        set-mem-table 0x40000000 0 0x40000000
        expect ok
        set-mem-table 0x40000000 0x10000 0x40000000 0x40008000 0x10000 0x40010000
        """)

    /// vhost.c vhost_vring_set_addr: EOPNOTSUPP for any flag but VHOST_VRING_F_LOG.
    public static let rawVringFlags = KernelTierScript("raw-vring-flags.vhost", """
        open
        set-owner
        set-features VERSION_1
        memory 1M
        set-mem-table
        ring 0 256
        set-vring-num 0 256
        expect EOPNOTSUPP
        set-vring-addr 0 flags=0x2
        set-vring-addr 0
        """)

    /// 64 KiB of guest memory and a used ring of 256 entries (2054 bytes) 16 bytes before its
    /// end: refused before the ioctl.
    public static let usedRingPastMemory = KernelTierScript("used-past-memory.vhost", """
        open
        set-owner
        memory 64K
        set-mem-table
        set-vring-num 0 256
        set-vring-addr 0 desc=0x40000000 avail=0x40001000 used=0x4000fff0
        """)

    /// EPERM before SET_OWNER; a closed fd as kick is EBADF; a regular file as call is EINVAL.
    public static let fileDescriptors = KernelTierScript("fds.vhost", """
        open
        expect EPERM
        set-vring-num 0 256
        set-owner
        expect EBADF
        set-vring-kick 0 closed
        expect EINVAL
        set-vring-call 0 file
        set-vring-call 0
        """)

    /// A device-writable TX descriptor ("Unexpected descriptor format for TX").
    public static let writableTransmitDescriptor = KernelTierScript("writable-tx.vhost", queuePair + """
        let buffer = alloc 2048
        desc 1 0 addr=$buffer len=64 flags=WRITE
        avail 1 0 0
        avail-idx 1 1
        kick 1
        expect ring-error 1
        """)

    /// avail->idx moved more than the ring's size.
    public static let availIndexJump = KernelTierScript("avail-jump.vhost", queuePair + """
        avail-idx 1 200
        kick 1
        expect ring-error 1
        """)

    /// Variables, repeat and value expectations driving frames both ways.
    public static let frames = KernelTierScript("frames.vhost", queuePair + """
        repeat 5 as i {
            send 1 count=7 size=100
            host-expect count=7
        }
        let b = get-vring-base 1
        expect $b == 35
        post 0 count=16
        host-send count=10 size=300
        receive 0 count=10
        let features = get-features
        expect $features contains VERSION_1 EVENT_IDX
        expect features lacks 0x1000000000000000
        """)

    /// Three wrong expectations: the first SET_OWNER succeeds (line 3), the feature words lack
    /// bit 63 (line 5), the second SET_OWNER is EBUSY (line 7).
    public static let wrongExpectations = KernelTierScript("wrong.vhost", """
        open
        expect EBUSY
        set-owner
        let f = get-features
        expect $f contains 0x8000000000000000
        expect ok
        set-owner
        """)

    // MARK: memory the kernel keeps using

    /// A whole queue pair whose RX base is 7 (so that the kernel's handle_rx, finding no
    /// buffers, writes avail_event = 7 into vring 0's used ring), on tap vht-remap.
    public static let remapSetup = KernelTierScript("setup", """
        open
        set-owner
        set-features VERSION_1 EVENT_IDX
        memory 1M
        set-mem-table
        ring 0 64
        ring 1 64
        set-vring-num 0 64
        set-vring-num 1 64
        set-vring-base 0 7
        set-vring-addr 0
        set-vring-addr 1
        set-vring-kick 0
        set-vring-kick 1
        set-vring-call 0
        set-vring-call 1
        set-vring-err 0
        set-vring-err 1
        avail-idx 0 7
        tap vht-remap
        set-vnet-hdr-size 12
        set-backend 0 tap
        set-backend 1 tap
        """)

    /// New guest memory while the kernel holds vring 0's addresses in the old one.
    public static let remapMemory = KernelTierScript("remap", "memory 1M")

    /// A kick on vring 0, to run the kernel's handle_rx.
    public static let kickReceive = KernelTierScript("kick", "kick 0")

    // MARK: every command used: the device and its owner

    /// net.c vhost_net_reset_owner → vhost.c vhost_dev_reset_owner: vhost_dev_cleanup resets
    /// every vring (vhost_vq_reset: base 0) and drops the owner (vhost_detach_mm), so a vring
    /// ioctl is EPERM until a new SET_OWNER, which is not EBUSY. `close` and a new `open` give a
    /// device with no owner.
    public static let resetOwnerAndClose = KernelTierScript("reset-owner.vhost", """
        open
        set-owner
        set-vring-base 0 7
        get-vring-base 0
        expect base 7
        reset-owner
        expect EPERM
        get-vring-base 0
        set-owner
        get-vring-base 0
        expect base 0
        close
        open
        expect EPERM
        set-vring-num 0 64
        set-owner
        set-vring-num 0 64
        """)

    /// VHOST_NEW_WORKER (6.5) is vhost-scsi's: vhost-net checks the owner (EPERM), then hands it
    /// to vhost_vring_ioctl, which reads worker_id as a vring index: ENOTTY for 0, ENOBUFS for 5.
    public static let newWorker = KernelTierScript("new-worker.vhost", """
        open
        expect EPERM
        new-worker
        set-owner
        expect ENOTTY
        new-worker
        expect ENOBUFS
        new-worker 5
        """)

    /// Kernels without CONFIG_VHOST_CROSS_ENDIAN_LEGACY (every Debian kernel): the endian
    /// requests are vring ioctls (EPERM before SET_OWNER, ENOBUFS for index 2) that vhost.c
    /// answers with -ENOIOCTLCMD (ENOTTY).
    public static let vringEndianWithoutCrossEndian = KernelTierScript("vring-endian.vhost", """
        open
        expect EPERM
        set-vring-endian 0 little
        expect EPERM
        get-vring-endian 0
        set-owner
        expect ENOBUFS
        set-vring-endian 2 little
        expect ENOBUFS
        get-vring-endian 2
        expect ENOTTY
        set-vring-endian 0 big
        expect ENOTTY
        get-vring-endian 0
        """)

    /// Linux 6.17 (sid's 7.x): VHOST_GET_FEATURES_ARRAY answers without an owner, as
    /// GET_FEATURES does, with bits 65 and 67 (UDP-tunnel GSO) and not 66 or 68; COUNT 3
    /// zero-fills the third word. SET_FEATURES_ARRAY refuses a bit not offered (EOPNOTSUPP) and
    /// takes the offered high ones.
    public static let featuresArray = KernelTierScript("features-array.vhost", """
        open
        get-features-array
        expect features contains VERSION_1 GUEST_UDP_TUNNEL_GSO HOST_UDP_TUNNEL_GSO
        expect features lacks GUEST_UDP_TUNNEL_GSO_CSUM HOST_UDP_TUNNEL_GSO_CSUM
        let words = get-features-array 3
        expect $words contains VERSION_1 HOST_UDP_TUNNEL_GSO
        set-owner
        expect EOPNOTSUPP
        set-features-array VERSION_1 HOST_UDP_TUNNEL_GSO_CSUM
        set-features-array VERSION_1 EVENT_IDX GUEST_UDP_TUNNEL_GSO HOST_UDP_TUNNEL_GSO
        """)

    /// Before 6.17 (6.1, 6.12): no feature-array requests. vhost-net takes an unknown request to
    /// vhost_dev_ioctl, which checks the owner first (EPERM), then to vhost_vring_ioctl, which
    /// reads the first word (COUNT, 2) as a vring index: ENOBUFS.
    public static let featuresArrayAbsent = KernelTierScript("features-array-absent.vhost", """
        open
        expect EPERM
        get-features-array
        expect EPERM
        set-features-array VERSION_1
        set-owner
        expect ENOBUFS
        get-features-array 2
        """)

    /// 6.12.y and 6.17 with CONFIG_VHOST_ENABLE_FORK_OWNER_CONTROL (trixie, sid): the worker
    /// mode is set before SET_OWNER (kthread 0, task 1, anything else EINVAL) and read back;
    /// after SET_OWNER a SET is EBUSY and a GET still answers (vhost.c vhost_dev_ioctl).
    public static let forkOwner = KernelTierScript("fork-owner.vhost", """
        open
        set-fork-owner kthread
        get-fork-owner
        expect fork-owner == 0
        set-fork-owner task
        get-fork-owner
        expect fork-owner == 1
        expect EINVAL
        set-fork-owner 2
        set-owner
        expect EBUSY
        set-fork-owner kthread
        get-fork-owner
        expect fork-owner == 1
        """)

    /// 6.1: no worker-mode requests; vhost_dev_ioctl checks the owner first: EPERM.
    public static let forkOwnerAbsent = KernelTierScript("fork-owner-absent.vhost", """
        open
        expect EPERM
        get-fork-owner
        expect EPERM
        set-fork-owner task
        set-owner
        """)

    // MARK: every command used: busy polling, the tap's requests, waits and reads

    /// VHOST_SET/GET_VRING_BUSYLOOP_TIMEOUT: vring ioctls (EPERM before SET_OWNER, ENOBUFS for
    /// index 2), 0 by default (vhost_vq_reset), read back as set; frames both ways with the
    /// worker busy-polling 50 µs.
    public static let busyloop = KernelTierScript("busyloop.vhost", """
        open
        expect EPERM
        set-vring-busyloop-timeout 1 50
        set-owner
        let t = get-vring-busyloop-timeout 1
        expect $t == 0
        set-vring-busyloop-timeout 0 50
        set-vring-busyloop-timeout 1 50
        get-vring-busyloop-timeout 1
        expect busyloop-timeout == 50
        expect ENOBUFS
        set-vring-busyloop-timeout 2 50
        expect ENOBUFS
        get-vring-busyloop-timeout 2
        tap vhscript9
        set-features VERSION_1 EVENT_IDX
        memory 4M
        set-mem-table
        ring 0 64
        ring 1 64
        set-vring-num 0 64
        set-vring-num 1 64
        set-vring-addr 0
        set-vring-addr 1
        set-vring-kick 0
        set-vring-kick 1
        set-vring-call 0
        set-vring-call 1
        set-vnet-hdr-size 12
        set-backend 0 tap
        set-backend 1 tap
        send 1 count=32
        host-expect count=32
        post 0 count=16
        host-send count=8
        receive 0 count=8
        """)

    /// The tun requests on the script's tap (tun.c): the header size read back, TUNSETSNDBUF 0
    /// EINVAL and 65536 read back, TUNSETOFFLOAD's rule (TSO needs CSUM: EINVAL), TUNGETFEATURES
    /// (TAP, NO_PI, VNET_HDR, MULTI_QUEUE), TUNSETQUEUE on a single-queue tap EINVAL; frames both
    /// ways, the RX call waited for, TX's used index read two ways (used-idx, and `read` of the
    /// used ring's idx field); last, the carrier and the link off and on (last because the host
    /// stack may take up to a second to send through the tap again: linkwatch).
    public static let tapRequests = KernelTierScript("tap-requests.vhost", queuePair + """
        get-vnet-hdr-size
        expect vnet-hdr-size == 12
        expect EINVAL
        set-sndbuf 0
        set-sndbuf 65536
        get-sndbuf
        expect sndbuf == 65536
        set-sndbuf 2147483647
        expect EINVAL
        set-offloads tso4
        set-offloads csum tso4 tso6
        set-offloads
        get-tun-features
        expect tun-features contains 0x5102
        expect EINVAL
        set-queue detach
        post 0 count=16
        host-send count=2
        let calls = wait-call 0
        expect $calls >= 1
        receive 0 count=2
        send 1 count=4
        host-expect count=4
        used-idx 1
        expect used-idx == 4
        let used = ring-address 1 used
        read $used+2 width=2
        expect value == 4
        print TX used index $used+2 holds 4
        set-carrier off
        set-carrier on
        link down
        link up
        """)

    /// Every inline script, for the unit test that parses them all.
    public static let all: [KernelTierScript] = [
        rawMemoryTable, rawVringFlags, usedRingPastMemory, fileDescriptors, writableTransmitDescriptor, availIndexJump, frames,
        wrongExpectations, remapSetup, remapMemory, kickReceive, resetOwnerAndClose, newWorker, vringEndianWithoutCrossEndian,
        featuresArray, featuresArrayAbsent, forkOwner, forkOwnerAbsent, busyloop, tapRequests,
    ]
}
