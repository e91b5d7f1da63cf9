// The thread-pool side of a readiness reactor (epoll, kqueue), written once: the per-fd count of
// pool ops with a generation per fd number, a close held until the earlier pool ops of its fd are
// done, the pool case of Cancel (withdraw, abandon behind a stand-in op, or let it run), draining
// finished pool jobs, and the pool's part of Shutdown (thread_pool.h's 4-argument Shutdown).
//
// Why a close waits. A pool thread takes its job off the queue and only then enters pwritev; in
// between another pool thread could run a close of the same fd, and an open could be given the
// same number, so the write would land in the new file. So every read, write or fsync handed to
// the pool is counted in its fd's state (PoolFdState::pool_ops) until it is drained, and a close
// submitted meanwhile is held (held_close) and started by the last of them (PoolOpDone). From the
// close's submission on, the fd is `closing` and new ops on it fail with EBADF.
//
// A reactor derives from PoolOpBook<Reactor, FdState> (CRTP: every call is static and inlinable,
// nothing virtual on the per-op path), where its FdState derives from PoolFdState, and supplies
// `void CloseNow(Op*)`: how a close is finally issued (inline for a socket, else through the pool
// with ClosePooled), called from here when a held close may start, and `void ToPool(Op*)`: its
// stats, then PostToPool. The reactor creates `pool_`
// (how completions wake its loop is its own) and keeps its own Shutdown, Cancel and
// registration state; it calls the helpers below from them. Plain C++, loop thread only.
//
// `owned_` (owned_fds.h) records the fds made for the caller: the reactor adds its sockets and
// accepted connections, the opens are added here (FinishPoolOp); a close going through the
// reactor takes the fd out (the reactor's inline close: Remove; a pooled one: ClosePooled marks
// it closing, FinishPoolOp or a withdrawal settles it). The reactor's Shutdown ends with
// ShutdownOwned, which closes what is left when the backend goes down with its thread.
#ifndef MINISS_POOL_BOOK_H_
#define MINISS_POOL_BOOK_H_

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "miniss/op.h"
#include "miniss/op_book.h"
#include "miniss/owned_fds.h"
#include "miniss/thread_pool.h"

namespace miniss {

// The per-fd fields of PoolOpBook; a reactor's FdState derives from it.
struct PoolFdState {
  // Pool ops of this fd (reads, writes, fsyncs handed to the thread pool and not yet drained). A
  // close of the fd waits for them in held_close (see the file comment).
  uint32_t pool_ops = 0;
  Op* held_close = nullptr;
  // A close of this fd was submitted (held, or running on the pool): ops submitted after it fail
  // with EBADF, until the close is done or the kernel hands the number out again.
  bool closing = false;
  // Bumped whenever the number stops being this file's (closed, or handed out again after being
  // closed behind our back): a pool op counted under an older generation is no longer counted.
  uint32_t gen = 1;
};

template <typename Reactor, typename FdStateT>
class PoolOpBook : public OpBook<FdStateT> {
 protected:
  using Book = OpBook<FdStateT>;
  using Book::Complete;
  using Book::Ensure;
  using Book::FailQueues;
  using Book::Find;
  using Book::Link;
  using Book::Unlink;

  PoolOpBook() = default;
  ~PoolOpBook() = default;

  // The kernel just handed this number out, so whatever waited on an older file with this number
  // was closed behind our back (the readiness set already forgot it). Those ops can never
  // complete: fail them. So does a close held for that file: run now, it would close the new one.
  FdStateT* Renew(int fd) {
    FdStateT* st = Ensure(fd);
    FailQueues(st, -EBADF);
    if (st->held_close != nullptr) Complete(st->held_close, -EBADF);
    Forget(st);
    return st;
  }

  // The number is no longer the file it was. A new generation: pool ops still counted under the
  // old one no longer count for this number.
  static void Forget(FdStateT* st) {
    uint32_t gen = st->gen + 1;
    if (gen == 0) gen = 1;
    *st = FdStateT();
    st->gen = gen;
  }

  // Completes op with EBADF and returns true if a close of its fd is under way (held behind its
  // pool ops, or running): the number is about to be released and perhaps handed out again, so
  // nothing may start on it now. For every op on an existing fd, before it starts.
  bool FailIfClosing(Op* op) {
    FdStateT* st = Find(op->fd);
    if (st == nullptr || !st->closing) return false;
    Complete(op, -EBADF);
    return true;
  }

