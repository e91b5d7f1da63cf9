// The only file of this addon that knows V8/nan. It decodes operation descriptors from memory
// shared with JS, pins their buffers, joins the ring to Node's event loop with one uv_poll_t on
// the ring's registered eventfd, and tears everything down on close(), garbage collection or
// environment (worker thread) exit. The ring itself is plain C++ in io_uring.{h,cc}.
#include <nan.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <memory>
#include <string>

#include "io_uring.h"
#include "miniss/flush_objects.h"   // @miniss/native-common: ObjectAt, BindBuffer, BindWholeView, StringOf
#include "miniss/loop_hold.h"       // @miniss/native-common: LoopHold
#include "miniss/module_methods.h"  // @miniss/native-common: address, allocateBuffer, signalFd, setAffinity
#include "miniss/op.h"              // @miniss/native-common: PinThisLibrary
#include "miniss/store_cache.h"     // @miniss/native-common: the pinned-buffer cache

namespace miniss {
namespace {

// Shared-memory layout, mirrored in src/index.ts. Descriptor i is kSqInts int32 words at
// sq_i[i * kSqInts] = (op, fd, a, b, c, -, -, -) and kSqDoubles float64 words at
// sq_f[i * kSqDoubles] = (id, offset, ms-or-target). The batch's buffers/strings travel in one
// JS array whose element i belongs to descriptor i. A completion is three float64 words
// (id, result, cqe flags).
constexpr size_t kSqInts = 8;
constexpr size_t kSqDoubles = 3;
constexpr size_t kCqDoubles = 3;
// How long close() waits for the kernel to hand buffers back before pinning them for good.
constexpr int kShutdownWaitMs = 2000;
// Callback rounds per eventfd wake-up when completions arrive inline (see OnPoll): at most this
// many, and no new round once this much time has passed since the first, so other handles
// (timers, node:net) wait at most about that long. Going round instead of through the loop saves
// an eventfd write, an epoll_wait and an eventfd read, and keeps the loop's own work from running
// between reads: 8 rounds cost 130 ns more per awaited 4 KiB read than 32, and awaited 1 MiB reads
// (~70 us each) reached 0.90-0.91x of a readSync loop with a 1 ms budget against 0.86-0.89x with
// 200 us (3 alternating runs each); HTTP serving did not change either way.
constexpr int kMaxReadyRounds = 64;
constexpr uint64_t kReadyRoundsBudgetNs = 1000 * 1000;  // 1 ms

// Arguments of flush() before the batch's objects (see Backend::Flush).
constexpr int kFlushFixedArgs = 3;

// Internal field of the JS backend object holding onReady (field 0 is Nan::ObjectWrap's).
//
// What keeps a backend alive: like a libuv handle wrapped by Node, the JS object is held
// strongly while its poll handle is referenced (operations in flight, work queued in JS: see
// Instance::UpdateRef), since the consumers waiting for those completions may be reachable only
// through it, and weakly otherwise, so that an idle backend dropped without close() is collected
// and ~Backend tears it down. onReady reaches the JS object (any useful callback does), so it
// must not sit in a persistent handle, a GC root of its own: that kept every backend alive
// forever, leaking its ring fd and eventfd. In a field it lives exactly as long as the object.
// (A WeakRef in the callback instead cost ~7% more CPU per awaited NOP in an A/B run here: every
// deref() adds its target to V8's keep-during-job set.)
constexpr int kOnReadyField = 1;

class Backend;

struct Instance {
  uv_poll_t poll;
  std::unique_ptr<Engine> engine;
  node::AsyncCleanupHookHandle hook;
  void (*hook_done)(void*) = nullptr;
  void* hook_arg = nullptr;
  std::unique_ptr<Nan::AsyncResource> async;
  Backend* wrap = nullptr;
  bool closing = false;
  LoopHold hold;
  // Closed by the environment cleanup hook (its thread is going away): the engine's Shutdown also
  // closes the fds it handed to the caller (Engine::owned_).
  bool env_teardown = false;
  bool in_callback = false;
  bool js_hold = false;  // JS holds work that needs another loop turn (queued ops, local completions)
  bool pre_reap = false;  // JS takes completions with onReady (a consumer is registered); see OnPoll
  std::shared_ptr<v8::BackingStore> sq_store;
  std::shared_ptr<v8::BackingStore> cq_store;
  int32_t* sq_i = nullptr;
  double* sq_f = nullptr;
  size_t sq_cap = 0;
  double* cq = nullptr;
  size_t cq_cap = 0;
  std::unique_ptr<Completion[]> scratch;
  StoreCache store_cache;  // pinned buffers: ArrayBuffer -> backing store (miniss/store_cache.h)
  Nan::Persistent<v8::Object> callback_target;  // the receiver of onReady, made once

