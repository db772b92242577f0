// How a source puts a run of guest pages on the wire, on either channel: zero pages as one
// ZeroRange marker per run of them, the others as PageData frames. Accounts what it sent
// (pages served by path, wire bytes) through the migration's recorder.
#pragma once

#include <cstdint>
#include <memory>

#include "agent/core/transfer_recorder.h"
#include "agent/source/bulk_schedule.h"
#include "agent/source/source_memory.h"
#include "transport/connection.h"

namespace lazymig::agent {

// Runs on `conn`'s loop. Urgent replies go out as one buffer per frame (one TLS record: a
// vCPU waits on it); bulk frames reference the mapping (`memory` keeps it alive while they
// are queued). Returns the bytes it queued on the wire.
std::uint64_t sendPageRun(transport::Connection& conn, metrics::Channel channel,
                          const std::shared_ptr<SourceMemory>& memory, PageRun run,
                          const TransferRecorder& recorder);

// A frame other than page data (Pong, BulkDone, CompleteAck, Error...), counted on `channel`.
void sendFrame(transport::Connection& conn, metrics::Channel channel, std::string_view frame,
               const TransferRecorder& recorder);

}  // namespace lazymig::agent
