#include "node/tls.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/civil_time.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

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

Bio MemoryBio(absl::string_view pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

constexpr char kCertificateBegin[] = "-----BEGIN CERTIFICATE-----";
constexpr char kCrlBegin[] = "-----BEGIN X509 CRL-----";

// Refuses a passphrase instead of prompting for one on the terminal: a node starts unattended.
int NoPassphrase(char*, int, int, void*) { return -1; }

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", path, ": cannot read it: ", std::strerror(errno)));
  }
  std::string contents;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, file)) > 0) contents.append(buffer, n);
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": read error"));
  return contents;
}

// The certificates that parse in `pem`, in order.
std::vector<Cert> ParsePem(absl::string_view pem) {
  std::vector<Cert> certs;
  Bio bio = MemoryBio(pem);
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    certs.emplace_back(cert);
  }
  ERR_clear_error();
  return certs;
}

// Every certificate in `pem`, in order: at least one, and as many as it has PEM certificate
// blocks (a block that does not parse would otherwise pass here and fail inside gRPC).
absl::StatusOr<std::vector<Cert>> Certificates(const std::string& flag, const std::string& path,
                                               const std::string& pem) {
  std::vector<Cert> certs = ParsePem(pem);
  size_t blocks = 0;
  for (size_t at = pem.find(kCertificateBegin); at != std::string::npos;
       at = pem.find(kCertificateBegin, at + 1)) {
    ++blocks;
  }
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": no PEM certificate in it"));
  }
  if (certs.size() != blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", path, ": certificate ", certs.size() + 1, " in it does not parse"));
  }
  return certs;
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

struct StoreFree {
  void operator()(X509_STORE* store) const { X509_STORE_free(store); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* ctx) const { X509_STORE_CTX_free(ctx); }
};
struct StackFree {
  void operator()(STACK_OF(X509) * stack) const { sk_X509_free(stack); }
};

// Checks that `chain` (leaf first, then any intermediates) leads to one of `cas` and that
// every certificate on the way is valid now: the mistake a peer would otherwise only report
// as a failed handshake.
struct CrlFree {
  void operator()(X509_CRL* crl) const { X509_CRL_free(crl); }
};
using CrlPtr = std::unique_ptr<X509_CRL, CrlFree>;

// With revocation lists: a certificate one revokes fails; one whose issuer has none passes (as
// gRPC's handshakes do).
int IgnoreMissingCrl(int ok, X509_STORE_CTX* ctx) {
  return ok == 1 || X509_STORE_CTX_get_error(ctx) == X509_V_ERR_UNABLE_TO_GET_CRL ? 1 : 0;
}

absl::Status VerifyChain(const std::vector<Cert>& chain, const std::vector<Cert>& cas,
                         const std::string& cert_what, const std::string& ca_what,
                         std::vector<Cert>* verified_chain = nullptr,
                         const std::vector<TlsConfig::Crl>* crls = nullptr) {
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  if (store == nullptr)
    return absl::ResourceExhaustedError("no memory to check the TLS certificates");
  for (const Cert& ca : cas) X509_STORE_add_cert(store.get(), ca.get());
  if (crls != nullptr && !crls->empty()) {
    for (const TlsConfig::Crl& crl : *crls) {
      Bio bio = MemoryBio(crl.pem);
      CrlPtr parsed(PEM_read_bio_X509_CRL(bio.get(), nullptr, NoPassphrase, nullptr));
      if (parsed != nullptr) X509_STORE_add_crl(store.get(), parsed.get());  // takes a reference
    }
    X509_STORE_set_flags(store.get(), X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    X509_STORE_set_verify_cb(store.get(), IgnoreMissingCrl);
  }
  std::unique_ptr<STACK_OF(X509), StackFree> intermediates(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(intermediates.get(), chain[i].get());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (store == nullptr || intermediates == nullptr || ctx == nullptr ||
      X509_STORE_CTX_init(ctx.get(), store.get(), chain.front().get(), intermediates.get()) != 1) {
    ERR_clear_error();
    return absl::ResourceExhaustedError("no memory to check the TLS certificates");
  }
  const bool verified = X509_verify_cert(ctx.get()) == 1;
  const int error = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  if (!verified) {
    return absl::InvalidArgumentError(absl::StrCat(cert_what, " does not verify against ", ca_what,
                                                   ": ", X509_verify_cert_error_string(error)));
  }
  if (verified_chain != nullptr) {
    STACK_OF(X509)* path = X509_STORE_CTX_get0_chain(ctx.get());
    for (int i = 0; i < sk_X509_num(path); ++i) {
      X509* cert = sk_X509_value(path, i);
      X509_up_ref(cert);
      verified_chain->emplace_back(cert);
    }
  }
  return absl::OkStatus();
}

// Whether two certificates are of one CA: the same subject and the same key. A CA cross-signed
// by another is a second certificate of the same CA.
bool SameCa(X509* a, X509* b) {
  return X509_NAME_cmp(X509_get_subject_name(a), X509_get_subject_name(b)) == 0 &&
         EVP_PKEY_eq(X509_get0_pubkey(a), X509_get0_pubkey(b)) == 1;
}

std::string Subject(X509* cert) {
  char buffer[512];
  if (X509_NAME_oneline(X509_get_subject_name(cert), buffer, sizeof buffer) == nullptr) {
    ERR_clear_error();
    return "(unreadable subject)";
  }
  return buffer;
}

// The member names a certificate gives its holder (--tls_bind_member_names): its subject's
// common names and its DNS subjectAltNames, in that order.
std::vector<std::string> MemberNamesOf(X509* cert) {
  std::vector<std::string> names;
  X509_NAME* subject = X509_get_subject_name(cert);
  for (int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1); at >= 0;
       at = X509_NAME_get_index_by_NID(subject, NID_commonName, at)) {
    const ASN1_STRING* value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
    unsigned char* utf8 = nullptr;
    const int length = ASN1_STRING_to_UTF8(&utf8, value);
    if (length >= 0) names.emplace_back(reinterpret_cast<const char*>(utf8), length);
    OPENSSL_free(utf8);
  }
  auto* alt_names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; alt_names != nullptr && i < sk_GENERAL_NAME_num(alt_names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(alt_names, i);
    if (name->type != GEN_DNS) continue;
    const ASN1_IA5STRING* dns = name->d.dNSName;
    names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                       static_cast<size_t>(ASN1_STRING_length(dns)));
  }
  GENERAL_NAMES_free(alt_names);
  ERR_clear_error();
  return names;
}