  // The poll handle keeps the loop alive only while something is pending, and the JS object
  // stays reachable for just as long (see kOnReadyField). Never called from a GC finalizer.
  void UpdateRef();
};

void OnClosed(uv_handle_t* handle);

// Stops polling (the uv_poll_t is stopped and removed from epoll before its fd is closed),
// cancels what is in flight, waits for the kernel to release buffers and closes the ring. The
// Instance itself is freed in OnClosed. `now`: false inside GC finalizers, where
// the engine is shut down later in OnClosed.
void BeginClose(Instance* inst, bool now) {
  if (inst->closing) return;
  inst->closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&inst->poll), OnClosed);
  if (now && inst->engine) inst->engine->Shutdown(kShutdownWaitMs, inst->env_teardown);
}

class Backend : public Nan::ObjectWrap {
 public:
  static void Init(v8::Local<v8::Object> target);

  explicit Backend(Instance* inst) : inst_(inst) { inst->wrap = this; }
  // The JS object strong (it cannot be collected) or weak again; balanced by Instance::hold.
  void Hold() { Ref(); }
  void Unhold() { Unref(); }
  ~Backend() override {
    // Collected without close(): only stop polling here (this may run inside GC, where no V8
    // call is allowed); OnClosed shuts the engine down and releases the handles.
    if (inst_ != nullptr) {
      inst_->wrap = nullptr;
      BeginClose(inst_, false);
    }
  }

  Instance* inst_;

 private:
  static NAN_METHOD(New);
  static NAN_METHOD(Flush);
  static NAN_METHOD(Reap);
  static NAN_METHOD(Wake);
  static NAN_METHOD(PreReap);
  static NAN_METHOD(InFlight);
  static NAN_METHOD(EventFd);
  static NAN_METHOD(Stats);
  static NAN_METHOD(Close);

  static Instance* Live(const Nan::FunctionCallbackInfo<v8::Value>& info) {
    Backend* self = Nan::ObjectWrap::Unwrap<Backend>(info.Holder());
    if (self == nullptr || self->inst_ == nullptr || self->inst_->closing) return nullptr;
    return self->inst_;
  }
};

void Instance::UpdateRef() {
  hold.Set(!closing && engine && (engine->HoldsLoop() || js_hold), &poll, wrap, &store_cache);
}

void OnClosed(uv_handle_t* handle) {
  Instance* inst = static_cast<Instance*>(handle->data);
  Nan::HandleScope scope;
  inst->hold.Drop(inst->wrap);
  // A no-op after close() (which leaves the caller's fds alone) or after the cleanup hook.
  if (inst->engine) inst->engine->Shutdown(kShutdownWaitMs, inst->env_teardown);
  inst->engine.reset();
  inst->async.reset();
  inst->sq_store.reset();
  inst->cq_store.reset();
  inst->store_cache.Clear();
  inst->callback_target.Reset();
  if (inst->wrap != nullptr) inst->wrap->inst_ = nullptr;
  void (*done)(void*) = inst->hook_done;
  void* done_arg = inst->hook_arg;
  // A no-op when the hook is the one running right now.
  if (inst->hook) node::RemoveEnvironmentCleanupHook(std::move(inst->hook));
  delete inst;
  if (done != nullptr) done(done_arg);
}

// Runs when the environment (the main thread at exit, or a worker being terminated) shuts down.
void CleanupHook(void* arg, void (*done)(void*), void* done_arg) {
  Instance* inst = static_cast<Instance*>(arg);
  inst->hook_done = done;
  inst->hook_arg = done_arg;
  // The thread is going away: nobody will close the sockets and files its code still had open
  // (a worker that threw or was terminated never ran its own cleanup), so the engine does.
  inst->env_teardown = true;
  BeginClose(inst, true);  // when close() already began it, OnClosed is pending and calls done
}

