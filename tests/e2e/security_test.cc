// Attacks on real agents while a real migration runs (invariants 5 and 6): each is refused
// and counted in lazymig_refusals_total, and the good migration completes with every byte.
// docs/security.md lists these tests beside the attacks they play.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>

#include "client/control_client.h"
#include "sys/unique_fd.h"
#include "tests/e2e/e2e.h"
#include "transport/connection.h"
#include "transport/frame.h"
#include "transport/pki.h"

namespace lazymig::e2e {
namespace {

using cli::DemoRun;
using cli::Side;
using namespace std::chrono_literals;

using SslCtx = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;
using Ssl = std::unique_ptr<SSL, decltype(&SSL_free)>;

sys::UniqueFd dialTcp(const std::string& host_port) {
  auto colon = host_port.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(host_port.substr(colon + 1))));
  ::inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &a.sin_addr);
  sys::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  timeval tv{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
  return fd;
}

// What an attacker's connection got from the source agent.
struct Outcome {
  bool tls_established = false;
  bool hello_ok = false;      // the one thing no attack may get
  bool complete_ack = false;  // a finished migration's outcome (the ending handshake)
  std::string refusal;        // the Error frame's message, if one came
};

// A blocking TLS client with its own certificate that sends one Hello, independent of the
// agent's own transport code (a bug there must not hide here).
Outcome helloAttack(const std::string& address, const transport::TlsFiles& cert,
                    const std::string& token, int max_tls_version = 0) {
  Outcome out;
  SslCtx ctx(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  if (max_tls_version != 0) SSL_CTX_set_max_proto_version(ctx.get(), max_tls_version);
  SSL_CTX_use_certificate_chain_file(ctx.get(), cert.cert_file.c_str());
  SSL_CTX_use_PrivateKey_file(ctx.get(), cert.key_file.c_str(), SSL_FILETYPE_PEM);
  auto fd = dialTcp(address);
  if (!fd) return out;
  Ssl ssl(SSL_new(ctx.get()), &SSL_free);
  SSL_set_fd(ssl.get(), fd.get());
  if (SSL_connect(ssl.get()) != 1) return out;
  transport::Hello h{DemoRun::kMigrationId, token, transport::ChannelKind::kUrgent, 4096,
                     64ull << 20};
  std::string frame = transport::encodeHello(h);
  // TLS 1.3 lets the server reject a client certificate after the client's handshake is
  // done: the refusal shows as the write or the read below failing.
  if (SSL_write(ssl.get(), frame.data(), static_cast<int>(frame.size())) <= 0) return out;
  std::string reply;
  char buf[2048];
  for (int n; (n = SSL_read(ssl.get(), buf, sizeof buf)) > 0;)
    reply.append(buf, static_cast<std::size_t>(n));
  out.tls_established = !reply.empty();
  if (reply.size() < transport::kHeaderSize) return out;
  auto type = static_cast<transport::FrameType>(static_cast<unsigned char>(reply[5]));
  out.hello_ok = type == transport::FrameType::kHelloOk;
  out.complete_ack = type == transport::FrameType::kCompleteAck;
  if (type == transport::FrameType::kError) {
    auto e =
        transport::decodeError(std::as_bytes(std::span(reply).subspan(transport::kHeaderSize)));
    if (e) out.refusal = e->message;
  }
  return out;
}

std::string fingerprint(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (cert == nullptr || X509_digest(cert, EVP_sha256(), md, &n) != 1) return "";
  std::string hex;
  char b[3];
  for (unsigned i = 0; i < n; ++i) hex += (std::snprintf(b, sizeof b, "%02x", md[i]), b);
  return hex;
}

std::string fileFingerprint(const std::string& pem) {
  std::unique_ptr<FILE, decltype(&std::fclose)> f(std::fopen(pem.c_str(), "r"), &std::fclose);
  if (!f) return "";
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_X509(f.get(), nullptr, nullptr, nullptr), &X509_free);
  return fingerprint(cert.get());
}

