// Before a destination accepts its VMM's handshake, it asks the source once whether it serves
// memory of the size and page size the VMM's regions describe. A VMM that restored a
// different guest (or the wrong snapshot) is then refused at the handshake, naming the sizes,
// and the migration keeps waiting for the right VMM -- instead of accepting it and failing
// the whole migration a moment later, when the source refuses the channel.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "agent/destination/source_link.h"
#include "base/error.h"
#include "transport/connection.h"

namespace lazymig::agent {

enum class SourceLayoutAnswer {
  kMatches,  // HelloOk: the source serves exactly this layout
  kDiffers,  // the source refused the layout (PeerErrorCode::kLayout); `detail` says how
  kUnknown,  // no answer within the bound (unreachable, not handed its memory yet, refused
             // for another reason): the channels will find out, as without a probe
};

struct SourceLayoutProbe {
  SourceLayoutAnswer answer = SourceLayoutAnswer::kUnknown;
  std::string detail;
};

// Connects like an urgent channel (`params` says where, who and what layout), waits at most
// `bound` for the source's first frame, and closes. Blocks the calling thread (the VMM
// listener's), never an event loop.
SourceLayoutProbe probeSourceLayout(const std::shared_ptr<transport::TlsContext>& tls,
                                    const SourceLinkParams& params,
                                    std::chrono::milliseconds bound);

}  // namespace lazymig::agent
