// ControlApi on a real evhttp server, asked by the real control client (libcurl) over its UNIX
// socket: every answer is the status and the JSON error of docs/control-api.md. The backend is
// the agent's own (an Agent started in this process), so what a field check or a socket check
// says is what an orchestrator reads.
#include "agent/daemon/control_api.h"

#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <future>

#include <gtest/gtest.h>

#include "agent/core/loop_sync.h"
#include "agent/daemon/agent.h"
#include "client/control_client.h"
#include "tests/control_answer.h"
#include "transport/pki.h"

// A spy on close(2) (the one libevent calls too): counts closes of a descriptor that was not
// open, the trace of a descriptor closed by two owners.
namespace {
std::atomic<int> g_closes_of_closed_fds{0};
}  // namespace

extern "C" int close(int fd) {
  using CloseFn = int (*)(int);
  static const auto real = reinterpret_cast<CloseFn>(dlsym(RTLD_NEXT, "close"));
  const int rc = real(fd);
  if (rc != 0 && errno == EBADF) g_closes_of_closed_fds.fetch_add(1);
  return rc;
}

namespace lazymig::agent {
namespace {

namespace fs = std::filesystem;

const std::string kToken(64, 'a');

// Short, for the 108 bytes of a UNIX socket path.
std::string temporaryDirectory() {
  std::string dir = (fs::temp_directory_path() / "lazymig-api-XXXXXX").string();
  EXPECT_NE(::mkdtemp(dir.data()), nullptr) << dir;
  return dir;
}

using lazymig::testing::Answer;

class ControlApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = temporaryDirectory();
    auto ca = transport::generateCa(dir_, "ca");
    ASSERT_TRUE(ca) << ca.error().message();
    auto leaf = transport::issueLeaf(*ca, dir_, "agent", {"agent", {"agent.test"}});
    ASSERT_TRUE(leaf) << leaf.error().message();
    config::Config c;
    c.node_name = "control-api-test";
    c.agent_listen = "127.0.0.1:0";
    c.control_listen = "unix:" + controlSocket();
    c.metrics_listen = "off";
    c.tls = {ca->cert_file, leaf->cert_file, leaf->key_file};
    c.state_dir = dir_ + "/state";
    c.handshake_dir = dir_ + "/vmm";
    c.log_level = "warn";
    auto agent = Agent::start(std::move(c));
    ASSERT_TRUE(agent) << agent.error().message();
    agent_ = std::move(*agent);
  }

  void TearDown() override {
    agent_.reset();
    fs::remove_all(dir_);
  }

  std::string controlSocket() const { return dir_ + "/control.sock"; }

  Answer ask(const std::string& method, const std::string& path, const std::string& body = "") {
    return lazymig::testing::ask(client::ControlClient("unix:" + controlSocket()), method, path,
                                 body);
  }

  // A destination migration whose VMM never comes: it waits, listening on its socket.
  static nlohmann::json destination(const std::string& id) {
    return {{"id", id},
            {"role", "destination"},
            {"token", kToken},
            {"peer_identity", "source.test"},
            {"source_address", "127.0.0.1:1"}};
  }

  std::string dir_;
  std::unique_ptr<Agent> agent_;
};

