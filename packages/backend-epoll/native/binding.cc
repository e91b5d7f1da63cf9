// The only file of this addon that knows V8/nan: decodes operation descriptors from shared
// memory, pins their buffers, joins the reactor to Node's event loop with one uv_poll_t, and
// tears everything down on close(), garbage collection or environment (worker) exit.
#include <nan.h>
#include <sched.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "epoll.h"

namespace miniss {
namespace {

using Reactor = EpollReactor;

// Shared-memory layout, mirrored in src/index.ts. A submission descriptor is 8 int32 words
// (code, fd, a, b, c, first object index, object count, unused) plus 2 float64 words (id,
// offset-or-ms). The submission buffer holds `sqCap` int32 descriptors followed by the float64
// part; the completion buffer holds `cqCap` (id, result) float64 pairs.
constexpr size_t kSqInts = 8;
constexpr size_t kSqDoubles = 2;

// Pinning a buffer means holding its std::shared_ptr<v8::BackingStore>; asking V8 for it
// (ArrayBuffer::GetBackingStore) on every operation showed up in profiles of an HTTP server that
// submits the same few buffers (a connection's receive buffer, a pre-encoded response) over and
// over. So each instance keeps a small direct-mapped cache: ArrayBuffer (held weakly, so the
// cache never keeps a JS object alive) -> its backing store. A hit needs the same ArrayBuffer
// object (identity) with the same data address (an ArrayBuffer never changes its memory without
// being detached, and a detached one has none), so the cached store is exactly the one
// GetBackingStore would return. Only stores up to kStoreCacheMaxBytes are cached, and entries
// whose ArrayBuffer was collected are dropped whenever the reactor becomes idle and after every
// kStoreCacheSweepEvery cache fills, so the memory cache entries keep alive after their buffers
// died is bounded (kStoreCacheSize * 64 KiB, and only until the next sweep). 256 entries keep
// the buffers of a few hundred busy connections (one receive buffer each) without collisions
// thrashing the cache.
constexpr size_t kStoreCacheSize = 256;  // a power of two
constexpr size_t kStoreCacheMaxBytes = 64 * 1024;
constexpr uint32_t kStoreCacheSweepEvery = 1024;

struct StoreCacheEntry {
  v8::Global<v8::ArrayBuffer> buffer;  // weak: reset by the GC when the ArrayBuffer dies
  std::shared_ptr<v8::BackingStore> store;
  void* data = nullptr;
};

class Backend;

struct Instance {
  uv_poll_t poll;
  std::unique_ptr<Reactor> reactor;
  node::AsyncCleanupHookHandle hook;
  void (*hook_done)(void*) = nullptr;
  void* hook_arg = nullptr;
  Nan::Callback on_event;
  std::unique_ptr<Nan::AsyncResource> async;
  Backend* wrap = nullptr;
  bool closing = false;
  bool refd = false;
  std::shared_ptr<v8::BackingStore> sq_store;
  std::shared_ptr<v8::BackingStore> cq_store;
  int32_t* sq_i = nullptr;
  double* sq_f = nullptr;
  size_t sq_cap = 0;
  double* cq = nullptr;
  size_t cq_cap = 0;
  StoreCacheEntry store_cache[kStoreCacheSize];
  bool cache_dirty = false;  // some entry is filled
  uint32_t cache_fills = 0;  // since the last sweep
  Nan::Persistent<v8::Object> callback_target;  // the receiver of on_event, made once

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

  // The poll handle keeps the loop alive only while operations are in flight.
  void UpdateRef() {
    const bool want = !closing && reactor && reactor->in_flight() > 0;
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

// Starts closing: the handle stops polling at once; the rest happens in OnClosed.
void BeginClose(Instance* inst) {
  if (inst->closing) return;
  inst->closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&inst->poll), OnClosed);
}

class Backend : public Nan::ObjectWrap {
 public:
  static NAN_MODULE_INIT(Init);

  explicit Backend(Instance* inst) : inst_(inst) { inst->wrap = this; }
  ~Backend() override {
    // Garbage collected without close(): only stop polling here (this may run inside GC, where
    // no V8 call is allowed); OnClosed releases the reactor and the persistent handles later.
    if (inst_ != nullptr) {
      inst_->wrap = nullptr;
      BeginClose(inst_);
    }
  }

