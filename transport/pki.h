// A small certificate authority for tests, the demo and `lazymig certs`: generates an ECDSA
// P-256 CA and leaf certificates with subjectAltNames, written as PEM files.
#pragma once

#include <string>
#include <vector>

#include "base/error.h"

namespace lazymig::transport {

struct LeafSpec {
  std::string common_name;
  std::vector<std::string> dns_names;  // SAN DNS entries
  std::vector<std::string> uris;       // SAN URI entries (spiffe://...)
  int valid_days = 365;
  int not_before_offset_days = 0;  // negative for backdated, e.g. to make expired certs
};

struct PemFiles {
  std::string cert_file;
  std::string key_file;
};

// Writes <dir>/<name>.crt and <dir>/<name>.key (key mode 0600).
Result<PemFiles> generateCa(const std::string& dir, const std::string& name, int valid_days = 3650);
Result<PemFiles> issueLeaf(const PemFiles& ca, const std::string& dir, const std::string& name,
                           const LeafSpec& spec);

}  // namespace lazymig::transport