bool mentions(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

TEST_F(ControlApiTest, AnUnknownMigrationIs404NamingItsId) {
  for (const char* method : {"GET", "DELETE"}) {
    auto a = ask(method, "/v1/migrations/no-such-migration");
    EXPECT_EQ(a.status, 404) << method << " " << a.body.dump();
    EXPECT_EQ(a.code, "not_found") << method;
    EXPECT_TRUE(mentions(a.message, "'no-such-migration'")) << a.message;
  }
  auto path = ask("GET", "/v2/nothing");
  EXPECT_EQ(path.status, 404);
  EXPECT_TRUE(mentions(path.message, "/v2/nothing")) << path.message;
}

TEST_F(ControlApiTest, ABadBodyIs400NamingTheField) {
  struct Case {
    nlohmann::json body;
    std::string field;
  };
  auto missing_token = destination("bad-body");
  missing_token.erase("token");
  auto bad_address = destination("bad-body");
  bad_address["source_address"] = "no-port";
  auto bad_pid = destination("bad-body");
  bad_pid["vmm_pid"] = -4;
  for (const auto& c : {Case{missing_token, "'token'"}, Case{bad_address, "'source_address'"},
                        Case{bad_pid, "'vmm_pid'"}, Case{nlohmann::json::array(), "(body)"}}) {
    auto a = ask("POST", "/v1/migrations", c.body.dump());
    EXPECT_EQ(a.status, 400) << c.body.dump() << " -> " << a.body.dump();
    EXPECT_EQ(a.code, "bad_request");
    EXPECT_TRUE(mentions(a.message, c.field)) << c.field << ": " << a.message;
  }
  auto not_json = ask("POST", "/v1/migrations", "{\"id\": ");
  EXPECT_EQ(not_json.status, 400) << not_json.body.dump();
  EXPECT_EQ(not_json.code, "bad_request");
  EXPECT_EQ(ask("GET", "/v1/migrations/bad-body").status, 404) << "nothing was created";
}

// nlohmann keeps one of two repeated keys without a word: a body with two tokens would create
// a migration under whichever it kept.
TEST_F(ControlApiTest, ARepeatedKeyIs400NamingTheKey) {
  std::string body = destination("repeated").dump();
  body.insert(body.size() - 1, ",\"token\":\"" + std::string(64, 'b') + "\"");
  auto a = ask("POST", "/v1/migrations", body);
  EXPECT_EQ(a.status, 400) << a.body.dump();
  EXPECT_EQ(a.code, "bad_request");
  EXPECT_TRUE(mentions(a.message, "'token'")) << a.message;
  EXPECT_EQ(ask("GET", "/v1/migrations/repeated").status, 404) << "nothing was created";
}

TEST_F(ControlApiTest, ATakenIdIsIdempotentForTheSameRequestAnd409ForAnother) {
  auto body = destination("taken-id");
  auto first = ask("POST", "/v1/migrations", body.dump());
  ASSERT_EQ(first.status, 201) << first.body.dump();
  EXPECT_EQ(first.body.value("state", ""), "waiting_for_vmm");
  EXPECT_EQ(ask("POST", "/v1/migrations", body.dump()).status, 200) << "a repeat is idempotent";
  body["source_address"] = "127.0.0.1:2";
  auto other = ask("POST", "/v1/migrations", body.dump());
  EXPECT_EQ(other.status, 409) << other.body.dump();
  EXPECT_EQ(other.code, "conflict");
  EXPECT_TRUE(mentions(other.message, "'taken-id'")) << other.message;
}

// Up to 8 MiB the body is read and route() names its size; beyond, libevent answers itself with
// an HTML page that json_error_pages turns into the same JSON error.
TEST_F(ControlApiTest, ABodyOverTheLimitIs413InJson) {
  for (std::size_t size : {std::size_t{2} << 20, std::size_t{9} << 20}) {
    auto a = ask("POST", "/v1/migrations", std::string(size, ' '));
    EXPECT_EQ(a.status, 413) << size << ": " << a.body.dump();
    EXPECT_EQ(a.code, "too_large") << size;
    EXPECT_TRUE(mentions(a.message, std::to_string(1 << 20))) << a.message;
  }
  EXPECT_EQ(ask("GET", "/healthz").status, 200) << "the agent keeps serving";
}

TEST_F(ControlApiTest, ASocketSomebodyListensOnIs409NamingItsOwner) {
  auto own = destination("on-control");
  own["handshake_socket"] = controlSocket();
  auto a = ask("POST", "/v1/migrations", own.dump());
  EXPECT_EQ(a.status, 409) << a.body.dump();
  EXPECT_EQ(a.code, "conflict");
  EXPECT_TRUE(mentions(a.message, "control socket")) << a.message;

  auto first = destination("first");
  ASSERT_EQ(ask("POST", "/v1/migrations", first.dump()).status, 201);
  auto second = destination("second");
  second["handshake_socket"] = dir_ + "/vmm/first.sock";
  auto b = ask("POST", "/v1/migrations", second.dump());
  EXPECT_EQ(b.status, 409) << b.body.dump();
  EXPECT_TRUE(mentions(b.message, "migration 'first'")) << b.message;
  EXPECT_EQ(ask("GET", "/v1/migrations/second").status, 404) << "nothing was created";
  EXPECT_EQ(ask("GET", "/healthz").status, 200) << "the control socket still answers";
}

TEST_F(ControlApiTest, DeleteCancelsAMigrationAndAnswersItsState) {
  ASSERT_EQ(ask("POST", "/v1/migrations", destination("to-cancel").dump()).status, 201);
  auto a = ask("DELETE", "/v1/migrations/to-cancel");
  EXPECT_EQ(a.status, 200) << a.body.dump();
  EXPECT_EQ(a.body.value("state", ""), "cancelled") << a.body.dump();
  auto again = ask("GET", "/v1/migrations/to-cancel");
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(again.body.value("state", ""), "cancelled") << again.body.dump();
  auto wrong = ask("PUT", "/v1/migrations/to-cancel");
  EXPECT_EQ(wrong.status, 405) << wrong.body.dump();
  EXPECT_EQ(wrong.code, "method_not_allowed");
}

// POST .../paused tells a source agent that the orchestrator paused its live source VM; what
// is not a live pre-copy source is a 409 that says why, in the API's JSON error.
TEST_F(ControlApiTest, PausedIsAConflictForWhatIsNotALivePrecopySource) {
  EXPECT_EQ(ask("POST", "/v1/migrations/nobody/paused").status, 404);
  ASSERT_EQ(ask("POST", "/v1/migrations", destination("dst").dump()).status, 201);
  auto dst = ask("POST", "/v1/migrations/dst/paused");
  EXPECT_EQ(dst.status, 409) << dst.body.dump();
  EXPECT_TRUE(mentions(dst.message, "is a destination")) << dst.message;

  const std::string memory = dir_ + "/guest.mem";
  std::ofstream(memory) << std::string(4096, 'x');
  nlohmann::json src{{"id", "src"},       {"role", "source"},
                     {"token", kToken},   {"peer_identity", "destination.test"},
                     {"precopy", "auto"}, {"memory", {{"snapshot_file", memory}}}};
  auto created = ask("POST", "/v1/migrations", src.dump());
  ASSERT_EQ(created.status, 201) << created.body.dump();
  EXPECT_EQ(created.body["precopy"]["state"], "switched") << "a snapshot is paused memory";
  auto paused = ask("POST", "/v1/migrations/src/paused");
  EXPECT_EQ(paused.status, 409) << paused.body.dump();
  EXPECT_EQ(paused.code, "conflict");
  EXPECT_TRUE(mentions(paused.message, "is not a live pre-copy")) << paused.message;
  EXPECT_EQ(ask("GET", "/v1/migrations/src/paused").status, 405);
}

// evhttp closes the descriptor it accepts on when it is freed; the control API used to close
// it a second time through its own socket object -- in an agent, maybe a descriptor another
// thread had just opened under that number.
TEST(ControlApiLifetime, ClosingTheApiClosesItsSocketOnce) {
  auto loop = transport::EventLoop::start("control-test", 1);
  ASSERT_TRUE(loop) << loop.error().message();
  const std::string dir = temporaryDirectory();
  Registry registry;
  ControlApi::Backend backend{
      [](const nlohmann::json&, bool&) -> std::expected<std::shared_ptr<Migration>, ApiError> {
        return std::unexpected(ApiError{400, "bad_request", "no migrations here"});
      },
      [] { return nlohmann::json::object(); }, [] { return true; }};
  std::unique_ptr<ControlApi> api;
  runOnLoop(**loop, [&] {
    auto started =
        ControlApi::start(**loop, "unix:" + dir + "/control.sock", registry, backend, "");
    ASSERT_TRUE(started) << started.error().message();
    api = std::move(*started);
  });
  ASSERT_TRUE(api);
  auto health = client::ControlClient("unix:" + dir + "/control.sock").get("/healthz");
  ASSERT_TRUE(health) << health.error().message();
  EXPECT_EQ(health->status, 200);
  const int before = g_closes_of_closed_fds.load();
  runOnLoop(**loop, [&] { api.reset(); });
  EXPECT_EQ(g_closes_of_closed_fds.load(), before) << "a descriptor was closed twice";
  EXPECT_FALSE(fs::exists(dir + "/control.sock")) << "the socket's path goes with it";
  (*loop)->stop();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lazymig::agent