// Takes up to cqCap completions (waiting up to wait_ms for the first, 0: never) into the
// completion buffer JS reads: three float64 words each (id, result, cqe flags). Returns how many.
size_t ReapInto(Instance* inst, int wait_ms) {
  Completion* tmp = inst->scratch.get();
  const size_t n = inst->engine->Reap(tmp, inst->cq_cap, wait_ms);
  double* out = inst->cq;
  for (size_t i = 0; i < n; ++i) {
    out[i * kCqDoubles] = static_cast<double>(tmp[i].id);
    out[i * kCqDoubles + 1] = tmp[i].res;
    out[i * kCqDoubles + 2] = tmp[i].flags;
  }
  return n;
}

// While the ready callback's rounds run, the ring posts CQEs without signalling its eventfd
// (IORING_CQ_EVENTFD_DISABLED). The rounds reap them anyway, and each signal cost ~0.2 us of
// kernel time per completion (the eventfd and its epoll callback: 1.02-1.10 us per inline 4 KiB
// read signalled, 0.84-0.92 quiet, 0.83-0.89 with no eventfd registered; see
// tools/bench/floors/eventfd-signal-floor.c) and left the eventfd readable, so the loop came back
// at once for an empty turn. Ending the quiet period gives the signals back: a CQE posted during
// it and still in the ring (nobody reaped it) gets one Wake(), as it would have had one signal;
// one posted after it signals as usual (the flag is cleared with a full barrier, see
// Ring::SetEventFdQuiet).
class QuietEventFd {
 public:
  explicit QuietEventFd(Engine* engine) : engine_(engine), on_(engine->ring().CanQuietEventFd()) {
    if (!on_) return;
    start_tail_ = engine_->ring().CqTail();
    engine_->SetEventFdQuiet(true);
  }
  ~QuietEventFd() { End(); }
  QuietEventFd(const QuietEventFd&) = delete;
  QuietEventFd& operator=(const QuietEventFd&) = delete;

  // Ends the quiet period; true when CQEs posted during it are still in the CQ ring.
  bool End() {
    if (!on_) return false;
    on_ = false;
    if (engine_->closed()) return false;
    engine_->SetEventFdQuiet(false);
    const Ring& ring = engine_->ring();
    return ring.CqTail() != start_tail_ && ring.CqReady() > 0;
  }

 private:
  Engine* engine_;
  bool on_;
  unsigned start_tail_ = 0;
};

