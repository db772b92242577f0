#include "base/log.h"

#include <unistd.h>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace lazymig::log {
namespace {

// Captures what the process-wide logger writes, and puts the defaults back afterwards.
class LogCapture {
 public:
  LogCapture() : file_(std::tmpfile(), &std::fclose) { setOutputFd(fileno(file_.get())); }
  ~LogCapture() {
    setOutputFd(STDERR_FILENO);
    setFormat(Format::kLogfmt);
    setLevel(Level::kInfo);
  }
  std::vector<std::string> lines() const {
    std::string text;
    char buf[4096];
    for (off_t off = 0;;) {
      ssize_t n = ::pread(fileno(file_.get()), buf, sizeof buf, off);
      if (n <= 0) break;
      text.append(buf, static_cast<size_t>(n));
      off += n;
    }
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  }

 private:
  std::unique_ptr<FILE, int (*)(FILE*)> file_;
};

TEST(Log, JsonLinesCarryTheSubjectFieldsAndTypedValues) {
  LogCapture cap;
  setFormat(Format::kJson);
  Logger migration({{"migration", "vm-1"}, {"role", "destination"}, {"peer", "spiffe://x/node/a"}});
  migration.info("migration report",
                 {{"demand_pages", 42}, {"ok", true}, {"note", "a \"quoted\"\nline"}});
  auto lines = cap.lines();
  ASSERT_EQ(lines.size(), 1u);
  auto j = nlohmann::json::parse(lines[0]);  // throws (fails the test) if not one JSON object
  EXPECT_EQ(j["msg"], "migration report");
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["migration"], "vm-1");
  EXPECT_EQ(j["role"], "destination");
  EXPECT_EQ(j["peer"], "spiffe://x/node/a");
  EXPECT_EQ(j["demand_pages"], 42);
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["note"], "a \"quoted\"\nline");
  EXPECT_TRUE(j["ts"].is_string());
}

TEST(Log, LogfmtQuotesWhatNeedsQuoting) {
  LogCapture cap;
  Logger l(std::vector<Field>{{"migration", "vm-2"}});
  l.warn("link lost", {{"error", "connection reset"}, {"attempt", 3}});
  auto lines = cap.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(
      lines[0].find(
          " level=warn msg=\"link lost\" migration=vm-2 error=\"connection reset\" attempt=3"),
      std::string::npos)
      << lines[0];
}

TEST(Log, LinesBelowTheLevelAreDropped) {
  LogCapture cap;
  setLevel(Level::kInfo);
  root().debug("per-page detail", {{"page", 7}});
  root().info("kept");
  auto lines = cap.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("msg=kept"), std::string::npos);
}

TEST(Log, FormatNames) {
  EXPECT_EQ(parseFormat("json"), Format::kJson);
  EXPECT_EQ(parseFormat("logfmt"), Format::kLogfmt);
  EXPECT_FALSE(parseFormat("xml").has_value());
}

}  // namespace
}  // namespace lazymig::log
