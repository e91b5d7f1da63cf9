// The out-of-line (cold) parts of include/miniss/addon.h. Compiled into each readiness addon
// (nan + V8), like op.cc and thread_pool.cc.
#include "miniss/addon.h"

#include <cstdlib>
#include <cstring>

namespace miniss {

void StoreCache::Sweep() {
  fills_ = 0;
  if (!dirty_) return;
  bool any = false;
  for (Entry& e : entries_) {
    if (e.store && e.buffer.IsEmpty()) {
      e.store.reset();
      e.data = nullptr;
    }
    any = any || e.store != nullptr;
  }
  dirty_ = any;
}

void StoreCache::Clear() {
  for (Entry& e : entries_) {
    e.buffer.Reset();
    e.store.reset();
    e.data = nullptr;
  }
  dirty_ = false;
}

std::string StringAt(const Nan::FunctionCallbackInfo<v8::Value>& info, v8::Local<v8::Value> objs, int32_t index,
                     bool* ok) {
  v8::Local<v8::Value> v;
  if (!ObjectAt(info, objs, index, &v) || !v->IsString()) {
    *ok = false;
    return std::string();
  }
  Nan::Utf8String s(v);
  *ok = *s != nullptr;
  return *ok ? std::string(*s, static_cast<size_t>(s.length())) : std::string();
}

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

}  // namespace miniss
