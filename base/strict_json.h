// JSON from outside the agent (control API bodies, VMM handshakes), parsed so that a repeated
// key is an error: nlohmann::json keeps one of the two values without a word, so
// {"vmm_pid": 1, "vmm_pid": 2} would mean whatever a reviewer of the request did not read.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace lazymig {

// `what` names the input in errors ("the request body"). Invalid JSON and a key repeated in
// any object, at any depth, are errors; the repeated key is named with its object's path.
Result<nlohmann::json> parseStrictJson(std::string_view text, std::string_view what);

}  // namespace lazymig
