// The nan side shared by the readiness-model addons (epoll, kqueue): per-instance state joined to
// Node's loop with one uv_poll_t, the environment cleanup hook whose done() is called from the
// last uv_close callback, the pinned-buffer cache, descriptor decoding from the shared
// submission buffer and the JS methods that only forward to the reactor. Include it ONLY from a
// binding.cc (it includes <nan.h>); the reactor headers (op.h, thread_pool.h, epoll.h, kqueue.h)
// stay free of V8.
//
// Everything on the per-operation path (StoreCache::Get, ObjectAt, BindBuffer, DecodeOp, the
// Flush loop) is inline or a template over the concrete reactor class: no virtual calls, no
// allocation beyond what the Op itself needs (as before the move).
//
// A binding supplies a Traits struct:
//   using Reactor = ...;                       // Create(Options, int*), NewOp, Submit, Fail, ...
//   static constexpr const char* kClassName;   // "EpollBackend"
//   static constexpr const char* kAsyncName;   // "miniss:EpollBackend"
//   static constexpr const char* kCreateCall;  // syscall named in the creation error
//   static constexpr const char* kCreateText;  // its message
//   static constexpr int kTooManyIovs;         // result of readv/writev with > 1024 buffers
//   static void AddMethods(v8::Local<v8::FunctionTemplate> tpl);  // backend-only prototype methods
#ifndef MINISS_NATIVE_COMMON_ADDON_H_
#define MINISS_NATIVE_COMMON_ADDON_H_

#include <nan.h>
#include <sys/uio.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "miniss/flush_objects.h"  // ObjectAt, BindBuffer, StringOf
#include "miniss/loop_hold.h"      // LoopHold
#include "miniss/module_methods.h"  // AddressMethod, AllocateBufferMethod, ...
#include "miniss/op.h"
#include "miniss/store_cache.h"  // StoreCache

namespace miniss {

// Shared-memory layout, mirrored in @miniss/native-common's driver (TypeScript). A submission
// descriptor is 8 int32 words (code, fd, a, b, c, first object index, object count, unused) plus
// 2 float64 words (id, offset-or-ms). The submission buffer holds `sqCap` int32 descriptors
// followed by the float64 part; the completion buffer holds `cqCap` (id, result) float64 pairs.
constexpr size_t kSqInts = 8;
constexpr size_t kSqDoubles = 2;

// Flush arguments before the batch's objects: flush(count, objects, ...objects).
constexpr int kFlushFixedArgs = 2;

// Fills `op` from descriptor words `d` (kSqInts int32) and `f` (kSqDoubles float64), binding and
// pinning its buffers or reading its path. Returns 0, or the negative errno the op must fail
// with (-EFAULT: a buffer detached or shrunk since submit (for readv/writev: detached; their
// drivers check shrinking, see BindWholeView), a missing object; `too_many_iovs` for a vectored
// call with more than 1024 buffers).
inline int DecodeOp(const Nan::FunctionCallbackInfo<v8::Value>& info, v8::Local<v8::Value> objs, StoreCache* cache,
                    const int32_t* d, const double* f, Op* op, int too_many_iovs) {
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
      ok = ObjectAt(info, objs, kFlushFixedArgs, obj, &v) && BindBuffer(cache, v, op->a, &op->iov1, &op->pin1);
      break;
    }
    case kReadv:
    case kWritev: {
      // More than IOV_MAX (1024 on Linux, macOS and the BSDs).
      if (nobj > 1024) return too_many_iovs;
      if (nobj <= 0 || obj < 0) {
        ok = nobj == 0 && obj >= 0;  // zero buffers: a zero-length vectored call
        if (ok) op->iov1 = {};
        break;
      }
      op->iovs.resize(static_cast<size_t>(nobj));
      op->pins.resize(static_cast<size_t>(nobj));
      for (int32_t j = 0; ok && j < nobj; j++) {
        v8::Local<v8::Value> v;
        ok = ObjectAt(info, objs, kFlushFixedArgs, obj + j, &v) &&
             BindWholeView(cache, v, &op->iovs[static_cast<size_t>(j)], &op->pins[static_cast<size_t>(j)]);
      }
      break;
    }
    case kOpen:
    case kListen:
    case kConnect: {
      v8::Local<v8::Value> v;
      ok = ObjectAt(info, objs, kFlushFixedArgs, obj, &v) && StringOf(v, &op->path);
      if (ok && op->code == kOpen && op->path.find('\0') != std::string::npos) ok = false;
      break;
    }
    default:
      break;
  }
  return ok ? 0 : -EFAULT;
}

