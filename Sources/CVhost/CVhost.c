#define _GNU_SOURCE
#include "CVhost.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>

// ---- ioctl numbers ----
const unsigned long CVHOST_VHOST_GET_FEATURES = VHOST_GET_FEATURES;
const unsigned long CVHOST_VHOST_SET_FEATURES = VHOST_SET_FEATURES;
const unsigned long CVHOST_VHOST_SET_OWNER = VHOST_SET_OWNER;
const unsigned long CVHOST_VHOST_RESET_OWNER = VHOST_RESET_OWNER;
const unsigned long CVHOST_VHOST_SET_MEM_TABLE = VHOST_SET_MEM_TABLE;
const unsigned long CVHOST_VHOST_SET_LOG_BASE = VHOST_SET_LOG_BASE;
const unsigned long CVHOST_VHOST_SET_LOG_FD = VHOST_SET_LOG_FD;
const unsigned long CVHOST_VHOST_SET_VRING_NUM = VHOST_SET_VRING_NUM;
const unsigned long CVHOST_VHOST_SET_VRING_ADDR = VHOST_SET_VRING_ADDR;
const unsigned long CVHOST_VHOST_SET_VRING_BASE = VHOST_SET_VRING_BASE;
const unsigned long CVHOST_VHOST_GET_VRING_BASE = VHOST_GET_VRING_BASE;
const unsigned long CVHOST_VHOST_SET_VRING_KICK = VHOST_SET_VRING_KICK;
const unsigned long CVHOST_VHOST_SET_VRING_CALL = VHOST_SET_VRING_CALL;
const unsigned long CVHOST_VHOST_SET_VRING_ERR = VHOST_SET_VRING_ERR;
const unsigned long CVHOST_VHOST_SET_VRING_ENDIAN = VHOST_SET_VRING_ENDIAN;
const unsigned long CVHOST_VHOST_GET_VRING_ENDIAN = VHOST_GET_VRING_ENDIAN;
const unsigned long CVHOST_VHOST_SET_VRING_BUSYLOOP_TIMEOUT = VHOST_SET_VRING_BUSYLOOP_TIMEOUT;
const unsigned long CVHOST_VHOST_GET_VRING_BUSYLOOP_TIMEOUT = VHOST_GET_VRING_BUSYLOOP_TIMEOUT;
const unsigned long CVHOST_VHOST_SET_BACKEND_FEATURES = VHOST_SET_BACKEND_FEATURES;
const unsigned long CVHOST_VHOST_GET_BACKEND_FEATURES = VHOST_GET_BACKEND_FEATURES;
const unsigned long CVHOST_VHOST_NET_SET_BACKEND = VHOST_NET_SET_BACKEND;

const unsigned long CVHOST_TUNSETIFF = TUNSETIFF;
const unsigned long CVHOST_TUNGETIFF = TUNGETIFF;
const unsigned long CVHOST_TUNSETPERSIST = TUNSETPERSIST;
const unsigned long CVHOST_TUNSETOWNER = TUNSETOWNER;
const unsigned long CVHOST_TUNSETGROUP = TUNSETGROUP;
const unsigned long CVHOST_TUNGETFEATURES = TUNGETFEATURES;
const unsigned long CVHOST_TUNSETOFFLOAD = TUNSETOFFLOAD;
const unsigned long CVHOST_TUNSETSNDBUF = TUNSETSNDBUF;
const unsigned long CVHOST_TUNGETSNDBUF = TUNGETSNDBUF;
const unsigned long CVHOST_TUNGETVNETHDRSZ = TUNGETVNETHDRSZ;
const unsigned long CVHOST_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
const unsigned long CVHOST_TUNSETQUEUE = TUNSETQUEUE;
const unsigned long CVHOST_TUNSETVNETLE = TUNSETVNETLE;
const unsigned long CVHOST_TUNGETVNETLE = TUNGETVNETLE;

