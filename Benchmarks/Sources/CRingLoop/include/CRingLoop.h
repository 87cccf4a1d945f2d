// A minimal split-ring driver in C, and a minimal device that both drivers share, for
// measuring the Swift driver (Virtio.SplitVirtqueueDriver) against the same ring operations
// written as plainly as C allows. Layouts are the virtio 1.x split ring (virtio_ring.h).
#ifndef CRINGLOOP_H
#define CRINGLOOP_H
#include <stdint.h>

/// The driver's state: a LIFO free list threaded through `next`, as virtio_ring.c.
typedef struct cring_driver {
    uint16_t num;
    void *desc, *avail, *used;
    uint16_t free_head, num_free, avail_idx_shadow, added, last_used_idx;
    int event_idx;
    uint16_t *next;   // num entries: the shadow next links of the free list
    uint16_t *count;  // num entries: descriptors per chain in flight (0 = free)
} cring_driver;

/// The device: consumes every available chain, checks it as vhost.c does in outline (head
/// below num, address inside the one memory region) and returns it used with length 0.
typedef struct cring_device {
    uint16_t num;
    void *desc, *avail, *used;
    uint16_t last_avail_idx, used_idx;
    uint64_t base, size;
    int event_idx;
} cring_device;

void cring_driver_init(cring_driver *d, uint16_t num, void *desc, void *avail, void *used, int event_idx, uint16_t *next, uint16_t *count);
/// Adds a one-descriptor chain; returns its head, or -1 when the ring is full.
int cring_driver_add(cring_driver *d, uint64_t addr, uint32_t len);
/// Publishes avail->idx (release), then says whether the device wants a kick.
int cring_driver_publish(cring_driver *d);
/// Reaps one used entry: its head, -1 when none, -2 when the device broke the protocol.
int cring_driver_reap(cring_driver *d, uint32_t *len);

void cring_device_init(cring_device *v, uint16_t num, void *desc, void *avail, void *used, uint64_t base, uint64_t size, int event_idx);
/// Uses every available chain; returns how many, or -1 on a protocol violation.
int cring_device_run(cring_device *v);

/// The whole C loop: `frames` one-descriptor chains through driver, device and back, adding
/// up to `batch` before each publish. Returns the frames reaped (== frames unless broken) and
/// counts in `kicks` the publishes after which the device asked for a kick.
uint64_t cring_loop(cring_driver *d, cring_device *v, uint64_t frames, int batch, uint64_t addr, uint32_t len, int *kicks);

/// RX: adds a one-descriptor, device-writable chain (VRING_DESC_F_WRITE), as a driver posts a
/// receive buffer; returns its head, or -1 when the ring is full.
int cring_driver_add_writable(cring_driver *d, uint64_t addr, uint32_t len);

/// RX: the device receives up to `max` frames of `frame_len` bytes (header included) into the
/// available chains, each checked as vhost.c does in outline (head below num, device-writable,
/// inside the region, long enough), and returns them used with that length. Returns how many,
/// or -1 on a protocol violation.
int cring_device_receive(cring_device *v, uint32_t frame_len, int max);

/// The whole C RX loop, as the Swift driver's receive fast path (VhostNet ReceiveQueue with
/// neither MRG_RXBUF nor IN_ORDER): every free head gets its own `buf_len`-byte buffer at
/// `base + head * buf_len` (host `host_base + head * buf_len`); then until `frames` arrived: the
/// device receives up to `batch`, the driver reaps each used entry, checks its length against
/// the buffer (virtio_net receive_buf), reads the frame's first byte (the handler's touch),
/// refills every free head and publishes. Returns the frames delivered; counts kicks, frame
/// bytes and the sum of the bytes read.
uint64_t cring_rx_loop(cring_driver *d, cring_device *v, uint64_t frames, int batch, uint64_t base, uint8_t *host_base, uint32_t buf_len,
                       uint32_t header_len, uint32_t frame_len, int *kicks, uint64_t *bytes, uint64_t *touched);

#endif
