// A control API answer as a test reads it: the status, and for an error the stable `code` and
// the message of docs/control-api.md. Shared by the ControlApi unit tests and the end-to-end
// tests of the control API.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "client/control_client.h"

namespace lazymig::testing {

struct Answer {
  int status = 0;
  std::string code;
  std::string message;
  nlohmann::json body;
};

// Sends one request; a transport failure or a body that is not JSON fails the test.
inline Answer ask(const client::ControlClient& c, const std::string& method,
                  const std::string& path, const std::string& body = "") {
  auto r = c.request(method, path, body);
  EXPECT_TRUE(r) << method << " " << path << ": " << r.error().message();
  if (!r) return {};
  Answer a{r->status, "", "", nlohmann::json::parse(r->body, nullptr, false)};
  EXPECT_FALSE(a.body.is_discarded()) << method << " " << path << " answered non-JSON: " << r->body;
  if (a.body.is_object() && a.body.contains("error")) {
    a.code = a.body["error"].value("code", "");
    a.message = a.body["error"].value("message", "");
  }
  return a;
}

}  // namespace lazymig::testing
