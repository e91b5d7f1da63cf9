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
#ifndef MINISS_THREAD_POOL_H_
#define MINISS_THREAD_POOL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "op.h"

namespace miniss {

class ThreadPool {
 public:
  ThreadPool(size_t threads, std::function<void()> notify);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues op (op->where becomes kPool; pool threads never write `where`). Returns 0, or -errno when no thread could be
  // started at all (EAGAIN from pthread_create): the caller then completes the op with it.
  int Post(Op* op);

  // Withdraws op if no thread has started it yet. Returns true if it was withdrawn.
  bool Withdraw(Op* op);

  // Appends every finished op to `out` (the caller completes them).
  void TakeDone(std::vector<Op*>* out);

  // Stops the pool: queued ops are appended to `withdrawn` (not run), running ones are waited
  // for (a system call in progress cannot be interrupted) and appended to `finished`. Idempotent.
  void Shutdown(std::vector<Op*>* withdrawn, std::vector<Op*>* finished);

 private:
  void Worker();
  int StartThreads();  // with mu_ held

  const size_t max_threads_;
  const std::function<void()> notify_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op*> queue_;
  std::vector<Op*> done_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
};

}  // namespace miniss

#endif  // MINISS_THREAD_POOL_H_