// The certificate a TLS server presents now (what a new connection gets).
std::string presentedFingerprint(const std::string& address, const transport::TlsFiles& client) {
  SslCtx ctx(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  SSL_CTX_use_certificate_chain_file(ctx.get(), client.cert_file.c_str());
  SSL_CTX_use_PrivateKey_file(ctx.get(), client.key_file.c_str(), SSL_FILETYPE_PEM);
  auto fd = dialTcp(address);
  if (!fd) return "";
  Ssl ssl(SSL_new(ctx.get()), &SSL_free);
  SSL_set_fd(ssl.get(), fd.get());
  if (SSL_connect(ssl.get()) != 1) return "";
  std::unique_ptr<X509, decltype(&X509_free)> cert(SSL_get1_peer_certificate(ssl.get()),
                                                   &X509_free);
  return fingerprint(cert.get());
}

std::map<std::string, double> refusalsOf(const DemoRun& run, Side side) {
  std::map<std::string, double> out;
  const std::string text = scrapeMetrics(run, side);
  std::regex line(R"re(lazymig_refusals_total\{[^}]*reason="([a-z_]+)"[^}]*\} ([0-9.e+]+))re");
  for (std::sregex_iterator it(text.begin(), text.end(), line), end; it != end; ++it) {
    out[(*it)[1]] = std::stod((*it)[2]);
  }
  return out;
}

TEST(Security, EveryAttackOnTheSourceIsRefusedCountedAndTheMigrationCompletes) {
  auto o = baseOptions();
  o.memory = "anon";
  // A bulk stream slow enough that every attack lands while the migration runs.
  o.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: 16\n";
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > 0; }, 30s));

  const std::string dir = run->dir();
  const std::string source = run->agentAddress(Side::kSource);
  const std::string dest_id = DemoRun::identity(Side::kDestination);
  transport::PemFiles fleet_ca{dir + "/ca.crt", dir + "/ca.key"};
  auto mallory_ca = transport::generateCa(dir, "mallory-ca");
  ASSERT_TRUE(mallory_ca);
  auto leaf = [&](const transport::PemFiles& ca, const std::string& name, const std::string& uri,
                  int not_before_days = 0, int valid_days = 30) {
    transport::LeafSpec s;
    s.uris = {uri};
    s.not_before_offset_days = not_before_days;
    s.valid_days = valid_days;
    auto l = transport::issueLeaf(ca, dir, name, s);
    EXPECT_TRUE(l) << l.error().message();
    return transport::TlsFiles{fleet_ca.cert_file, l->cert_file, l->key_file};
  };
  const std::string token = run->token();
  std::string wrong_token(token.size(), '0');

  struct Attack {
    const char* name;
    Outcome outcome;
    const char* counted_as;  // the reason label it must be counted under
  };
  std::vector<Attack> attacks;
  // The destination's own identity, signed by a CA the fleet does not trust.
  attacks.push_back({"wrong CA", helloAttack(source, leaf(*mallory_ca, "wrong-ca", dest_id), token),
                     "bad_certificate"});
  // The destination's identity from the fleet CA, but expired yesterday.
  attacks.push_back({"expired certificate",
                     helloAttack(source, leaf(fleet_ca, "expired", dest_id, -10, 9), token),
                     "bad_certificate"});
  // A valid fleet certificate for another node, even with the right token.
  attacks.push_back(
      {"another node's identity",
       helloAttack(source, leaf(fleet_ca, "mallory", "spiffe://lazymig.demo/node/mallory"), token),
       "identity"});
  // The right identity (a stolen certificate) without the migration's token.
  attacks.push_back({"right identity, wrong token",
                     helloAttack(source, leaf(fleet_ca, "thief", dest_id), wrong_token), "token"});
  // TLS 1.2 only, with an otherwise perfect certificate and token.
  attacks.push_back({"TLS 1.2-only client",
                     helloAttack(source, leaf(fleet_ca, "old-tls", dest_id), token, TLS1_2_VERSION),
                     "tls_handshake"});
  {
    auto fd = dialTcp(source);
    ASSERT_TRUE(fd);
    std::string hello = transport::encodeHello(
        {DemoRun::kMigrationId, token, transport::ChannelKind::kUrgent, 4096, 0});
    ASSERT_GT(::write(fd.get(), hello.data(), hello.size()), 0);
    char buf[64];
    Outcome plain;
    plain.hello_ok =
        ::read(fd.get(), buf, sizeof buf) >= static_cast<ssize_t>(transport::kHeaderSize) &&
        static_cast<transport::FrameType>(static_cast<unsigned char>(buf[5])) ==
            transport::FrameType::kHelloOk;
    attacks.push_back({"plaintext Hello", plain, "plaintext"});
  }

  for (const auto& a : attacks) EXPECT_FALSE(a.outcome.hello_ok) << a.name << " got HelloOk";
  // The application-level refusals say why in an Error frame; TLS-level ones never get that far.
  for (const auto& a : attacks) {
    if (std::string(a.counted_as) == "identity" || std::string(a.counted_as) == "token") {
      EXPECT_FALSE(a.outcome.refusal.empty()) << a.name << ": no Error frame";
    }
  }
  std::map<std::string, double> want;
  for (const auto& a : attacks) want[a.counted_as] += 1;
  std::map<std::string, double> counted;
  EXPECT_TRUE(waitUntil(
      [&] {
        counted = refusalsOf(*run, Side::kSource);
        for (const auto& [reason, n] : want) {
          if (counted[reason] < n) return false;
        }
        return true;
      },
      10s))
      << "refusals counted: " << nlohmann::json(counted).dump() << " wanted at least "
      << nlohmann::json(want).dump();

  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  auto report = run->report(*vm, 0);
  expectVerified(report, o.size);
  EXPECT_EQ(progressOf(*run, Side::kDestination, "reconnects"), 0u)
      << "no attack disturbed the good links";
}