// Whether `cert` names `member`, or why not.
absl::Status CheckNames(X509* cert, absl::string_view member, absl::string_view whose) {
  const std::vector<std::string> names = MemberNamesOf(cert);
  if (std::find(names.begin(), names.end(), member) != names.end()) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      whose, " certificate (", Subject(cert), ") does not name member '", member,
      "': with --tls_bind_member_names a member's certificate must carry its node name as its "
      "common name or as a DNS subjectAltName (it names ",
      names.empty() ? "nothing" : absl::StrJoin(names, ", "), ")"));
}

// When `cert` stops being valid, as `kind`; nullopt if its end cannot be read (a certificate
// that parsed and verified has one).
// Seconds since the Unix epoch of an ASN.1 time; nullopt when it does not read.
std::optional<int64_t> UnixSecondsOf(const ASN1_TIME* time) {
  std::tm tm{};
  if (time == nullptr || ASN1_TIME_to_tm(time, &tm) != 1) {
    ERR_clear_error();
    return std::nullopt;
  }
  // Not timegm: a 32-bit time_t ends in 2038, and certificates may run to 9999.
  return absl::ToUnixSeconds(
      absl::FromCivil(absl::CivilSecond(tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                                        tm.tm_min, tm.tm_sec),
                      absl::UTCTimeZone()));
}

std::optional<CertificateExpiry> ExpiryOf(X509* cert, CertificateExpiry::Kind kind) {
  const std::optional<int64_t> not_after = UnixSecondsOf(X509_get0_notAfter(cert));
  if (!not_after) return std::nullopt;
  return CertificateExpiry{kind, Subject(cert), *not_after};
}

Cert Ref(X509* cert) {
  X509_up_ref(cert);
  return Cert(cert);
}

// A certificate chain and its key, read and checked: the key is the leaf's, and the leaf is
// valid now.
struct Identity {
  std::string cert_pem;
  std::string key_pem;
  std::vector<Cert> chain;
};

absl::StatusOr<Identity> LoadIdentity(const std::string& cert_flag, const std::string& cert_path,
                                      const std::string& key_flag, const std::string& key_path) {
  Identity identity;
  absl::StatusOr<std::string> cert_pem = ReadFile(cert_flag, cert_path);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(key_flag, key_path);
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<std::vector<Cert>> chain = Certificates(cert_flag, cert_path, *cert_pem);
  if (!chain.ok()) return chain.status();
  X509* leaf = chain->front().get();
  if (absl::Status fresh = CheckNotExpired(cert_flag, cert_path, leaf); !fresh.ok()) {
    return fresh;
  }
  Bio bio = MemoryBio(*key_pem);
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, "=", key_path, ": no unencrypted PEM private key in it"));
  }
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(key_flag, "=", key_path,
                                                   ": not the key of the certificate in ",
                                                   cert_flag, "=", cert_path));
  }
  identity.cert_pem = *std::move(cert_pem);
  identity.key_pem = *std::move(key_pem);
  identity.chain = *std::move(chain);
  return identity;
}

// The PEM of a file of CA certificates, and the certificates.
absl::StatusOr<std::pair<std::string, std::vector<Cert>>> LoadCas(const std::string& flag,
                                                                  const std::string& path) {
  absl::StatusOr<std::string> pem = ReadFile(flag, path);
  if (!pem.ok()) return pem.status();
  absl::StatusOr<std::vector<Cert>> cas = Certificates(flag, path, *pem);
  if (!cas.ok()) return cas.status();
  return std::make_pair(*std::move(pem), *std::move(cas));
}

}  // namespace

std::string NameOf(const X509_NAME* name) {
  char buffer[512];
  if (X509_NAME_oneline(name, buffer, sizeof buffer) == nullptr) {
    ERR_clear_error();
    return "(unreadable name)";
  }
  return buffer;
}

