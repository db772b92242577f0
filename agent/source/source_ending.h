// What a source answers about a migration's outcome (the ending handshake, docs/protocol.md).
// A live source migration and the record of a finished one -- retired, or from before this
// agent restarted -- authenticate a destination the same way, and a completed one answers
// `CompleteAck`, so that a destination that never heard the acknowledgement (either agent was
// killed around it) learns it whenever it asks again.
#pragma once

#include <optional>
#include <string>

#include "agent/source/hello_check.h"
#include "base/log.h"
#include "transport/connection.h"

namespace lazymig::agent {

// A source migration this agent no longer runs, kept from its record: enough to authenticate
// its destination and tell it the outcome.
struct FinishedSource {
  std::string peer_identity;
  std::string token;
  std::string state;  // completed, failed or cancelled
};

// Answers a Hello for a finished source migration and closes the connection: `CompleteAck`
// for a completed one, else Error 4 naming the state. Returns the refusal, or nothing when
// the peer was told the outcome.
std::optional<HelloRefusal> answerFinishedSource(transport::Connection& conn,
                                                 const transport::Hello& hello,
                                                 const FinishedSource& finished,
                                                 const log::Logger& log);

}  // namespace lazymig::agent
