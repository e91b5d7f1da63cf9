// Plain C++ io_uring engine: see io_uring.h. No liburing, no V8.
#include "io_uring.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "miniss/op.h"  // @miniss/native-common: Op and ParseAddress (op.cc is linked into this addon)

namespace miniss {
namespace {

int sys_io_uring_setup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}

int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, const void* arg,
                       size_t argsz) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz));
}

int sys_io_uring_register(int fd, unsigned opcode, const void* arg, unsigned nr_args) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, opcode, arg, nr_args));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Ring

Ring::~Ring() { Close(); }

void Ring::Unmap() {
  if (sqes_ != nullptr) munmap(sqes_, sqes_size_);
  if (cq_ptr_ != nullptr && cq_ptr_ != sq_ptr_) munmap(cq_ptr_, cq_size_);
  if (sq_ptr_ != nullptr) munmap(sq_ptr_, sq_size_);
  sqes_ = nullptr;
  cq_ptr_ = nullptr;
  sq_ptr_ = nullptr;
  cq_flags_ = nullptr;
}

void Ring::Close() {
  UnregisterRingFd();
  Unmap();
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

void Ring::RegisterRingFd() {
  io_uring_rsrc_update up;
  memset(&up, 0, sizeof(up));
  up.offset = ~0u;  // any free index
  up.data = static_cast<uint64_t>(fd_);
  if (sys_io_uring_register(fd_, IORING_REGISTER_RING_FDS, &up, 1) != 1) return;
  enter_index_ = static_cast<int>(up.offset);
  enter_thread_ = pthread_self();
}

void Ring::UnregisterRingFd() {
  if (enter_index_ < 0) return;
  // Only the registering thread can drop its entry. From another thread (never in practice:
  // the backend lives and closes on its own thread) the entry, and with it a reference to the
  // ring, goes away when that thread exits.
  if (pthread_equal(pthread_self(), enter_thread_)) {
    io_uring_rsrc_update up;
    memset(&up, 0, sizeof(up));
    up.offset = static_cast<uint32_t>(enter_index_);
    sys_io_uring_register(fd_, IORING_UNREGISTER_RING_FDS, &up, 1);
  }
  enter_index_ = -1;
}

int Ring::Setup(unsigned entries, unsigned cq_entries, unsigned flags, unsigned sq_idle_ms) {
  io_uring_params p;
  memset(&p, 0, sizeof(p));
  p.flags = flags;
  p.cq_entries = cq_entries;
  p.sq_thread_idle = sq_idle_ms;
  int fd = sys_io_uring_setup(entries, &p);
  if (fd < 0) return -errno;

  fd_ = fd;
  flags_ = flags;
  features_ = p.features;
  sq_entries_ = p.sq_entries;
  cq_entries_ = p.cq_entries;
  sq_size_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cq_size_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  const bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single) sq_size_ = cq_size_ = std::max(sq_size_, cq_size_);
  void* sq = mmap(nullptr, sq_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) {
    int err = errno;
    Close();
    return -err;
  }
  sq_ptr_ = sq;
  void* cq = sq;
  if (!single) {
    cq = mmap(nullptr, cq_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) {
      int err = errno;
      Close();
      return -err;
    }
  }
  cq_ptr_ = cq;
  sqes_size_ = p.sq_entries * sizeof(io_uring_sqe);
  void* sqes = mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) {
    int err = errno;
    Close();
    return -err;
  }
  sqes_ = static_cast<io_uring_sqe*>(sqes);
  char* sqb = static_cast<char*>(sq_ptr_);
  sq_head_ = reinterpret_cast<unsigned*>(sqb + p.sq_off.head);
  sq_tail_ = reinterpret_cast<unsigned*>(sqb + p.sq_off.tail);
  sq_flags_ = reinterpret_cast<unsigned*>(sqb + p.sq_off.flags);
  sq_mask_ = *reinterpret_cast<unsigned*>(sqb + p.sq_off.ring_mask);
  sq_array_ = reinterpret_cast<unsigned*>(sqb + p.sq_off.array);
  char* cqb = static_cast<char*>(cq_ptr_);
  cq_head_ = reinterpret_cast<unsigned*>(cqb + p.cq_off.head);
  cq_tail_ = reinterpret_cast<unsigned*>(cqb + p.cq_off.tail);
  cq_mask_ = *reinterpret_cast<unsigned*>(cqb + p.cq_off.ring_mask);
  cq_flags_ = p.cq_off.flags != 0 ? reinterpret_cast<unsigned*>(cqb + p.cq_off.flags) : nullptr;
  cqes_ = reinterpret_cast<io_uring_cqe*>(cqb + p.cq_off.cqes);
  sqe_head_ = sqe_tail_ = *sq_tail_;
  return 0;
}

