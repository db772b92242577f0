// Codes carried by an Error frame between agents (docs/protocol.md).
#pragma once

#include <cstdint>

namespace lazymig::agent {

enum class PeerErrorCode : std::uint16_t {
  kBadRequest = 1,        // malformed or out-of-order frame
  kUnknownMigration = 2,  // the source has no such migration (yet): retry
  kAuth = 3,              // wrong peer identity or token: never retry
  kState = 4,             // the migration is finished or cancelled: never retry
  kLayout = 5,            // page size or memory size disagree: never retry
  kInternal = 6,
};

inline bool isFatalPeerError(PeerErrorCode code) {
  return code == PeerErrorCode::kAuth || code == PeerErrorCode::kState ||
         code == PeerErrorCode::kLayout;
}

}  // namespace lazymig::agent
