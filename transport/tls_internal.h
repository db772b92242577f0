// Shared by the transport's implementation files; not part of its public surface.
#pragma once

#include <openssl/ssl.h>

#include <string>

#include "transport/connection.h"

namespace lazymig::transport {

std::string opensslErrors();
PeerIdentity identityOf(SSL* ssl);

}  // namespace lazymig::transport
