#include "CRingLoop.h"
#include <string.h>

// virtio_ring.h layouts, little-endian on x86_64 (the only host this runs on).
struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct used_elem { uint32_t id, len; };
#define AVAIL_IDX(p) ((uint16_t *)(p) + 1)
#define AVAIL_RING(p, i) ((uint16_t *)(p) + 2 + (i))
#define USED_IDX(p) ((uint16_t *)(p) + 1)
#define USED_RING(p) ((struct used_elem *)((uint8_t *)(p) + 4))
#define F_NEXT 1
#define F_WRITE 2

static inline int need_event(uint16_t event, uint16_t new_idx, uint16_t old) {
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

void cring_driver_init(cring_driver *d, uint16_t num, void *desc, void *avail, void *used, int event_idx, uint16_t *next, uint16_t *count) {
    memset(d, 0, sizeof *d);
    d->num = num; d->desc = desc; d->avail = avail; d->used = used; d->event_idx = event_idx;
    d->next = next; d->count = count; d->num_free = num;
    for (uint16_t i = 0; i < num; i++) { next[i] = (uint16_t)((i + 1) % num); count[i] = 0; }
}

// One one-descriptor chain with `flags` (0 for TX, F_WRITE for RX); inlined into both callers.
static inline __attribute__((always_inline)) int driver_add(cring_driver *d, uint64_t addr, uint32_t len, uint16_t flags) {
    if (d->num_free < 1) return -1;
    uint16_t head = d->free_head;
    struct desc *t = (struct desc *)d->desc + head;
    t->addr = addr; t->len = len; t->flags = flags; t->next = 0;
    d->free_head = d->next[head];
    d->num_free--;
    d->count[head] = 1;
    *AVAIL_RING(d->avail, d->avail_idx_shadow & (d->num - 1)) = head;
    d->avail_idx_shadow++;
    d->added++;
    return head;
}

int cring_driver_add(cring_driver *d, uint64_t addr, uint32_t len) { return driver_add(d, addr, len, 0); }
int cring_driver_add_writable(cring_driver *d, uint64_t addr, uint32_t len) { return driver_add(d, addr, len, F_WRITE); }

int cring_driver_publish(cring_driver *d) {
    uint16_t new_idx = d->avail_idx_shadow, old = (uint16_t)(new_idx - d->added);
    d->added = 0;
    __atomic_store_n(AVAIL_IDX(d->avail), new_idx, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (d->event_idx) {
        uint16_t event = __atomic_load_n((uint16_t *)((uint8_t *)d->used + 4 + 8 * d->num), __ATOMIC_ACQUIRE);
        return need_event(event, new_idx, old);
    }
    return !(__atomic_load_n((uint16_t *)d->used, __ATOMIC_RELAXED) & 1);
}

int cring_driver_reap(cring_driver *d, uint32_t *len) {
    uint16_t device_idx = __atomic_load_n(USED_IDX(d->used), __ATOMIC_ACQUIRE);
    if (device_idx == d->last_used_idx) return -1;
    uint16_t given = (uint16_t)(d->avail_idx_shadow - d->added - d->last_used_idx);
    if ((uint16_t)(device_idx - d->last_used_idx) > given) return -2;
    struct used_elem e = USED_RING(d->used)[d->last_used_idx & (d->num - 1)];
    if (e.id >= d->num || d->count[e.id] == 0) return -2;
    uint16_t head = (uint16_t)e.id, n = d->count[head], tail = head;
    for (uint16_t i = 1; i < n; i++) tail = d->next[tail];
    d->count[head] = 0;
    d->next[tail] = d->free_head;
    d->free_head = head;
    d->num_free += n;
    d->last_used_idx++;
    if (d->event_idx)
        __atomic_store_n((uint16_t *)((uint8_t *)d->avail + 4 + 2 * d->num), d->last_used_idx, __ATOMIC_RELEASE);
    *len = e.len;
    return head;
}

void cring_device_init(cring_device *v, uint16_t num, void *desc, void *avail, void *used, uint64_t base, uint64_t size, int event_idx) {
    memset(v, 0, sizeof *v);
    v->num = num; v->desc = desc; v->avail = avail; v->used = used; v->base = base; v->size = size; v->event_idx = event_idx;
}

// Uses up to `max` available chains. TX (`receive` 0): each is read, used with length 0. RX
// (`receive` 1): each must be device-writable and hold `frame_len`, used with that length.
// Inlined into both callers, so the TX loop pays nothing for the RX checks.
static inline __attribute__((always_inline)) int device_use(cring_device *v, int receive, uint32_t frame_len, int max) {
    uint16_t avail_idx = __atomic_load_n(AVAIL_IDX(v->avail), __ATOMIC_ACQUIRE);
    if ((uint16_t)(avail_idx - v->last_avail_idx) > v->num) return -1;
    int done = 0;
    while (done < max && v->last_avail_idx != avail_idx) {
        uint16_t head = *AVAIL_RING(v->avail, v->last_avail_idx & (v->num - 1));
        if (head >= v->num) return -1;
        struct desc t = ((struct desc *)v->desc)[head];
        if (t.addr < v->base || t.addr - v->base + t.len > v->size || (t.flags & F_NEXT)) return -1;
        if (receive && (!(t.flags & F_WRITE) || t.len < frame_len)) return -1;
        struct used_elem *u = USED_RING(v->used) + (v->used_idx & (v->num - 1));
        u->id = head; u->len = receive ? frame_len : 0;
        v->used_idx++;
        v->last_avail_idx++;
        done++;
    }
    __atomic_store_n(USED_IDX(v->used), v->used_idx, __ATOMIC_RELEASE);
    if (v->event_idx)  // avail_event: kick me at the next entry
        __atomic_store_n((uint16_t *)((uint8_t *)v->used + 4 + 8 * v->num), v->last_avail_idx, __ATOMIC_RELEASE);
    return done;
}

int cring_device_run(cring_device *v) { return device_use(v, 0, 0, v->num); }

uint64_t cring_loop(cring_driver *d, cring_device *v, uint64_t frames, int batch, uint64_t addr, uint32_t len, int *kicks) {
    uint64_t added = 0, reaped = 0;
    *kicks = 0;
    while (reaped < frames) {
        int n = 0;
        while (n < batch && added < frames && cring_driver_add(d, addr, len) >= 0) { added++; n++; }
        *kicks += cring_driver_publish(d);
        if (cring_device_run(v) < 0) return reaped;
        uint32_t l;
        int head;
        while ((head = cring_driver_reap(d, &l)) >= 0) reaped++;
        if (head == -2) return reaped;
    }
    return reaped;
}

int cring_device_receive(cring_device *v, uint32_t frame_len, int max) { return device_use(v, 1, frame_len, max); }

uint64_t cring_rx_loop(cring_driver *d, cring_device *v, uint64_t frames, int batch, uint64_t base, uint8_t *host_base, uint32_t buf_len,
                       uint32_t header_len, uint32_t frame_len, int *kicks, uint64_t *bytes, uint64_t *touched) {
    uint64_t delivered = 0, arrived = 0;
    *kicks = 0; *bytes = 0; *touched = 0;
    while (d->num_free > 0) cring_driver_add_writable(d, base + (uint64_t)d->free_head * buf_len, buf_len);
    *kicks += cring_driver_publish(d);
    while (arrived < frames) {
        uint64_t left = frames - arrived;
        int got = cring_device_receive(v, frame_len, left < (uint64_t)batch ? (int)left : batch);
        if (got < 0) return delivered;
        arrived += (uint64_t)got;
        uint32_t len;
        int head;
        while ((head = cring_driver_reap(d, &len)) >= 0) {
            if (len < header_len || len - header_len > buf_len - header_len) continue;  // dropped
            *touched += host_base[(uint64_t)head * buf_len + header_len];
            *bytes += len - header_len;
            delivered++;
        }
        if (head == -2) return delivered;
        while (d->num_free > 0) cring_driver_add_writable(d, base + (uint64_t)d->free_head * buf_len, buf_len);
        *kicks += cring_driver_publish(d);
    }
    return delivered;
}
