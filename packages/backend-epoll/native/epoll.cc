#include "epoll.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

namespace miniss {

namespace {

// EPOLLPRI: TCP urgent data arrived (see FdState::urgent).
constexpr uint32_t kEvents = EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr uint32_t kReadWake = EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
constexpr uint32_t kWriteWake = EPOLLOUT | EPOLLHUP | EPOLLERR;

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

int64_t Ret(ssize_t r) { return r < 0 ? -static_cast<int64_t>(errno) : static_cast<int64_t>(r); }

// recv/send through syscall(2): glibc's recv() and send() are thread-cancellation points, which in
// a multi-threaded process (Node) wraps every call in pthread async-cancel enable/disable. This
// thread is never cancelled, and that wrapping showed up in profiles of the HTTP hot path.
ssize_t RawRecv(int fd, void* buf, size_t len, int flags) {
  return static_cast<ssize_t>(syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr));
}

ssize_t RawSend(int fd, const void* buf, size_t len, int flags) {
  return static_cast<ssize_t>(syscall(SYS_sendto, fd, buf, len, flags, nullptr, 0));
}

// preadv2 with RWF_NOWAIT: served from the page cache or socket/pipe buffer, EAGAIN instead of
// blocking. EOPNOTSUPP when the file (or an old kernel) does not support the flag.
int64_t ReadNoWait(Op* op) {
  ssize_t r;
  do {
    r = preadv2(op->fd, op->iov(), op->iovcnt(), op->offset, RWF_NOWAIT);
  } while (r < 0 && errno == EINTR);
  return Ret(r);
}

int64_t ReadPlain(Op* op) {
  ssize_t r;
  do {
    r = op->offset >= 0 ? preadv(op->fd, op->iov(), op->iovcnt(), op->offset)
                        : readv(op->fd, op->iov(), op->iovcnt());
  } while (r < 0 && errno == EINTR);
  return Ret(r);
}

bool IsBlockingFd(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) == 0;
}

// The data of an fd's registration: the fd in the low 32 bits, the generation of its FdState
// (PoolFdState::gen, bumped whenever the number stops being that file's) in the high 32. An
// event whose generation is not the state's current one comes from a registration this reactor
// has given up on (see EpollReactor::Waiters) and runs nothing. The eventfd and the timerfd are
// registered with generation 0, which no FdState has.
uint64_t Token(int fd, uint32_t gen) { return (static_cast<uint64_t>(gen) << 32) | static_cast<uint32_t>(fd); }

}  // namespace

// -------------------------------------------------------------------------------------------------
// Life cycle

EpollReactor::EpollReactor(const Options& options) : options_(options) {
  if (options_.max_events < 1) options_.max_events = 1;
  if (options_.max_events > 4096) options_.max_events = 4096;
  events_.resize(static_cast<size_t>(options_.max_events));
}

std::unique_ptr<EpollReactor> EpollReactor::Create(const Options& options, int* err) {
  std::unique_ptr<EpollReactor> r(new EpollReactor(options));
  int e = r->Init();
  if (e < 0) {
    *err = e;
    r->Shutdown();
    return nullptr;
  }
  *err = 0;
  return r;
}

int EpollReactor::Init() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return -errno;
  evfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (evfd_ < 0) return -errno;
  tfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd_ < 0) return -errno;
  // The eventfd and the timerfd are level-triggered: they stay readable until drained.
  struct epoll_event ev {};
  ev.events = EPOLLIN;
  ev.data.u64 = Token(evfd_, 0);
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, evfd_, &ev) < 0) return -errno;
  ev.data.u64 = Token(tfd_, 0);
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, tfd_, &ev) < 0) return -errno;
  const int evfd = evfd_;
  pool_.reset(new ThreadPool(static_cast<size_t>(options_.pool_threads), [evfd] {
    // Called by pool threads. The eventfd outlives the pool: Shutdown joins before closing it.
    uint64_t one = 1;
    ssize_t w;
    do {
      w = write(evfd, &one, sizeof(one));
    } while (w < 0 && errno == EINTR);
    // EAGAIN means the counter is saturated: the fd is readable anyway.
  }));
  return 0;
}

EpollReactor::~EpollReactor() {
  Shutdown();
  for (Op* op : free_) delete op;
  free_.clear();
}