// The files of a revocation-list directory, by name: regular files not starting with '.'.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadCrlDir(
    const std::string& flag, const std::string& dir) {
  std::error_code error;
  std::filesystem::directory_iterator entries(dir, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", dir, ": cannot read the directory: ", error.message()));
  }
  std::vector<std::pair<std::string, std::string>> files;
  for (; entries != std::filesystem::directory_iterator(); entries.increment(error)) {
    if (error) break;
    const std::string name = entries->path().filename().string();
    if (name.empty() || name[0] == '.' || !entries->is_regular_file(error)) continue;
    absl::StatusOr<std::string> contents = ReadFile(flag, entries->path().string());
    if (!contents.ok()) return contents.status();
    files.emplace_back(name, *std::move(contents));
  }
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", dir, ": cannot read the directory: ", error.message()));
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string CrlFilesKey(const std::vector<std::pair<std::string, std::string>>& files) {
  std::string key;
  for (const auto& [name, contents] : files) {
    absl::StrAppend(&key, name.size(), ":", name, contents.size(), ":", contents);
  }
  return key;
}

// Reads --tls_crl_dir into `tls` (see LoadNodeTls): `issuers` are the certificates a list may
// come from, `leaf` the node's own certificate.
absl::Status LoadCrls(const std::string& flag, const std::string& dir,
                      const std::vector<X509*>& issuers, X509* leaf, TlsConfig* tls) {
  auto files = ReadCrlDir(flag, dir);
  if (!files.ok()) return files.status();
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  for (const auto& [name, contents] : *files) {
    const std::string where = absl::StrCat(flag, "=", dir, ": ", name);
    Bio bio = MemoryBio(contents);
    size_t blocks = 0;
    for (size_t at = contents.find(kCrlBegin); at != std::string::npos;
         at = contents.find(kCrlBegin, at + 1)) {
      ++blocks;
    }
    size_t found = 0;
    while (X509_CRL* raw = PEM_read_bio_X509_CRL(bio.get(), nullptr, NoPassphrase, nullptr)) {
      CrlPtr crl(raw);
      ++found;
      const X509_NAME* issuer_name = X509_CRL_get_issuer(crl.get());
      const std::string issuer = NameOf(issuer_name);
      bool signed_by_issuer = false;
      bool may_sign_lists = false;
      for (X509* candidate : issuers) {
        EVP_PKEY* key = X509_get0_pubkey(candidate);
        if (X509_NAME_cmp(X509_get_subject_name(candidate), issuer_name) == 0 && key != nullptr &&
            X509_CRL_verify(crl.get(), key) == 1) {
          signed_by_issuer = true;
          // OpenSSL refuses a list whose issuer's key usage leaves out cRLSign.
          may_sign_lists = (X509_get_key_usage(candidate) & KU_CRL_SIGN) != 0;
          break;
        }
      }
      ERR_clear_error();
      if (!signed_by_issuer) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": the revocation list of ", issuer,
            " is not signed by a CA of --tls_ca, --tls_client_ca or this node's chain"));
      }
      if (!may_sign_lists) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": the key usage of ", issuer,
                         " does not allow signing revocation lists (cRLSign), so TLS would "
                         "refuse its list"));
      }
      // Lists OpenSSL would not apply in full (a delta, or one scoped by an issuing
      // distribution point: part of the reasons or certificates, or another issuer's), and
      // which it would then skip in silence: only complete lists are taken.
      if (X509_CRL_get_ext_by_NID(crl.get(), NID_delta_crl, -1) >= 0 ||
          X509_CRL_get_ext_by_NID(crl.get(), NID_issuing_distribution_point, -1) >= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": the revocation list of ", issuer,
            " is a delta or carries an issuing distribution point; give complete lists only"));
      }
      // A critical extension TLS does not know fails every handshake of the issuer's
      // certificates.
      for (int i = 0; i < X509_CRL_get_ext_count(crl.get()); ++i) {
        X509_EXTENSION* extension = X509_CRL_get_ext(crl.get(), i);
        if (X509_EXTENSION_get_critical(extension) == 1 &&
            OBJ_obj2nid(X509_EXTENSION_get_object(extension)) != NID_authority_key_identifier) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": the revocation list of ", issuer,
                           " carries a critical extension TLS would refuse it for"));
        }
      }
      const std::optional<int64_t> issued = UnixSecondsOf(X509_CRL_get0_lastUpdate(crl.get()));
      if (!issued || *issued > now) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": the revocation list of ", issuer,
                         " is not valid yet (its last update is in the future, or unreadable): "
                         "TLS would refuse every certificate of that CA"));
      }
      const std::optional<int64_t> next_update = UnixSecondsOf(X509_CRL_get0_nextUpdate(crl.get()));
      if (next_update) {
        if (*next_update <= now) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": the revocation list of ", issuer, " is past its next update (",
              absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixSeconds(*next_update),
                               absl::UTCTimeZone()),
              "): handshakes would fail; publish a fresh one"));
        }
        tls->expiries.push_back(
            CertificateExpiry{CertificateExpiry::Kind::kCrl, issuer, *next_update, *issued});
      }
      X509_REVOKED* revoked = nullptr;
      if (X509_CRL_get0_by_cert(crl.get(), &revoked, leaf) == 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": the revocation list of ", issuer,
            " revokes this node's own certificate (--tls_cert): its peers would refuse it"));
      }
      int hashed = 0;
      const unsigned long hash = X509_NAME_hash_ex(issuer_name, nullptr, nullptr, &hashed);
      Bio out(BIO_new(BIO_s_mem()));
      if (hashed != 1 || out == nullptr || PEM_write_bio_X509_CRL(out.get(), crl.get()) != 1) {
        ERR_clear_error();
        return absl::InternalError(absl::StrCat(where, ": cannot encode the revocation list"));
      }
      char* data = nullptr;
      const long size = BIO_get_mem_data(out.get(), &data);
      tls->crls.push_back(TlsConfig::Crl{hash, std::string(data, static_cast<size_t>(size))});
    }
    ERR_clear_error();
    if (found == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": no PEM revocation list (X509 CRL) in it; the directory holds those only"));
    }
    if (found != blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": revocation list ", found + 1, " in it does not parse"));
    }
  }
  tls->crl_files = CrlFilesKey(*files);
  return absl::OkStatus();
}

