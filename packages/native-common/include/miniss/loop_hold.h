// What a native backend holds while operations are in flight, for every backend (epoll, kqueue,
// io_uring). Include it only from a binding.cc: it uses libuv and, through the wrap, V8.
//
// While operations are in flight a backend keeps Node's loop alive (its uv_poll_t referenced) and
// keeps its JS object reachable (the ObjectWrap made strong): a backend the program dropped would
// otherwise be collected with operations still in the kernel, and their completions lost. When
// nothing is in flight it holds neither, so an idle process exits and an unused, unclosed backend
// is collected. The two are switched together, so the wrap's Ref/Unref stay balanced. Going idle
// also sweeps the pinned-buffer cache of entries whose ArrayBuffers died (store_cache.h).
#ifndef MINISS_LOOP_HOLD_H_
#define MINISS_LOOP_HOLD_H_

#include <uv.h>

#include "miniss/store_cache.h"

namespace miniss {

class LoopHold {
 public:
  bool held() const { return held_; }

  // Holds (want) or releases the loop and the JS object. `Wrap` has Hold()/Unhold() (its
  // ObjectWrap's Ref/Unref); `wrap` is nullptr once the JS object was collected. Never from a GC
  // finalizer.
  template <class Wrap>
  void Set(bool want, uv_poll_t* poll, Wrap* wrap, StoreCache* cache) {
    if (want == held_) return;
    held_ = want;
    if (want) {
      uv_ref(reinterpret_cast<uv_handle_t*>(poll));
      if (wrap != nullptr) wrap->Hold();
    } else {
      uv_unref(reinterpret_cast<uv_handle_t*>(poll));
      if (wrap != nullptr) wrap->Unhold();
      cache->Sweep();
    }
  }

  // The poll handle is closed (closed while busy): the JS object goes back to weak, so it can be
  // collected.
  template <class Wrap>
  void Drop(Wrap* wrap) {
    if (held_ && wrap != nullptr) wrap->Unhold();
    held_ = false;
  }

 private:
  bool held_ = false;
};

}  // namespace miniss

#endif  // MINISS_LOOP_HOLD_H_
