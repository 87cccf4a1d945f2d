// CVhost: the C ABI of vhost-net and tun, for Swift.
//
// Swift cannot import the _IOW/_IOR/_IOWR macros, so every ioctl request
// number is exported as an `extern const unsigned long` (the CNIOLinux
// pattern). ioctl(2) is variadic, so typed wrappers are provided too.
// Struct layouts that the Swift side mirrors are checked in CVhost.c with
// _Static_assert.
#ifndef CVHOST_H
#define CVHOST_H

#include <stdint.h>
#include <stddef.h>
#include <linux/vhost.h>
#include <linux/vhost_types.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_net.h>
#include <linux/virtio_config.h>
#include <linux/if_tun.h>

// ---- vhost ioctls (linux/vhost.h) ----
extern const unsigned long CVHOST_VHOST_GET_FEATURES;
extern const unsigned long CVHOST_VHOST_SET_FEATURES;
extern const unsigned long CVHOST_VHOST_SET_OWNER;
extern const unsigned long CVHOST_VHOST_RESET_OWNER;
extern const unsigned long CVHOST_VHOST_SET_MEM_TABLE;
extern const unsigned long CVHOST_VHOST_SET_LOG_BASE;
extern const unsigned long CVHOST_VHOST_SET_LOG_FD;
extern const unsigned long CVHOST_VHOST_SET_VRING_NUM;
extern const unsigned long CVHOST_VHOST_SET_VRING_ADDR;
extern const unsigned long CVHOST_VHOST_SET_VRING_BASE;
extern const unsigned long CVHOST_VHOST_GET_VRING_BASE;
extern const unsigned long CVHOST_VHOST_SET_VRING_KICK;
extern const unsigned long CVHOST_VHOST_SET_VRING_CALL;
extern const unsigned long CVHOST_VHOST_SET_VRING_ERR;
extern const unsigned long CVHOST_VHOST_SET_VRING_ENDIAN;
extern const unsigned long CVHOST_VHOST_GET_VRING_ENDIAN;
extern const unsigned long CVHOST_VHOST_SET_VRING_BUSYLOOP_TIMEOUT;
extern const unsigned long CVHOST_VHOST_GET_VRING_BUSYLOOP_TIMEOUT;
extern const unsigned long CVHOST_VHOST_SET_BACKEND_FEATURES;
extern const unsigned long CVHOST_VHOST_GET_BACKEND_FEATURES;
extern const unsigned long CVHOST_VHOST_NET_SET_BACKEND;

// ---- tun ioctls (linux/if_tun.h) ----
extern const unsigned long CVHOST_TUNSETIFF;
extern const unsigned long CVHOST_TUNGETIFF;
extern const unsigned long CVHOST_TUNSETPERSIST;
extern const unsigned long CVHOST_TUNSETOWNER;
extern const unsigned long CVHOST_TUNSETGROUP;
extern const unsigned long CVHOST_TUNGETFEATURES;
extern const unsigned long CVHOST_TUNSETOFFLOAD;
extern const unsigned long CVHOST_TUNSETSNDBUF;
extern const unsigned long CVHOST_TUNGETSNDBUF;
extern const unsigned long CVHOST_TUNGETVNETHDRSZ;
extern const unsigned long CVHOST_TUNSETVNETHDRSZ;
extern const unsigned long CVHOST_TUNSETQUEUE;
extern const unsigned long CVHOST_TUNSETVNETLE;
extern const unsigned long CVHOST_TUNGETVNETLE;

// ---- sizes of the structs the Swift side mirrors (asserted in CVhost.c) ----
extern const size_t CVHOST_SIZEOF_VRING_DESC;          // 16
extern const size_t CVHOST_SIZEOF_VRING_USED_ELEM;     // 8
extern const size_t CVHOST_SIZEOF_VHOST_MEMORY;        // 8 (header before regions[])
extern const size_t CVHOST_SIZEOF_VHOST_MEMORY_REGION; // 32
extern const size_t CVHOST_SIZEOF_VHOST_VRING_ADDR;    // 40
extern const size_t CVHOST_SIZEOF_VHOST_VRING_STATE;   // 8
extern const size_t CVHOST_SIZEOF_VHOST_VRING_FILE;    // 8
extern const size_t CVHOST_SIZEOF_VIRTIO_NET_HDR;      // 10
extern const size_t CVHOST_SIZEOF_VIRTIO_NET_HDR_MRG_RXBUF; // 12

