#include "transport/pki.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>
#include <functional>
#include <memory>

#include "transport/tls_internal.h"

namespace lazymig::transport {
namespace {

using KeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using CertPtr = std::unique_ptr<X509, decltype(&X509_free)>;

KeyPtr newKey() { return KeyPtr(EVP_EC_gen("P-256"), &EVP_PKEY_free); }

Status addExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr)
    return fail(Errc::kInvalidArgument, "x509 extension", value + ": " + opensslErrors());
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return {};
}

Status writePem(const std::string& path, const std::function<int(FILE*)>& write, mode_t mode) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return failSys("fopen", path);
  ::chmod(path.c_str(), mode);
  int ok = write(f);
  std::fclose(f);
  if (ok != 1) return fail(Errc::kSystem, "PEM write", path + ": " + opensslErrors());
  return {};
}

Result<CertPtr> makeCert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key,
                         int valid_days, int offset_days) {
  CertPtr cert(X509_new(), &X509_free);
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), static_cast<long>(offset_days) * 86400);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()),
                  static_cast<long>(offset_days + valid_days) * 86400);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  (void)issuer_key;
  return cert;
}

Result<std::pair<KeyPtr, CertPtr>> loadCa(const PemFiles& ca) {
  FILE* kf = std::fopen(ca.key_file.c_str(), "r");
  if (kf == nullptr) return failSys("fopen", ca.key_file);
  KeyPtr key(PEM_read_PrivateKey(kf, nullptr, nullptr, nullptr), &EVP_PKEY_free);
  std::fclose(kf);
  FILE* cf = std::fopen(ca.cert_file.c_str(), "r");
  if (cf == nullptr) return failSys("fopen", ca.cert_file);
  CertPtr cert(PEM_read_X509(cf, nullptr, nullptr, nullptr), &X509_free);
  std::fclose(cf);
  if (!key || !cert)
    return fail(Errc::kInvalidArgument, "load CA", ca.cert_file + ": " + opensslErrors());
  return std::make_pair(std::move(key), std::move(cert));
}

// Signs `cert` with `signer` and writes it beside its private `key` (mode 0600) as
// <dir>/<name>.crt and .key.
Result<PemFiles> signAndWrite(X509* cert, EVP_PKEY* signer, EVP_PKEY* key, const std::string& dir,
                              const std::string& name) {
  if (X509_sign(cert, signer, EVP_sha256()) == 0)
    return fail(Errc::kSystem, "X509_sign", opensslErrors());
  PemFiles out{dir + "/" + name + ".crt", dir + "/" + name + ".key"};
  if (auto ok = writePem(
          out.key_file,
          [&](FILE* f) {
            return PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
          },
          0600);
      !ok) {
    return std::unexpected(ok.error());
  }
  if (auto ok = writePem(
          out.cert_file, [&](FILE* f) { return PEM_write_X509(f, cert); }, 0644);
      !ok) {
    return std::unexpected(ok.error());
  }
  return out;
}

}  // namespace

Result<PemFiles> generateCa(const std::string& dir, const std::string& name, int valid_days) {
  KeyPtr key = newKey();
  if (!key) return fail(Errc::kSystem, "EVP_EC_gen", opensslErrors());
  auto cert = makeCert(key.get(), name, nullptr, key.get(), valid_days, 0);
  if (!cert) return std::unexpected(cert.error());
  if (auto ok = addExt(cert->get(), cert->get(), NID_basic_constraints, "critical,CA:TRUE"); !ok) {
    return std::unexpected(ok.error());
  }
  (void)addExt(cert->get(), cert->get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  (void)addExt(cert->get(), cert->get(), NID_subject_key_identifier, "hash");
  return signAndWrite(cert->get(), key.get(), key.get(), dir, name);
}

Result<PemFiles> issueLeaf(const PemFiles& ca, const std::string& dir, const std::string& name,
                           const LeafSpec& spec) {
  auto loaded = loadCa(ca);
  if (!loaded) return std::unexpected(loaded.error());
  auto& [ca_key, ca_cert] = *loaded;
  KeyPtr key = newKey();
  auto cert = makeCert(key.get(), spec.common_name.empty() ? name : spec.common_name, ca_cert.get(),
                       ca_key.get(), spec.valid_days, spec.not_before_offset_days);
  if (!cert) return std::unexpected(cert.error());
  std::string san;
  for (const auto& d : spec.dns_names) san += (san.empty() ? "" : ",") + ("DNS:" + d);
  for (const auto& u : spec.uris) san += (san.empty() ? "" : ",") + ("URI:" + u);
  (void)addExt(cert->get(), ca_cert.get(), NID_basic_constraints, "critical,CA:FALSE");
  (void)addExt(cert->get(), ca_cert.get(), NID_key_usage, "critical,digitalSignature");
  (void)addExt(cert->get(), ca_cert.get(), NID_ext_key_usage, "serverAuth,clientAuth");
  if (!san.empty()) {
    if (auto ok = addExt(cert->get(), ca_cert.get(), NID_subject_alt_name, san); !ok) {
      return std::unexpected(ok.error());
    }
  }
  return signAndWrite(cert->get(), ca_key.get(), key.get(), dir, name);
}

}  // namespace lazymig::transport
