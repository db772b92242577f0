#include "agent/source/parked_channels.h"

#include <cassert>

namespace lazymig::agent {

using transport::ChannelKind;

std::optional<ParkedChannels::Channel>& ParkedChannels::slot(ChannelKind kind) {
  return kind == ChannelKind::kUrgent ? urgent_ : bulk_;
}

void ParkedChannels::park(std::unique_ptr<transport::Connection> conn,
                          const transport::Hello& hello) {
  assert(peer_loop_.inLoopThread());
  const ChannelKind kind = hello.channel;
  auto& waiting = slot(kind);
  if (waiting) waiting->conn->close();
  // Nothing may come before HelloOk. The transport lets a handler drop its own connection.
  auto drop = [this, kind] {
    auto& parked = slot(kind);
    if (parked) parked->conn->close();
    parked.reset();
  };
  transport::Connection::Handlers handlers;
  handlers.on_frame = [drop](const transport::FrameHeader&, std::span<const std::byte>) { drop(); };
  handlers.on_closed = [drop](const Error&) { drop(); };
  conn->setHandlers(std::move(handlers));
  log_.info("destination waiting for the memory handover",
            {{"channel", kind == ChannelKind::kUrgent ? "urgent" : "bulk"},
             {"remote", conn->remoteAddress()}});
  waiting = Channel{std::move(conn), hello};
}

std::vector<ParkedChannels::Channel> ParkedChannels::take() {
  assert(peer_loop_.inLoopThread());
  std::vector<Channel> out;
  for (auto* waiting : {&urgent_, &bulk_}) {
    if (*waiting) out.push_back(std::move(**waiting));
    waiting->reset();
  }
  return out;
}

void ParkedChannels::close() {
  for (auto* waiting : {&urgent_, &bulk_}) {
    if (*waiting) (*waiting)->conn->close();
    waiting->reset();
  }
}

}  // namespace lazymig::agent
