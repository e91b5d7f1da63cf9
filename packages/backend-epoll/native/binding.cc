// The only file of this addon that knows V8/nan. The shared scaffolding (per-instance state, the
// uv_poll_t joining the reactor to Node's loop, the environment cleanup hook, the pinned-buffer
// cache, descriptor decoding, flush/reap/cancel/close) is @miniss/native-common's
// include/miniss/addon.h; this file adds what only epoll has: eventfd, its stats and its probe
// (signalFd and setAffinity are native-common's module_methods).
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>

#include "epoll.h"
#include "miniss/addon.h"

namespace miniss {
namespace {

struct EpollTraits {
  using Reactor = EpollReactor;
  static constexpr const char* kClassName = "EpollBackend";
  static constexpr const char* kAsyncName = "miniss:EpollBackend";
  static constexpr const char* kCreateCall = "epoll_create1";
  static constexpr const char* kCreateText = "cannot create the epoll backend";
  static constexpr int kTooManyIovs = -EFAULT;
  static void AddMethods(v8::Local<v8::FunctionTemplate> tpl);
};

using Addon = ReadinessAddon<EpollTraits>;

// stats(): [submitted, immediate, waited, pool, nowaitReads, epollCtl, epollWait, skipped, stale]
NAN_METHOD(Stats) {
  Addon::Instance* inst = Addon::Live(info);
  v8::Local<v8::Array> out = Nan::New<v8::Array>(9);
  if (inst != nullptr) {
    const ReactorStats& s = inst->reactor->stats();
    const uint64_t v[9] = {s.submitted, s.immediate, s.waited, s.pool, s.nowait_reads, s.epoll_ctl, s.epoll_wait, s.skipped, s.stale};
    for (uint32_t i = 0; i < 9; i++) Nan::Set(out, i, Nan::New(static_cast<double>(v[i])));
  }
  info.GetReturnValue().Set(out);
}

NAN_METHOD(EventFd) {
  Addon::Instance* inst = Addon::Live(info);
  if (inst == nullptr) {
    info.GetReturnValue().Set(-EBADF);
    return;
  }
  info.GetReturnValue().Set(inst->reactor->CreateEventFd());
}

void EpollTraits::AddMethods(v8::Local<v8::FunctionTemplate> tpl) {
  Nan::SetPrototypeMethod(tpl, "eventfd", EventFd);
  Nan::SetPrototypeMethod(tpl, "stats", Stats);
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
  PinThisLibrary();  // never unloaded: V8 frees allocateBuffer() memory after a worker unloads it (op.h)
  Addon::Init(target);
  Nan::SetMethod(target, "address", AddressMethod);
  Nan::SetMethod(target, "allocateBuffer", AllocateBufferMethod);
  Nan::SetMethod(target, "signalFd", SignalFdMethod);
  Nan::SetMethod(target, "setAffinity", SetAffinityMethod);
  Nan::SetMethod(target, "probe", Probe);
}

}  // namespace
}  // namespace miniss

NAN_MODULE_WORKER_ENABLED(miniss_epoll, miniss::InitModule)
