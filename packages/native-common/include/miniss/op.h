// One I/O operation as a readiness reactor (epoll, kqueue) sees it: plain C++, no V8.
//
// The binding decodes a descriptor from shared memory into an Op, pins the memory of its buffers
// (`pins` hold the ArrayBuffer backing stores as opaque shared_ptr<void>, so this file needs no V8
// header), and hands it to the reactor. The reactor owns the Op from Submit until Reap, when the
// pins are dropped: memory the kernel or a pool thread may still touch is never released earlier.
#ifndef MINISS_OP_H_
#define MINISS_OP_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace miniss {

// Keep in sync with NATIVE_OP_CODES in @miniss/core (src/native-backend.ts), which every backend
// driver writes descriptors with (test: packages/core/test/native-backend.test.ts).
enum OpCode : int32_t {
  kNop = 0,
  kTimeout = 1,
  kRead = 2,
  kWrite = 3,
  kReadv = 4,
  kWritev = 5,
  kFsync = 6,
  kOpen = 7,
  kClose = 8,
  kSocket = 9,
  kListen = 10,
  kAccept = 11,
  kConnect = 12,
  kRecv = 13,
  kSend = 14,
  kShutdown = 15,
  kOpCodeCount = 16,
};

constexpr uint8_t kKindSocket = 1;  // write goes through sendmsg(MSG_NOSIGNAL)
constexpr uint8_t kKindStream = 2;  // pipe, eventfd, tty...: preadv2/pwritev2(RWF_NOWAIT)

// Where an operation is while it is in flight; decides what cancel() has to undo.
enum class Where : uint8_t {
  kNew,          // decoded, not yet submitted
  kReadQueue,    // waiting for the fd to become readable
  kWriteQueue,   // waiting for the fd to become writable
  kTimer,        // in the timer map
  kPool,         // handed to the thread pool (queued: can be withdrawn; running: cannot)
  kDone,         // result set, waiting to be reaped
};

struct Op {
  uint64_t id = 0;
  int32_t code = kNop;
  int fd = -1;
  int32_t a = 0;  // flags / how / family / backlog / datasync (per op code)
  int32_t b = 0;  // mode / port
  int32_t c = 0;  // reusePort
  int64_t offset = -1;  // file position, -1 = current position
  double ms = 0;        // timeout
  int64_t result = 0;   // >= 0 or -errno once done

  // Buffers. Most operations have exactly one, kept inline to spare an allocation per op.
  struct iovec iov1 {};
  std::vector<struct iovec> iovs;  // readv/writev
  std::shared_ptr<void> pin1;
  std::vector<std::shared_ptr<void>> pins;

  std::string path;  // open: the path; listen/connect: the numeric host
  struct sockaddr_storage addr {};
  socklen_t addrlen = 0;

  // Bookkeeping owned by the reactor.
  Where where = Where::kNew;
  uint8_t kind = 0;  // read/write on a readiness fd: kKindSocket or kKindStream (0 = not classified)
  bool in_progress = false;  // connect: the non-blocking connect() was issued, waiting for writability (EPOLLOUT / EVFILT_WRITE)
  Op* qnext = nullptr;       // next op in the same fd wait queue
  // Cancel() found the op inside a pool thread's system call (loop thread only; pool threads
  // never read it): a new fd it still returns is closed and the op reports ECANCELED instead.
  bool cancel_requested = false;
  // A pool op on an fd, counted in that fd's state until it finishes: the generation of the fd
  // number it was counted under (0: not counted). See pool_book.h's PoolFdState::pool_ops.
  uint32_t fd_gen = 0;
  uint64_t deadline_ns = 0;
  Op* prev = nullptr;  // intrusive list of live ops (for cancel and shutdown)
  Op* next = nullptr;

  const struct iovec* iov() const { return iovs.empty() ? &iov1 : iovs.data(); }
  int iovcnt() const { return iovs.empty() ? 1 : static_cast<int>(iovs.size()); }
  size_t total_len() const {
    size_t n = 0;
    for (int i = 0; i < iovcnt(); i++) n += iov()[i].iov_len;
    return n;
  }

  void Reset() {
    id = 0;
    code = kNop;
    fd = -1;
    a = b = c = 0;
    offset = -1;
    ms = 0;
    result = 0;
    iov1 = {};
    iovs.clear();
    pin1.reset();
    pins.clear();
    path.clear();
    addrlen = 0;
    where = Where::kNew;
    kind = 0;
    in_progress = false;
    qnext = nullptr;
    cancel_requested = false;
    fd_gen = 0;
    deadline_ns = 0;
    prev = next = nullptr;
  }
};

// Runs the blocking system call of a pool operation (pread/pwrite/fsync/open/close) and stores
// its result in op->result. Used by pool threads; touches nothing but the op.
void RunBlocking(Op* op);

// Fills op->addr/addrlen from the numeric host in op->path and the port in op->b, for the address
// family of the socket op->fd. Returns 0 or -errno: EBADF/ENOTSOCK from the socket, EINVAL for a
// host that does not parse. An IPv4 host on an IPv6 socket becomes the v4-mapped address, so a
// dual-stack socket can connect to 127.0.0.1.
int ParseAddress(Op* op);

// Sets TCP_NODELAY on a TCP socket (errors ignored: the fd may be a Unix socket).
void SetNoDelay(int fd);

// Local (peer = false) or remote address of a socket: family 4 or 6, port, numeric host.
// Returns 0 or -errno (EBADF, ENOTSOCK, ENOTCONN, EAFNOSUPPORT for non-IP sockets).
int SocketAddress(int fd, bool peer, int* family, int* port, std::string* host);

// Keeps the shared library holding this code (the addon it is linked into) mapped for the rest of
// the process; idempotent and cheap enough to call from every module init. Node dlclose()s a
// worker's addons when the worker's environment goes away, and two things can still need the
// addon's code afterwards: a pool thread abandoned inside a system call (thread_pool.cc), and
// the deleter of every buffer allocateBuffer() made (module_methods.cc), which V8 runs when it
// tears the worker's heap down, after the unload. So every binding calls it from its module init.
void PinThisLibrary();

// Whether an op's result is a new file descriptor the caller must close.
inline bool ProducesFd(int32_t code) { return code == kOpen || code == kAccept || code == kSocket; }

}  // namespace miniss

#endif  // MINISS_OP_H_
