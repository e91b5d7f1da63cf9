#include "kqueue.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

// STATUS: run on Linux only, against kqemu (test/kqemu, this package's test-only kqueue emulation
// on epoll: core's conformance suite and the package's tests pass, also under AddressSanitizer),
// and compile-checked against test/shim/sys/event.h. Never run on macOS, a BSD or libkqueue.

#ifndef EVFILT_USER
// Pool completions wake the loop through a user event. Every system this targets has it in
// current releases (macOS since 10.6, FreeBSD since 8.1, NetBSD since 10); fail the build
// clearly rather than compile a backend that would never see its file completions.
#error "the miniss kqueue backend needs EVFILT_USER, which this <sys/event.h> does not define"
#endif

namespace miniss {

namespace {

// Idents of this reactor's own knotes. EVFILT_USER and EVFILT_TIMER idents live in their own
// namespaces (they are not fds), so they cannot collide with socket knotes.
constexpr uintptr_t kWakeIdent = 1;
constexpr uintptr_t kTimerIdent = 2;

// The udata of every change: none. A plain 0, not nullptr: udata is `void*` on macOS, FreeBSD
// and NetBSD >= 10 but `intptr_t` on NetBSD 9, and 0 converts to both.
#define kNoUdata 0

#ifdef MSG_NOSIGNAL
// FreeBSD, OpenBSD, NetBSD (and Linux with libkqueue): a vanished peer is EPIPE, not SIGPIPE.
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
// macOS has no MSG_NOSIGNAL for send(): SO_NOSIGPIPE is set on the socket instead (SetNoSigPipe).
constexpr int kSendFlags = 0;
#endif

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

int64_t Ret(ssize_t r) { return r < 0 ? -static_cast<int64_t>(errno) : static_cast<int64_t>(r); }

// Makes a socket never raise SIGPIPE where send() cannot be told so per call. Returns 0 or -errno.
int SetNoSigPipe(int fd) {
#ifdef SO_NOSIGPIPE
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) < 0) return -errno;
#else
  (void)fd;
#endif
  return 0;
}

// No accept4()/SOCK_NONBLOCK/SOCK_CLOEXEC on macOS: set both flags after the fact. The fd is not
// shared with another thread that could fork in between (Node does not fork threads).
int SetCloexecNonblock(int fd) {
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) return -errno;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  return 0;
}

int64_t ReadPlain(Op* op) {
  ssize_t r;
  do {
    r = op->offset >= 0 ? preadv(op->fd, op->iov(), op->iovcnt(), op->offset)
                        : readv(op->fd, op->iov(), op->iovcnt());
  } while (r < 0 && errno == EINTR);
  return Ret(r);
}

int64_t WritePlain(Op* op) {
  ssize_t r;
  do {
    r = op->offset >= 0 ? pwritev(op->fd, op->iov(), op->iovcnt(), op->offset)
                        : writev(op->fd, op->iov(), op->iovcnt());
  } while (r < 0 && errno == EINTR);
  return Ret(r);
}

bool IsBlockingFd(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) == 0;
}

