#include "cli/cli_docs.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <sstream>

namespace lazymig::cli {
namespace {

// One option as the documents need it, read off CLI11's definition.
struct OptionDoc {
  std::vector<std::string> names;  // "-o", "--output"; empty for a positional
  std::string positional;          // "ID" for a positional argument
  std::string value;               // "ENDPOINT", "" for a flag
  std::vector<std::string> choices;
  bool files = false;
  bool dirs = false;
  std::string description;
};

std::vector<std::string> splitChoices(const std::string& type) {
  std::vector<std::string> out;
  auto open = type.find('{');
  auto close = type.find('}', open);
  if (open == std::string::npos || close == std::string::npos) return out;
  std::stringstream items(type.substr(open + 1, close - open - 1));
  for (std::string item; std::getline(items, item, ',');) out.push_back(item);
  return out;
}

std::vector<OptionDoc> optionsOf(const CLI::App& app) {
  std::vector<OptionDoc> out;
  for (const CLI::Option* opt : app.get_options()) {
    if (opt->get_group().empty()) continue;  // hidden
    OptionDoc d;
    for (const auto& s : opt->get_snames()) d.names.push_back("-" + s);
    for (const auto& l : opt->get_lnames()) d.names.push_back("--" + l);
    if (d.names.empty()) d.positional = opt->get_name(true);
    std::string type = opt->get_type_name();
    d.choices = splitChoices(type);
    d.value = type.substr(0, type.find(':'));
    if (!d.choices.empty()) {
      d.value.clear();
      for (const auto& c : d.choices) d.value += (d.value.empty() ? "" : "|") + c;
    }
    if (opt->get_type_size() == 0) d.value.clear();  // a flag
    d.dirs = type.find("DIR") != std::string::npos;
    d.files = !d.dirs &&
              (type.find("FILE") != std::string::npos || type.find("PATH") != std::string::npos);
    d.description = opt->get_description();
    if (!opt->get_default_str().empty() && opt->get_type_size() != 0)
      d.description += " (default: " + opt->get_default_str() + ")";
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<const CLI::App*> commandsOf(const CLI::App& app) {
  return app.get_subcommands([](const CLI::App* sub) { return !sub->get_group().empty(); });
}

// roff: a leading dot or quote would be a request; backslashes and hyphens are escapes.
std::string roff(const std::string& text) {
  std::string out;
  bool line_start = true;
  for (char c : text) {
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    if (c == '\\')
      out += "\\e";
    else if (c == '-')
      out += "\\-";
    else
      out += c;
    line_start = c == '\n';
  }
  return out;
}

void manOptions(std::ostringstream& out, const std::vector<OptionDoc>& options) {
  for (const auto& o : options) {
    out << ".TP\n";
    if (!o.positional.empty()) {
      out << "\\fI" << roff(o.positional) << "\\fR\n";
    } else {
      std::string names;
      for (const auto& n : o.names)
        names += (names.empty() ? "" : ", ") + ("\\fB" + roff(n) + "\\fR");
      out << names << (o.value.empty() ? "" : " \\fI" + roff(o.value) + "\\fR") << "\n";
    }
    out << roff(o.description) << "\n";
  }
}

std::string synopsisOf(const CLI::App& app, const std::string& prefix) {
  std::string s = "\\fB" + roff(prefix) + "\\fR";
  for (const auto& o : optionsOf(app)) {
    if (!o.positional.empty()) s += " \\fI" + roff(o.positional) + "\\fR";
  }
  return s + " [\\fIOPTIONS\\fR]";
}

void manText(std::ostringstream& out, const std::string& text) {
  std::stringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty())
      out << ".PP\n";
    else if (line.rfind("  ", 0) == 0)
      out << ".nf\n" << roff(line) << "\n.fi\n";
    else
      out << roff(line) << "\n";
  }
}

// Options of `app` plus the root's, which CLI11's fallthrough accepts after a command too.
std::vector<OptionDoc> withGlobals(const CLI::App& app, const CLI::App& root) {
  auto all = optionsOf(app);
  if (&app == &root) return all;
  for (auto& o : optionsOf(root)) {
    bool root_only = std::find(o.names.begin(), o.names.end(), "--version") != o.names.end() ||
                     std::find(o.names.begin(), o.names.end(), "--help") != o.names.end();
    if (!root_only) all.push_back(std::move(o));
  }
  return all;
}

std::string joinNames(const std::vector<OptionDoc>& options) {
  std::string out;
  for (const auto& o : options)
    for (const auto& n : o.names) out += (out.empty() ? "" : " ") + n;
  return out;
}

std::string zshEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '\'')
      out += "'\\''";
    else if (c == '[' || c == ']' || c == ':')
      out += std::string("\\") + c;
    else
      out += c;
  }
  return out;
}

