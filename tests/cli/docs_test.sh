#!/usr/bin/env bash
# The man pages and shell completions the build installs are what the binaries' CLI11
# definitions say today: regenerated and compared byte for byte, every option that
# `--help` lists is in the man page and in the bash completion of its command, groff reads the
# pages without a warning, and bash really completes with the script.
#
# usage: docs_test.sh BINDIR SHAREDIR   (SHAREDIR: the build's share/, what `cmake --install` copies)
set -uo pipefail
BIN=$(cd "$1" && pwd)
SHARE=$(cd "$2" && pwd)
fails=0
ok() { echo "ok    $*"; }
bad() { echo "FAIL  $*"; fails=$((fails + 1)); }

for tool in lazymig lazymig-agent; do
  gen=--generate
  [[ $tool == lazymig ]] && gen=__generate
  for kind in man bash zsh; do
    case $kind in
      man) file=$SHARE/man/man1/$tool.1 ;;
      bash) file=$SHARE/bash-completion/completions/$tool ;;
      zsh) file=$SHARE/zsh/vendor-completions/_$tool ;;
    esac
    if cmp -s <("$BIN/$tool" $gen $kind) "$file"; then ok "$tool $kind is what the binary generates"; else bad "$tool $kind differs from '$tool $gen $kind'"; fi
  done
  warnings=$(groff -man -ww -z "$SHARE/man/man1/$tool.1" 2>&1)
  [[ -z $warnings ]] && ok "groff reads $tool.1 without warnings" || bad "groff on $tool.1: $warnings"
done

# The long options a --help text lists.
options_of() { "$@" --help | grep -oE '^ +(-[a-zA-Z], ?)?--[a-z][a-z0-9-]*' | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u; }
commands=$("$BIN/lazymig" --help | sed -n '/^Subcommands:/,/^$/p' | awk 'NR > 1 && $1 != "" {print $1}')
[[ $(echo "$commands" | wc -w) -ge 9 ]] && ok "lazymig --help lists $(echo $commands)" || bad "lazymig --help lists commands: $commands"
man_page=$(cat "$SHARE/man/man1/lazymig.1")
source "$SHARE/bash-completion/completions/lazymig"
complete_words() {  # the words bash offers after "$@" (the last word is being completed)
  COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
  _lazymig
  echo "${COMPREPLY[*]}"
}
for cmd in $commands; do
  grep -q "^\.SS \"lazymig $cmd\"" <<<"$man_page" || bad "man page has no section for $cmd"
  offered=$(complete_words lazymig "$cmd" --)
  for opt in $(options_of "$BIN/lazymig" "$cmd"); do
    [[ $opt == --help ]] && continue
    grep -qF -- "$(sed 's/-/\\-/g' <<<"$opt")" <<<"$man_page" || bad "man page lacks $cmd $opt"
    [[ " $offered " == *" $opt "* ]] || bad "bash completion of '$cmd --' lacks $opt"
  done
done
ok "every option of every command is in the man page and the bash completion"

[[ " $(complete_words lazymig st) " == *" status "* ]] && ok "lazymig st<TAB> offers status" || bad "lazymig st<TAB>: $(complete_words lazymig st)"
[[ " $(complete_words lazymig list --o) " == *" --output "* ]] && ok "global --output is offered after the command" || bad "lazymig list --o<TAB>: $(complete_words lazymig list --o)"
[[ $(complete_words lazymig demo --memory hugetlb-m) == "hugetlb-minor" ]] && ok "--memory values are completed" || bad "lazymig demo --memory hugetlb-m<TAB>: $(complete_words lazymig demo --memory hugetlb-m)"
[[ $(complete_words lazymig migrate --role d) == "destination" ]] && ok "--role values are completed" || bad "--role d<TAB>"
if command -v zsh >/dev/null; then
  for f in "$SHARE"/zsh/vendor-completions/_*; do zsh -n "$f" && ok "zsh parses $(basename "$f")" || bad "zsh -n $f"; done
else
  echo "note  zsh is not installed: the zsh scripts are compared, not parsed"
fi

[[ $fails -eq 0 ]] || { echo "$fails check(s) failed"; exit 1; }
echo "man pages and completions: every check passed"
