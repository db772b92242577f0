#include "agent/source/source_ending.h"

#include <openssl/crypto.h>

namespace lazymig::agent {

std::optional<std::string> checkPeerAuthorised(const transport::Connection& conn,
                                               const transport::Hello& hello,
                                               const std::string& peer_identity,
                                               const std::string& token, PeerErrorCode& code,
                                               std::string& message, const log::Logger& log) {
  if (!conn.peer().matches(peer_identity)) {
    code = PeerErrorCode::kAuth;
    message = "not authorised for this migration";
    log.warn("peer identity refused",
             {{"presented", conn.peer().describe()}, {"remote", conn.remoteAddress()}});
    return "identity";
  }
  if (hello.token.size() != token.size() ||
      CRYPTO_memcmp(hello.token.data(), token.data(), token.size()) != 0) {
    code = PeerErrorCode::kAuth;
    message = "not authorised for this migration";
    log.warn("migration token refused", {{"remote", conn.remoteAddress()}});
    return "token";
  }
  return std::nullopt;
}

std::optional<std::string> answerFinishedSource(transport::Connection& conn,
                                                const transport::Hello& hello,
                                                const FinishedSource& finished,
                                                const log::Logger& log) {
  PeerErrorCode code{};
  std::string message;
  auto refused =
      checkPeerAuthorised(conn, hello, finished.peer_identity, finished.token, code, message, log);
  if (!refused && finished.state == "completed") {
    log.info("told the destination again that the migration completed",
             {{"remote", conn.remoteAddress()}});
    conn.sendEncoded(transport::encodeCompleteAck());
    conn.close();
    return std::nullopt;
  }
  if (!refused) {
    code = PeerErrorCode::kState;
    message = "migration is " + finished.state;
    refused = "state";
  }
  conn.sendEncoded(transport::encodeError({static_cast<std::uint16_t>(code), message}));
  conn.close();
  return refused;
}

}  // namespace lazymig::agent