absl::StatusOr<TlsConfig> LoadNodeTls(const TlsFiles& files, const std::string& flag_prefix,
                                      const std::string& client_ca) {
  TlsConfig tls;
  if (files.cert.empty() && files.key.empty() && files.ca.empty() && client_ca.empty() &&
      files.crl_dir.empty()) {
    return tls;
  }
  if (files.cert.empty() || files.key.empty() || files.ca.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS needs all three of ", flag_prefix, "cert, ", flag_prefix, "key and ", flag_prefix,
        "ca (the CA that signed every member's certificate), or none of them",
        client_ca.empty() && files.crl_dir.empty() ? ""
        : files.crl_dir.empty() ? absl::StrCat("; ", flag_prefix, "client_ca needs all three")
        : client_ca.empty()     ? absl::StrCat("; ", flag_prefix, "crl_dir needs all three")
                                : absl::StrCat("; ", flag_prefix, "client_ca and ", flag_prefix,
                                               "crl_dir need all three")));
  }
  const std::string cert_flag = flag_prefix + "cert";
  const std::string ca_flag = flag_prefix + "ca";
  absl::StatusOr<Identity> identity =
      LoadIdentity(cert_flag, files.cert, flag_prefix + "key", files.key);
  if (!identity.ok()) return identity.status();
  auto cas = LoadCas(ca_flag, files.ca);
  if (!cas.ok()) return cas.status();
  // Peers verify this node's certificate against their --tls_ca, the same CA.
  std::vector<Cert> verified_chain;
  if (absl::Status verified =
          VerifyChain(identity->chain, cas->second, absl::StrCat(cert_flag, "=", files.cert),
                      absl::StrCat(ca_flag, "=", files.ca), &verified_chain);
      !verified.ok()) {
    return verified;
  }
  // A member's certificate serves its clients and peers (a TLS server's) and is presented to
  // the peers it connects to (a TLS client's): one whose extended key usage allows only one of
  // the two starts, then fails every handshake of the other kind, blamed on the CA or address.
  for (const auto& [purpose, use] :
       {std::pair{X509_PURPOSE_SSL_SERVER,
                  "TLS server use "
                  "(serverAuth), which a node "
                  "needs to serve clients and "
                  "peers"},
        std::pair{X509_PURPOSE_SSL_CLIENT,
                  "TLS client use (clientAuth), which a node needs for "
                  "its links to its peers"}}) {
    const int allowed = X509_check_purpose(identity->chain.front().get(), purpose, 0);
    ERR_clear_error();
    if (allowed != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          cert_flag, "=", files.cert, ": its extended key usage does not allow ", use,
          " (issue it with both serverAuth and clientAuth, or with no extended key usage)"));
    }
  }
  // The chain OpenSSL chose here is the one peers build too when they trust the same CA file.
  // With two CAs in the file (a change of CA), each also gets an entry of its own below.
  std::optional<CertificateExpiry> chain_end;
  for (const Cert& cert : verified_chain) {
    auto expiry = ExpiryOf(cert.get(), CertificateExpiry::Kind::kOwnChain);
    if (expiry && (!chain_end || expiry->unix_seconds < chain_end->unix_seconds)) {
      chain_end = std::move(expiry);
    }
  }
  if (chain_end) tls.expiries.push_back(*std::move(chain_end));
  for (const Cert& ca : cas->second) {
    if (auto expiry = ExpiryOf(ca.get(), CertificateExpiry::Kind::kClusterCa)) {
      tls.expiries.push_back(*std::move(expiry));
    }
  }
  if (!client_ca.empty()) {
    const std::string client_ca_flag = flag_prefix + "client_ca";
    auto client_cas = LoadCas(client_ca_flag, client_ca);
    if (!client_cas.ok()) return client_cas.status();
    // The two CAs must be separate hierarchies: a client CA under the cluster's CA (or the same
    // CA) would make every application certificate chain to a member's CA.
    const std::string both =
        absl::StrCat(client_ca_flag, "=", client_ca, " and ", ca_flag, "=", files.ca);
    for (const Cert& client : client_cas->second) {
      if (absl::Status fresh = CheckNotExpired(client_ca_flag, client_ca, client.get());
          !fresh.ok()) {
        return fresh;
      }
      for (const Cert& member : cas->second) {
        if (SameCa(client.get(), member.get())) {
          return absl::InvalidArgumentError(absl::StrCat(
              both, " share a CA: application certificates would be members' certificates"));
        }
      }
      std::vector<Cert> alone;
      alone.push_back(Ref(client.get()));
      if (VerifyChain(alone, cas->second, "", "").ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            both,
            ": the client CA is signed by the cluster's CA, so application certificates "
            "would chain to it; use a client CA of its own"));
      }
    }
    for (const Cert& client : client_cas->second) {
      if (auto expiry = ExpiryOf(client.get(), CertificateExpiry::Kind::kClientCa)) {
        tls.expiries.push_back(*std::move(expiry));
      }
    }
    tls.client_ca_pem = std::move(client_cas->first);
  }
  if (!files.crl_dir.empty()) {
    std::vector<X509*> issuers;
    for (const Cert& cert : cas->second) issuers.push_back(cert.get());
    for (const Cert& cert : identity->chain) issuers.push_back(cert.get());
    const std::vector<Cert> client_cas = ParsePem(tls.client_ca_pem);
    for (const Cert& cert : client_cas) issuers.push_back(cert.get());
    if (absl::Status crls = LoadCrls(flag_prefix + "crl_dir", files.crl_dir, issuers,
                                     identity->chain.front().get(), &tls);
        !crls.ok()) {
      return crls;
    }
    // The whole chain as peers will judge it, with the lists (an intermediate revoked, a list
    // out of scope): peers would refuse what does not pass here.
    if (absl::Status judged =
            VerifyChain(identity->chain, cas->second, absl::StrCat(cert_flag, "=", files.cert),
                        absl::StrCat(ca_flag, "=", files.ca, " with the lists of ", flag_prefix,
                                     "crl_dir=", files.crl_dir),
                        nullptr, &tls.crls);
        !judged.ok()) {
      return judged;
    }
  }
  tls.cert_pem = std::move(identity->cert_pem);
  tls.key_pem = std::move(identity->key_pem);
  tls.ca_pem = std::move(cas->first);
  tls.files = files;
  tls.client_ca_file = client_ca;
  tls.flag_prefix = flag_prefix;
  return tls;
}