void EpollReactor::Shutdown(bool close_owned) {
  if (closed_) return;
  closed_ = true;
  // Everything waiting on an fd or a timer is cancelled.
  for (Op* op = live_; op != nullptr; op = op->next) {
    if (op->where == Where::kReadQueue || op->where == Where::kWriteQueue || op->where == Where::kTimer) {
      Complete(op, -ECANCELED);
    }
  }
  ShutdownFds();
  timers_.clear();
  ShutdownPool(kShutdownGrace);
  // Nobody will reap from here on: close the descriptors that finished opens/accepts/sockets
  // produced (they would leak otherwise), then release every op and its pins.
  for (size_t i = done_head_; i < done_.size(); i++) {
    Op* op = done_[i];
    if (ProducesFd(op->code) && op->result >= 0) {
      owned_.Remove(static_cast<int>(op->result));
      close(static_cast<int>(op->result));
    }
  }
  while (live_ != nullptr) {
    Op* op = live_;
    Unlink(op);
    delete op;
  }
  done_.clear();
  done_head_ = 0;
  // Torn down with its thread: the sockets, connections and files made for the caller that are
  // still open are closed (pool_book.h, owned_fds.h). No op is left to touch them: the waiting
  // ones completed above and were freed, the pool is stopped.
  ShutdownOwned(close_owned);
  for (int fd : owned_eventfds_) close(fd);
  owned_eventfds_.clear();
  if (tfd_ >= 0) close(tfd_);
  if (evfd_ >= 0) close(evfd_);
  if (epfd_ >= 0) close(epfd_);
  tfd_ = evfd_ = epfd_ = -1;
  fds_.clear();
}

// -------------------------------------------------------------------------------------------------
// Per-fd state (the op and queue bookkeeping is OpBook's, in @miniss/native-common)

void EpollReactor::Adopt(int fd, bool is_socket) {
  FdState* st = Renew(fd);
  st->trusted = true;
  st->is_socket = is_socket;
  // A socket or accepted connection is the caller's until it closes it through us; an eventfd of
  // CreateEventFd stays ours (owned_eventfds_).
  if (is_socket) owned_.Add(fd);
}

// -------------------------------------------------------------------------------------------------
// Submission

void EpollReactor::Submit(Op* op) {
  Link(op);
  stats_.submitted++;
  const size_t before = done_.size();
  SubmitInner(op);
  if (done_.size() > before) stats_.immediate++;
}

void EpollReactor::SubmitInner(Op* op) {
  if (closed_) {
    Complete(op, -ECANCELED);
    return;
  }
  if (op->code != kNop && op->code != kTimeout && op->code != kOpen && op->code != kSocket &&
      FailIfClosing(op)) {
    return;
  }
  switch (op->code) {
    case kNop:
      Complete(op, 0);
      return;
    case kTimeout:
      StartTimer(op);
      return;
    case kSocket: {
      const int domain = op->a == 6 ? AF_INET6 : AF_INET;
      int fd = socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        Complete(op, -errno);
        return;
      }
      SetNoDelay(fd);
      Adopt(fd, true);
      Complete(op, fd);
      return;
    }
    case kOpen:
      ToPool(op);
      return;
    case kFsync:
      if (IsInternal(op->fd)) {
        Complete(op, -EBADF);
        return;
      }
      // The kernel must vouch for the number before ToPool keeps state for it (see Ensure).
      if (fcntl(op->fd, F_GETFD) < 0) {
        Complete(op, -errno);
        return;
      }
      ToPool(op);
      return;
    case kClose:
      StartClose(op);
      return;
    case kRead:
    case kReadv:
      StartRead(op);
      return;
    case kWrite:
    case kWritev:
      StartWrite(op);
      return;
    case kAccept:
    case kRecv:
      StartSocketOp(op, true);
      return;
    case kConnect:
    case kSend:
      StartSocketOp(op, false);
      return;
    case kListen:
    case kShutdown:
      StartSyncSocketCall(op);
      return;
    default:
      Complete(op, -EINVAL);
      return;
  }
}

void EpollReactor::ToPool(Op* op) {
  stats_.pool++;
  PostToPool(op);  // counted for its fd's close (pool_book.h)
}

void EpollReactor::StartTimer(Op* op) {
  double ms = op->ms;
  if (!(ms >= 0)) ms = 0;
  // Clamp to ~100 years so the nanosecond deadline cannot overflow.
  ms = std::min(ms, 3.15e12);
  op->deadline_ns = NowNs() + static_cast<uint64_t>(std::ceil(ms * 1e6));
  op->where = Where::kTimer;
  timers_.emplace(op->deadline_ns, op);
  ArmTimer();
}

