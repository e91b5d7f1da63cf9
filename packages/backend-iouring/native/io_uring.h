// A plain C++ io_uring engine over the raw system calls (no liburing, no V8).
//
// Two layers:
//  - Ring: the mmapped submission and completion queues of one io_uring instance, set up with the
//    best flags this kernel accepts, plus io_uring_enter/io_uring_register.
//  - Engine: one Ring, one registered eventfd and a table of operation slots. It turns
//    operation descriptors (see OpDesc) into SQEs, keeps every buffer an operation uses pinned
//    until its completion has been reaped, and reaps completions in batches.
//
// The header <linux/io_uring.h> installed here is the 6.1 one; constants added later are
// defined below under their kernel names when the header lacks them.
#ifndef MINISS_IOURING_IO_URING_H_
#define MINISS_IOURING_IO_URING_H_

#include <linux/io_uring.h>
#include <pthread.h>
#include <linux/time_types.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "miniss/owned_fds.h"  // @miniss/native-common

#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16) /* 6.6 */
#endif
#ifndef IORING_ACCEPT_MULTISHOT
#define IORING_ACCEPT_MULTISHOT (1U << 0) /* 5.19 */
#endif

namespace miniss {

// Operation codes shared with NATIVE_OP_CODES in @miniss/core (src/native-backend.ts).
enum RingOp : int32_t {  // not OpCode: native-common's op.h (linked into this addon) has that name
  kOpNop = 0,
  kOpTimeout = 1,
  kOpRead = 2,
  kOpWrite = 3,
  kOpReadv = 4,
  kOpWritev = 5,
  kOpFsync = 6,
  kOpOpen = 7,
  kOpClose = 8,
  kOpSocket = 9,
  kOpListen = 10,
  kOpAccept = 11,
  kOpConnect = 12,
  kOpRecv = 13,
  kOpSend = 14,
  kOpShutdown = 15,
  // Internal operations (never visible as an IoOperation).
  kOpCancel = 16,       // async cancel of the operation whose id is `target`
  kOpAcceptMulti = 17,  // reserved (the engine arms multishot accepts itself for kOpAccept)
  kOpCloseQuiet = 18,   // close an fd nobody owns (queued accepted sockets); no completion reported
  kOpCount = 19,
};

// user_data of SQEs whose completions are consumed inside the engine (cancels, quiet closes).
constexpr uint64_t kInternalUserData = 1ULL << 62;
// With kInternalUserData: the multishot accept of listener record `user_data & kSlotMask`.
constexpr uint64_t kListenerTag = 1ULL << 61;
// Ids are `generation * 2^20 + slot` with generation 1..1023 (see src/index.ts), so they stay
// below 2^30 (small integers in JS); the low bits name the slot.
constexpr uint64_t kSlotMask = (1ULL << 20) - 1;
// Accepted connections a listener keeps queued for later accept operations before the engine
// stops its multishot accept (the kernel's listen backlog holds the rest, as without multishot).
constexpr size_t kMaxQueuedAccepts = 128;

// One decoded descriptor; the binding fills it from shared memory and the batch's JS array.
struct OpDesc {
  int32_t op = 0;
  int32_t fd = -1;
  int32_t a = 0;  // len / flags / family / how / datasync / port / target slot
  int32_t b = 0;  // mode / backlog
  int32_t c = 0;  // reusePort
  uint64_t id = 0;      // user_data (the JS handle id); 0 for quiet internal ops
  int64_t offset = 0;   // -1: the file's current position
  double ms = 0;        // timeout
  uint64_t target = 0;  // kOpCancel: id of the operation to cancel
  // Memory the operation reads or writes, already validated against its ArrayBuffer's length.
  void* data = nullptr;
  size_t len = 0;
  std::shared_ptr<void> pin;               // keeps `data` alive until the completion is reaped
  std::vector<iovec> iov;                  // readv/writev
  std::vector<std::shared_ptr<void>> pins;  // one per iovec
  std::string str;                          // open: path; listen/connect: numeric host
  int prep_error = 0;                       // > 0: fail the operation with -prep_error, no syscall
};

// Completion as handed to JS: the operation's id, its result (>= 0 or -errno) and CQE flags.
struct Completion {
  uint64_t id;
  int32_t res;
  uint32_t flags;
};

class Ring {
 public:
  Ring() = default;
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Sets the ring up. `mode`: 0 = best available (SINGLE_ISSUER|COOP_TASKRUN, then
  // COOP_TASKRUN, then none), 1 = start at COOP_TASKRUN, 2 = no task-run flags at all,
  // 3 = try SINGLE_ISSUER|DEFER_TASKRUN first (opt-in: loses eventfd-driven wake-ups on 6.18,
  // see Ring::Init). With `sqpoll` a kernel thread polls the SQ (DEFER_TASKRUN is
  // not allowed with it). Returns 0 or -errno of the last attempt.
  int Init(unsigned entries, unsigned cq_entries, int mode, bool sqpoll, unsigned sq_idle_ms);
  void Close();

  int fd() const { return fd_; }
  // True while io_uring_enter goes through this thread's registered ring fd (see RegisterRingFd).
  bool ring_fd_registered() const { return enter_index_ >= 0; }
  unsigned setup_flags() const { return flags_; }
  unsigned kernel_features() const { return features_; }
  unsigned sq_entries() const { return sq_entries_; }
  unsigned cq_entries() const { return cq_entries_; }
  bool defer_taskrun() const { return (flags_ & IORING_SETUP_DEFER_TASKRUN) != 0; }
  bool sqpoll() const { return (flags_ & IORING_SETUP_SQPOLL) != 0; }

  // A free SQE (zeroed), or nullptr when the SQ ring is full of unsubmitted entries.
  io_uring_sqe* GetSqe();
  // Free SQEs in the SQ ring.
  unsigned SqSpace() const;
  // SQEs filled that the kernel has not consumed yet (published or not).
  unsigned Unsubmitted() const { return sqe_tail_ - __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE); }
  // Publishes filled SQEs and enters the kernel: submits them and, with `getevents`, runs
  // pending task work and waits for `wait_nr` completions (up to `timeout`, if given).
  // Returns the number of SQEs the kernel consumed, or -errno. EINTR is retried.
  int Submit(bool getevents, unsigned wait_nr, const __kernel_timespec* timeout);
  // True when completions may be waiting in the kernel rather than in the CQ ring: deferred or
  // cooperative task work is pending (IORING_SQ_TASKRUN) or the CQ overflowed into the kernel.
  bool KernelHasCompletions() const;

