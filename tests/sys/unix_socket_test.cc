#include "sys/unix_socket.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>

#include "sys/event_fd.h"

namespace lazymig::sys {

std::string tempSocketPath() {
  return "/tmp/lazymig-sock-test-" + std::to_string(::getpid()) + ".sock";
}

TEST(UnixSocket, PassesFdsAndCredentials) {
  auto path = tempSocketPath();
  auto server = UnixSocket::listen(path, 0600);
  ASSERT_TRUE(server) << server.error().message();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto ev = EventFd::create();
  ASSERT_TRUE(ev);
  std::thread client([&] {
    auto c = UnixSocket::connect(path);
    ASSERT_TRUE(c);
    int fds[] = {ev->pollFd()};
    ASSERT_TRUE(c->sendWithFds("[hello]", fds));
  });
  auto conn = server->accept();
  ASSERT_TRUE(conn);
  auto msg = conn->receiveWithFds(1024, 3);
  client.join();
  ASSERT_TRUE(msg) << msg.error().message();
  EXPECT_EQ(msg->data, "[hello]");
  ASSERT_EQ(msg->fds.size(), 1u);
  auto cred = conn->peerCredentials();
  ASSERT_TRUE(cred);
  EXPECT_EQ(cred->pid, ::getpid());
  ::unlink(path.c_str());
}

TEST(UnixSocket, TooManyFdsIsAnError) {
  auto path = tempSocketPath() + "2";
  auto server = UnixSocket::listen(path, 0600);
  ASSERT_TRUE(server);
  auto ev = EventFd::create();
  std::thread client([&] {
    auto c = UnixSocket::connect(path);
    int fds[] = {ev->pollFd(), ev->pollFd(), ev->pollFd(), ev->pollFd()};
    ASSERT_TRUE(c->sendWithFds("x", fds));
  });
  auto conn = server->accept();
  auto msg = conn->receiveWithFds(16, 3);
  client.join();
  ASSERT_FALSE(msg);
  EXPECT_NE(msg.error().message().find("more than 3"), std::string::npos);
  ::unlink(path.c_str());
}

// A socket somebody listens on is never unlinked (that would steal its connections); a stale
// one, whose listener is gone, is replaced.
TEST(UnixSocket, ALiveSocketIsNeverReplacedAStaleOneIs) {
  auto path = tempSocketPath() + "3";
  auto first = UnixSocket::listen(path, 0600);
  ASSERT_TRUE(first) << first.error().message();
  auto second = UnixSocket::listen(path, 0600);
  ASSERT_FALSE(second) << "a second listener took over a live socket";
  EXPECT_EQ(second.error().code, Errc::kAlreadyExists);
  EXPECT_NE(second.error().message().find("listening"), std::string::npos);
  auto still = UnixSocket::connect(path);
  EXPECT_TRUE(still) << "the first listener lost its path";
  *first = UnixSocket();  // closed, its file left behind: stale
  auto third = UnixSocket::listen(path, 0600);
  EXPECT_TRUE(third) << third.error().message();
  ::unlink(path.c_str());
}

// Handed-over fds are checked for what they are before anything uses them.
TEST(UniqueFd, DescribeSaysWhatTheFdIs) {
  UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  EXPECT_EQ(null.describe(), "/dev/null");
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd r(p[0]), w(p[1]);
  EXPECT_EQ(r.describe().rfind("pipe:", 0), 0u) << r.describe();
  EXPECT_EQ(UniqueFd().describe(), "no descriptor");
}

TEST(UnixSocket, PathTooLongIsNamed) {
  auto r = UnixSocket::listen("/tmp/" + std::string(200, 'x'), 0600);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("longer than"), std::string::npos);
}

}  // namespace lazymig::sys
