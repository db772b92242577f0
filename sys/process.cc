#include "sys/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <memory>

#include "sys/memory_fd.h"

namespace lazymig::sys {

Result<std::vector<int>> findFds(pid_t pid, const std::function<bool(const std::string&)>& match) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  struct CloseDir {
    void operator()(DIR* d) const { ::closedir(d); }
  };
  std::unique_ptr<DIR, CloseDir> d(::opendir(dir.c_str()));
  if (!d) return failSys("opendir", dir);
  std::vector<int> out;
  while (dirent* e = ::readdir(d.get())) {
    if (e->d_name[0] == '.') continue;
    char target[512];
    std::string link = dir + "/" + e->d_name;
    ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (n < 0 && errno == ENOENT) continue;  // closed while we looked
    if (n < 0) {
      // The kernel's ptrace access check: a process with capabilities this one lacks hides
      // its fds unless we hold CAP_SYS_PTRACE.
      return failSys("readlink", link + (errno == EACCES || errno == EPERM
                                             ? " (the agent needs CAP_SYS_PTRACE over this process)"
                                             : ""));
    }
    target[n] = '\0';
    if (match(target)) out.push_back(std::atoi(e->d_name));
  }
  return out;
}

Result<UniqueFd> takeFd(pid_t pid, int fd) {
  auto pidfd = pidfdOpen(pid);
  if (!pidfd) return std::unexpected(pidfd.error());
  return pidfdGetFd(*pidfd, fd);
}

Result<UniqueFd> takeFdByInode(pid_t pid, std::uint64_t dev, std::uint64_t ino) {
  auto fds = findFds(pid, [](const std::string&) { return true; });
  if (!fds) return std::unexpected(fds.error());
  for (int fd : *fds) {
    struct stat st {};
    std::string link = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
    if (::stat(link.c_str(), &st) != 0 || st.st_dev != dev || st.st_ino != ino) continue;
    return takeFd(pid, fd);
  }
  return fail(Errc::kNotFound, "take fd",
              "pid " + std::to_string(pid) + " no longer holds the guest memory file (inode " +
                  std::to_string(ino) + ")");
}

// /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
constexpr std::uint64_t kPagemapPresent = std::uint64_t{1} << 63;
constexpr std::uint64_t kPagemapSwapped = std::uint64_t{1} << 62;

Result<Bitmap> presentPages(pid_t pid, HostAddr start, std::uint64_t pages,
                            std::uint64_t page_size) {
  std::string path = "/proc/" + std::to_string(pid) + "/pagemap";
  auto fd = openFile(path, O_RDONLY);
  if (!fd) return std::unexpected(fd.error());
  const std::uint64_t base_page = 4096;
  const std::uint64_t sub = page_size / base_page;  // pagemap entries per guest page
  Bitmap out(pages);
  std::vector<std::uint64_t> entries;
  constexpr std::uint64_t kBatch = 8192;  // guest pages per read
  for (std::uint64_t p = 0; p < pages; p += kBatch) {
    std::uint64_t n = std::min(kBatch, pages - p);
    entries.resize(n * sub);
    std::uint64_t offset = (start.value / base_page + p * sub) * 8;
    if (auto ok = preadAll(fd->get(), entries.data(), entries.size() * 8, offset); !ok) {
      return std::unexpected(ok.error());
    }
    for (std::uint64_t i = 0; i < n; ++i) {
      // A huge page is present when its first base page is.
      std::uint64_t e = entries[i * sub];
      if ((e & (kPagemapPresent | kPagemapSwapped)) != 0) out.set(p + i);
    }
  }
  return out;
}

bool processAlive(pid_t pid) { return ::kill(pid, 0) == 0 || errno == EPERM; }

}  // namespace lazymig::sys