// ---- layouts the Swift side mirrors (Virtio/SplitRingLayout.swift, Vhost/MemoryTable.swift) ----
_Static_assert(sizeof(struct vring_desc) == 16, "vring_desc is 16 bytes");
_Static_assert(offsetof(struct vring_desc, addr) == 0, "vring_desc.addr at 0");
_Static_assert(offsetof(struct vring_desc, len) == 8, "vring_desc.len at 8");
_Static_assert(offsetof(struct vring_desc, flags) == 12, "vring_desc.flags at 12");
_Static_assert(offsetof(struct vring_desc, next) == 14, "vring_desc.next at 14");
_Static_assert(sizeof(struct vring_used_elem) == 8, "vring_used_elem is 8 bytes");
_Static_assert(offsetof(struct vring_avail, ring) == 4, "avail ring starts after flags and idx");
_Static_assert(offsetof(struct vring_used, ring) == 4, "used ring starts after flags and idx");
_Static_assert(sizeof(struct vhost_memory) == 8, "vhost_memory header: nregions, padding");
_Static_assert(sizeof(struct vhost_memory_region) == 32, "vhost_memory_region is 4 x u64");
_Static_assert(offsetof(struct vhost_memory_region, guest_phys_addr) == 0, "gpa at 0");
_Static_assert(offsetof(struct vhost_memory_region, memory_size) == 8, "size at 8");
_Static_assert(offsetof(struct vhost_memory_region, userspace_addr) == 16, "uaddr at 16");
_Static_assert(sizeof(struct vhost_vring_addr) == 40, "vhost_vring_addr is 40 bytes");
_Static_assert(sizeof(struct vhost_vring_state) == 8, "vhost_vring_state is 8 bytes");
_Static_assert(sizeof(struct vhost_vring_file) == 8, "vhost_vring_file is 8 bytes");
_Static_assert(sizeof(struct virtio_net_hdr) == 10, "virtio_net_hdr is 10 bytes");
_Static_assert(sizeof(struct virtio_net_hdr_mrg_rxbuf) == 12, "virtio_net_hdr_mrg_rxbuf is 12 bytes");

const size_t CVHOST_SIZEOF_VRING_DESC = sizeof(struct vring_desc);
const size_t CVHOST_SIZEOF_VRING_USED_ELEM = sizeof(struct vring_used_elem);
const size_t CVHOST_SIZEOF_VHOST_MEMORY = sizeof(struct vhost_memory);
const size_t CVHOST_SIZEOF_VHOST_MEMORY_REGION = sizeof(struct vhost_memory_region);
const size_t CVHOST_SIZEOF_VHOST_VRING_ADDR = sizeof(struct vhost_vring_addr);
const size_t CVHOST_SIZEOF_VHOST_VRING_STATE = sizeof(struct vhost_vring_state);
const size_t CVHOST_SIZEOF_VHOST_VRING_FILE = sizeof(struct vhost_vring_file);
const size_t CVHOST_SIZEOF_VIRTIO_NET_HDR = sizeof(struct virtio_net_hdr);
const size_t CVHOST_SIZEOF_VIRTIO_NET_HDR_MRG_RXBUF = sizeof(struct virtio_net_hdr_mrg_rxbuf);

const short CVHOST_IFF_UP = IFF_UP;
const short CVHOST_IFF_RUNNING = IFF_RUNNING;
const int CVHOST_IFNAMSIZ = IFNAMSIZ;

// ---- ioctl wrappers ----
static int result(int rc) { return rc < 0 ? -errno : rc; }

int cvhost_ioctl_none(int fd, unsigned long request) { return result(ioctl(fd, request)); }
int cvhost_ioctl_ptr(int fd, unsigned long request, void *argument) { return result(ioctl(fd, request, argument)); }
int cvhost_ioctl_int(int fd, unsigned long request, int argument) { return result(ioctl(fd, request, argument)); }
int cvhost_ioctl_ulong(int fd, unsigned long request, unsigned long argument) { return result(ioctl(fd, request, argument)); }

// ---- tap ----
int cvhost_tap_open(const char *name, short flags, char *name_out, int *failed_step) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) { *failed_step = 1; return -errno; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = flags;
    if (name) strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int saved = errno;
        close(fd);
        *failed_step = 2;
        return -saved;
    }
    memcpy(name_out, ifr.ifr_name, IFNAMSIZ);
    name_out[IFNAMSIZ - 1] = 0;
    return fd;
}

static int with_ifreq(const char *name, unsigned long request, struct ifreq *ifr) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -errno;
    strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
    int rc = ioctl(sock, request, ifr);
    int saved = errno;
    close(sock);
    return rc < 0 ? -saved : 0;
}

int cvhost_if_get_flags(const char *name, short *flags_out) {
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    int rc = with_ifreq(name, SIOCGIFFLAGS, &ifr);
    if (rc == 0) *flags_out = ifr.ifr_flags;
    return rc;
}

int cvhost_if_set_flags(const char *name, short flags) {
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = flags;
    return with_ifreq(name, SIOCSIFFLAGS, &ifr);
}

int cvhost_if_index(const char *name) {
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    int rc = with_ifreq(name, SIOCGIFINDEX, &ifr);
    return rc < 0 ? rc : ifr.ifr_ifindex;
}