  unsigned CqReady() const;
  unsigned CqTail() const { return __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE); }
  const io_uring_cqe* CqAt(unsigned i) const;
  void CqAdvance(unsigned n);

  int Register(unsigned opcode, const void* arg, unsigned nr_args);

  // IORING_CQ_EVENTFD_DISABLED: while set, CQEs are posted without signalling the registered
  // eventfd. Only for rings whose completions outside this thread go through the kernel's
  // wake-up barrier (see QuietEventFd in binding.cc): not SQPOLL, not DEFER_TASKRUN, and the
  // kernel must expose the CQ flags word (5.8+).
  bool CanQuietEventFd() const {
    return cq_flags_ != nullptr && (flags_ & (IORING_SETUP_SQPOLL | IORING_SETUP_DEFER_TASKRUN)) == 0;
  }
  // Sets or clears the flag. Clearing is followed by a full barrier, so a CQE the kernel posts
  // after it either signals the eventfd or is visible to the CQ tail this thread reads next.
  void SetEventFdQuiet(bool quiet);

 private:
  int Setup(unsigned entries, unsigned cq_entries, unsigned flags, unsigned sq_idle_ms);
  void Unmap();
  // IORING_REGISTER_RING_FDS: registers the ring fd with the calling thread's io_uring context,
  // so every io_uring_enter from this thread names it by index (IORING_ENTER_REGISTERED_RING)
  // and the kernel skips the fdget/fdput of the ring file, an atomic pair in a multi-threaded
  // process (~3% of an awaited NOP). Kernels before 5.18 refuse it: the plain fd is used then.
  void RegisterRingFd();
  void UnregisterRingFd();

