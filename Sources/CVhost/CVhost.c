#define _GNU_SOURCE
#include "CVhost.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/eventfd.h>
#include <linux/bpf.h>
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

// Defined here from the kernel's uapi definitions, which the 6.1 headers lack; each is
// checked against the kernel by a kernel-tier test.
struct cvhost_vhost_features_array { __u64 count; __u64 features[]; };
_Static_assert(sizeof(struct cvhost_vhost_features_array) == 8, "vhost_features_array: count, then the words");
const unsigned long CVHOST_VHOST_NEW_WORKER = _IOR(VHOST_VIRTIO, 0x8, unsigned int);
const unsigned long CVHOST_VHOST_SET_FORK_FROM_OWNER = _IOW(VHOST_VIRTIO, 0x84, __u8);
const unsigned long CVHOST_VHOST_GET_FORK_FROM_OWNER = _IOR(VHOST_VIRTIO, 0x85, __u8);
const unsigned long CVHOST_VHOST_GET_FEATURES_ARRAY = _IOR(VHOST_VIRTIO, 0x83, struct cvhost_vhost_features_array);
const unsigned long CVHOST_VHOST_SET_FEATURES_ARRAY = _IOW(VHOST_VIRTIO, 0x83, struct cvhost_vhost_features_array);
_Static_assert(_IOR(VHOST_VIRTIO, 0x8, unsigned int) == 0x8004AF08, "VHOST_NEW_WORKER");
_Static_assert(_IOW(VHOST_VIRTIO, 0x84, __u8) == 0x4001AF84, "VHOST_SET_FORK_FROM_OWNER");
_Static_assert(_IOR(VHOST_VIRTIO, 0x85, __u8) == 0x8001AF85, "VHOST_GET_FORK_FROM_OWNER");
_Static_assert(_IOR(VHOST_VIRTIO, 0x83, struct cvhost_vhost_features_array) == 0x8008AF83, "VHOST_GET_FEATURES_ARRAY");

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
const unsigned long CVHOST_TUNSETCARRIER = TUNSETCARRIER;
_Static_assert(TUNSETCARRIER == 0x400454e2, "TUNSETCARRIER");
// tun.c __tun_chr_ioctl TUNSETSTEERINGEBPF (Linux 4.16): an int fd of a BPF_PROG_TYPE_SOCKET_FILTER program, -1 detaches.
const unsigned long CVHOST_TUNSETSTEERINGEBPF = TUNSETSTEERINGEBPF;
_Static_assert(TUNSETSTEERINGEBPF == 0x800454e0, "TUNSETSTEERINGEBPF");
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

// ---- interface requests ----
const unsigned long CVHOST_SIOCGIFFLAGS = SIOCGIFFLAGS;
const unsigned long CVHOST_SIOCSIFFLAGS = SIOCSIFFLAGS;
const unsigned long CVHOST_SIOCGIFINDEX = SIOCGIFINDEX;
const unsigned long CVHOST_SIOCGIFMTU = SIOCGIFMTU;
const unsigned long CVHOST_SIOCSIFMTU = SIOCSIFMTU;
const unsigned long CVHOST_SIOCGIFHWADDR = SIOCGIFHWADDR;
const unsigned long CVHOST_SIOCSIFADDR = SIOCSIFADDR;
const unsigned long CVHOST_SIOCSIFNETMASK = SIOCSIFNETMASK;

static void ifreq_named(struct ifreq *ifr, const char *name) {
    memset(ifr, 0, sizeof *ifr);
    if (name) strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
}

int cvhost_ioctl_ifreq_short(int fd, unsigned long request, const char *name, short *value, char *name_out) {
    struct ifreq ifr; ifreq_named(&ifr, name);
    ifr.ifr_flags = *value;
    int rc = result(ioctl(fd, request, &ifr));
    *value = ifr.ifr_flags;
    if (name_out) { memcpy(name_out, ifr.ifr_name, IFNAMSIZ); name_out[IFNAMSIZ - 1] = 0; }
    return rc;
}

