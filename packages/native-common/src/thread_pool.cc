#include "miniss/thread_pool.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <list>
#include <mutex>
#include <system_error>
#include <thread>

namespace miniss {

namespace {

// Whether the kernel reads or writes caller memory for this op (see the file comment of the
// header: only buffer-less jobs are abandoned without waiting).
bool HasBuffers(const Op* op) {
  return op->code == kRead || op->code == kReadv || op->code == kWrite || op->code == kWritev;
}

}  // namespace

struct ThreadPool::Worker {
  std::thread thread;       // detached once abandoned, joined by Shutdown otherwise
  Op* job = nullptr;        // the op inside RunBlocking, nullptr while idle
  bool abandoned = false;   // job belongs to the pool: free it afterwards and exit
};

struct ThreadPool::State {
  State(size_t threads, std::function<void()> n) : max_threads(threads == 0 ? 1 : threads), notify(std::move(n)) {}
  const size_t max_threads;
  const std::function<void()> notify;
  std::mutex mu;
  std::condition_variable work_cv;  // a job was queued, or the pool is stopping
  std::condition_variable idle_cv;  // a running job finished (Shutdown waits for it)
  std::deque<Op*> queue;
  std::vector<Op*> done;
  std::list<Worker> workers;  // stable addresses; an abandoned worker erases its own entry
  size_t serving = 0;         // workers not holding an abandoned job: at most max_threads
  size_t abandoned = 0;       // workers still inside an abandoned job
  bool stopping = false;