// ---- typed ioctl wrappers (ioctl(2) is variadic) ----
// Each returns 0 (or the ioctl's non-negative result) on success and -errno on failure.
int cvhost_ioctl_none(int fd, unsigned long request);
int cvhost_ioctl_ptr(int fd, unsigned long request, void *argument);
int cvhost_ioctl_int(int fd, unsigned long request, int argument);
int cvhost_ioctl_ulong(int fd, unsigned long request, unsigned long argument);

// ---- tap helper (the containerization pattern: a small C helper) ----
// Opens /dev/net/tun (O_RDWR|O_CLOEXEC) and attaches it with TUNSETIFF.
// `name` is IFNAMSIZ-bounded; an empty name lets the kernel choose.
// On success returns the fd and writes the kernel's name to `name_out`
// (IFNAMSIZ bytes). On failure returns -errno; `failed_step` is set to
// 1 when open failed, 2 when TUNSETIFF failed.
int cvhost_tap_open(const char *name, short flags, char *name_out, int *failed_step);

// Interface helpers over an AF_INET datagram socket.
int cvhost_if_get_flags(const char *name, short *flags_out);
int cvhost_if_set_flags(const char *name, short flags);
int cvhost_if_index(const char *name);
int cvhost_if_set_mtu(const char *name, int mtu);
int cvhost_if_get_mtu(const char *name);
int cvhost_if_get_hwaddr(const char *name, uint8_t mac_out[6]);

// eventfd(2) and memfd_create(2) (not all of their headers reach Swift's Glibc module).
int cvhost_eventfd(unsigned int initial, int nonblocking);
int cvhost_memfd(const char *name, int hugetlb);

// An AF_PACKET raw socket bound to one interface, for the host side of tests and the demo.
// protocol is a host-order EtherType (ETH_P_ALL = 3 for everything). Returns fd or -errno.
int cvhost_packet_socket(int ifindex, unsigned short protocol);
int cvhost_set_socket_buffer(int fd, int receive, int bytes);
// PACKET_VNET_HDR: frames sent (and received) carry a struct virtio_net_hdr first.
int cvhost_packet_vnet_header(int fd);

// IPv4 helpers for the host side of the demo (addresses in host byte order).
int cvhost_if_set_ipv4(const char *name, uint32_t address, uint32_t netmask);
// A socket of the given type/protocol (SOCK_DGRAM/0 for UDP, SOCK_RAW/IPPROTO_ICMP for ping).
int cvhost_inet_socket(int type, int protocol);
int cvhost_udp_socket(void);
int cvhost_bind_ipv4(int fd, uint32_t address, uint16_t port);
int cvhost_icmp_socket(void);
long cvhost_sendto_ipv4(int fd, uint32_t address, uint16_t port, const void *buffer, size_t length);
// Waits up to timeout_ms for a datagram; returns its length, 0 on timeout, or -errno.
// `from_address` receives the sender (host byte order) when not NULL.
long cvhost_recv_timeout(int fd, void *buffer, size_t length, int timeout_ms, uint32_t *from_address);
int cvhost_net_admin_capable(void);

// epoll (struct epoll_event is packed on x86_64, so Swift sees only tokens).
int cvhost_epoll_create(void);
int cvhost_epoll_add(int epfd, int fd, uint64_t token);
// Fills up to `maximum` tokens of ready fds; returns their count, 0 on timeout, or -errno.
int cvhost_epoll_wait(int epfd, uint64_t *tokens, int maximum, int timeout_ms);

// IFF_* interface flags, for Swift.
extern const short CVHOST_IFF_UP;
extern const short CVHOST_IFF_RUNNING;
extern const int CVHOST_IFNAMSIZ;

#endif
