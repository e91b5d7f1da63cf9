// The module-level functions of include/miniss/module_methods.h (nan + V8): compiled into every
// miniss addon (epoll, io_uring, kqueue), with op.cc for SocketAddress.
#include "miniss/module_methods.h"

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "miniss/op.h"

namespace miniss {

// address(fd, peer): [family, port, host] or -errno.
NAN_METHOD(AddressMethod) {
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

namespace {
// Code of this addon that V8 calls when the buffer's ArrayBuffer is collected, or when it tears a
// worker's heap down: after Node has dlclose()d the worker's addons. Every binding therefore calls
// PinThisLibrary (op.h) at module init, or a worker that allocated a buffer crashed the process.
void FreeAligned(void* data, size_t /*length*/, void* /*deleter_data*/) { std::free(data); }
}  // namespace

// allocateBuffer(capacity, alignment): zeroed native memory at an `alignment`-aligned address,
// freed by V8 when the Uint8Array's ArrayBuffer is collected.
NAN_METHOD(AllocateBufferMethod) {
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

namespace {

// 0 when `fd` may be an eventfd, else -EBADF (not open) or -EINVAL. signalFd writes 8 bytes:
// given a regular file, a pipe, a socket or a device by mistake, it wrote them into it (corrupting
// the file). An eventfd lives on the kernel's anonymous inode, which has no file type bits (fstat:
// S_IFMT 0); every other kind of file has them. The other anonymous-inode fds (epoll, timerfd,
// signalfd, io_uring, pidfd...) refuse an 8-byte write themselves (EINVAL), so this one fstat is
// the whole check. It is on the path of every cross-core wake-up (multicore rings a sleeping core's
// doorbell with it): an exact check by /proc/self/fd readlink cost 3.7 us per call against 0.2 us
// for the write alone. Not a registry of the eventfds backends made: signalFd serves any backend
// instance's eventfd from any thread, and an addon keeps no process-wide state.
int CheckEventFd(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return -errno;
  return (st.st_mode & S_IFMT) == 0 ? 0 : -EINVAL;
}

}  // namespace

// signalFd(fd): adds 1 to an eventfd; thread-safe (a plain write). Returns 0 or -errno: EBADF
// for an fd that is not open, EINVAL for one that is not an eventfd (see CheckEventFd).
NAN_METHOD(SignalFdMethod) {
  if (!info[0]->IsInt32()) {
    info.GetReturnValue().Set(-EBADF);
    return;
  }
  const int fd = Nan::To<int32_t>(info[0]).FromJust();
  const int checked = CheckEventFd(fd);
  if (checked < 0) {
    info.GetReturnValue().Set(checked);
    return;
  }
  uint64_t one = 1;
  ssize_t w;
  do {
    w = write(fd, &one, sizeof(one));
  } while (w < 0 && errno == EINTR);
  // EAGAIN: the counter is at its maximum, so the fd is readable already: the wake-up happened.
  info.GetReturnValue().Set(w < 0 && errno != EAGAIN ? -errno : 0);
}

#ifdef __linux__
// setAffinity(cpu): pins the calling thread. Returns 0 or -errno.
NAN_METHOD(SetAffinityMethod) {
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
#endif  // __linux__

}  // namespace miniss
