#include "base/strict_json.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

namespace lazymig {

Result<nlohmann::json> parseStrictJson(std::string_view text, std::string_view what) {
  using Event = nlohmann::json::parse_event_t;
  struct Object {
    std::string name;  // its key in the enclosing object ("" at the top or in an array)
    std::set<std::string> keys;
  };
  // The objects being parsed, innermost last. Paths are joined only for the error: building
  // one per object would cost quadratic time on deeply nested input.
  std::vector<Object> open;
  std::string last_key;  // names the next nested object
  std::string duplicate;
  auto check = [&](int, Event event, nlohmann::json& parsed) {
    switch (event) {
      case Event::object_start:
        open.push_back({std::exchange(last_key, std::string()), {}});
        break;
      case Event::object_end:
        if (!open.empty()) open.pop_back();
        last_key.clear();
        break;
      case Event::array_start:
      case Event::array_end:
      case Event::value:
        last_key.clear();
        break;
      case Event::key:
        last_key = parsed.get<std::string>();
        if (duplicate.empty() && !open.back().keys.insert(last_key).second) {
          for (const auto& o : open) {
            if (!o.name.empty()) duplicate += o.name + ".";
          }
          duplicate += last_key;
        }
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
