#include "vmm/handshake.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <thread>

#include "sys/event_fd.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"

namespace lazymig::vmm {
namespace {

std::string errorOf(std::string_view json) {
  auto r = parseMappings(json);
  EXPECT_FALSE(r) << json;
  return r ? "" : r.error().message();
}

TEST(Mappings, AcceptsAllThreeFirecrackerShapes) {
  auto modern = parseMappings(
      R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4096,"extra":1}])");
  ASSERT_TRUE(modern) << modern.error().message();
  EXPECT_EQ(modern->front().page_size, 4096u);
  // Before v1.12 only page_size_kib, which holds bytes despite its name.
  auto kib = parseMappings(
      R"([{"base_host_virt_addr":0,"size":2097152,"offset":0,"page_size_kib":2097152}])");
  ASSERT_TRUE(kib) << kib.error().message();
  EXPECT_EQ(kib->front().page_size, 2097152u);
  // Before v1.7 neither: 4 KiB implied.
  auto old = parseMappings(R"([{"base_host_virt_addr":8192,"size":4096,"offset":0}])");
  ASSERT_TRUE(old);
  EXPECT_EQ(old->front().page_size, 4096u);
}

// Issue 18 sibling of failure 7: a region with two `size`s meant whichever one nlohmann kept.
TEST(Mappings, RepeatedKeyIsRefusedNamingIt) {
  auto msg = errorOf(R"([{"base_host_virt_addr":0,"size":4096,"offset":0,"size":8192}])");
  EXPECT_NE(msg.find("'size'"), std::string::npos) << msg;
  auto req = parseFaultRequest(R"({"vcpu":1,"offset":8192,"offset":0})");
  ASSERT_FALSE(req);
  EXPECT_NE(req.error().message().find("'offset'"), std::string::npos) << req.error().message();
}

TEST(Mappings, SortsByOffsetAndChecksContiguity) {
  auto r = parseMappings(R"([{"base_host_virt_addr":1048576,"size":4096,"offset":8192},
                              {"base_host_virt_addr":0,"size":8192,"offset":0}])");
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->at(0).offset, 0u);
  EXPECT_EQ(r->at(1).offset, 8192u);
}

TEST(Mappings, EveryRejectionNamesRegionAndField) {
  EXPECT_NE(errorOf("not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(errorOf(R"({"a":1})").find("array"), std::string::npos);
  EXPECT_NE(errorOf("[]").find("no regions"), std::string::npos);
  EXPECT_NE(errorOf("[1]").find("region 0 is not an object"), std::string::npos);
  EXPECT_NE(errorOf(R"([{"size":4096,"offset":0}])")
                .find("region 0 field 'base_host_virt_addr': is required"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":-1,"size":4096,"offset":0}])").find("non-negative"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":0,"size":1000,"offset":0}])")
                .find("region 0 field 'size'"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":100,"size":4096,"offset":0}])")
                .find("'base_host_virt_addr'"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":3000}])")
                .find("'page_size'"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096},
                        {"base_host_virt_addr":2097152,"size":2097152,"offset":4096,"page_size":2097152}])")
                .find("region 1 field 'page_size'"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":0,"size":4096,"offset":4096}])").find("expected 0"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":0,"size":8192,"offset":0},
                        {"base_host_virt_addr":4096,"size":4096,"offset":8192}])")
                .find("overlaps region 0"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0}])")
                .find("overflows"),
            std::string::npos);
  EXPECT_NE(errorOf(R"([{"base_host_virt_addr":0,"size":4096,"offset":0,"is_guest_memfd":"yes"}])")
                .find("'is_guest_memfd'"),
            std::string::npos);
}

TEST(Mappings, EncodeRoundTrips) {
  std::vector<GuestRegionMapping> in = {
      {.base_host_virt_addr = 0x10000, .size = 8192, .offset = 0, .page_size = 4096}};
  auto out = parseMappings(encodeMappings(in));
  ASSERT_TRUE(out);
  EXPECT_EQ(out->front().base_host_virt_addr, 0x10000u);
}

struct Pair {
  sys::UnixSocket a, b;
};
Pair socketPair() {
  int fds[2];
  ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
  return {sys::UnixSocket(sys::UniqueFd(fds[0])), sys::UnixSocket(sys::UniqueFd(fds[1]))};
}