void EpollReactor::ArmTimer() {
  if (timers_.empty()) return;  // a stale expiry just finds nothing to fire
  const uint64_t first = timers_.begin()->first;
  if (first == armed_ns_) return;
  struct itimerspec its {};
  // An all-zero it_value would disarm: an already-past deadline still needs a non-zero value.
  const uint64_t when = first == 0 ? 1 : first;
  its.it_value.tv_sec = static_cast<time_t>(when / 1000000000ull);
  its.it_value.tv_nsec = static_cast<long>(when % 1000000000ull);
  if (timerfd_settime(tfd_, TFD_TIMER_ABSTIME, &its, nullptr) == 0) armed_ns_ = first;
}

void EpollReactor::FireTimers() {
  uint64_t expirations;
  while (read(tfd_, &expirations, sizeof(expirations)) < 0 && errno == EINTR) {
  }
  armed_ns_ = 0;
  const uint64_t now = NowNs();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    Op* op = timers_.begin()->second;
    timers_.erase(timers_.begin());
    Complete(op, 0);
  }
  ArmTimer();
}

void EpollReactor::StartRead(Op* op) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  if (FdState* st = Waiters(op->fd, true, nullptr)) {
    // Earlier reads wait for readiness: this is a stream fd and order must be kept.
    op->kind = kKindStream;
    Enqueue(st, op, true);
    return;
  }
  int64_t r = ReadNoWait(op);
  if (r != -EAGAIN && r != -EOPNOTSUPP) {
    if (r >= 0) stats_.nowait_reads++;
    Complete(op, r);
    return;
  }
  struct stat sb;
  if (fstat(op->fd, &sb) < 0) {
    Complete(op, -errno);
    return;
  }
  if (S_ISREG(sb.st_mode) || S_ISBLK(sb.st_mode)) {
    // A page-cache miss (or O_DIRECT, or a file system without RWF_NOWAIT): the pool reads it.
    ToPool(op);
    return;
  }
  op->kind = S_ISSOCK(sb.st_mode) ? kKindSocket : kKindStream;
  if (r == -EOPNOTSUPP) {
    // No RWF_NOWAIT on this fd. A plain read of a blocking fd could stall the loop, so such an
    // fd waits for readiness first; a non-blocking one is simply tried.
    if (IsBlockingFd(op->fd)) {
      Wait(op, true, &sb);
      return;
    }
    r = ReadPlain(op);
    if (r != -EAGAIN) {
      Complete(op, r);
      return;
    }
  }
  Wait(op, true, &sb);
}

void EpollReactor::StartWrite(Op* op) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  struct stat sb;
  if (fstat(op->fd, &sb) < 0) {
    Complete(op, -errno);
    return;
  }
  if (FdState* st = Waiters(op->fd, false, &sb)) {
    op->kind = S_ISSOCK(sb.st_mode) ? kKindSocket : kKindStream;
    Enqueue(st, op, false);
    return;
  }
  if (S_ISREG(sb.st_mode) || S_ISBLK(sb.st_mode)) {
    // Writes to files can block on page-cache allocation, writeback throttling or the journal.
    ToPool(op);
    return;
  }
  op->kind = S_ISSOCK(sb.st_mode) ? kKindSocket : kKindStream;
  if (op->kind == kKindStream && IsBlockingFd(op->fd)) {
    // A blocking pipe or tty: should it lack RWF_NOWAIT support, Attempt would fall back to a
    // plain write, so make sure there is room first.
    Wait(op, false, &sb);
    return;
  }
  int64_t r = Attempt(op);
  if (r == -EAGAIN) {
    Wait(op, false, &sb);
    return;
  }
  Complete(op, r);
}

