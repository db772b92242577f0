# Runs at install time (install(CODE) in deploy/CMakeLists.txt), where CMAKE_INSTALL_PREFIX is
# the prefix of this install (/usr in the Debian package, /usr/local by default):
#  - the systemd unit names the agent where this install puts it (the source file says
#    /usr/local/bin, for the manual install its header describes);
#  - the config goes where GNUInstallDirs puts a prefix's sysconfdir: /etc for /usr,
#    <prefix>/etc otherwise.
# file(INSTALL) adds $ENV{DESTDIR} itself.
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(lazymig_etc /etc/lazymig)
else()
  set(lazymig_etc ${CMAKE_INSTALL_PREFIX}/etc/lazymig)
endif()
file(INSTALL ${LAZYMIG_EXAMPLE_CONFIG} DESTINATION ${lazymig_etc})

file(READ ${LAZYMIG_UNIT_SOURCE} unit)
string(REPLACE "/usr/local/bin/" "${CMAKE_INSTALL_PREFIX}/${LAZYMIG_BINDIR}/" unit "${unit}")
string(REPLACE "/etc/lazymig/" "${lazymig_etc}/" unit "${unit}")
set(staged ${LAZYMIG_STAGE_DIR}/lazymig-agent.service)
file(WRITE ${staged} "${unit}")
file(INSTALL ${staged} DESTINATION ${CMAKE_INSTALL_PREFIX}/${LAZYMIG_SYSTEMD_UNIT_DIR})