absl::StatusOr<TlsConfig> LoadClientTls(const TlsFiles& files, const std::string& flag_prefix) {
  TlsConfig tls;
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag_prefix, "cert and ", flag_prefix, "key go together"));
  }
  if (files.ca.empty()) {
    if (!files.cert.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(flag_prefix, "cert needs ", flag_prefix,
                                                     "ca (the CA of the cluster's nodes)"));
    }
    return tls;
  }
  auto cas = LoadCas(flag_prefix + "ca", files.ca);
  if (!cas.ok()) return cas.status();
  tls.ca_pem = std::move(cas->first);
  if (!files.cert.empty()) {
    absl::StatusOr<Identity> identity =
        LoadIdentity(flag_prefix + "cert", files.cert, flag_prefix + "key", files.key);
    if (!identity.ok()) return identity.status();
    const int allowed =
        X509_check_purpose(identity->chain.front().get(), X509_PURPOSE_SSL_CLIENT, 0);
    ERR_clear_error();
    if (allowed != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          flag_prefix, "cert=", files.cert,
          ": its extended key usage does not allow TLS client use (clientAuth), so nodes that "
          "ask for client certificates would refuse it"));
    }
    tls.cert_pem = std::move(identity->cert_pem);
    tls.key_pem = std::move(identity->key_pem);
  }
  return tls;
}

const CertificateExpiry* OwnChainExpiry(const TlsConfig& tls) {
  for (const CertificateExpiry& expiry : tls.expiries) {
    if (expiry.kind == CertificateExpiry::Kind::kOwnChain) return &expiry;
  }
  return nullptr;
}

const CertificateExpiry* ClientCaExpiry(const TlsConfig& tls) {
  const CertificateExpiry* earliest = nullptr;
  for (const CertificateExpiry& expiry : tls.expiries) {
    if (expiry.kind == CertificateExpiry::Kind::kClientCa &&
        (earliest == nullptr || expiry.unix_seconds < earliest->unix_seconds)) {
      earliest = &expiry;
    }
  }
  return earliest;
}

ExpiryReport ReportExpiries(const TlsConfig& tls, absl::Time now, absl::Duration window) {
  ExpiryReport report;
  if (!tls.enabled()) return report;
  const CertificateExpiry* own = OwnChainExpiry(tls);
  // The CA on the node's own chain, when its end is the chain's: one entry says it for both.
  auto is_own_ca = [own](const CertificateExpiry& expiry) {
    return own != nullptr && expiry.kind == CertificateExpiry::Kind::kClusterCa &&
           expiry.subject == own->subject && expiry.unix_seconds == own->unix_seconds;
  };
  bool own_ends_with_ca = false;
  for (const CertificateExpiry& expiry : tls.expiries) own_ends_with_ca |= is_own_ca(expiry);
  for (const CertificateExpiry& expiry : tls.expiries) {
    if (is_own_ca(expiry)) continue;
    const absl::Time expires = absl::FromUnixSeconds(expiry.unix_seconds);
    const bool expired = expires <= now;
    absl::Duration own_window = window;
    if (expiry.kind == CertificateExpiry::Kind::kCrl && expiry.issued_unix_seconds > 0) {
      own_window =
          std::min(window, absl::Seconds(expiry.unix_seconds - expiry.issued_unix_seconds) / 4);
    }
    const bool soon = !expired && expires - now <= own_window;
    absl::StrAppend(&report.stage, expired ? "x" : soon ? "w" : "-");
    if (!expired && !soon) continue;
    std::string what;
    std::string consequence;
    switch (expiry.kind) {
      case CertificateExpiry::Kind::kOwnChain:
        what = absl::StrCat("the TLS certificate ", expiry.subject, " of this node's chain");
        consequence = own_ends_with_ca ? "peers and clients refuse this node's certificate, "
                                         "and this node refuses peers that CA signed"
                                       : "peers and clients refuse this node's certificate";
        break;
      case CertificateExpiry::Kind::kClusterCa:
        what = absl::StrCat("the CA certificate ", expiry.subject, " of --tls_ca");
        consequence = "peers whose certificates only it signed are refused";
        break;
      case CertificateExpiry::Kind::kClientCa:
        what = absl::StrCat("the CA certificate ", expiry.subject, " of --tls_client_ca");
        consequence = "clients whose certificates only it signed are refused";
        break;
      case CertificateExpiry::Kind::kCrl:
        what = absl::StrCat("the revocation list of ", expiry.subject, " in --tls_crl_dir");
        consequence = "handshakes with certificates that CA signed fail";
        break;
    }
    const std::string when =
        absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", expires, absl::UTCTimeZone());
    report.warnings.push_back(
        expired
            ? absl::StrCat(what, " expired at ", when, ": ", consequence,
                           " until it is renewed (the node reads renewed files without a restart)")
            : absl::StrCat(what, " expires at ", when, ", in ",
                           absl::StrFormat("%.1f", absl::ToDoubleHours(expires - now) / 24),
                           " days: then ", consequence, "; renew it before then"));
  }
  return report;
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsConfig& tls) {
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca_pem;
  options.pem_private_key = tls.key_pem;
  options.pem_cert_chain = tls.cert_pem;
  return grpc::SslCredentials(options);
}

