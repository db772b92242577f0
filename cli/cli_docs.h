// Man pages and shell completions written from a CLI11 command definition, so that what the
// binaries accept, what `man` says and what <TAB> offers come from one source and cannot drift.
// Every binary has a hidden way to print them (`lazymig __generate man|bash|zsh`,
// `lazymig-agent --generate man|bash|zsh`); the build runs it and `cmake --install` installs
// the output (cli/CMakeLists.txt).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace CLI {
class App;
}

namespace lazymig::cli {

struct ManSection {
  std::string title;  // "EXIT STATUS"
  std::string text;   // paragraphs separated by blank lines; "  " at a line start keeps it as is
};

// A man(7) page, section 1: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS (one subsection
// per visible subcommand with its options), then `extra` sections.
std::string manPage(const CLI::App& app, const std::string& version,
                    const std::vector<ManSection>& extra);
// A bash completion script: commands, each command's options (and the global ones, which are
// accepted after the command too), option values from IsMember choices, files for FILE/DIR.
std::string bashCompletion(const CLI::App& app);
// The same for zsh (#compdef, _arguments).
std::string zshCompletion(const CLI::App& app);

// What `--generate KIND` prints for `app`; false (and nothing printed) for an unknown KIND.
bool printGenerated(const CLI::App& app, const std::string& kind, const std::string& version,
                    const std::vector<ManSection>& extra);
// The kinds printGenerated knows, as a CLI11 IsMember list wants them.
std::vector<std::string> generatedKinds();

}  // namespace lazymig::cli
