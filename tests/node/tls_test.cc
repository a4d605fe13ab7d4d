// TLS: a cluster whose nodes serve and replicate over TLS, clients that trust its CA (and, with
// a client CA, present its certificates), and what is refused: plaintext clients, clients
// without a certificate where one is required, replication streams without a member's
// certificate or with one another CA (or the client CA) signed, a node set up with another CA,
// and bad files at start-up.
#include "node/tls.h"

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "absl/strings/match.h"
#include "mergedb/v1/replication.grpc.pb.h"
#include "tests/node/cluster_test_util.h"
#include "tests/node/node_test_util.h"

namespace mergedb::node {
namespace {

using mergedb::v1::UpdateRequest;
using testing::Cluster;
using testing::CounterIn;
using testing::Incr;
using testing::UpdateOf;

UpdateRequest IncrementDoc(int64_t by) {
  UpdateRequest request = UpdateOf("c", "doc");
  Incr(&request, {"n"}, by);
  return request;
}

// Certificates made by scripts/make_certs.sh in a temporary directory: a CA, a node certificate
// it signed for 127.0.0.1, an impostor's certificate another CA signed for the same name, one
// the CA signed that has expired, and an application's certificate a client CA signed.
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    made_at_ = new int64_t(absl::ToUnixSeconds(absl::Now()));
    const char* tmp = getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/mergedb-tls-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = new std::string(pattern);
    const std::string make = std::string(MERGEDB_SOURCE_DIR) + "/scripts/make_certs.sh ";
    for (const std::string ca : {"ca", "other-ca", "clients"}) {
      Run(make + "ca " + *dir_ + " " + ca + " 2");
    }
    Run(make + "cert " + *dir_ + " app clients 2");
    // Two ways a client CA can lie under the cluster's CA: "sub", a CA the cluster's CA
    // signed, and "clients-cross", the client CA (same name, same key) cross-signed by the
    // cluster's CA. "app-chain" is the app certificate presented with the cross-signed CA as
    // its intermediate, so that its chain leads to the cluster's CA.
    Run("cd " + *dir_ +
        " && printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign\\n'"
        " >ca.ext"
        " && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout sub.key"
        "    -subj /CN=sub -out sub.csr"
        " && openssl x509 -req -in sub.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
        "    -extfile ca.ext -out sub.pem"
        " && openssl x509 -x509toreq -in clients.pem -signkey clients.key -out cross.csr"
        " && openssl x509 -req -in cross.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
        "    -extfile ca.ext -out clients-cross.pem"
        " && cat app.pem clients-cross.pem >app-chain.pem && cp app.key app-chain.key");
    Run(make + "cert " + *dir_ + " node ca 2");
    // Certificates a PKI's "web server" and "client" templates would issue: one extended key
    // usage each, where a node needs both (it serves, and it connects to its peers).
    for (const std::string usage : {"serverAuth", "clientAuth"}) {
      Run("cd " + *dir_ + " && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=" + usage +
          "\\n' >" + usage +
          ".ext"
          " && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
          usage + ".key -subj /CN=" + usage + " -out " + usage + ".csr" +
          " && openssl x509 -req -in " + usage +
          ".csr -CA ca.pem -CAkey ca.key -CAcreateserial"
          " -days 2 -extfile " +
          usage + ".ext -out " + usage + ".pem");
    }
    // For --tls_bind_member_names: certificates naming members n1 and n2, one by its common name
    // and one by a DNS subjectAltName beside the address.
    Run(make + "cert " + *dir_ + " n1 ca 2");
    Run(make + "cert " + *dir_ + " n2-by-dns ca 2 IP:127.0.0.1,DNS:n2");
    Run(make + "cert " + *dir_ + " impostor other-ca 2");
    Run(make + "cert " + *dir_ + " expired ca -1");  // one day of validity, ended yesterday
    Run(make + "cert " + *dir_ + " elsewhere ca 2 IP:127.0.0.2");  // not the address nodes use
    // For certificate renewal: a certificate that outlives its CA ("lasting", 10 days under
    // "ca"'s 2), the cluster's next CA (30 days) and a certificate it signed for 10 days, and
    // a CA file that trusts both CAs, as during a change of CA.
    Run(make + "cert " + *dir_ + " lasting ca 10");
    Run(make + "ca " + *dir_ + " next-ca 30");
    Run(make + "cert " + *dir_ + " renewed next-ca 10");
    std::ofstream(Path("both-cas.pem")) << Contents("ca.pem") << Contents("next-ca.pem");
    std::ofstream(*dir_ + "/not.pem") << "not a certificate\n";
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    delete made_at_;
  }
  static void Run(const std::string& command) {
    ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
  }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }

  static TlsConfig NodeTls(const std::string& identity = "node", const std::string& ca = "ca") {
    auto tls = LoadNodeTls({Path(identity + ".pem"), Path(identity + ".key"), Path(ca + ".pem")},
                           "--tls_");
    EXPECT_TRUE(tls.ok()) << tls.status();
    return tls.ok() ? *tls : TlsConfig();
  }
  static std::string Contents(const std::string& name) {
    std::ifstream in(Path(name));
    std::stringstream contents;
    contents << in.rdbuf();
    return contents.str();
  }
  // A client that trusts `ca` and, given an `identity`, presents that certificate.
  static std::shared_ptr<grpc::Channel> ClientChannel(const std::string& address,
                                                      const std::string& ca = "ca.pem",
                                                      const std::string& identity = "") {
    auto tls = LoadClientTls({identity.empty() ? "" : Path(identity + ".pem"),
                              identity.empty() ? "" : Path(identity + ".key"), Path(ca)},
                             "--tls_");
    EXPECT_TRUE(tls.ok()) << tls.status();
    return grpc::CreateChannel(address, MakeChannelCredentials(*tls));
  }
  static grpc::Status Update(grpc::Channel* channel, const UpdateRequest& request) {
    auto docs = mergedb::v1::DocumentService::NewStub(
        std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    mergedb::v1::UpdateResponse response;
    return docs->Update(&context, request, &response);
  }
  // The counter "n" of c/doc on the node behind `channel`, once it reaches `want` (at most
  // `attempts` reads, 50 ms apart); -1 when the node could not be read.
  static int64_t AwaitCounter(grpc::Channel* channel, int64_t want, int attempts = 100) {
    auto docs = mergedb::v1::DocumentService::NewStub(
        std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}));
    int64_t seen = -1;
    for (int attempt = 0; attempt < attempts && seen != want; ++attempt) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      mergedb::v1::GetRequest request;
      request.set_collection("c");
      request.set_id("doc");
      mergedb::v1::GetResponse response;
      if (docs->Get(&context, request, &response).ok()) seen = CounterIn(response, "n");
      if (seen != want) absl::SleepFor(absl::Milliseconds(50));
    }
    return seen;
  }

  // A CA database for `openssl ca`, a member certificate to revoke ("doomed"), and lists:
  // "none" (an hour old, revokes nothing), "future" (not valid yet), "stale" (past its next
  // update), "doomed" (revokes it), "other" (from another CA). Made once per process.
  static void MakeRevocationLists() {
    if (std::filesystem::exists(Path("crl-other.pem"))) return;
    auto when = [](absl::Duration from_now) {
      return absl::FormatTime("%Y%m%d%H%M%SZ", absl::Now() + from_now, absl::UTCTimeZone());
    };
    const std::string gencrl =
        " && openssl ca -config crldb/ca.cnf -gencrl -keyfile ca.key -cert ca.pem";
    Run("cd " + *dir_ + " && rm -rf crldb && mkdir crldb && touch crldb/index.txt" +
        " && echo 1000 >crldb/crlnumber" +
        " && printf '[ca]\\ndefault_ca=d\\n[d]\\ndatabase=crldb/index.txt\\n"
        "crlnumber=crldb/crlnumber\\ndefault_md=sha256\\ndefault_crl_days=2\\n' >crldb/ca.cnf" +
        " && " + MERGEDB_SOURCE_DIR + "/scripts/make_certs.sh cert . doomed ca 2" + gencrl +
        " -crl_lastupdate " + when(-absl::Hours(1)) + " -out crl-none.pem" + gencrl +
        " -crl_lastupdate " + when(absl::Hours(1)) + " -out crl-future.pem" + gencrl +
        " -crl_lastupdate " + when(-absl::Hours(48)) + " -crl_nextupdate " +
        when(-absl::Hours(24)) + " -out crl-stale.pem" +
        " && openssl ca -config crldb/ca.cnf -revoke doomed.pem -keyfile ca.key -cert ca.pem" +
        gencrl + " -out crl-doomed.pem" +
        " && openssl ca -config crldb/ca.cnf -gencrl -keyfile other-ca.key -cert other-ca.pem"
        " -out crl-other.pem");
  }

  // A write on each node of a two-node `cluster`, seen on both (`*total` counts them); clients
  // trust `ca` (a CA file); `step` names the moment in failures.
  static void WriteOnBoth(Cluster& cluster, const std::string& ca, const std::string& step,
                          int64_t* total) {
    for (int i = 0; i < 2; ++i) {
      grpc::Status written = Update(ClientChannel(cluster.Address(i), ca).get(), IncrementDoc(1));
      ASSERT_TRUE(written.ok()) << step << ", n" << i + 1 << ": " << written.error_message();
      ++*total;
    }
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(AwaitCounter(ClientChannel(cluster.Address(i), ca).get(), *total), *total)
          << step << ", n" << i + 1;
    }
  }

  // Opens a replication stream over `channel`, says hello as member n2, and returns how the
  // stream ended; `answered` says whether the node answered the hello.
  static grpc::Status HelloAsN2(const std::shared_ptr<grpc::Channel>& channel, bool* answered) {
    auto stub = mergedb::v1::ReplicationService::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    auto stream = stub->Replicate(&context);
    stream->Write(testing::HelloAs("n2"));
    stream->WritesDone();
    mergedb::v1::ReplicationResponse response;
    *answered = stream->Read(&response);
    if (*answered) context.TryCancel();
    return stream->Finish();
  }

  // Waits until `node`'s only link is down with an error, and returns the error (empty when
  // it stayed up). A link gives up a connection attempt after dead_after (3 s): this waits well
  // past it.
  static std::string AwaitLinkDown(const std::shared_ptr<grpc::Channel>& node) {
    auto cluster_stub = mergedb::v1::ClusterService::NewStub(node);
    for (int attempt = 0; attempt < 200; ++attempt) {
      absl::SleepFor(absl::Milliseconds(50));
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      mergedb::v1::StatusResponse status;
      EXPECT_TRUE(cluster_stub->Status(&context, mergedb::v1::StatusRequest(), &status).ok());
      if (status.peers_size() != 1) {
        ADD_FAILURE() << "expected one link, got " << status.DebugString();
        return "";
      }
      if (!status.peers(0).connected() && !status.peers(0).last_error().empty()) {
        return status.peers(0).last_error();
      }
    }
    return "";
  }

  static std::string* dir_;
  static int64_t* made_at_;  // when SetUpTestSuite began making the certificates
};
std::string* TlsTest::dir_ = nullptr;
int64_t* TlsTest::made_at_ = nullptr;

