// lazymig-chaos-proxy: a TCP proxy between two agents that cuts (or stalls) every connection
// through it at random moments, to prove that a migration survives a flaky link.
//
//   lazymig-chaos-proxy --listen 127.0.0.1:0 --target 127.0.0.1:7443 --port-file F
//                       [--cut-ms 200:800] [--max-cuts N] [--stall] [--seed S]
//
// With --stall, a "cut" stops forwarding for 3 s without closing anything (a black hole),
// which only a stall timeout can detect. Prints one line per cut and, on SIGTERM, a JSON
// line {"cuts": N, "connections": M}.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sys/unique_fd.h"

using lazymig::sys::UniqueFd;

namespace {

struct Options {
  std::string listen = "127.0.0.1:0";
  std::string target;
  std::string port_file;
  int cut_min_ms = 200;
  int cut_max_ms = 800;
  int max_cuts = -1;
  bool stall = false;
  unsigned seed = 1;
};

struct Pair {
  UniqueFd a, b;
  std::atomic<bool> cut{false};
  std::atomic<bool> stalled{false};
};

std::mutex g_mu;
std::vector<std::shared_ptr<Pair>> g_pairs;
std::atomic<int> g_cuts{0};
std::atomic<int> g_connections{0};
std::atomic<bool> g_stop{false};

bool splitHostPort(const std::string& s, std::string& host, std::string& port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  host = s.substr(0, colon);
  port = s.substr(colon + 1);
  return true;
}

int connectTo(const std::string& addr) {
  std::string host, port;
  if (!splitHostPort(addr, host, port)) return -1;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return -1;
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    ::close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

void forward(std::shared_ptr<Pair> p) {
  char buf[65536];
  pollfd fds[2] = {{p->a.get(), POLLIN, 0}, {p->b.get(), POLLIN, 0}};
  while (!p->cut && !g_stop) {
    if (p->stalled) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    int r = ::poll(fds, 2, 50);
    if (r <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
      if (n <= 0) {
        p->cut = true;
        break;
      }
      int out = fds[1 - i].fd;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::send(out, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) {
          p->cut = true;
          break;
        }
        off += w;
      }
    }
  }
  ::shutdown(p->a.get(), SHUT_RDWR);
  ::shutdown(p->b.get(), SHUT_RDWR);
}

void cutter(const Options& o) {
  std::mt19937 rng(o.seed);
  std::uniform_int_distribution<int> delay(o.cut_min_ms, o.cut_max_ms);
  while (!g_stop && (o.max_cuts < 0 || g_cuts < o.max_cuts)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay(rng)));
    std::vector<std::shared_ptr<Pair>> victims;
    {
      std::lock_guard lock(g_mu);
      for (auto& p : g_pairs) {
        if (!p->cut) victims.push_back(p);
      }
    }
    if (victims.empty()) continue;
    ++g_cuts;
    if (o.stall) {
      for (auto& v : victims) v->stalled = true;
      std::printf("stall %d: %zu connections\n", g_cuts.load(), victims.size());
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::seconds(3));
      for (auto& v : victims) v->stalled = false;
    } else {
      for (auto& v : victims) {
        v->cut = true;
        ::shutdown(v->a.get(), SHUT_RDWR);
        ::shutdown(v->b.get(), SHUT_RDWR);
      }
      std::printf("cut %d: %zu connections\n", g_cuts.load(), victims.size());
      std::fflush(stdout);
    }
  }
}

void onSignal(int) { g_stop = true; }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "chaos-proxy: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--listen")
      o.listen = val();
    else if (a == "--target")
      o.target = val();
    else if (a == "--port-file")
      o.port_file = val();
    else if (a == "--cut-ms") {
      std::string v = val();
      if (std::sscanf(v.c_str(), "%d:%d", &o.cut_min_ms, &o.cut_max_ms) != 2 || o.cut_min_ms <= 0 ||
          o.cut_max_ms < o.cut_min_ms) {
        std::fprintf(stderr, "chaos-proxy: --cut-ms wants MIN:MAX milliseconds, got '%s'\n",
                     v.c_str());
        return 2;
      }
    } else if (a == "--max-cuts")
      o.max_cuts = std::atoi(val().c_str());
    else if (a == "--stall")
      o.stall = true;
    else if (a == "--seed")
      o.seed = static_cast<unsigned>(std::atoi(val().c_str()));
    else {
      std::fprintf(stderr, "chaos-proxy: unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (o.target.empty()) {
    std::fprintf(stderr, "chaos-proxy: --target is required\n");
    return 2;
  }
  std::string host, port;
  if (!splitHostPort(o.listen, host, port)) {
    std::fprintf(stderr, "chaos-proxy: --listen wants host:port\n");
    return 2;
  }
  UniqueFd lst(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  ::setsockopt(lst.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(port.c_str())));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1 ||
      ::bind(lst.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(lst.get(), 16) != 0) {
    std::fprintf(stderr, "chaos-proxy: cannot listen on %s: %s\n", o.listen.c_str(),
                 std::strerror(errno));
    return 1;
  }
  socklen_t len = sizeof addr;
  ::getsockname(lst.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  if (!o.port_file.empty()) {
    std::ofstream(o.port_file + ".tmp") << ntohs(addr.sin_port) << "\n";
    std::rename((o.port_file + ".tmp").c_str(), o.port_file.c_str());
  }
  signal(SIGTERM, onSignal);
  signal(SIGINT, onSignal);
  signal(SIGPIPE, SIG_IGN);
  std::thread(cutter, o).detach();
  while (!g_stop) {
    pollfd p{lst.get(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    int c = ::accept4(lst.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    int t = connectTo(o.target);
    if (t < 0) {
      ::close(c);
      continue;
    }
    ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto pair = std::make_shared<Pair>();
    pair->a.reset(c);
    pair->b.reset(t);
    ++g_connections;
    {
      std::lock_guard lock(g_mu);
      std::erase_if(g_pairs, [](const auto& q) { return q->cut.load(); });
      g_pairs.push_back(pair);
    }
    std::thread(forward, pair).detach();
  }
  std::printf("{\"cuts\": %d, \"connections\": %d}\n", g_cuts.load(), g_connections.load());
  std::fflush(stdout);
  std::_Exit(0);  // forwarding threads are detached; leave without joining them
}