// kevent() for changes only, retried on EINTR (a change list is applied at most once, but an
// EINTR return means nothing was applied). Returns 0 or -errno.
int ApplyChanges(int kq, const struct kevent* changes, int n, struct kevent* receipts) {
  int r;
  do {
    r = kevent(kq, changes, n, receipts, n, nullptr);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

}  // namespace

// -------------------------------------------------------------------------------------------------
// Life cycle

KqueueReactor::KqueueReactor(const Options& options) : options_(options) {
  if (options_.max_events < 1) options_.max_events = 1;
  if (options_.max_events > 4096) options_.max_events = 4096;
  events_.resize(static_cast<size_t>(options_.max_events));
}

std::unique_ptr<KqueueReactor> KqueueReactor::Create(const Options& options, int* err) {
  std::unique_ptr<KqueueReactor> r(new KqueueReactor(options));
  int e = r->Init();
  if (e < 0) {
    *err = e;
    r->Shutdown();
    return nullptr;
  }
  *err = 0;
  return r;
}

int KqueueReactor::Init() {
  // kqueue() descriptors are not inherited by fork() children, but exec() would keep the number
  // open on some systems: set FD_CLOEXEC (kqueue1(O_CLOEXEC) is not on macOS).
  kq_ = kqueue();
  if (kq_ < 0) return -errno;
  int fdfl = fcntl(kq_, F_GETFD);
  if (fdfl < 0 || fcntl(kq_, F_SETFD, fdfl | FD_CLOEXEC) < 0) return -errno;
  struct kevent ch;
  struct kevent rc {};
  EV_SET(&ch, kWakeIdent, EVFILT_USER, EV_ADD | EV_CLEAR | EV_RECEIPT, 0, 0, kNoUdata);
  int r = ApplyChanges(kq_, &ch, 1, &rc);
  if (r < 0) return r;
  if ((rc.flags & EV_ERROR) && rc.data != 0) return -static_cast<int>(rc.data);
  const int kq = kq_;
  pool_.reset(new ThreadPool(static_cast<size_t>(options_.pool_threads), [kq] {
    // Called by pool threads; kevent() on a kqueue is thread-safe. The kqueue outlives the pool:
    // Shutdown stops the pool before closing it (an abandoned thread never notifies, see
    // thread_pool.h). NOTE_TRIGGER on an EV_CLEAR user event coalesces.
    struct kevent t;
    EV_SET(&t, kWakeIdent, EVFILT_USER, 0, NOTE_TRIGGER, 0, kNoUdata);
    int w;
    do {
      w = kevent(kq, &t, 1, nullptr, 0, nullptr);
    } while (w < 0 && errno == EINTR);
  }));
  return 0;
}

KqueueReactor::~KqueueReactor() {
  Shutdown();
  for (Op* op : free_) delete op;
  free_.clear();
}

void KqueueReactor::Shutdown(bool close_owned) {
  if (closed_) return;
  closed_ = true;
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
  // Closing the kqueue drops every knote in it (socket filters, the user event, the timer).
  if (kq_ >= 0) close(kq_);
  kq_ = -1;
  fds_.clear();
}

// -------------------------------------------------------------------------------------------------
// Per-fd state (the op and queue bookkeeping is OpBook's, in @miniss/native-common)

void KqueueReactor::Adopt(int fd, bool is_socket) {
  FdState* st = Renew(fd);
  st->trusted = true;
  st->is_socket = is_socket;
  if (is_socket) owned_.Add(fd);  // the caller's until it closes it through us
}

// -------------------------------------------------------------------------------------------------
// -------------------------------------------------------------------------------------------------
// Submission

void KqueueReactor::Submit(Op* op) {
  Link(op);
  stats_.submitted++;
  const size_t before = done_.size();
  SubmitInner(op);
  if (done_.size() > before) stats_.immediate++;
}

void KqueueReactor::SubmitInner(Op* op) {
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
      int fd = socket(domain, SOCK_STREAM, 0);
      if (fd < 0) {
        Complete(op, -errno);
        return;
      }
      int r = SetCloexecNonblock(fd);
      if (r == 0) r = SetNoSigPipe(fd);
      if (r < 0) {
        close(fd);
        Complete(op, r);
        return;
      }
      SetNoDelay(fd);
      Adopt(fd, true);
      Find(fd)->nosigpipe = true;
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

void KqueueReactor::ToPool(Op* op) {
  stats_.pool++;
  PostToPool(op);  // counted for its fd's close (pool_book.h)
}

void KqueueReactor::StartTimer(Op* op) {
  double ms = op->ms;
  if (!(ms >= 0)) ms = 0;
  ms = std::min(ms, 3.15e12);
  op->deadline_ns = NowNs() + static_cast<uint64_t>(std::ceil(ms * 1e6));
  op->where = Where::kTimer;
  timers_.emplace(op->deadline_ns, op);
  ArmTimer();
}

void KqueueReactor::ArmTimer() {
  // Deadlines already reached complete now: a zero-length EVFILT_TIMER is refused (EINVAL) by
  // some kqueues, and there is nothing to wait for anyway.
  const uint64_t now = NowNs();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    Op* op = timers_.begin()->second;
    timers_.erase(timers_.begin());
    Complete(op, 0);
  }
  if (timers_.empty()) {
    // Every timeout has completed (deadlines reached before the armed expiry was read): delete
    // the kernel timer, as Cancel does, so an idle backend keeps none pending.
    DisarmTimer();
    return;
  }
  const uint64_t first = timers_.begin()->first;
  if (first == armed_ns_) return;
  // A one-shot relative EVFILT_TIMER in milliseconds (at least 1): the unit every kqueue has
  // (NOTE_NSECONDS is not on OpenBSD). EV_ADD on the existing ident replaces the previous arming.
  const uint64_t ms = std::max<uint64_t>(1, (first - now + 999999) / 1000000);
  struct kevent ch;
  struct kevent rc {};
  EV_SET(&ch, kTimerIdent, EVFILT_TIMER, EV_ADD | EV_ONESHOT | EV_RECEIPT, 0,
         static_cast<intptr_t>(std::min<uint64_t>(ms, 0x7fffffff)), kNoUdata);
  stats_.kevent_changes++;
  int r = ApplyChanges(kq_, &ch, 1, &rc);
  if (r >= 1 && (rc.flags & EV_ERROR) && rc.data != 0) r = -static_cast<int>(rc.data);
  if (r >= 0) {
    armed_ns_ = first;
    return;
  }
  // The timer could not be armed: nothing would ever wake these ops, so fail them rather than
  // let them hang.
  while (!timers_.empty()) {
    Op* op = timers_.begin()->second;
    timers_.erase(timers_.begin());
    Complete(op, r);
  }
}

// Deletes the armed EVFILT_TIMER when no timeout is left, so an idle backend has no kernel timer
// (and no wake-up) pending. ENOENT (it fired meanwhile) is fine.
void KqueueReactor::DisarmTimer() {
  if (armed_ns_ == 0) return;
  armed_ns_ = 0;
  struct kevent ch;
  struct kevent rc {};
  EV_SET(&ch, kTimerIdent, EVFILT_TIMER, EV_DELETE | EV_RECEIPT, 0, 0, kNoUdata);
  stats_.kevent_changes++;
  ApplyChanges(kq_, &ch, 1, &rc);
}

void KqueueReactor::FireTimers() {
  armed_ns_ = 0;
  ArmTimer();  // completes every due timer, then arms for the next one
}

void KqueueReactor::StartRead(Op* op) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  if (FdState* st = Waiters(op->fd, true, nullptr)) {
    op->kind = kKindStream;
    Enqueue(st, op, true);
    return;
  }
  struct stat sb;
  if (fstat(op->fd, &sb) < 0) {
    Complete(op, -errno);
    return;
  }
  if (S_ISREG(sb.st_mode) || S_ISBLK(sb.st_mode) || S_ISDIR(sb.st_mode)) {
    // No preadv2(RWF_NOWAIT) on the BSDs: a file read might miss the page cache and block the
    // loop, so every one goes to the pool.
    ToPool(op);
    return;
  }
  op->kind = S_ISSOCK(sb.st_mode) ? kKindSocket : kKindStream;
  if (IsBlockingFd(op->fd)) {
    // A blocking pipe or tty: wait until readable so the read cannot block.
    Wait(op, true, &sb);
    return;
  }
  int64_t r = ReadPlain(op);
  if (r == -EAGAIN) {
    Wait(op, true, &sb);
    return;
  }
  Complete(op, r);
}