// An authorised destination (right identity, right token) that floods page requests and never
// reads the replies is cut off before the source's queue grows without bound; the source keeps
// serving, and the real destination then completes the migration.
TEST(Security, PageRequestFloodIsCutOffAndCounted) {
  auto o = baseOptions();
  o.memory = "anon";
  auto run = DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());

  const std::string dir = run->dir();
  transport::TlsFiles dest{dir + "/ca.crt", dir + "/destination.crt", dir + "/destination.key"};
  SslCtx ctx(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  SSL_CTX_use_certificate_chain_file(ctx.get(), dest.cert_file.c_str());
  SSL_CTX_use_PrivateKey_file(ctx.get(), dest.key_file.c_str(), SSL_FILETYPE_PEM);
  auto fd = dialTcp(run->agentAddress(Side::kSource));
  ASSERT_TRUE(fd);
  timeval tv{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  Ssl ssl(SSL_new(ctx.get()), &SSL_free);
  SSL_set_fd(ssl.get(), fd.get());
  ASSERT_EQ(SSL_connect(ssl.get()), 1);
  std::string hello = transport::encodeHello(
      {DemoRun::kMigrationId, run->token(), transport::ChannelKind::kUrgent, 4096, o.size});
  ASSERT_GT(SSL_write(ssl.get(), hello.data(), static_cast<int>(hello.size())), 0);
  char head[transport::kHeaderSize];
  ASSERT_EQ(SSL_read(ssl.get(), head, sizeof head), static_cast<int>(sizeof head));
  ASSERT_EQ(static_cast<transport::FrameType>(static_cast<unsigned char>(head[5])),
            transport::FrameType::kHelloOk);

  transport::PageRequest req;
  for (std::uint64_t p = 0; p < 1024; ++p) req.pages.push_back(p);
  const std::string frame = transport::encodePageRequest(req);
  int sent = 0;
  // Each request asks for 4 MiB; the source must hang up long before 1000 of them.
  for (; sent < 1000; ++sent) {
    if (SSL_write(ssl.get(), frame.data(), static_cast<int>(frame.size())) <= 0) break;
  }
  EXPECT_LT(sent, 1000) << "the source never cut the flood off";
  EXPECT_TRUE(waitUntil([&] { return refusalsOf(*run, Side::kSource)["flood"] >= 1; },
                        std::chrono::seconds(10)))
      << nlohmann::json(refusalsOf(*run, Side::kSource)).dump();

  ASSERT_TRUE(run->startDestinationVm());
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
}

// Certificates rotate under a running migration: SIGHUP loads the new ones for new
// connections, the migration's links stay up, and a broken file changes nothing.
TEST(Security, CertificatesReloadOnSighupWithoutDroppingTheMigration) {
  auto o = baseOptions();
  o.memory = "anon";
  o.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: 16\n";
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > 0; }, 30s));

  const std::string dir = run->dir();
  const std::string source = run->agentAddress(Side::kSource);
  transport::PemFiles fleet_ca{dir + "/ca.crt", dir + "/ca.key"};
  transport::TlsFiles dest_files{fleet_ca.cert_file, dir + "/destination.crt",
                                 dir + "/destination.key"};
  const std::string before = presentedFingerprint(source, dest_files);
  ASSERT_EQ(before, fileFingerprint(dir + "/source.crt"));

  // A new key and certificate for the same identity, written over the old files.
  transport::LeafSpec spec;
  spec.common_name = "source";
  spec.uris = {DemoRun::identity(Side::kSource)};
  ASSERT_TRUE(transport::issueLeaf(fleet_ca, dir, "source", spec));
  const std::string rotated = fileFingerprint(dir + "/source.crt");
  ASSERT_NE(rotated, before);
  EXPECT_EQ(presentedFingerprint(source, dest_files), before)
      << "nothing changes before the signal";
  run->signalAgent(Side::kSource, SIGHUP);
  EXPECT_TRUE(waitUntil([&] { return presentedFingerprint(source, dest_files) == rotated; }, 10s));

  // A broken certificate file: the reload fails loudly and the agent keeps what it had.
  std::filesystem::copy_file(dir + "/source.crt", dir + "/source.crt.good");
  std::ofstream(dir + "/source.crt", std::ios::trunc) << "not a certificate\n";
  run->signalAgent(Side::kSource, SIGHUP);
  std::string log;
  EXPECT_TRUE(waitUntil(
      [&] {
        log = readFile(run->logPath(Side::kSource));
        return log.find("certificate reload failed") != std::string::npos;
      },
      10s))
      << log;
  EXPECT_EQ(presentedFingerprint(source, dest_files), rotated);

  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
  EXPECT_EQ(progressOf(*run, Side::kDestination, "reconnects"), 0u)
      << "the links made before the reload stayed up";
}

