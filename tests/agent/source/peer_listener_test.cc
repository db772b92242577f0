// PeerListener on real TLS: a connection must say Hello, in time, for a migration this agent
// serves, from the peer that migration expects; everything else is refused with an Error frame
// the peer can act on, and counted.
#include "agent/source/peer_listener.h"

#include "tests/agent/source/source_peer.h"

namespace lazymig::agent {
namespace {

using source_test::TestDestination;
using transport::ChannelKind;
using transport::FrameType;

class PeerListenerTest : public source_test::SourcePeer {};

TEST_F(PeerListenerTest, HandsAHelloToItsMigration) {
  createMigration();
  listen();
  auto client = dial();
  ASSERT_TRUE(client->connected());
  client->send(transport::encodeHello(client->hello(ChannelKind::kUrgent, kBytes)));
  EXPECT_TRUE(client->waitFor(FrameType::kHelloOk));
}

// Another certificate of the same fleet, with the right token: the migration refuses it, and
// the refusal is counted once (by the migration, not again by the listener).
TEST_F(PeerListenerTest, RefusesAPeerWithTheWrongIdentity) {
  createMigration();
  listen();
  auto client = dial(stranger_tls_);
  ASSERT_TRUE(client->connected());
  client->send(transport::encodeHello(client->hello(ChannelKind::kUrgent, kBytes)));
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kAuth));
  EXPECT_TRUE(client->waitClosed());
  EXPECT_EQ(refusals("identity"), 1);
}

TEST_F(PeerListenerTest, RefusesAnUnknownMigrationAsRetryable) {
  createMigration();
  listen();
  auto client = dial();
  client->send(transport::encodeHello(
      client->hello(ChannelKind::kUrgent, kBytes, source_test::kToken, "m2")));
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kUnknownMigration));
  EXPECT_TRUE(client->waitClosed());
  EXPECT_EQ(refusals("unknown_migration"), 1);
  EXPECT_FALSE(isFatalPeerError(PeerErrorCode::kUnknownMigration));
}

TEST_F(PeerListenerTest, RefusesAConnectionThatDoesNotSayHelloInTime) {
  createMigration();
  listen(std::chrono::milliseconds(100));
  auto client = dial();
  ASSERT_TRUE(client->connected());
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kBadRequest));
  EXPECT_TRUE(client->waitClosed());
  EXPECT_EQ(refusals("hello_timeout"), 1);
}

TEST_F(PeerListenerTest, RefusesAFirstFrameThatIsNotHello) {
  createMigration();
  listen();
  auto client = dial();
  client->send(transport::encodePing(FrameType::kPing, {1}));
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kBadRequest));
  EXPECT_TRUE(client->waitClosed());
  EXPECT_EQ(refusals("protocol"), 1);
}

// A certificate from another CA never gets as far as a Hello.
TEST_F(PeerListenerTest, RefusesACertificateFromAnotherAuthorityAtTls) {
  createMigration();
  listen();
  auto other_ca = *transport::generateCa(dir_, "other-ca");
  transport::LeafSpec spec;
  spec.uris = {source_test::kDestinationId};
  auto forged = *transport::issueLeaf(other_ca, dir_, "forged", spec);
  auto tls = *transport::TlsContext::create(
      transport::TlsContext::Side::kClient,
      transport::TlsFiles{ca_.cert_file, forged.cert_file, forged.key_file});
  TestDestination client(*client_loop_, tls, listener_->port());
  if (client.connected()) {
    EXPECT_TRUE(client.waitClosed());  // TLS 1.3: the server refuses after its Finished
  }
  EXPECT_TRUE(eventually([&] {
    return metricValue("lazymig_refusals_total", "reason=\"bad_certificate\"") +
               metricValue("lazymig_refusals_total", "reason=\"tls_handshake\"") >
           0;
  }));
}

}  // namespace
}  // namespace lazymig::agent
