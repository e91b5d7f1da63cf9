// The bookkeeping a readiness reactor (epoll, kqueue) keeps around its operations, written once:
// recycled Op objects, the intrusive list of live ops (every op from Submit to Reap, walked by
// cancel and shutdown), the queue of completed ops waiting to be reaped, and the per-fd state
// table with its read-side and write-side wait queues.
//
// A reactor derives from OpBook<FdState>, where its FdState has `Op* rhead, rtail, whead, wtail`.
// Plain C++, this thread only.
#ifndef MINISS_OP_BOOK_H_
#define MINISS_OP_BOOK_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "miniss/op.h"

namespace miniss {

template <typename FdStateT>
class OpBook {
 public:
  // An op to fill in (recycled); give it to Submit, or back with Discard if decoding failed.
  Op* NewOp() {
    if (!free_.empty()) {
      Op* op = free_.back();
      free_.pop_back();
      return op;
    }
    return new Op();
  }

  void Discard(Op* op) {
    op->Reset();
    if (free_.size() < kMaxFree) {
      free_.push_back(op);
    } else {
      delete op;
    }
  }

  // Completes op with `result` without starting it (a descriptor the binding could not decode,
  // such as a buffer detached since submit). Owned and reaped like a submitted op.
  void Fail(Op* op, int64_t result) {
    Link(op);
    Complete(op, result);
  }

  // Writes up to `cap` (id, result) pairs to out and releases those ops (and their buffer pins).
  size_t Reap(double* out, size_t cap) {
    size_t n = 0;
    while (n < cap && done_head_ < done_.size()) {
      Op* op = done_[done_head_++];
      out[2 * n] = static_cast<double>(op->id);
      out[2 * n + 1] = static_cast<double>(op->result);
      n++;
      Release(op);  // drops the buffer pins: the memory is the caller's again
    }
    if (done_head_ == done_.size()) {
      done_.clear();
      done_head_ = 0;
    }
    return n;
  }

  size_t ready() const { return done_.size() - done_head_; }
  size_t in_flight() const { return live_count_; }

 protected:
  OpBook() = default;
  ~OpBook() = default;
  OpBook(const OpBook&) = delete;
  OpBook& operator=(const OpBook&) = delete;

  FdStateT* Find(int fd) {
    if (fd < 0 || static_cast<size_t>(fd) >= fds_.size()) return nullptr;
    return fds_[static_cast<size_t>(fd)].get();
  }

  // Only for fds the kernel just proved valid.
  FdStateT* Ensure(int fd) {
    const size_t i = static_cast<size_t>(fd);
    if (i >= fds_.size()) fds_.resize(std::max(i + 1, fds_.size() * 2));
    if (!fds_[i]) fds_[i].reset(new FdStateT());
    return fds_[i].get();
  }

  void Complete(Op* op, int64_t result) {
    op->result = result;
    op->where = Where::kDone;
    op->qnext = nullptr;
    done_.push_back(op);
  }

  // Completes every op waiting on either side of the fd with `result`.
  void FailQueues(FdStateT* st, int64_t result) {
    while (Op* op = st->rhead) {
      st->rhead = op->qnext;
      Complete(op, result);
    }
    while (Op* op = st->whead) {
      st->whead = op->qnext;
      Complete(op, result);
    }
    st->rtail = st->wtail = nullptr;
  }

  static void Enqueue(FdStateT* st, Op* op, bool read_side) {
    op->qnext = nullptr;
    Op*& head = read_side ? st->rhead : st->whead;
    Op*& tail = read_side ? st->rtail : st->wtail;
    if (tail != nullptr) tail->qnext = op;
    else head = op;
    tail = op;
    op->where = read_side ? Where::kReadQueue : Where::kWriteQueue;
  }

  // Takes op out of the fd's queue; false if it was not there.
  static bool Unqueue(FdStateT* st, Op* op, bool read_side) {
    Op*& head = read_side ? st->rhead : st->whead;
    Op*& tail = read_side ? st->rtail : st->wtail;
    Op* prev = nullptr;
    for (Op* p = head; p != nullptr; prev = p, p = p->qnext) {
      if (p != op) continue;
      if (prev != nullptr) prev->qnext = p->qnext;
      else head = p->qnext;
      if (tail == p) tail = prev;
      p->qnext = nullptr;
      return true;
    }
    return false;
  }

  void Link(Op* op) {
    op->prev = nullptr;
    op->next = live_;
    if (live_ != nullptr) live_->prev = op;
    live_ = op;
    live_count_++;
  }

  void Unlink(Op* op) {
    if (op->prev != nullptr) op->prev->next = op->next;
    else live_ = op->next;
    if (op->next != nullptr) op->next->prev = op->prev;
    op->prev = op->next = nullptr;
    live_count_--;
  }

  void Release(Op* op) {
    Unlink(op);
    Discard(op);
  }

  static constexpr size_t kMaxFree = 1024;  // recycled ops kept; more are deleted

  std::vector<std::unique_ptr<FdStateT>> fds_;  // indexed by fd
  std::vector<Op*> done_;                        // complete, not reaped
  size_t done_head_ = 0;
  Op* live_ = nullptr;  // every op from Submit to Reap
  size_t live_count_ = 0;
  std::vector<Op*> free_;  // recycled ops
};

}  // namespace miniss

#endif  // MINISS_OP_BOOK_H_
