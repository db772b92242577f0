// What a source answers about a migration's outcome (the ending handshake, docs/protocol.md).
// A live source migration and the record of a finished one -- retired, or from before this
// agent restarted -- authenticate a destination the same way, and a completed one answers
// `CompleteAck`, so that a destination that never heard the acknowledgement (either agent was
// killed around it) learns it whenever it asks again.
#pragma once

#include <optional>
#include <string>

#include "agent/core/peer_errors.h"
#include "base/log.h"
#include "transport/connection.h"

namespace lazymig::agent {

// The identity and token check every Hello passes first, with the same answer for both: a
// peer that is not the intended one learns nothing about the migration's state or size.
// Returns the refusal reason for the metrics, and fills `code` and `message` for the peer.
std::optional<std::string> checkPeerAuthorised(const transport::Connection& conn,
                                               const transport::Hello& hello,
                                               const std::string& peer_identity,
                                               const std::string& token, PeerErrorCode& code,
                                               std::string& message, const log::Logger& log);

// A source migration this agent no longer runs, kept from its record: enough to authenticate
// its destination and tell it the outcome.
struct FinishedSource {
  std::string peer_identity;
  std::string token;
  std::string state;  // completed, failed or cancelled
};

// Answers a Hello for a finished source migration and closes the connection: `CompleteAck`
// for a completed one, else Error 4 naming the state. Returns a refusal reason, or nothing
// when the peer was told the outcome.
std::optional<std::string> answerFinishedSource(transport::Connection& conn,
                                                const transport::Hello& hello,
                                                const FinishedSource& finished,
                                                const log::Logger& log);

}  // namespace lazymig::agent
