// The only file of this addon that knows V8/nan. It decodes operation descriptors from memory
// shared with JS, pins their buffers, joins the ring to Node's event loop with one uv_poll_t on
// the ring's registered eventfd, and tears everything down on close(), garbage collection or
// environment (worker thread) exit. The ring itself is plain C++ in io_uring.{h,cc}.
#include <nan.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "io_uring.h"
#include "miniss/module_methods.h"  // @miniss/native-common: address, allocateBuffer, signalFd, setAffinity

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
// Callback rounds per eventfd wake-up when completions arrive inline (see OnPoll).
constexpr int kMaxReadyRounds = 8;

// Pinning a buffer means holding its std::shared_ptr<v8::BackingStore>; asking V8 for it
// (ArrayBuffer::GetBackingStore) on every operation costs a lookup in V8's backing-store
// bookkeeping and an atomic reference count, and an HTTP server submits the same few buffers (a
// connection's receive buffer, a pre-encoded response) over and over. So each instance keeps a
// small direct-mapped cache (the same design as the epoll backend's): ArrayBuffer (held weakly,
// so the cache never keeps a JS object alive) -> its backing store. A hit needs the same
// ArrayBuffer object (identity) with the same data address (an ArrayBuffer never changes its
// memory without being detached, and a detached one has none), so the cached store is exactly
// the one GetBackingStore would return. The operation's slot gets its own copy of the
// shared_ptr, so the memory stays pinned until the completion is reaped whatever happens to the
// cache entry or the ArrayBuffer. Only stores up to kStoreCacheMaxBytes are cached; entries whose
// ArrayBuffer was collected are dropped whenever the ring goes idle and after every
// kStoreCacheSweepEvery fills, so the memory the cache keeps alive after its buffers died is
// bounded (kStoreCacheSize * 64 KiB, until the next sweep); everything is dropped at close.
constexpr size_t kStoreCacheSize = 256;  // a power of two (the hash below yields 8 bits)
constexpr size_t kStoreCacheMaxBytes = 64 * 1024;
constexpr uint32_t kStoreCacheSweepEvery = 1024;
// Arguments of flush() before the batch's objects (see Backend::Flush).
constexpr int kFlushFixedArgs = 3;

struct StoreCacheEntry {
  v8::Global<v8::ArrayBuffer> buffer;  // weak: reset by the GC when the ArrayBuffer dies
  std::shared_ptr<v8::BackingStore> store;
  void* data = nullptr;
};

class Backend;

struct Instance {
  uv_poll_t poll;
  std::unique_ptr<Engine> engine;
  node::AsyncCleanupHookHandle hook;
  void (*hook_done)(void*) = nullptr;
  void* hook_arg = nullptr;
  Nan::Callback on_ready;
  std::unique_ptr<Nan::AsyncResource> async;
  Backend* wrap = nullptr;
  bool closing = false;
  bool refd = false;
  bool in_callback = false;
  bool js_hold = false;  // JS holds work that needs another loop turn (queued ops, local completions)
  std::shared_ptr<v8::BackingStore> sq_store;
  std::shared_ptr<v8::BackingStore> cq_store;
  int32_t* sq_i = nullptr;
  double* sq_f = nullptr;
  size_t sq_cap = 0;
  double* cq = nullptr;
  size_t cq_cap = 0;
  std::unique_ptr<Completion[]> scratch;
  StoreCacheEntry store_cache[kStoreCacheSize];
  bool cache_dirty = false;  // some entry is filled
  uint32_t cache_fills = 0;  // since the last sweep
  Nan::Persistent<v8::Object> callback_target;  // the receiver of on_ready, made once

  // Drops cache entries whose ArrayBuffer has been collected (their stores may hold memory).
  void SweepStoreCache() {
    cache_fills = 0;
    if (!cache_dirty) return;
    bool any = false;
    for (StoreCacheEntry& e : store_cache) {
      if (e.store && e.buffer.IsEmpty()) {
        e.store.reset();
        e.data = nullptr;
      }
      any = any || e.store != nullptr;
    }
    cache_dirty = any;
  }

  void ClearStoreCache() {
    for (StoreCacheEntry& e : store_cache) {
      e.buffer.Reset();
      e.store.reset();
      e.data = nullptr;
    }
    cache_dirty = false;
  }

  // The poll handle keeps the loop alive only while something is pending.
  void UpdateRef() {
    const bool want = !closing && engine && (engine->HoldsLoop() || js_hold);
    if (want == refd) return;
    refd = want;
    if (want) {
      uv_ref(reinterpret_cast<uv_handle_t*>(&poll));
    } else {
      uv_unref(reinterpret_cast<uv_handle_t*>(&poll));
      SweepStoreCache();
    }
  }
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
  if (now && inst->engine) inst->engine->Shutdown(kShutdownWaitMs);
}

class Backend : public Nan::ObjectWrap {
 public:
  static void Init(v8::Local<v8::Object> target);

