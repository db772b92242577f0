// Whether a source serves the destination that said Hello: the checks, in order, and why it
// refused, as a value (the Error frame's code and message for the peer, the reason for the
// refusals metric). Pure functions of what the migration holds when the Hello arrives.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "agent/core/migration.h"
#include "agent/core/peer_errors.h"
#include "agent/source/source_memory.h"
#include "base/log.h"
#include "transport/connection.h"

namespace lazymig::agent {

enum class HelloRefusalReason {
  kIdentity,  // the peer's certificate is not the migration's expected identity
  kToken,     // the Hello's token is not the migration's
  kState,     // the migration is final (completed, failed, cancelled)
  kNotReady,  // an authorised peer, but the guest memory is not handed over yet: it waits
  kLayout,    // page size or memory size disagree
};
// The reason's label on lazymig_refusals_total (one of metrics::kRefusalReasons).
std::string_view helloRefusalName(HelloRefusalReason reason);

struct HelloRefusal {
  HelloRefusalReason reason;
  PeerErrorCode code;   // sent in the Error frame
  std::string message;  // sent in the Error frame
};

// The identity and token check every Hello passes first, with the same answer for both: a
// peer that is not the intended one learns nothing about the migration's state or size.
std::optional<HelloRefusal> checkPeerAuthorised(const transport::Connection& conn,
                                                const transport::Hello& hello,
                                                const std::string& peer_identity,
                                                const std::string& token, const log::Logger& log);

// What a live source migration holds when a Hello arrives.
struct HelloExpectations {
  const std::string& peer_identity;
  const std::string& token;
  MigrationState state;
  const SourceMemory* memory;  // null until the guest memory is handed over
};

// Every check of a Hello to a live source migration: authorised, not final, memory here,
// same layout.
std::optional<HelloRefusal> checkHello(const transport::Connection& conn,
                                       const transport::Hello& hello,
                                       const HelloExpectations& expected, const log::Logger& log);

}  // namespace lazymig::agent
