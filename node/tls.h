// TLS for the client API and for replication.
//
// A node started with a certificate, its key and the cluster's CA serves every call over TLS.
// Its outbound replication streams present that certificate and verify the peer's against the
// CA (the peer's address must match the certificate's subjectAltName), and its inbound
// replication streams are refused unless the connecting node presented a certificate the CA
// signed: the CA is what makes a node a member, beside the cluster id and node name of the
// hello. So the CA must sign members' certificates only. Application clients trust the CA and
// present no certificate (one from another CA fails the handshake).
//
// Files are read and checked once, at start-up, with OpenSSL (which gRPC uses too), so that a
// wrong path, a file that is not PEM or a key that does not belong to the certificate is a
// clear error naming the flag, not a failed handshake later.
#ifndef MERGEDB_NODE_TLS_H_
#define MERGEDB_NODE_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace mergedb::node {

// Paths as given on the command line (empty: not given).
struct TlsFiles {
  std::string cert;  // PEM certificate chain, leaf first
  std::string key;   // PEM private key of the leaf certificate
  std::string ca;    // PEM certificates of the cluster's CA
};

// The PEM contents. No CA (the default): plaintext. Every loaded config has one.
struct TlsConfig {
  std::string cert_pem;  // empty for a client
  std::string key_pem;
  std::string ca_pem;
  bool enabled() const { return !ca_pem.empty(); }
};

// A node's TLS: none of the files, or all three, and the certificate must verify against the
// CA (`flag_prefix` names the flags in errors, e.g. "--tls_").
absl::StatusOr<TlsConfig> LoadNodeTls(const TlsFiles& files, const std::string& flag_prefix);
// A client's TLS: on when `ca_file` (named `flag` in errors) is given. Clients present no
// certificate: one signed by the cluster's CA is a member's credential (see above).
absl::StatusOr<TlsConfig> LoadClientTls(const std::string& ca_file, const std::string& flag);

// Insecure credentials when `tls` is disabled.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsConfig& tls);
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsConfig& tls);

}  // namespace mergedb::node

#endif  // MERGEDB_NODE_TLS_H_
