#include "agent/source/hello_check.h"

#include <openssl/crypto.h>

namespace lazymig::agent {

std::string_view helloRefusalName(HelloRefusalReason reason) {
  switch (reason) {
    case HelloRefusalReason::kIdentity:
      return "identity";
    case HelloRefusalReason::kToken:
      return "token";
    case HelloRefusalReason::kState:
      return "state";
    case HelloRefusalReason::kNotReady:
      return "not_ready";
    case HelloRefusalReason::kLayout:
      return "layout";
  }
  return "other";
}

std::optional<HelloRefusal> checkPeerAuthorised(const transport::Connection& conn,
                                                const transport::Hello& hello,
                                                const std::string& peer_identity,
                                                const std::string& token, const log::Logger& log) {
  if (!conn.peer().matches(peer_identity)) {
    log.warn("peer identity refused",
             {{"presented", conn.peer().describe()}, {"remote", conn.remoteAddress()}});
    return HelloRefusal{HelloRefusalReason::kIdentity, PeerErrorCode::kAuth,
                        "not authorised for this migration"};
  }
  if (hello.token.size() != token.size() ||
      CRYPTO_memcmp(hello.token.data(), token.data(), token.size()) != 0) {
    log.warn("migration token refused", {{"remote", conn.remoteAddress()}});
    return HelloRefusal{HelloRefusalReason::kToken, PeerErrorCode::kAuth,
                        "not authorised for this migration"};
  }
  return std::nullopt;
}

std::optional<HelloRefusal> checkHello(const transport::Connection& conn,
                                       const transport::Hello& hello,
                                       const HelloExpectations& expected, const log::Logger& log) {
  if (auto refused =
          checkPeerAuthorised(conn, hello, expected.peer_identity, expected.token, log)) {
    return refused;
  }
  if (isFinal(expected.state)) {
    return HelloRefusal{HelloRefusalReason::kState, PeerErrorCode::kState,
                        "migration is " + std::string(stateName(expected.state))};
  }
  const SourceMemory* memory = expected.memory;
  if (!memory) {
    return HelloRefusal{HelloRefusalReason::kNotReady, PeerErrorCode::kUnknownMigration,
                        "the guest memory has not been handed over yet"};
  }
  // A pre-copy destination's bulk link before its VMM exists learns the layout from the
  // HelloOk, and checks it against its VMM's regions itself.
  if (!hello.layoutUnknown() &&
      (hello.page_size != memory->pageSize() || hello.memory_bytes != memory->bytes())) {
    return HelloRefusal{HelloRefusalReason::kLayout, PeerErrorCode::kLayout,
                        "destination expects " + std::to_string(hello.memory_bytes) +
                            " bytes in pages of " + std::to_string(hello.page_size) +
                            ", source has " + std::to_string(memory->bytes()) + " in pages of " +
                            std::to_string(memory->pageSize())};
  }
  return std::nullopt;
}

}  // namespace lazymig::agent