void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
  Instance* inst = static_cast<Instance*>(handle->data);
  if (inst->closing || !inst->engine || status < 0) return;
  Engine* engine = inst->engine.get();
  QuietEventFd quiet(engine);
  engine->DrainEventFd();
  Nan::HandleScope scope;
  // Each round: run pending task work (and submit what is queued) so the completions are in the
  // CQ ring, let JS reap and react, then submit what it queued with one io_uring_enter. Requests
  // that complete inline during that submit (page-cached reads, NOPs, sends into an empty socket
  // buffer) are in the CQ ring at once: go round again instead of waiting for the eventfd to come
  // back through the next loop iteration's epoll_wait, a few rounds at most so timers and other
  // handles are not starved (kMaxReadyRounds, kReadyRoundsBudgetNs). Their CQEs signal no
  // eventfd meanwhile (QuietEventFd), so no empty wake-up follows.
  // A round that reaps nothing ends the rounds, never a busy loop.
  bool progress = false;
  const uint64_t started = uv_hrtime();
  for (int round = 0; round < kMaxReadyRounds; ++round) {
    if (round > 0 && uv_hrtime() - started > kReadyRoundsBudgetNs) break;
    if (engine->HasUnsubmitted() || engine->ring().KernelHasCompletions()) engine->SubmitPrepared(true);
    // Collected (see kOnReadyField): nobody to call; ~Backend has begun closing anyway.
    if (inst->wrap == nullptr || !inst->async) break;
    const uint64_t before = engine->delivered();
    // Through the async resource, so the callback has an async context and the microtasks it
    // queues (promise continuations, which submit the next operations and flush) run before
    // control comes back here.
    //
    // The completions go to JS with the call: they are reaped into the completion buffer first
    // and their count is the callback's argument, so JS needs no reap() call to get them, nor a
    // second one to learn that there are no more (everything the CQ ring held was taken, unless
    // the buffer filled up). Saves two boundary crossings per round.
    // Only while JS has a consumer: completions nobody takes stay in the ring, where closing the
    // backend still finds them (and closes the fds an accept or open returned).
    const size_t reaped = inst->pre_reap ? ReapInto(inst, 0) : 0;
    inst->in_callback = true;
    v8::Local<v8::Object> target = Nan::New(inst->callback_target);
    v8::Local<v8::Value> argv[1] = {Nan::New(static_cast<uint32_t>(reaped))};
    v8::Local<v8::Function> on_ready = inst->wrap->handle()->GetInternalField(kOnReadyField).As<v8::Value>().As<v8::Function>();
    inst->async->runInAsyncScope(target, on_ready, 1, argv);
    inst->in_callback = false;
    if (inst->closing || !inst->engine || engine->closed()) return;
    // Flushes made during the callback only filled the SQ ring: submit them all with one
    // io_uring_enter now.
    if (engine->HasUnsubmitted()) engine->SubmitPrepared(false);
    progress = engine->delivered() != before;
    if (!progress || !engine->MoreReady()) break;
  }
  if (inst->closing || !inst->engine || engine->closed()) return;
  const bool unsignalled = quiet.End();
  // Completions still waiting without a new eventfd signal (more rounds than allowed, completions
  // made in the engine, task work not run yet, CQEs posted during the quiet period): come back on
  // the next loop turn.
  if (unsignalled ||
      (progress ? engine->MoreReady() : engine->ring().CqReady() == 0 && engine->ring().KernelHasCompletions())) {
    engine->Wake();
  }
  inst->UpdateRef();
}

// new IoUringBackend(sq, cq, sqCap, cqCap, entries, mode, sqpoll, sqIdleMs, onReady)
NAN_METHOD(Backend::New) {
  if (!info.IsConstructCall()) {
    Nan::ThrowTypeError("IoUringBackend must be called with new");
    return;
  }
  if (info.Length() < 9 || !info[0]->IsArrayBuffer() || !info[1]->IsArrayBuffer() || !info[2]->IsUint32() ||
      !info[3]->IsUint32() || !info[4]->IsUint32() || !info[5]->IsUint32() || !info[6]->IsBoolean() ||
      !info[7]->IsUint32() || !info[8]->IsFunction()) {
    Nan::ThrowTypeError(
        "IoUringBackend(sq: ArrayBuffer, cq: ArrayBuffer, sqCap, cqCap, entries, mode, sqpoll, sqIdleMs, onReady)");
    return;
  }
  v8::Local<v8::ArrayBuffer> sq = info[0].As<v8::ArrayBuffer>();
  v8::Local<v8::ArrayBuffer> cq = info[1].As<v8::ArrayBuffer>();
  const size_t sq_cap = Nan::To<uint32_t>(info[2]).FromJust();
  const size_t cq_cap = Nan::To<uint32_t>(info[3]).FromJust();
  if (sq_cap == 0 || cq_cap == 0 || sq->ByteLength() < sq_cap * (kSqInts * 4 + kSqDoubles * 8) ||
      cq->ByteLength() < cq_cap * kCqDoubles * 8) {
    Nan::ThrowRangeError("submission/completion buffers are smaller than their capacities");
    return;
  }
  EngineOptions options;
  options.entries = Nan::To<uint32_t>(info[4]).FromJust();
  options.mode = static_cast<int>(Nan::To<uint32_t>(info[5]).FromJust());
  options.sqpoll = Nan::To<bool>(info[6]).FromJust();
  options.sq_idle_ms = Nan::To<uint32_t>(info[7]).FromJust();
  int err = 0;
  const char* syscall_name = "io_uring_setup";
  std::unique_ptr<Engine> engine = Engine::Create(options, &err, &syscall_name);
  if (!engine) {
    Nan::ThrowError(Nan::ErrnoException(-err, syscall_name, "cannot create the io_uring backend"));
    return;
  }
  auto inst = std::make_unique<Instance>();
  uv_loop_t* loop = Nan::GetCurrentEventLoop();
  int r = uv_poll_init(loop, &inst->poll, engine->poll_fd());
  if (r != 0) {
    Nan::ThrowError(Nan::ErrnoException(-r, "uv_poll_init", uv_strerror(r)));
    return;
  }
  // From here on the handle is initialised and may be freed only in its close callback.
  inst->poll.data = inst.get();
  inst->engine = std::move(engine);
  inst->sq_store = sq->GetBackingStore();
  inst->cq_store = cq->GetBackingStore();
  inst->sq_i = static_cast<int32_t*>(inst->sq_store->Data());
  inst->sq_f = reinterpret_cast<double*>(static_cast<char*>(inst->sq_store->Data()) + sq_cap * kSqInts * 4);
  inst->sq_cap = sq_cap;
  inst->cq = static_cast<double*>(inst->cq_store->Data());
  inst->cq_cap = cq_cap;
  inst->scratch.reset(new Completion[cq_cap]);
  inst->async = std::make_unique<Nan::AsyncResource>("miniss:IoUringBackend");
  inst->callback_target.Reset(Nan::New<v8::Object>());
  Instance* raw = inst.release();
  uv_unref(reinterpret_cast<uv_handle_t*>(&raw->poll));
  r = uv_poll_start(&raw->poll, UV_READABLE, OnPoll);
  raw->hook = node::AddEnvironmentCleanupHook(info.GetIsolate(), CleanupHook, raw);
  Backend* self = new Backend(raw);
  self->Wrap(info.This());
  info.This()->SetInternalField(kOnReadyField, info[8]);
  if (r != 0) {
    BeginClose(raw, true);
    Nan::ThrowError(Nan::ErrnoException(-r, "uv_poll_start", uv_strerror(r)));
    return;
  }
  info.GetReturnValue().Set(info.This());
}

