// The descriptors a backend created for its caller (socket and accept results, and opens), kept
// until a close of the fd goes through the backend, so that when the backend is torn down with
// its thread (the environment cleanup hook: a worker that threw, called process.exit() or was
// terminated) the ones still open are closed. Without it a dead core's sockets stayed open in the
// process: its reusePort listener kept taking a share of the new connections, which nobody would
// ever accept, and its clients never saw their connections end. An explicit close() of a backend
// does not close them (the caller may still be using its fds; see the backends' READMEs).
//
// An fd can be closed behind the backend's back (fs.closeSync, another thread) and its number
// handed to someone else, in this thread or another (the fd table is the process's). So each
// entry records the file's identity (st_dev/st_ino from one fstat when the fd is recorded) and
// CloseAll closes a number only while its fstat still matches. A socket's inode is its own, so a
// socket is never mistaken for another file. A regular file's inode is shared by every open of
// the file: a number closed behind the backend's back and reused for another open of the SAME
// file before the teardown would be closed too (a caller that broke the fd's ownership, plus a
// coincidence of numbers; the alternative, leaking every file the thread had open, is worse).
// A socket whose number the caller handed to another thread to use there is still this backend's:
// it is closed with this backend's thread unless it was closed through this backend before.
//
// Cost: one fstat per recorded fd (~0.25 us, when the socket is made or the connection accepted:
// per connection, not per request) and a store into a table indexed by fd number; Remove is a
// store. Plain C++, the backend's thread only; one instance per backend (no static state: the
// addon is loaded in every worker).
#ifndef MINISS_OWNED_FDS_H_
#define MINISS_OWNED_FDS_H_

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace miniss {

class OwnedFds {
 public:
  // fd was just created by the backend for its caller. Replaces any entry of an older file that
  // had the number (the kernel handing the number out again proves that file is gone from it).
  void Add(int fd) {
    if (fd < 0) return;
    struct stat sb;
    if (fstat(fd, &sb) < 0) return;
    const size_t i = static_cast<size_t>(fd);
    if (i >= entries_.size()) entries_.resize(i + 1 > entries_.size() * 2 ? i + 1 : entries_.size() * 2);
    Entry& e = entries_[i];
    e.dev = static_cast<uint64_t>(sb.st_dev);
    e.ino = static_cast<uint64_t>(sb.st_ino);
    e.state = kOwned;
  }

  // A close of fd went through the backend (it runs now, or it already ran): not ours any more.
  void Remove(int fd) {
    if (Entry* e = At(fd)) e->state = kFree;
  }

  // A close of fd was handed to a thread pool: the number is released when it runs. From now on
  // CloseAll leaves the fd alone, unless the close is Reopened (withdrawn before it started).
  void Closing(int fd) {
    if (Entry* e = At(fd)) {
      if (e->state == kOwned) e->state = kClosing;
    }
  }
  void Reopened(int fd) {
    if (Entry* e = At(fd)) {
      if (e->state == kClosing) e->state = kOwned;
    }
  }
  // That pooled close ran (the number is released). An fd made since under the same number was
  // Added again and is not touched.
  void Closed(int fd) {
    if (Entry* e = At(fd)) {
      if (e->state == kClosing) e->state = kFree;
    }
  }

  // The backend's teardown with its thread: closes every fd still recorded whose fstat still
  // matches the recorded identity (see the file comment) and forgets them all. Returns how many
  // it closed.
  size_t CloseAll() {
    size_t n = 0;
    for (size_t i = 0; i < entries_.size(); i++) {
      const Entry& e = entries_[i];
      if (e.state != kOwned) continue;
      const int fd = static_cast<int>(i);
      struct stat sb;
      if (fstat(fd, &sb) < 0) continue;  // closed behind our back, number not reused
      if (static_cast<uint64_t>(sb.st_dev) != e.dev || static_cast<uint64_t>(sb.st_ino) != e.ino) continue;
      close(fd);  // released even on EINTR (Linux, macOS, the BSDs); nothing to retry
      n++;
    }
    Clear();
    return n;
  }

  void Clear() {
    entries_.clear();
    entries_.shrink_to_fit();
  }

  // For tests: how many fds are recorded as owned.
  size_t owned() const {
    size_t n = 0;
    for (const Entry& e : entries_) n += e.state == kOwned ? 1 : 0;
    return n;
  }

 private:
  enum State : uint8_t { kFree = 0, kOwned = 1, kClosing = 2 };
  struct Entry {
    uint64_t dev = 0;
    uint64_t ino = 0;
    State state = kFree;
  };

  Entry* At(int fd) {
    if (fd < 0 || static_cast<size_t>(fd) >= entries_.size()) return nullptr;
    return &entries_[static_cast<size_t>(fd)];
  }

  std::vector<Entry> entries_;  // indexed by fd number
};

}  // namespace miniss

#endif  // MINISS_OWNED_FDS_H_