const std::vector<GuestRegionMapping> kOnePage = {
    {.base_host_virt_addr = 0x20000, .size = 4096, .offset = 0}};

// A memfd sent as the one fd of a handshake, and what `receiver` made of it.
struct OneFd {
  sys::UniqueFd sent;
  Result<Handshake> received;
};
OneFd handOverOneMemfd(const Pair& p, Receiver receiver) {
  auto memfd = sys::createMemfd("h", Bytes{4096});
  int fds[] = {memfd->get()};
  EXPECT_TRUE(sendHandshake(p.a, kOnePage, fds));
  auto h = receiveHandshake(p.b, std::chrono::seconds(2), {}, -1, receiver);
  return {std::move(*memfd), std::move(h)};
}

bool sameFile(const sys::UniqueFd& a, const sys::UniqueFd& b) {
  struct stat s1 {
  }, s2{};
  return ::fstat(a.get(), &s1) == 0 && ::fstat(b.get(), &s2) == 0 && s1.st_ino == s2.st_ino &&
         s1.st_dev == s2.st_dev;
}

TEST(Handshake, ClassicCarriesTheUffdFd) {
  auto p = socketPair();
  auto [sent, h] = handOverOneMemfd(p, Receiver::kDestination);
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->kind, HandshakeKind::kClassic);
  EXPECT_EQ(h->total_bytes, 4096u);
  EXPECT_TRUE(sameFile(sent, h->uffd));
}

// Issue 13: the source's one fd is the guest memory, and lands in the member named so: a
// member named uffd holding a memfd sent every reader of the source side the wrong way.
TEST(Handshake, TheSourcesOneFdIsItsMemoryNeverAUffd) {
  auto p = socketPair();
  auto [memfd, h] = handOverOneMemfd(p, Receiver::kSource);
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_FALSE(h->uffd.valid());
  EXPECT_TRUE(sameFile(memfd, h->memory));
  EXPECT_TRUE(checkHandedFds(*h, Receiver::kSource));

  // A source takes its memory alone: a second fd is refused, naming the count.
  int two[] = {memfd.get(), memfd.get()};
  ASSERT_TRUE(sendHandshake(p.a, kOnePage, two));
  auto refused = receiveHandshake(p.b, std::chrono::seconds(2), {}, -1, Receiver::kSource);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find(
                "expected 1 file descriptor (the guest memory) or 3 (a live source"),
            std::string::npos)
      << refused.error().message();
}

TEST(Handshake, ThreeFdsSelectTheGuestMemfdVariant) {
  auto p = socketPair();
  auto e = sys::EventFd::create();
  std::vector<GuestRegionMapping> regions = {{.base_host_virt_addr = 0, .size = 4096, .offset = 0}};
  int fds[] = {e->pollFd(), e->pollFd(), e->pollFd()};
  ASSERT_TRUE(sendHandshake(p.a, regions, fds));
  auto h = receiveHandshake(p.b, std::chrono::seconds(2));
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->kind, HandshakeKind::kGuestMemfd);
  EXPECT_TRUE(h->memory.valid() && h->userfault_bitmap.valid());
}

TEST(Handshake, TwoFdsSelectSharedMemoryInMinorMode) {
  auto p = socketPair();
  auto e = sys::EventFd::create();
  std::vector<GuestRegionMapping> regions = {{.base_host_virt_addr = 0, .size = 4096, .offset = 0}};
  int fds[] = {e->pollFd(), e->pollFd()};
  ASSERT_TRUE(sendHandshake(p.a, regions, fds));
  auto h = receiveHandshake(p.b, std::chrono::seconds(2));
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->kind, HandshakeKind::kSharedMinor);
  EXPECT_TRUE(h->memory.valid());
  EXPECT_FALSE(h->userfault_bitmap.valid());
}