int cvhost_ioctl_ifreq_int(int fd, unsigned long request, const char *name, int *value) {
    struct ifreq ifr; ifreq_named(&ifr, name);
    ifr.ifr_ifindex = *value; // ifr_ifindex and ifr_mtu share the union's int
    int rc = result(ioctl(fd, request, &ifr));
    *value = ifr.ifr_ifindex;
    return rc;
}
_Static_assert(offsetof(struct ifreq, ifr_ifindex) == offsetof(struct ifreq, ifr_mtu), "ifindex and mtu share the union");

int cvhost_ioctl_ifreq_hwaddr(int fd, unsigned long request, const char *name, uint8_t mac[6]) {
    struct ifreq ifr; ifreq_named(&ifr, name);
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    int rc = result(ioctl(fd, request, &ifr));
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    return rc;
}

int cvhost_ioctl_ifreq_ipv4(int fd, unsigned long request, const char *name, uint32_t *address) {
    struct ifreq ifr; ifreq_named(&ifr, name);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(*address);
    int rc = result(ioctl(fd, request, &ifr));
    *address = ntohl(sin->sin_addr.s_addr);
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

// ---- sockets ----
const int CVHOST_AF_PACKET = AF_PACKET;
const int CVHOST_AF_INET = AF_INET;
const int CVHOST_SOCK_RAW = SOCK_RAW;
const int CVHOST_SOCK_DGRAM = SOCK_DGRAM;
const int CVHOST_IPPROTO_ICMP = IPPROTO_ICMP;
const int CVHOST_SOL_PACKET = SOL_PACKET;
const int CVHOST_PACKET_VNET_HDR = PACKET_VNET_HDR;
const int CVHOST_PACKET_IGNORE_OUTGOING = PACKET_IGNORE_OUTGOING;
const int CVHOST_SO_RCVBUF = SO_RCVBUF;
const int CVHOST_O_PATH = O_PATH;
const int CVHOST_SO_SNDBUF = SO_SNDBUF;
const int CVHOST_SO_RCVBUFFORCE = SO_RCVBUFFORCE;
const int CVHOST_SO_SNDBUFFORCE = SO_SNDBUFFORCE;

int cvhost_socket(int domain, int type, int protocol) {
    return result(socket(domain, type | SOCK_CLOEXEC, protocol));
}

int cvhost_bind_packet(int fd, int ifindex, unsigned short protocol) {
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(protocol);
    sll.sll_ifindex = ifindex;
    return result(bind(fd, (struct sockaddr *)&sll, sizeof sll));
}

int cvhost_bind_ipv4(int fd, uint32_t address, uint16_t port) {
    struct sockaddr_in at; memset(&at, 0, sizeof at);
    at.sin_family = AF_INET;
    at.sin_port = htons(port);
    at.sin_addr.s_addr = htonl(address);
    return result(bind(fd, (struct sockaddr *)&at, sizeof at));
}

long cvhost_sendto_ipv4(int fd, uint32_t address, uint16_t port, const void *buffer, size_t length) {
    struct sockaddr_in to; memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(address);
    ssize_t n = sendto(fd, buffer, length, 0, (struct sockaddr *)&to, sizeof to);
    return n < 0 ? -errno : n;
}

long cvhost_recvfrom_ipv4(int fd, void *buffer, size_t length, int flags, uint32_t *from_address) {
    struct sockaddr_in from; memset(&from, 0, sizeof from);
    socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(fd, buffer, length, flags, (struct sockaddr *)&from, &fromlen);
    if (n < 0) return -errno;
    if (from_address) *from_address = ntohl(from.sin_addr.s_addr);
    return n;
}

int cvhost_setsockopt_int(int fd, int level, int option, int value) {
    return result(setsockopt(fd, level, option, &value, sizeof value));
}

int cvhost_socketpair_seqpacket(int fds[2]) {
    return result(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds));
}

// ---- threads ----
#include <sched.h>
#include <sys/syscall.h>
int cvhost_pin_thread(int tid, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return result(sched_setaffinity(tid, sizeof set, &set));
}

long long cvhost_thread_affinity(int tid) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(tid, sizeof set, &set) < 0) return -errno;
    long long mask = 0;
    for (int cpu = 0; cpu < 64; cpu++) if (CPU_ISSET(cpu, &set)) mask |= 1LL << cpu;
    return mask;
}

#include <sys/sysmacros.h>
#include <sys/stat.h>
int cvhost_mknod_char(const char *path, unsigned int major, unsigned int minor) {
    return result(mknod(path, S_IFCHR | 0600, makedev(major, minor)));
}

