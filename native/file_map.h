// Read-only MAP_SHARED mapping of a file: QEMU's memory-backend-file (share=on) seen by kemari without copying.
// Without N-API types; the addon ties each mapping's lifetime to an ArrayBuffer.
#ifndef KEMARI_FILE_MAP_H
#define KEMARI_FILE_MAP_H

#include <cstddef>
#include <string>

namespace kemari {

/**
 * Maps the first `bytes` bytes of the file at `path` read-only and shared, so writes made to the file by another
 * process (QEMU running the guest) show through. Returns the address, or nullptr with `error` set (errno text, or
 * why the file cannot be mapped: not a regular file, smaller than `bytes`). The descriptor is closed before
 * returning; the mapping stays valid until munmap.
 */
void* MapFileShared(const char* path, size_t bytes, std::string* error, int* error_number);

/** Unmaps a mapping made by MapFileShared. */
void UnmapFile(void* address, size_t bytes);

}  // namespace kemari

#endif  // KEMARI_FILE_MAP_H
