// See file_map.h.
#include "file_map.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kemari {

void* MapFileShared(const char* path, size_t bytes, std::string* error, int* error_number) {
  *error_number = 0;
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error_number = errno;
    *error = std::string("open: ") + std::strerror(errno);
    return nullptr;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *error_number = errno;
    *error = std::string("fstat: ") + std::strerror(errno);
    close(fd);
    return nullptr;
  }
  if (!S_ISREG(st.st_mode)) {
    *error = "not a regular file";
    close(fd);
    return nullptr;
  }
  // Mapping past the end of the file would map pages that raise SIGBUS when touched: refuse up front.
  if (static_cast<unsigned long long>(st.st_size) < bytes) {
    *error = "the file is smaller than the requested bytes";
    close(fd);
    return nullptr;
  }
  void* address = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  const int map_errno = errno;
  close(fd);
  if (address == MAP_FAILED) {
    *error_number = map_errno;
    *error = std::string("mmap: ") + std::strerror(map_errno);
    return nullptr;
  }
  return address;
}

void UnmapFile(void* address, size_t bytes) { munmap(address, bytes); }

}  // namespace kemari