// flush(count, hold, objects) or flush(count, hold, null, ...objects): turns `count` descriptors
// into SQEs and submits them with one io_uring_enter (deferred to the end of the ready callback
// when called from inside it). Descriptor words 5 and 6 are the index of its first object (buffer
// or string) in the batch and how many it has; the objects travel as call arguments (reading an
// argument is much cheaper than an element lookup through the V8 API) or, for a huge vectored
// batch, as one array. Returns how many descriptors were taken; the rest did not fit and stay
// queued in JS. `hold` says whether JS still holds queued work after this call (keeps the loop
// alive).
NAN_METHOD(Backend::Flush) {
  Instance* inst = Live(info);
  if (inst == nullptr) {
    Nan::ThrowError("the backend is closed");
    return;
  }
  if (!info[0]->IsUint32() || !(info[2]->IsArray() || info[2]->IsNull())) {
    Nan::ThrowTypeError("flush(count: number, hold: boolean, objects: unknown[] | null, ...objects)");
    return;
  }
  const size_t count = Nan::To<uint32_t>(info[0]).FromJust();
  if (count > inst->sq_cap) {
    Nan::ThrowRangeError("flush: count is larger than the submission buffer");
    return;
  }
  v8::Local<v8::Value> objs = info[2];
  Engine* engine = inst->engine.get();
  size_t taken = 0;
  OpDesc d;
  for (; taken < count; ++taken) {
    const int32_t* w = inst->sq_i + taken * kSqInts;
    const double* f = inst->sq_f + taken * kSqDoubles;
    d.op = w[0];
    d.fd = w[1];
    d.a = w[2];
    d.b = w[3];
    d.c = w[4];
    d.id = static_cast<uint64_t>(f[0]);
    d.offset = -1;
    d.ms = f[2];
    d.target = d.op == kOpCancel ? static_cast<uint64_t>(f[2]) : 0;
    d.data = nullptr;
    d.len = 0;
    d.prep_error = 0;
    if (std::isfinite(f[1]) && f[1] >= 0) {
      // Submit checks positions (safe integers), but the descriptor is written at flush from an
      // object the caller may have changed since: a position past the largest loff_t is refused as
      // the kernel refuses a negative one (EINVAL), never converted (undefined behaviour).
      if (f[1] < 9223372036854775808.0) {
        d.offset = static_cast<int64_t>(f[1]);
      } else {
        d.prep_error = EINVAL;
      }
    }
    bool ok = true;
    switch (d.op) {
      case kOpRead:
      case kOpWrite:
      case kOpRecv:
      case kOpSend: {
        v8::Local<v8::Value> v;
        struct iovec iov;
        ok = ObjectAt(info, objs, kFlushFixedArgs, w[5], &v) && BindBuffer(&inst->store_cache, v, d.a, &iov, &d.pin);
        if (ok) {
          d.data = iov.iov_base;
          d.len = iov.iov_len;
        }
        break;
      }
      case kOpReadv:
      case kOpWritev: {
        const int32_t first = w[5];
        const int32_t n = w[6];
        if (first < 0 || n < 0 || n > 1024) {
          ok = false;
          break;
        }
        d.iov.resize(static_cast<size_t>(n));
        d.pins.resize(static_cast<size_t>(n));
        for (int32_t j = 0; ok && j < n; ++j) {
          v8::Local<v8::Value> b;
          const size_t k = static_cast<size_t>(j);
          ok = ObjectAt(info, objs, kFlushFixedArgs, first + j, &b) && BindWholeView(&inst->store_cache, b, &d.iov[k], &d.pins[k]);
        }
        break;
      }
      case kOpOpen:
      case kOpListen:
      case kOpConnect: {
        v8::Local<v8::Value> v;
        ok = ObjectAt(info, objs, kFlushFixedArgs, w[5], &v) && StringOf(v, &d.str);
        if (ok && d.op == kOpOpen && d.str.find('\0') != std::string::npos) ok = false;
        break;
      }
      default:
        if (d.op < 0 || d.op >= kOpCount) d.prep_error = EINVAL;
        break;
    }
    // A buffer detached (transferred) or shrunk since submit: fail the operation rather than
    // touch memory that is not there.
    if (!ok) d.prep_error = EFAULT;
    if (!engine->Prepare(static_cast<uint32_t>(d.id & kSlotMask), d)) break;
    d.pin.reset();
    d.pins.clear();
    d.iov.clear();
  }
  d.pin.reset();
  d.pins.clear();
  if (!inst->in_callback) engine->SubmitPrepared(false);
  inst->js_hold = info[1]->IsTrue();
  inst->UpdateRef();
  info.GetReturnValue().Set(static_cast<uint32_t>(taken));
}