#include <linux/capability.h>
#include <sys/prctl.h>
int cvhost_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable) {
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = (uint32_t)effective; data[1].effective = (uint32_t)(effective >> 32);
    data[0].permitted = (uint32_t)permitted; data[1].permitted = (uint32_t)(permitted >> 32);
    data[0].inheritable = (uint32_t)inheritable; data[1].inheritable = (uint32_t)(inheritable >> 32);
    return result((int)syscall(SYS_capset, &header, data));
}

int cvhost_capability_bounding_drop(int capability) { return result(prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)); }

int cvhost_capability_ambient_clear(void) { return result(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)); }

int cvhost_set_no_new_privileges(void) { return result(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)); }

int cvhost_rename_noreplace(int from_dir, const char *from, int to_dir, const char *to) {
    return result(renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE));
}

int cvhost_gettid(void) { return (int)syscall(SYS_gettid); }

int cvhost_pipe_cloexec(int fds[2]) { return result(pipe2(fds, O_CLOEXEC)); }

// ---- epoll ----
const uint32_t CVHOST_EPOLLIN = EPOLLIN;
const uint32_t CVHOST_EPOLLET = EPOLLET;
int cvhost_epoll_create(void) { return result(epoll_create1(EPOLL_CLOEXEC)); }

int cvhost_epoll_add(int epfd, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = { .events = events, .data.u64 = token };
    return result(epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event));
}

int cvhost_epoll_del(int epfd, int fd) { return result(epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL)); }

int cvhost_epoll_wait(int epfd, uint64_t *tokens, int maximum, int timeout_ms) {
    struct epoll_event events[64];
    if (maximum > 64) maximum = 64;
    int n = epoll_wait(epfd, events, maximum, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) tokens[i] = events[i].data.u64;
    return n;
}

const uint32_t CVHOST_BPF_PROG_TYPE_XDP = BPF_PROG_TYPE_XDP;
const uint32_t CVHOST_BPF_XDP = BPF_XDP;
const uint32_t CVHOST_BPF_PROG_TYPE_SOCKET_FILTER = BPF_PROG_TYPE_SOCKET_FILTER;
_Static_assert(sizeof(struct bpf_insn) == 8, "struct bpf_insn is 8 bytes");

int cvhost_bpf_prog_load(uint32_t type, const uint64_t *instructions, uint32_t count, const char *license, char *log, uint32_t log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = type;
    attr.insns = (uint64_t)(uintptr_t)instructions;
    attr.insn_cnt = count;
    attr.license = (uint64_t)(uintptr_t)license;
    if (log && log_size) { attr.log_buf = (uint64_t)(uintptr_t)log; attr.log_size = log_size; attr.log_level = 1; }
    long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
    return fd < 0 ? -errno : (int)fd;
}

int cvhost_bpf_link_create(int prog_fd, int ifindex, uint32_t attach_type, uint32_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.link_create.prog_fd = (uint32_t)prog_fd;
    attr.link_create.target_ifindex = (uint32_t)ifindex;
    attr.link_create.attach_type = attach_type;
    attr.link_create.flags = flags;
    long fd = syscall(SYS_bpf, BPF_LINK_CREATE, &attr, sizeof attr);
    return fd < 0 ? -errno : (int)fd;
}

// ---- network namespaces, as `ip netns exec` enters one (iproute2 lib/namespace.c netns_switch) ----
#include <sys/mount.h>
int cvhost_setns_network(int fd) { return result(setns(fd, CLONE_NEWNET)); }
int cvhost_unshare_mount_namespace(void) { return result(unshare(CLONE_NEWNS)); }
int cvhost_mount_make_root_rslave(void) { return result(mount("", "/", "none", MS_SLAVE | MS_REC, NULL)); }
int cvhost_umount_detach(const char *path) { return result(umount2(path, MNT_DETACH)); }
int cvhost_mount_sysfs(const char *path) { return result(mount("sysfs", path, "sysfs", 0, NULL)); }
int cvhost_descriptor_flags(int fd) { return result(fcntl(fd, F_GETFD)); }
int cvhost_set_close_on_exec(int fd) { return result(fcntl(fd, F_SETFD, FD_CLOEXEC)); }