void EpollReactor::StartSocketOp(Op* op, bool read_side) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  if (FdState* st = Waiters(op->fd, read_side, nullptr)) {
    Enqueue(st, op, read_side);
    return;
  }
  FdState* st = Find(op->fd);
  if (read_side && st != nullptr && st->read_wait != 0 && st->trusted && st->registered &&
      (st->read_wait == kEmptyAfterEagain || (st->recv_score < 0 && (++recv_probe_ & 7) != 0))) {
    // Nothing arrived since the queue was found empty: trying would most likely be an EAGAIN.
    stats_.skipped++;
    stats_.waited++;
    Enqueue(st, op, true);
    return;
  }
  int64_t r = Attempt(op);
  if (op->code == kRecv && st != nullptr) {
    if (r == -EAGAIN) {
      if (st->recv_score > -16) st->recv_score--;
    } else if (st->recv_score < 16) {
      st->recv_score++;
    }
  }
  if (r == -EAGAIN) {
    Wait(op, read_side, nullptr);
    if (read_side && op->where == Where::kReadQueue) {
      // Attempt may have adopted a new fd (accept), so look the state up again.
      FdState* s = Find(op->fd);
      if (s != nullptr && s->trusted && s->registered) s->read_wait = kEmptyAfterEagain;
    }
    return;
  }
  if (read_side) NoteRecv(Find(op->fd), op, r);
  Complete(op, r);
}

// After a recv that returned data: a short read means the receive queue is empty now (see
// FdState::read_wait).
void EpollReactor::NoteRecv(FdState* st, const Op* op, int64_t r) {
  if (st != nullptr && op->code == kRecv && r > 0 && static_cast<uint64_t>(r) < op->iov1.iov_len && st->trusted &&
      st->registered && !st->urgent) {
    st->read_wait = kEmptyAfterShortRead;
  }
}

