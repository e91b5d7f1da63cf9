// System calls shared by the reactor and its pool threads (POSIX only: no epoll, no kqueue here).
// Platform differences are #ifdefs: sin_len/sin6_len where the address carries its length
// (SIN6_LEN: macOS and the BSDs), fsync for fdatasync on macOS, getsockname for SO_DOMAIN where
// SO_DOMAIN is missing.
#include "miniss/op.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace miniss {

namespace {

int64_t Check(int64_t r) { return r < 0 ? -static_cast<int64_t>(errno) : r; }

// An address inside this shared library that no other library can interpose (internal linkage),
// for dladdr.
void Anchor() {}

}  // namespace

// RTLD_NOLOAD only looks the already-loaded library up, and RTLD_NODELETE marks it never to be
// unloaded (glibc, macOS and the BSDs); the handle is deliberately never closed. The later
// dlclose() of the worker's environment then only drops a reference.
void PinThisLibrary() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&Anchor), &info) != 0 && info.dli_fname != nullptr) {
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  }
}

void RunBlocking(Op* op) {
  int64_t r;
  switch (op->code) {
    case kRead:
    case kReadv:
      do {
        r = op->offset >= 0 ? preadv(op->fd, op->iov(), op->iovcnt(), op->offset)
                            : readv(op->fd, op->iov(), op->iovcnt());
      } while (r < 0 && errno == EINTR);
      break;
    case kWrite:
    case kWritev:
      do {
        r = op->offset >= 0 ? pwritev(op->fd, op->iov(), op->iovcnt(), op->offset)
                            : writev(op->fd, op->iov(), op->iovcnt());
      } while (r < 0 && errno == EINTR);
      break;
    case kFsync:
      do {
#if defined(__APPLE__)
        // macOS has no fdatasync(2) in older SDKs; fsync is the durable superset.
        r = fsync(op->fd);
#else
        r = op->a != 0 ? fdatasync(op->fd) : fsync(op->fd);
#endif
      } while (r < 0 && errno == EINTR);
      break;
    case kOpen:
      do {
        r = open(op->path.c_str(), op->a | O_CLOEXEC, static_cast<mode_t>(op->b));
      } while (r < 0 && errno == EINTR);
      break;
    case kClose:
      // Never retry close(): on Linux the fd is released even when close() reports EINTR, and a
      // retry could close a descriptor another thread has just been given.
      r = close(op->fd);
      if (r < 0 && errno == EINTR) r = 0;
      break;
    default:
      r = -EINVAL;
      op->result = r;
      return;
  }
  op->result = Check(r);
}

int ParseAddress(Op* op) {
  int family = 0;
  socklen_t len = sizeof(family);
#ifdef SO_DOMAIN
  if (getsockopt(op->fd, SOL_SOCKET, SO_DOMAIN, &family, &len) < 0) return -errno;
#else
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  if (getsockname(op->fd, reinterpret_cast<struct sockaddr*>(&ss), &sl) < 0) return -errno;
  family = ss.ss_family;
  (void)len;
#endif
  std::string host = op->path;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const uint16_t port = htons(static_cast<uint16_t>(op->b));
  std::memset(&op->addr, 0, sizeof(op->addr));
  struct in_addr v4;
  const bool is_v4 = inet_pton(AF_INET, host.c_str(), &v4) == 1;
  if (family == AF_INET) {
    if (!is_v4) return -EINVAL;
    auto* sin = reinterpret_cast<struct sockaddr_in*>(&op->addr);
    sin->sin_family = AF_INET;
#ifdef SIN6_LEN
    // The BSDs and macOS carry the length inside the address (sin_len/sin6_len); SIN6_LEN is
    // their documented marker for it. The kernel accepts 0 for connect() on most of them, but
    // bind() on some does not, so always set it.
    sin->sin_len = sizeof(*sin);
#endif
    sin->sin_port = port;
    sin->sin_addr = v4;
    op->addrlen = sizeof(*sin);
    return 0;
  }
  if (family == AF_INET6) {
    auto* sin6 = reinterpret_cast<struct sockaddr_in6*>(&op->addr);
    sin6->sin6_family = AF_INET6;
#ifdef SIN6_LEN
    sin6->sin6_len = sizeof(*sin6);
#endif
    sin6->sin6_port = port;
    if (is_v4) {
      // ::ffff:a.b.c.d
      sin6->sin6_addr.s6_addr[10] = 0xff;
      sin6->sin6_addr.s6_addr[11] = 0xff;
      std::memcpy(&sin6->sin6_addr.s6_addr[12], &v4, 4);
    } else {
      // A zone is an interface index ("fe80::1%2") or, as Node's net accepts, an interface name
      // ("fe80::1%eth0", "::1%lo"), which if_nametoindex turns into its index (0: no such
      // interface, EINVAL as for a zone that does not parse).
      std::string h = host;
      const size_t pct = h.find('%');
      if (pct != std::string::npos) {
        const char* zone = h.c_str() + pct + 1;
        if (*zone == '\0') return -EINVAL;
        char* end = nullptr;
        errno = 0;
        const unsigned long scope = std::strtoul(zone, &end, 10);
        if (end != nullptr && *end == '\0' && *zone >= '0' && *zone <= '9') {
          if (errno == ERANGE || scope > 0xffffffffUL) return -EINVAL;
          sin6->sin6_scope_id = static_cast<uint32_t>(scope);
        } else {
          const unsigned index = if_nametoindex(zone);
          if (index == 0) return -EINVAL;
          sin6->sin6_scope_id = index;
        }
        h.resize(pct);
      }
      if (inet_pton(AF_INET6, h.c_str(), &sin6->sin6_addr) != 1) return -EINVAL;
    }
    op->addrlen = sizeof(*sin6);
    return 0;
  }
  return -EAFNOSUPPORT;
}

void SetNoDelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int SocketAddress(int fd, bool peer, int* family, int* port, std::string* host) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  std::memset(&ss, 0, sizeof(ss));
  int r = peer ? getpeername(fd, reinterpret_cast<struct sockaddr*>(&ss), &len)
               : getsockname(fd, reinterpret_cast<struct sockaddr*>(&ss), &len);
  if (r < 0) return -errno;
  char buf[INET6_ADDRSTRLEN + 16];
  if (ss.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<struct sockaddr_in*>(&ss);
    if (inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)) == nullptr) return -errno;
    *family = 4;
    *port = ntohs(sin->sin_port);
    *host = buf;
    return 0;
  }
  if (ss.ss_family == AF_INET6) {
    auto* sin6 = reinterpret_cast<struct sockaddr_in6*>(&ss);
    if (inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)) == nullptr) return -errno;
    *family = 6;
    *port = ntohs(sin6->sin6_port);
    *host = buf;
    if (sin6->sin6_scope_id != 0) *host += "%" + std::to_string(sin6->sin6_scope_id);
    return 0;
  }
  return -EAFNOSUPPORT;
}

}  // namespace miniss
