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

// ---- vhost ioctls newer than the build machine's headers (linux-libc-dev 6.1) ----
// Linux 6.5 (drivers/vhost/vhost.c vhost_worker_ioctl; only vhost-scsi routes them):
extern const unsigned long CVHOST_VHOST_NEW_WORKER;            // _IOR(0xAF, 0x8, struct vhost_worker_state) = 0x8004AF08
// Linux 6.17, backported to 6.12.y (vhost.c vhost_dev_ioctl, CONFIG_VHOST_ENABLE_FORK_OWNER_CONTROL):
extern const unsigned long CVHOST_VHOST_SET_FORK_FROM_OWNER;   // _IOW(0xAF, 0x84, __u8) = 0x4001AF84
extern const unsigned long CVHOST_VHOST_GET_FORK_FROM_OWNER;   // _IOR(0xAF, 0x85, __u8) = 0x8001AF85
// Linux 6.17 (net.c vhost_net_ioctl), struct vhost_features_array { __u64 count; __u64 features[]; }:
extern const unsigned long CVHOST_VHOST_GET_FEATURES_ARRAY;    // _IOR(0xAF, 0x83, struct vhost_features_array) = 0x8008AF83
extern const unsigned long CVHOST_VHOST_SET_FEATURES_ARRAY;    // _IOW(0xAF, 0x83, struct vhost_features_array) = 0x4008AF83

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
extern const unsigned long CVHOST_TUNSETCARRIER;  // _IOW('T', 226, int), Linux 4.16
extern const unsigned long CVHOST_TUNSETSTEERINGEBPF; // _IOR('T', 224, int), Linux 4.16
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

// ---- interface requests (struct ifreq) ----
// SIOC* numbers (linux/sockios.h), for the one traced ioctl path in Swift.
extern const unsigned long CVHOST_SIOCGIFFLAGS;
extern const unsigned long CVHOST_SIOCSIFFLAGS;
extern const unsigned long CVHOST_SIOCGIFINDEX;
extern const unsigned long CVHOST_SIOCGIFMTU;
extern const unsigned long CVHOST_SIOCSIFMTU;
extern const unsigned long CVHOST_SIOCGIFHWADDR;
extern const unsigned long CVHOST_SIOCSIFADDR;
extern const unsigned long CVHOST_SIOCSIFNETMASK;

// One ioctl on a struct ifreq (a union Swift cannot build cleanly). Each fills ifr_name from
// `name` (IFNAMSIZ-bounded), stores `*value` in the named member, issues the ioctl, reads the
// member back into `*value` and ifr_name into `name_out` (IFNAMSIZ bytes, may be NULL), and
// returns the ioctl's result or -errno. No decision is made here.
int cvhost_ioctl_ifreq_short(int fd, unsigned long request, const char *name, short *value, char *name_out); // ifr_flags
int cvhost_ioctl_ifreq_int(int fd, unsigned long request, const char *name, int *value);                      // ifr_ifindex / ifr_mtu
int cvhost_ioctl_ifreq_hwaddr(int fd, unsigned long request, const char *name, uint8_t mac[6]);               // ifr_hwaddr.sa_data
int cvhost_ioctl_ifreq_ipv4(int fd, unsigned long request, const char *name, uint32_t *address);              // ifr_addr as sockaddr_in, host order

// eventfd(2) and memfd_create(2) (not all of their headers reach Swift's Glibc module).
int cvhost_eventfd(unsigned int initial, int nonblocking);
int cvhost_memfd(const char *name, int hugetlb);

// Sockets: socket(2) with SOCK_CLOEXEC, and the sockaddr building Swift cannot do cleanly.
// Each returns the fd, 0, the byte count, or -errno.
int cvhost_socket(int domain, int type, int protocol);
int cvhost_bind_packet(int fd, int ifindex, unsigned short protocol); // sockaddr_ll; protocol host order
int cvhost_bind_ipv4(int fd, uint32_t address, uint16_t port);        // host order
long cvhost_sendto_ipv4(int fd, uint32_t address, uint16_t port, const void *buffer, size_t length);
long cvhost_recvfrom_ipv4(int fd, void *buffer, size_t length, int flags, uint32_t *from_address);
int cvhost_setsockopt_int(int fd, int level, int option, int value);
// A SOCK_SEQPACKET socketpair: one message is one frame, as a tap delivers them.
int cvhost_socketpair_seqpacket(int fds[2]);
extern const int CVHOST_AF_PACKET;
extern const int CVHOST_AF_INET;
extern const int CVHOST_SOCK_RAW;
extern const int CVHOST_SOCK_DGRAM;
extern const int CVHOST_IPPROTO_ICMP;
extern const int CVHOST_SOL_PACKET;
extern const int CVHOST_PACKET_VNET_HDR;
extern const int CVHOST_PACKET_IGNORE_OUTGOING;
extern const int CVHOST_SO_RCVBUF;
// open(2)'s O_PATH (a _GNU_SOURCE name Swift's Glibc does not show).
extern const int CVHOST_O_PATH;
extern const int CVHOST_SO_SNDBUF;
extern const int CVHOST_SO_RCVBUFFORCE;
extern const int CVHOST_SO_SNDBUFFORCE;

