// lazymig-floors: measures the performance floors of DESIGN.md on this machine, in this run,
// so that migration numbers can be read as ratios against them:
//   local fault floor  a uffd fault served by a local thread from memory (read, COPY, wake)
//   network floor      a loopback TCP round trip: small request, 4 KiB reply
//   install floor      populating fresh memory (MADV_POPULATE_WRITE) and bulk UFFDIO_COPY
//   population paths   the agent's PageInstaller on each kind of guest memory, as a ratio of
//                      uffd_copy on anonymous memory measured in the same run
//   CPU floors         the CPU seconds a GiB costs at the least through each step both agents
//                      take with it: AES-GCM, loopback TCP, UFFDIO_COPY (bench/cpu_floors.h)
// The latency and CPU floors are measured twice: with the CPUs idle, and busy (a spinning
// thread per core; bench/busy_cpus.h says why). The idle figures stay at the JSON's top level
// as before; "idle", "busy" and "cpu_s_per_gib" hold both conditions.
// Prints a human table on stderr and one JSON object on stdout.
#include <linux/userfaultfd.h>
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
#include "bench/busy_cpus.h"
#include "bench/cpu_floors.h"
#include "bench/loopback.h"
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
  auto pair = bench::loopbackPair();
  if (!pair) return {};
  std::thread server([&] {
    char req[32];
    std::vector<char> reply(kPage, 'x');
    for (std::size_t i = 0; i < n; ++i) {
      if (::recv(pair->server.get(), req, sizeof req, MSG_WAITALL) != sizeof req) return;
      if (::send(pair->server.get(), reply.data(), reply.size(), MSG_NOSIGNAL) < 0) return;
    }
  });
  std::vector<double> us;
  char req[32] = {};
  std::vector<char> reply(kPage);
  for (std::size_t i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    if (::send(pair->client.get(), req, sizeof req, MSG_NOSIGNAL) < 0) break;
    if (::recv(pair->client.get(), reply.data(), reply.size(), MSG_WAITALL) !=
        static_cast<ssize_t>(kPage))
      break;
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  if (us.size() < n) ::shutdown(pair->client.get(), SHUT_RDWR);  // so that the server ends
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

// The latency floors under one condition (idle or busy CPUs).
struct LatencyFloors {
  std::vector<double> local;  // uffd fault served by a local thread
  std::vector<double> net;    // TCP round trip, small request and a 4 KiB reply
  std::vector<double> tls;    // our transport's round trip on its loop threads
};

LatencyFloors measureLatencies() {
  return {localFaults(20000), tcpRoundTrips(20000), transportRoundTrips(5000)};
}

std::string percentilesJson(const std::vector<double>& us) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "{\"p50\":%.2f,\"p99\":%.2f}", medianUs(us), p99Us(us));
  return buf;
}

std::string latenciesJson(const LatencyFloors& f) {
  return "{\"local_fault_us\":" + percentilesJson(f.local) +
         ",\"network_rtt_us\":" + percentilesJson(f.net) +
         ",\"transport_rtt_us\":" + percentilesJson(f.tls) + "}";
}

void printLatencies(const char* condition, const LatencyFloors& f) {
  std::fprintf(stderr,
               "  %s CPUs:\n"
               "    local fault floor   p50 %8.1f us   p99 %8.1f us\n"
               "    network floor (TCP) p50 %8.1f us   p99 %8.1f us\n"
               "    lazymig transport   p50 %8.1f us   p99 %8.1f us   (TLS request + 4 KiB reply, "
               "loop threads)\n",
               condition, medianUs(f.local), p99Us(f.local), medianUs(f.net), p99Us(f.net),
               medianUs(f.tls), p99Us(f.tls));
}

std::string cpuFloorsJson(const char* condition, const std::vector<bench::CpuCost>& costs) {
  std::string json = "{";
  for (const auto& c : costs) {
    std::fprintf(stderr, "    %-5s %-13s %6.3f CPU s/GiB  %6.3f wall s/GiB  %s%s\n", condition,
                 c.name.c_str(), c.cpu_s, c.wall_s, c.ran ? "" : "NOT RUN: ", c.what.c_str());
    if (!c.ran) continue;
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%s\"%s\":{\"cpu_s\":%.4f,\"wall_s\":%.4f,\"source_cpu_s\":%.4f,"
                  "\"destination_cpu_s\":%.4f}",
                  json.size() > 1 ? "," : "", c.name.c_str(), c.cpu_s, c.wall_s, c.source_cpu_s,
                  c.destination_cpu_s);
    json += buf;
  }
  return json + "}";
}