int Ring::Init(unsigned entries, unsigned cq_entries, int mode, bool sqpoll, unsigned sq_idle_ms) {
  // CQSIZE: a CQ larger than twice the SQ, so bursts of completions (multishot accept, many
  // small reads) fit without overflowing into the kernel's list. CLAMP: huge `entries` are
  // clamped instead of refused. SUBMIT_ALL (5.18): an SQE that fails to prepare does not stop
  // the rest of the batch, so one bad descriptor never strands the others in the SQ.
  const unsigned base = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL;
  std::vector<unsigned> ladder;
  if (sqpoll) {
    // DEFER_TASKRUN requires the submitting task to reap; with SQPOLL the kernel thread submits,
    // so the kernel refuses that pair. COOP_TASKRUN is accepted with SQPOLL.
    ladder = {base | IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN |
                  IORING_SETUP_TASKRUN_FLAG,
              base | IORING_SETUP_SQPOLL};
  } else {
    // DEFER_TASKRUN is opt-in only (mode 3): on this kernel (6.18) a ring with DEFER_TASKRUN and
    // a registered eventfd loses wake-ups. A request parked on an eventfd (a read of a doorbell)
    // is completed by task work queued from the writer's eventfd_write(), where the kernel may
    // not signal another eventfd directly; it defers that signal through RCU and a flag bit that
    // is never cleared, so the first such wake-up arrives (an RCU grace period late, ~16 ms
    // here) and every later one is dropped: the CQE is never produced because nobody enters
    // the ring with GETEVENTS. Reproduced in C without Node (docs/defer-taskrun-eventfd-repro.c) and by the test
    // "an eventfd read in flight completes when another thread writes it". COOP_TASKRUN
    // completes the request from task work in this thread, which signals the eventfd normally.
    if (mode == 3) {
      ladder.push_back(base | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    }
    if (mode <= 1 || mode == 3) {
      ladder.push_back(base | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
      ladder.push_back(base | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    }
    ladder.push_back(base);
  }
  // Kernels before 5.18 refuse SUBMIT_ALL and before 5.6 CQSIZE with EINVAL: the last rung.
  ladder.push_back(0);
  int r = -EINVAL;
  for (unsigned flags : ladder) {
    r = Setup(entries, cq_entries, flags, sq_idle_ms);
    if (r == 0) {
      RegisterRingFd();
      return 0;
    }
    // Only EINVAL means "try fewer flags"; ENOSYS, EPERM, ENOMEM, EMFILE are final.
    if (r != -EINVAL) return r;
  }
  return r;
}

unsigned Ring::SqSpace() const { return sq_entries_ - (sqe_tail_ - __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE)); }

io_uring_sqe* Ring::GetSqe() {
  if (SqSpace() == 0) return nullptr;
  io_uring_sqe* sqe = &sqes_[sqe_tail_ & sq_mask_];
  ++sqe_tail_;
  memset(sqe, 0, sizeof(*sqe));
  return sqe;
}

int Ring::Submit(bool getevents, unsigned wait_nr, const __kernel_timespec* timeout) {
  // Publish the SQEs filled since the last call (in order, so the index array is the identity).
  unsigned tail = *sq_tail_;
  while (sqe_head_ != sqe_tail_) {
    sq_array_[tail & sq_mask_] = sqe_head_ & sq_mask_;
    ++tail;
    ++sqe_head_;
  }
  __atomic_store_n(sq_tail_, tail, __ATOMIC_RELEASE);
  const unsigned to_submit = tail - __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE);
  unsigned flags = 0;
  if (sqpoll()) {
    // The SQ thread picks the entries up by itself; it only needs a kick once it went idle.
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (to_submit > 0 && (__atomic_load_n(sq_flags_, __ATOMIC_RELAXED) & IORING_SQ_NEED_WAKEUP)) {
      flags |= IORING_ENTER_SQ_WAKEUP;
    }
    if (!getevents && flags == 0) return static_cast<int>(to_submit);
  }
  if (getevents) flags |= IORING_ENTER_GETEVENTS;
  if (to_submit == 0 && flags == 0) return 0;
  io_uring_getevents_arg arg;
  memset(&arg, 0, sizeof(arg));
  const void* argp = nullptr;
  size_t argsz = 0;
  if (timeout != nullptr) {
    arg.sigmask = 0;
    arg.sigmask_sz = _NSIG / 8;
    arg.ts = reinterpret_cast<uint64_t>(timeout);
    flags |= IORING_ENTER_EXT_ARG;
    argp = &arg;
    argsz = sizeof(arg);
  }
  int enter_fd = fd_;
  if (enter_index_ >= 0 && pthread_equal(pthread_self(), enter_thread_)) {
    enter_fd = enter_index_;
    flags |= IORING_ENTER_REGISTERED_RING;
  }
  for (;;) {
    int r = sys_io_uring_enter(enter_fd, sqpoll() ? 0 : to_submit, wait_nr, flags, argp, argsz);
    if (r >= 0) return sqpoll() ? static_cast<int>(to_submit) : r;
    if (errno == EINTR) {
      // Interrupted while waiting: do not resubmit, just report what the kernel took so far.
      if (wait_nr > 0) return 0;
      continue;
    }
    return -errno;
  }
}

bool Ring::KernelHasCompletions() const {
  const unsigned f = __atomic_load_n(sq_flags_, __ATOMIC_RELAXED);
  return (f & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
}

void Ring::SetEventFdQuiet(bool quiet) {
  if (cq_flags_ == nullptr) return;
  // The kernel never writes this word; only the application does (liburing does the same).
  const unsigned f = __atomic_load_n(cq_flags_, __ATOMIC_RELAXED);
  const unsigned want = quiet ? (f | IORING_CQ_EVENTFD_DISABLED) : (f & ~IORING_CQ_EVENTFD_DISABLED);
  __atomic_store_n(cq_flags_, want, __ATOMIC_RELEASE);
  // Pairs with the full barrier the kernel has between publishing a CQ tail and reading this
  // flag (io_cqring_wake's wq_has_sleeper, before the eventfd signal).
  if (!quiet) __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

unsigned Ring::CqReady() const { return CqTail() - *cq_head_; }

const io_uring_cqe* Ring::CqAt(unsigned i) const { return &cqes_[(*cq_head_ + i) & cq_mask_]; }

void Ring::CqAdvance(unsigned n) { __atomic_store_n(cq_head_, *cq_head_ + n, __ATOMIC_RELEASE); }

int Ring::Register(unsigned opcode, const void* arg, unsigned nr_args) {
  int r = sys_io_uring_register(fd_, opcode, arg, nr_args);
  return r < 0 ? -errno : r;
}

// ---------------------------------------------------------------------------------------------
// Engine

std::unique_ptr<Engine> Engine::Create(const EngineOptions& options, int* err, const char** syscall_name) {
  std::unique_ptr<Engine> e(new Engine());
  unsigned entries = std::max(1u, std::min(options.entries, 32768u));
  // Completions are reaped once per loop turn, so the CQ holds a few turns' worth.
  unsigned cq_entries = std::max(entries * 4, 1024u);
  int r = e->ring_.Init(entries, cq_entries, options.mode, options.sqpoll, options.sq_idle_ms);
  if (r < 0) {
    *err = r;
    *syscall_name = "io_uring_setup";
    return nullptr;
  }
  e->event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (e->event_fd_ < 0) {
    *err = -errno;
    *syscall_name = "eventfd";
    return nullptr;
  }
  // Every CQE posted (and, with DEFER_TASKRUN, every batch of deferred task work queued) makes
  // the eventfd readable: that is what Node's loop polls.
  r = e->ring_.Register(IORING_REGISTER_EVENTFD, &e->event_fd_, 1);
  if (r < 0) {
    *err = r;
    *syscall_name = "io_uring_register";
    return nullptr;
  }
  return e;
}

Engine::~Engine() { Shutdown(0); }

void Engine::GrowSlots(uint32_t slot) {
  // Doubling keeps growth amortised; only the pointers move (see slots_).
  const size_t n = std::max<size_t>(static_cast<size_t>(slot) + 1, slots_.size() * 2);
  slots_.reserve(n);
  while (slots_.size() < n) slots_.push_back(std::make_unique<Slot>());
}

void Engine::Release(Slot& s) {
  s.live = false;
  s.listener = -1;
  s.multishot = false;
  s.has_sync_result = false;
  s.pin.reset();
  s.pins.clear();
  s.iov.clear();
  s.path.clear();
}

int Engine::Enter(bool getevents, unsigned wait_nr, const __kernel_timespec* ts) {
  ++enters_;
  int r = ring_.Submit(getevents, wait_nr, ts);
  if (r > 0) sqes_submitted_ += static_cast<uint64_t>(r);
  return r;
}

io_uring_sqe* Engine::SqeOrFlush(unsigned need) {
  if (ring_.SqSpace() < need) {
    // SQ ring full: hand what it holds to the kernel first (SQPOLL: the thread may be behind).
    if (Enter(false, 0, nullptr) < 0 || ring_.SqSpace() < need) return nullptr;
  }
  return ring_.GetSqe();
}

bool Engine::Prepare(uint32_t slot_index, OpDesc& d) {
  if (closed_) return false;
  // Never let an operation touch a descriptor the engine depends on, whatever the caller asks
  // (the epoll backend refuses its internal fds the same way): closing the registered eventfd
  // made libuv, which polls it, abort the process; reading it would steal the ring's wake-ups.
  // (The kernel itself refuses IORING_OP_CLOSE of an io_uring fd.) Operations without an fd
  // carry -1.
  if (d.fd >= 0 && (d.fd == event_fd_ || d.fd == ring_.fd()) && d.prep_error == 0 && d.op != kOpCancel &&
      d.op != kOpCloseQuiet) {
    d.prep_error = EBADF;
  }
  if (d.op == kOpAccept && d.prep_error == 0) return PrepareAccept(slot_index, d);
  if (d.op == kOpCancel) return PrepareCancel(d);
  // A close, and a connect with a timeout, take two linked SQEs; make sure both fit before
  // touching either. A ring of one entry can never hold both (JS refuses `entries: 1`; this
  // guards direct use of the addon): fail such an operation with EINVAL through a NOP rather than
  // keep it queued forever, which left the loop spinning on it.
  bool link_timeout = d.op == kOpConnect && d.ms > 0 && d.prep_error == 0;
  unsigned need = (d.op == kOpClose && d.prep_error == 0) || link_timeout ? 2 : 1;
  if (need > ring_.sq_entries()) {
    d.prep_error = EINVAL;
    link_timeout = false;
    need = 1;
  }
  io_uring_sqe* sqe = SqeOrFlush(need);
  if (sqe == nullptr) return false;
  io_uring_sqe* sqe2 = need == 2 ? ring_.GetSqe() : nullptr;

  if (d.op == kOpCloseQuiet) {
    owned_.Remove(d.fd);
    sqe->opcode = IORING_OP_CLOSE;
    sqe->fd = d.fd;
    sqe->user_data = kInternalUserData;
    ++in_flight_;
    return true;
  }

  Slot& s = SlotAt(slot_index);
  s.id = d.id;
  s.live = true;
  s.op = d.op;
  s.multishot = false;
  s.has_sync_result = false;
  sqe->user_data = d.id;
  ++in_flight_;
  ++user_in_flight_;

  auto sync_result = [&](int32_t res) {
    sqe->opcode = IORING_OP_NOP;
    s.has_sync_result = true;
    s.sync_result = res;
  };
  if (d.prep_error != 0) {
    sync_result(-d.prep_error);
    return true;
  }

  switch (d.op) {
    case kOpNop:
      sqe->opcode = IORING_OP_NOP;
      break;
    case kOpTimeout: {
      s.ts = TimespecOfMs(d.ms);
      sqe->opcode = IORING_OP_TIMEOUT;
      sqe->fd = -1;
      sqe->addr = reinterpret_cast<uint64_t>(&s.ts);
      sqe->len = 1;
      sqe->off = 0;  // a pure timer: not "after N completions"
      break;
    }
    case kOpRead:
    case kOpWrite:
      s.pin = std::move(d.pin);
      sqe->opcode = d.op == kOpRead ? IORING_OP_READ : IORING_OP_WRITE;
      sqe->fd = d.fd;
      sqe->addr = reinterpret_cast<uint64_t>(d.data);
      sqe->len = static_cast<uint32_t>(d.len);
      // (u64)-1 is "use and advance the file position" (IORING_FEAT_RW_CUR_POS, 5.6).
      sqe->off = d.offset < 0 ? ~0ULL : static_cast<uint64_t>(d.offset);
      break;
    case kOpRecv:
    case kOpSend:
      s.pin = std::move(d.pin);
      sqe->opcode = d.op == kOpRecv ? IORING_OP_RECV : IORING_OP_SEND;
      sqe->fd = d.fd;
      sqe->addr = reinterpret_cast<uint64_t>(d.data);
      sqe->len = static_cast<uint32_t>(d.len);
      // A peer that went away must give EPIPE, not kill the process with SIGPIPE.
      sqe->msg_flags = d.op == kOpSend ? MSG_NOSIGNAL : 0;
      break;
    case kOpReadv:
    case kOpWritev:
      s.iov = std::move(d.iov);
      s.pins = std::move(d.pins);
      sqe->opcode = d.op == kOpReadv ? IORING_OP_READV : IORING_OP_WRITEV;
      sqe->fd = d.fd;
      sqe->addr = reinterpret_cast<uint64_t>(s.iov.data());
      sqe->len = static_cast<uint32_t>(s.iov.size());
      sqe->off = d.offset < 0 ? ~0ULL : static_cast<uint64_t>(d.offset);
      break;
    case kOpFsync:
      sqe->opcode = IORING_OP_FSYNC;
      sqe->fd = d.fd;
      sqe->fsync_flags = d.a != 0 ? IORING_FSYNC_DATASYNC : 0;
      break;
    case kOpOpen:
      s.path = std::move(d.str);
      sqe->opcode = IORING_OP_OPENAT;
      sqe->fd = AT_FDCWD;
      sqe->addr = reinterpret_cast<uint64_t>(s.path.c_str());
      sqe->len = static_cast<uint32_t>(d.b);
      sqe->open_flags = static_cast<uint32_t>(d.a) | O_CLOEXEC;
      break;
    case kOpClose: {
      // A listener's queued connections die with it (never leaked), and its record lets go of
      // the fd number.
      ListenerFdGone(d.fd, true);
      // An eventfd of NewEventFd closed by the caller is no longer the engine's: Shutdown must
      // not close the number again (by then it may be a file the application opened since).
      auto owned = std::find(extra_fds_.begin(), extra_fds_.end(), d.fd);
      if (owned != extra_fds_.end()) extra_fds_.erase(owned);
      // A socket, connection or file made for the caller is closed by the caller now: Shutdown
      // must leave its number alone from here on (see owned_).
      owned_.Remove(d.fd);
      // Closing an fd does not stop requests that already hold its file (a multishot accept on a
      // listener would keep accepting forever, a recv would wait for data that never comes), so
      // first cancel every request on the fd, hard-linked so the close runs whatever the cancel
      // returns (ENOENT when nothing was pending). The cancelled ones complete with ECANCELED.
      sqe->opcode = IORING_OP_ASYNC_CANCEL;
      sqe->fd = d.fd;
      sqe->cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
      sqe->flags = IOSQE_IO_HARDLINK;
      sqe->user_data = kInternalUserData;
      ++in_flight_;
      sqe2->opcode = IORING_OP_CLOSE;
      sqe2->fd = d.fd;
      sqe2->user_data = d.id;
      break;
    }
    case kOpSocket: {
      // Synchronous (cheap, never blocks); completed through a NOP so the result arrives in
      // order with everything else.
      int fd = socket(d.a == 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        sync_result(-errno);
        break;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      sync_result(fd);
      break;
    }
    case kOpListen: {
      sockaddr_storage ss;
      socklen_t len = 0;
      const int perr = SocketAddressFor(d.fd, d.str, d.a, &ss, &len);
      if (perr != 0) {
        sync_result(-perr);
        break;
      }
      int one = 1;
      if (setsockopt(d.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
          (d.c != 0 && setsockopt(d.fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
          bind(d.fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(d.fd, d.b > 0 ? d.b : 511) != 0) {
        sync_result(-errno);
        break;
      }
      sync_result(0);
      break;
    }
    case kOpConnect: {
      socklen_t len = 0;
      const int perr = SocketAddressFor(d.fd, d.str, d.a, &s.addr, &len);
      if (perr != 0) {
        sync_result(-perr);
        if (sqe2 != nullptr) {
          sqe2->opcode = IORING_OP_NOP;  // the timeout's SQE, unused
          sqe2->user_data = kInternalUserData;
          ++in_flight_;
        }
        break;
      }
      sqe->opcode = IORING_OP_CONNECT;
      sqe->fd = d.fd;
      sqe->addr = reinterpret_cast<uint64_t>(&s.addr);
      sqe->off = len;
      if (sqe2 != nullptr) {
        // Backend extension `timeoutMs`: IORING_OP_LINK_TIMEOUT linked to the connect. If it
        // fires first the connect completes with ECANCELED, which src/index.ts reports as
        // ETIMEDOUT (unless the caller cancelled). The kernel copies the timespec at submit.
        s.ts = TimespecOfMs(d.ms);
        sqe->flags |= IOSQE_IO_LINK;
        sqe2->opcode = IORING_OP_LINK_TIMEOUT;
        sqe2->fd = -1;
        sqe2->addr = reinterpret_cast<uint64_t>(&s.ts);
        sqe2->len = 1;
        sqe2->user_data = kInternalUserData;
        ++in_flight_;
      }
      break;
    }
    case kOpShutdown:
      ListenerFdGone(d.fd, false);
      sqe->opcode = IORING_OP_SHUTDOWN;
      sqe->fd = d.fd;
      sqe->len = static_cast<uint32_t>(d.a);
      break;
    default:
      sync_result(-EINVAL);
      break;
  }
  return true;
}

int Engine::SubmitPrepared(bool getevents) {
  if (closed_) return 0;
  ServiceListeners();
  if (ring_.Unsubmitted() == 0 && !getevents) return 0;
  return Enter(getevents, 0, nullptr);
}

bool Engine::MoreReady() const {
  return !closed_ && (!local_.empty() || ring_.CqReady() > 0 || ring_.KernelHasCompletions());
}

size_t Engine::Reap(Completion* out, size_t max, int wait_ms) {
  if (closed_) return 0;
  size_t n = 0;
  // Completions made inside the engine first (they are older than anything in the CQ ring).
  auto drain_local = [&]() {
    while (!local_.empty() && n < max) {
      const Local& x = local_.front();
      // An accepted connection handed to the caller (see owned_).
      if (x.owns_fd && x.c.res >= 0) owned_.Add(x.c.res);
      out[n++] = x.c;
      local_.pop_front();
    }
  };
  drain_local();
  auto consume = [&]() {
    const unsigned ready = ring_.CqReady();
    unsigned i = 0;
    // An accept CQE may complete a waiting operation through local_: leave room for it.
    for (; i < ready && n + local_.size() < max; ++i) {
      const io_uring_cqe* cqe = ring_.CqAt(i);
      ++cqes_reaped_;
      const uint64_t ud = cqe->user_data;
      const bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
      if (ud & kInternalUserData) {
        if (ud & kListenerTag) {
          OnAcceptCqe(static_cast<uint32_t>(ud & kSlotMask), cqe->res, more);
          continue;
        }
        if (!more && in_flight_ > 0) --in_flight_;
        continue;
      }
      Slot* live = LiveSlot(ud);
      if (live == nullptr) continue;
      Slot& s = *live;
      int32_t res = s.has_sync_result ? s.sync_result : cqe->res;
      if (s.op == kOpTimeout && res == -ETIME) res = 0;
      if (res >= 0 && (s.op == kOpOpen || s.op == kOpAccept || s.op == kOpSocket)) {
        // Shutting down: nobody will ever see this completion, so an fd it made belongs to no
        // one. Close it here or it leaks for the life of the process. Otherwise the fd is the
        // caller's from here on, recorded until it closes it through us (see owned_).
        if (shutting_down_) close(res);
        else owned_.Add(res);
      }
      out[n++] = Completion{ud, res, cqe->flags};
      if (!more) {
        Release(s);
        if (in_flight_ > 0) --in_flight_;
        if (user_in_flight_ > 0) --user_in_flight_;
      }
    }
    ring_.CqAdvance(i);
    drain_local();
  };
  for (int round = 0; round < 8 && n < max; ++round) {
    // Deferred task work (DEFER_TASKRUN), cooperative task work (COOP_TASKRUN) and CQ overflow
    // only reach the CQ ring when this thread enters the kernel with GETEVENTS.
    if (ring_.CqReady() == 0 && ring_.KernelHasCompletions()) {
      if (Enter(true, 0, nullptr) < 0) break;
    }
    if (ring_.CqReady() == 0) break;
    consume();
  }
  if (n == 0 && wait_ms > 0 && in_flight_ > 0) {
    __kernel_timespec ts;
    ts.tv_sec = wait_ms / 1000;
    ts.tv_nsec = static_cast<long long>(wait_ms % 1000) * 1000000LL;
    int r = Enter(true, 1, &ts);
    if (r >= 0 || r == -ETIME) consume();
  }
  // Multishot accepts that ended (or overflowed their queue) are re-armed (cancelled) here.
  if (ServiceListeners()) Enter(false, 0, nullptr);
  delivered_ += n;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Multishot accept

int32_t Engine::ListenerFor(int fd) {
  struct stat st;
  const bool have = fstat(fd, &st) == 0;
  auto it = listener_of_fd_.find(fd);
  if (it != listener_of_fd_.end()) {
    Listener& old = listeners_[it->second];
    if (have && old.dev == static_cast<uint64_t>(st.st_dev) && old.ino == static_cast<uint64_t>(st.st_ino)) {
      return static_cast<int32_t>(it->second);
    }
    // The fd was closed without the backend (and maybe reused for another socket): the old
    // record's multishot would keep the old socket alive and accepting. Detach it (its queue is
    // closed) and cancel its multishot (ServiceListeners); a new record serves this fd.
    const uint32_t stale = it->second;
    ListenerFdGone(fd, true);
    if (listeners_[stale].in_use && listeners_[stale].armed) MarkDirty(stale);
  }
  uint32_t index;
  if (!free_listeners_.empty()) {
    index = free_listeners_.back();
    free_listeners_.pop_back();
  } else {
    if (listeners_.size() > kSlotMask) return -1;
    index = static_cast<uint32_t>(listeners_.size());
    listeners_.emplace_back();
  }
  Listener& l = listeners_[index];
  l.fd = fd;
  l.dev = have ? static_cast<uint64_t>(st.st_dev) : 0;
  l.ino = have ? static_cast<uint64_t>(st.st_ino) : 0;
  l.in_use = true;
  l.attached = true;
  l.armed = false;
  l.cancelling = false;
  l.dirty = false;
  l.ready.clear();
  l.waiters.clear();
  listener_of_fd_[fd] = index;
  return static_cast<int32_t>(index);
}

bool Engine::PrepareAccept(uint32_t slot_index, OpDesc& d) {
  const int32_t li = ListenerFor(d.fd);
  if (li < 0) {
    d.prep_error = ENOMEM;
    return Prepare(slot_index, d);  // completes with ENOMEM through a NOP
  }
  Listener& l = listeners_[li];
  Slot& s = SlotAt(slot_index);
  if (!l.ready.empty()) {
    // A connection accepted earlier by the multishot: complete at once (through a NOP, so the
    // result arrives in order with everything else).
    io_uring_sqe* sqe = SqeOrFlush(1);
    if (sqe == nullptr) return false;
    const int fd = l.ready.front();
    l.ready.pop_front();
    s.id = d.id;
    s.live = true;
    s.op = kOpAccept;
    s.multishot = false;
    s.listener = -1;
    s.has_sync_result = true;
    s.sync_result = fd;
    sqe->opcode = IORING_OP_NOP;
    sqe->user_data = d.id;
    ++in_flight_;
    ++user_in_flight_;
    // Room in the queue again: a multishot stopped because the queue was full resumes.
    if (!l.armed && l.attached) MarkDirty(static_cast<uint32_t>(li));
    return true;
  }
  if (!l.armed) {
    io_uring_sqe* sqe = SqeOrFlush(1);
    if (sqe == nullptr) return false;
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = l.fd;
    sqe->accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
    sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    sqe->user_data = kInternalUserData | kListenerTag | static_cast<uint64_t>(li);
    l.armed = true;
    ++armed_;
    ++in_flight_;
  }
  // Wait for the multishot's next connection; no SQE of its own.
  s.id = d.id;
  s.live = true;
  s.op = kOpAccept;
  s.multishot = false;
  s.has_sync_result = false;
  s.listener = li;
  l.waiters.push_back(slot_index);
  ++user_in_flight_;
  return true;
}

bool Engine::PrepareCancel(OpDesc& d) {
  io_uring_sqe* sqe = SqeOrFlush(1);
  if (sqe == nullptr) return false;
  Slot* target = LiveSlot(d.target);
  if (target != nullptr && target->listener >= 0) {
    // An accept waiting on a listener's multishot: it has no request in the kernel to cancel.
    // Take it off the waiters (no connection can be handed to it after this) and complete it
    // with ECANCELED through a NOP: exactly once.
    Slot& s = *target;
    const uint32_t ts = static_cast<uint32_t>(d.target & kSlotMask);
    Listener& l = listeners_[s.listener];
    for (auto it = l.waiters.begin(); it != l.waiters.end(); ++it) {
      if (*it == ts) {
        l.waiters.erase(it);
        break;
      }
    }
    s.listener = -1;
    s.has_sync_result = true;
    s.sync_result = -ECANCELED;
    sqe->opcode = IORING_OP_NOP;
    sqe->user_data = s.id;
    ++in_flight_;
    return true;
  }
  sqe->opcode = IORING_OP_ASYNC_CANCEL;
  sqe->addr = d.target;
  sqe->user_data = kInternalUserData;
  ++in_flight_;
  return true;
}

void Engine::ListenerFdGone(int fd, bool detach) {
  auto it = listener_of_fd_.find(fd);
  if (it == listener_of_fd_.end()) return;
  const uint32_t index = it->second;
  Listener& l = listeners_[index];
  for (int q : l.ready) close(q);
  l.ready.clear();
  if (!detach) return;
  // The close's cancel-by-fd ends the multishot; its last CQE fails the waiters (ECANCELED) and
  // frees the record. Connections it accepts meanwhile are closed (see OnAcceptCqe).
  l.attached = false;
  listener_of_fd_.erase(it);
  MaybeFreeListener(index);
}

void Engine::PushLocal(uint64_t id, int32_t res, bool owns_fd) { local_.push_back(Local{Completion{id, res, 0}, owns_fd}); }

void Engine::FailWaiters(Listener& l, int32_t res) {
  while (!l.waiters.empty()) {
    Slot& s = *slots_[l.waiters.front()];
    l.waiters.pop_front();
    PushLocal(s.id, res, false);
    Release(s);
    if (user_in_flight_ > 0) --user_in_flight_;
  }
}

void Engine::OnAcceptCqe(uint32_t index, int32_t res, bool more) {
  if (index >= listeners_.size() || !listeners_[index].in_use) {
    // Cannot happen (a record lives until its multishot's last CQE); never leak an fd anyway.
    if (res >= 0) close(res);
    return;
  }
  Listener& l = listeners_[index];
  if (!more) {
    l.armed = false;
    if (armed_ > 0) --armed_;
    if (in_flight_ > 0) --in_flight_;
  }
  if (res >= 0) {
    if (shutting_down_ || !l.attached) {
      close(res);  // the listener is closed or the engine shuts down: nobody will take it
    } else if (!l.waiters.empty()) {
      Slot& s = *slots_[l.waiters.front()];
      l.waiters.pop_front();
      PushLocal(s.id, res, true);
      Release(s);
      if (user_in_flight_ > 0) --user_in_flight_;
    } else {
      l.ready.push_back(res);
      if (more && l.ready.size() >= kMaxQueuedAccepts && !l.cancelling) MarkDirty(index);
    }
  }
  if (!more) {
    const bool ours = l.cancelling && res == -ECANCELED;
    l.cancelling = false;
    if (!l.waiters.empty()) {
      if (shutting_down_ || !l.attached) {
        FailWaiters(l, res < 0 ? res : -ECANCELED);
      } else if (res < 0 && !ours) {
        // The listener refused (EBADF, EINVAL: not listening, ENOTSOCK, EMFILE, ...): every
        // waiting accept fails with that error, as a single-shot accept would.
        FailWaiters(l, res);
      } else {
        MarkDirty(index);  // ended without an error (our cancel, CQ overflow): re-arm
      }
    }
    MaybeFreeListener(index);
  }
}

void Engine::MaybeFreeListener(uint32_t index) {
  Listener& l = listeners_[index];
  if (!l.in_use || l.armed || !l.waiters.empty() || !l.ready.empty() || l.dirty) return;
  if (l.attached) {
    auto it = listener_of_fd_.find(l.fd);
    if (it != listener_of_fd_.end() && it->second == index) listener_of_fd_.erase(it);
  }
  l.in_use = false;
  l.attached = false;
  l.fd = -1;
  free_listeners_.push_back(index);
}

void Engine::MarkDirty(uint32_t index) {
  Listener& l = listeners_[index];
  if (l.dirty) return;
  l.dirty = true;
  dirty_listeners_.push_back(index);
}

bool Engine::ServiceListeners() {
  if (dirty_listeners_.empty() || closed_ || shutting_down_) return false;
  bool prepared = false;
  std::vector<uint32_t> todo;
  todo.swap(dirty_listeners_);
  for (size_t k = 0; k < todo.size(); ++k) {
    const uint32_t index = todo[k];
    Listener& l = listeners_[index];
    l.dirty = false;
    if (!l.in_use) continue;
    const bool want_armed = l.attached && (!l.waiters.empty() || l.ready.size() < kMaxQueuedAccepts);
    if (want_armed && !l.armed && (!l.waiters.empty() || !l.ready.empty())) {
      // Re-arm only for a listener in use (waiters, or a queue being drained): an idle one stays
      // off until the next accept operation arms it.
      io_uring_sqe* sqe = ring_.GetSqe();
      if (sqe == nullptr) {
        for (size_t j = k; j < todo.size(); ++j) MarkDirty(todo[j]);
        break;
      }
      sqe->opcode = IORING_OP_ACCEPT;
      sqe->fd = l.fd;
      sqe->accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
      sqe->ioprio = IORING_ACCEPT_MULTISHOT;
      sqe->user_data = kInternalUserData | kListenerTag | static_cast<uint64_t>(index);
      l.armed = true;
      ++armed_;
      ++in_flight_;
      prepared = true;
    } else if (l.armed && !l.cancelling && (!l.attached || (l.waiters.empty() && l.ready.size() >= kMaxQueuedAccepts))) {
      io_uring_sqe* sqe = ring_.GetSqe();
      if (sqe == nullptr) {
        for (size_t j = k; j < todo.size(); ++j) MarkDirty(todo[j]);
        break;
      }
      sqe->opcode = IORING_OP_ASYNC_CANCEL;
      sqe->addr = kInternalUserData | kListenerTag | static_cast<uint64_t>(index);
      sqe->user_data = kInternalUserData;
      l.cancelling = true;
      ++in_flight_;
      prepared = true;
    }
    MaybeFreeListener(index);
  }
  return prepared;
}

size_t Engine::queued_accepts() const {
  size_t n = 0;
  for (const Listener& l : listeners_) n += l.ready.size();
  return n;
}

void Engine::DrainEventFd() {
  // One read takes the whole count and resets it (the eventfd is not EFD_SEMAPHORE); a write after
  // it makes the fd readable again, so the loop polls again. (A second read only ever said EAGAIN:
  // one system call saved per loop turn.)
  uint64_t v;
  ssize_t r;
  do {
    r = read(event_fd_, &v, sizeof(v));
  } while (r < 0 && errno == EINTR);
}

void Engine::Wake() {
  uint64_t one = 1;
  ssize_t r = write(event_fd_, &one, sizeof(one));
  (void)r;  // EAGAIN only when the counter is saturated: then it is readable anyway.
}

int Engine::NewEventFd() {
  if (closed_) return -EBADF;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return -errno;
  extra_fds_.push_back(fd);
  return fd;
}

void Engine::Shutdown(int wait_ms, bool close_owned) {
  if (closed_) return;
  closed_ = true;
  // Connections accepted for nobody: queued on a listener, or handed to an accept whose
  // completion was never reaped. (Ones the multishot accepts from here on are closed by
  // OnAcceptCqe, which sees shutting_down_.)
  for (Listener& l : listeners_) {
    for (int fd : l.ready) close(fd);
    l.ready.clear();
  }
  for (const Local& x : local_) {
    if (x.owns_fd && x.c.res >= 0) close(x.c.res);
  }
  local_.clear();
  if (ring_.fd() >= 0) {
    if (in_flight_ > 0) {
      // One request cancels everything this ring has in flight.
      io_uring_sqe* sqe = ring_.GetSqe();
      if (sqe == nullptr && Enter(false, 0, nullptr) >= 0) sqe = ring_.GetSqe();
      if (sqe != nullptr) {
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->cancel_flags = IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL;
        sqe->user_data = kInternalUserData;
        ++in_flight_;
      }
      // Wait for the kernel to give every buffer back. A cancelled socket operation completes at
      // once; a file read already running in an io-wq worker finishes its copy first.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
      std::vector<Completion> sink(256);
      closed_ = false;  // let Reap run
      shutting_down_ = true;
      while (in_flight_ > 0) {
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) break;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
        __kernel_timespec ts;
        ts.tv_sec = 0;
        ts.tv_nsec = std::min<long long>(left, 10) * 1000000LL;
        int r = Enter(true, 1, &ts);
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN) break;
        while (Reap(sink.data(), sink.size(), 0) > 0) {
        }
      }
      closed_ = true;
      if (in_flight_ > 0) {
        // The kernel still owns some buffers (a request it could not cancel in time). Never free
        // memory it may write into: keep those pins for the life of the process.
        auto* keep = new std::vector<std::shared_ptr<void>>();
        for (const auto& p : slots_) {
          const Slot& s = *p;
          if (!s.live) continue;
          if (s.pin) keep->push_back(s.pin);
          for (auto& q : s.pins) keep->push_back(q);
        }
        // The iovec arrays, paths, sockaddrs and timespecs live in the slots: leak them too.
        // Moving the table moves only the pointers, so every Slot stays where the kernel was
        // told it is.
        new std::vector<std::unique_ptr<Slot>>(std::move(slots_));
      }
    }
    ring_.Close();
  }
  slots_.clear();
  listeners_.clear();
  listener_of_fd_.clear();
  dirty_listeners_.clear();
  free_listeners_.clear();
  armed_ = 0;
  if (event_fd_ >= 0) close(event_fd_);
  event_fd_ = -1;
  for (int fd : extra_fds_) close(fd);
  extra_fds_.clear();
  in_flight_ = 0;
  user_in_flight_ = 0;
  // Torn down with its thread (the environment cleanup hook): the sockets, connections and files
  // handed to the caller that it never closed through us are closed, if their numbers still name
  // the same files (owned_fds.h). Safe for the requests that used them: every one was cancelled
  // and reaped above, or, if the kernel did not let go of it in time, holds its own reference to
  // the file and its buffers were kept (and the ring's exit cancels it). Closing the number only
  // drops the fd table's reference; the peer sees the connection end once the last one goes.
  if (close_owned) owned_.CloseAll();
  else owned_.Clear();
}

// ---------------------------------------------------------------------------------------------
// Probe and helpers

int ProbeIoUring(std::string* detail) {
  if (FILE* f = fopen("/proc/sys/kernel/io_uring_disabled", "r")) {
    int v = 0;
    if (fscanf(f, "%d", &v) == 1 && v == 2) {
      fclose(f);
      *detail = "io_uring is disabled system-wide (/proc/sys/kernel/io_uring_disabled = 2)";
      return -EPERM;
    }
    fclose(f);
  }
  utsname u;
  if (uname(&u) == 0) {
    int major = 0, minor = 0;
    if (sscanf(u.release, "%d.%d", &major, &minor) == 2 && (major < 5 || (major == 5 && minor < 19))) {
      *detail = std::string("kernel ") + u.release +
                " is older than 5.19 (needed for multishot accept and cancel-by-fd)";
      return -ENOSYS;
    }
  }
  Ring ring;
  int r = ring.Init(4, 8, 2, false, 0);
  if (r < 0) {
    if (r == -ENOSYS) {
      *detail = "io_uring_setup failed with ENOSYS: this kernel was built without io_uring";
    } else if (r == -EPERM) {
      *detail =
          "io_uring_setup failed with EPERM: blocked by a seccomp profile (Docker's default, for example), "
          "by io_uring_disabled = 1 for this user's group, or by an LSM";
    } else if (r == -ENOMEM) {
      *detail = "io_uring_setup failed with ENOMEM: the locked-memory limit (ulimit -l) is too low for the ring";
    } else {
      *detail = std::string("io_uring_setup failed: ") + strerror(-r);
    }
    return r;
  }
  // Every opcode the backend uses must be there.
  const size_t sz = sizeof(io_uring_probe) + 256 * sizeof(io_uring_probe_op);
  std::vector<char> buf(sz, 0);
  auto* probe = reinterpret_cast<io_uring_probe*>(buf.data());
  r = ring.Register(IORING_REGISTER_PROBE, probe, 256);
  if (r < 0) {
    *detail = std::string("IORING_REGISTER_PROBE failed: ") + strerror(-r);
    return r;
  }
  static const struct {
    int op;
    const char* name;
  } kNeeded[] = {
      {IORING_OP_NOP, "NOP"},         {IORING_OP_READV, "READV"},     {IORING_OP_WRITEV, "WRITEV"},
      {IORING_OP_FSYNC, "FSYNC"},     {IORING_OP_TIMEOUT, "TIMEOUT"}, {IORING_OP_ACCEPT, "ACCEPT"},
      {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"}, {IORING_OP_CONNECT, "CONNECT"}, {IORING_OP_OPENAT, "OPENAT"},
      {IORING_OP_CLOSE, "CLOSE"},     {IORING_OP_READ, "READ"},       {IORING_OP_WRITE, "WRITE"},
      {IORING_OP_SEND, "SEND"},       {IORING_OP_RECV, "RECV"},       {IORING_OP_SHUTDOWN, "SHUTDOWN"},
  };
  for (const auto& n : kNeeded) {
    if (n.op > probe->last_op || !(probe->ops[n.op].flags & IO_URING_OP_SUPPORTED)) {
      *detail = std::string("this kernel's io_uring lacks IORING_OP_") + n.name;
      return -ENOSYS;
    }
  }
  return 0;
}

int SocketAddressFor(int fd, const std::string& host, int port, sockaddr_storage* out, socklen_t* len) {
  memset(out, 0, sizeof(*out));
  *len = 0;
  if (port < 0 || port > 65535) return EINVAL;
  // inet_pton reads up to the first NUL: "127.0.0.1\0anything" would connect to 127.0.0.1.
  if (host.find('\0') != std::string::npos) return EINVAL;
  Op op;
  op.fd = fd;
  op.b = port;
  op.path = host;
  const int r = ParseAddress(&op);
  if (r < 0) return -r;
  if (op.addrlen == 0 || op.addrlen > sizeof(*out)) return EINVAL;
  memcpy(out, &op.addr, op.addrlen);
  *len = op.addrlen;
  return 0;
}

__kernel_timespec TimespecOfMs(double ms) {
  __kernel_timespec ts{};
  if (!(ms > 0)) return ts;  // negative, zero or NaN: expires at once
  const double secs = std::floor(ms / 1000.0);
  if (secs >= static_cast<double>(kMaxTimeoutSec)) {
    ts.tv_sec = kMaxTimeoutSec;
    return ts;
  }
  ts.tv_sec = static_cast<int64_t>(secs);
  const double ns = (ms - secs * 1000.0) * 1e6;
  ts.tv_nsec = ns <= 0 ? 0 : ns >= 999999999.0 ? 999999999 : static_cast<long long>(ns);
  return ts;
}

}  // namespace miniss