TEST(Handshake, WrongFdCountsTimeoutAndCloseAreClearErrors) {
  auto e = sys::EventFd::create();
  std::vector<GuestRegionMapping> regions = {{.base_host_virt_addr = 0, .size = 4096, .offset = 0}};
  for (int n : {0}) {
    auto p = socketPair();
    std::vector<int> fds(static_cast<std::size_t>(n), e->pollFd());
    ASSERT_TRUE(sendHandshake(p.a, regions, fds));
    auto h = receiveHandshake(p.b, std::chrono::seconds(2));
    ASSERT_FALSE(h);
    EXPECT_NE(h.error().message().find("got " + std::to_string(n)), std::string::npos)
        << h.error().message();
  }
  {
    auto p = socketPair();
    int fds[] = {e->pollFd(), e->pollFd(), e->pollFd(), e->pollFd()};
    ASSERT_TRUE(sendHandshake(p.a, regions, fds));
    EXPECT_FALSE(receiveHandshake(p.b, std::chrono::seconds(2)));
  }
  {
    auto p = socketPair();
    auto h = receiveHandshake(p.b, std::chrono::milliseconds(50));
    ASSERT_FALSE(h);
    EXPECT_EQ(h.error().code, Errc::kTimeout);
  }
  {
    auto p = socketPair();
    p.a = sys::UnixSocket();
    auto h = receiveHandshake(p.b, std::chrono::seconds(1));
    ASSERT_FALSE(h);
    EXPECT_EQ(h.error().code, Errc::kClosed);
  }
  {
    auto p = socketPair();
    int fds[] = {e->pollFd()};
    ASSERT_TRUE(p.a.sendWithFds(R"([{"base_host_virt_addr":0,"size":100,"offset":0}])", fds));
    auto h = receiveHandshake(p.b, std::chrono::seconds(1));
    ASSERT_FALSE(h);
    EXPECT_NE(h.error().message().find("'size'"), std::string::npos);
  }
}

TEST(JsonObjectStream, SplitsObjectsFedOneByteAtATime) {
  JsonObjectStream s;
  std::string text = R"( {"a":"}{","b":{"c":1}} {"vcpu":2,"offset":4096,"gpa":null})";
  std::vector<std::string> got;
  for (char c : text) {
    s.feed(std::string_view(&c, 1));
    auto r = s.next();
    ASSERT_TRUE(r) << r.error().message();
    if (*r) got.push_back(**r);
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], R"({"a":"}{","b":{"c":1}})");
  auto req = parseFaultRequest(got[1]);
  ASSERT_TRUE(req);
  EXPECT_EQ(req->vcpu, 2u);
  EXPECT_FALSE(req->gpa);
}

TEST(JsonObjectStream, RejectsGarbageAndOversizedObjects) {
  JsonObjectStream s(16);
  s.feed("x{}");
  EXPECT_FALSE(s.next());
  JsonObjectStream t(16);
  t.feed(R"({"a":"0123456789abcdef")");
  EXPECT_FALSE(t.next());
}

TEST(FaultMessages, RoundTripAndOldTokenName) {
  auto r = parseFaultRequest(R"({"vcpu":1,"offset":8192,"flags":3,"token":12288})");
  ASSERT_TRUE(r);
  EXPECT_EQ(*r->gpa, 12288u);
  EXPECT_NE(parseFaultRequest(R"({"offset":1})").error().message().find("'vcpu'"),
            std::string::npos);
  EXPECT_NE(parseFaultRequest(R"({"vcpu":"a","offset":1})").error().message().find("'vcpu'"),
            std::string::npos);
  FaultReply rep{1, 4096, 4096, 3, 8192, false};
  auto back = parseFaultReply(encodeFaultReply(rep));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->len, 4096u);
  EXPECT_EQ(*back->gpa, 8192u);
  auto req = parseFaultRequest(encodeFaultRequest({7, 4096, 0, std::nullopt}));
  ASSERT_TRUE(req);
  EXPECT_EQ(req->vcpu, 7u);
}

// Found by tests/fuzz/handshake_fuzz.cc: a huge float converted to an integer is undefined
// behaviour, and a negative one wraps; both must be refused with the field named.
TEST(FaultMessages, FloatsNegativesAndOverflowsAreRefusedByField) {
  const char* bad_replies[][2] = {
      {R"({"offset":4.06e72,"len":4096})", "'offset'"},
      {R"({"offset":0,"len":-1})", "'len'"},
      {R"({"vcpu":4294967296,"offset":0,"len":4096})", "'vcpu'"},
      {R"({"offset":0,"len":4096,"gpa":1.5})", "'gpa'"},
      {R"({"offset":0,"len":4096,"zero":"yes"})", "'zero'"},
  };
  for (auto& [text, field] : bad_replies) {
    auto r = parseFaultReply(text);
    ASSERT_FALSE(r) << text;
    EXPECT_NE(r.error().message().find(field), std::string::npos)
        << text << ": " << r.error().message();
  }
  auto r = parseFaultRequest(R"({"vcpu":1,"offset":4.06e72})");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("'offset'"), std::string::npos) << r.error().message();
}