// Issue 18: a peer with a valid fleet certificate that completes TLS and never sends a Hello is
// cut off like a slow TLS handshake (migration.handshake_timeout_ms) and counted.
TEST(Security, PeerThatNeverSendsHelloIsCutOffAndCounted) {
  auto o = baseOptions();
  o.memory = "anon";
  o.extra_yaml = "migration:\n  handshake_timeout_ms: 1000\n";
  auto run = DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  const std::string dir = run->dir();
  SslCtx ctx(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  SSL_CTX_use_certificate_chain_file(ctx.get(), (dir + "/destination.crt").c_str());
  SSL_CTX_use_PrivateKey_file(ctx.get(), (dir + "/destination.key").c_str(), SSL_FILETYPE_PEM);
  auto fd = dialTcp(run->agentAddress(Side::kSource));
  ASSERT_TRUE(fd);
  timeval tv{30, 0};  // far longer than the agent's bound
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  Ssl ssl(SSL_new(ctx.get()), &SSL_free);
  SSL_set_fd(ssl.get(), fd.get());
  ASSERT_EQ(SSL_connect(ssl.get()), 1);
  std::string reply;
  char buf[512];
  for (int n; (n = SSL_read(ssl.get(), buf, sizeof buf)) > 0;) {
    reply.append(buf, static_cast<std::size_t>(n));
  }
  EXPECT_FALSE(reply.empty()) << "the agent kept a silent peer connected for 30 s";
  EXPECT_NE(reply.find("no Hello within 1000 ms"), std::string::npos) << "the Error frame says why";
  EXPECT_TRUE(waitUntil([&] { return refusalsOf(*run, Side::kSource)["hello_timeout"] >= 1; }, 10s))
      << nlohmann::json(refusalsOf(*run, Side::kSource)).dump();
}

// Issue 18: the token of a migration that finished and was retired, replayed, is told the
// migration is finished (a final answer), not "no such migration (yet)" (a retryable one).
TEST(Security, TokenReplayedAfterTheMigrationRetiredIsToldItIsFinished) {
  auto o = baseOptions();
  o.memory = "anon";
  o.size = 16ull << 20;
  o.extra_yaml = "migration:\n  stall_timeout_ms: 1000\n";
  auto done = runToTheEnd(o);
  ASSERT_TRUE(done) << done.error().message();
  expectVerified(done->run.report(done->vm, 0), o.size);
  const std::string dir = done->run.dir();
  transport::TlsFiles dest{dir + "/ca.crt", dir + "/destination.crt", dir + "/destination.key"};
  // Once retired, the id is no longer live: the answer must still be final -- the outcome
  // (CompleteAck, the ending handshake's word for "completed") to its destination with its
  // token, "not authorised" to anyone else -- never error 2's retryable "no such migration".
  ASSERT_TRUE(waitUntil(
      [&] {
        return countOf(readFile(done->run.logPath(Side::kSource)), "finished migration retired") >
               0;
      },
      30s))
      << "the source never retired the migration";
  Outcome replay = helloAttack(done->run.agentAddress(Side::kSource), dest, done->run.token());
  EXPECT_TRUE(replay.complete_ack) << "the replay was answered: '" << replay.refusal << "'";
  EXPECT_FALSE(replay.hello_ok);
  auto wrong_token = helloAttack(done->run.agentAddress(Side::kSource), dest, std::string(64, '0'));
  EXPECT_FALSE(wrong_token.complete_ack || wrong_token.hello_ok);
  EXPECT_EQ(wrong_token.refusal, "not authorised for this migration");
}

// A second VMM handshake for a migration that already has its VMM is refused and counted;
// the first VMM keeps being served.
TEST(Security, SecondHandshakeForARunningMigrationIsRefused) {
  auto o = baseOptions();
  o.memory = "anon";
  o.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: 16\n";
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > 0; }, 30s));
  const std::string socket = run->dir() + "/destination-vmm/" + DemoRun::kMigrationId + ".sock";
  const std::string script =
      "import socket,sys,os\n"
      "s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM); s.connect(sys.argv[1])\n"
      "r,w=os.pipe()\n"
      "msg=b'[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096}]'\n"
      "socket.send_fds(s,[msg],[r]); print('sent', flush=True); s.recv(100)\n";
  auto second = cli::ChildProcess::spawn({"/usr/bin/python3", "-c", script, socket},
                                         run->dir() + "/second.log");
  ASSERT_TRUE(second) << second.error().message();
  ASSERT_TRUE(second->wait(20s).has_value());
  EXPECT_TRUE(waitUntil(
      [&] { return refusalsOf(*run, Side::kDestination)["handshake_rejected"] >= 1; }, 10s))
      << nlohmann::json(refusalsOf(*run, Side::kDestination)).dump();
  const std::string log = readFile(run->logPath(Side::kDestination));
  EXPECT_NE(log.find("second handshake is refused"), std::string::npos) << "the refusal says why";
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
}

