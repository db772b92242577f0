#include "agent/source/source_ending.h"

namespace lazymig::agent {

std::optional<HelloRefusal> answerFinishedSource(transport::Connection& conn,
                                                 const transport::Hello& hello,
                                                 const FinishedSource& finished,
                                                 const log::Logger& log) {
  auto refused = checkPeerAuthorised(conn, hello, finished.peer_identity, finished.token, log);
  if (!refused && finished.state == "completed") {
    log.info("told the destination again that the migration completed",
             {{"remote", conn.remoteAddress()}});
    conn.sendEncoded(transport::encodeCompleteAck());
    conn.close();
    return std::nullopt;
  }
  if (!refused) {
    refused = HelloRefusal{HelloRefusalReason::kState, PeerErrorCode::kState,
                           "migration is " + finished.state};
  }
  conn.sendEncoded(
      transport::encodeError({static_cast<std::uint16_t>(refused->code), refused->message}));
  conn.close();
  return refused;
}

}  // namespace lazymig::agent
