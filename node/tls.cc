#include "node/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace mergedb::node {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;

Bio MemoryBio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Refuses a passphrase instead of prompting for one on the terminal: a node starts unattended.
int NoPassphrase(char*, int, int, void*) { return -1; }

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", path, ": cannot read it: ", std::strerror(errno)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// The certificates in `pem`, at least one, the first returned.
absl::StatusOr<Cert> FirstCertificate(const std::string& flag, const std::string& path,
                                      const std::string& pem) {
  Bio bio = MemoryBio(pem);
  Cert first(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (first == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": no PEM certificate in it"));
  }
  return first;
}

absl::Status CheckNotExpired(const std::string& flag, const std::string& path, X509* cert) {
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": the certificate expired"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", path, ": the certificate is not valid yet"));
  }
  return absl::OkStatus();
}

// Reads the certificate and key files given (both or neither) into `tls`.
absl::Status LoadIdentity(const TlsFiles& files, const std::string& prefix, TlsConfig* tls) {
  const std::string cert_flag = prefix + "cert";
  const std::string key_flag = prefix + "key";
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_flag, " and ", key_flag, " go together: give both or neither"));
  }
  if (files.cert.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> cert_pem = ReadFile(cert_flag, files.cert);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(key_flag, files.key);
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<Cert> leaf = FirstCertificate(cert_flag, files.cert, *cert_pem);
  if (!leaf.ok()) return leaf.status();
  if (absl::Status fresh = CheckNotExpired(cert_flag, files.cert, leaf->get()); !fresh.ok()) {
    return fresh;
  }
  Bio bio = MemoryBio(*key_pem);
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, "=", files.key, ": no unencrypted PEM private key in it"));
  }
  if (X509_check_private_key(leaf->get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(key_flag, "=", files.key,
                                                   ": not the key of the certificate in ",
                                                   cert_flag, "=", files.cert));
  }
  tls->cert_pem = *std::move(cert_pem);
  tls->key_pem = *std::move(key_pem);
  return absl::OkStatus();
}

absl::Status LoadCa(const TlsFiles& files, const std::string& prefix, TlsConfig* tls) {
  const std::string flag = prefix + "ca";
  absl::StatusOr<std::string> pem = ReadFile(flag, files.ca);
  if (!pem.ok()) return pem.status();
  if (absl::StatusOr<Cert> first = FirstCertificate(flag, files.ca, *pem); !first.ok()) {
    return first.status();
  }
  tls->ca_pem = *std::move(pem);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TlsConfig> LoadNodeTls(const TlsFiles& files, const std::string& flag_prefix) {
  TlsConfig tls;
  if (files.cert.empty() && files.key.empty() && files.ca.empty()) return tls;
  if (files.cert.empty() || files.key.empty() || files.ca.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS needs all three of ", flag_prefix, "cert, ", flag_prefix, "key and ", flag_prefix,
        "ca (the CA that signed every member's certificate), or none of them"));
  }
  if (absl::Status identity = LoadIdentity(files, flag_prefix, &tls); !identity.ok()) {
    return identity;
  }
  if (absl::Status ca = LoadCa(files, flag_prefix, &tls); !ca.ok()) return ca;
  tls.enabled = true;
  return tls;
}

absl::StatusOr<TlsConfig> LoadClientTls(const TlsFiles& files, const std::string& flag_prefix) {
  TlsConfig tls;
  if (files.cert.empty() && files.key.empty() && files.ca.empty()) return tls;
  if (absl::Status identity = LoadIdentity(files, flag_prefix, &tls); !identity.ok()) {
    return identity;
  }
  if (!files.ca.empty()) {
    if (absl::Status ca = LoadCa(files, flag_prefix, &tls); !ca.ok()) return ca;
  }
  tls.enabled = true;
  return tls;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsConfig& tls) {
  if (!tls.enabled) return grpc::InsecureServerCredentials();
  // Requested, not required: application clients may come without a certificate. The
  // replication service requires one (Replication::Replicate).
  grpc::SslServerCredentialsOptions options(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls.ca_pem;
  options.pem_key_cert_pairs.push_back({tls.key_pem, tls.cert_pem});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsConfig& tls) {
  if (!tls.enabled) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca_pem;
  options.pem_private_key = tls.key_pem;
  options.pem_cert_chain = tls.cert_pem;
  return grpc::SslCredentials(options);
}

}  // namespace mergedb::node