void EpollReactor::StartSyncSocketCall(Op* op) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  if (op->code == kShutdown) {
    const int how = op->a == 0 ? SHUT_RD : op->a == 1 ? SHUT_WR : SHUT_RDWR;
    if (FdState* st = Find(op->fd)) st->read_wait = 0;  // a shut read side reads 0 at once
    Complete(op, shutdown(op->fd, how) < 0 ? -errno : 0);
    return;
  }
  // listen: SO_REUSEADDR always (a restarted server must not wait out TIME_WAIT), SO_REUSEPORT
  // when asked (one listener per core, the kernel balances connections between them).
  int r = ParseAddress(op);
  if (r < 0) {
    Complete(op, r);
    return;
  }
  int one = 1;
  if (setsockopt(op->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
    Complete(op, -errno);
    return;
  }
  if (op->c != 0 && setsockopt(op->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
    Complete(op, -errno);
    return;
  }
  if (bind(op->fd, reinterpret_cast<struct sockaddr*>(&op->addr), op->addrlen) < 0) {
    Complete(op, -errno);
    return;
  }
  if (listen(op->fd, op->a) < 0) {
    Complete(op, -errno);
    return;
  }
  Complete(op, 0);
}

void EpollReactor::StartClose(Op* op) {
  const int fd = op->fd;
  if (IsInternal(fd)) {
    // Never close a descriptor this backend depends on, whatever the caller asks.
    Complete(op, -EBADF);
    return;
  }
  if (FdState* st = Find(fd)) {
    // Leave the epoll set before the fd goes away: once closed, the number can be reused at
    // once. (A late event would carry the old generation and be ignored anyway, but the item
    // would stay in the set for as long as another process holds the file.) Errors (ENOENT when
    // it was never registered or already dropped, EBADF when it is already closed) mean "not
    // there".
    if (st->registered) {
      stats_.epoll_ctl++;
      epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
      st->registered = false;
    }
    FailQueues(st, -ECANCELED);
    st->read_wait = 0;
    st->recv_score = 0;
    st->urgent = false;
    // Reads, writes or fsyncs of this fd submitted before the close may still be on the pool: the
    // close waits for them (pool_book.h).
    if (HoldClose(st, op)) return;
  }
  CloseNow(op);
}

void EpollReactor::CloseNow(Op* op) {
  const int fd = op->fd;
  FdState* st = Find(fd);
  bool inline_close = st != nullptr && st->is_socket;
  auto owned = std::find(owned_eventfds_.begin(), owned_eventfds_.end(), fd);
  if (owned != owned_eventfds_.end()) {
    owned_eventfds_.erase(owned);
    inline_close = true;
  }
  if (inline_close) {
    // Sockets and eventfds close without blocking (no SO_LINGER is ever set here).
    owned_.Remove(fd);
    int r = close(fd);
    if (st != nullptr) Forget(st);
    Complete(op, r < 0 && errno != EINTR ? -errno : 0);
    return;
  }
  // A file's close can block (NFS flushes, the last reference to a deleted file): use the pool.
  // Ops submitted meanwhile fail with EBADF (they could run after the close, on a reused number).
  ClosePooled(st, op);
}

// -------------------------------------------------------------------------------------------------
// Readiness

int64_t EpollReactor::Attempt(Op* op) {
  switch (op->code) {
    case kAccept:
      for (;;) {
        int fd = accept4(op->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
          SetNoDelay(fd);
          Adopt(fd, true);
          return fd;
        }
        // A connection reset while queued is the peer's problem, not this accept's: take the next.
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
      }
    case kRecv: {
      ssize_t r;
      do {
        r = RawRecv(op->fd, op->iov1.iov_base, op->iov1.iov_len, MSG_DONTWAIT);
      } while (r < 0 && errno == EINTR);
      return Ret(r);
    }
    case kSend: {
      ssize_t r;
      do {
        // MSG_NOSIGNAL: a peer that went away is EPIPE, never a SIGPIPE that kills the process.
        r = RawSend(op->fd, op->iov1.iov_base, op->iov1.iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);
      } while (r < 0 && errno == EINTR);
      return Ret(r);
    }
    case kConnect: {
      if (!op->in_progress) {
        int r = ParseAddress(op);
        if (r < 0) return r;
        if (connect(op->fd, reinterpret_cast<struct sockaddr*>(&op->addr), op->addrlen) == 0) return 0;
        // EINTR: the connection attempt goes on asynchronously, exactly like EINPROGRESS.
        if (errno == EINPROGRESS || errno == EINTR) {
          op->in_progress = true;
          return -EAGAIN;
        }
        return -errno;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return -errno;
      if (err != 0) return -err;
      // SO_ERROR 0 can also mean "still connecting" when the edge was for something else.
      struct sockaddr_storage peer;
      socklen_t plen = sizeof(peer);
      if (getpeername(op->fd, reinterpret_cast<struct sockaddr*>(&peer), &plen) < 0) {
        return errno == ENOTCONN ? -EAGAIN : -errno;
      }
      return 0;
    }
    case kRead:
    case kReadv: {
      int64_t r = ReadNoWait(op);
      if (r == -EOPNOTSUPP) r = ReadPlain(op);
      return r;
    }
    case kWrite:
    case kWritev: {
      ssize_t r;
      if (op->kind == kKindSocket) {
        if (op->offset >= 0) return -ESPIPE;
        struct msghdr msg {};
        msg.msg_iov = const_cast<struct iovec*>(op->iov());
        msg.msg_iovlen = static_cast<size_t>(op->iovcnt());
        do {
          r = sendmsg(op->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        return Ret(r);
      }
      do {
        r = pwritev2(op->fd, op->iov(), op->iovcnt(), op->offset, RWF_NOWAIT);
      } while (r < 0 && errno == EINTR);
      if (r < 0 && errno == EOPNOTSUPP) {
        // Only reached for non-blocking fds or after EPOLLOUT said there is room.
        do {
          r = op->offset >= 0 ? pwritev(op->fd, op->iov(), op->iovcnt(), op->offset)
                              : writev(op->fd, op->iov(), op->iovcnt());
        } while (r < 0 && errno == EINTR);
      }
      return Ret(r);
    }
    default:
      return -EINVAL;
  }
}

// Closed behind our back: fd numbers and waiting ops.
//
// epoll registers a file, not a number (an epoll item is keyed by the file and the fd it was added
// under), while the ops here name numbers. When an fd with waiting ops is closed behind our back
// (fs.closeSync, its owner in Node, another thread) and its number handed out again by someone
// else, two things went wrong before: a new op on the number was queued behind the old file's
// waiters and waited on the old file's registration (gone with the file, so forever), and, when
// the old file lived on elsewhere (a child process inherited it), its events ran the old
// waiters' recvs on the number, i.e. on the new socket: one connection's data in another's recv.
// io_uring has neither problem: an op holds the file it was submitted for.
//
// So a waiting op belongs to the file that was registered when it started waiting. Each
// registration records that file's st_dev/st_ino (one fstat per registration, that is per
// connection, not per operation) and carries the FdState's generation in its data (Token). When
// the number turns out to be another file's (Stale), the old file's waiters fail with EBADF (the
// fd they named was closed under them, as a read(2) on it would say) and the state starts a new
// generation, so the old registration's events, should the old file live on, are ignored
// (Process); the new file is registered afresh if an op waits on it.
//
// Which transitions check (an fstat, ~0.25 us, about what one EAGAIN recv costs, which the skip
// path of FdState::read_wait exists to save):
// - An op that would be queued behind waiting ops of its fd, on either side (Waiters, and Wait
//   when the other side has waiters): the case that stranded new ops and mixed data. Off the hot
//   path: a stream has one recv in flight and sends queue only under backpressure.
// - For an fd this reactor did not create (untrusted): also every wait that starts on it while
//   idle (the EPOLL_CTL_MOD re-arm below; ENOENT means the registered file is gone), and every
//   event that would run waiting ops (Process). Its owner closing it is normal life; such fds
//   already pay an epoll_ctl per wait.
// - For an fd this reactor created (socket, accept, eventfd), which the backend owns and only a
//   close op should close, the per-request paths (a wait starting on an idle registered fd, the
//   skipped recv, the event that wakes a waiting recv) take the registration on trust: checking
//   them would cost an fstat per request on an HTTP server's hot path, for a caller that broke
//   the fd's ownership. What such a caller still gets: ops queued behind the old waiters are
//   checked, and the kernel handing the number to this reactor again (accept, socket, open,
//   eventfd) fails the old file's waiters (Renew).
// Files whose st_ino is not their own (eventfd, timerfd, epoll: one anonymous inode for all) are
// told apart only by the EPOLL_CTL_MOD re-arm.

// Whether `fd` is still the file st's registration was made for. `known`: its fstat, if at hand.
bool EpollReactor::SameFile(const FdState* st, int fd, const struct stat* known) {
  struct stat sb;
  if (known == nullptr) {
    if (fstat(fd, &sb) < 0) return false;  // closed: certainly not the registered file any more
    known = &sb;
  }
  return static_cast<uint64_t>(known->st_dev) == st->dev && static_cast<uint64_t>(known->st_ino) == st->ino;
}

// The number is no longer the registered file's: fail that file's waiting ops with EBADF (and a
// close held for it) and start a new generation. Returns the fresh state.
FdState* EpollReactor::Stale(int fd) {
  stats_.stale++;
  return Renew(fd);
}

// The fd's state if ops wait on `read_side` of the file the number still refers to, so a new op
// must queue behind them (order is kept per side); nullptr if none wait (waiters of a file that
// is gone are failed first, see above).
FdState* EpollReactor::Waiters(int fd, bool read_side, const struct stat* known) {
  FdState* st = Find(fd);
  if (st == nullptr || (read_side ? st->rhead : st->whead) == nullptr) return nullptr;
  if (SameFile(st, fd, known)) return st;
  Stale(fd);
  return nullptr;
}

void EpollReactor::Wait(Op* op, bool read_side, const struct stat* known) {
  FdState* st = Ensure(op->fd);
  bool idle = st->rhead == nullptr && st->whead == nullptr;
  if (!idle && !SameFile(st, op->fd, known)) {
    // The other side's waiters belong to a file closed behind our back (see above).
    st = Stale(op->fd);
    idle = true;
  }
  if (!st->registered || (!st->trusted && idle)) {
    struct epoll_event ev {};
    ev.events = kEvents;
    stats_.epoll_ctl++;
    int r = 0;
    int e = 0;
    bool add = !st->registered;
    if (!add) {
      // Untrusted and idle: re-arm. ENOENT: the registered file left this number (closed, the
      // number perhaps reused): a new generation, and the file there now is added below.
      ev.data.u64 = Token(op->fd, st->gen);
      r = epoll_ctl(epfd_, EPOLL_CTL_MOD, op->fd, &ev);
      e = r < 0 ? errno : 0;
      if (e == ENOENT) {
        st = Stale(op->fd);
        add = true;
      }
    }
    if (add) {
      ev.data.u64 = Token(op->fd, st->gen);
      r = epoll_ctl(epfd_, EPOLL_CTL_ADD, op->fd, &ev);
      e = r < 0 ? errno : 0;
      if (e == EEXIST) {
        // Already in the set under this number although we had let it go: take it over with the
        // current generation.
        r = epoll_ctl(epfd_, EPOLL_CTL_MOD, op->fd, &ev);
        e = r < 0 ? errno : 0;
      }
      if (r == 0) {
        // The file this registration is for (see "Closed behind our back").
        struct stat sb;
        if (known == nullptr && fstat(op->fd, &sb) == 0) known = &sb;
        st->dev = known != nullptr ? static_cast<uint64_t>(known->st_dev) : 0;
        st->ino = known != nullptr ? static_cast<uint64_t>(known->st_ino) : 0;
      }
    }
    if (r < 0) {
      st->registered = false;
      if (e == EPERM && (op->code == kRead || op->code == kReadv || op->code == kWrite || op->code == kWritev)) {
        // A character device without poll support: the pool does the (blocking) call.
        ToPool(op);
        return;
      }
      Complete(op, -e);
      return;
    }
    st->registered = true;
  }
  stats_.waited++;
  Enqueue(st, op, read_side);
}

void EpollReactor::RunQueue(FdState* st, bool read_side) {
  Op*& head = read_side ? st->rhead : st->whead;
  Op*& tail = read_side ? st->rtail : st->wtail;
  while (Op* op = head) {
    int64_t r = Attempt(op);
    if (r == -EAGAIN) {
      if (read_side && st->trusted && st->registered) st->read_wait = kEmptyAfterEagain;
      return;
    }
    // Attempt may have adopted a new fd (accept): st stays valid, FdStates never move.
    head = op->qnext;
    if (head == nullptr) tail = nullptr;
    if (read_side) NoteRecv(st, op, r);
    Complete(op, r);
  }
}

void EpollReactor::DrainPool() {
  uint64_t count;
  while (read(evfd_, &count, sizeof(count)) < 0 && errno == EINTR) {
  }
  Pool::DrainPool();
}

size_t EpollReactor::Process(int timeout_ms) {
  if (closed_) return ready();
  const uint64_t deadline = timeout_ms > 0 ? NowNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull : 0;
  int wait = timeout_ms;
  for (;;) {
    stats_.epoll_wait++;
    int n = epoll_wait(epfd_, events_.data(), static_cast<int>(events_.size()), ready() > 0 ? 0 : wait);
    if (n < 0) n = 0;  // EINTR: treat as a timeout slice and recompute below
    for (int i = 0; i < n; i++) {
      const struct epoll_event& ev = events_[static_cast<size_t>(i)];
      const int fd = static_cast<int32_t>(static_cast<uint32_t>(ev.data.u64));
      const uint32_t gen = static_cast<uint32_t>(ev.data.u64 >> 32);
      if (gen == 0) {
        if (fd == evfd_) DrainPool();
        else if (fd == tfd_) FireTimers();
        continue;
      }
      FdState* st = Find(fd);
      // Stale: closed since the wait began, or a registration of a file that left this number
      // (see "Closed behind our back" above Wait).
      if (st == nullptr || !st->registered || st->gen != gen) continue;
      const bool run_read = (ev.events & kReadWake) != 0;
      const bool run_write = (ev.events & kWriteWake) != 0;
      if (!st->trusted && ((run_read && st->rhead != nullptr) || (run_write && st->whead != nullptr)) &&
          !SameFile(st, fd, nullptr)) {
        // The registered file lives on elsewhere, but this number is another file now: its
        // waiters must not run their system calls on it.
        Stale(fd);
        continue;
      }
      if (run_read) {
        if (ev.events & EPOLLPRI) st->urgent = true;
        st->read_wait = 0;
        RunQueue(st, true);
      }
      if (run_write) RunQueue(st, false);
    }
    if (ready() > 0 || timeout_ms == 0) return ready();
    if (timeout_ms > 0) {
      const uint64_t now = NowNs();
      if (now >= deadline) return ready();
      wait = static_cast<int>((deadline - now + 999999) / 1000000);
    }
  }
}

// -------------------------------------------------------------------------------------------------
// Cancellation

bool EpollReactor::Cancel(uint64_t id) {
  Op* op = live_;
  while (op != nullptr && op->id != id) op = op->next;
  if (op == nullptr) return false;
  switch (op->where) {
    case Where::kReadQueue:
    case Where::kWriteQueue: {
      FdState* st = Find(op->fd);
      if (st != nullptr) Unqueue(st, op, op->where == Where::kReadQueue);
      Complete(op, -ECANCELED);
      return true;
    }
    case Where::kTimer:
      timers_.erase({op->deadline_ns, op});
      Complete(op, -ECANCELED);
      return true;
    case Where::kPool:
      return CancelPoolOp(op);  // pool_book.h
    case Where::kNew:
    case Where::kDone:
      return false;
  }
  return false;
}

// -------------------------------------------------------------------------------------------------

int EpollReactor::CreateEventFd() {
  if (closed_) return -EBADF;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return -errno;
  owned_eventfds_.push_back(fd);
  Adopt(fd, false);
  return fd;
}

}  // namespace miniss
