// kemari_pages: the N-API glue over page_scan, page_delta, xxh3 and file_map. The TypeScript wrappers in
// src/pages/ validate every argument and turn failures into KemariError; the checks here are a second line so that
// calling the binding directly can never read or write out of bounds (they throw TypeError/RangeError).
//
// Typed arrays are read through napi_get_typedarray_info rather than Napi::TypedArray::ArrayBuffer(): one call per
// argument instead of three, which matters for the per-page delta calls.
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "file_map.h"
#include "page_delta.h"
#include "page_gather.h"
#include "page_scan.h"
#include "xxh3.h"

namespace {

struct View {
  uint8_t* data;
  size_t bytes;
  napi_typedarray_type type;
};

size_t ElementBytes(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array:
    case napi_uint8_array:
    case napi_uint8_clamped_array:
      return 1;
    case napi_int16_array:
    case napi_uint16_array:
      return 2;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      return 4;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      return 8;
    default:
      return 1;
  }
}

View GetView(const Napi::CallbackInfo& info, size_t index, const char* name) {
  napi_env env = info.Env();
  napi_value value = info[index];
  bool is_typed_array = false;
  if (napi_is_typedarray(env, value, &is_typed_array) != napi_ok || !is_typed_array) {
    throw Napi::TypeError::New(env, std::string(name) + " must be a typed array");
  }
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, value, &type, &length, &data, nullptr, nullptr) != napi_ok) {
    throw Napi::TypeError::New(env, std::string(name) + ": cannot read the typed array");
  }
  return View{static_cast<uint8_t*>(data), length * ElementBytes(type), type};
}

View GetBytes(const Napi::CallbackInfo& info, size_t index, const char* name) {
  View v = GetView(info, index, name);
  if (v.type != napi_uint8_array) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Uint8Array");
  return v;
}

size_t GetSize(const Napi::CallbackInfo& info, size_t index, const char* name, double max) {
  if (!info[index].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  const double v = info[index].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > max || std::floor(v) != v) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " is out of range");
  }
  return static_cast<size_t>(v);
}

