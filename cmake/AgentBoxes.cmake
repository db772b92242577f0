# The agent's folders are the boxes of docs/architecture.md, and a box may include only the
# boxes it is allowed to depend on. Linking alone cannot enforce that (every library sees the
# repository root), so the includes themselves are checked when the build is configured.
#
# lazymig_check_box_includes(<root> <box> ALLOWED <box>...)
#   Fails the configure step naming the file, the line and the include when a source in
#   agent/<box>/ (not its sub-boxes) includes agent/<other>/ for an <other> not ALLOWED.
#   Also runs in script mode: cmake -DROOT=... -DBOX=... -DALLOWED="a;b" -P AgentBoxes.cmake
if(CMAKE_SCRIPT_MODE_FILE)
  cmake_minimum_required(VERSION 3.25)
endif()

function(lazymig_check_box_includes root box)
  cmake_parse_arguments(C "" "" "ALLOWED" ${ARGN})
  file(GLOB sources "${root}/agent/${box}/*.h" "${root}/agent/${box}/*.cc")
  set(violations "")
  foreach(src IN LISTS sources)
    file(STRINGS "${src}" includes REGEX "^#include \"agent/")
    foreach(line IN LISTS includes)
      string(REGEX REPLACE "^#include \"agent/(.*)/[^/]*\\.h\".*" "\\1" target "${line}")
      if(target STREQUAL box OR target IN_LIST C_ALLOWED)
        continue()
      endif()
      file(RELATIVE_PATH rel "${root}" "${src}")
      string(APPEND violations "\n  ${rel}: ${line} (agent/${box} may include only: ${C_ALLOWED})")
    endforeach()
  endforeach()
  if(violations)
    message(FATAL_ERROR "agent/${box} includes a box it must not depend on:${violations}")
  endif()
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND DEFINED BOX)
  lazymig_check_box_includes("${ROOT}" "${BOX}" ALLOWED ${ALLOWED})
endif()