// The backend class of an addon: `new <kClassName>(sq, cq, sqCap, cqCap, maxEvents, poolThreads,
// onEvent)` with flush/reap/cancel/close/inFlight, plus Traits::AddMethods.
//
// What keeps a backend alive (as on io_uring, whose binding.cc explains it at kOnReadyField):
// like a libuv handle wrapped by Node, the JS object is held strongly while operations are in
// flight (Instance::UpdateRef), since the consumers waiting for those completions may be
// reachable only through it, and weakly otherwise, so that an idle backend dropped without close()
// is collected and ~BackendWrap tears it down. onEvent reaches the JS backend (any useful callback
// does), so it lives in an internal field of the object (kOnEventField), not in a persistent
// handle, a GC root of its own that would keep every backend alive forever.
template <class Traits>
class ReadinessAddon {
 public:
  using Reactor = typename Traits::Reactor;
  class BackendWrap;

  struct Instance {
    uv_poll_t poll;
    std::unique_ptr<Reactor> reactor;
    node::AsyncCleanupHookHandle hook;
    void (*hook_done)(void*) = nullptr;
    void* hook_arg = nullptr;
    std::unique_ptr<Nan::AsyncResource> async;
    BackendWrap* wrap = nullptr;
    bool closing = false;
    LoopHold hold;
    // The environment cleanup hook is closing the backend (its thread is going away): the
    // reactor's Shutdown also closes the fds it made for the caller (owned_fds.h).
    bool env_teardown = false;
    std::shared_ptr<v8::BackingStore> sq_store;
    std::shared_ptr<v8::BackingStore> cq_store;
    int32_t* sq_i = nullptr;
    double* sq_f = nullptr;
    size_t sq_cap = 0;
    double* cq = nullptr;
    size_t cq_cap = 0;
    StoreCache store_cache;
    Nan::Persistent<v8::Object> callback_target;  // the receiver of on_event, made once

    // The poll handle keeps the loop alive only while operations are in flight, and the JS object
    // stays reachable for just as long (see the class comment). Never called from a GC finalizer.
    void UpdateRef() { hold.Set(!closing && reactor && reactor->in_flight() > 0, &poll, wrap, &store_cache); }
  };

  class BackendWrap : public Nan::ObjectWrap {
   public:
    explicit BackendWrap(Instance* inst) : inst_(inst) { inst->wrap = this; }
    // The JS object strong (it cannot be collected) or weak again; balanced by Instance::hold.
    void Hold() { Ref(); }
    void Unhold() { Unref(); }
    ~BackendWrap() override {
      // Garbage collected without close(): only stop polling here (this may run inside GC, where
      // no V8 call is allowed); OnClosed releases the reactor and the persistent handles later.
      if (inst_ != nullptr) {
        inst_->wrap = nullptr;
        BeginClose(inst_);
      }
    }
    void Attach(v8::Local<v8::Object> object) { Wrap(object); }
    Instance* inst_;
  };

  // The live instance behind `this` of a method call, or nullptr once closed.
  static Instance* Live(const Nan::FunctionCallbackInfo<v8::Value>& info) {
    BackendWrap* self = Nan::ObjectWrap::Unwrap<BackendWrap>(info.Holder());
    if (self == nullptr || self->inst_ == nullptr || self->inst_->closing) return nullptr;
    return self->inst_;
  }

