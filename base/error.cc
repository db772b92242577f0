#include "base/error.h"

#include <cstring>

namespace lazymig {

std::string_view errcName(Errc code) {
  switch (code) {
    case Errc::kSystem:
      return "system";
    case Errc::kInvalidArgument:
      return "invalid_argument";
    case Errc::kProtocol:
      return "protocol";
    case Errc::kNotFound:
      return "not_found";
    case Errc::kAlreadyExists:
      return "already_exists";
    case Errc::kUnsupported:
      return "unsupported";
    case Errc::kTimeout:
      return "timeout";
    case Errc::kAuth:
      return "auth";
    case Errc::kClosed:
      return "closed";
    case Errc::kPeerGone:
      return "peer_gone";
    case Errc::kConfig:
      return "config";
    case Errc::kState:
      return "state";
  }
  return "unknown";
}

std::string Error::message() const {
  std::string out = op;
  if (!context.empty()) {
    if (!out.empty()) out += ": ";
    out += context;
  }
  if (sys_errno != 0) {
    out += ": ";
    out += std::strerror(sys_errno);
    out += " (errno " + std::to_string(sys_errno) + ")";
  }
  return out;
}

Error Error::sys(std::string op, std::string context, int err) {
  return Error{Errc::kSystem, err, std::move(op), std::move(context)};
}

Error Error::make(Errc code, std::string op, std::string context) {
  return Error{code, 0, std::move(op), std::move(context)};
}

}  // namespace lazymig