// A VMM running as a uid outside handshake.allowed_uids cannot hand over a uffd, even with a
// world-writable socket; the real VMM (root) then can, and the migration completes.
TEST(Security, HandshakeFromADisallowedUidIsRefused) {
  auto o = baseOptions();
  o.extra_yaml = "handshake:\n  allowed_uids: [0]\n  socket_mode: \"0666\"\n";
  auto run = DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  const std::string socket = run->dir() + "/destination-vmm/" + DemoRun::kMigrationId + ".sock";
  ASSERT_EQ(::chmod(run->dir().c_str(), 0755), 0);
  ASSERT_EQ(::chmod((run->dir() + "/destination-vmm").c_str(), 0755), 0);
  // nobody connects and sends a well-formed Firecracker handshake with a uffd-shaped fd.
  const std::string script =
      "import socket,sys,os,time\n"
      "s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM); s.connect(sys.argv[1])\n"
      "print('connected as', os.getuid(), flush=True)\n"
      "r,w=os.pipe()\n"
      "msg=b'[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096}]'\n"
      "try:\n"
      "  time.sleep(0.2); socket.send_fds(s,[msg],[r]); print('reply', s.recv(100), flush=True)\n"
      "except OSError as e: print('refused:', e, flush=True)\n";
  auto nobody =
      cli::ChildProcess::spawn({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                "--clear-groups", "/usr/bin/python3", "-c", script, socket},
                               run->dir() + "/nobody.log");
  ASSERT_TRUE(nobody) << nobody.error().message();
  auto st = nobody->wait(20s);
  ASSERT_TRUE(st.has_value());
  const std::string said = readFile(run->dir() + "/nobody.log");
  // The socket let nobody connect (mode 0666): SO_PEERCRED is what turned it away.
  EXPECT_NE(said.find("connected as 65534"), std::string::npos) << said;
  EXPECT_EQ(said.find("reply b'"), std::string::npos) << "nobody must not be answered: " << said;
  EXPECT_TRUE(waitUntil(
      [&] { return refusalsOf(*run, Side::kDestination)["handshake_credentials"] >= 1; }, 10s))
      << nlohmann::json(refusalsOf(*run, Side::kDestination)).dump();
  auto m = run->migration(Side::kDestination);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->value("state", ""), "waiting_for_vmm") << "the refused handshake changed nothing";

  ASSERT_TRUE(run->startDestinationVm());
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
}