void KqueueReactor::StartWrite(Op* op) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  struct stat sb;
  if (fstat(op->fd, &sb) < 0) {
    Complete(op, -errno);
    return;
  }
  if (S_ISREG(sb.st_mode) || S_ISBLK(sb.st_mode)) {
    ToPool(op);
    return;
  }
  op->kind = S_ISSOCK(sb.st_mode) ? kKindSocket : kKindStream;
  if (FdState* st = Waiters(op->fd, false, &sb)) {
    Enqueue(st, op, false);
    return;
  }
  if (op->kind == kKindStream && IsBlockingFd(op->fd)) {
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

void KqueueReactor::StartSocketOp(Op* op, bool read_side) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  if (FdState* st = Waiters(op->fd, read_side, nullptr)) {
    Enqueue(st, op, read_side);
    return;
  }
  int64_t r = Attempt(op);
  if (r == -EAGAIN) {
    Wait(op, read_side, nullptr);
    return;
  }
  Complete(op, r);
}

void KqueueReactor::StartSyncSocketCall(Op* op) {
  if (IsInternal(op->fd)) {
    Complete(op, -EBADF);
    return;
  }
  if (op->code == kShutdown) {
    const int how = op->a == 0 ? SHUT_RD : op->a == 1 ? SHUT_WR : SHUT_RDWR;
    Complete(op, shutdown(op->fd, how) < 0 ? -errno : 0);
    return;
  }
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
  // SO_REUSEPORT lets several listeners share a port everywhere, but only Linux and FreeBSD's
  // SO_REUSEPORT_LB balance connections between them; on macOS the last bound listener gets them.
#ifdef SO_REUSEPORT_LB
  const int reuse_opt = SO_REUSEPORT_LB;
#else
  const int reuse_opt = SO_REUSEPORT;
#endif
  if (op->c != 0 && setsockopt(op->fd, SOL_SOCKET, reuse_opt, &one, sizeof(one)) < 0) {
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

void KqueueReactor::StartClose(Op* op) {
  const int fd = op->fd;
  if (IsInternal(fd)) {
    // Never close a descriptor this backend depends on, whatever the caller asks.
    Complete(op, -EBADF);
    return;
  }
  if (FdState* st = Find(fd)) {
    // close() drops the fd's knotes by itself; a late event for this number is filtered by
    // `rreg`/`wreg` (cleared here) in Process, so no EV_DELETE round trip is needed.
    FailQueues(st, -ECANCELED);
    st->rreg = st->wreg = false;
    // Reads, writes or fsyncs of this fd submitted before the close may still be on the pool: the
    // close waits for them (pool_book.h).
    if (HoldClose(st, op)) return;
  }
  CloseNow(op);
}

void KqueueReactor::CloseNow(Op* op) {
  const int fd = op->fd;
  FdState* st = Find(fd);
  const bool inline_close = st != nullptr && st->is_socket;
  if (inline_close) {
    owned_.Remove(fd);
    int r = close(fd);
    Forget(st);
    // EINTR from close(): the fd is gone on every BSD and macOS (POSIX leaves it unspecified).
    Complete(op, r < 0 && errno != EINTR ? -errno : 0);
    return;
  }
  // A file's close can block (NFS flushes, the last reference to a deleted file): use the pool.
  // Ops submitted meanwhile fail with EBADF (they could run after the close, on a reused number).
  ClosePooled(st, op);
}

// -------------------------------------------------------------------------------------------------
// Readiness

int64_t KqueueReactor::Attempt(Op* op) {
  switch (op->code) {
    case kAccept:
      for (;;) {
        // No accept4() on macOS (FreeBSD has it; one code path for all is simpler to trust).
        int fd = accept(op->fd, nullptr, nullptr);
        if (fd >= 0) {
          int r = SetCloexecNonblock(fd);
          if (r == 0) r = SetNoSigPipe(fd);
          if (r < 0) {
            close(fd);
            return r;
          }
          SetNoDelay(fd);
          Adopt(fd, true);
          Find(fd)->nosigpipe = true;
          return fd;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
      }
    case kRecv: {
      ssize_t r;
      do {
        r = recv(op->fd, op->iov1.iov_base, op->iov1.iov_len, MSG_DONTWAIT);
      } while (r < 0 && errno == EINTR);
      return r < 0 && errno == EWOULDBLOCK ? -EAGAIN : Ret(r);
    }
    case kSend: {
      if (int e = EnsureNoSigPipe(op->fd); e < 0) return e;
      ssize_t r;
      do {
        r = send(op->fd, op->iov1.iov_base, op->iov1.iov_len, MSG_DONTWAIT | kSendFlags);
      } while (r < 0 && errno == EINTR);
      return r < 0 && errno == EWOULDBLOCK ? -EAGAIN : Ret(r);
    }
    case kConnect: {
      if (!op->in_progress) {
        int r = ParseAddress(op);
        if (r < 0) return r;
        if (connect(op->fd, reinterpret_cast<struct sockaddr*>(&op->addr), op->addrlen) == 0) return 0;
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
      struct sockaddr_storage peer;
      socklen_t plen = sizeof(peer);
      if (getpeername(op->fd, reinterpret_cast<struct sockaddr*>(&peer), &plen) < 0) {
        return errno == ENOTCONN ? -EAGAIN : -errno;
      }
      return 0;
    }
    case kRead:
    case kReadv: {
      int64_t r = ReadPlain(op);
      return r == -EWOULDBLOCK ? -EAGAIN : r;
    }
    case kWrite:
    case kWritev: {
      ssize_t r;
      if (op->kind == kKindSocket) {
        if (op->offset >= 0) return -ESPIPE;
        if (int e = EnsureNoSigPipe(op->fd); e < 0) return e;
        struct msghdr msg {};
        msg.msg_iov = const_cast<struct iovec*>(op->iov());
        msg.msg_iovlen = op->iovcnt();
        do {
          r = sendmsg(op->fd, &msg, MSG_DONTWAIT | kSendFlags);
        } while (r < 0 && errno == EINTR);
        return r < 0 && errno == EWOULDBLOCK ? -EAGAIN : Ret(r);
      }
      // A pipe or tty that is non-blocking, or one EVFILT_WRITE just said has room. Writing to a
      // pipe whose reader is gone raises SIGPIPE here; Node ignores SIGPIPE process-wide.
      int64_t w = WritePlain(op);
      return w == -EWOULDBLOCK ? -EAGAIN : w;
    }
    default:
      return -EINVAL;
  }
}

// macOS: send() has no MSG_NOSIGNAL, so the socket itself must say SO_NOSIGPIPE before its first
// send. Sockets this reactor created or accepted have it already. For any other fd the option is
// set before every send: the number may have been closed and reused behind our back, and caching
// it per fd number would skip a new socket. (Node ignores SIGPIPE anyway; this is the second guard.)
// setsockopt() runs before anything is allocated for the fd, so a bogus fd costs only its EBADF.
int KqueueReactor::EnsureNoSigPipe(int fd) {
  if (kSendFlags != 0) return 0;
  FdState* st = Find(fd);
  if (st != nullptr && st->trusted && st->nosigpipe) return 0;
  return SetNoSigPipe(fd);
}

// Adds the filter of one side (EVFILT_READ or EVFILT_WRITE, EV_CLEAR) for fd. EV_RECEIPT makes
// kevent() return the change's result in the event list (EV_ERROR set, data = errno or 0) rather
// than an error return or a pending event, so it is checked here. Returns 0 or -errno.
int KqueueReactor::Register(int fd, bool read_side) {
  struct kevent ch;
  struct kevent rc {};
  EV_SET(&ch, static_cast<uintptr_t>(fd), read_side ? EVFILT_READ : EVFILT_WRITE, EV_ADD | EV_CLEAR | EV_RECEIPT, 0, 0,
         kNoUdata);
  stats_.kevent_changes++;
  int n = ApplyChanges(kq_, &ch, 1, &rc);
  if (n < 0) return n;
  if (n >= 1 && (rc.flags & EV_ERROR) && rc.data != 0) return -static_cast<int>(rc.data);
  return 0;
}

// Closed behind our back: fd numbers and waiting ops (the same problem and the same answer as in
// the epoll reactor, see "Closed behind our back" in packages/backend-epoll/native/epoll.cc).
//
// A knote belongs to an fd of this process, and close() drops it, but the ops here name numbers:
// when an fd with waiting ops is closed behind our back (fs.closeSync, its owner) and its number
// handed out again by someone else, a new op on the number was queued behind the old file's
// waiters, or joined a wait on a filter believed added (rreg/wreg) that close() had dropped, and
// waited forever. So a waiting op belongs to the file whose knotes were added when it started
// waiting: each addition records that file's st_dev/st_ino, and an op that would queue behind
// waiting ops of its fd, on either side (Waiters, and Wait when the other side has waiters),
// first checks that the number still refers to it (an fstat, off the hot path: a stream has one
// recv in flight and sends queue only under backpressure). If not, the old file's waiters fail
// with EBADF and the state starts a new generation (Renew); the new file gets its own knotes.
//
// An fd this reactor did not create is re-added (and its identity taken again) whenever a wait
// starts on it while idle. An fd it created (socket, accept), which the backend owns and only a
// close op should close, is taken on trust on the per-request path (a wait starting while idle):
// checking would cost an fstat per request. Unlike epoll, whose registration of a file lives on
// as long as the file does, a kqueue never reports events of a closed fd's knotes, so an old
// file that lives on elsewhere cannot wake waiters here (kqemu, the test emulation on epoll,
// only sees the close() calls of this reactor, and can).

// Whether `fd` is still the file st's knotes were added for. `known`: its fstat, if at hand.
bool KqueueReactor::SameFile(const FdState* st, int fd, const struct stat* known) {
  struct stat sb;
  if (known == nullptr) {
    if (fstat(fd, &sb) < 0) return false;  // closed: certainly not that file any more
    known = &sb;
  }
  return static_cast<uint64_t>(known->st_dev) == st->dev && static_cast<uint64_t>(known->st_ino) == st->ino;
}

// The fd's state if ops wait on `read_side` of the file the number still refers to, so a new op
// must queue behind them (order is kept per side); nullptr if none wait (waiters of a file that
// is gone are failed first, see above).
FdState* KqueueReactor::Waiters(int fd, bool read_side, const struct stat* known) {
  FdState* st = Find(fd);
  if (st == nullptr || (read_side ? st->rhead : st->whead) == nullptr) return nullptr;
  if (SameFile(st, fd, known)) return st;
  Renew(fd);
  return nullptr;
}

void KqueueReactor::Wait(Op* op, bool read_side, const struct stat* known) {
  FdState* st = Ensure(op->fd);
  bool idle = st->rhead == nullptr && st->whead == nullptr;
  if (!idle && !SameFile(st, op->fd, known)) {
    // The other side's waiters belong to a file closed behind our back (see above).
    st = Renew(op->fd);
    idle = true;
  }
  bool& reg = read_side ? st->rreg : st->wreg;
  if (!reg || (!st->trusted && idle)) {
    // An fd we did not create may have been closed and its number reused since we last added
    // it (close() drops knotes silently): add again; EV_ADD on a live knote just updates it.
    if (!st->trusted && idle) st->rreg = st->wreg = false;
    struct stat sb;
    if (known == nullptr) {
      if (fstat(op->fd, &sb) < 0) {
        Complete(op, -errno);
        return;
      }
      known = &sb;
    }
    // The other side's filter was added for another file (closed behind our back while idle):
    // close() dropped it, so it must be added again when that side waits.
    if ((st->rreg || st->wreg) && !SameFile(st, op->fd, known)) st = Renew(op->fd);
    st->dev = static_cast<uint64_t>(known->st_dev);
    st->ino = static_cast<uint64_t>(known->st_ino);
    int r = Register(op->fd, read_side);
    if (r < 0) {
      if (r == -EINVAL && (op->code == kRead || op->code == kReadv || op->code == kWrite || op->code == kWritev)) {
        // A device kqueue cannot watch (EINVAL on the filter): the pool does the blocking call.
        ToPool(op);
        return;
      }
      Complete(op, r);
      return;
    }
    reg = true;
  }
  stats_.waited++;
  Enqueue(st, op, read_side);
}

void KqueueReactor::RunQueue(FdState* st, bool read_side) {
  Op*& head = read_side ? st->rhead : st->whead;
  Op*& tail = read_side ? st->rtail : st->wtail;
  while (Op* op = head) {
    int64_t r = Attempt(op);
    if (r == -EAGAIN) return;
    head = op->qnext;
    if (head == nullptr) tail = nullptr;
    Complete(op, r);
  }
}

size_t KqueueReactor::Process(int timeout_ms) {
  if (closed_) return ready();
  const uint64_t deadline = timeout_ms > 0 ? NowNs() + static_cast<uint64_t>(timeout_ms) * 1000000ull : 0;
  int wait = timeout_ms;
  for (;;) {
    struct timespec ts {};
    const struct timespec* tsp = nullptr;  // nullptr: wait forever
    const int w = ready() > 0 ? 0 : wait;
    if (w >= 0) {
      ts.tv_sec = w / 1000;
      ts.tv_nsec = static_cast<long>(w % 1000) * 1000000L;
      tsp = &ts;
    }
    stats_.kevent_wait++;
    int n = kevent(kq_, nullptr, 0, events_.data(), static_cast<int>(events_.size()), tsp);
    if (n < 0) n = 0;  // EINTR: treat as a timeout slice and recompute below
    for (int i = 0; i < n; i++) {
      const struct kevent& ev = events_[static_cast<size_t>(i)];
      if (ev.filter == EVFILT_USER) {
        if (ev.ident == kWakeIdent) DrainPool();
        continue;
      }
      if (ev.filter == EVFILT_TIMER) {
        if (ev.ident == kTimerIdent) FireTimers();
        continue;
      }
      const int fd = static_cast<int>(ev.ident);
      FdState* st = Find(fd);
      const bool read_side = ev.filter == EVFILT_READ;
      if (!read_side && ev.filter != EVFILT_WRITE) continue;
      // Stale: closed (and forgotten) since the wait began.
      if (st == nullptr || !(read_side ? st->rreg : st->wreg)) continue;
      if (ev.flags & EV_ERROR) {
        // An error entry for this knote (data = errno, e.g. EBADF once the fd was closed
        // elsewhere): the knote is gone. Run the queue anyway: its system calls report the real
        // error (or succeed), and an op that still gets EAGAIN must re-add the filter.
        (read_side ? st->rreg : st->wreg) = false;
        Op* head = read_side ? st->rhead : st->whead;
        RunQueue(st, read_side);
        if (head != nullptr && head == (read_side ? st->rhead : st->whead)) {
          // Still waiting: re-add so it is not stranded; if that fails, fail the waiting ops.
          int r = Register(fd, read_side);
          if (r < 0) {
            while (Op* op = read_side ? st->rhead : st->whead) {
              Unqueue(st, op, read_side);
              Complete(op, r);
            }
          } else {
            (read_side ? st->rreg : st->wreg) = true;
          }
        }
        continue;
      }
      // EV_EOF (peer closed, or the error in fflags) also wakes the side it is for: recv then
      // returns 0 or the error, send returns EPIPE.
      RunQueue(st, read_side);
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

bool KqueueReactor::Cancel(uint64_t id) {
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
      if (timers_.empty()) DisarmTimer();  // else an early expiry just re-arms for the next one
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

}  // namespace miniss