  int fd_ = -1;
  // Index of the ring fd in the registering thread's table (-1: not registered) and that thread:
  // the index means nothing in another thread, which enters through fd_.
  int enter_index_ = -1;
  pthread_t enter_thread_{};
  unsigned flags_ = 0;
  unsigned features_ = 0;
  unsigned sq_entries_ = 0;
  unsigned cq_entries_ = 0;
  // SQ ring.
  void* sq_ptr_ = nullptr;
  size_t sq_size_ = 0;
  unsigned* sq_head_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned* sq_flags_ = nullptr;
  unsigned* sq_array_ = nullptr;
  unsigned sq_mask_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  size_t sqes_size_ = 0;
  unsigned sqe_head_ = 0;  // first SQE not yet published
  unsigned sqe_tail_ = 0;  // next SQE to hand out
  // CQ ring.
  void* cq_ptr_ = nullptr;
  size_t cq_size_ = 0;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned* cq_flags_ = nullptr;  // nullptr when the kernel has no CQ flags word
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
};

// Per-slot state of an operation in flight: exactly what the kernel may still touch. SQEs point
// into it (the inline buffer of a short `path`, `addr`, `ts`), and the kernel reads those only
// when it consumes the SQE: at the io_uring_enter that ends the batch, or whenever the SQPOLL
// thread gets to it. So a Slot never moves while it is live: the engine allocates each one on
// its own (see Engine::slots_).
struct Slot {
  uint64_t id = 0;
  bool live = false;
  bool multishot = false;
  bool has_sync_result = false;
  int32_t sync_result = 0;
  int32_t op = 0;
  int32_t listener = -1;  // an accept waiting for listener record `listener` (no SQE of its own)
  std::shared_ptr<void> pin;
  std::vector<iovec> iov;
  std::vector<std::shared_ptr<void>> pins;
  std::string path;
  sockaddr_storage addr{};
  __kernel_timespec ts{};
};

// Multishot accept state of one listening fd. `accept` operations never reach the kernel one by
// one: the first arms one IORING_OP_ACCEPT with IORING_ACCEPT_MULTISHOT, every connection it
// accepts goes to the oldest waiting accept operation or, when none waits, to `ready`, which
// later accepts take from. A record outlives the fd's close until its multishot has finished.
struct Listener {
  int fd = -1;
  // Identity of the socket behind `fd` when the record was made: an fd closed behind the
  // backend's back and reused for another socket must not be served by this record.
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool in_use = false;
  bool attached = false;     // the current record of `fd` (false once the fd was closed)
  bool armed = false;        // the multishot ACCEPT is in the kernel
  bool cancelling = false;   // the engine cancelled it (queue full): not an error for waiters
  bool dirty = false;        // in dirty_listeners_: needs arming or cancelling
  std::deque<int> ready;         // accepted fds nobody asked for yet (owned by the engine)
  std::deque<uint32_t> waiters;  // slots of accept operations waiting, oldest first
};

struct EngineOptions {
  unsigned entries = 256;
  int mode = 0;
  bool sqpoll = false;
  unsigned sq_idle_ms = 50;
};

class Engine {
 public:
  // Creates the ring and its eventfd; nullptr and *err = -errno (and *syscall) on failure.
  static std::unique_ptr<Engine> Create(const EngineOptions& options, int* err, const char** syscall);
  ~Engine();

  // The fd Node's loop watches (the eventfd registered with the ring).
  int poll_fd() const { return event_fd_; }
  const Ring& ring() const { return ring_; }
  void SetEventFdQuiet(bool quiet) { ring_.SetEventFdQuiet(quiet); }
  bool closed() const { return closed_; }

