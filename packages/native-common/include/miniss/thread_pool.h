// A small pool of native threads for the operations readiness cannot make non-blocking.
//
// epoll (and kqueue) report regular files as always ready, so a read that misses the page cache,
// a write that has to allocate page-cache pages, fsync, open and close would block the thread that
// runs Node's event loop. Those go to this pool. It is deliberately separate from libuv's pool
// (UV_THREADPOOL_SIZE, shared with dns.lookup, zlib, crypto and node:fs): a slow disk must not
// stall name resolution, and libuv offers no API to queue work from plain C++ without V8 anyway.
//
// Threads start lazily on the first job, so a backend that only does sockets never creates any.
// A finished op goes onto a done list and `notify` is called (the reactor writes its eventfd /
// triggers its EVFILT_USER event, which wakes the loop thread through its epoll/kqueue set).
//
// Jobs that never end. A system call can block for as long as it likes: open(2) of a FIFO until a
// writer comes, anything on a hung NFS or FUSE mount. Such a job cannot be stopped, so instead of
// waiting for it (which hung close(), runtime shutdown and worker.terminate()), the pool can
// *abandon* it: the pool takes the op over from the reactor, the thread running it is detached
// and replaced by a fresh one (so a stuck job does not starve the pool), and when the system call
// ever returns that thread closes the fd it produced (open), frees the op and exits (an op with
// buffers is leaked instead, pins and all: see Run in thread_pool.cc). It shares ownership of the pool's state (a shared_ptr), never touches the
// reactor (it does not notify), and keeps the addon's shared library loaded (RTLD_NODELETE): Node
// unloads a worker's addons when the worker exits, and this thread still runs code from it.
//
// Why not interrupt the system call with a signal (pthread_kill with a no-op handler installed
// without SA_RESTART)? It needs a process-wide handler for a signal number nobody else uses, in a
// process where Node, libuv, V8's profiler and any other addon install their own; a signal sent
// just before the thread enters the call is lost, so it has to be re-sent in a loop; and it only
// helps with interruptible sleeps: a read from a hung NFS hard mount sleeps in TASK_KILLABLE and
// ignores it. libuv's own pool has the same limit and does not try either. Abandoning works for
// every kind of stuck call and keeps everything memory-safe; its cost is a thread per stuck job
// (bounded by kMaxAbandoned per pool) and, for a job with buffers, that the kernel may still fill
// or read the caller's memory after the caller was told the op is gone, which is why jobs with
// buffers are only abandoned at shutdown, after a grace period, never by a cancel.
#ifndef MINISS_THREAD_POOL_H_
#define MINISS_THREAD_POOL_H_

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "op.h"

namespace miniss {

class ThreadPool {
 public:
  // At most this many abandoned jobs per pool (each holds a thread): past it, a cancel leaves a
  // running job alone (it completes with its own result) instead of starting yet another thread.
  static constexpr size_t kMaxAbandoned = 64;

  ThreadPool(size_t threads, std::function<void()> notify);
  // Shutdown(withdrawn, finished) if not shut down yet: waits for running jobs.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues op (op->where becomes kPool; pool threads never write `where`). Returns 0, or -errno when no thread could be
  // started at all (EAGAIN from pthread_create): the caller then completes the op with it.
  int Post(Op* op);

  // Withdraws op if no thread has started it yet. Returns true if it was withdrawn.
  bool Withdraw(Op* op);

  enum class CancelResult {
    kFinished,   // not queued, not running: finished, on the done list or taken already
    kWithdrawn,  // was queued: removed, never started; the caller completes it
    kRunning,    // a thread is inside its system call; it completes with its own result
    kAbandoned,  // was running: the pool owns op now and frees it; the caller must forget it
  };
  // Withdraws op if queued. If it is running and `abandon_running` is true, abandons it (see the
  // file comment): from the moment this returns kAbandoned, op may be freed by its thread at any
  // time, so the caller must have unlinked it from everything it walks and copied what it still
  // needs *before* the call.
  CancelResult Cancel(Op* op, bool abandon_running);

  // Appends every finished op to `out` (the caller completes them).
  void TakeDone(std::vector<Op*>* out);

  // Stops the pool: queued ops are appended to `withdrawn` (not run), running ones are waited
  // for (however long their system call takes) and appended to `finished`. Idempotent.
  void Shutdown(std::vector<Op*>* withdrawn, std::vector<Op*>* finished);

  // Stops the pool without waiting for stuck jobs: queued ops are appended to `withdrawn`; running
  // jobs without buffers (open, close, fsync) are abandoned at once, those with buffers are waited
  // for up to `grace` and then abandoned; every abandoned op is appended to `abandoned` (owned by
  // the pool from then on: the caller must have unlinked it before calling, and must neither free
  // nor touch it). Finished ops are appended to `finished`. Idempotent.
  void Shutdown(std::vector<Op*>* withdrawn, std::vector<Op*>* finished, std::vector<Op*>* abandoned,
                std::chrono::milliseconds grace);

 private:
  struct State;
  struct Worker;
  static void Run(std::shared_ptr<State> s, Worker* self);
  int StartThreads();  // with the state's mutex held
  void ShutdownImpl(std::vector<Op*>* withdrawn, std::vector<Op*>* finished, std::vector<Op*>* abandoned,
                    std::chrono::milliseconds grace);

  std::shared_ptr<State> s_;  // shared with every thread, which may outlive this object
};

}  // namespace miniss

#endif  // MINISS_THREAD_POOL_H_