absl::Status CheckOwnMemberName(const TlsConfig& tls, absl::string_view node_name) {
  std::vector<Cert> chain = ParsePem(tls.cert_pem);
  if (chain.empty()) return absl::InvalidArgumentError("no certificate to check the name of");
  return CheckNames(chain.front().get(), node_name, "this node's (--tls_cert)");
}

absl::Status CheckPeerMemberName(const grpc::AuthContext& auth, absl::string_view member) {
  const std::vector<grpc::string_ref> leaf_pem =
      auth.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  std::vector<Cert> leaf = leaf_pem.size() == 1
                               ? ParsePem(absl::string_view(leaf_pem[0].data(), leaf_pem[0].size()))
                               : std::vector<Cert>();
  if (leaf.size() != 1) {
    return absl::PermissionDeniedError(absl::StrCat("the certificate of member '", member,
                                                    "' is missing from the handshake, so its name "
                                                    "cannot be checked (--tls_bind_member_names)"));
  }
  return CheckNames(leaf.front().get(), member, absl::StrCat("the peer's"));
}

namespace {

// Creates `path` and writes `contents` to it, mode 0600. O_EXCL and O_NOFOLLOW: a file or a
// link already there (planted, or left by a crash) is never written through.
absl::Status WriteNew(const std::string& path, const std::string& contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(error)));
    }
    written += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// The roots the server accepts client certificates from: members' and, with a client CA,
// applications' (which CA signed one decides what its holder may call).
std::string ServerRoots(const TlsConfig& tls) {
  return tls.client_ca_pem.empty() ? tls.ca_pem : absl::StrCat(tls.ca_pem, "\n", tls.client_ca_pem);
}

// Whether the files `tls` was read from still hold what it holds (a file that does not read
// counts as changed).
bool FilesUnchanged(const TlsConfig& tls) {
  auto holds = [](const std::string& path, const std::string& contents) {
    absl::StatusOr<std::string> now = ReadFile("", path);
    return now.ok() && *now == contents;
  };
  auto crls_hold = [&tls] {
    if (tls.files.crl_dir.empty()) return true;
    auto files = ReadCrlDir("", tls.files.crl_dir);
    return files.ok() && CrlFilesKey(*files) == tls.crl_files;
  };
  return holds(tls.files.cert, tls.cert_pem) && holds(tls.files.key, tls.key_pem) &&
         holds(tls.files.ca, tls.ca_pem) &&
         (tls.client_ca_file.empty() || holds(tls.client_ca_file, tls.client_ca_pem)) &&
         crls_hold();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LiveTls>> LiveTls::Start(TlsConfig config, std::string node_name,
                                                        std::string dir) {
  if (!config.enabled()) return absl::InvalidArgumentError("LiveTls needs TLS enabled");
  const bool temporary = dir.empty();
  if (temporary) {
    const char* tmp = getenv("TMPDIR");
    dir = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/mergedb-tls-XXXXXX");
    // mkdtemp makes it readable by this user alone: it holds a copy of the private key.
    if (mkdtemp(dir.data()) == nullptr) {
      return absl::InternalError(
          absl::StrCat("cannot make a private directory for the node's "
                       "TLS files under ",
                       dir, ": ", std::strerror(errno)));
    }
  } else {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir, " is not a directory (a link, say): remove it; the node keeps its TLS files there"));
    }
    if ((::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) || ::chmod(dir.c_str(), 0700) != 0) {
      return absl::InternalError(
          absl::StrCat("cannot make the private directory ", dir, ": ", std::strerror(errno)));
    }
    // What an earlier run left: its versions go, this run publishes its own.
    std::error_code ignored;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ignored)) {
      std::filesystem::remove_all(entry.path(), ignored);
    }
  }
  if (!config.files.crl_dir.empty() && dir.find(':') != std::string::npos) {
    // OpenSSL splits a list directory's path at ':'.
    if (temporary) {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls_crl_dir needs a data dir whose path has no ':' (the node's copies go in ", dir,
        ")"));
  }
  auto shared = std::make_shared<const TlsConfig>(std::move(config));
  std::unique_ptr<LiveTls> live(new LiveTls(shared, std::move(node_name), dir, temporary));
  if (absl::Status published = live->Publish(*shared); !published.ok()) return published;
  // Each provider reads its files once here, and then every kRefreshSeconds on a thread of its
  // own, through the `current` link.
  const std::string current = dir + "/current/";
  live->server_provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      current + "key.pem", current + "chain.pem", current + "roots.pem", kRefreshSeconds);
  live->channel_provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      current + "key.pem", current + "chain.pem", current + "ca.pem", kRefreshSeconds);
  return live;
}

