// What the pieces of one destination migration share: built once the VMM's memory is known
// (DestinationMigration::startServing) and outliving every piece that holds it. FaultService
// and BulkReceiver each take this one object, and each builds its own link to the source
// from `link`.
#pragma once

#include <memory>

#include "agent/core/transfer_recorder.h"
#include "agent/destination/population/guest_layout.h"
#include "agent/destination/population/page_installer.h"
#include "agent/destination/population/precopy_staging.h"
#include "agent/destination/source_link.h"
#include "base/log.h"
#include "store/page_map.h"
#include "sys/uffd.h"
#include "transport/connection.h"

namespace lazymig::agent {

struct DestinationContext {
  const GuestLayout& layout;
  store::PageMap& pages;
  PageInstaller& installer;
  const sys::Uffd& uffd;
  TransferRecorder recorder;  // the migration's stats and the agent's metrics, together
  log::Logger log;
  transport::EventLoop& urgent_loop;  // FaultService and the urgent link
  transport::EventLoop& bulk_loop;    // BulkReceiver and the bulk link
  std::shared_ptr<transport::TlsContext> tls;
  // Where the source is, who it must prove to be, and this migration's Hello; each owner of a
  // link sets `kind`.
  SourceLinkParams link;
  // Pre-copy: the pages staged before the switch (owned by the migration); null otherwise.
  PrecopyStaging* staging = nullptr;

  transport::Layout wire() const {
    return {static_cast<std::uint32_t>(layout.pageSize()), layout.pageCount()};
  }
  SourceLinkParams linkParams(transport::ChannelKind kind) const {
    SourceLinkParams p = link;
    p.kind = kind;
    p.page_size = static_cast<std::uint32_t>(layout.pageSize());
    p.memory_bytes = layout.totalBytes().value;
    return p;
  }
};

}  // namespace lazymig::agent
