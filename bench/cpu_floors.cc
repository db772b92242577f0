#include "bench/cpu_floors.h"

#include <openssl/evp.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/loopback.h"
#include "sys/mapping.h"
#include "sys/uffd.h"

namespace lazymig::bench {

namespace {

constexpr std::size_t kPage = 4096;
constexpr double kGiB = 1024.0 * 1024 * 1024;
// OpenSSL's TLS 1.3 records carry up to 16 KiB of plaintext (the transport sets no smaller
// max_send_fragment), so a GiB is 65536 records, each with its own nonce and tag.
constexpr std::size_t kRecord = 16384;
// The bulk stream sends and installs 64-page runs.
constexpr std::size_t kRunPages = 64;
// Large enough that the data comes from memory, not the cache, as guest memory does.
constexpr std::size_t kSourceBuffer = 256ull << 20;
// What one send(2) or recv(2) moves: the socket floor, not libevent's choice of chunk.
constexpr std::size_t kSocketChunk = 64 * 1024;

using Clock = std::chrono::steady_clock;

double threadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The CPU seconds of the source's and the destination's share of a step over `bytes`, and its
// wall time, as a cost per GiB.
CpuCost perGib(std::string name, std::string what, std::size_t bytes, double source_cpu,
               double destination_cpu, double wall) {
  const double scale = kGiB / static_cast<double>(bytes);
  CpuCost c;
  c.name = std::move(name);
  c.what = std::move(what);
  c.cpu_s = (source_cpu + destination_cpu) * scale;
  c.wall_s = wall * scale;
  c.source_cpu_s = source_cpu * scale;
  c.destination_cpu_s = destination_cpu * scale;
  c.ran = true;
  return c;
}

CpuCost notRun(std::string name, std::string why) {
  CpuCost c;
  c.name = std::move(name);
  c.what = std::move(why);
  return c;
}

using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

}  // namespace

CpuCost aesGcmCost(std::size_t bytes) {
  const std::string name = "aes_gcm";
  CipherCtx enc(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  CipherCtx dec(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  unsigned char key[32] = {1, 2, 3};
  if (!enc || !dec ||
      EVP_EncryptInit_ex(enc.get(), EVP_aes_256_gcm(), nullptr, key, nullptr) != 1 ||
      EVP_DecryptInit_ex(dec.get(), EVP_aes_256_gcm(), nullptr, key, nullptr) != 1) {
    return notRun(name, "EVP_aes_256_gcm could not be set up");
  }
  std::vector<unsigned char> source(std::min(bytes, kSourceBuffer), 0x5a);
  std::vector<unsigned char> record(kRecord + 16);
  std::vector<unsigned char> plain(kRecord);
  unsigned char nonce[12] = {};
  const unsigned char header[5] = {0x17, 0x03, 0x03, 0x40, 0x11};  // TLS 1.3 application data
  unsigned char tag[16];
  double encrypt_cpu = 0;
  double decrypt_cpu = 0;
  const auto t0 = Clock::now();
  std::uint64_t sequence = 0;
  for (std::size_t done = 0; done < bytes; done += kRecord, ++sequence) {
    std::memcpy(nonce + 4, &sequence, sizeof sequence);
    const unsigned char* in = source.data() + done % source.size();
    int n = 0;
    const double cpu0 = threadCpuSeconds();
    if (EVP_EncryptInit_ex(enc.get(), nullptr, nullptr, nullptr, nonce) != 1 ||
        EVP_EncryptUpdate(enc.get(), nullptr, &n, header, sizeof header) != 1 ||
        EVP_EncryptUpdate(enc.get(), record.data(), &n, in, kRecord) != 1 ||
        EVP_EncryptFinal_ex(enc.get(), record.data() + n, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(enc.get(), EVP_CTRL_GCM_GET_TAG, sizeof tag, tag) != 1) {
      return notRun(name, "AES-GCM encrypt failed");
    }
    const double cpu1 = threadCpuSeconds();
    if (EVP_DecryptInit_ex(dec.get(), nullptr, nullptr, nullptr, nonce) != 1 ||
        EVP_DecryptUpdate(dec.get(), nullptr, &n, header, sizeof header) != 1 ||
        EVP_DecryptUpdate(dec.get(), plain.data(), &n, record.data(), kRecord) != 1 ||
        EVP_CIPHER_CTX_ctrl(dec.get(), EVP_CTRL_GCM_SET_TAG, sizeof tag, tag) != 1 ||
        EVP_DecryptFinal_ex(dec.get(), plain.data() + n, &n) != 1) {
      return notRun(name, "AES-GCM decrypt failed its tag check");
    }
    const double cpu2 = threadCpuSeconds();
    encrypt_cpu += cpu1 - cpu0;
    decrypt_cpu += cpu2 - cpu1;
  }
  return perGib(name, "AES-256-GCM encrypt + decrypt, 16 KiB records", bytes, encrypt_cpu,
                decrypt_cpu, secondsSince(t0));
}

CpuCost loopbackTcpCost(std::size_t bytes) {
  const std::string name = "loopback_tcp";
  auto pair = loopbackPair();
  if (!pair) return notRun(name, "no loopback TCP connection");
  double sender_cpu = 0;
  double receiver_cpu = 0;
  const auto t0 = Clock::now();
  std::thread receiver([&] {
    const double cpu0 = threadCpuSeconds();
    std::vector<char> buf(kSocketChunk);
    for (std::size_t got = 0; got < bytes;) {
      ssize_t n = ::recv(pair->server.get(), buf.data(), buf.size(), 0);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    receiver_cpu = threadCpuSeconds() - cpu0;
  });
  const double cpu0 = threadCpuSeconds();
  std::vector<char> chunk(kSocketChunk, 'x');
  bool sent_all = true;
  for (std::size_t sent = 0; sent < bytes;) {
    ssize_t n = ::send(pair->client.get(), chunk.data(), std::min(chunk.size(), bytes - sent),
                       MSG_NOSIGNAL);
    if (n <= 0) {
      sent_all = false;
      break;
    }
    sent += static_cast<std::size_t>(n);
  }
  sender_cpu = threadCpuSeconds() - cpu0;
  if (!sent_all) ::shutdown(pair->client.get(), SHUT_RDWR);  // so that the receiver ends
  receiver.join();
  const double wall = secondsSince(t0);
  if (!sent_all) return notRun(name, "loopback send failed");
  return perGib(name, "TCP loopback send + receive, 64 KiB calls, TCP_NODELAY", bytes, sender_cpu,
                receiver_cpu, wall);
}

CpuCost uffdCopyCost(std::size_t bytes) {
  const std::string name = "uffdio_copy";
  const std::size_t run = kRunPages * kPage;
  bytes = bytes / run * run;
  auto mem = sys::Mapping::anonymous(Bytes{bytes});
  auto uffd = sys::Uffd::open(0);
  if (!mem || !uffd) return notRun(name, "no anonymous memory or no userfaultfd");
  if (!uffd->registerRange(mem->address(), mem->size(), sys::RegisterMode::kMissing)) {
    return notRun(name, "UFFDIO_REGISTER failed");
  }
  std::vector<std::byte> source(run, std::byte{1});
  const double cpu0 = threadCpuSeconds();
  const auto t0 = Clock::now();
  for (std::size_t off = 0; off < bytes; off += run) {
    if (!uffd->copy(HostAddr{mem->address().value + off}, source.data(), Bytes{run})) {
      return notRun(name, "UFFDIO_COPY failed");
    }
  }
  return perGib(name, "UFFDIO_COPY into fresh anonymous memory, 64-page runs", bytes, 0,
                threadCpuSeconds() - cpu0, secondsSince(t0));
}

std::vector<CpuCost> cpuFloorsPerGib(std::size_t bytes) {
  std::vector<CpuCost> out{aesGcmCost(bytes), loopbackTcpCost(bytes), uffdCopyCost(bytes)};
  CpuCost total;
  total.name = "total";
  total.what = "the three together: one GiB through both agents";
  total.ran = true;
  for (const auto& c : out) {
    total.cpu_s += c.cpu_s;
    total.wall_s += c.wall_s;
    total.source_cpu_s += c.source_cpu_s;
    total.destination_cpu_s += c.destination_cpu_s;
    total.ran = total.ran && c.ran;
  }
  out.push_back(total);
  return out;
}

}  // namespace lazymig::bench