  static NAN_MODULE_INIT(Init) {
    v8::Local<v8::FunctionTemplate> tpl = Nan::New<v8::FunctionTemplate>(New);
    tpl->SetClassName(Nan::New(Traits::kClassName).ToLocalChecked());
    tpl->InstanceTemplate()->SetInternalFieldCount(2);  // the ObjectWrap, onEvent (kOnEventField)
    Nan::SetPrototypeMethod(tpl, "flush", Flush);
    Nan::SetPrototypeMethod(tpl, "reap", Reap);
    Nan::SetPrototypeMethod(tpl, "cancel", Cancel);
    Nan::SetPrototypeMethod(tpl, "close", Close);
    Nan::SetPrototypeMethod(tpl, "inFlight", InFlight);
    Traits::AddMethods(tpl);
    Nan::Set(target, Nan::New(Traits::kClassName).ToLocalChecked(), Nan::GetFunction(tpl).ToLocalChecked());
  }

 private:
  // Internal field of the JS backend object holding onEvent (field 0 is Nan::ObjectWrap's).
  static constexpr int kOnEventField = 1;

  // Starts closing: the handle stops polling at once; the rest happens in OnClosed.
  static void BeginClose(Instance* inst) {
    if (inst->closing) return;
    inst->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&inst->poll), OnClosed);
  }

  static void OnClosed(uv_handle_t* handle) {
    Instance* inst = static_cast<Instance*>(handle->data);
    Nan::HandleScope scope;
    inst->hold.Drop(inst->wrap);
    // Cancels what is left, stops the pool threads (a job stuck in a blocking system call is
    // abandoned to its thread, see thread_pool.h) and closes the reactor's fds, and, when the
    // thread is going away, the sockets and files it made for the caller that are still open
    // (nobody else can close them: a worker that threw or was terminated never ran its own
    // cleanup). A no-op after close(), which leaves the caller's fds alone.
    if (inst->reactor) inst->reactor->Shutdown(inst->env_teardown);
    inst->reactor.reset();
    inst->async.reset();
    inst->callback_target.Reset();
    inst->store_cache.Clear();
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
  static void CleanupHook(void* arg, void (*done)(void*), void* done_arg) {
    Instance* inst = static_cast<Instance*>(arg);
    inst->hook_done = done;
    inst->hook_arg = done_arg;
    inst->env_teardown = true;
    BeginClose(inst);  // when close() already began it, OnClosed is pending and will call done
  }

  static void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
    Instance* inst = static_cast<Instance*>(handle->data);
    if (inst->closing || !inst->reactor || status < 0) return;
    Nan::HandleScope scope;
    const size_t ready = inst->reactor->Process(0);
    inst->UpdateRef();
    if (ready > 0 && inst->wrap != nullptr && inst->async) {
      // Through the async resource, so the callback has an async context and the microtasks it
      // queues (promise resolutions) run before control returns to the loop.
      v8::Local<v8::Value> cb = inst->wrap->handle()->GetInternalField(kOnEventField).template As<v8::Value>();
      if (cb->IsFunction()) inst->async->runInAsyncScope(Nan::New(inst->callback_target), cb.As<v8::Function>(), 0, nullptr);
    }
  }

  // new <kClassName>(sqBuffer, cqBuffer, sqCap, cqCap, maxEvents, poolThreads, onEvent)
  static NAN_METHOD(New) {
    if (!info.IsConstructCall()) {
      Nan::ThrowTypeError((std::string(Traits::kClassName) + " must be called with new").c_str());
      return;
    }
    if (info.Length() < 7 || !info[0]->IsArrayBuffer() || !info[1]->IsArrayBuffer() || !info[2]->IsUint32() ||
        !info[3]->IsUint32() || !info[4]->IsUint32() || !info[5]->IsUint32() || !info[6]->IsFunction()) {
      Nan::ThrowTypeError((std::string(Traits::kClassName) +
                           "(sq: ArrayBuffer, cq: ArrayBuffer, sqCap, cqCap, maxEvents, poolThreads, onEvent)")
                              .c_str());
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
    typename Reactor::Options options;
    options.max_events = static_cast<int>(Nan::To<uint32_t>(info[4]).FromJust());
    options.pool_threads = static_cast<int>(Nan::To<uint32_t>(info[5]).FromJust());
    int err = 0;
    std::unique_ptr<Reactor> reactor = Reactor::Create(options, &err);
    if (!reactor) {
      Nan::ThrowError(Nan::ErrnoException(-err, Traits::kCreateCall, Traits::kCreateText));
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
    inst->callback_target.Reset(Nan::New<v8::Object>());
    inst->async = std::make_unique<Nan::AsyncResource>(Traits::kAsyncName);
    Instance* raw = inst.release();
    uv_unref(reinterpret_cast<uv_handle_t*>(&raw->poll));
    r = uv_poll_start(&raw->poll, UV_READABLE, OnPoll);
    raw->hook = node::AddEnvironmentCleanupHook(info.GetIsolate(), CleanupHook, raw);
    BackendWrap* self = new BackendWrap(raw);
    self->Attach(info.This());
    info.This()->SetInternalField(kOnEventField, info[6]);
    if (r != 0) {
      BeginClose(raw);
      Nan::ThrowError(Nan::ErrnoException(-r, "uv_poll_start", uv_strerror(r)));
      return;
    }
    info.GetReturnValue().Set(info.This());
  }

  // flush(count, objects) or flush(count, null, ...objects): starts `count` descriptors; returns
  // how many completions are ready.
  static NAN_METHOD(Flush) {
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
      Op* op = reactor->NewOp();
      const int fail = DecodeOp(info, objs, &inst->store_cache, inst->sq_i + i * kSqInts, inst->sq_f + i * kSqDoubles,
                                op, Traits::kTooManyIovs);
      if (fail != 0) {
        reactor->Fail(op, fail);  // refuse rather than touch a detached or shrunk buffer
        continue;
      }
      reactor->Submit(op);
    }
    inst->UpdateRef();
    info.GetReturnValue().Set(static_cast<uint32_t>(reactor->ready()));
  }

  // reap(timeoutMs): dispatches pending events (waiting up to timeoutMs, 0 = not at all) and
  // writes up to cqCap completions to the completion buffer. Returns how many.
  static NAN_METHOD(Reap) {
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

  static NAN_METHOD(Cancel) {
    Instance* inst = Live(info);
    if (inst == nullptr || !info[0]->IsNumber()) {
      info.GetReturnValue().Set(false);
      return;
    }
    const double id = Nan::To<double>(info[0]).FromJust();
    const bool r = id >= 0 && inst->reactor->Cancel(static_cast<uint64_t>(id));
    info.GetReturnValue().Set(r);
  }

  static NAN_METHOD(InFlight) {
    Instance* inst = Live(info);
    info.GetReturnValue().Set(static_cast<uint32_t>(inst == nullptr ? 0 : inst->reactor->in_flight()));
  }

  // close(): synchronous: after it returns every fd of the backend is closed and every pinned
  // buffer released, except, with a reactor that stops its pool without waiting for stuck jobs
  // (epoll), those of a job stuck in its system call past the grace period, which its abandoned
  // thread keeps (thread_pool.h); the uv handle itself is freed in its close callback.
  static NAN_METHOD(Close) {
    BackendWrap* self = Nan::ObjectWrap::Unwrap<BackendWrap>(info.Holder());
    if (self == nullptr || self->inst_ == nullptr) return;
    Instance* inst = self->inst_;
    if (inst->closing) return;
    BeginClose(inst);  // first: libuv must stop watching the reactor's fd before it is closed
    inst->reactor->Shutdown();
  }
};

}  // namespace miniss

#endif  // MINISS_NATIVE_COMMON_ADDON_H_
