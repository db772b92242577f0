#!/usr/bin/env python3
"""docs/architecture.md's folder map must match the tree and the box rules the build enforces.

Checks: every folder the map names exists; every source folder under agent/ is in the map;
every library the map names is defined by an add_library/add_executable in its folder; and for
each agent box, the map's "may use" column equals the ALLOWED list in agent/CMakeLists.txt.
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
doc = (root / "docs/architecture.md").read_text()
section = doc.split("## Folder map", 1)[1].split("\n## ", 1)[0]
rows = [r for r in section.splitlines() if r.startswith("| `")]
errors = []
mapped = {}
for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    folders = re.findall(r"`([^`]+/)`", cells[0])
    libs = re.findall(r"`([^`]+)`", cells[1])
    uses = [u.strip() for u in cells[3].split(",") if u.strip() not in ("--", "")]
    for folder in folders:
        mapped[folder.rstrip("/")] = uses
        if not (root / folder).is_dir():
            errors.append(f"map names {folder}, which is not in the tree")
    defined = ""
    for folder in folders:
        cm = root / folder / "CMakeLists.txt"
        if cm.exists():
            defined += cm.read_text()
    for lib in libs:
        if not re.search(r"add_(library|executable)\(\s*" + re.escape(lib) + r"\b", defined):
            errors.append(f"map says {lib} is built in {', '.join(folders)}; no CMakeLists there defines it")

for d in sorted((root / "agent").rglob("*")):
    if d.is_dir() and any(d.glob("*.cc")):
        rel = str(d.relative_to(root))
        if rel not in mapped:
            errors.append(f"{rel}/ holds sources but is not in the folder map")

rules = re.findall(r"lazymig_check_box_includes\(\$\{LAZYMIG_ROOT\} (\S+) ALLOWED([^)]*)\)",
                   (root / "agent/CMakeLists.txt").read_text())
if not rules:
    errors.append("agent/CMakeLists.txt checks no box")
for box, allowed in rules:
    want = sorted(allowed.split())
    have = sorted(mapped.get(f"agent/{box}", ["<missing>"]))
    if want != have:
        errors.append(f"agent/{box}: map says it may use {have}, the build allows {want}")

for e in errors:
    print("architecture map:", e)
print(f"architecture map: {len(rows)} rows, {len(rules)} agent boxes checked, {len(errors)} errors")
sys.exit(1 if errors else 0)
