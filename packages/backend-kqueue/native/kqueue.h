// The kqueue reactor behind @miniss/backend-kqueue (macOS, FreeBSD, OpenBSD, NetBSD). Plain C++,
// no V8. A port of the epoll reactor (packages/backend-epoll/native/epoll.h), same design:
//
// - Socket operations are tried with a non-blocking system call when submitted; only on EAGAIN
//   (EINPROGRESS for connect) does the op join its fd's read-side or write-side FIFO.
// - A waiting fd gets the filter of the side that waits (EVFILT_READ or EVFILT_WRITE), added once
//   with EV_ADD|EV_CLEAR (edge-triggered) and EV_RECEIPT so the change reports its own error. Only
//   the needed side is added: EVFILT_WRITE on a listening socket is refused on some systems. Safe for the same reason
//   as on epoll: no readiness is remembered, an op only waits after an EAGAIN.
// - close() removes an fd's knotes by itself, so an fd this reactor did not create may vanish
//   from the set behind our back; it is re-added (EV_ADD on an existing knote just updates it)
//   whenever a wait starts on it while idle. Waiting ops belong to the file that was registered,
//   not to the number: see "Closed behind our back" in kqueue.cc.
// - Files: the BSDs have no preadv2(RWF_NOWAIT), so every regular-file read, write, fsync, open
//   and non-socket close runs on the thread pool. As on epoll, a close waits for the pool ops of
//   its fd submitted before it (PoolOpBook, pool_book.h), and a pool job stuck in its system call is
//   abandoned to its thread by a cancel (open, fsync) or by Shutdown (thread_pool.h).
// - Pool completions wake the loop with EVFILT_USER/NOTE_TRIGGER (no eventfd); timeouts use one
//   one-shot EVFILT_TIMER armed for the earliest deadline.
//
// STATUS: run on Linux against kqemu (test/kqemu, a test-only emulation on epoll) and
// compile-checked against test/shim; never run on macOS, a BSD or libkqueue. See README.md.
#ifndef MINISS_KQUEUE_H_
#define MINISS_KQUEUE_H_

#include <sys/types.h>
#include <sys/event.h>
#include <sys/stat.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "miniss/op.h"  // @miniss/native-common
#include "miniss/op_book.h"
#include "miniss/pool_book.h"
#include "miniss/thread_pool.h"

namespace miniss {

// PoolFdState: the pool-op count, held close and generation of the fd (pool_book.h).
struct FdState : PoolFdState {
  Op* rhead = nullptr;  // read-side wait queue (accept, recv, read)
  Op* rtail = nullptr;
  Op* whead = nullptr;  // write-side wait queue (connect, send, write)
  Op* wtail = nullptr;
  bool rreg = false;  // EVFILT_READ added (as far as we know)
  bool wreg = false;  // EVFILT_WRITE added
  // Created by this reactor (socket/accept): only the backend is meant to close it, so the
  // per-request paths take its knotes on trust (see "Closed behind our back" in kqueue.cc).
  bool trusted = false;
  // The file the knotes were added for (fstat when they were), valid while rreg or wreg.
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool is_socket = false;   // created by socket()/accept(): close() is cheap and done inline
  bool nosigpipe = false;   // SO_NOSIGPIPE set by this reactor (macOS, where send() has no MSG_NOSIGNAL)
};

struct ReactorStats {
  uint64_t submitted = 0;
  uint64_t immediate = 0;
  uint64_t waited = 0;
  uint64_t pool = 0;
  uint64_t kevent_changes = 0;  // kevent() calls that changed the set
  uint64_t kevent_wait = 0;     // kevent() calls that waited
};

class KqueueReactor : public PoolOpBook<KqueueReactor, FdState> {
 public:
  struct Options {
    int max_events = 256;
    int pool_threads = 2;
  };

  static std::unique_ptr<KqueueReactor> Create(const Options& options, int* err);
  ~KqueueReactor();
  KqueueReactor(const KqueueReactor&) = delete;
  KqueueReactor& operator=(const KqueueReactor&) = delete;

  // The kqueue fd: Node's loop polls it (a kqueue fd is readable when events are pending).
  int fd() const { return kq_; }

  void Submit(Op* op);

  // Cancels the op with this id. False if unknown or already complete; true if a cancellation
  // was made: the op completes with -ECANCELED, or, if a pool thread is inside its read, write
  // or close, with its result. A running open or fsync is abandoned to its pool thread and
  // completes with -ECANCELED at once (an fd the open still returns is closed by that thread);
  // an open that finished but was not reaped yet has its fd closed and reports -ECANCELED.
  bool Cancel(uint64_t id);

  size_t Process(int timeout_ms);

  // Cancels everything and stops the pool: a running open, close or fsync is abandoned to its
  // thread at once, a running read or write is waited for up to kShutdownGrace and then abandoned
  // too (see thread_pool.h). Closes fds produced by operations nobody will reap, releases every
  // other op and closes the kqueue. With `close_owned` (the backend goes down with its thread:
  // the environment cleanup hook) it also closes the sockets, accepted connections and opened
  // files it made for the caller that no close op has closed and that are still the same files
  // (owned_fds.h). Idempotent.
  void Shutdown(bool close_owned = false);
  static constexpr std::chrono::milliseconds kShutdownGrace{1000};
  bool closed() const { return closed_; }
  const ReactorStats& stats() const { return stats_; }

 private:
  explicit KqueueReactor(const Options& options);
  int Init();

  bool IsInternal(int fd) const { return fd == kq_; }
  friend class PoolOpBook<KqueueReactor, FdState>;  // calls CloseNow and ToPool

  void Adopt(int fd, bool is_socket);  // a new fd from socket/accept

  void SubmitInner(Op* op);
  void ToPool(Op* op);
  void StartRead(Op* op);
  void StartWrite(Op* op);
  void StartSocketOp(Op* op, bool read_side);
  void StartClose(Op* op);
  void CloseNow(Op* op);  // issues a close no pool op of its fd holds back any more
  void StartTimer(Op* op);
  void StartSyncSocketCall(Op* op);

  int64_t Attempt(Op* op);
  int EnsureNoSigPipe(int fd);
  int Register(int fd, bool read_side);
  static bool SameFile(const FdState* st, int fd, const struct stat* known);
  FdState* Waiters(int fd, bool read_side, const struct stat* known);
  // `known`: the fd's fstat when the caller has one (saves making it again), else nullptr.
  void Wait(Op* op, bool read_side, const struct stat* known);
  void RunQueue(FdState* st, bool read_side);

  void ArmTimer();
  void DisarmTimer();
  void FireTimers();

  Options options_;
  ReactorStats stats_;
  int kq_ = -1;
  bool closed_ = false;
  std::vector<struct kevent> events_;
  std::set<std::pair<uint64_t, Op*>> timers_;
  uint64_t armed_ns_ = 0;
};

}  // namespace miniss

#endif  // MINISS_KQUEUE_H_