TEST_F(TlsTest, ANodeChecksItsFilesAtStartUp) {
  auto partial = LoadNodeTls({Path("node.pem"), Path("node.key"), ""}, "--tls_");
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(partial.status().message(), "all three")) << partial.status();

  auto missing = LoadNodeTls({Path("nope.pem"), Path("node.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "--tls_cert=")) << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "cannot read")) << missing.status();

  auto not_pem = LoadNodeTls({Path("not.pem"), Path("node.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(not_pem.status().message(), "no PEM certificate"))
      << not_pem.status();

  auto wrong_key = LoadNodeTls({Path("node.pem"), Path("impostor.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(wrong_key.status().message(), "not the key of the certificate"))
      << wrong_key.status();

  auto expired = LoadNodeTls({Path("expired.pem"), Path("expired.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(expired.status().message(), "expired")) << expired.status();

  auto key_as_ca = LoadNodeTls({Path("node.pem"), Path("node.key"), Path("node.key")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(key_as_ca.status().message(), "--tls_ca=")) << key_as_ca.status();

  auto other_ca =
      LoadNodeTls({Path("impostor.pem"), Path("impostor.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(other_ca.status().message(), "does not verify against --tls_ca="))
      << other_ca.status();

  auto client_key_as_ca = LoadClientTls({"", "", Path("node.key")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(client_key_as_ca.status().message(), "no PEM certificate"))
      << client_key_as_ca.status();

  // The client CA: only beside the other three, and a file of certificates.
  auto client_ca_alone = LoadNodeTls({"", "", ""}, "--tls_", Path("clients.pem"));
  EXPECT_TRUE(
      absl::StrContains(client_ca_alone.status().message(), "--tls_client_ca needs all three"))
      << client_ca_alone.status();
  auto client_ca_not_pem =
      LoadNodeTls({Path("node.pem"), Path("node.key"), Path("ca.pem")}, "--tls_", Path("not.pem"));
  EXPECT_TRUE(absl::StrContains(client_ca_not_pem.status().message(), "--tls_client_ca="))
      << client_ca_not_pem.status();
  auto with_client_ca = LoadNodeTls({Path("node.pem"), Path("node.key"), Path("ca.pem")}, "--tls_",
                                    Path("clients.pem"));
  ASSERT_TRUE(with_client_ca.ok()) << with_client_ca.status();
  EXPECT_EQ(with_client_ca->client_ca_pem, Contents("clients.pem"));
  // The two CAs must be separate hierarchies.
  auto same_ca =
      LoadNodeTls({Path("node.pem"), Path("node.key"), Path("ca.pem")}, "--tls_", Path("ca.pem"));
  EXPECT_TRUE(absl::StrContains(same_ca.status().message(), "share a CA")) << same_ca.status();
  auto under_ca =
      LoadNodeTls({Path("node.pem"), Path("node.key"), Path("ca.pem")}, "--tls_", Path("sub.pem"));
  EXPECT_TRUE(absl::StrContains(under_ca.status().message(), "signed by the cluster's CA"))
      << under_ca.status();

  // A client's certificate: with its key and a CA to trust, and the key must be its own.
  auto cert_alone = LoadClientTls({Path("app.pem"), "", Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(cert_alone.status().message(), "go together"))
      << cert_alone.status();
  auto cert_without_ca = LoadClientTls({Path("app.pem"), Path("app.key"), ""}, "--tls_");
  EXPECT_TRUE(absl::StrContains(cert_without_ca.status().message(), "needs --tls_ca"))
      << cert_without_ca.status();
  auto client_wrong_key =
      LoadClientTls({Path("app.pem"), Path("node.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(
      absl::StrContains(client_wrong_key.status().message(), "not the key of the certificate"))
      << client_wrong_key.status();

  // A node's certificate must allow both TLS server and TLS client use; an application's,
  // client use.
  auto server_only =
      LoadNodeTls({Path("serverAuth.pem"), Path("serverAuth.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(server_only.status().message(), "does not allow TLS client use"))
      << server_only.status();
  auto client_only =
      LoadNodeTls({Path("clientAuth.pem"), Path("clientAuth.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(absl::StrContains(client_only.status().message(), "does not allow TLS server use"))
      << client_only.status();
  auto app_server_only =
      LoadClientTls({Path("serverAuth.pem"), Path("serverAuth.key"), Path("ca.pem")}, "--tls_");
  EXPECT_TRUE(
      absl::StrContains(app_server_only.status().message(), "does not allow TLS client use"))
      << app_server_only.status();
  EXPECT_TRUE(
      LoadClientTls({Path("clientAuth.pem"), Path("clientAuth.key"), Path("ca.pem")}, "--tls_")
          .ok());

  auto none = LoadNodeTls({"", "", ""}, "--tls_");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->enabled());
}

TEST_F(TlsTest, AClusterReplicatesOverTlsAndRefusesPlaintextClients) {
  Cluster cluster(3);
  for (int i = 0; i < 3; ++i) cluster.options(i).tls = NodeTls();
  cluster.StartAll();

  auto n1 = ClientChannel(cluster.Address(0));
  auto n3 = ClientChannel(cluster.Address(2));
  for (int i = 0; i < 5; ++i) {
    grpc::Status status = Update(n1.get(), IncrementDoc(1));
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_EQ(AwaitCounter(n3.get(), 5), 5) << "the write reached n3 over the TLS links";

  auto plaintext = grpc::CreateChannel(cluster.Address(0), grpc::InsecureChannelCredentials());
  grpc::Status refused = Update(plaintext.get(), IncrementDoc(1));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_EQ(AwaitCounter(n1.get(), 5), 5);
}

// Trusting the CA is enough to be a client, not to be a member: a replication stream needs a
// certificate the CA signed.
TEST_F(TlsTest, ReplicationWithoutAMembersCertificateIsRefused) {
  Cluster cluster(2);  // n2 is a member of n1's cluster, but does not run
  cluster.options(0).tls = NodeTls();
  cluster.Start(0);
  bool answered = false;
  grpc::Status status = HelloAsN2(ClientChannel(cluster.Address(0)), &answered);
  EXPECT_FALSE(answered);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "client certificate"))
      << status.error_message();
}

// A certificate another CA signed is refused in the handshake: as a client certificate on a
// replication stream...
TEST_F(TlsTest, AReplicationStreamWithACertificateAnotherCaSignedIsRefused) {
  Cluster cluster(2);  // n2 is a member of n1's cluster, but does not run
  cluster.options(0).tls = NodeTls();
  cluster.Start(0);
  grpc::SslCredentialsOptions impostor;
  impostor.pem_root_certs = Contents("ca.pem");  // it trusts n1: the refusal is n1's
  impostor.pem_cert_chain = Contents("impostor.pem");
  impostor.pem_private_key = Contents("impostor.key");
  bool answered = false;
  grpc::Status status =
      HelloAsN2(grpc::CreateChannel(cluster.Address(0), grpc::SslCredentials(impostor)), &answered);
  EXPECT_FALSE(answered);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

// ...and as a server certificate: n2, set up with another CA, cannot link with n1 either way,
// so n1's writes stay on n1, and n1's status says what to check.
TEST_F(TlsTest, ANodeWhoseCertificateAnotherCaSignedCannotJoin) {
  Cluster cluster(2);
  cluster.options(0).tls = NodeTls();
  auto other =
      LoadNodeTls({Path("impostor.pem"), Path("impostor.key"), Path("other-ca.pem")}, "--tls_");
  ASSERT_TRUE(other.ok()) << other.status();
  cluster.options(1).tls = *other;
  cluster.StartAll();
  auto n1 = ClientChannel(cluster.Address(0));
  ASSERT_TRUE(Update(n1.get(), IncrementDoc(7)).ok());

  EXPECT_TRUE(absl::StrContains(AwaitLinkDown(n1), "TLS handshake"));
  auto n2 = ClientChannel(cluster.Address(1), "other-ca.pem");
  EXPECT_EQ(AwaitCounter(n2.get(), 7, 1), 0);
}

// Peers check that a node's certificate names the address they reach it by: a certificate the
// cluster's CA signed for another address does not pass for this node.
TEST_F(TlsTest, ANodeWhoseCertificateNamesAnotherAddressIsNotTrusted) {
  Cluster cluster(2);
  cluster.options(0).tls = NodeTls();
  cluster.options(1).tls = NodeTls("elsewhere");
  cluster.StartAll();
  auto n1 = ClientChannel(cluster.Address(0));
  ASSERT_TRUE(Update(n1.get(), IncrementDoc(3)).ok());
  EXPECT_TRUE(absl::StrContains(AwaitLinkDown(n1), "TLS handshake"));
}

// With --tls_bind_member_names a member's certificate names it, and speaks for it alone: a node
// whose certificate names another refuses to start, a member's certificate cannot say hello as
// another member, and a node does not replicate to an address whose certificate names another.
TEST_F(TlsTest, WithBoundMemberNamesACertificateSpeaksOnlyForTheMemberItNames) {
  auto bound = [](TlsConfig tls) {
    tls.bind_member_names = true;
    return tls;
  };
  {
    Cluster unnamed(1);
    unnamed.options(0).tls = bound(NodeTls());  // CN=node, for member n1
    auto started = Node::Start(unnamed.options(0));
    ASSERT_FALSE(started.ok());
    EXPECT_EQ(started.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(started.status().message(), "does not name member 'n1'"))
        << started.status();
  }
  Cluster cluster(2);
  cluster.options(0).tls = bound(NodeTls("n1"));
  cluster.options(1).tls = bound(NodeTls("n2-by-dns"));
  cluster.StartAll();
  auto n1 = ClientChannel(cluster.Address(0));
  auto n2 = ClientChannel(cluster.Address(1));
  ASSERT_TRUE(Update(n1.get(), IncrementDoc(4)).ok());
  EXPECT_EQ(AwaitCounter(n2.get(), 4), 4) << "named members replicate";
  // n1's certificate, saying hello to n1 as n2.
  bool answered = false;
  grpc::Status status = HelloAsN2(ClientChannel(cluster.Address(0), "ca.pem", "n1"), &answered);
  EXPECT_FALSE(answered);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "does not name member 'n2'"))
      << status.error_message();
  // n2 back with a certificate that does not name it (and no binding of its own, so it starts):
  // n1 refuses to send to it, and says why.
  cluster.Stop(1);
  cluster.options(1).tls = NodeTls();
  cluster.Start(1);
  ASSERT_TRUE(Update(n1.get(), IncrementDoc(4)).ok());
  EXPECT_TRUE(absl::StrContains(AwaitLinkDown(n1), "does not name member 'n2'"));
  EXPECT_EQ(AwaitCounter(ClientChannel(cluster.Address(1)).get(), 8, 20), 4)
      << "n1 sent to a node its certificate does not name";
  // Without the binding, as before: any member's certificate may speak for any member.
  cluster.Stop(0);
  cluster.options(0).tls = NodeTls("n1");
  cluster.Start(0);
  answered = false;
  status = HelloAsN2(ClientChannel(cluster.Address(0), "ca.pem", "n1"), &answered);
  EXPECT_TRUE(answered) << status.error_message();
}

// With a client CA, every connection presents a certificate: the client CA's opens the client
// API, and only the cluster CA's opens replication.
TEST_F(TlsTest, WithAClientCaEveryClientPresentsACertificateAndOnlyMembersReplicate) {
  Cluster cluster(2);
  for (int i = 0; i < 2; ++i) {
    auto tls = LoadNodeTls({Path("node.pem"), Path("node.key"), Path("ca.pem")}, "--tls_",
                           Path("clients.pem"));
    ASSERT_TRUE(tls.ok()) << tls.status();
    cluster.options(i).tls = *tls;
  }
  cluster.StartAll();
  auto n1 = ClientChannel(cluster.Address(0), "ca.pem", "app");
  auto n2 = ClientChannel(cluster.Address(1), "ca.pem", "app");
  for (int i = 0; i < 5; ++i) {
    grpc::Status status = Update(n1.get(), IncrementDoc(1));
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_EQ(AwaitCounter(n2.get(), 5), 5) << "the members' link works with a client CA";

  // No certificate, or one another CA signed: the handshake fails.
  for (const std::string identity : {"", "impostor"}) {
    auto channel = ClientChannel(cluster.Address(0), "ca.pem", identity);
    grpc::Status refused = Update(channel.get(), IncrementDoc(1));
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "'" << identity << "': " << refused.error_message();
  }
  // An application's certificate is not a member's.
  bool answered = false;
  grpc::Status replication = HelloAsN2(n1, &answered);
  EXPECT_FALSE(answered);
  EXPECT_EQ(replication.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << replication.error_message();
  EXPECT_TRUE(absl::StrContains(replication.error_message(), "client API only"))
      << replication.error_message();
  // Nor is it when it comes with the client CA cross-signed by the cluster's CA, so that its
  // chain leads to the cluster's CA.
  replication = HelloAsN2(ClientChannel(cluster.Address(0), "ca.pem", "app-chain"), &answered);
  EXPECT_FALSE(answered);
  EXPECT_EQ(replication.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << replication.error_message();
  EXPECT_TRUE(absl::StrContains(replication.error_message(), "chains through the client CA"))
      << replication.error_message();
  EXPECT_EQ(AwaitCounter(n1.get(), 5), 5);
}

// When the certificates a node depends on stop working: its own chain's earliest end of
// validity (which may be the CA's), and each CA it trusts. Status shows the chain's and the
// client CA's, and the node warns ahead of each.
TEST_F(TlsTest, TheNodeSaysWhenItsCertificatesExpireAndWarnsAhead) {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  constexpr int64_t kDay = 24 * 3600;
  const TlsConfig outlived = NodeTls("lasting");  // 10 days, under a CA of 2
  const CertificateExpiry* outlived_chain = OwnChainExpiry(outlived);
  ASSERT_NE(outlived_chain, nullptr);
  EXPECT_EQ(outlived_chain->subject, "/CN=ca");
  EXPECT_GE(outlived_chain->unix_seconds, *made_at_ + 2 * kDay - 5);
  EXPECT_LE(outlived_chain->unix_seconds, now + 2 * kDay + 5);
  EXPECT_EQ(ClientCaExpiry(outlived), nullptr);
  // The CA is the chain's end: one warning, not one for the chain and one for the CA.
  const ExpiryReport outlived_soon = ReportExpiries(outlived, absl::Now(), absl::Hours(24 * 30));
  ASSERT_EQ(outlived_soon.warnings.size(), 1u);
  EXPECT_TRUE(absl::StrContains(outlived_soon.warnings[0], "/CN=ca of this node's chain"));
  EXPECT_TRUE(
      absl::StrContains(outlived_soon.warnings[0], "this node refuses peers that CA signed"))
      << outlived_soon.warnings[0];

  const TlsConfig renewed = NodeTls("renewed", "next-ca");  // 10 days, under a CA of 30
  const CertificateExpiry* renewed_chain = OwnChainExpiry(renewed);
  ASSERT_NE(renewed_chain, nullptr);
  EXPECT_EQ(renewed_chain->subject, "/CN=renewed");
  EXPECT_GE(renewed_chain->unix_seconds, *made_at_ + 10 * kDay - 5);
  EXPECT_LE(renewed_chain->unix_seconds, now + 10 * kDay + 5);
  const absl::Time chain_end = absl::FromUnixSeconds(renewed_chain->unix_seconds);

  // 9.5 days before the chain's end, both it and the CA (20.5 days left) are within 30 days.
  const ExpiryReport soon =
      ReportExpiries(renewed, chain_end - absl::Hours(24 * 9.5), absl::Hours(24 * 30));
  ASSERT_EQ(soon.warnings.size(), 2u);
  EXPECT_TRUE(absl::StrContains(soon.warnings[0], "/CN=renewed of this node's chain expires at"))
      << soon.warnings[0];
  EXPECT_TRUE(absl::StrContains(soon.warnings[0], "in 9.5 days")) << soon.warnings[0];
  EXPECT_TRUE(absl::StrContains(soon.warnings[1], "/CN=next-ca of --tls_ca expires at"))
      << soon.warnings[1];
  // Within 7 days of neither: nothing to say, and a stage of its own.
  const ExpiryReport quiet =
      ReportExpiries(renewed, chain_end - absl::Hours(24 * 9.5), absl::Hours(24 * 7));
  EXPECT_TRUE(quiet.warnings.empty());
  EXPECT_NE(quiet.stage, soon.stage);
  // The stage stays put while nothing enters the window or expires, so a node that checks every
  // second logs a change at once and is quiet otherwise.
  EXPECT_EQ(ReportExpiries(renewed, chain_end - absl::Hours(24 * 9), absl::Hours(24 * 30)).stage,
            soon.stage);
  EXPECT_EQ(ReportExpiries(renewed, chain_end - absl::Hours(24 * 9), absl::Hours(24 * 7)).stage,
            quiet.stage);
  // Once the chain has ended, it says so even with no warning window.
  const ExpiryReport expired =
      ReportExpiries(renewed, chain_end + absl::Seconds(1), absl::ZeroDuration());
  ASSERT_EQ(expired.warnings.size(), 1u);
  EXPECT_TRUE(absl::StrContains(expired.warnings[0], "/CN=renewed of this node's chain expired at"))
      << expired.warnings[0];
  EXPECT_NE(expired.stage, quiet.stage);
  EXPECT_TRUE(ReportExpiries(TlsConfig(), absl::Now(), absl::Hours(24 * 30)).warnings.empty());

  auto with_clients = LoadNodeTls({Path("node.pem"), Path("node.key"), Path("ca.pem")}, "--tls_",
                                  Path("clients.pem"));
  ASSERT_TRUE(with_clients.ok()) << with_clients.status();
  const CertificateExpiry* client_ca = ClientCaExpiry(*with_clients);
  ASSERT_NE(client_ca, nullptr);
  EXPECT_EQ(client_ca->subject, "/CN=clients");
  bool warned_of_clients = false;
  for (const std::string& warning :
       ReportExpiries(*with_clients, absl::Now(), absl::Hours(24 * 30)).warnings) {
    warned_of_clients |= absl::StrContains(warning, "/CN=clients of --tls_client_ca expires at") &&
                         absl::StrContains(warning, "clients whose certificates only it signed");
  }
  EXPECT_TRUE(warned_of_clients);

  Cluster cluster(3);
  cluster.options(0).tls = outlived;
  cluster.options(1).tls = *with_clients;
  cluster.StartAll();  // n3 serves plaintext
  auto status_of = [&](const std::shared_ptr<grpc::Channel>& channel) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    mergedb::v1::StatusResponse status;
    grpc::Status called = mergedb::v1::ClusterService::NewStub(channel)->Status(
        &context, mergedb::v1::StatusRequest(), &status);
    EXPECT_TRUE(called.ok()) << called.error_message();
    return status;
  };
  const mergedb::v1::StatusResponse n1 = status_of(ClientChannel(cluster.Address(0)));
  ASSERT_TRUE(n1.has_tls());
  EXPECT_EQ(n1.tls().expires_unix_seconds(), outlived_chain->unix_seconds);
  EXPECT_EQ(n1.tls().expiring_subject(), "/CN=ca");
  EXPECT_FALSE(n1.tls().client_certificates_required());
  EXPECT_EQ(n1.tls().client_ca_expires_unix_seconds(), 0);
  const mergedb::v1::StatusResponse n2 =
      status_of(ClientChannel(cluster.Address(1), "ca.pem", "app"));
  EXPECT_TRUE(n2.tls().client_certificates_required());
  EXPECT_EQ(n2.tls().client_ca_expires_unix_seconds(), client_ca->unix_seconds);
  EXPECT_EQ(n2.tls().client_ca_expiring_subject(), "/CN=clients");
  EXPECT_FALSE(
      status_of(grpc::CreateChannel(cluster.Address(2), grpc::InsecureChannelCredentials()))
          .has_tls());
}

// A change of CA without downtime, by rolling restarts (README, "Renewing certificates"): every
// node first trusts both CAs, then takes a certificate of the new one, then stops trusting the
// old. At every step the links carry the writes, and none is lost.
TEST_F(TlsTest, ACaIsReplacedByRollingRestartsAndNoWriteIsLost) {
  Cluster cluster(2);
  for (int i = 0; i < 2; ++i) cluster.options(i).tls = NodeTls("node", "ca");
  cluster.StartAll();
  int64_t total = 0;
  auto write_on_both = [&](const std::string& ca, const std::string& step) {
    WriteOnBoth(cluster, ca, step, &total);
  };
  auto restart = [&](int i, const std::string& identity, const std::string& ca) {
    cluster.Stop(i);
    cluster.options(i).tls = NodeTls(identity, ca);
    cluster.Start(i);
  };
  write_on_both("ca.pem", "before");
  for (int i = 0; i < 2; ++i) restart(i, "node", "both-cas");
  write_on_both("ca.pem", "both trusted");
  restart(1, "renewed", "both-cas");
  write_on_both("both-cas.pem", "n2 renewed");
  // A client that trusts only the old CA no longer reaches n2.
  EXPECT_EQ(Update(ClientChannel(cluster.Address(1), "ca.pem").get(), IncrementDoc(1)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  restart(0, "renewed", "next-ca");
  restart(1, "renewed", "next-ca");
  write_on_both("next-ca.pem", "old CA gone");
  EXPECT_EQ(total, 8);
}

// The same change of CA with no restart: each node's files are replaced and reloaded (as the
// janitor does every --tls_reload_interval_s, or SIGHUP at once), and files that fail the
// start-up checks are refused while the node goes on with the certificates it has.
TEST_F(TlsTest, CertificatesAndCasAreReplacedWithoutARestart) {
  Cluster cluster(2);
  // Each node's files, as an operator's deployment would replace them.
  auto place = [&](int i, const std::string& identity, const std::string& ca) {
    const std::string prefix = Path(absl::StrCat("live", i));
    std::filesystem::copy_file(Path(identity + ".pem"), prefix + ".pem",
                               std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(Path(identity + ".key"), prefix + ".key",
                               std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(Path(ca + ".pem"), prefix + "-ca.pem",
                               std::filesystem::copy_options::overwrite_existing);
  };
  for (int i = 0; i < 2; ++i) {
    place(i, "node", "ca");
    auto tls =
        LoadNodeTls({Path(absl::StrCat("live", i, ".pem")), Path(absl::StrCat("live", i, ".key")),
                     Path(absl::StrCat("live", i, "-ca.pem"))},
                    "--tls_");
    ASSERT_TRUE(tls.ok()) << tls.status();
    cluster.options(i).tls = *tls;
    cluster.options(i).tls_reload_interval = absl::ZeroDuration();  // the test reloads
  }
  cluster.StartAll();
  auto reload = [&](int i, bool changed) {
    absl::StatusOr<bool> reloaded = cluster.node(i)->ReloadTls();
    ASSERT_TRUE(reloaded.ok()) << reloaded.status();
    EXPECT_EQ(*reloaded, changed) << "n" << i + 1;
  };
  // Whether a new connection to node i, trusting `ca`, can write (gRPC takes a reloaded
  // certificate within LiveTls::kRefreshSeconds: bounded retries until it is so). Only a
  // failed connection (UNAVAILABLE: the handshake) counts as not reaching it.
  auto reaches = [&](int i, const std::string& ca, bool expected) {
    bool ok = !expected;
    for (int attempt = 0; attempt < 100 && ok != expected; ++attempt) {
      if (attempt > 0) absl::SleepFor(absl::Milliseconds(50));
      const grpc::Status status =
          Update(ClientChannel(cluster.Address(i), ca).get(), IncrementDoc(0));
      EXPECT_TRUE(status.ok() || status.error_code() == grpc::StatusCode::UNAVAILABLE)
          << status.error_message();
      ok = status.error_code() != grpc::StatusCode::UNAVAILABLE;
    }
    return ok;
  };
  // A member's connection made now, with a certificate of the first CA, stays open throughout.
  const std::shared_ptr<grpc::Channel> old_connection =
      ClientChannel(cluster.Address(0), "both-cas.pem", "node");
  bool answered = false;
  HelloAsN2(old_connection, &answered);
  ASSERT_TRUE(answered);
  int64_t total = 0;
  auto write_on_both = [&](const std::string& ca, const std::string& step) {
    WriteOnBoth(cluster, ca, step, &total);
  };
  write_on_both("ca.pem", "before");
  reload(0, false);

  for (int i = 0; i < 2; ++i) {
    place(i, "node", "both-cas");
    reload(i, true);
  }
  write_on_both("ca.pem", "both trusted");

  place(1, "renewed", "both-cas");
  reload(1, true);
  EXPECT_TRUE(reaches(1, "next-ca.pem", true)) << "n2 presents its renewed certificate";
  EXPECT_FALSE(reaches(1, "ca.pem", false)) << "...which the old CA did not sign";
  // Links already open keep their connections; a new one (after a peer's restart or a network
  // failure) presents the renewed certificate, which n1 accepts as a member's.
  answered = false;
  HelloAsN2(ClientChannel(cluster.Address(0), "both-cas.pem", "renewed"), &answered);
  EXPECT_TRUE(answered);
  write_on_both("both-cas.pem", "n2 renewed");

  // A mistake in a renewal: n1's new certificate with another node's key. Refused, logged and
  // reported; n1 goes on with what it has.
  place(0, "renewed", "next-ca");
  std::filesystem::copy_file(Path("impostor.key"), Path("live0.key"),
                             std::filesystem::copy_options::overwrite_existing);
  absl::StatusOr<bool> refused = cluster.node(0)->ReloadTls();
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "--tls_key")) << refused.status();
  mergedb::v1::StatusResponse status;
  {
    auto cluster_stub =
        mergedb::v1::ClusterService::NewStub(ClientChannel(cluster.Address(0), "both-cas.pem"));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ASSERT_TRUE(cluster_stub->Status(&context, mergedb::v1::StatusRequest(), &status).ok());
  }
  EXPECT_EQ(status.tls().reload_error(), refused.status().message());
  // Still the first certificate's chain (whose end is /CN=node's or the CA's, made in the same
  // second or so), not the renewed one's.
  EXPECT_NE(status.tls().expiring_subject(), "/CN=renewed");
  EXPECT_EQ(status.tls().loaded_unix_seconds(),
            absl::ToUnixSeconds(cluster.node(0)->live_tls()->loaded_at()));
  EXPECT_EQ(cluster.node(0)->live_tls()->current()->cert_pem, Contents("node.pem"));
  // Past gRPC's next read of the copies, new connections still get the first certificate.
  absl::SleepFor(absl::Seconds(LiveTls::kRefreshSeconds) + absl::Milliseconds(500));
  EXPECT_TRUE(reaches(0, "ca.pem", true)) << "n1 still presents its first certificate";
  EXPECT_EQ(cluster.node(0)->ReloadTls().status().message(), refused.status().message())
      << "refused again while the files stay as they are";

  // Fixed: taken, and the error is gone.
  place(0, "renewed", "next-ca");
  reload(0, true);
  EXPECT_EQ(cluster.node(0)->live_tls()->reload_error(), "");
  EXPECT_EQ(cluster.node(0)->live_tls()->current()->ca_pem, Contents("next-ca.pem"));
  place(1, "renewed", "next-ca");
  reload(1, true);
  EXPECT_FALSE(reaches(0, "ca.pem", false)) << "n1 now presents its renewed certificate";
  write_on_both("next-ca.pem", "old CA gone");
  // n1 no longer trusts the old CA: a member's certificate it signed opens no new link.
  for (const auto& [identity, member] : {std::pair{"renewed", true}, std::pair{"node", false}}) {
    answered = false;
    HelloAsN2(ClientChannel(cluster.Address(0), "next-ca.pem", identity), &answered);
    EXPECT_EQ(answered, member) << identity;
  }
  // ...nor on the connection made before the change, which the handshake no longer judges.
  answered = false;
  const grpc::Status stale = HelloAsN2(old_connection, &answered);
  EXPECT_FALSE(answered);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::PERMISSION_DENIED) << stale.error_message();
  EXPECT_EQ(total, 8);
}

// Revocation (--tls_crl_dir): lists are checked like the other files, and a certificate a list
// revokes opens no connection either way, from the moment a reload reads the list.
TEST_F(TlsTest, ARevokedCertificateOpensNoConnectionOnceItsListIsRead) {
  MakeRevocationLists();
  // A directory holding exactly `lists` (files of the suite's directory).
  auto crl_dir = [&](const std::string& name, const std::vector<std::string>& lists) {
    const std::string path = Path(name);
    std::filesystem::remove_all(path);
    std::filesystem::create_directory(path);
    for (const std::string& list : lists) {
      std::filesystem::copy_file(Path(list), path + "/" + list);
    }
    return path;
  };
  auto load = [&](const std::string& identity, const std::string& crls) {
    return LoadNodeTls({Path(identity + ".pem"), Path(identity + ".key"), Path("ca.pem"), crls},
                       "--tls_");
  };
  for (const auto& [lists, identity, error] :
       {std::tuple{std::vector<std::string>{"not.pem"}, "node", "no PEM revocation list"},
        std::tuple{std::vector<std::string>{"crl-other.pem"}, "node",
                   "revocation list of /CN=other-ca is not signed by a CA"},
        std::tuple{std::vector<std::string>{"crl-stale.pem"}, "node", "is past its next update"},
        std::tuple{std::vector<std::string>{"crl-future.pem"}, "node", "is not valid yet"},
        std::tuple{std::vector<std::string>{"crl-doomed.pem"}, "doomed",
                   "revokes this node's own certificate"}}) {
    auto refused = load(identity, crl_dir("crl-check", lists));
    ASSERT_FALSE(refused.ok()) << lists[0];
    EXPECT_TRUE(absl::StrContains(refused.status().message(), error)) << refused.status();
    EXPECT_TRUE(absl::StrContains(refused.status().message(), "--tls_crl_dir="))
        << refused.status();
  }
  EXPECT_TRUE(absl::StrContains(load("node", Path("no-such-dir")).status().message(),
                                "cannot read the directory"));
  // A good list followed by one cut short: the file is refused, not read up to the cut.
  std::ofstream(Path("crl-cut.pem"))
      << Contents("crl-none.pem") << "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n";
  EXPECT_TRUE(
      absl::StrContains(load("node", crl_dir("crl-check", {"crl-cut.pem"})).status().message(),
                        "revocation list 2 in it does not parse"));
  auto empty = load("node", crl_dir("crl-check", {}));
  ASSERT_TRUE(empty.ok()) << "a directory without lists yet: " << empty.status();
  // A list lives days: its warning comes in the last quarter of its life, not a month ahead.
  const auto none = load("node", crl_dir("crl-check", {"crl-none.pem"}));
  ASSERT_TRUE(none.ok()) << none.status();
  const auto list = std::find_if(none->expiries.begin(), none->expiries.end(), [](const auto& e) {
    return e.kind == CertificateExpiry::Kind::kCrl;
  });
  ASSERT_NE(list, none->expiries.end());
  const absl::Time next_update = absl::FromUnixSeconds(list->unix_seconds);  // issued + 2 days
  auto warns_of_list = [&](absl::Time at) {
    for (const std::string& warning : ReportExpiries(*none, at, absl::Hours(24 * 30)).warnings) {
      if (absl::StrContains(warning, "revocation list of /CN=ca")) return true;
    }
    return false;
  };
  EXPECT_FALSE(warns_of_list(next_update - absl::Hours(24)));
  EXPECT_TRUE(warns_of_list(next_update - absl::Hours(6)));

  // A node whose list revokes nothing yet (n2, a member, stays down: HelloAsN2 speaks as it).
  Cluster cluster(2);
  auto tls = load("node", crl_dir("crl-live", {"crl-none.pem"}));
  ASSERT_TRUE(tls.ok()) << tls.status();
  ASSERT_EQ(tls->crls.size(), 1u);
  cluster.options(0).tls = *tls;
  cluster.options(0).tls_reload_interval = absl::ZeroDuration();
  cluster.Start(0);
  auto member_gets_in = [&](const std::string& identity) {
    bool answered = false;
    HelloAsN2(ClientChannel(cluster.Address(0), "ca.pem", identity), &answered);
    return answered;
  };
  // Whether the TLS handshake itself lets `identity` in, as seen by a client call on a new
  // connection, once gRPC has read the copies (bounded retries until `expected`).
  auto handshake_admits = [&](const std::string& identity, bool expected) {
    bool admitted = !expected;
    for (int attempt = 0; attempt < 100 && admitted != expected; ++attempt) {
      if (attempt > 0) absl::SleepFor(absl::Milliseconds(50));
      admitted =
          Update(ClientChannel(cluster.Address(0), "ca.pem", identity).get(), IncrementDoc(0))
              .error_code() != grpc::StatusCode::UNAVAILABLE;
    }
    return admitted;
  };
  EXPECT_TRUE(member_gets_in("doomed"));
  EXPECT_TRUE(handshake_admits("doomed", true));
  const std::shared_ptr<grpc::Channel> doomed_connection =
      ClientChannel(cluster.Address(0), "ca.pem", "doomed");
  bool answered = false;
  HelloAsN2(doomed_connection, &answered);
  ASSERT_TRUE(answered);
  // Its CA's next list revokes it: a second list of the same issuer, which OpenSSL must load
  // over the one it has cached.
  crl_dir("crl-live", {"crl-doomed.pem"});
  absl::StatusOr<bool> reloaded = cluster.node(0)->ReloadTls();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_TRUE(*reloaded);
  bool shut_out = false;
  for (int attempt = 0; attempt < 100 && !shut_out; ++attempt) {
    if (attempt > 0) absl::SleepFor(absl::Milliseconds(50));
    shut_out = !member_gets_in("doomed");
  }
  EXPECT_TRUE(shut_out) << "the revoked member still opens streams";
  EXPECT_FALSE(handshake_admits("doomed", false)) << "gRPC's handshake did not read the new list";
  EXPECT_TRUE(member_gets_in("node")) << "other members still do";
  // Nor on the connection it made before the list: each stream checks the lists in use.
  answered = false;
  const grpc::Status stale = HelloAsN2(doomed_connection, &answered);
  EXPECT_FALSE(answered);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::PERMISSION_DENIED) << stale.error_message();
  EXPECT_TRUE(absl::StrContains(stale.error_message(), "revoked")) << stale.error_message();

  // A list taken out of the directory is lifted at the next reload (gRPC starts a fresh
  // store: OpenSSL's would have kept every list it had loaded).
  crl_dir("crl-live", {});
  reloaded = cluster.node(0)->ReloadTls();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_TRUE(*reloaded);
  EXPECT_TRUE(handshake_admits("doomed", true)) << "the removed list still holds";
  EXPECT_TRUE(member_gets_in("doomed"));
  crl_dir("crl-live", {"crl-doomed.pem"});

  // And this node opens no link to a peer whose certificate is revoked.
  Cluster pair(2);
  pair.options(0).tls = *load("node", Path("crl-live"));
  pair.options(1).tls = NodeTls("doomed");
  pair.StartAll();
  EXPECT_TRUE(absl::StrContains(AwaitLinkDown(ClientChannel(pair.Address(0))), "TLS handshake"))
      << "n1 kept a link to a peer whose certificate is revoked";
}

// A connection made before a revocation keeps working until it closes: --max_connection_age_s
// bounds that. n1 closes its connections after a second, n2 never; both take the same list.
TEST_F(TlsTest, AMaximumConnectionAgeEndsWhatARevokedCertificateOpenedBefore) {
  MakeRevocationLists();
  const std::string crls = Path("crl-aged");
  std::filesystem::remove_all(crls);
  std::filesystem::create_directory(crls);
  Cluster cluster(2);
  for (int i = 0; i < 2; ++i) {
    auto tls = LoadNodeTls({Path("node.pem"), Path("node.key"), Path("ca.pem"), crls}, "--tls_");
    ASSERT_TRUE(tls.ok()) << tls.status();
    cluster.options(i).tls = *tls;
    cluster.options(i).tls_reload_interval = absl::ZeroDuration();
  }
  cluster.options(0).max_connection_age = absl::Seconds(1);
  cluster.StartAll();
  std::vector<std::shared_ptr<grpc::Channel>> doomed;
  for (int i = 0; i < 2; ++i) {
    doomed.push_back(ClientChannel(cluster.Address(i), "ca.pem", "doomed"));
    ASSERT_TRUE(Update(doomed[i].get(), IncrementDoc(1)).ok()) << "n" << i + 1;
  }
  std::filesystem::copy_file(Path("crl-doomed.pem"), crls + "/crl-doomed.pem");
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<bool> reloaded = cluster.node(i)->ReloadTls();
    ASSERT_TRUE(reloaded.ok() && *reloaded) << reloaded.status();
  }
  // Within about two ages (GOAWAY, the calls' grace, a reconnect that fails its handshake),
  // n1's old connection is gone and the new one refused; n2's goes on.
  grpc::Status aged;
  for (int attempt = 0; attempt < 100; ++attempt) {
    aged = Update(doomed[0].get(), IncrementDoc(0));
    if (aged.error_code() == grpc::StatusCode::UNAVAILABLE) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(aged.error_code(), grpc::StatusCode::UNAVAILABLE) << aged.error_message();
  const grpc::Status kept = Update(doomed[1].get(), IncrementDoc(0));
  EXPECT_TRUE(kept.ok()) << "without an age limit the old connection stays: "
                         << kept.error_message();
  // The members' links to n1 came back through the limit: writes still replicate.
  ASSERT_TRUE(
      Update(ClientChannel(cluster.Address(0), "ca.pem", "node").get(), IncrementDoc(5)).ok());
  EXPECT_EQ(AwaitCounter(ClientChannel(cluster.Address(1), "ca.pem", "node").get(), 7), 7);
}

}  // namespace
}  // namespace mergedb::node
