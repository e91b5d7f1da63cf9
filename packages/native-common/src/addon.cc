// The out-of-line (cold) parts of include/miniss/addon.h. Compiled into each readiness addon
// (nan + V8), like op.cc and thread_pool.cc.
#include "miniss/addon.h"

namespace miniss {

std::string StringAt(const Nan::FunctionCallbackInfo<v8::Value>& info, v8::Local<v8::Value> objs, int32_t index,
                     bool* ok) {
  v8::Local<v8::Value> v;
  std::string s;
  *ok = ObjectAt(info, objs, kFlushFixedArgs, index, &v) && StringOf(v, &s);
  return s;
}

}  // namespace miniss
