// Named steps of a migration's ending where an agent started with the environment variable
// LAZYMIG_TEST_STOP_AT=<step> stops itself (SIGSTOP: every thread, at once), so that an
// end-to-end test can SIGKILL the real process at exactly that step instead of guessing it
// with a timer. Unset (production), a test point costs one comparison.
#pragma once

#include <string_view>

#include "base/log.h"

namespace lazymig::agent {

// The steps, in the order the ending handshake passes them (docs/protocol.md).
namespace test_point {
inline constexpr std::string_view kDestinationBeforeCompleting = "destination.before_completing";
inline constexpr std::string_view kDestinationCompletingPersisted =
    "destination.completing_persisted";
inline constexpr std::string_view kDestinationCompleteSent = "destination.complete_sent";
inline constexpr std::string_view kSourceCompleteReceived = "source.complete_received";
inline constexpr std::string_view kSourceCompletePersisted = "source.complete_persisted";
inline constexpr std::string_view kSourceAckSent = "source.ack_sent";
inline constexpr std::string_view kDestinationAckReceived = "destination.ack_received";
}  // namespace test_point

void testPoint(std::string_view step, const log::Logger& log);

}  // namespace lazymig::agent
