// TLS for the client API and for replication.
//
// A node started with a certificate, its key and the cluster's CA serves every call over TLS.
// Its outbound replication streams present that certificate and verify the peer's against the
// CA (the peer's address must match the certificate's subjectAltName), and its inbound
// replication streams are refused unless the connecting node presented a certificate the CA
// signed: the CA is what makes a node a member, beside the cluster id and node name of the
// hello. So the CA must sign members' certificates only. With --tls_bind_member_names the
// certificate must also name the member (CheckPeerMemberName), so that one member's certificate
// cannot open a link as another. It binds the name only: what a member relays (other origins'
// entries and vectors) is trusted as from any member.
//
// Application clients trust the CA. Without a client CA they present no certificate (one from
// another CA fails the handshake) and are not authenticated. With a client CA
// (--tls_client_ca), every connection must present a certificate that CA or the cluster's CA
// signed, or its handshake fails; a client CA's certificate opens the client API only, never
// replication, so a leaked application certificate cannot make its holder a member. For that the
// two CAs must be separate hierarchies (checked at start-up), and a member's chain must not pass
// through the client CA (checked per stream: a cross-signed copy of it would otherwise lead an
// application certificate to the cluster's CA).
//
// Files are read and checked at start-up, with OpenSSL (which gRPC uses too), so that a wrong
// path, a file that is not PEM or a key that does not belong to the certificate is a clear
// error naming the flag, not a failed handshake later; and again, with the same checks, each
// time a running node reloads them (LiveTls).
#ifndef MERGEDB_NODE_TLS_H_
#define MERGEDB_NODE_TLS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"

namespace mergedb::node {

// Paths as given on the command line (empty: not given).
struct TlsFiles {
  std::string cert;  // PEM certificate chain, leaf first
  std::string key;   // PEM private key of the leaf certificate
  std::string ca;    // PEM certificates of the cluster's CA
  // A node's only, optional: a directory of PEM certificate revocation lists (any file names)
  // from the cluster's CA, the client CA or an intermediate of the node's chain.
  std::string crl_dir;
};

// When one certificate a node depends on stops being valid.
struct CertificateExpiry {
  enum class Kind {
    // The earliest end of validity along the chain from the node's certificate to the CA (an
    // intermediate or the CA itself may expire first): peers and clients refuse the node then.
    kOwnChain,
    // A CA certificate of --tls_ca: peers whose certificates only it signed are refused then.
    kClusterCa,
    // A CA certificate of --tls_client_ca: clients whose certificates only it signed are
    // refused then.
    kClientCa,
    // A revocation list of --tls_crl_dir passes its next update: handshakes with certificates
    // its issuer signed fail until a fresh one is published. `subject` is the issuer.
    kCrl,
  };
  Kind kind;
  std::string subject;  // e.g. "/CN=n1"
  int64_t unix_seconds;
  // kCrl: when the list was issued (its last update). A list lives days, not years: its
  // warning comes in the last quarter of its life, or the window if that is shorter.
  int64_t issued_unix_seconds = 0;
};

// The PEM contents. No CA (the default): plaintext. Every loaded config has one.
struct TlsConfig {
  std::string cert_pem;  // empty for a client without a certificate
  std::string key_pem;
  std::string ca_pem;
  std::string client_ca_pem;  // a node's only; empty: clients present no certificate
  // A node's only: when certificates it depends on stop being valid (below).
  std::vector<CertificateExpiry> expiries;
  // A node's only (--tls_bind_member_names): every member's certificate names it (its common
  // name, or a DNS subjectAltName, is its node name), and a replication stream is accepted from,
  // or opened to, only the member its certificate names.
  bool bind_member_names = false;
  // With files.crl_dir: every revocation list in it, PEM, with its issuer's name hash (OpenSSL's
  // X509_NAME_hash_ex, which names the files of a hashed directory); and the directory's files
  // as read (name, then contents), to tell a change.
  struct Crl {
    unsigned long issuer_hash;
    std::string pem;
  };
  std::vector<Crl> crls;
  std::string crl_files;
  // Where LoadNodeTls read it, for LiveTls::Reload (empty when made otherwise).
  TlsFiles files;
  std::string client_ca_file;
  std::string flag_prefix;
  bool enabled() const { return !ca_pem.empty(); }
};

// A node's TLS: none of the files, or all three (and optionally `client_ca`, the PEM
// certificates of the application clients' CA, and `files.crl_dir`), and the certificate must
// verify against the CA (`flag_prefix` names the flags in errors, e.g. "--tls_"). Every
// revocation list must parse (every block of its file), be signed by a CA it can belong to
// whose key usage allows it, be complete (no delta, no issuing distribution point, no other
// critical extension than the authority key id), be valid now, and the node's whole chain must
// verify with the lists: what TLS would refuse, or skip in silence, is refused here.
absl::StatusOr<TlsConfig> LoadNodeTls(const TlsFiles& files, const std::string& flag_prefix,
                                      const std::string& client_ca = "");
// A client's TLS: on when `files.ca` is given; a certificate and its key (both or neither) for
// nodes that require client certificates.
absl::StatusOr<TlsConfig> LoadClientTls(const TlsFiles& files, const std::string& flag_prefix);

// The node's own chain's expiry (every node with TLS has one).
const CertificateExpiry* OwnChainExpiry(const TlsConfig& tls);
// The earliest expiry of a --tls_client_ca certificate; nullptr without a client CA.
const CertificateExpiry* ClientCaExpiry(const TlsConfig& tls);

// What a node says about its certificates at `now`: a warning for every one of `tls.expiries`
// that ends its validity within `window` or already has (none for plaintext), and a key that
// changes only when one of them enters the window or expires, so that a caller checking often
// can log each change at once and repeat itself rarely. Certificates are read at start-up and
// by LiveTls::Reload (README: "Renewing certificates").
struct ExpiryReport {
  std::vector<std::string> warnings;
  std::string stage;
};
ExpiryReport ReportExpiries(const TlsConfig& tls, absl::Time now, absl::Duration window);

// A client's credentials (the CLI's, the benchmark's): insecure when `tls` is disabled. A node
// takes its own from LiveTls.
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsConfig& tls);