uint64_t GetU64(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (!info[index].IsBigInt()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a bigint");
  bool lossless = false;
  const uint64_t v = info[index].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(info.Env(), std::string(name) + " must fit in 64 unsigned bits");
  return v;
}

// Shared checks of the two scans: page geometry and output capacity. Returns the page count.
size_t CheckScan(const Napi::CallbackInfo& info, const View& region, size_t page_bytes, const View& changed,
                 const View& zero_flags) {
  Napi::Env env = info.Env();
  if (page_bytes == 0 || region.bytes % page_bytes != 0) {
    throw Napi::RangeError::New(env, "region length must be a multiple of pageBytes");
  }
  const size_t page_count = region.bytes / page_bytes;
  if (page_count > 0xFFFFFFFFull) throw Napi::RangeError::New(env, "too many pages for 32-bit indices");
  if (changed.type != napi_uint32_array || changed.bytes / 4 < page_count) {
    throw Napi::RangeError::New(env, "changedPages must be a Uint32Array with room for every page");
  }
  if (zero_flags.type != napi_uint8_array || zero_flags.bytes < page_count) {
    throw Napi::RangeError::New(env, "zeroFlags must be a Uint8Array with room for every page");
  }
  return page_count;
}

// scanShadow(region, pageBytes, shadow, changedPages, zeroFlags, update) -> changed count
Napi::Value ScanShadow(const Napi::CallbackInfo& info) {
  const View region = GetBytes(info, 0, "region");
  const size_t page_bytes = GetSize(info, 1, "pageBytes", static_cast<double>(1u << 30));
  const View shadow = GetBytes(info, 2, "shadow");
  const View changed = GetView(info, 3, "changedPages");
  const View zero_flags = GetView(info, 4, "zeroFlags");
  const bool update = info[5].ToBoolean().Value();
  const size_t page_count = CheckScan(info, region, page_bytes, changed, zero_flags);
  if (shadow.bytes != region.bytes) throw Napi::RangeError::New(info.Env(), "shadow must be as long as region");
  const uint32_t count =
      kemari::ScanShadow(region.data, shadow.data, page_bytes, page_count, reinterpret_cast<uint32_t*>(changed.data),
                         zero_flags.data, update);
  return Napi::Number::New(info.Env(), count);
}

// scanFingerprints(region, pageBytes, fingerprints, seed, changedPages, zeroFlags, update) -> changed count
Napi::Value ScanFingerprints(const Napi::CallbackInfo& info) {
  const View region = GetBytes(info, 0, "region");
  const size_t page_bytes = GetSize(info, 1, "pageBytes", static_cast<double>(1u << 30));
  const View fingerprints = GetView(info, 2, "fingerprints");
  const uint64_t seed = GetU64(info, 3, "seed");
  const View changed = GetView(info, 4, "changedPages");
  const View zero_flags = GetView(info, 5, "zeroFlags");
  const bool update = info[6].ToBoolean().Value();
  const size_t page_count = CheckScan(info, region, page_bytes, changed, zero_flags);
  if (fingerprints.bytes / 8 < page_count) {
    throw Napi::RangeError::New(info.Env(), "fingerprints must hold 8 bytes for every page");
  }
  const uint32_t count =
      kemari::ScanFingerprints(region.data, fingerprints.data, page_bytes, page_count, seed,
                               reinterpret_cast<uint32_t*>(changed.data), zero_flags.data, update);
  return Napi::Number::New(info.Env(), count);
}

// xxh3(data, seed) -> bigint
Napi::Value Xxh3(const Napi::CallbackInfo& info) {
  const View data = GetBytes(info, 0, "data");
  const uint64_t seed = GetU64(info, 1, "seed");
  return Napi::BigInt::New(info.Env(), kemari::Xxh3(data.data, data.bytes, seed));
}

// encodeDelta(oldPage, newPage, out, budgetBytes) -> length or -1
Napi::Value EncodeDelta(const Napi::CallbackInfo& info) {
  const View old_page = GetBytes(info, 0, "oldPage");
  const View new_page = GetBytes(info, 1, "newPage");
  const View out = GetBytes(info, 2, "out");
  const size_t budget = GetSize(info, 3, "budgetBytes", 9007199254740991.0);
  if (old_page.bytes != new_page.bytes || old_page.bytes > kemari::kDeltaPageBytesMax) {
    throw Napi::RangeError::New(info.Env(), "pages must have the same length, at most 16 MiB");
  }
  if (budget > out.bytes + 1) throw Napi::RangeError::New(info.Env(), "budgetBytes exceeds out.length + 1");
  const int64_t r = kemari::EncodeDelta(old_page.data, new_page.data, old_page.bytes, out.data, budget);
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// encodeDeltaBatch(pages, pageIndices, bases, baseIndices, count, pageBytes, budgetBytes, out, lengths, updateBases)
//   -> bytes written to out
// Everything is checked once here, the indices once each inside the loop (kemari::EncodeDeltaBatch), so the per-page
// cost is the encode itself: no N-API call, no typed-array lookup, no argument check per page.
Napi::Value EncodeDeltaBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const View pages = GetBytes(info, 0, "pages");
  const View page_indices = GetView(info, 1, "pageIndices");
  const View bases = GetBytes(info, 2, "bases");
  const View base_indices = GetView(info, 3, "baseIndices");
  const size_t count = GetSize(info, 4, "count", 4294967295.0);
  const size_t page_bytes = GetSize(info, 5, "pageBytes", static_cast<double>(kemari::kDeltaPageBytesMax));
  const size_t budget = GetSize(info, 6, "budgetBytes", static_cast<double>(kemari::kDeltaPageBytesMax));
  const View out = GetBytes(info, 7, "out");
  const View lengths = GetView(info, 8, "lengths");
  const bool update_bases = info[9].ToBoolean().Value();
  if (page_bytes == 0) throw Napi::RangeError::New(env, "pageBytes must be positive");
  // budget <= page_bytes also keeps every length below 2^24, so it fits the Int32Array.
  if (budget == 0 || budget > page_bytes) throw Napi::RangeError::New(env, "budgetBytes must be in [1, pageBytes]");
  if (page_indices.type != napi_uint32_array || page_indices.bytes / 4 < count) {
    throw Napi::RangeError::New(env, "pageIndices must be a Uint32Array with at least count entries");
  }
  if (base_indices.type != napi_uint32_array || base_indices.bytes / 4 < count) {
    throw Napi::RangeError::New(env, "baseIndices must be a Uint32Array with at least count entries");
  }
  if (lengths.type != napi_int32_array || lengths.bytes / 4 < count) {
    throw Napi::RangeError::New(env, "lengths must be an Int32Array with at least count entries");
  }
  // The worst case: every page writes budget - 1 bytes (a kept delta, or the garbage of one over budget) at a cursor
  // that advanced at most budget - 1 per earlier page. Division rather than a product, which could overflow.
  if (budget > 1 && count > out.bytes / (budget - 1)) {
    throw Napi::RangeError::New(env, "out must hold count * (budgetBytes - 1) bytes");
  }
  // A Uint32Array's or Int32Array's data is 4-byte aligned (its byteOffset must be a multiple of 4).
  const int64_t r = kemari::EncodeDeltaBatch(
      pages.data, pages.bytes / page_bytes, reinterpret_cast<const uint32_t*>(page_indices.data), bases.data,
      bases.bytes / page_bytes, reinterpret_cast<const uint32_t*>(base_indices.data), count, page_bytes, budget,
      out.data, reinterpret_cast<int32_t*>(lengths.data), update_bases);
  if (r < 0) {
    // Pages before the bad one are done (and their bases updated): only a direct call without the wrapper's index
    // check, or indices changed by another thread during the call, gets here.
    throw Napi::RangeError::New(env, "pageIndices[" + std::to_string(-1 - r) + "] or baseIndices[" +
                                         std::to_string(-1 - r) + "] is out of range");
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

// gatherPages(memory, pageBytes, indices, count, out) -> count
Napi::Value GatherPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const View memory = GetBytes(info, 0, "memory");
  const size_t page_bytes = GetSize(info, 1, "pageBytes", 4294967295.0);
  const View indices = GetView(info, 2, "indices");
  const size_t count = GetSize(info, 3, "count", 4294967295.0);
  const View out = GetBytes(info, 4, "out");
  if (page_bytes == 0) throw Napi::RangeError::New(env, "pageBytes must be positive");
  if (indices.type != napi_uint32_array || indices.bytes / 4 < count) {
    throw Napi::RangeError::New(env, "indices must be a Uint32Array with at least count entries");
  }
  // Division rather than a product, which could overflow.
  if (count > out.bytes / page_bytes) throw Napi::RangeError::New(env, "out must hold count * pageBytes bytes");
  const int64_t r = kemari::GatherPages(memory.data, memory.bytes / page_bytes, reinterpret_cast<const uint32_t*>(indices.data),
                                        count, page_bytes, out.data);
  if (r < 0) throw Napi::RangeError::New(env, "indices[" + std::to_string(-1 - r) + "] is out of range");
  return Napi::Number::New(env, static_cast<double>(r));
}

// decodeDelta(oldPage, delta, out) -> 0, or reason + 8 * offset
Napi::Value DecodeDelta(const Napi::CallbackInfo& info) {
  const View old_page = GetBytes(info, 0, "oldPage");
  const View delta = GetBytes(info, 1, "delta");
  const View out = GetBytes(info, 2, "out");
  if (out.bytes != old_page.bytes || old_page.bytes > kemari::kDeltaPageBytesMax) {
    throw Napi::RangeError::New(info.Env(), "out must be as long as oldPage, at most 16 MiB");
  }
  const int64_t r = kemari::DecodeDelta(old_page.data, delta.data, delta.bytes, out.data, old_page.bytes);
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// validateDelta(delta, pageBytes) -> 0, or reason + 8 * offset
Napi::Value ValidateDelta(const Napi::CallbackInfo& info) {
  const View delta = GetBytes(info, 0, "delta");
  const size_t page_bytes = GetSize(info, 1, "pageBytes", static_cast<double>(kemari::kDeltaPageBytesMax));
  return Napi::Number::New(info.Env(), static_cast<double>(kemari::ValidateDelta(delta.data, delta.bytes, page_bytes)));
}

// Every live mapping, by address, so unmap() can find the one behind an ArrayBuffer. Shared by all threads (the
// addon may be loaded in several worker threads), hence the mutex.
struct Mapping {
  void* address;
  size_t bytes;
  bool unmapped;
};
std::mutex g_mappings_mutex;
std::unordered_map<void*, Mapping*> g_mappings;

void FinalizeMapping(Napi::Env /*env*/, void* /*data*/, Mapping* mapping) {
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    if (!mapping->unmapped) {
      kemari::UnmapFile(mapping->address, mapping->bytes);
      g_mappings.erase(mapping->address);
    }
  }
  delete mapping;
}

// mmapFile(path, bytes) -> ArrayBuffer over a read-only MAP_SHARED mapping, unmapped when collected
Napi::Value MmapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const size_t bytes = GetSize(info, 1, "bytes", 9007199254740991.0);
  if (bytes == 0) throw Napi::RangeError::New(env, "bytes must be positive");
  std::string error;
  int error_number = 0;
  void* address = kemari::MapFileShared(path.c_str(), bytes, &error, &error_number);
  if (address == nullptr) {
    Napi::Error e = Napi::Error::New(env, error);
    e.Set("errno", Napi::Number::New(env, error_number));
    throw e;
  }
  Mapping* mapping = new Mapping{address, bytes, false};
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    g_mappings[address] = mapping;
  }
  napi_value buffer;
  const napi_status status = napi_create_external_arraybuffer(
      env, address, bytes,
      [](napi_env e, void* data, void* hint) { FinalizeMapping(Napi::Env(e), data, static_cast<Mapping*>(hint)); },
      mapping, &buffer);
  if (status != napi_ok) {
    {
      std::lock_guard<std::mutex> lock(g_mappings_mutex);
      g_mappings.erase(address);
    }
    kemari::UnmapFile(address, bytes);
    delete mapping;
    throw Napi::Error::New(env, "external ArrayBuffers are not allowed in this runtime");
  }
  return Napi::Value(env, buffer);
}