// Every handed-over fd is checked for what its place says it is, and the error names the
// place and what the fd really is (failure 2 of issue 18).
TEST(Handshake, HandedFdsAreCheckedForWhatTheyAre) {
  auto uffd = sys::Uffd::open(0);
  ASSERT_TRUE(uffd) << uffd.error().message();
  auto memfd = [] { return std::move(*sys::createMemfd("guest", Bytes{4096})); };
  auto devnull = [] { return sys::UniqueFd(::open("/dev/null", O_RDWR | O_CLOEXEC)); };
  auto check = [](Handshake h, Receiver r) {
    auto ok = checkHandedFds(h, r);
    return ok ? std::string("ok") : ok.error().message();
  };
  Handshake good;
  good.uffd = std::move(*uffd->fd().duplicate());
  EXPECT_EQ(check(std::move(good), Receiver::kDestination), "ok");

  Handshake classic;
  classic.uffd = devnull();
  EXPECT_NE(check(std::move(classic), Receiver::kDestination)
                .find("fd 0 is not a userfaultfd (it is /dev/null)"),
            std::string::npos);

  Handshake minor;
  minor.kind = HandshakeKind::kSharedMinor;
  minor.uffd = std::move(*uffd->fd().duplicate());
  minor.memory = devnull();
  auto m = check(std::move(minor), Receiver::kDestination);
  EXPECT_NE(m.find("fd 1 is not shared guest memory"), std::string::npos) << m;
  EXPECT_NE(m.find("/dev/null"), std::string::npos) << m;

  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  sys::UniqueFd w(p[1]);
  Handshake gmem;
  gmem.kind = HandshakeKind::kGuestMemfd;
  gmem.uffd = std::move(*uffd->fd().duplicate());
  gmem.memory = memfd();
  gmem.userfault_bitmap = sys::UniqueFd(p[0]);
  auto g = check(std::move(gmem), Receiver::kDestination);
  EXPECT_NE(g.find("fd 2 is not a userfault bitmap memfd (it is pipe:["), std::string::npos) << g;

  Handshake handover;
  handover.memory = devnull();
  auto s = check(std::move(handover), Receiver::kSource);
  EXPECT_NE(s.find("fd 0 is not guest memory"), std::string::npos) << s;
  Handshake memory;
  memory.memory = memfd();
  EXPECT_EQ(check(std::move(memory), Receiver::kSource), "ok");
}

// JSON that no later bytes can repair is refused at once, naming the byte, instead of holding
// the connection until the handshake timeout; JSON that is only cut short waits for the rest.
TEST(Handshake, MalformedJsonIsRefusedAtOnceAndACancelEndsTheWait) {
  auto e = sys::EventFd::create();
  int fds[] = {e->pollFd()};
  {
    auto p = socketPair();
    ASSERT_TRUE(p.a.sendWithFds("[{not json", fds));
    auto h = receiveHandshake(p.b, std::chrono::minutes(10));
    ASSERT_FALSE(h);
    EXPECT_NE(h.error().message().find("not valid JSON (byte 4 of 10)"), std::string::npos)
        << h.error().message();
  }
  {
    auto p = socketPair();
    std::string text = R"([{"base_host_virt_addr":0,"size":4096,"offset":0}])";
    ASSERT_TRUE(p.a.sendWithFds(text.substr(0, 20), fds));
    std::thread rest([&] { ASSERT_TRUE(p.a.sendAll(text.substr(20))); });
    auto h = receiveHandshake(p.b, std::chrono::minutes(10));
    rest.join();
    ASSERT_TRUE(h) << h.error().message();
  }
  {
    auto p = socketPair();
    auto stop = sys::EventFd::create();
    stop->signal();
    auto h = receiveHandshake(p.b, std::chrono::minutes(10), {}, stop->pollFd());
    ASSERT_FALSE(h);
    EXPECT_EQ(h.error().code, Errc::kClosed);
  }
}

}  // namespace
}  // namespace lazymig::vmm
