// The objects of a flushed batch (buffers to pin, paths), shared by every native backend's
// binding (epoll and kqueue through addon.h, io_uring directly). A flush passes them as call
// arguments after its fixed ones (reading an argument is much cheaper than an element lookup
// through the V8 API), or, for a batch with too many to pass, as one array. Include it only from a
// binding.cc: it uses V8 (<v8.h> through <nan.h>).
#ifndef MINISS_NATIVE_COMMON_FLUSH_OBJECTS_H_
#define MINISS_NATIVE_COMMON_FLUSH_OBJECTS_H_

#include <nan.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>

#include "miniss/store_cache.h"  // StoreCache

namespace miniss {

// Object `index` of a flush whose objects start at argument `first_arg` when `objs` is not an
// array (null), else element `index` of the array `objs`.
inline bool ObjectAt(const Nan::FunctionCallbackInfo<v8::Value>& info, v8::Local<v8::Value> objs, int first_arg,
                     int32_t index, v8::Local<v8::Value>* out) {
  if (index < 0) return false;
  if (!objs->IsArray()) {
    if (index >= info.Length() - first_arg) return false;
    *out = info[first_arg + index];
    return true;
  }
  return Nan::Get(objs.As<v8::Array>(), static_cast<uint32_t>(index)).ToLocal(out);
}

// Points `iov` at the first `len` bytes of a Uint8Array (or any view; len < 0: all of it) and pins
// its backing store through `cache`. False when the value is not a view, is detached, or is
// shorter than `len`.
inline bool BindBuffer(StoreCache* cache, v8::Local<v8::Value> value, int64_t len, struct iovec* iov,
                       std::shared_ptr<void>* pin) {
  if (!value->IsArrayBufferView()) return false;
  v8::Local<v8::ArrayBufferView> view = value.As<v8::ArrayBufferView>();
  const size_t have = view->ByteLength();  // 0 once detached
  const size_t want = len < 0 ? have : static_cast<size_t>(len);
  if (want > have) return false;
  std::shared_ptr<v8::BackingStore> store = cache->Get(view->Buffer());
  char* data = static_cast<char*>(store->Data());
  if (data == nullptr && want > 0) return false;
  iov->iov_base = data == nullptr ? nullptr : data + view->ByteOffset();
  iov->iov_len = want;
  *pin = std::move(store);
  return true;
}

// Points `iov` at all of a view (the buffers of a readv/writev, which carry no length of their
// own) and pins its store. Unlike BindBuffer(len < 0), false also when the view's ArrayBuffer was
// detached: a detached view reads as 0 bytes long, and binding it would silently drop that
// buffer from the vectored call instead of failing it (EFAULT, as a detached read/write buffer).
// A view shrunk since submit (a resizable ArrayBuffer) cannot be told from one that was always
// that short here; the driver checks the lengths it recorded at submit.
inline bool BindWholeView(StoreCache* cache, v8::Local<v8::Value> value, struct iovec* iov, std::shared_ptr<void>* pin) {
  if (!value->IsArrayBufferView()) return false;
  v8::Local<v8::ArrayBufferView> view = value.As<v8::ArrayBufferView>();
  v8::Local<v8::ArrayBuffer> ab = view->Buffer();
  if (ab->WasDetached()) return false;
  std::shared_ptr<v8::BackingStore> store = cache->Get(ab);
  const size_t len = view->ByteLength();
  char* data = static_cast<char*>(store->Data());
  if (data == nullptr && len > 0) return false;
  iov->iov_base = data == nullptr ? nullptr : data + view->ByteOffset();
  iov->iov_len = len;
  *pin = std::move(store);
  return true;
}

// The UTF-8 text of a string value (a path); false when it is not a string.
inline bool StringOf(v8::Local<v8::Value> v, std::string* out) {
  if (!v->IsString()) return false;
  Nan::Utf8String s(v);
  if (*s == nullptr) return false;
  out->assign(*s, static_cast<size_t>(s.length()));
  return true;
}

}  // namespace miniss

#endif  // MINISS_NATIVE_COMMON_FLUSH_OBJECTS_H_
