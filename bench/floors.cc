// lazymig-floors: measures the performance floors of DESIGN.md on this machine, in this run,
// so that migration numbers can be read as ratios against them:
//   local fault floor  a uffd fault served by a local thread from memory (read, COPY, wake)
//   network floor      a loopback TCP round trip: small request, 4 KiB reply
//   install floor      populating fresh memory (MADV_POPULATE_WRITE) and bulk UFFDIO_COPY
//   population paths   the agent's PageInstaller on each kind of guest memory, as a ratio of
//                      uffd_copy on anonymous memory measured in the same run
// Prints a human table on stderr and one JSON object on stdout.
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include <condition_variable>
#include <future>
#include <mutex>
#include "bench/population.h"
#include "sys/mapping.h"
#include "sys/uffd.h"
#include "sys/unique_fd.h"
#include "transport/connection.h"
#include "transport/pki.h"

using namespace lazymig;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kPage = 4096;

double medianUs(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
double p99Us(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, v.size() * 99 / 100)];
}

// One vCPU thread touches pages one by one; a handler thread serves each fault from memory.
std::vector<double> localFaults(std::size_t faults) {
  auto mem = sys::Mapping::anonymous(Bytes{faults * kPage});
  auto uffd = sys::Uffd::open(0);
  if (!mem || !uffd) return {};
  (void)uffd->registerRange(mem->address(), mem->size(), sys::RegisterMode::kMissing);
  std::vector<std::byte> page(kPage, std::byte{0x5a});
  std::atomic<bool> stop{false};
  std::thread handler([&] {
    uffd_msg msgs[16];
    while (!stop) {
      pollfd p{uffd->pollFd(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      auto n = uffd->readEvents(msgs);
      for (std::size_t i = 0; n && i < *n; ++i) {
        HostAddr a{msgs[i].arg.pagefault.address & ~(kPage - 1)};
        (void)uffd->copy(a, page.data(), Bytes{kPage});
      }
    }
  });
  std::vector<double> us;
  us.reserve(faults);
  for (std::size_t i = 0; i < faults; ++i) {
    auto t0 = Clock::now();
    volatile std::byte b = mem->data()[i * kPage];
    (void)b;
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  stop = true;
  handler.join();
  return us;
}

std::vector<double> tcpRoundTrips(std::size_t n) {
  sys::UniqueFd lst(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(lst.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(lst.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      ::listen(lst.get(), 1) != 0) {
    std::perror("floors: loopback listener");
    return {};
  }
  std::thread server([&] {
    sys::UniqueFd c(::accept(lst.get(), nullptr, nullptr));
    int one = 1;
    ::setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[32];
    std::vector<char> reply(kPage, 'x');
    for (std::size_t i = 0; i < n; ++i) {
      if (::recv(c.get(), req, sizeof req, MSG_WAITALL) != sizeof req) return;
      if (::send(c.get(), reply.data(), reply.size(), 0) < 0) return;
    }
  });
  sys::UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("floors: loopback connect");
    ::shutdown(lst.get(), SHUT_RDWR);  // so that the server's accept returns
    server.join();
    return {};
  }
  int one = 1;
  ::setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<double> us;
  char req[32] = {};
  std::vector<char> reply(kPage);
  for (std::size_t i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    if (::send(c.get(), req, sizeof req, 0) < 0) break;
    if (::recv(c.get(), reply.data(), reply.size(), MSG_WAITALL) != static_cast<ssize_t>(kPage))
      break;
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  server.join();
  return us;
}

double populateMiBs(std::size_t bytes) {
  auto mem = sys::Mapping::anonymous(Bytes{bytes});
  auto t0 = Clock::now();
  (void)mem->populate(sys::Mapping::Populate::kWrite, 0, bytes);
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return static_cast<double>(bytes) / (1 << 20) / s;
}

double bulkCopyMiBs(std::size_t bytes, std::size_t run_pages) {
  auto mem = sys::Mapping::anonymous(Bytes{bytes});
  auto uffd = sys::Uffd::open(0);
  (void)uffd->registerRange(mem->address(), mem->size(), sys::RegisterMode::kMissing);
  std::vector<std::byte> src(run_pages * kPage, std::byte{1});
  auto t0 = Clock::now();
  for (std::size_t off = 0; off < bytes; off += run_pages * kPage) {
    (void)uffd->copy(HostAddr{mem->address().value + off}, src.data(), Bytes{run_pages * kPage});
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return static_cast<double>(bytes) / (1 << 20) / s;
}

// Our own stack's round trip: a PageRequest out, a 4 KiB PageData back, over TLS 1.3 on
// libevent, client and server each on their own loop thread -- the demand path minus uffd.
std::vector<double> transportRoundTrips(std::size_t n) {
  using namespace lazymig::transport;
  char tmpl[] = "/tmp/lazymig-floors-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  auto ca = generateCa(dir, "ca");
  LeafSpec spec;
  spec.uris = {"spiffe://floors/peer"};
  auto leaf = issueLeaf(*ca, dir, "peer", spec);
  TlsFiles files{ca->cert_file, leaf->cert_file, leaf->key_file};
  auto server_tls = TlsContext::create(TlsContext::Side::kServer, files);
  auto client_tls = TlsContext::create(TlsContext::Side::kClient, files);
  auto server_loop = EventLoop::start("floor-server");
  auto client_loop = EventLoop::start("floor-client");
  std::vector<std::byte> page(kPage, std::byte{7});
  std::unique_ptr<Server> server;
  std::unique_ptr<Connection> accepted;
  std::promise<std::uint16_t> port;
  (*server_loop)->post([&] {
    Server::Options o;
    o.on_connection = [&](std::unique_ptr<Connection> c) {
      accepted = std::move(c);
      accepted->setHandlers({[&](const FrameHeader&, std::span<const std::byte> p) {
                               auto req = decodePageRequest(p, Layout{4096, 1 << 20}, Limits{});
                               auto prefix = encodePageDataPrefix(req->pages[0], 1, 4096);
                               accepted->sendWithBody(prefix, page, nullptr);
                             },
                             nullptr, nullptr});
    };
    server = std::move(*Server::listen(**server_loop, *server_tls, o));
    port.set_value(server->port());
  });
  std::string address = "127.0.0.1:" + std::to_string(port.get_future().get());
  std::unique_ptr<Connection> client;
  std::mutex mu;
  std::condition_variable cv;
  std::size_t replies = 0;
  std::promise<void> connected;
  connect(**client_loop, *client_tls,
          ConnectOptions{address, {}, std::chrono::seconds(5), "spiffe://floors/peer"},
          [&](Result<std::unique_ptr<Connection>> c) {
            client = std::move(*c);
            client->setHandlers({[&](const FrameHeader&, std::span<const std::byte>) {
                                   std::lock_guard lock(mu);
                                   ++replies;
                                   cv.notify_one();
                                 },
                                 nullptr, nullptr});
            connected.set_value();
          });
  connected.get_future().wait();
  std::vector<double> us;
  for (std::size_t i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    (*client_loop)->post([&, i] { client->sendEncoded(encodePageRequest({{i % 1000}})); });
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return replies == i + 1; });
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  (*client_loop)->post([&] { client.reset(); });
  (*server_loop)->post([&] {
    accepted.reset();
    server.reset();
  });
  (*client_loop)->stop();
  (*server_loop)->stop();
  std::filesystem::remove_all(dir);
  return us;
}

}  // namespace

int main() {
  auto local = localFaults(20000);
  auto net = tcpRoundTrips(20000);
  auto tls = transportRoundTrips(5000);
  double populate = populateMiBs(512ull << 20);
  double copy1 = bulkCopyMiBs(256ull << 20, 1);
  double copy64 = bulkCopyMiBs(256ull << 20, 64);
  auto paths = bench::populationPathRates(256ull << 20, 5);
  std::fprintf(stderr,
               "floors on this machine (medians of 20000):\n"
               "  local fault floor   p50 %8.1f us   p99 %8.1f us\n"
               "  network floor (TCP) p50 %8.1f us   p99 %8.1f us\n"
               "  lazymig transport   p50 %8.1f us   p99 %8.1f us   (TLS request + 4 KiB reply, "
               "loop threads)\n"
               "  install floor       MADV_POPULATE_WRITE %7.0f MiB/s\n"
               "                      UFFDIO_COPY 1 page  %7.0f MiB/s, 64 pages %7.0f MiB/s\n",
               medianUs(local), p99Us(local), medianUs(net), p99Us(net), medianUs(tls), p99Us(tls),
               populate, copy1, copy64);
  std::fprintf(stderr, "  population paths (PageInstaller, 256 KiB batches, median of 5):\n");
  const double base = paths.front().mib_s;
  std::string paths_json;
  for (const auto& p : paths) {
    if (!p.ran) {
      std::fprintf(stderr, "    %-44s  not run: %s\n", p.name.c_str(), p.note.c_str());
      continue;
    }
    std::fprintf(stderr, "    %-44s %7.0f MiB/s  %.2fx anonymous uffd_copy\n", p.name.c_str(),
                 p.mib_s, base > 0 ? p.mib_s / base : 0.0);
    paths_json += (paths_json.empty() ? "" : ",") + std::string("\"") + p.name +
                  "\":" + std::to_string(static_cast<long>(p.mib_s));
  }
  auto reads = bench::sourceReadRates(256ull << 20, 5);
  std::fprintf(stderr, "  source reads (SourceMemory, 64-page runs, median of 5):\n");
  std::string reads_json;
  for (std::size_t i = 0; i < reads.size(); ++i) {
    const auto& r = reads[i];
    if (!r.ran) {
      std::fprintf(stderr, "    %-44s  not run: %s\n", r.name.c_str(), r.note.c_str());
      continue;
    }
    // Pairs: faulting, then prefaulted, for each kind of memory.
    const double faulting = i % 2 == 1 && reads[i - 1].ran ? reads[i - 1].mib_s : 0;
    std::fprintf(stderr, "    %-44s %7.0f MiB/s", r.name.c_str(), r.mib_s);
    if (faulting > 0) std::fprintf(stderr, "  %.2fx faulting", r.mib_s / faulting);
    std::fprintf(stderr, "\n");
    reads_json += (reads_json.empty() ? "" : ",") + std::string("\"") + r.name +
                  "\":" + std::to_string(static_cast<long>(r.mib_s));
  }
  std::printf(
      "{\"local_fault_us\":{\"p50\":%.2f,\"p99\":%.2f},\"network_rtt_us\":{\"p50\":%.2f,\"p99\":%."
      "2f},"
      "\"transport_rtt_us\":{\"p50\":%.2f,\"p99\":%.2f},"
      "\"populate_mib_s\":%.0f,\"uffd_copy_1page_mib_s\":%.0f,\"uffd_copy_64page_mib_s\":%.0f,"
      "\"population_path_mib_s\":{%s},\"source_read_mib_s\":{%s}}\n",
      medianUs(local), p99Us(local), medianUs(net), p99Us(net), medianUs(tls), p99Us(tls), populate,
      copy1, copy64, paths_json.c_str(), reads_json.c_str());
  return local.empty() || net.empty() ? 1 : 0;
}
