// A fixture, never compiled: the source box reaching into the destination box, which the
// build must refuse (tests/agent/CMakeLists.txt).
#include "agent/core/migration.h"
#include "agent/destination/fault_service.h"