  // Hands op to the pool. A read, write or fsync is counted in its fd's state until drained, so a
  // close of the fd waits for it. Every caller had the kernel check the fd first (fstat, fcntl,
  // the readiness syscall), so Ensure is safe here.
  void PostToPool(Op* op) {
    if (op->code != kOpen && op->code != kClose) {
      FdStateT* st = Ensure(op->fd);
      st->pool_ops++;
      op->fd_gen = st->gen;
    }
    int r = pool_->Post(op);
    if (r < 0) {
      if (op->code == kClose) owned_.Reopened(op->fd);  // never ran: the fd is still open
      FinishPoolOp(op, r);
    }
  }

  // The reactor's StartClose, once the fd's readiness state is cleared: holds the close if pool
  // ops of the fd submitted before it are still on the pool (PoolOpDone starts it). Until then it
  // can be cancelled like a queued pool job (it is marked kPool for Cancel). Returns whether it
  // was held; if not, the reactor calls its CloseNow.
  static bool HoldClose(FdStateT* st, Op* op) {
    if (st->pool_ops == 0) return false;
    st->closing = true;
    st->held_close = op;
    op->where = Where::kPool;
    return true;
  }

  // The reactor's CloseNow for a close that may block (NFS flushes, the last reference to a
  // deleted file): the pool runs it, and ops submitted meanwhile fail with EBADF (they could run
  // after the close, on a reused number). Goes through the reactor's ToPool (which counts it).
  void ClosePooled(FdStateT* st, Op* op) {
    owned_.Closing(op->fd);
    if (st != nullptr) {
      st->closing = true;
      op->fd_gen = st->gen;
    }
    reactor().ToPool(op);
  }

  // Completes every op the pool has finished; the reactor calls it when woken by `notify`.
  void DrainPool() {
    pool_done_.clear();
    if (pool_) pool_->TakeDone(&pool_done_);
    for (Op* op : pool_done_) FinishPoolOp(op, op->result);
    pool_done_.clear();
  }

  // Cancel of an op at Where::kPool (see the reactor's Cancel for what the caller is told).
  bool CancelPoolOp(Op* op) {
    if (op->code == kClose) {
      FdStateT* st = Find(op->fd);
      if (st != nullptr && st->held_close == op) {
        // Held behind pool ops of its fd (see HoldClose): it never started, the fd stays open.
        st->held_close = nullptr;
        st->closing = false;
        Complete(op, -ECANCELED);
        return true;
      }
    }
    if (!pool_) return false;
    // An open or fsync inside its system call has nothing of the caller's to touch, so it can
    // be abandoned to its thread (thread_pool.h): it completes now, and an open that still
    // succeeds later has its fd closed by that thread. A read or write may still be filling or
    // reading the caller's buffer, which is the caller's again once it completes, and a close
    // that started has released the number (a caller told ECANCELED could close it again after
    // it was reused): those keep running and complete with their own result.
    const bool abandon = op->code == kOpen || op->code == kFsync;
    // From a kAbandoned answer on, the pool thread may free op at any moment: copy what is
    // needed and take it off the live list first.
    const uint64_t id = op->id;
    const int fd = op->fd;
    const uint32_t gen = op->fd_gen;
    const int32_t code = op->code;
    Unlink(op);
    switch (pool_->Cancel(op, abandon)) {
      case ThreadPool::CancelResult::kWithdrawn:
        Link(op);
        op->fd_gen = 0;
        if (code == kClose) {
          FdStateT* st = Find(fd);
          if (st != nullptr && st->gen == gen) st->closing = false;  // never ran: the fd is still open
          owned_.Reopened(fd);
          Complete(op, -ECANCELED);
        } else {
          Complete(op, -ECANCELED);
          PoolOpDone(fd, gen);
        }
        return true;
      case ThreadPool::CancelResult::kAbandoned: {
        // The caller gets its ECANCELED from a stand-in with the same id. An abandoned fsync
        // no longer holds back a close of its fd: should it run on a reused number, it only
        // flushes another file.
        Op* stand_in = this->NewOp();
        stand_in->id = id;
        stand_in->code = code;
        stand_in->fd = fd;
        Link(stand_in);
        Complete(stand_in, -ECANCELED);
        PoolOpDone(fd, gen);
        return true;
      }
      case ThreadPool::CancelResult::kRunning:
      case ThreadPool::CancelResult::kFinished:
        // Completes with its own result when drained, except an open's new fd (FinishPoolOp).
        Link(op);
        op->cancel_requested = true;
        return true;
    }
    return true;
  }