  // Operations handed to the kernel whose final completion has not been reaped (including the
  // engine's own cancels and multishot accepts), i.e. what keeps memory pinned.
  size_t in_flight() const { return in_flight_; }
  size_t user_in_flight() const { return user_in_flight_; }
  // Whether the event loop must stay alive: user operations pending (waiting accepts included),
  // internal requests other than armed multishot accepts, or completions not handed out yet. An
  // armed multishot accept alone (a listener nobody accepts on) does not hold the loop.
  bool HoldsLoop() const { return user_in_flight_ > 0 || in_flight_ > armed_ || !local_.empty(); }
  // Accepted connections queued for later accepts, over all listeners (for stats and tests).
  size_t queued_accepts() const;

  // Turns `desc` into SQE(s) for slot `slot`. Returns false when the SQ ring has no room even
  // after submitting what it holds (the caller keeps the descriptor for the next flush).
  // The descriptor's buffers are moved into the slot, pinned until the completion is reaped.
  bool Prepare(uint32_t slot, OpDesc& desc);
  // Publishes and submits everything prepared. With `getevents`, also runs deferred task work.
  int SubmitPrepared(bool getevents);
  // True when Prepare'd entries wait for SubmitPrepared.
  bool HasUnsubmitted() const { return ring_.Unsubmitted() > 0; }

  // Reaps up to `max` completions into `out`, entering the kernel first if completions wait
  // there (deferred task work, CQ overflow). With `wait_ms` > 0 and nothing ready, blocks for up
  // to that long for one completion. Returns the number written.
  size_t Reap(Completion* out, size_t max, int wait_ms);
  // True when another reap could find more without the eventfd firing again.
  bool MoreReady() const;
  // Completions made inside the engine (accepts served from a listener) not handed out yet.
  bool HasLocal() const { return !local_.empty(); }

  // Clears the eventfd after it polled readable.
  void DrainEventFd();
  // Makes the eventfd readable so the loop calls us back (work queued in JS, local completions).
  void Wake();

  // A non-blocking eventfd owned by the engine (closed by Shutdown unless a close operation
  // closed it first), or -errno.
  int NewEventFd();

  // Cancels everything in flight, waits (up to `wait_ms`) for the kernel to release every
  // buffer, and closes the ring and every fd the engine owns. Buffers the kernel still holds
  // after that are deliberately leaked (kept pinned forever), never freed under it. With
  // `close_owned` (the backend goes down with its thread: the environment cleanup hook) it also
  // closes the sockets, accepted connections and opened files it handed to the caller that no
  // close operation has closed and that are still the same files (see owned_). Idempotent.
  void Shutdown(int wait_ms, bool close_owned = false);

  // Counters for stats(): io_uring_enter calls, SQEs submitted, CQEs reaped.
  uint64_t enters() const { return enters_; }
  uint64_t sqes_submitted() const { return sqes_submitted_; }
  uint64_t cqes_reaped() const { return cqes_reaped_; }
  // Completions handed out by Reap so far (progress of the ready callback).
  uint64_t delivered() const { return delivered_; }

 private:
  Engine() = default;
  // The slot of index `slot`, growing the table (never moving a Slot) when it is past the end.
  Slot& SlotAt(uint32_t slot) {
    if (slot >= slots_.size()) GrowSlots(slot);
    return *slots_[slot];
  }
  // The live slot of operation `id`, or nullptr (never made, free, or reused by a later id).
  Slot* LiveSlot(uint64_t id) {
    const uint64_t index = id & kSlotMask;
    if (index >= slots_.size()) return nullptr;
    Slot* s = slots_[index].get();
    return s->live && s->id == id ? s : nullptr;
  }
  void GrowSlots(uint32_t slot);
  void Release(Slot& s);
  int Enter(bool getevents, unsigned wait_nr, const __kernel_timespec* ts);
  // An SQE, entering the kernel once to make room if the SQ ring is full; nullptr if still full.
  io_uring_sqe* SqeOrFlush(unsigned need);
  bool PrepareAccept(uint32_t slot_index, OpDesc& d);
  bool PrepareCancel(OpDesc& d);
  int32_t ListenerFor(int fd);
  // The fd is being closed or shut down: its queued connections are closed, and on close the
  // record is detached from the fd number (a later listener may reuse the number).
  void ListenerFdGone(int fd, bool detach);
  void OnAcceptCqe(uint32_t index, int32_t res, bool more);
  void FailWaiters(Listener& l, int32_t res);
  void MaybeFreeListener(uint32_t index);
  void MarkDirty(uint32_t index);
  // Arms or cancels the multishot accepts that need it; true if SQEs were prepared.
  bool ServiceListeners();
  void PushLocal(uint64_t id, int32_t res, bool owns_fd);