// A finished migration still tells its destination the outcome (CompleteAck, from the record
// a restarted source agent keeps), and tells nobody else anything: the same identity and token
// checks as a live one, in the same order.
TEST(Security, FinishedMigrationTellsItsOutcomeOnlyToItsDestination) {
  auto finished = runToTheEnd(baseOptions());
  ASSERT_TRUE(finished) << finished.error().message();
  DemoRun& run = finished->run;
  ASSERT_TRUE(waitUntil(
      [&] {
        auto m = run.migration(Side::kSource);
        return m && m->value("state", "") == "completed";
      },
      30s));
  run.killAgent(Side::kSource, SIGKILL);
  ASSERT_TRUE(run.startAgent(Side::kSource));
  const std::string dir = run.dir();
  const std::string source = run.agentAddress(Side::kSource);
  const transport::TlsFiles destination{dir + "/ca.crt", dir + "/destination.crt",
                                        dir + "/destination.key"};
  const transport::TlsFiles other_node{dir + "/ca.crt", dir + "/source.crt", dir + "/source.key"};

  Outcome stranger = helloAttack(source, other_node, run.token());
  EXPECT_FALSE(stranger.complete_ack || stranger.hello_ok);
  EXPECT_EQ(stranger.refusal, "not authorised for this migration");
  Outcome thief = helloAttack(source, destination, std::string(run.token().size(), '0'));
  EXPECT_FALSE(thief.complete_ack || thief.hello_ok);
  EXPECT_EQ(thief.refusal, "not authorised for this migration");
  Outcome owner = helloAttack(source, destination, run.token());
  EXPECT_TRUE(owner.complete_ack) << owner.refusal;
  EXPECT_FALSE(owner.hello_ok);
  auto refusals = refusalsOf(run, Side::kSource);
  EXPECT_EQ(refusals["identity"], 1) << "counted after the restart";
  EXPECT_EQ(refusals["token"], 1);
}

}  // namespace
}  // namespace lazymig::e2e