int cvhost_if_set_mtu(const char *name, int mtu) {
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    ifr.ifr_mtu = mtu;
    return with_ifreq(name, SIOCSIFMTU, &ifr);
}

int cvhost_if_get_mtu(const char *name) {
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    int rc = with_ifreq(name, SIOCGIFMTU, &ifr);
    return rc < 0 ? rc : ifr.ifr_mtu;
}

int cvhost_if_get_hwaddr(const char *name, uint8_t mac_out[6]) {
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    int rc = with_ifreq(name, SIOCGIFHWADDR, &ifr);
    if (rc == 0) memcpy(mac_out, ifr.ifr_hwaddr.sa_data, 6);
    return rc;
}

int cvhost_eventfd(unsigned int initial, int nonblocking) {
    int fd = eventfd(initial, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
    return fd < 0 ? -errno : fd;
}

int cvhost_memfd(const char *name, int hugetlb) {
    int fd = memfd_create(name, MFD_CLOEXEC | (hugetlb ? MFD_HUGETLB : 0));
    return fd < 0 ? -errno : fd;
}

int cvhost_packet_socket(int ifindex, unsigned short protocol) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(protocol));
    if (fd < 0) return -errno;
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(protocol);
    sll.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    return fd;
}

int cvhost_set_socket_buffer(int fd, int receive, int bytes) {
    int rc = setsockopt(fd, SOL_SOCKET, receive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, &bytes, sizeof bytes);
    if (rc < 0) rc = setsockopt(fd, SOL_SOCKET, receive ? SO_RCVBUF : SO_SNDBUF, &bytes, sizeof bytes);
    return rc < 0 ? -errno : 0;
}

int cvhost_if_set_ipv4(const char *name, uint32_t address, uint32_t netmask) {
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(address);
    int rc = with_ifreq(name, SIOCSIFADDR, &ifr);
    if (rc < 0) return rc;
    memset(&ifr, 0, sizeof ifr);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(netmask);
    return with_ifreq(name, SIOCSIFNETMASK, &ifr);
}

int cvhost_inet_socket(int type, int protocol) {
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, protocol);
    return fd < 0 ? -errno : fd;
}
int cvhost_udp_socket(void) { return cvhost_inet_socket(SOCK_DGRAM, 0); }
int cvhost_icmp_socket(void) { return cvhost_inet_socket(SOCK_RAW, IPPROTO_ICMP); }

long cvhost_sendto_ipv4(int fd, uint32_t address, uint16_t port, const void *buffer, size_t length) {
    struct sockaddr_in to; memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(address);
    ssize_t n = sendto(fd, buffer, length, 0, (struct sockaddr *)&to, sizeof to);
    return n < 0 ? -errno : n;
}

long cvhost_recv_timeout(int fd, void *buffer, size_t length, int timeout_ms, uint32_t *from_address) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int rc = poll(&p, 1, timeout_ms);
    if (rc < 0) return -errno;
    if (rc == 0) return 0;
    struct sockaddr_in from; socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(fd, buffer, length, MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen);
    if (n < 0) return errno == EAGAIN ? 0 : -errno;
    if (from_address) *from_address = ntohl(from.sin_addr.s_addr);
    return n;
}

// CAP_NET_ADMIN (12) in the effective set, from /proc/self/status.
int cvhost_net_admin_capable(void) {
    FILE *f = fopen("/proc/self/status", "re");
    if (!f) return 0;
    char line[256];
    unsigned long long caps = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "CapEff: %llx", &caps) == 1) break;
    }
    fclose(f);
    return (caps >> 12) & 1;
}

int cvhost_packet_vnet_header(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0 ? -errno : 0;
}

int cvhost_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cvhost_epoll_add(int epfd, int fd, uint64_t token) {
    struct epoll_event event = { .events = EPOLLIN, .data.u64 = token };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) < 0 ? -errno : 0;
}

int cvhost_epoll_wait(int epfd, uint64_t *tokens, int maximum, int timeout_ms) {
    struct epoll_event events[64];
    if (maximum > 64) maximum = 64;
    int n = epoll_wait(epfd, events, maximum, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) tokens[i] = events[i].data.u64;
    return n;
}

int cvhost_bind_ipv4(int fd, uint32_t address, uint16_t port) {
    struct sockaddr_in at; memset(&at, 0, sizeof at);
    at.sin_family = AF_INET;
    at.sin_port = htons(port);
    at.sin_addr.s_addr = htonl(address);
    return bind(fd, (struct sockaddr *)&at, sizeof at) < 0 ? -errno : 0;
}