  Ring ring_;
  int event_fd_ = -1;
  std::vector<int> extra_fds_;
  // One heap Slot per index, every element non-null. Growing the table moves only the pointers:
  // a std::vector<Slot> moved every Slot on growth, while SQEs prepared earlier in the same batch
  // still pointed into them (the kernel then read a path, timespec or sockaddr from freed memory).
  // The cost is one more load per lookup (a std::deque<Slot> costs that too: its blocks hold one
  // Slot each at this size, and its indexing does more arithmetic).
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Listener> listeners_;
  std::vector<uint32_t> free_listeners_;
  std::unordered_map<int, uint32_t> listener_of_fd_;
  std::vector<uint32_t> dirty_listeners_;
  struct Local {
    Completion c;
    bool owns_fd;  // an accepted fd: closed if nobody ever reaps it
  };
  std::deque<Local> local_;
  // The fds handed to the caller (socket, accept and open results, recorded as Reap delivers
  // them, with one fstat each) until a close operation of the fd is prepared: closed by a
  // Shutdown with close_owned. See native-common's owned_fds.h.
  OwnedFds owned_;
  size_t armed_ = 0;  // multishot accepts in the kernel
  size_t in_flight_ = 0;
  size_t user_in_flight_ = 0;
  bool closed_ = false;
  bool shutting_down_ = false;  // Reap closes the fds of completions nobody will see
  uint64_t enters_ = 0;
  uint64_t sqes_submitted_ = 0;
  uint64_t cqes_reaped_ = 0;
  uint64_t delivered_ = 0;
};

// Side-effect-free probe: sets a small ring up and tears it down. Returns 0 or -errno and fills
// `detail` with what was refused (for isSupported()'s reason).
int ProbeIoUring(std::string* detail);

// Fills `out` with the numeric host and port for the address family of socket `fd`, through
// @miniss/native-common's ParseAddress (the one the epoll and kqueue backends use): an IPv6 zone
// given as an interface index ("fe80::1%2") and an IPv4 host on an IPv6 socket (the v4-mapped
// ::ffff:a.b.c.d) work as there. Returns 0 or a positive errno: EINVAL for a host that does not
// parse (or holds a NUL byte) or a port out of range, EBADF/ENOTSOCK from the socket.
int SocketAddressFor(int fd, const std::string& host, int port, sockaddr_storage* out, socklen_t* len);

// Milliseconds as the relative timespec of an IORING_OP_TIMEOUT or LINK_TIMEOUT: 0 for a
// negative or NaN count, seconds clamped to kMaxTimeoutSec.
__kernel_timespec TimespecOfMs(double ms);
// About 35,000 years. A double of 9.2e21 ms or more does not fit tv_sec (the conversion is
// undefined behaviour; x86-64 gives INT64_MIN, which the kernel refuses with EINVAL), and the
// kernel turns any relative timeout past KTIME_MAX (about 292 years) into "never" anyway, so the
// clamp changes nothing a caller could observe.
constexpr int64_t kMaxTimeoutSec = int64_t{1} << 40;

}  // namespace miniss

#endif  // MINISS_IOURING_IO_URING_H_