  Instance* inst_;

 private:
  static NAN_METHOD(New);
  static NAN_METHOD(Flush);
  static NAN_METHOD(Reap);
  static NAN_METHOD(Cancel);
  static NAN_METHOD(Close);
  static NAN_METHOD(InFlight);
  static NAN_METHOD(EventFd);
  static NAN_METHOD(Stats);

  static Instance* Live(const Nan::FunctionCallbackInfo<v8::Value>& info) {
    Backend* self = Nan::ObjectWrap::Unwrap<Backend>(info.Holder());
    if (self == nullptr || self->inst_ == nullptr || self->inst_->closing) return nullptr;
    return self->inst_;
  }
};

void OnClosed(uv_handle_t* handle) {
  Instance* inst = static_cast<Instance*>(handle->data);
  Nan::HandleScope scope;
  // Cancels what is left, joins the pool threads (a job in a blocking system call finishes
  // first, its buffers pinned until then) and closes the reactor's fds. A no-op after close().
  if (inst->reactor) inst->reactor->Shutdown();
  inst->reactor.reset();
  inst->async.reset();
  inst->on_event.Reset();
  inst->callback_target.Reset();
  inst->ClearStoreCache();
  inst->sq_store.reset();
  inst->cq_store.reset();
  if (inst->wrap != nullptr) inst->wrap->inst_ = nullptr;
  void (*done)(void*) = inst->hook_done;
  void* done_arg = inst->hook_arg;
  // A no-op when the hook is the one running right now.
  if (inst->hook) node::RemoveEnvironmentCleanupHook(std::move(inst->hook));
  delete inst;
  if (done != nullptr) done(done_arg);
}

// Runs when the environment (main thread at exit, or a worker being terminated) shuts down.
void CleanupHook(void* arg, void (*done)(void*), void* done_arg) {
  Instance* inst = static_cast<Instance*>(arg);
  inst->hook_done = done;
  inst->hook_arg = done_arg;
  BeginClose(inst);  // when close() already began it, OnClosed is pending and will call done
}

void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
  Instance* inst = static_cast<Instance*>(handle->data);
  if (inst->closing || !inst->reactor || status < 0) return;
  Nan::HandleScope scope;
  const size_t ready = inst->reactor->Process(0);
  inst->UpdateRef();
  if (ready > 0 && !inst->on_event.IsEmpty() && inst->async) {
    // Through the async resource, so the callback has an async context and the microtasks it
    // queues (promise resolutions) run before control returns to the loop.
    inst->async->runInAsyncScope(Nan::New(inst->callback_target), inst->on_event.GetFunction(), 0, nullptr);
  }
}

// new EpollBackend(sqBuffer, cqBuffer, sqCap, cqCap, maxEvents, poolThreads, onEvent)
NAN_METHOD(Backend::New) {
  if (!info.IsConstructCall()) {
    Nan::ThrowTypeError("EpollBackend must be called with new");
    return;
  }
  if (info.Length() < 7 || !info[0]->IsArrayBuffer() || !info[1]->IsArrayBuffer() || !info[2]->IsUint32() ||
      !info[3]->IsUint32() || !info[4]->IsUint32() || !info[5]->IsUint32() || !info[6]->IsFunction()) {
    Nan::ThrowTypeError("EpollBackend(sq: ArrayBuffer, cq: ArrayBuffer, sqCap, cqCap, maxEvents, poolThreads, onEvent)");
    return;
  }
  v8::Local<v8::ArrayBuffer> sq = info[0].As<v8::ArrayBuffer>();
  v8::Local<v8::ArrayBuffer> cq = info[1].As<v8::ArrayBuffer>();
  const size_t sq_cap = Nan::To<uint32_t>(info[2]).FromJust();
  const size_t cq_cap = Nan::To<uint32_t>(info[3]).FromJust();
  if (sq_cap == 0 || cq_cap == 0 || sq->ByteLength() < sq_cap * (kSqInts * 4 + kSqDoubles * 8) ||
      cq->ByteLength() < cq_cap * 16) {
    Nan::ThrowRangeError("submission/completion buffers are smaller than their capacities");
    return;
  }
  Reactor::Options options;
  options.max_events = static_cast<int>(Nan::To<uint32_t>(info[4]).FromJust());
  options.pool_threads = static_cast<int>(Nan::To<uint32_t>(info[5]).FromJust());
  int err = 0;
  std::unique_ptr<Reactor> reactor = Reactor::Create(options, &err);
  if (!reactor) {
    Nan::ThrowError(Nan::ErrnoException(-err, "epoll_create1", "cannot create the epoll backend"));
    return;
  }
  auto inst = std::make_unique<Instance>();
  uv_loop_t* loop = Nan::GetCurrentEventLoop();
  int r = uv_poll_init(loop, &inst->poll, reactor->fd());
  if (r != 0) {
    Nan::ThrowError(Nan::ErrnoException(-r, "uv_poll_init", uv_strerror(r)));
    return;
  }
  // From here on the handle is initialised and may be freed only in its close callback.
  inst->poll.data = inst.get();
  inst->reactor = std::move(reactor);
  inst->sq_store = sq->GetBackingStore();
  inst->cq_store = cq->GetBackingStore();
  inst->sq_i = static_cast<int32_t*>(inst->sq_store->Data());
  inst->sq_f = reinterpret_cast<double*>(static_cast<char*>(inst->sq_store->Data()) + sq_cap * kSqInts * 4);
  inst->sq_cap = sq_cap;
  inst->cq = static_cast<double*>(inst->cq_store->Data());
  inst->cq_cap = cq_cap;
  inst->on_event.Reset(info[6].As<v8::Function>());
  inst->callback_target.Reset(Nan::New<v8::Object>());
  inst->async = std::make_unique<Nan::AsyncResource>("miniss:EpollBackend");
  Instance* raw = inst.release();
  uv_unref(reinterpret_cast<uv_handle_t*>(&raw->poll));
  r = uv_poll_start(&raw->poll, UV_READABLE, OnPoll);
  raw->hook = node::AddEnvironmentCleanupHook(info.GetIsolate(), CleanupHook, raw);
  Backend* self = new Backend(raw);
  self->Wrap(info.This());
  if (r != 0) {
    BeginClose(raw);
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
  StoreCacheEntry& e = inst->store_cache[(static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> 56];
  static_assert(kStoreCacheSize == 256, "the hash above yields 8 bits");
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

// Binds `len` bytes of a Uint8Array (or any view) to iov and pins its backing store.
bool BindBuffer(Instance* inst, v8::Local<v8::Value> value, int64_t len, struct iovec* iov, std::shared_ptr<void>* pin) {
  if (!value->IsArrayBufferView()) return false;
  v8::Local<v8::ArrayBufferView> view = value.As<v8::ArrayBufferView>();
  const size_t have = view->ByteLength();  // 0 once detached
  const size_t want = len < 0 ? have : static_cast<size_t>(len);
  if (want > have) return false;
  std::shared_ptr<v8::BackingStore> store = StoreOf(inst, view->Buffer());
  char* data = static_cast<char*>(store->Data());
  if (data == nullptr && want > 0) return false;
  iov->iov_base = data == nullptr ? nullptr : data + view->ByteOffset();
  iov->iov_len = want;
  *pin = std::move(store);
  return true;
}

// Object `index` of a flush: an argument after `objects` when `objects` is null (reading an
// argument is much cheaper than an element lookup through the V8 API), else from the array.
bool ObjectAt(const Nan::FunctionCallbackInfo<v8::Value>& info, v8::Local<v8::Value> objs, int32_t index, v8::Local<v8::Value>* out) {
  if (index < 0) return false;
  if (!objs->IsArray()) {
    if (index >= info.Length() - 2) return false;
    *out = info[2 + index];
    return true;
  }
  return Nan::Get(objs.As<v8::Array>(), static_cast<uint32_t>(index)).ToLocal(out);
}

std::string StringAt(const Nan::FunctionCallbackInfo<v8::Value>& info, v8::Local<v8::Value> objs, int32_t index, bool* ok) {
  v8::Local<v8::Value> v;
  if (!ObjectAt(info, objs, index, &v) || !v->IsString()) {
    *ok = false;
    return std::string();
  }
  Nan::Utf8String s(v);
  *ok = *s != nullptr;
  return *ok ? std::string(*s, static_cast<size_t>(s.length())) : std::string();
}

// flush(count, objects) or flush(count, null, ...objects): starts `count` descriptors; returns how
// many completions are ready.
NAN_METHOD(Backend::Flush) {
  Instance* inst = Live(info);
  if (inst == nullptr) {
    Nan::ThrowError("the backend is closed");
    return;
  }
  if (!info[0]->IsUint32() || !(info[1]->IsArray() || info[1]->IsNull())) {
    Nan::ThrowTypeError("flush(count: number, objects: unknown[] | null, ...objects)");
    return;
  }
  const size_t count = Nan::To<uint32_t>(info[0]).FromJust();
  if (count > inst->sq_cap) {
    Nan::ThrowRangeError("flush: count is larger than the submission buffer");
    return;
  }
  v8::Local<v8::Value> objs = info[1];
  Reactor* reactor = inst->reactor.get();
  for (size_t i = 0; i < count; i++) {
    const int32_t* d = inst->sq_i + i * kSqInts;
    const double* f = inst->sq_f + i * kSqDoubles;
    Op* op = reactor->NewOp();
    op->id = static_cast<uint64_t>(f[0]);
    op->code = d[0];
    op->fd = d[1];
    op->a = d[2];
    op->b = d[3];
    op->c = d[4];
    const int32_t obj = d[5];
    const int32_t nobj = d[6];
    op->offset = std::isfinite(f[1]) ? static_cast<int64_t>(f[1]) : -1;
    op->ms = f[1];
    bool ok = true;
    switch (op->code) {
      case kRead:
      case kWrite:
      case kRecv:
      case kSend: {
        v8::Local<v8::Value> v;
        ok = ObjectAt(info, objs, obj, &v) && BindBuffer(inst, v, op->a, &op->iov1, &op->pin1);
        break;
      }
      case kReadv:
      case kWritev: {
        if (nobj <= 0 || nobj > 1024 || obj < 0) {
          ok = nobj == 0 && obj >= 0;  // zero buffers: a zero-length vectored call
          if (ok) op->iov1 = {};
          break;
        }
        op->iovs.resize(static_cast<size_t>(nobj));
        op->pins.resize(static_cast<size_t>(nobj));
        for (int32_t j = 0; ok && j < nobj; j++) {
          v8::Local<v8::Value> v;
          ok = ObjectAt(info, objs, obj + j, &v) &&
               BindBuffer(inst, v, -1, &op->iovs[static_cast<size_t>(j)], &op->pins[static_cast<size_t>(j)]);
        }
        break;
      }
      case kOpen:
      case kListen:
      case kConnect:
        op->path = StringAt(info, objs, obj, &ok);
        if (ok && op->code == kOpen && op->path.find('\0') != std::string::npos) ok = false;
        break;
      default:
        break;
    }
    if (!ok) {
      // A buffer detached (transferred) or shrunk since submit: refuse rather than touch it.
      reactor->Fail(op, -EFAULT);
      continue;
    }
    reactor->Submit(op);
  }
  inst->UpdateRef();
  info.GetReturnValue().Set(static_cast<uint32_t>(reactor->ready()));
}

// reap(timeoutMs): dispatches pending events (waiting up to timeoutMs, 0 = not at all) and
// writes up to cqCap completions to the completion buffer. Returns how many.
NAN_METHOD(Backend::Reap) {
  Instance* inst = Live(info);
  if (inst == nullptr) {
    info.GetReturnValue().Set(0);
    return;
  }
  int timeout = 0;
  if (info[0]->IsNumber()) {
    const double t = Nan::To<double>(info[0]).FromJust();
    timeout = t > 0 ? static_cast<int>(std::min(t, 2147483647.0)) : 0;
  }
  if (timeout > 0 || inst->reactor->ready() == 0) inst->reactor->Process(timeout);
  const size_t n = inst->reactor->Reap(inst->cq, inst->cq_cap);
  inst->UpdateRef();
  info.GetReturnValue().Set(static_cast<uint32_t>(n));
}

NAN_METHOD(Backend::Cancel) {
  Instance* inst = Live(info);
  if (inst == nullptr || !info[0]->IsNumber()) {
    info.GetReturnValue().Set(false);
    return;
  }
  const double id = Nan::To<double>(info[0]).FromJust();
  const bool r = id >= 0 && inst->reactor->Cancel(static_cast<uint64_t>(id));
  info.GetReturnValue().Set(r);
}

NAN_METHOD(Backend::InFlight) {
  Instance* inst = Live(info);
  info.GetReturnValue().Set(static_cast<uint32_t>(inst == nullptr ? 0 : inst->reactor->in_flight()));
}

// stats(): [submitted, immediate, waited, pool, nowaitReads, epollCtl, epollWait, skipped]
NAN_METHOD(Backend::Stats) {
  Instance* inst = Live(info);
  v8::Local<v8::Array> out = Nan::New<v8::Array>(8);
  if (inst != nullptr) {
    const ReactorStats& s = inst->reactor->stats();
    const uint64_t v[8] = {s.submitted, s.immediate, s.waited, s.pool, s.nowait_reads, s.epoll_ctl, s.epoll_wait, s.skipped};
    for (uint32_t i = 0; i < 8; i++) Nan::Set(out, i, Nan::New(static_cast<double>(v[i])));
  }
  info.GetReturnValue().Set(out);
}

NAN_METHOD(Backend::EventFd) {
  Instance* inst = Live(info);
  if (inst == nullptr) {
    info.GetReturnValue().Set(-EBADF);
    return;
  }
  info.GetReturnValue().Set(inst->reactor->CreateEventFd());
}

// close(): synchronous: after it returns every fd of the backend is closed and every pinned
// buffer released; the uv handle itself is freed in its close callback.
NAN_METHOD(Backend::Close) {
  Backend* self = Nan::ObjectWrap::Unwrap<Backend>(info.Holder());
  if (self == nullptr || self->inst_ == nullptr) return;
  Instance* inst = self->inst_;
  if (inst->closing) return;
  BeginClose(inst);  // first: libuv must stop watching the epoll fd before it is closed
  inst->reactor->Shutdown();
}

NAN_MODULE_INIT(Backend::Init) {
  v8::Local<v8::FunctionTemplate> tpl = Nan::New<v8::FunctionTemplate>(New);
  tpl->SetClassName(Nan::New("EpollBackend").ToLocalChecked());
  tpl->InstanceTemplate()->SetInternalFieldCount(1);
  Nan::SetPrototypeMethod(tpl, "flush", Flush);
  Nan::SetPrototypeMethod(tpl, "reap", Reap);
  Nan::SetPrototypeMethod(tpl, "cancel", Cancel);
  Nan::SetPrototypeMethod(tpl, "close", Close);
  Nan::SetPrototypeMethod(tpl, "inFlight", InFlight);
  Nan::SetPrototypeMethod(tpl, "eventfd", EventFd);
  Nan::SetPrototypeMethod(tpl, "stats", Stats);
  Nan::Set(target, Nan::New("EpollBackend").ToLocalChecked(), Nan::GetFunction(tpl).ToLocalChecked());
}

// address(fd, peer): [family, port, host] or -errno.
NAN_METHOD(Address) {
  if (!info[0]->IsInt32()) {
    info.GetReturnValue().Set(-EBADF);
    return;
  }
  int family = 0, port = 0;
  std::string host;
  int r = SocketAddress(Nan::To<int32_t>(info[0]).FromJust(), Nan::To<bool>(info[1]).FromJust(), &family, &port, &host);
  if (r < 0) {
    info.GetReturnValue().Set(r);
    return;
  }
  v8::Local<v8::Array> out = Nan::New<v8::Array>(3);
  Nan::Set(out, 0, Nan::New(family));
  Nan::Set(out, 1, Nan::New(port));
  Nan::Set(out, 2, Nan::New(host).ToLocalChecked());
  info.GetReturnValue().Set(out);
}

void FreeAligned(void* data, size_t /*length*/, void* /*deleter_data*/) { std::free(data); }

// allocateBuffer(capacity, alignment): zeroed native memory at an `alignment`-aligned address,
// freed by V8 when the Uint8Array's ArrayBuffer is collected.
NAN_METHOD(AllocateBuffer) {
  if (!info[0]->IsNumber() || !info[1]->IsNumber()) {
    Nan::ThrowTypeError("allocateBuffer(capacity: number, alignment: number)");
    return;
  }
  const double cap_d = Nan::To<double>(info[0]).FromJust();
  const double align_d = Nan::To<double>(info[1]).FromJust();
  if (!(cap_d >= 0) || cap_d > 1073741824.0 || cap_d != std::floor(cap_d)) {
    Nan::ThrowRangeError("allocateBuffer: capacity must be an integer between 0 and 1 GiB");
    return;
  }
  const size_t cap = static_cast<size_t>(cap_d);
  const size_t align = align_d >= 1 && align_d <= 1048576 ? static_cast<size_t>(align_d) : 0;
  if (align == 0 || (align & (align - 1)) != 0 || static_cast<double>(align) != align_d) {
    Nan::ThrowRangeError("allocateBuffer: alignment must be a power of two up to 1 MiB");
    return;
  }
  void* mem = nullptr;
  const size_t a = align < sizeof(void*) ? sizeof(void*) : align;
  if (posix_memalign(&mem, a, cap == 0 ? a : cap) != 0 || mem == nullptr) {
    Nan::ThrowError(Nan::ErrnoException(ENOMEM, "posix_memalign", "cannot allocate an aligned buffer"));
    return;
  }
  std::memset(mem, 0, cap);
  std::unique_ptr<v8::BackingStore> store = v8::ArrayBuffer::NewBackingStore(mem, cap, FreeAligned, nullptr);
  v8::Local<v8::ArrayBuffer> ab = v8::ArrayBuffer::New(info.GetIsolate(), std::move(store));
  info.GetReturnValue().Set(v8::Uint8Array::New(ab, 0, cap));
}

// signalFd(fd): adds 1 to an eventfd; thread-safe (a plain write). Returns 0 or -errno.
NAN_METHOD(SignalFd) {
  if (!info[0]->IsInt32()) {
    info.GetReturnValue().Set(-EBADF);
    return;
  }
  const int fd = Nan::To<int32_t>(info[0]).FromJust();
  uint64_t one = 1;
  ssize_t w;
  do {
    w = write(fd, &one, sizeof(one));
  } while (w < 0 && errno == EINTR);
  // EAGAIN: the counter is at its maximum, so the fd is readable already: the wake-up happened.
  info.GetReturnValue().Set(w < 0 && errno != EAGAIN ? -errno : 0);
}

// setAffinity(cpu): pins the calling thread. Returns 0 or -errno.
NAN_METHOD(SetAffinity) {
  if (!info[0]->IsInt32()) {
    info.GetReturnValue().Set(-EINVAL);
    return;
  }
  const int cpu = Nan::To<int32_t>(info[0]).FromJust();
  if (cpu < 0 || cpu >= CPU_SETSIZE) {
    info.GetReturnValue().Set(-EINVAL);
    return;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  info.GetReturnValue().Set(sched_setaffinity(0, sizeof(set), &set) < 0 ? -errno : 0);
}

// probe(): 0 when an epoll instance can be created here, else -errno. Leaves nothing behind.
NAN_METHOD(Probe) {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) {
    info.GetReturnValue().Set(-errno);
    return;
  }
  close(fd);
  info.GetReturnValue().Set(0);
}

NAN_MODULE_INIT(InitModule) {
  Backend::Init(target);
  Nan::SetMethod(target, "address", Address);
  Nan::SetMethod(target, "allocateBuffer", AllocateBuffer);
  Nan::SetMethod(target, "signalFd", SignalFd);
  Nan::SetMethod(target, "setAffinity", SetAffinity);
  Nan::SetMethod(target, "probe", Probe);
}

}  // namespace
}  // namespace miniss

NAN_MODULE_WORKER_ENABLED(miniss_epoll, miniss::InitModule)