// sched_setaffinity(2) of one thread to one CPU (cpu_set_t's macros do not reach Swift).
int cvhost_pin_thread(int tid, int cpu);
// The CPU mask of a thread, as a bit mask of the first 64 CPUs, or -errno.
long long cvhost_thread_affinity(int tid);
// mknod(2) of a character device from its major and minor (makedev is a macro).
int cvhost_mknod_char(const char *path, unsigned int major, unsigned int minor);
// capset(2) of this thread's effective, permitted and inheritable sets (masks of the first 64).
int cvhost_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);
// prctl(PR_CAPBSET_DROP, capability): removes it from the bounding set (needs CAP_SETPCAP).
int cvhost_capability_bounding_drop(int capability);
// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
int cvhost_capability_ambient_clear(void);
// prctl(PR_SET_NO_NEW_PRIVS, 1).
int cvhost_set_no_new_privileges(void);
// renameat2(2) with RENAME_NOREPLACE: EEXIST when `to` exists (a symbolic link too).
int cvhost_rename_noreplace(int from_dir, const char *from, int to_dir, const char *to);
// gettid(2).
int cvhost_gettid(void);
// pipe2(2) with O_CLOEXEC on both ends (pipe2 needs _GNU_SOURCE, which Swift's Glibc lacks); 0 or -errno.
int cvhost_pipe_cloexec(int fds[2]);

// epoll (struct epoll_event is packed on x86_64, so Swift sees only tokens).
int cvhost_epoll_create(void);
extern const uint32_t CVHOST_EPOLLIN;
extern const uint32_t CVHOST_EPOLLET;
int cvhost_epoll_add(int epfd, int fd, uint32_t events, uint64_t token);
int cvhost_epoll_del(int epfd, int fd);
// Fills up to `maximum` (at most 64) tokens of ready fds; returns their count or -errno (EINTR included).
int cvhost_epoll_wait(int epfd, uint64_t *tokens, int maximum, int timeout_ms);

// bpf(2): loads a program of `type` from `count` instructions (struct bpf_insn, 8 bytes each);
// returns its fd or -errno. The verifier's log goes to `log` (may be NULL).
int cvhost_bpf_prog_load(uint32_t type, const uint64_t *instructions, uint32_t count, const char *license, char *log, uint32_t log_size);
// bpf(2) BPF_LINK_CREATE: attaches `prog_fd` to interface `ifindex` as `attach_type`; returns the
// link's fd (closing it detaches) or -errno.
int cvhost_bpf_link_create(int prog_fd, int ifindex, uint32_t attach_type, uint32_t flags);
extern const uint32_t CVHOST_BPF_PROG_TYPE_XDP;
extern const uint32_t CVHOST_BPF_XDP;
extern const uint32_t CVHOST_BPF_PROG_TYPE_SOCKET_FILTER;  // tun's steering programs (tun.c tun_set_ebpf)

// IFF_* interface flags, for Swift.
extern const short CVHOST_IFF_UP;
extern const short CVHOST_IFF_RUNNING;
extern const int CVHOST_IFNAMSIZ;

// Network namespaces (each one call; -errno on failure): setns(fd, CLONE_NEWNET); unshare(CLONE_NEWNS);
// mount("", "/", MS_SLAVE|MS_REC); umount2(path, MNT_DETACH); mount sysfs on path.
int cvhost_setns_network(int fd);
int cvhost_unshare_mount_namespace(void);
int cvhost_mount_make_root_rslave(void);
int cvhost_umount_detach(const char *path);
int cvhost_mount_sysfs(const char *path);
// fcntl(fd, F_GETFD) (EBADF for a descriptor that is not open); fcntl(fd, F_SETFD, FD_CLOEXEC).
int cvhost_descriptor_flags(int fd);
int cvhost_set_close_on_exec(int fd);

#endif
