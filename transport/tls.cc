#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <memory>

#include "transport/connection.h"
#include "transport/tls_internal.h"

namespace lazymig::transport {

std::string opensslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error queued" : out;
}

namespace {

Result<SSL_CTX*> buildContext(TlsContext::Side side, const TlsFiles& files) {
  using Side = TlsContext::Side;
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> owned(
      SSL_CTX_new(side == Side::kServer ? TLS_server_method() : TLS_client_method()),
      &SSL_CTX_free);
  SSL_CTX* ctx = owned.get();
  if (ctx == nullptr) return fail(Errc::kSystem, "SSL_CTX_new", opensslErrors());
  auto err = [&](const std::string& op, const std::string& file) {
    return fail(Errc::kConfig, op, file + ": " + opensslErrors());
  };
  // TLS 1.3 only: no downgrade, no renegotiation, forward secrecy always.
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
    return err("tls.cert_file", files.cert_file);
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return err("tls.key_file", files.key_file);
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return err("tls.key_file", files.key_file + " does not match " + files.cert_file);
  }
  if (SSL_CTX_load_verify_locations(ctx, files.ca_file.c_str(), nullptr) != 1) {
    return err("tls.ca_file", files.ca_file);
  }
  int mode = SSL_VERIFY_PEER | (side == Side::kServer ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
  SSL_CTX_set_verify(ctx, mode, nullptr);
  SSL_CTX_set_verify_depth(ctx, 4);
  // No SSL_CTX_set_read_ahead: libevent's OpenSSL bufferevent then leaves records inside
  // the SSL object with no socket event to fetch them, and the connection stalls.
  // No SSL_MODE_RELEASE_BUFFERS: it frees a connection's record buffers (about 34 KiB) each
  // time they drain and allocates them again for the next record, which a bulk stream or a
  // stream of demand replies does thousands of times a second (malloc / free was 4-6% of
  // each agent's CPU, docs/performance.md); an agent holds a handful of connections.
  return owned.release();
}

}  // namespace

Result<std::shared_ptr<TlsContext>> TlsContext::create(Side side, const TlsFiles& files) {
  auto ctx = buildContext(side, files);
  if (!ctx) return std::unexpected(ctx.error());
  return std::shared_ptr<TlsContext>(new TlsContext(*ctx, side));
}

Status TlsContext::reload(const TlsFiles& files) {
  auto ctx = buildContext(side_, files);
  if (!ctx) return std::unexpected(ctx.error());
  SSL_CTX* old = nullptr;
  {
    std::lock_guard lock(mu_);
    old = ctx_;
    ctx_ = *ctx;
  }
  // Sessions made from the old context hold references of their own (SSL_new up-refs it).
  SSL_CTX_free(old);
  return {};
}

SSL* TlsContext::newSession() const {
  std::lock_guard lock(mu_);
  return SSL_new(ctx_);
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

bool PeerIdentity::matches(std::string_view expected) const {
  if (expected.empty()) return false;
  for (const auto& d : dns_names) {
    if (d == expected) return true;
  }
  for (const auto& u : uris) {
    if (u == expected) return true;
  }
  return false;
}

std::string PeerIdentity::describe() const {
  std::string out = "CN=" + common_name;
  for (const auto& d : dns_names) out += " DNS:" + d;
  for (const auto& u : uris) out += " URI:" + u;
  return out;
}

PeerIdentity identityOf(SSL* ssl) {
  PeerIdentity id;
  X509* cert = SSL_get1_peer_certificate(ssl);
  if (cert == nullptr) return id;
  char cn[256] = {};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0) {
    id.common_name = cn;
  }
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    if (n->type != GEN_DNS && n->type != GEN_URI) continue;
    const ASN1_IA5STRING* s = n->type == GEN_DNS ? n->d.dNSName : n->d.uniformResourceIdentifier;
    std::string v(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                  static_cast<std::size_t>(ASN1_STRING_length(s)));
    (n->type == GEN_DNS ? id.dns_names : id.uris).push_back(std::move(v));
  }
  GENERAL_NAMES_free(names);
  X509_free(cert);
  return id;
}

std::string_view refusalReasonName(RefusalReason reason) {
  switch (reason) {
    case RefusalReason::kTlsHandshake:
      return "tls_handshake";
    case RefusalReason::kNoCertificate:
      return "no_certificate";
    case RefusalReason::kBadCertificate:
      return "bad_certificate";
    case RefusalReason::kPlaintext:
      return "plaintext";
    case RefusalReason::kOther:
      return "other";
  }
  return "other";
}

}  // namespace lazymig::transport