// reap(waitMs, hold): writes up to cqCap completions into the completion buffer, blocking up to
// waitMs (0: never) for the first one. Returns how many.
NAN_METHOD(Backend::Reap) {
  Instance* inst = Live(info);
  if (inst == nullptr) {
    info.GetReturnValue().Set(0);
    return;
  }
  int wait_ms = 0;
  if (info[0]->IsNumber()) {
    const double t = Nan::To<double>(info[0]).FromJust();
    wait_ms = t > 0 ? static_cast<int>(std::min(t, 2147483647.0)) : 0;
  }
  const size_t n = ReapInto(inst, wait_ms);
  inst->js_hold = info[1]->IsTrue();
  inst->UpdateRef();
  info.GetReturnValue().Set(static_cast<uint32_t>(n));
}

// wake(hold): makes the loop call onReady on its next turn (work JS completed or queued itself).
NAN_METHOD(Backend::Wake) {
  Instance* inst = Live(info);
  if (inst == nullptr) return;
  inst->js_hold = info[0]->IsTrue();
  inst->engine->Wake();
  inst->UpdateRef();
}

// preReap(on): whether OnPoll reaps completions into the completion buffer before it calls
// onReady (JS has a consumer for them), or leaves them in the ring.
NAN_METHOD(Backend::PreReap) {
  Instance* inst = Live(info);
  if (inst == nullptr) return;
  inst->pre_reap = info[0]->IsTrue();
}

NAN_METHOD(Backend::InFlight) {
  Instance* inst = Live(info);
  info.GetReturnValue().Set(static_cast<double>(inst == nullptr ? 0 : inst->engine->user_in_flight()));
}

