#include "base/strict_json.h"

#include <set>
#include <string>
#include <vector>

namespace lazymig {

Result<nlohmann::json> parseStrictJson(std::string_view text, std::string_view what) {
  using Event = nlohmann::json::parse_event_t;
  struct Object {
    std::string path;
    std::set<std::string> keys;
  };
  std::vector<Object> open;  // the objects being parsed, innermost last
  std::string last_key;      // names the next nested object
  std::string duplicate;
  auto check = [&](int, Event event, nlohmann::json& parsed) {
    switch (event) {
      case Event::object_start:
        open.push_back({open.empty() ? std::string() : open.back().path + last_key + ".", {}});
        break;
      case Event::object_end:
        if (!open.empty()) open.pop_back();
        break;
      case Event::key:
        last_key = parsed.get<std::string>();
        if (!open.back().keys.insert(last_key).second && duplicate.empty())
          duplicate = open.back().path + last_key;
        break;
      default:
        break;
    }
    return true;
  };
  auto doc = nlohmann::json::parse(text, check, false);
  if (doc.is_discarded()) return fail(Errc::kInvalidArgument, std::string(what), "not valid JSON");
  if (!duplicate.empty()) {
    return fail(Errc::kInvalidArgument, std::string(what),
                "key '" + duplicate + "' appears more than once; send each key once");
  }
  return doc;
}

}  // namespace lazymig