// unmap(buffer) -> true when `buffer` was a live mapping and is now detached and unmapped
Napi::Value Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "buffer must be an ArrayBuffer");
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  void* address = buffer.Data();
  const size_t bytes = buffer.ByteLength();
  std::lock_guard<std::mutex> lock(g_mappings_mutex);
  auto it = g_mappings.find(address);
  if (address == nullptr || it == g_mappings.end() || it->second->bytes != bytes) {
    return Napi::Boolean::New(env, false);
  }
  // Detach first: every view over the buffer becomes zero-length, so no JavaScript can touch the pages after
  // munmap (which would be a SIGSEGV, not an exception).
  if (napi_detach_arraybuffer(env, buffer) != napi_ok) {
    throw Napi::Error::New(env, "the ArrayBuffer cannot be detached");
  }
  Mapping* mapping = it->second;
  kemari::UnmapFile(mapping->address, mapping->bytes);
  mapping->unmapped = true;  // the finalizer, which still runs at collection, then only frees the record
  g_mappings.erase(it);
  return Napi::Boolean::New(env, true);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("scanShadow", Napi::Function::New(env, ScanShadow, "scanShadow"));
  exports.Set("scanFingerprints", Napi::Function::New(env, ScanFingerprints, "scanFingerprints"));
  exports.Set("xxh3", Napi::Function::New(env, Xxh3, "xxh3"));
  exports.Set("encodeDelta", Napi::Function::New(env, EncodeDelta, "encodeDelta"));
  exports.Set("encodeDeltaBatch", Napi::Function::New(env, EncodeDeltaBatch, "encodeDeltaBatch"));
  exports.Set("gatherPages", Napi::Function::New(env, GatherPages, "gatherPages"));
  exports.Set("decodeDelta", Napi::Function::New(env, DecodeDelta, "decodeDelta"));
  exports.Set("validateDelta", Napi::Function::New(env, ValidateDelta, "validateDelta"));
  exports.Set("mmapFile", Napi::Function::New(env, MmapFile, "mmapFile"));
  exports.Set("unmap", Napi::Function::New(env, Unmap, "unmap"));
#if defined(__SSE4_2__)
  exports.Set("sse42", Napi::Boolean::New(env, true));
#else
  exports.Set("sse42", Napi::Boolean::New(env, false));
#endif
  exports.Set("abiVersion", Napi::Number::New(env, 4));  // 2: encodeDeltaBatch; 3: gatherPages; 4: xxh3 for xxh64
  return exports;
}

}  // namespace

NODE_API_MODULE(kemari_pages, Init)
