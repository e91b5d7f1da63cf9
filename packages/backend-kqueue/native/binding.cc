// The only file of this addon that knows V8/nan. The shared scaffolding (per-instance state, the
// uv_poll_t joining the reactor to Node's loop, the environment cleanup hook, the pinned-buffer
// cache, descriptor decoding, flush/reap/cancel/close) is @miniss/native-common's
// include/miniss/addon.h; this file adds what only kqueue has: its stats and its probe.
#include <sys/types.h>
#include <sys/event.h>
#include <unistd.h>

#include <cerrno>

#include "kqueue.h"
#include "miniss/addon.h"

namespace miniss {
namespace {

struct KqueueTraits {
  using Reactor = KqueueReactor;
  static constexpr const char* kClassName = "KqueueBackend";
  static constexpr const char* kAsyncName = "miniss:KqueueBackend";
  static constexpr const char* kCreateCall = "kqueue";
  static constexpr const char* kCreateText = "cannot create the kqueue backend";
  // More than IOV_MAX (1024 on macOS, the BSDs and Linux): what readv/writev would say.
  static constexpr int kTooManyIovs = -EINVAL;
  static void AddMethods(v8::Local<v8::FunctionTemplate> tpl);
};

using Addon = ReadinessAddon<KqueueTraits>;

// stats(): [submitted, immediate, waited, pool, keventChanges, keventWait]
NAN_METHOD(Stats) {
  Addon::Instance* inst = Addon::Live(info);
  v8::Local<v8::Array> out = Nan::New<v8::Array>(6);
  if (inst != nullptr) {
    const ReactorStats& s = inst->reactor->stats();
    const uint64_t v[6] = {s.submitted, s.immediate, s.waited, s.pool, s.kevent_changes, s.kevent_wait};
    for (uint32_t i = 0; i < 6; i++) Nan::Set(out, i, Nan::New(static_cast<double>(v[i])));
  }
  info.GetReturnValue().Set(out);
}

void KqueueTraits::AddMethods(v8::Local<v8::FunctionTemplate> tpl) { Nan::SetPrototypeMethod(tpl, "stats", Stats); }

// probe(): 0 when a kqueue can be created here, else -errno. Leaves nothing behind.
NAN_METHOD(Probe) {
  int fd = kqueue();
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
  Nan::SetMethod(target, "probe", Probe);
}

}  // namespace
}  // namespace miniss

NAN_MODULE_WORKER_ENABLED(miniss_kqueue, miniss::InitModule)