void zshArguments(std::ostringstream& out, const std::vector<OptionDoc>& options,
                  const std::string& indent) {
  out << indent << "_arguments -s -S";
  for (const auto& o : options) {
    std::string action = o.dirs ? "_directories" : o.files ? "_files" : " ";
    if (!o.choices.empty()) {
      action = "(";
      for (const auto& c : o.choices) action += c + " ";
      action.back() = ')';
    }
    if (!o.positional.empty()) {
      out << " \\\n" << indent << "  ':" << zshEscape(o.positional) << ":" << action << "'";
      continue;
    }
    for (const auto& n : o.names) {
      out << " \\\n" << indent << "  '" << n << "[" << zshEscape(o.description) << "]";
      if (!o.value.empty()) out << ":" << zshEscape(o.value) << ":" << action;
      out << "'";
    }
  }
  out << "\n";
}

}  // namespace

std::string manPage(const CLI::App& app, const std::string& version,
                    const std::vector<ManSection>& extra) {
  std::ostringstream out;
  std::string upper = app.get_name();
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  out << ".TH " << roff(upper) << " 1 \"\" \"" << roff(app.get_name() + " " + version)
      << "\" \"User Commands\"\n";
  out << ".SH NAME\n" << roff(app.get_name()) << " \\- " << roff(app.get_description()) << "\n";
  out << ".SH SYNOPSIS\n" << synopsisOf(app, app.get_name());
  const auto commands = commandsOf(app);
  if (!commands.empty()) out << " \\fICOMMAND\\fR [\\fICOMMAND OPTIONS\\fR]";
  out << "\n.SH OPTIONS\n";
  manOptions(out, optionsOf(app));
  if (!commands.empty()) {
    out << ".SH COMMANDS\nOptions of " << roff(app.get_name())
        << " itself are accepted before or after the command. Every command takes "
           "\\fB\\-\\-help\\fR.\n";
    for (const CLI::App* sub : commands) {
      out << ".SS \"" << roff(app.get_name() + " " + sub->get_name()) << "\"\n";
      out << synopsisOf(*sub, app.get_name() + " " + sub->get_name()) << "\n.PP\n";
      out << roff(sub->get_description()) << "\n";
      // CLI11 hands the root's footer down to commands that have none of their own.
      if (!sub->get_footer().empty() && sub->get_footer() != app.get_footer()) {
        out << ".PP\n";
        manText(out, sub->get_footer());
      }
      auto options = optionsOf(*sub);
      options.erase(std::remove_if(options.begin(), options.end(),
                                   [](const OptionDoc& o) {
                                     return o.names.size() == 2 && o.names[1] == "--help";
                                   }),
                    options.end());
      manOptions(out, options);
    }
  }
  for (const auto& section : extra) {
    out << ".SH " << roff(section.title) << "\n";
    manText(out, section.text);
  }
  return out.str();
}