  // Detaches w, which is running `w.job`, from the pool (with mu held).
  void Abandon(Worker& w) {
    w.abandoned = true;
    w.thread.detach();
    serving--;
    abandoned++;
    // Every binding pins its library at module init already; again here so that the pool never
    // depends on that (op.h): the detached thread returns into this library's code.
    PinThisLibrary();
  }
};

ThreadPool::ThreadPool(size_t threads, std::function<void()> notify)
    : s_(std::make_shared<State>(threads, std::move(notify))) {}

ThreadPool::~ThreadPool() {
  std::vector<Op*> ignored_withdrawn, ignored_finished;
  Shutdown(&ignored_withdrawn, &ignored_finished);
}

int ThreadPool::StartThreads() {
  // Pool threads must never take a signal meant for the process (SIGINT, SIGTERM, SIGCHLD...):
  // Node handles those on the main thread, so block everything while spawning (the new threads
  // inherit the mask) and restore the caller's mask afterwards.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = 0;
  State* s = s_.get();
  while (s->serving < s->max_threads) {
    Worker* w = &*s->workers.emplace(s->workers.end());
    try {
      // The thread blocks on mu (held by our caller) before it looks at its entry.
      w->thread = std::thread(Run, s_, w);
    } catch (const std::system_error& e) {
      s->workers.pop_back();
      err = e.code().value() != 0 ? e.code().value() : EAGAIN;
      break;
    }
    s->serving++;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  // Some threads are enough to make progress; none is an error the op reports (abandoned threads
  // do not count: they may never come back).
  return s->serving == 0 ? -(err != 0 ? err : EAGAIN) : 0;
}

int ThreadPool::Post(Op* op) {
  std::lock_guard<std::mutex> lock(s_->mu);
  if (s_->stopping) return -ECANCELED;
  if (s_->serving < s_->max_threads) {
    int r = StartThreads();
    if (r < 0) return r;
  }
  op->where = Where::kPool;
  s_->queue.push_back(op);
  s_->work_cv.notify_one();
  return 0;
}

bool ThreadPool::Withdraw(Op* op) {
  std::lock_guard<std::mutex> lock(s_->mu);
  for (auto it = s_->queue.begin(); it != s_->queue.end(); ++it) {
    if (*it == op) {
      s_->queue.erase(it);
      return true;
    }
  }
  return false;
}

ThreadPool::CancelResult ThreadPool::Cancel(Op* op, bool abandon_running) {
  std::lock_guard<std::mutex> lock(s_->mu);
  for (auto it = s_->queue.begin(); it != s_->queue.end(); ++it) {
    if (*it == op) {
      s_->queue.erase(it);
      return CancelResult::kWithdrawn;
    }
  }
  for (Worker& w : s_->workers) {
    if (w.job != op || w.abandoned) continue;
    if (!abandon_running || s_->stopping || s_->abandoned >= kMaxAbandoned) return CancelResult::kRunning;
    s_->Abandon(w);
    // A replacement, so the jobs behind the stuck one still run. Failing to start one is not
    // this op's error: the next Post tries again (and reports it if no thread is left at all).
    if (!s_->queue.empty()) (void)StartThreads();
    return CancelResult::kAbandoned;
  }
  return CancelResult::kFinished;
}

void ThreadPool::TakeDone(std::vector<Op*>* out) {
  std::lock_guard<std::mutex> lock(s_->mu);
  out->insert(out->end(), s_->done.begin(), s_->done.end());
  s_->done.clear();
}

void ThreadPool::Run(std::shared_ptr<State> s, Worker* self) {
  std::unique_lock<std::mutex> lock(s->mu);
  for (;;) {
    s->work_cv.wait(lock, [&s] { return s->stopping || !s->queue.empty(); });
    if (s->queue.empty()) return;  // stopping and nothing left that was not withdrawn
    Op* op = s->queue.front();
    s->queue.pop_front();
    self->job = op;
    lock.unlock();
    RunBlocking(op);
    lock.lock();
    self->job = nullptr;
    if (self->abandoned) {
      // Nobody will reap this op, and the reactor that posted it may be gone (with the fd notify_
      // writes to): close what it produced, free it, and end this (detached) thread. Erasing our
      // entry destroys `self`, so nothing below may touch it.
      s->abandoned--;
      s->workers.remove_if([self](const Worker& w) { return &w == self; });
      lock.unlock();
      if (ProducesFd(op->code) && op->result >= 0) close(static_cast<int>(op->result));
      // An op with buffers is leaked on purpose, pins and all: dropping a pin frees the
      // ArrayBuffer's memory through the allocator of the isolate that made it, and the main
      // thread's isolate does not share ownership of its allocator (workers' do), so at process
      // teardown that could be a use after free. Only ops stuck past the shutdown grace get here.
      if (!HasBuffers(op)) delete op;
      return;
    }
    s->done.push_back(op);
    // Notify with the lock held: Shutdown() destroys nothing notify_ uses before joining us.
    s->notify();
    s->idle_cv.notify_all();
  }
}

void ThreadPool::Shutdown(std::vector<Op*>* withdrawn, std::vector<Op*>* finished) {
  ShutdownImpl(withdrawn, finished, nullptr, std::chrono::milliseconds(0));
}

void ThreadPool::Shutdown(std::vector<Op*>* withdrawn, std::vector<Op*>* finished, std::vector<Op*>* abandoned,
                          std::chrono::milliseconds grace) {
  ShutdownImpl(withdrawn, finished, abandoned, grace);
}

void ThreadPool::ShutdownImpl(std::vector<Op*>* withdrawn, std::vector<Op*>* finished, std::vector<Op*>* abandoned,
                              std::chrono::milliseconds grace) {
  State* s = s_.get();
  std::vector<std::thread> threads;
  {
    std::unique_lock<std::mutex> lock(s->mu);
    if (s->stopping) return;  // idempotent: the first call took everything
    s->stopping = true;
    withdrawn->insert(withdrawn->end(), s->queue.begin(), s->queue.end());
    s->queue.clear();
    s->work_cv.notify_all();
    if (abandoned != nullptr) {
      const auto give_up = [&](bool with_buffers) {
        for (Worker& w : s->workers) {
          if (w.job == nullptr || w.abandoned || (HasBuffers(w.job) && !with_buffers)) continue;
          abandoned->push_back(w.job);
          s->Abandon(w);
        }
      };
      // Nothing of the caller's is at stake in an open, close or fsync: give them up at once (an
      // open of a FIFO with no writer never returns). A read or write may still be touching the
      // caller's buffers, and a normal disk answers within milliseconds, so wait for those (the
      // caller then sees their real outcome, and close() keeps its meaning: afterwards the kernel
      // no longer touches the buffers) unless they take longer than `grace`.
      give_up(false);
      s->idle_cv.wait_for(lock, grace, [s] {
        for (const Worker& w : s->workers) {
          if (w.job != nullptr && !w.abandoned) return false;
        }
        return true;
      });
      give_up(true);
    }
    for (Worker& w : s->workers) {
      if (!w.abandoned && w.thread.joinable()) threads.push_back(std::move(w.thread));
    }
  }
  // Without `abandoned`, a thread inside a blocking system call finishes it first; its op's
  // buffers stay pinned until then because the op is still owned by the reactor.
  for (auto& t : threads) t.join();
  std::lock_guard<std::mutex> lock(s->mu);
  finished->insert(finished->end(), s->done.begin(), s->done.end());
  s->done.clear();
}

}  // namespace miniss