  // The reactor's Shutdown, after failing its wait queues and timers: cancels the held closes
  // and resets every fd's state.
  void ShutdownFds() {
    for (auto& st : this->fds_) {
      if (!st) continue;
      // A close held behind pool ops of its fd never started: like a queued pool job, it is
      // cancelled and the fd stays open.
      if (st->held_close != nullptr) Complete(st->held_close, -ECANCELED);
      *st = FdStateT();
    }
  }

  // The reactor's Shutdown, before it closes what its completed ops produced and frees the live
  // ones: stops the pool (see ThreadPool's 4-argument Shutdown) and frees the ops it gives back.
  void ShutdownPool(std::chrono::milliseconds grace) {
    if (!pool_) return;
    // Every op the pool has (queued, running, or finished and not taken yet) leaves the live list
    // first: the pool may abandon a running one, and from then on its thread may free it at any
    // moment, so nothing here may walk over it afterwards.
    for (Op* op = this->live_; op != nullptr;) {
      Op* next = op->next;
      if (op->where == Where::kPool) Unlink(op);
      op = next;
    }
    std::vector<Op*> withdrawn, finished, abandoned;
    pool_->Shutdown(&withdrawn, &finished, &abandoned, grace);
    for (Op* op : withdrawn) {
      if (op->code == kClose) owned_.Reopened(op->fd);  // never ran: the fd is still open
      delete op;
    }
    for (Op* op : finished) {
      // Nobody will reap it: an fd it produced would leak.
      if (ProducesFd(op->code) && op->result >= 0) close(static_cast<int>(op->result));
      if (op->code == kClose) owned_.Closed(op->fd);
      delete op;
    }
    // `abandoned` now belong to their pool threads (a close among them stays `closing` in
    // owned_: its thread releases the number).
    pool_.reset();
  }

  // The end of the reactor's Shutdown, after ShutdownPool (no pool op can start on an fd any
  // more, and every op waiting on one has completed: closing the numbers touches no op) and
  // after it closed the fds of completed ops nobody will reap (taking them out of owned_ first).
  // `close_owned`: the backend goes down with its thread (the environment cleanup hook), so the
  // fds it made for the caller that are still open are closed (owned_fds.h); otherwise (an
  // explicit close(), garbage collection) they stay the caller's.
  void ShutdownOwned(bool close_owned) {
    if (close_owned) owned_.CloseAll();
    else owned_.Clear();
  }

  OwnedFds owned_;  // the fds made for the caller (see the file comment)

  std::unique_ptr<ThreadPool> pool_;  // created by the reactor (it knows how to wake its loop)

 private:
  Reactor& reactor() { return static_cast<Reactor&>(*this); }

  // A pool op is done (or could not be posted): its result, and the per-fd bookkeeping.
  void FinishPoolOp(Op* op, int64_t r) {
    switch (op->code) {
      case kOpen:
        if (r >= 0) {
          if (op->cancel_requested) {
            // Cancelled while open(2) ran and not abandoned (the pool had too many abandoned jobs,
            // or the open finished first): the caller has given up on this fd, so nobody else
            // would close it.
            close(static_cast<int>(r));
            r = -ECANCELED;
          } else {
            Renew(static_cast<int>(r));
            owned_.Add(static_cast<int>(r));
          }
        }
        Complete(op, r);
        return;
      case kClose: {
        // The number is released even when close() fails (Linux, and EINTR included on every
        // BSD and macOS).
        FdStateT* st = Find(op->fd);
        if (st != nullptr && op->fd_gen != 0 && st->gen == op->fd_gen) Forget(st);
        op->fd_gen = 0;
        owned_.Closed(op->fd);
        Complete(op, r);
        return;
      }
      default: {
        const int fd = op->fd;
        const uint32_t gen = op->fd_gen;
        op->fd_gen = 0;
        Complete(op, r);  // before a close it releases, so the two complete in submission order
        PoolOpDone(fd, gen);
        return;
      }
    }
  }

  // One pool op counted under (fd, gen) is done: the last one starts a held close.
  void PoolOpDone(int fd, uint32_t gen) {
    if (gen == 0) return;
    FdStateT* st = Find(fd);
    if (st == nullptr || st->gen != gen || st->pool_ops == 0) return;  // the number is another file's now
    if (--st->pool_ops == 0 && st->held_close != nullptr) {
      Op* close_op = st->held_close;
      st->held_close = nullptr;
      reactor().CloseNow(close_op);
    }
  }

  std::vector<Op*> pool_done_;  // scratch for DrainPool
};

}  // namespace miniss

#endif  // MINISS_POOL_BOOK_H_
