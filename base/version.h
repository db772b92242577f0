// What this build is: the project version and the git revision it was configured from.
#pragma once

#include <string_view>

namespace lazymig {

// "0.1.0", from project() in the top CMakeLists.txt.
std::string_view projectVersion();
// `git describe --always --dirty` when CMake configured the build, or "unknown" when the
// sources were not a git checkout (a release tarball).
std::string_view gitRevision();
// "0.1.0 (git 1a2b3c4)", as every binary's --version and the agent's /v1/agent print it.
std::string_view versionString();

}  // namespace lazymig
