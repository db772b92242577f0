// A real full filesystem for tests: a small tmpfs mounted on a directory (needs
// CAP_SYS_ADMIN; tests skip without it) that a test can fill to the last page and free again.
#pragma once

#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace lazymig::testing {

class TmpfsMount {
 public:
  // Mounts a tmpfs of `bytes` on `dir` (created); nullopt and `why` when it cannot.
  static std::optional<TmpfsMount> mount(const std::string& dir, std::uint64_t bytes,
                                         std::string& why) {
    std::filesystem::create_directories(dir);
    std::string options = "size=" + std::to_string(bytes) + ",mode=0755";
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) != 0) {
      why = "mount tmpfs on " + dir + ": " + std::strerror(errno);
      return std::nullopt;
    }
    return TmpfsMount(dir);
  }
  TmpfsMount(TmpfsMount&& o) noexcept : dir_(std::move(o.dir_)) { o.dir_.clear(); }
  TmpfsMount& operator=(TmpfsMount&&) = delete;
  ~TmpfsMount() {
    if (!dir_.empty()) ::umount2(dir_.c_str(), MNT_DETACH);
  }

  const std::string& dir() const { return dir_; }
  // Writes a filler file until the filesystem refuses even one more page.
  void fill() {
    std::ofstream out(filler(), std::ios::binary | std::ios::app);
    for (std::size_t chunk : {std::size_t{1} << 20, std::size_t{4096}}) {
      std::vector<char> bytes(chunk, 'f');
      while (out.write(bytes.data(), static_cast<std::streamsize>(chunk)) && out.flush()) {
      }
      out.clear();
    }
  }
  void unfill() { std::filesystem::remove(filler()); }

 private:
  explicit TmpfsMount(std::string dir) : dir_(std::move(dir)) {}
  std::string filler() const { return dir_ + "/filler"; }
  std::string dir_;
};

}  // namespace lazymig::testing