NAN_METHOD(Backend::EventFd) {
  Instance* inst = Live(info);
  info.GetReturnValue().Set(inst == nullptr ? -EBADF : inst->engine->NewEventFd());
}

// stats(): [enters, sqes submitted, cqes reaped, in flight, setup flags, kernel features, sq entries, cq entries,
// queued accepted connections, ring fd registered (1) or not (0)]
NAN_METHOD(Backend::Stats) {
  Instance* inst = Live(info);
  constexpr uint32_t kStats = 10;
  v8::Local<v8::Array> out = Nan::New<v8::Array>(kStats);
  if (inst != nullptr) {
    Engine* e = inst->engine.get();
    const double v[kStats] = {static_cast<double>(e->enters()),         static_cast<double>(e->sqes_submitted()),
                              static_cast<double>(e->cqes_reaped()),    static_cast<double>(e->in_flight()),
                              static_cast<double>(e->ring().setup_flags()), static_cast<double>(e->ring().kernel_features()),
                              static_cast<double>(e->ring().sq_entries()), static_cast<double>(e->ring().cq_entries()),
                              static_cast<double>(e->queued_accepts()), e->ring().ring_fd_registered() ? 1.0 : 0.0};
    for (uint32_t i = 0; i < kStats; ++i) Nan::Set(out, i, Nan::New<v8::Number>(v[i]));
  }
  info.GetReturnValue().Set(out);
}

// close(): cancels everything in flight, waits for the kernel to release buffers, closes the
// ring, the eventfds and the poll handle. Idempotent.
NAN_METHOD(Backend::Close) {
  Backend* self = Nan::ObjectWrap::Unwrap<Backend>(info.Holder());
  if (self == nullptr || self->inst_ == nullptr) return;
  BeginClose(self->inst_, true);
}

void Backend::Init(v8::Local<v8::Object> target) {
  v8::Local<v8::FunctionTemplate> tpl = Nan::New<v8::FunctionTemplate>(New);
  tpl->SetClassName(Nan::New("IoUringBackend").ToLocalChecked());
  tpl->InstanceTemplate()->SetInternalFieldCount(2);  // the ObjectWrap, onReady (kOnReadyField)
  Nan::SetPrototypeMethod(tpl, "flush", Flush);
  Nan::SetPrototypeMethod(tpl, "reap", Reap);
  Nan::SetPrototypeMethod(tpl, "wake", Wake);
  Nan::SetPrototypeMethod(tpl, "preReap", PreReap);
  Nan::SetPrototypeMethod(tpl, "inFlight", InFlight);
  Nan::SetPrototypeMethod(tpl, "eventfd", EventFd);
  Nan::SetPrototypeMethod(tpl, "stats", Stats);
  Nan::SetPrototypeMethod(tpl, "close", Close);
  Nan::Set(target, Nan::New("IoUringBackend").ToLocalChecked(), Nan::GetFunction(tpl).ToLocalChecked());
}

// ---------------------------------------------------------------------------------------------
// Module functions (no backend instance needed)

// probe(): [0 | -errno, reason]
NAN_METHOD(Probe) {
  std::string detail;
  const int r = ProbeIoUring(&detail);
  v8::Local<v8::Array> out = Nan::New<v8::Array>(2);
  Nan::Set(out, 0, Nan::New(r));
  Nan::Set(out, 1, Nan::New(detail).ToLocalChecked());
  info.GetReturnValue().Set(out);
}

NAN_MODULE_INIT(InitModule) {
  // Never unloaded: the memory allocateBuffer() hands out is freed by a deleter in this library,
  // which V8 runs when it tears a worker's heap down, after Node has dlclose()d the worker's
  // addons (a worker that allocated pool buffers crashed the process when it ended).
  PinThisLibrary();
  Backend::Init(target);
  Nan::SetMethod(target, "probe", Probe);
  Nan::SetMethod(target, "address", AddressMethod);
  Nan::SetMethod(target, "allocateBuffer", AllocateBufferMethod);
  Nan::SetMethod(target, "signalFd", SignalFdMethod);
  Nan::SetMethod(target, "setAffinity", SetAffinityMethod);
}

}  // namespace
}  // namespace miniss

NAN_MODULE_WORKER_ENABLED(miniss_iouring, miniss::InitModule)
