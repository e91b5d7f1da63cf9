// The epoll reactor: the readiness model behind @miniss/backend-epoll. Plain C++, no V8.
//
// How an operation runs (the "try first, wait only on EAGAIN" design of mio/tokio and libuv):
//
// - Socket operations (accept, connect, recv, send, and read/write on a socket, pipe or eventfd)
//   are attempted with a non-blocking system call the moment they are submitted. Only when the
//   kernel says EAGAIN (or EINPROGRESS for connect) does the op join its fd's wait queue (one FIFO
//   for the read side, one for the write side, so a recv and a send, or several accepts, can be
//   pending on one socket at once).
// - A waiting fd is registered with epoll once, edge-triggered, for both directions
//   (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET). An edge runs the fd's queue head-first until the
//   head gets EAGAIN again. No epoll_ctl per operation: an echo server pays one epoll_ctl per
//   connection, not per request. Edge-triggering is safe here because no readiness is ever
//   remembered: every op tries its system call first, and an op only waits after an EAGAIN that
//   happened after the fd was registered, so the next state change produces the edge it needs.
// - Any fd may be closed behind our back (fs.closeSync, its owner in Node) and its number reused
//   by a file made elsewhere. Waiting ops are bound to the file that was registered, not to the
//   number: see "Closed behind our back" in epoll.cc for how that is checked (a generation in
//   each registration, the registered file's st_dev/st_ino, and which transitions pay an fstat).
//   An fd this reactor did not create itself (accept/socket/eventfd) is re-armed with
//   EPOLL_CTL_MOD whenever a wait starts on it while idle, falling back to ADD on ENOENT (its
//   registration had vanished).
// - Regular files and block devices are always "ready" to epoll, so reads try
//   preadv2(RWF_NOWAIT) first (served from the page cache without blocking) and everything that
//   would block (cache misses, writes, fsync, open, close of non-sockets) goes to a small native
//   thread pool whose completions come back through an eventfd in the epoll set.
// - Timeouts live in an ordered set; one timerfd (also in the epoll set) is armed for the earliest.
//
// Completions are collected in a list and handed out in batches by Reap(). The epoll fd itself is
// the one pollable fd that Node's loop watches (a uv_poll_t in binding.cc).
#ifndef MINISS_EPOLL_H_
#define MINISS_EPOLL_H_

#include <sys/epoll.h>
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

constexpr uint8_t kEmptyAfterShortRead = 1;
constexpr uint8_t kEmptyAfterEagain = 2;

// PoolFdState: the pool-op count, held close and generation of the fd (pool_book.h).
struct FdState : PoolFdState {
  Op* rhead = nullptr;  // read-side wait queue (accept, recv, read)
  Op* rtail = nullptr;
  Op* whead = nullptr;  // write-side wait queue (connect, send, write)
  Op* wtail = nullptr;
  bool registered = false;  // in the epoll set (as far as we know), with `gen` in its data
  // Created by this reactor (socket/accept/eventfd): only the backend is meant to close it, so the
  // per-request paths take its registration on trust (see "Closed behind our back" in epoll.cc).
  bool trusted = false;
  // The file the registration was made for (fstat when it was made), valid while `registered`:
  // a waiting op belongs to this file, whatever the number refers to by the time it runs.
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool is_socket = false;   // created by socket()/accept4(): close() is cheap and done inline
  // Trusted, registered fds only: the receive queue was empty at the last read-side attempt and
  // no read-side event has arrived since, so the next recv/accept may wait without trying first.
  // kEmptyAfterEagain: recv/accept got EAGAIN; the next one always waits (trying again would be
  // another EAGAIN). kEmptyAfterShortRead: a recv returned fewer bytes than asked for, which TCP
  // does only when it has nothing more queued; whether the next recv waits depends on the
  // socket's recv_score. Saves the EAGAIN system call a request/response protocol
  // pays on nearly every recv when the server is ahead of its clients. Cleared by every
  // read-side event (EPOLLIN/PRI/RDHUP/HUP/ERR) and by shutdown(); edge-triggering guarantees an
  // event for any data (or FIN) that arrives after the attempt that found the queue empty. Never
  // set by a recv that returned 0 (end of stream must keep reading 0 at once) or failed.
  uint8_t read_wait = 0;
  // Whether recvs tried at submit on this socket found data (+1) or EAGAIN (-1), clamped to
  // [-16, 16]. A connection whose peer is slower than us (each next request not there yet when
  // the response went out) goes negative, and a recv after a short read then waits for the edge
  // without trying; on a saturated server (the next request is already queued by the time it
  // gets to the connection) it stays positive and recvs are tried first, which costs no
  // event-loop round trip. While negative, one in 8 such recvs (counted per reactor) is tried
  // anyway, so the score follows a change of regime.
  int8_t recv_score = 0;
  // TCP urgent data was seen on this socket (EPOLLPRI). TCP ends a read at the urgent mark even
  // when more bytes are queued behind it, so from then on a short read proves nothing and only
  // EAGAIN marks the read side empty. The PRI event of an urgent segment is always processed
  // after or before the read that stopped at its mark, never lost: in both orders the flag is
  // set before the next recv is decided on.
  bool urgent = false;
};

