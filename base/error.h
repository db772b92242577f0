// Errors are values: every run-time failure travels as an Error inside a Result<T>.
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <string_view>

namespace lazymig {

enum class Errc {
  kSystem,           // a system call failed; sys_errno says why
  kInvalidArgument,  // input from a caller, a peer or a file was malformed
  kProtocol,         // a peer broke the wire or handshake protocol
  kNotFound,
  kAlreadyExists,
  kUnsupported,  // this kernel or build cannot do what was asked
  kTimeout,
  kAuth,      // identity, token or credential check failed
  kClosed,    // the peer or the object went away
  kPeerGone,  // the VMM owning a uffd exited (ESRCH)
  kConfig,
  kState,  // the operation does not fit the object's current state
};

std::string_view errcName(Errc code);

struct Error {
  Errc code = Errc::kSystem;
  int sys_errno = 0;    // 0 unless a system call failed
  std::string op;       // the failing operation: "UFFDIO_COPY", "open", "frame decode"
  std::string context;  // what it acted on and why it failed: path, key, field, page

  // "op: context: strerror (errno N)" -- one line, for logs and API bodies.
  std::string message() const;

  static Error sys(std::string op, std::string context = {}, int err = errno);
  static Error make(Errc code, std::string op, std::string context);
};

template <class T>
using Result = std::expected<T, Error>;

using Status = std::expected<void, Error>;

inline std::unexpected<Error> fail(Errc code, std::string op, std::string context) {
  return std::unexpected(Error::make(code, std::move(op), std::move(context)));
}
inline std::unexpected<Error> failSys(std::string op, std::string context = {}, int err = errno) {
  return std::unexpected(Error::sys(std::move(op), std::move(context), err));
}

}  // namespace lazymig