  explicit Backend(Instance* inst) : inst_(inst) { inst->wrap = this; }
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

void OnClosed(uv_handle_t* handle) {
  Instance* inst = static_cast<Instance*>(handle->data);
  Nan::HandleScope scope;
  if (inst->engine) inst->engine->Shutdown(kShutdownWaitMs);  // a no-op after close()
  inst->engine.reset();
  inst->async.reset();
  inst->on_ready.Reset();
  inst->sq_store.reset();
  inst->cq_store.reset();
  inst->ClearStoreCache();
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
  BeginClose(inst, true);  // when close() already began it, OnClosed is pending and calls done
}

void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
  Instance* inst = static_cast<Instance*>(handle->data);
  if (inst->closing || !inst->engine || status < 0) return;
  Engine* engine = inst->engine.get();
  engine->DrainEventFd();
  Nan::HandleScope scope;
  // Each round: run pending task work (and submit what is queued) so the completions are in the
  // CQ ring, let JS reap and react, then submit what it queued with one io_uring_enter. Requests
  // that complete inline during that submit (page-cached reads, NOPs, sends into an empty socket
  // buffer) are in the CQ ring at once: go round again instead of waiting for the eventfd to come
  // back through the next loop iteration's epoll_wait, a few rounds at most so timers and other
  // handles are not starved. (Their eventfd signal stays pending: one extra, empty wake-up later.)
  // A callback that reaps nothing (no callback registered in JS) ends the rounds: completions
  // it leaves in the CQ ring wait for the next eventfd signal, never a busy loop.
  bool progress = false;
  for (int round = 0; round < kMaxReadyRounds; ++round) {
    if (engine->HasUnsubmitted() || engine->ring().KernelHasCompletions()) engine->SubmitPrepared(true);
    if (inst->on_ready.IsEmpty() || !inst->async) break;
    const uint64_t before = engine->delivered();
    // Through the async resource, so the callback has an async context and the microtasks it
    // queues (promise continuations, which submit the next operations and flush) run before
    // control comes back here.
    inst->in_callback = true;
    v8::Local<v8::Object> target = Nan::New(inst->callback_target);
    inst->async->runInAsyncScope(target, inst->on_ready.GetFunction(), 0, nullptr);
    inst->in_callback = false;
    if (inst->closing || !inst->engine || engine->closed()) return;
    // Flushes made during the callback only filled the SQ ring: submit them all with one
    // io_uring_enter now.
    if (engine->HasUnsubmitted()) engine->SubmitPrepared(false);
    progress = engine->delivered() != before;
    if (!progress || !engine->MoreReady()) break;
  }
  if (inst->closing || !inst->engine || engine->closed()) return;
  // Completions still waiting without a new eventfd signal (more rounds than allowed, completions
  // made in the engine, task work not run yet): come back on the next loop turn.
  if (progress ? engine->MoreReady() : engine->ring().CqReady() == 0 && engine->ring().KernelHasCompletions()) {
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
  inst->on_ready.Reset(info[8].As<v8::Function>());
  inst->async = std::make_unique<Nan::AsyncResource>("miniss:IoUringBackend");
  inst->callback_target.Reset(Nan::New<v8::Object>());
  Instance* raw = inst.release();
  uv_unref(reinterpret_cast<uv_handle_t*>(&raw->poll));
  r = uv_poll_start(&raw->poll, UV_READABLE, OnPoll);
  raw->hook = node::AddEnvironmentCleanupHook(info.GetIsolate(), CleanupHook, raw);
  Backend* self = new Backend(raw);
  self->Wrap(info.This());
  if (r != 0) {
    BeginClose(raw, true);
    Nan::ThrowError(Nan::ErrnoException(-r, "uv_poll_start", uv_strerror(r)));
    return;
  }
  info.GetReturnValue().Set(info.This());
}

// The backing store of `ab`, from the instance's cache when possible (see StoreCacheEntry).
std::shared_ptr<v8::BackingStore> StoreOf(Instance* inst, v8::Local<v8::ArrayBuffer> ab) {
  void* data = ab->Data();  // nullptr when detached or empty
  const uintptr_t key = reinterpret_cast<uintptr_t>(data);
  // Fibonacci hashing: the top 8 bits of key * 2^64/phi (the low bits of heap addresses repeat).
  static_assert(kStoreCacheSize == 256, "the hash below yields 8 bits");
  StoreCacheEntry& e = inst->store_cache[(static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> 56];
  if (data != nullptr && e.data == data && e.buffer == ab) return e.store;
  std::shared_ptr<v8::BackingStore> store = ab->GetBackingStore();
  if (data != nullptr && store->Data() == data && store->ByteLength() <= kStoreCacheMaxBytes) {
    e.buffer.Reset(v8::Isolate::GetCurrent(), ab);
    e.buffer.SetWeak();
    e.store = store;
    e.data = data;
    inst->cache_dirty = true;
    if (++inst->cache_fills >= kStoreCacheSweepEvery) inst->SweepStoreCache();
  }
  return store;
}

// Points `data`/`len` at the first `len` bytes of a Uint8Array (len < 0: all of it) and pins
// its backing store. False when the view is not one, is detached, or is shorter than `len`.
bool BindBuffer(Instance* inst, v8::Local<v8::Value> value, int64_t len, void** data, size_t* out_len,
                std::shared_ptr<void>* pin) {
  if (!value->IsArrayBufferView()) return false;
  v8::Local<v8::ArrayBufferView> view = value.As<v8::ArrayBufferView>();
  const size_t have = view->ByteLength();  // 0 once detached
  const size_t want = len < 0 ? have : static_cast<size_t>(len);
  if (want > have) return false;
  std::shared_ptr<v8::BackingStore> store = StoreOf(inst, view->Buffer());
  char* base = static_cast<char*>(store->Data());
  if (base == nullptr && want > 0) return false;
  *data = base == nullptr ? nullptr : base + view->ByteOffset();
  *out_len = want;
  *pin = std::move(store);
  return true;
}

// Object `index` of the batch: an argument after the fixed ones (objs is null), or an element
// of the array `objs` (a batch with too many objects to pass as arguments).
bool ObjectAt(const Nan::FunctionCallbackInfo<v8::Value>& info, v8::Local<v8::Value> objs, int32_t index,
              v8::Local<v8::Value>* out) {
  if (index < 0) return false;
  if (!objs->IsArray()) {
    if (index >= info.Length() - kFlushFixedArgs) return false;
    *out = info[kFlushFixedArgs + index];
    return true;
  }
  return Nan::Get(objs.As<v8::Array>(), static_cast<uint32_t>(index)).ToLocal(out);
}

bool StringOf(v8::Local<v8::Value> v, std::string* out) {
  if (!v->IsString()) return false;
  Nan::Utf8String s(v);
  if (*s == nullptr) return false;
  out->assign(*s, static_cast<size_t>(s.length()));
  return true;
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
    d.offset = std::isfinite(f[1]) && f[1] >= 0 ? static_cast<int64_t>(f[1]) : -1;
    d.ms = f[2];
    d.target = d.op == kOpCancel ? static_cast<uint64_t>(f[2]) : 0;
    d.data = nullptr;
    d.len = 0;
    d.prep_error = 0;
    bool ok = true;
    switch (d.op) {
      case kOpRead:
      case kOpWrite:
      case kOpRecv:
      case kOpSend: {
        v8::Local<v8::Value> v;
        ok = ObjectAt(info, objs, w[5], &v) && BindBuffer(inst, v, d.a, &d.data, &d.len, &d.pin);
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
          ok = ObjectAt(info, objs, first + j, &b) && BindBuffer(inst, b, -1, &d.iov[k].iov_base, &d.iov[k].iov_len, &d.pins[k]);
        }
        break;
      }
      case kOpOpen:
      case kOpListen:
      case kOpConnect: {
        v8::Local<v8::Value> v;
        ok = ObjectAt(info, objs, w[5], &v) && StringOf(v, &d.str);
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
  Completion* tmp = inst->scratch.get();
  const size_t n = inst->engine->Reap(tmp, inst->cq_cap, wait_ms);
  double* out = inst->cq;
  for (size_t i = 0; i < n; ++i) {
    out[i * kCqDoubles] = static_cast<double>(tmp[i].id);
    out[i * kCqDoubles + 1] = tmp[i].res;
    out[i * kCqDoubles + 2] = tmp[i].flags;
  }
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

NAN_METHOD(Backend::InFlight) {
  Instance* inst = Live(info);
  info.GetReturnValue().Set(static_cast<double>(inst == nullptr ? 0 : inst->engine->user_in_flight()));
}

NAN_METHOD(Backend::EventFd) {
  Instance* inst = Live(info);
  info.GetReturnValue().Set(inst == nullptr ? -EBADF : inst->engine->NewEventFd());
}

// stats(): [enters, sqes submitted, cqes reaped, in flight, setup flags, kernel features, sq entries, cq entries,
// queued accepted connections]
NAN_METHOD(Backend::Stats) {
  Instance* inst = Live(info);
  v8::Local<v8::Array> out = Nan::New<v8::Array>(9);
  if (inst != nullptr) {
    Engine* e = inst->engine.get();
    const double v[9] = {static_cast<double>(e->enters()),         static_cast<double>(e->sqes_submitted()),
                         static_cast<double>(e->cqes_reaped()),    static_cast<double>(e->in_flight()),
                         static_cast<double>(e->ring().setup_flags()), static_cast<double>(e->ring().kernel_features()),
                         static_cast<double>(e->ring().sq_entries()), static_cast<double>(e->ring().cq_entries()),
                         static_cast<double>(e->queued_accepts())};
    for (uint32_t i = 0; i < 9; ++i) Nan::Set(out, i, Nan::New<v8::Number>(v[i]));
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
  tpl->InstanceTemplate()->SetInternalFieldCount(1);
  Nan::SetPrototypeMethod(tpl, "flush", Flush);
  Nan::SetPrototypeMethod(tpl, "reap", Reap);
  Nan::SetPrototypeMethod(tpl, "wake", Wake);
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