// "name":MiB/s pairs of the rates that ran, and the table lines on stderr. `pairs`: the rates
// come as (faulting, prefaulted) pairs, each read against the one before it; otherwise each is
// read against the first (anonymous uffd_copy).
std::string ratesJson(const std::vector<bench::PathRate>& rates, bool pairs) {
  std::string json;
  for (std::size_t i = 0; i < rates.size(); ++i) {
    const auto& r = rates[i];
    if (!r.ran) {
      std::fprintf(stderr, "    %-44s  not run: %s\n", r.name.c_str(), r.note.c_str());
      continue;
    }
    std::fprintf(stderr, "    %-44s %7.0f MiB/s", r.name.c_str(), r.mib_s);
    if (!pairs && rates.front().mib_s > 0) {
      std::fprintf(stderr, "  %.2fx anonymous uffd_copy", r.mib_s / rates.front().mib_s);
    }
    // Pairs: faulting, then prefaulted, for each kind of memory.
    if (pairs && i % 2 == 1 && rates[i - 1].ran && rates[i - 1].mib_s > 0) {
      std::fprintf(stderr, "  %.2fx faulting", r.mib_s / rates[i - 1].mib_s);
    }
    std::fprintf(stderr, "\n");
    json += (json.empty() ? "" : ",") + std::string("\"") + r.name +
            "\":" + std::to_string(static_cast<long>(r.mib_s));
  }
  return "{" + json + "}";
}

}  // namespace

int main() {
  constexpr std::size_t kGiB = 1ull << 30;
  auto idle = measureLatencies();
  auto idle_cpu = bench::cpuFloorsPerGib(kGiB);
  LatencyFloors busy;
  std::vector<bench::CpuCost> busy_cpu;
  {
    bench::BusyCpus spinning;
    busy = measureLatencies();
    busy_cpu = bench::cpuFloorsPerGib(kGiB);
  }
  double populate = populateMiBs(512ull << 20);
  double copy1 = bulkCopyMiBs(256ull << 20, 1);
  double copy64 = bulkCopyMiBs(256ull << 20, 64);
  std::fprintf(stderr, "floors on this machine (medians of 20000; transport of 5000):\n");
  printLatencies("idle", idle);
  printLatencies("busy (a SCHED_IDLE spinner per core)", busy);
  std::fprintf(stderr,
               "  install floor       MADV_POPULATE_WRITE %7.0f MiB/s\n"
               "                      UFFDIO_COPY 1 page  %7.0f MiB/s, 64 pages %7.0f MiB/s\n"
               "  CPU per GiB (the measuring threads' own CPU clocks):\n",
               populate, copy1, copy64);
  const std::string idle_cpu_json = cpuFloorsJson("idle", idle_cpu);
  const std::string busy_cpu_json = cpuFloorsJson("busy", busy_cpu);
  const std::string cpu_json = "{\"idle\":" + idle_cpu_json + ",\"busy\":" + busy_cpu_json + "}";
  std::fprintf(stderr, "  population paths (PageInstaller, 256 KiB batches, median of 5):\n");
  const std::string paths_json = ratesJson(bench::populationPathRates(256ull << 20, 5), false);
  std::fprintf(stderr, "  source reads (SourceMemory, 64-page runs, median of 5):\n");
  const std::string reads_json = ratesJson(bench::sourceReadRates(256ull << 20, 5), true);
  // The idle figures stay at the top level, where bench/run.sh and older readers find them.
  const std::string idle_json = latenciesJson(idle);
  std::printf(
      "%s,\"idle\":%s,\"busy\":%s,\"cpu_s_per_gib\":%s,"
      "\"populate_mib_s\":%.0f,\"uffd_copy_1page_mib_s\":%.0f,"
      "\"uffd_copy_64page_mib_s\":%.0f,"
      "\"population_path_mib_s\":%s,\"source_read_mib_s\":%s}\n",
      idle_json.substr(0, idle_json.size() - 1).c_str(), idle_json.c_str(),
      latenciesJson(busy).c_str(), cpu_json.c_str(), populate, copy1, copy64, paths_json.c_str(),
      reads_json.c_str());
  return idle.local.empty() || idle.net.empty() ? 1 : 0;
}
