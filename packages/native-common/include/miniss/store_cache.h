// The pinned-buffer cache of every native backend (epoll, kqueue, io_uring). Include it only from
// a binding.cc: it uses V8 (<v8.h> through <nan.h>).
//
// Pinning a buffer means holding its std::shared_ptr<v8::BackingStore>; asking V8 for it
// (ArrayBuffer::GetBackingStore) on every operation showed up in profiles of an HTTP server that
// submits the same few buffers (a connection's receive buffer, a pre-encoded response) over and
// over. So each instance keeps a small direct-mapped cache: ArrayBuffer (held weakly, so the
// cache never keeps a JS object alive) -> its backing store. A hit needs the same ArrayBuffer
// object (identity) with the same data address (an ArrayBuffer never changes its memory without
// being detached, and a detached one has none), so the cached store is exactly the one
// GetBackingStore would return. The operation gets its own copy of the shared_ptr, so its memory
// stays pinned until the completion is reaped whatever happens to the cache entry.
//
// Only stores up to kMaxBytes are cached, and entries whose ArrayBuffer was collected are dropped
// by Sweep(), which a backend calls whenever it becomes idle (and Get() after every kSweepEvery
// fills), so the memory entries keep alive after their buffers died is bounded (kSize * 64 KiB,
// and only until the next sweep). 256 entries keep the buffers of a few hundred busy connections
// (one receive buffer each) without collisions thrashing the cache.
//
// Sweep() visits only the filled entries (kept in a list): a backend that goes idle after every
// operation (one read at a time, awaited) with one buffer sweeps one entry, not 256. Scanning the
// whole table there cost ~180 ns per operation (measured in a loop of awaited 4 KiB reads).
#ifndef MINISS_NATIVE_COMMON_STORE_CACHE_H_
#define MINISS_NATIVE_COMMON_STORE_CACHE_H_

#include <nan.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace miniss {

class StoreCache {
 public:
  static constexpr size_t kSize = 256;  // a power of two
  static constexpr size_t kMaxBytes = 64 * 1024;
  static constexpr uint32_t kSweepEvery = 1024;

  // The backing store of `ab`, from the cache when possible.
  std::shared_ptr<v8::BackingStore> Get(v8::Local<v8::ArrayBuffer> ab) {
    void* data = ab->Data();  // nullptr when detached or empty
    const uintptr_t key = reinterpret_cast<uintptr_t>(data);
    // Fibonacci hashing: the top 8 bits of key * 2^64/phi (the low bits of heap addresses repeat).
    static_assert(kSize == 256, "the hash below yields 8 bits");
    const uint8_t index = static_cast<uint8_t>((static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> 56);
    Entry& e = entries_[index];
    if (data != nullptr && e.data == data && e.buffer == ab) return e.store;
    std::shared_ptr<v8::BackingStore> store = ab->GetBackingStore();
    if (data != nullptr && store->Data() == data && store->ByteLength() <= kMaxBytes) {
      if (!e.store) filled_[filled_count_++] = index;  // a replaced entry is listed already
      e.buffer.Reset(v8::Isolate::GetCurrent(), ab);
      e.buffer.SetWeak();
      e.store = store;
      e.data = data;
      if (++fills_ >= kSweepEvery) Sweep();
    }
    return store;
  }

  // Drops the entries whose ArrayBuffer has been collected (their stores may hold memory).
  void Sweep() {
    fills_ = 0;
    size_t kept = 0;
    for (size_t i = 0; i < filled_count_; ++i) {
      Entry& e = entries_[filled_[i]];
      if (e.buffer.IsEmpty()) {
        e.store.reset();
        e.data = nullptr;
      } else {
        filled_[kept++] = filled_[i];
      }
    }
    filled_count_ = kept;
  }

  // Drops every entry (needs a V8 scope: it resets handles).
  void Clear() {
    for (Entry& e : entries_) {
      e.buffer.Reset();
      e.store.reset();
      e.data = nullptr;
    }
    filled_count_ = 0;
    fills_ = 0;
  }

 private:
  struct Entry {
    v8::Global<v8::ArrayBuffer> buffer;  // weak: reset by the GC when the ArrayBuffer dies
    std::shared_ptr<v8::BackingStore> store;
    void* data = nullptr;
  };
  Entry entries_[kSize];
  uint8_t filled_[kSize];     // indices of the entries holding a store, in no order
  size_t filled_count_ = 0;
  uint32_t fills_ = 0;        // since the last sweep
};

}  // namespace miniss

#endif  // MINISS_NATIVE_COMMON_STORE_CACHE_H_
