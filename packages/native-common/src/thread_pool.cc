#include "miniss/thread_pool.h"

#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <system_error>

namespace miniss {

ThreadPool::ThreadPool(size_t threads, std::function<void()> notify)
    : max_threads_(threads == 0 ? 1 : threads), notify_(std::move(notify)) {}

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
  while (threads_.size() < max_threads_) {
    try {
      threads_.emplace_back([this] { Worker(); });
    } catch (const std::system_error& e) {
      err = e.code().value() != 0 ? e.code().value() : EAGAIN;
      break;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  // Some threads are enough to make progress; none is an error the op reports.
  return threads_.empty() ? -(err != 0 ? err : EAGAIN) : 0;
}

int ThreadPool::Post(Op* op) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return -ECANCELED;
  if (threads_.size() < max_threads_) {
    int r = StartThreads();
    if (r < 0) return r;
  }
  op->where = Where::kPool;
  queue_.push_back(op);
  cv_.notify_one();
  return 0;
}

bool ThreadPool::Withdraw(Op* op) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (*it == op) {
      queue_.erase(it);
      return true;
    }
  }
  return false;
}

void ThreadPool::TakeDone(std::vector<Op*>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  out->insert(out->end(), done_.begin(), done_.end());
  done_.clear();
}

void ThreadPool::Worker() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping and nothing left that was not withdrawn
    Op* op = queue_.front();
    queue_.pop_front();
    lock.unlock();
    RunBlocking(op);
    lock.lock();
    done_.push_back(op);
    // Notify with the lock held: Shutdown() destroys nothing notify_ uses before joining us.
    notify_();
  }
}

void ThreadPool::Shutdown(std::vector<Op*>* withdrawn, std::vector<Op*>* finished) {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    withdrawn->insert(withdrawn->end(), queue_.begin(), queue_.end());
    queue_.clear();
    threads.swap(threads_);
    cv_.notify_all();
  }
  // A thread inside a blocking system call finishes it first; its op's buffers stay pinned
  // until then because the op is still owned by the reactor.
  for (auto& t : threads) t.join();
  std::lock_guard<std::mutex> lock(mu_);
  finished->insert(finished->end(), done_.begin(), done_.end());
  done_.clear();
}

}  // namespace miniss
