// The only file of this addon that knows V8/nan. The shared scaffolding (per-instance state, the
// uv_poll_t joining the reactor to Node's loop, the environment cleanup hook, the pinned-buffer
// cache, descriptor decoding, flush/reap/cancel/close) is @miniss/native-common's
// include/miniss/addon.h; this file adds what only epoll has: eventfd/signalFd, setAffinity,
// its stats and its probe.
#include <sched.h>
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

// stats(): [submitted, immediate, waited, pool, nowaitReads, epollCtl, epollWait, skipped]
NAN_METHOD(Stats) {
  Addon::Instance* inst = Addon::Live(info);
  v8::Local<v8::Array> out = Nan::New<v8::Array>(8);
  if (inst != nullptr) {
    const ReactorStats& s = inst->reactor->stats();
    const uint64_t v[8] = {s.submitted, s.immediate, s.waited, s.pool, s.nowait_reads, s.epoll_ctl, s.epoll_wait, s.skipped};
    for (uint32_t i = 0; i < 8; i++) Nan::Set(out, i, Nan::New(static_cast<double>(v[i])));
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
  Addon::Init(target);
  Nan::SetMethod(target, "address", AddressMethod);
  Nan::SetMethod(target, "allocateBuffer", AllocateBufferMethod);
  Nan::SetMethod(target, "signalFd", SignalFd);
  Nan::SetMethod(target, "setAffinity", SetAffinity);
  Nan::SetMethod(target, "probe", Probe);
}

}  // namespace
}  // namespace miniss

NAN_MODULE_WORKER_ENABLED(miniss_epoll, miniss::InitModule)
