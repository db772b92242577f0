#include "agent/destination/source_probe.h"

#include <future>

#include "agent/core/loop_sync.h"
#include "agent/core/peer_errors.h"

namespace lazymig::agent {
namespace {

SourceLayoutProbe answerOf(const transport::FrameHeader& h, std::span<const std::byte> payload) {
  using transport::FrameType;
  if (h.type == FrameType::kHelloOk) return {SourceLayoutAnswer::kMatches, {}};
  if (h.type != FrameType::kError) return {SourceLayoutAnswer::kUnknown, "unexpected frame"};
  auto e = transport::decodeError(payload);
  if (!e) return {SourceLayoutAnswer::kUnknown, e.error().message()};
  if (static_cast<PeerErrorCode>(e->code) != PeerErrorCode::kLayout) {
    return {SourceLayoutAnswer::kUnknown, e->message};
  }
  return {SourceLayoutAnswer::kDiffers, e->message};
}

}  // namespace

SourceLayoutProbe probeSourceLayout(const std::shared_ptr<transport::TlsContext>& tls,
                                    const SourceLinkParams& params,
                                    std::chrono::milliseconds bound) {
  auto loop = transport::EventLoop::start("probe-" + params.migration_id);
  if (!loop) return {SourceLayoutAnswer::kUnknown, loop.error().message()};
  // Loop thread only, except `answer`, which is set once and read after the loop stopped.
  struct State {
    std::unique_ptr<transport::Connection> conn;
    std::promise<SourceLayoutProbe> answer;
    bool answered = false;
    void settle(SourceLayoutProbe a) {
      if (answered) return;
      answered = true;
      answer.set_value(std::move(a));
    }
  };
  auto state = std::make_shared<State>();
  auto answer = state->answer.get_future();
  (*loop)->post([&loop, state, tls, params, bound] {
    transport::ConnectOptions opts;
    opts.address = params.source_address;
    opts.timeout = bound;
    opts.expected_peer = params.expected_peer;
    transport::connect(
        **loop, tls, opts, [state, params](Result<std::unique_ptr<transport::Connection>> conn) {
          if (!conn) return state->settle({SourceLayoutAnswer::kUnknown, conn.error().message()});
          state->conn = std::move(*conn);
          state->conn->setHandlers({
              .on_frame = [state](const transport::FrameHeader& h,
                                  std::span<const std::byte> p) { state->settle(answerOf(h, p)); },
              .on_closed =
                  [state](const Error& e) {
                    state->settle({SourceLayoutAnswer::kUnknown, e.message()});
                  },
              .on_drained = nullptr,
          });
          state->conn->sendEncoded(transport::encodeHello({params.migration_id, params.token,
                                                           transport::ChannelKind::kUrgent,
                                                           params.page_size, params.memory_bytes}));
        });
  });
  SourceLayoutProbe result;
  if (answer.wait_for(bound) == std::future_status::ready) result = answer.get();
  runOnLoop(**loop, [&state] {
    if (state->conn) state->conn->close();
    state->conn.reset();
  });
  (*loop)->stop();
  return result;
}

}  // namespace lazymig::agent