std::string bashCompletion(const CLI::App& app) {
  const std::string fn = "_" + [&] {
    std::string n = app.get_name();
    for (auto& c : n)
      if (c == '-') c = '_';
    return n;
  }();
  std::ostringstream out;
  out << "# bash completion for " << app.get_name() << "; generated from its CLI definition\n"
      << fn << "() {\n"
      << "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n"
      << "  local cmd=\"\" i\n";
  const auto commands = commandsOf(app);
  std::string names;
  for (const CLI::App* sub : commands) names += (names.empty() ? "" : "|") + sub->get_name();
  if (!commands.empty()) {
    out << "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
        << "    case \"${COMP_WORDS[i]}\" in " << names
        << ") cmd=\"${COMP_WORDS[i]}\"; break ;; esac\n"
        << "  done\n";
  }
  // Values first: the word after an option that takes one.
  std::vector<const CLI::App*> apps{&app};
  apps.insert(apps.end(), commands.begin(), commands.end());
  out << "  case \"$cmd:$prev\" in\n";
  for (const CLI::App* a : apps) {
    const std::string scope = a == &app ? "*" : a->get_name();
    for (const auto& o : optionsOf(*a)) {
      if (o.value.empty() || o.names.empty()) continue;
      std::string words;
      for (const auto& n : o.names) words += (words.empty() ? "" : "|") + scope + ":" + n;
      out << "    " << words << ") ";
      if (!o.choices.empty()) {
        std::string w;
        for (const auto& c : o.choices) w += (w.empty() ? "" : " ") + c;
        out << "COMPREPLY=($(compgen -W \"" << w << "\" -- \"$cur\")); return ;;\n";
      } else if (o.dirs) {
        out << "COMPREPLY=($(compgen -d -- \"$cur\")); return ;;\n";
      } else if (o.files) {
        out << "COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n";
      } else {
        out << "COMPREPLY=(); return ;;\n";
      }
    }
  }
  out << "  esac\n  local words\n  case \"$cmd\" in\n";
  std::string command_words;
  for (const CLI::App* sub : commands) command_words += " " + sub->get_name();
  out << "    \"\") words=\"" << joinNames(optionsOf(app)) << command_words << "\" ;;\n";
  for (const CLI::App* sub : commands) {
    out << "    " << sub->get_name() << ") words=\"" << joinNames(withGlobals(*sub, app))
        << "\" ;;\n";
  }
  out << "  esac\n"
      << "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      << "}\n"
      << "complete -F " << fn << " " << app.get_name() << "\n";
  return out.str();
}

std::string zshCompletion(const CLI::App& app) {
  std::ostringstream out;
  const std::string fn = "_" + app.get_name();
  out << "#compdef " << app.get_name() << "\n# zsh completion for " << app.get_name()
      << "; generated from its CLI definition\n";
  const auto commands = commandsOf(app);
  if (commands.empty()) {
    zshArguments(out, optionsOf(app), "");
    return out.str();
  }
  out << fn << "() {\n  local -a commands\n  commands=(\n";
  for (const CLI::App* sub : commands) {
    out << "    '" << sub->get_name() << ":" << zshEscape(sub->get_description()) << "'\n";
  }
  out << "  )\n  local curcontext=\"$curcontext\" state line\n";
  auto globals = optionsOf(app);
  out << "  _arguments -C -s -S";
  for (const auto& o : globals)
    for (const auto& n : o.names) {
      out << " \\\n    '" << n << "[" << zshEscape(o.description) << "]";
      if (!o.value.empty()) {
        std::string action = o.files ? "_files" : " ";
        if (!o.choices.empty()) {
          action = "(";
          for (const auto& c : o.choices) action += c + " ";
          action.back() = ')';
        }
        out << ":" << zshEscape(o.value) << ":" << action;
      }
      out << "'";
    }
  out << " \\\n    '1: :->command' '*:: :->args'\n"
      << "  case $state in\n    command) _describe 'command' commands ;;\n"
      << "    args)\n      case $words[1] in\n";
  for (const CLI::App* sub : commands) {
    out << "        " << sub->get_name() << ")\n";
    zshArguments(out, withGlobals(*sub, app), "          ");
    out << "          ;;\n";
  }
  out << "      esac ;;\n  esac\n}\n" << fn << " \"$@\"\n";
  return out.str();
}

bool printGenerated(const CLI::App& app, const std::string& kind, const std::string& version,
                    const std::vector<ManSection>& extra) {
  std::string text;
  if (kind == "man")
    text = manPage(app, version, extra);
  else if (kind == "bash")
    text = bashCompletion(app);
  else if (kind == "zsh")
    text = zshCompletion(app);
  else
    return false;
  std::fwrite(text.data(), 1, text.size(), stdout);
  return true;
}

std::vector<std::string> generatedKinds() { return {"man", "bash", "zsh"}; }

}  // namespace lazymig::cli