// Counters for tests and benchmarks (plain numbers, this thread only).
struct ReactorStats {
  uint64_t submitted = 0;      // ops handed to Submit
  uint64_t immediate = 0;      // finished inside Submit (the first system call settled them)
  uint64_t waited = 0;         // had to wait for readiness (joined a wait queue)
  uint64_t pool = 0;           // handed to the thread pool
  uint64_t nowait_reads = 0;   // file reads served by preadv2(RWF_NOWAIT) from the page cache
  uint64_t epoll_ctl = 0;      // epoll_ctl calls (ADD/MOD/DEL)
  uint64_t epoll_wait = 0;     // epoll_wait calls
  uint64_t skipped = 0;        // recv/accept queued without a system call (see FdState::read_wait)
  uint64_t stale = 0;          // registrations found to be for a file closed behind our back
};

class EpollReactor : public PoolOpBook<EpollReactor, FdState> {
 public:
  struct Options {
    int max_events = 256;   // events per epoll_wait
    int pool_threads = 2;   // thread pool size (started lazily)
  };

  // Creates the epoll fd, its eventfd and timerfd. On failure returns nullptr and sets *err (-errno).
  static std::unique_ptr<EpollReactor> Create(const Options& options, int* err);
  ~EpollReactor();
  EpollReactor(const EpollReactor&) = delete;
  EpollReactor& operator=(const EpollReactor&) = delete;

  // The fd Node's loop polls: readable whenever Process() has something to do.
  int fd() const { return epfd_; }

  // Starts op: attempts it at once, or queues it on its fd, the timer set or the pool. The op may
  // be complete when this returns. The reactor owns op until Reap hands its result out.
  void Submit(Op* op);

  // Cancels the op with this id. False if unknown or already complete; true if a cancellation
  // was made: the op completes with -ECANCELED, or, if a pool thread is inside its read, write
  // or close, with its result. A running open or fsync is abandoned to its pool thread and
  // completes with -ECANCELED at once (an fd the open still returns is closed by that thread);
  // an open that finished but was not reaped yet has its fd closed and reports -ECANCELED.
  bool Cancel(uint64_t id);

  // Waits up to timeout_ms (0: not at all, -1: forever) for events and dispatches them, retrying
  // until something completes or the time is up. Returns the number of ready completions.
  size_t Process(int timeout_ms);

  // A non-blocking eventfd owned by this reactor (closed by Shutdown unless closed by a close op).
  // Returns the fd or -errno.
  int CreateEventFd();

  // Cancels everything and stops the pool: a running open, close or fsync is abandoned to its
  // thread at once, a running read or write is waited for up to kShutdownGrace and then abandoned
  // too (see thread_pool.h). Closes fds produced by operations nobody will reap, releases every
  // other op and closes the epoll, event and timer fds. With `close_owned` (the backend goes down
  // with its thread: the environment cleanup hook) it also closes the sockets, accepted
  // connections and opened files it made for the caller that no close op has closed and that are
  // still the same files (owned_fds.h). Idempotent.
  void Shutdown(bool close_owned = false);
  static constexpr std::chrono::milliseconds kShutdownGrace{1000};
  bool closed() const { return closed_; }
  const ReactorStats& stats() const { return stats_; }

 private:
  explicit EpollReactor(const Options& options);
  int Init();

  bool IsInternal(int fd) const { return fd == epfd_ || fd == evfd_ || fd == tfd_; }
  friend class PoolOpBook<EpollReactor, FdState>;  // calls CloseNow and ToPool
  using Pool = PoolOpBook<EpollReactor, FdState>;

  void Adopt(int fd, bool is_socket);  // a new fd from socket/accept/eventfd

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
  void NoteRecv(FdState* st, const Op* op, int64_t r);
  bool SameFile(const FdState* st, int fd, const struct stat* known);
  FdState* Waiters(int fd, bool read_side, const struct stat* known);
  FdState* Stale(int fd);
  // `known`: the fd's fstat when the caller has one (saves making it again), else nullptr.
  void Wait(Op* op, bool read_side, const struct stat* known);
  void RunQueue(FdState* st, bool read_side);

  void ArmTimer();
  void FireTimers();
  void DrainPool();
  void Notify();

  Options options_;
  ReactorStats stats_;
  int epfd_ = -1;
  int evfd_ = -1;
  int tfd_ = -1;
  bool closed_ = false;
  std::vector<struct epoll_event> events_;
  std::vector<int> owned_eventfds_;
  std::set<std::pair<uint64_t, Op*>> timers_;
  uint64_t armed_ns_ = 0;
  uint32_t recv_probe_ = 0;  // see FdState::recv_score
};

}  // namespace miniss

#endif  // MINISS_EPOLL_H_