LiveTls::LiveTls(std::shared_ptr<const TlsConfig> config, std::string node_name, std::string dir,
                 bool temporary)
    : node_name_(std::move(node_name)),
      dir_(std::move(dir)),
      temporary_(temporary),
      current_(std::move(config)),
      loaded_at_(absl::Now()) {}

LiveTls::~LiveTls() {
  // A temporary directory goes with the node. gRPC may hold the providers a moment longer than
  // the node's servers and channels (and logs an error per refresh for files gone); a directory
  // in the data dir stays, and the next start replaces what is in it.
  server_provider_.reset();
  channel_provider_.reset();
  if (temporary_) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

absl::Status LiveTls::Publish(const TlsConfig& config) {
  // All four files of a version go into a directory of their own, then one rename of the
  // `current` link switches gRPC's providers to it. A provider reads the key and the chain
  // one after the other, and re-reads them when their modification times changed meanwhile:
  // through the link, a switch between the two reads changes both, so it never pairs a new
  // key with an old chain (as replacing the files one by one could). A write that fails
  // leaves the version in use untouched.
  const uint64_t version = published_ + 1;
  const std::string name = absl::StrCat("v", version);
  // A line after the certificates (which PEM readers skip; after, so that a file starting with a
  // byte-order mark keeps it first, where OpenSSL drops it) makes every version's roots differ
  // from the last: gRPC then builds its TLS contexts anew, with a fresh certificate store. The
  // store caches the revocation lists it loaded from the directory and, for an issuer it has
  // seen, reads only files with later suffixes, so without a fresh store a changed or removed
  // list would stay in force (and a removed one fail every handshake once past its update).
  const std::string generation = absl::StrCat("\nmergedb TLS files, version ", version, "\n");
  const std::string path = absl::StrCat(dir_, "/", name);
  std::error_code ignored;
  std::filesystem::remove_all(path, ignored);
  absl::Status status =
      ::mkdir(path.c_str(), 0700) == 0
          ? absl::OkStatus()
          : absl::InternalError(absl::StrCat("cannot make ", path, ": ", std::strerror(errno)));
  for (const auto& [file, contents] :
       {std::pair<const char*, std::string>{"roots.pem",
                                            absl::StrCat(ServerRoots(config), generation)},
        {"ca.pem", absl::StrCat(config.ca_pem, generation)},
        {"key.pem", config.key_pem},
        {"chain.pem", config.cert_pem}}) {
    if (status.ok()) status = WriteNew(absl::StrCat(path, "/", file), contents);
  }
  if (status.ok() && !config.files.crl_dir.empty()) {
    // The lists in use, named as a hashed directory wants them: issuer hash, then .r0, .r1, ...
    // for an issuer's several lists.
    const std::string crl_path = path + "/crl";
    if (::mkdir(crl_path.c_str(), 0700) != 0) {
      status =
          absl::InternalError(absl::StrCat("cannot make ", crl_path, ": ", std::strerror(errno)));
    }
    std::map<unsigned long, int> suffixes;
    for (const TlsConfig::Crl& crl : config.crls) {
      if (!status.ok()) break;
      status = WriteNew(
          absl::StrFormat("%s/%08lx.r%d", crl_path, crl.issuer_hash, suffixes[crl.issuer_hash]++),
          crl.pem);
    }
  }
  // Every file of the version gets an mtime past the previous version's: gRPC's provider tells
  // a switch between its reads of the key and the chain by their mtimes, in whole seconds.
  const int64_t mtime = std::max(absl::ToUnixSeconds(absl::Now()), published_mtime_ + 1);
  for (const char* file : {"roots.pem", "ca.pem", "key.pem", "chain.pem"}) {
    const timespec times[2] = {{static_cast<time_t>(mtime), 0}, {static_cast<time_t>(mtime), 0}};
    if (status.ok() && ::utimensat(AT_FDCWD, absl::StrCat(path, "/", file).c_str(), times,
                                   AT_SYMLINK_NOFOLLOW) != 0) {
      status = absl::InternalError(
          absl::StrCat("cannot date ", path, "/", file, ": ", std::strerror(errno)));
    }
  }
  const std::string link = absl::StrCat(dir_, "/current");
  const std::string next_link = link + ".next";
  ::unlink(next_link.c_str());
  if (status.ok() && (::symlink(name.c_str(), next_link.c_str()) != 0 ||
                      ::rename(next_link.c_str(), link.c_str()) != 0)) {
    status = absl::InternalError(
        absl::StrCat("cannot switch ", link, " to ", name, ": ", std::strerror(errno)));
  }
  if (!status.ok()) {
    ::unlink(next_link.c_str());
    std::filesystem::remove_all(path, ignored);
    return status;
  }
  // The version before stays: a provider may be reading it right now.
  if (version >= 3) std::filesystem::remove_all(absl::StrCat(dir_, "/v", version - 2), ignored);
  published_ = version;
  published_mtime_ = mtime;
  return absl::OkStatus();
}

std::string LiveTls::CrlDirectory() const {
  // Through the link: OpenSSL looks the lists up by path at each handshake.
  return current()->files.crl_dir.empty() ? std::string() : dir_ + "/current/crl";
}

std::shared_ptr<const TlsConfig> LiveTls::current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

std::string LiveTls::reload_error() const {
  absl::MutexLock lock(&mu_);
  return reload_error_;
}

absl::Time LiveTls::loaded_at() const {
  absl::MutexLock lock(&mu_);
  return loaded_at_;
}

std::shared_ptr<grpc::ServerCredentials> LiveTls::ServerCredentials() const {
  grpc::experimental::TlsServerCredentialsOptions options(server_provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  // Without a client CA, requested, not required: application clients may come without a
  // certificate. The replication service requires one (CheckMemberCertificate). With one,
  // required from everyone, and either CA's will do here: which CA signed it decides what the
  // peer may call. Whether there is a client CA is fixed at start-up (its flag is).
  if (const std::string crls = CrlDirectory(); !crls.empty()) options.set_crl_directory(crls);
  options.set_cert_request_type(current()->client_ca_pem.empty()
                                    ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                                    : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> LiveTls::ChannelCredentials() const {
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(channel_provider_);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  if (const std::string crls = CrlDirectory(); !crls.empty()) options.set_crl_directory(crls);
  // The peer's certificate must name the address dialled, as with SslCredentials.
  options.set_certificate_verifier(
      std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
  return grpc::experimental::TlsCredentials(options);
}

absl::StatusOr<bool> LiveTls::Reload() {
  // One reload at a time (the janitor's, a SIGHUP's): each publishes a version.
  absl::MutexLock reloading(&reload_mu_);
  const std::shared_ptr<const TlsConfig> in_use = current();
  if (in_use->files.cert.empty()) return false;
  // Files as they were need no check: a certificate in use that expires is for the expiry
  // warnings to say, not a refused change. A refused change undone clears its error.
  if (FilesUnchanged(*in_use)) {
    absl::MutexLock state(&mu_);
    reload_error_.clear();
    return false;
  }
  absl::StatusOr<TlsConfig> checked =
      LoadNodeTls(in_use->files, in_use->flag_prefix, in_use->client_ca_file);
  if (checked.ok()) {
    checked->bind_member_names = in_use->bind_member_names;
    if (checked->bind_member_names) {
      if (absl::Status named = CheckOwnMemberName(*checked, node_name_); !named.ok()) {
        checked = named;
      }
    }
  }
  if (checked.ok()) {
    if (absl::Status published = Publish(*checked); !published.ok()) checked = published;
  }
  absl::MutexLock state(&mu_);
  if (!checked.ok()) {
    reload_error_ = std::string(checked.status().message());
    return checked.status();
  }
  reload_error_.clear();
  current_ = std::make_shared<const TlsConfig>(*std::move(checked));
  loaded_at_ = absl::Now();
  return true;
}

absl::Status CheckMemberCertificate(const grpc::AuthContext& auth, const TlsConfig& tls) {
  auto refuse = [](absl::string_view why) {
    return absl::PermissionDeniedError(absl::StrCat(
        "replication needs a client certificate signed by the cluster's CA (--tls_ca)", why));
  };
  if (!auth.IsPeerAuthenticated()) return refuse("");
  // The handshake verified the certificate against the roots of its time: with a client CA,
  // either CA's would do; and since a reload (LiveTls) the CA may have changed while the
  // connection stayed open. So verify the chain against the cluster's CA in use, alone, and
  // its revocation lists in use. The
  // server side reports the leaf apart from the rest of the chain (which a resumed TLS session
  // may leave empty: nodes keep no session cache, and a member whose certificate needs
  // intermediates would then be refused, not admitted).
  const std::vector<grpc::string_ref> leaf_pem =
      auth.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  std::vector<Cert> chain =
      leaf_pem.size() == 1 ? ParsePem(absl::string_view(leaf_pem[0].data(), leaf_pem[0].size()))
                           : std::vector<Cert>();
  if (chain.size() != 1) return refuse(": its certificate is missing from the handshake");
  for (grpc::string_ref value : auth.FindPropertyValues(GRPC_X509_PEM_CERT_CHAIN_PROPERTY_NAME)) {
    for (Cert& cert : ParsePem(absl::string_view(value.data(), value.size()))) {
      chain.push_back(std::move(cert));
    }
  }
  std::vector<Cert> verified;
  if (absl::Status s = VerifyChain(chain, ParsePem(tls.ca_pem), "the certificate", "that CA",
                                   &verified, &tls.crls);
      !s.ok()) {
    return refuse(absl::StrCat(" (", s.message(),
                               "; an application client's certificate opens "
                               "the client API only)"));
  }
  // A chain through the client CA (cross-signed by the cluster's CA, say) is an application's.
  const std::vector<Cert> client_cas = ParsePem(tls.client_ca_pem);
  for (const Cert& cert : verified) {
    for (const Cert& client : client_cas) {
      if (SameCa(cert.get(), client.get())) {
        return refuse(
            ": this one chains through the client CA (--tls_client_ca), and an "
            "application client's certificate opens the client API only");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mergedb::node