// A running node's TLS: the configuration in use, and credentials whose certificates follow it
// without a restart. gRPC's own provider (FileWatcherCertificateProvider) re-reads files; it
// watches private copies of what Reload last accepted (in a directory only this process's
// user can read: a version per reload, and a link `current` to the one in use), never the
// operator's files themselves, so a
// certificate renewed with a mistake (a key that does not match, a chain the CA did not sign,
// a name that is not the member's) is refused by the same checks as at start-up and the node
// keeps serving with what it has. New handshakes take an accepted change within
// kRefreshSeconds; connections already open keep the certificates they were made with.
class LiveTls {
 public:
  // How often gRPC re-reads the private copies.
  static constexpr unsigned int kRefreshSeconds = 1;

  // `config` is enabled; `node_name` is what its certificate must name with bound member names.
  // `dir` holds the private copies (made mode 0700, kept); empty: a temporary directory, removed
  // with this object.
  static absl::StatusOr<std::unique_ptr<LiveTls>> Start(TlsConfig config, std::string node_name,
                                                        std::string dir = "");
  ~LiveTls();
  LiveTls(const LiveTls&) = delete;
  LiveTls& operator=(const LiveTls&) = delete;

  std::shared_ptr<const TlsConfig> current() const;
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;
  // For the node's links to its peers: present this node's certificate, and verify the peer's
  // against the cluster's CA and the address dialled.
  std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() const;

  // Reads the files named at start-up again: false when they hold what is in use; otherwise
  // checks them as at start-up and takes them (true), or returns why not (also kept for
  // reload_error), and the certificates in use stay. Without files to read, false.
  absl::StatusOr<bool> Reload();
  // The last Reload's error; empty once one passed.
  std::string reload_error() const;
  // When the certificates in use were read.
  absl::Time loaded_at() const;

 private:
  LiveTls(std::shared_ptr<const TlsConfig> config, std::string node_name, std::string dir,
          bool temporary);
  // Writes `config`'s files as a new version under dir_ and points dir_/current at it.
  absl::Status Publish(const TlsConfig& config);
  // The directory of revocation lists gRPC reads (empty: none configured).
  std::string CrlDirectory() const;

  const std::string node_name_;
  const std::string dir_;  // the private copies gRPC's providers watch
  const bool temporary_;   // dir_ goes with this object
  uint64_t published_ = 0;  // the version dir_/current names (Start, then Reload: reload_mu_)
  // The mtime given to the last version's files (Publish: reload_mu_), in seconds.
  int64_t published_mtime_ = 0;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> server_provider_;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> channel_provider_;
  absl::Mutex reload_mu_;  // held by Reload, outside mu_
  mutable absl::Mutex mu_;
  std::shared_ptr<const TlsConfig> current_ ABSL_GUARDED_BY(mu_);
  std::string reload_error_ ABSL_GUARDED_BY(mu_);
  absl::Time loaded_at_ ABSL_GUARDED_BY(mu_);
};

// Whether the peer of an inbound call is a member: it presented a certificate that the
// cluster's CA (`tls.ca_pem`) signed. PERMISSION_DENIED otherwise, saying why. Call only when
// `tls` is enabled.
absl::Status CheckMemberCertificate(const grpc::AuthContext& auth, const TlsConfig& tls);

// With --tls_bind_member_names: whether this node's certificate names `node_name` (checked at
// start-up), and
// whether the peer of a replication stream presented a certificate naming `member`, the member
// it says it is (inbound) or the one this node meant to reach (outbound). PERMISSION_DENIED
// otherwise, with the names the certificate does carry.
absl::Status CheckOwnMemberName(const TlsConfig& tls, absl::string_view node_name);
absl::Status CheckPeerMemberName(const grpc::AuthContext& auth, absl::string_view member);

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_TLS_H_
