// DocumentService and ClusterService through a real gRPC client against an in-process node.
#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/impl/client_unary_call.h"
#include "tests/node/node_test_util.h"

namespace mergedb::node {
namespace {

using mergedb::v1::GetRequest;
using mergedb::v1::GetResponse;
using mergedb::v1::UpdateRequest;
using mergedb::v1::UpdateResponse;
using testing::AddOp;
using testing::CounterIn;
using testing::Incr;
using testing::NodeTest;
using testing::SetStr;
using testing::UpdateOf;

class DocumentServiceTest : public NodeTest {};

TEST_F(DocumentServiceTest, UpdateThenGetShowsJsonAndTypedViews) {
  StartNode();
  UpdateRequest request = UpdateOf("users", "ada");
  SetStr(&request, {"name"}, "Ada");
  Incr(&request, {"stats", "visits"}, (int64_t{1} << 60) + 1);
  auto* add = AddOp(&request, {"tags"})->mutable_add();
  add->add_elements()->set_int_value(1);
  add->add_elements()->set_double_value(1.0);
  AddOp(&request, {"active"})->mutable_enable();
  UpdateResponse response;
  ASSERT_TRUE(Update(request, &response).ok());
  EXPECT_FALSE(response.version().empty());
  EXPECT_EQ(response.position(), 1u);
  EXPECT_EQ(response.feed(), node_->store()->replica_id());

  GetResponse got = GetOrDie("users", "ada");
  EXPECT_TRUE(got.found());
  EXPECT_EQ(got.version(), response.version());
  const auto& fields = got.value().struct_value().fields();
  EXPECT_EQ(fields.at("name").string_value(), "Ada");
  EXPECT_TRUE(fields.at("active").bool_value());
  // Beyond 2^53 the JSON view keeps the counter exact as a string; the typed view is an int64.
  EXPECT_EQ(fields.at("stats").struct_value().fields().at("visits").string_value(),
            "1152921504606846977");
  EXPECT_EQ(fields.at("tags").list_value().values_size(), 2);  // int 1 and double 1.0
  bool saw_counter = false;
  for (const auto& field : got.fields()) {
    if (field.name() == "stats") {
      EXPECT_EQ(field.value().map().fields(0).value().counter(), (int64_t{1} << 60) + 1);
      saw_counter = true;
    }
  }
  EXPECT_TRUE(saw_counter);
}

TEST_F(DocumentServiceTest, GetOfAMissingDocumentIsNotFound) {
  StartNode();
  GetResponse got = GetOrDie("users", "nobody");
  EXPECT_FALSE(got.found());
  EXPECT_TRUE(got.fields().empty());
}

TEST_F(DocumentServiceTest, GetWithAPathReadsOneField) {
  StartNode();
  UpdateRequest request = UpdateOf("c", "d");
  SetStr(&request, {"address", "city"}, "Lyon");
  SetStr(&request, {"address", "zip"}, "69001");
  SetStr(&request, {"other"}, "x");
  ASSERT_TRUE(Update(request).ok());
  GetRequest get;
  get.set_collection("c");
  get.set_id("d");
  get.add_path("address");
  get.add_path("city");
  GetResponse got;
  ASSERT_TRUE(Get(get, &got).ok());
  EXPECT_EQ(got.value().string_value(), "Lyon");
  ASSERT_EQ(got.fields_size(), 1);
  EXPECT_EQ(got.fields(0).name(), "city");
  get.set_path(1, "absent");
  ASSERT_TRUE(Get(get, &got).ok());
  EXPECT_EQ(got.value().kind_case(), google::protobuf::Value::kNullValue);
  EXPECT_EQ(got.fields_size(), 0);
}

TEST_F(DocumentServiceTest, GetAfterATokenWaitsForItThenTimesOut) {
  StartNode();
  UpdateRequest request = UpdateOf("c", "d");
  Incr(&request, {"n"}, 1);
  UpdateResponse response;
  ASSERT_TRUE(Update(request, &response).ok());
  GetRequest get;
  get.set_collection("c");
  get.set_id("d");
  get.set_after(response.version());
  GetResponse got;
  ASSERT_TRUE(Get(get, &got).ok());
  EXPECT_EQ(CounterIn(got, "n"), 1);
  // A token covering a write this node never received: the read waits for its deadline.
  crdt::CausalContext future;
  future.Add({0x1234, 1});
  get.set_after(EncodeVersionToken(future));
  grpc::Status status = Get(get, &got, 300);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
}

TEST_F(DocumentServiceTest, DeleteLeavesNothingVisibleAndAcceptsABaseVersion) {
  StartNode();
  UpdateRequest request = UpdateOf("c", "d");
  SetStr(&request, {"name"}, "x");
  UpdateResponse first;
  ASSERT_TRUE(Update(request, &first).ok());
  // A field written after the read the delete is based on survives it.
  UpdateRequest later = UpdateOf("c", "d");
  SetStr(&later, {"email"}, "e");
  ASSERT_TRUE(Update(later).ok());
  mergedb::v1::DeleteRequest del;
  del.set_collection("c");
  del.set_id("d");
  del.set_base_version(first.version());
  grpc::ClientContext context;
  Deadline(&context);
  UpdateResponse deleted;
  ASSERT_TRUE(docs_->Delete(&context, del, &deleted).ok());
  GetResponse got = GetOrDie("c", "d");
  EXPECT_TRUE(got.found());
  EXPECT_EQ(got.value().struct_value().fields().size(), 1u);
  EXPECT_TRUE(got.value().struct_value().fields().contains("email"));
  // Without a base version the delete removes everything this node holds.
  del.clear_base_version();
  grpc::ClientContext context2;
  Deadline(&context2);
  ASSERT_TRUE(docs_->Delete(&context2, del, &deleted).ok());
  EXPECT_FALSE(GetOrDie("c", "d").found());
}

// An update is applied in order: with a base version, a later operation supersedes what the
// earlier ones of the same update wrote, as it does without one, while it still leaves alone
// what arrived after the read it is based on.
TEST_F(DocumentServiceTest, WithABaseVersionLaterOperationsSupersedeEarlierOnesOfTheSameUpdate) {
  StartNode();
  UpdateRequest seed = UpdateOf("c", "d");
  SetStr(&seed, {"keep"}, "x");
  UpdateResponse read;
  ASSERT_TRUE(Update(seed, &read).ok());
  UpdateRequest concurrent = UpdateOf("c", "d");
  AddOp(&concurrent, {"flag"})->mutable_enable();
  ASSERT_TRUE(Update(concurrent).ok());

  UpdateRequest request = UpdateOf("c", "d");
  request.set_base_version(read.version());
  AddOp(&request, {"tags"})->mutable_add()->add_elements()->set_string_value("t");
  AddOp(&request, {"tags"})->mutable_remove()->add_elements()->set_string_value("t");
  AddOp(&request, {"flag"})->mutable_enable();
  AddOp(&request, {"flag"})->mutable_disable();
  AddOp(&request, {"own_flag"})->mutable_enable();
  AddOp(&request, {"own_flag"})->mutable_disable();
  SetStr(&request, {"name"}, "first");
  SetStr(&request, {"name"}, "second");
  SetStr(&request, {"gone", "inner"}, "v");
  AddOp(&request, {"gone"})->mutable_remove_field();
  ASSERT_TRUE(Update(request).ok());

  const GetResponse got = GetOrDie("c", "d");
  const auto& fields = got.value().struct_value().fields();
  if (fields.contains("tags")) {
    EXPECT_EQ(fields.at("tags").list_value().values_size(), 0);
  }
  EXPECT_FALSE(fields.contains("gone"));
  ASSERT_TRUE(fields.contains("own_flag"));
  EXPECT_FALSE(fields.at("own_flag").bool_value());
  EXPECT_EQ(fields.at("name").string_value(), "second");
  EXPECT_EQ(got.conflicts_size(), 0) << "one update's two sets are not concurrent";
  // The enable that arrived after the read survives this update's disable (enable wins over a
  // disable that did not observe it), as the base version asks; the update's own enable does not.
  EXPECT_TRUE(fields.at("flag").bool_value());
  EXPECT_EQ(fields.at("keep").string_value(), "x");
}

// Each Watch stream holds a server thread while it lasts: past --max_watch_streams a new one
// is RESOURCE_EXHAUSTED (one client could otherwise starve every other call of threads), and
// health Watch streams have a cap of their own. A stream that ends frees its place.
TEST_F(DocumentServiceTest, WatchStreamsPastTheCapAreRefusedAndAnEndedOneFreesItsPlace) {
  NodeOptions options = Options();
  options.max_watch_streams = 2;
  StartNode(options);
  mergedb::v1::WatchRequest watch;
  watch.set_collection("c");
  watch.set_from_now(true);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<mergedb::v1::WatchEvent>>> readers;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(docs_->Watch(contexts.back().get(), watch));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // both are being served
  grpc::ClientContext third_context;
  Deadline(&third_context);
  auto third = docs_->Watch(&third_context, watch);
  mergedb::v1::WatchEvent event;
  EXPECT_FALSE(third->Read(&event));
  const grpc::Status refused = third->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "--max_watch_streams"))
      << refused.error_message();
  // The health service counts its own.
  auto health = grpc::health::v1::Health::NewStub(channel_);
  std::vector<std::unique_ptr<grpc::ClientContext>> health_contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<grpc::health::v1::HealthCheckResponse>>> healths;
  grpc::health::v1::HealthCheckResponse serving;
  for (int i = 0; i < 2; ++i) {
    health_contexts.push_back(std::make_unique<grpc::ClientContext>());
    healths.push_back(health->Watch(health_contexts.back().get(), {}));
    ASSERT_TRUE(healths.back()->Read(&serving));  // the current status comes at once
  }
  grpc::ClientContext third_health_context;
  Deadline(&third_health_context);
  auto third_health = health->Watch(&third_health_context, {});
  EXPECT_FALSE(third_health->Read(&serving));
  EXPECT_EQ(third_health->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // One Watch ends: a new one is served and sees a write.
  contexts[0]->TryCancel();
  (void)readers[0]->Finish();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the server noticed
  grpc::ClientContext again_context;
  Deadline(&again_context);
  auto again = docs_->Watch(&again_context, watch);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  UpdateRequest write = UpdateOf("c", "d");
  Incr(&write, {"n"}, 1);
  ASSERT_TRUE(Update(write).ok());
  ASSERT_TRUE(again->Read(&event)) << again->Finish().error_message();
  EXPECT_EQ(event.id(), "d");
  again_context.TryCancel();
  (void)again->Finish();
  contexts[1]->TryCancel();
  (void)readers[1]->Finish();
  for (size_t i = 0; i < healths.size(); ++i) {
    health_contexts[i]->TryCancel();
    (void)healths[i]->Finish();
  }
}

TEST_F(DocumentServiceTest, ListPagesInIdOrderAndRejectsMalformedTokens) {
  StartNode();
  for (int i = 0; i < 7; ++i) {
    UpdateRequest request = UpdateOf("c", "doc" + std::to_string(i));
    Incr(&request, {"n"}, i);
    ASSERT_TRUE(Update(request).ok());
  }
  std::vector<std::string> ids;
  std::string token;
  for (int pages = 0; pages < 10; ++pages) {
    mergedb::v1::ListRequest list;
    list.set_collection("c");
    list.set_page_size(3);
    list.set_page_token(token);
    mergedb::v1::ListResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    ASSERT_TRUE(docs_->List(&context, list, &response).ok());
    for (const auto& doc : response.documents()) ids.push_back(doc.id());
    token = response.next_page_token();
    if (token.empty()) break;
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"doc0", "doc1", "doc2", "doc3", "doc4", "doc5",
                                            "doc6"}));
  mergedb::v1::ListRequest bad;
  bad.set_collection("c");
  bad.set_page_token("%%%");
  mergedb::v1::ListResponse response;
  grpc::ClientContext context;
  Deadline(&context);
  grpc::Status status = docs_->List(&context, bad, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "page_token"));
  bad.set_page_token("");
  bad.set_page_size(5000);
  grpc::ClientContext context2;
  Deadline(&context2);
  EXPECT_EQ(docs_->List(&context2, bad, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(DocumentServiceTest, WatchDeliversEveryChangeInOrderAndResumes) {
  StartNode();
  auto write = [&](const std::string& id, int64_t by) {
    UpdateRequest request = UpdateOf("feed", id);
    Incr(&request, {"n"}, by);
    ASSERT_TRUE(Update(request).ok());
  };
  write("a", 1);
  write("b", 1);
  UpdateRequest other = UpdateOf("elsewhere", "x");  // another collection: filtered out
  Incr(&other, {"n"}, 1);
  ASSERT_TRUE(Update(other).ok());
  write("a", 1);

  mergedb::v1::WatchRequest watch;
  watch.set_collection("feed");
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto reader = docs_->Watch(&context, watch);
  std::vector<std::pair<uint64_t, std::string>> seen;
  mergedb::v1::WatchEvent event;
  while (seen.size() < 3 && reader->Read(&event)) seen.emplace_back(event.position(), event.id());
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], (std::pair<uint64_t, std::string>{1, "a"}));
  EXPECT_EQ(seen[1], (std::pair<uint64_t, std::string>{2, "b"}));
  EXPECT_EQ(seen[2], (std::pair<uint64_t, std::string>{4, "a"}));
  // A live change arrives on the open stream.
  write("b", 5);
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.position(), 5u);
  EXPECT_EQ(event.value().struct_value().fields().at("n").number_value(), 6);
  context.TryCancel();
  (void)reader->Finish();

  // Resume after position 2, one document only.
  watch.set_after_position(2);
  watch.set_id("a");
  grpc::ClientContext resume;
  Deadline(&resume, 10000);
  auto resumed = docs_->Watch(&resume, watch);
  ASSERT_TRUE(resumed->Read(&event));
  EXPECT_EQ(event.position(), 4u);
  EXPECT_EQ(event.id(), "a");
  resume.TryCancel();
  (void)resumed->Finish();

  // The newest position is a valid place to resume: the stream waits for what comes next.
  watch.set_after_position(5);
  {
    grpc::ClientContext newest;
    Deadline(&newest, 300);
    auto waiting = docs_->Watch(&newest, watch);
    EXPECT_FALSE(waiting->Read(&event));
    EXPECT_EQ(waiting->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // A position this node never gave (past its newest change: another node's, or from before
  // a restore) is refused rather than waited for.
  watch.set_after_position(6);
  grpc::ClientContext ahead;
  Deadline(&ahead, 10000);
  auto refused = docs_->Watch(&ahead, watch);
  EXPECT_FALSE(refused->Read(&event));
  const grpc::Status status = refused->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "past this node's newest change"))
      << status.error_message();
}

TEST_F(DocumentServiceTest, UpdateStreamAnswersPipelinedUpdatesInOrderAndOutlivesAClientThatLeaves) {
  StartNode();
  {
    grpc::ClientContext context;
    Deadline(&context, 10000);
    auto stream = docs_->UpdateStream(&context);
    // 300 updates in flight at once: the node applies them in batches, answering in order.
    for (int i = 0; i < 300; ++i) {
      UpdateRequest request = UpdateOf("p", "doc" + std::to_string(i % 7));
      request.set_request_id("p" + std::to_string(i));
      Incr(&request, {"n"}, 1);
      ASSERT_TRUE(stream->Write(request));
    }
    stream->WritesDone();
    UpdateResponse response;
    int answered = 0;
    uint64_t last_position = 0;
    while (stream->Read(&response)) {
      EXPECT_EQ(response.code(), 0) << response.message();
      EXPECT_EQ(response.request_id(), "p" + std::to_string(answered));
      EXPECT_GT(response.position(), last_position);
      last_position = response.position();
      ++answered;
    }
    EXPECT_TRUE(stream->Finish().ok());
    EXPECT_EQ(answered, 300);
  }
  int64_t total = 0;
  for (int d = 0; d < 7; ++d) total += CounterIn(GetOrDie("p", "doc" + std::to_string(d)), "n");
  EXPECT_EQ(total, 300);
  {
    // A client that sends and vanishes without reading: the node drops the stream and serves on.
    grpc::ClientContext context;
    auto stream = docs_->UpdateStream(&context);
    for (int i = 0; i < 2000; ++i) {
      UpdateRequest request = UpdateOf("p", "gone");
      Incr(&request, {"n"}, 1);
      if (!stream->Write(request)) break;
    }
    context.TryCancel();
  }
  UpdateRequest request = UpdateOf("p", "after");
  Incr(&request, {"n"}, 1);
  grpc::ClientContext context;
  Deadline(&context, 5000);
  UpdateResponse response;
  EXPECT_TRUE(docs_->Update(&context, request, &response).ok());
}

TEST_F(DocumentServiceTest, UpdateStreamAcknowledgesEachUpdateAndSurvivesABadOne) {
  StartNode();
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto stream = docs_->UpdateStream(&context);
  for (int i = 0; i < 50; ++i) {
    UpdateRequest request = UpdateOf("s", "doc");
    request.set_request_id("r" + std::to_string(i));
    if (i == 10) {
      request.add_ops();  // no operation: refused, the stream goes on
    } else {
      Incr(&request, {"n"}, 1);
    }
    ASSERT_TRUE(stream->Write(request));
  }
  stream->WritesDone();
  UpdateResponse response;
  int ok = 0, failed = 0;
  while (stream->Read(&response)) {
    if (response.code() == 0) {
      ++ok;
    } else {
      ++failed;
      EXPECT_EQ(response.request_id(), "r10");
      EXPECT_EQ(response.code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(ok, 49);
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(CounterIn(GetOrDie("s", "doc"), "n"), 49);
}

// A C++ client sends a string that is not UTF-8 (protobuf only logs it), and the node cannot
// parse that message. The stream must say so: gRPC's own parse would take it for the client
// closing its side and end the stream OK, the message and every later one silently unanswered.
TEST_F(DocumentServiceTest, UpdateStreamEndsWithInvalidArgumentAtAMessageThatDoesNotParse) {
  StartNode();
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto stream = docs_->UpdateStream(&context);
  for (const std::string id : {"a", "b\xff", "c"}) {
    UpdateRequest request = UpdateOf("u", id);
    Incr(&request, {"n"}, 1);
    if (!stream->Write(request)) break;  // the node may end the stream before the last one
  }
  stream->WritesDone();
  UpdateResponse response;
  int answers = 0;
  while (stream->Read(&response)) {
    ++answers;
    EXPECT_EQ(response.code(), 0) << response.message();
  }
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "valid UTF-8")) << status.error_message();
  EXPECT_EQ(answers, 1);
  EXPECT_TRUE(GetOrDie("u", "a").found());
  EXPECT_FALSE(GetOrDie("u", "c").found());
}

TEST_F(DocumentServiceTest, AnUpdateThatDoesNotParseIsInvalidArgument) {
  StartNode();
  UpdateRequest request = UpdateOf("u", "b\xff");
  Incr(&request, {"n"}, 1);
  grpc::Status status = Update(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "valid UTF-8")) << status.error_message();
  request.set_id("b");
  EXPECT_TRUE(Update(request).ok());
}

// One unary call of `method` on `stub`, with a deadline; its answer is dropped.
template <typename Stub, typename Request, typename Response>
grpc::Status CallOnce(Stub* stub,
                      grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                      const Request& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  Response response;
  return (stub->*method)(&context, request, &response);
}

// gRPC's own parse answers a request that does not parse with INTERNAL and no message; every
// method of the API says instead what is wrong with it (node/parsed_requests.h).
TEST_F(DocumentServiceTest, EveryMethodAnswersARequestThatDoesNotParseWithInvalidArgument) {
  StartNode();
  auto expect_refused = [](const grpc::Status& status, const std::string& type) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << type << ": " << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), "does not parse as " + type))
        << status.error_message();
  };
  const std::string not_utf8 = "b\xff";
  {
    mergedb::v1::GetRequest request;
    request.set_collection("u");
    request.set_id(not_utf8);
    GetResponse response;
    grpc::Status status = Get(request, &response);
    expect_refused(status, "mergedb.v1.GetRequest");
    EXPECT_TRUE(absl::StrContains(status.error_message(), "valid UTF-8"));
  }
  {
    mergedb::v1::DeleteRequest request;
    request.set_collection("u");
    request.set_id(not_utf8);
    expect_refused(CallOnce(docs_.get(), &mergedb::v1::DocumentService::Stub::Delete, request),
                   "mergedb.v1.DeleteRequest");
  }
  {
    mergedb::v1::ListRequest request;
    request.set_collection(not_utf8);
    expect_refused(CallOnce(docs_.get(), &mergedb::v1::DocumentService::Stub::List, request),
                   "mergedb.v1.ListRequest");
  }
  {
    mergedb::v1::WatchRequest request;
    request.set_collection(not_utf8);
    grpc::ClientContext context;
    Deadline(&context);
    auto reader = docs_->Watch(&context, request);
    mergedb::v1::WatchEvent event;
    EXPECT_FALSE(reader->Read(&event));
    expect_refused(reader->Finish(), "mergedb.v1.WatchRequest");
  }
  {
    mergedb::v1::BackupRequest request;
    request.set_name(not_utf8);
    expect_refused(CallOnce(cluster_.get(), &mergedb::v1::ClusterService::Stub::Backup, request),
                   "mergedb.v1.BackupRequest");
  }
  {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(not_utf8);
    expect_refused(CallOnce(health.get(), &grpc::health::v1::Health::Stub::Check, request),
                   "grpc.health.v1.HealthCheckRequest");
  }
  // Requests without strings: bytes that end inside a field, as a client with another schema
  // or a broken encoder might send.
  const std::string truncated =
      "\x0a\x05"
      "ab";
  {
    grpc::Slice slice(truncated);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::internal::RpcMethod method("/mergedb.v1.ClusterService/Status",
                                           grpc::internal::RpcMethod::NORMAL_RPC);
    expect_refused(
        grpc::internal::BlockingUnaryCall(channel_.get(), method, &context, request, &response),
        "mergedb.v1.StatusRequest");
  }
  {
    grpc::Slice slice(truncated);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::internal::RpcMethod method("/mergedb.v1.ClusterService/StreamBackup",
                                           grpc::internal::RpcMethod::SERVER_STREAMING);
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel_.get(), method,
                                                                      &context, request));
    grpc::ByteBuffer chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    expect_refused(reader->Finish(), "mergedb.v1.StreamBackupRequest");
  }
  // The node serves on, and the same methods answer requests that parse.
  UpdateRequest update = UpdateOf("u", "b");
  Incr(&update, {"n"}, 1);
  ASSERT_TRUE(Update(update).ok());
  EXPECT_EQ(CounterIn(GetOrDie("u", "b"), "n"), 1);
  grpc::ClientContext context;
  Deadline(&context);
  mergedb::v1::StatusResponse status;
  EXPECT_TRUE(cluster_->Status(&context, {}, &status).ok());
}

TEST_F(DocumentServiceTest, UpdateBatchStreamEndsWithInvalidArgumentAtAMessageThatDoesNotParse) {
  StartNode();
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto stream = docs_->UpdateBatchStream(&context);
  for (const std::string id : {"a", "b\xff", "c"}) {
    mergedb::v1::UpdateBatch batch;
    Incr(batch.add_updates(), {"n"}, 1);
    batch.mutable_updates(0)->set_collection("u");
    batch.mutable_updates(0)->set_id(id);
    if (!stream->Write(batch)) break;
  }
  stream->WritesDone();
  mergedb::v1::UpdateBatchResponse answer;
  int answers = 0;
  while (stream->Read(&answer)) {
    ++answers;
    ASSERT_EQ(answer.responses_size(), 1);
    EXPECT_EQ(answer.responses(0).code(), 0) << answer.responses(0).message();
  }
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "mergedb.v1.UpdateBatch"))
      << status.error_message();
  EXPECT_EQ(answers, 1);
  EXPECT_TRUE(GetOrDie("u", "a").found());
  EXPECT_FALSE(GetOrDie("u", "c").found());
}

// With fsync per commit a commit waits for the disk, so the stream's applies run off the
// threads that read; the answers still come in order and every acknowledged update survives a
// restart.
TEST_F(DocumentServiceTest, UpdateStreamWithFsyncPerCommitAnswersInOrderAndKeepsEveryUpdate) {
  NodeOptions options = Options();
  options.durability = storage::Durability::kSyncEachCommit;
  StartNode(options);
  {
    grpc::ClientContext context;
    Deadline(&context, 10000);
    auto stream = docs_->UpdateStream(&context);
    for (int i = 0; i < 200; ++i) {
      UpdateRequest request = UpdateOf("f", "doc" + std::to_string(i % 3));
      request.set_request_id("f" + std::to_string(i));
      Incr(&request, {"n"}, 1);
      ASSERT_TRUE(stream->Write(request));
    }
    stream->WritesDone();
    UpdateResponse response;
    int answered = 0;
    while (stream->Read(&response)) {
      EXPECT_EQ(response.code(), 0) << response.message();
      EXPECT_EQ(response.request_id(), "f" + std::to_string(answered));
      ++answered;
    }
    EXPECT_TRUE(stream->Finish().ok());
    EXPECT_EQ(answered, 200);
  }
  RestartNode(options);
  int64_t total = 0;
  for (int d = 0; d < 3; ++d) total += CounterIn(GetOrDie("f", "doc" + std::to_string(d)), "n");
  EXPECT_EQ(total, 200);
}

// A client that sends without reading its answers is held back by gRPC's flow control once
// the node has a bounded number of updates queued, applied-but-unwritten answers included: the
// node neither applies nor buffers without bound.
TEST_F(DocumentServiceTest, AStreamWhoseClientDoesNotReadStopsBeingRead) {
  StartNode();
  constexpr int kSent = 20000;
  // A client with a small receive window (no window growth), so that the answers the node
  // hands to the transport stop after a few kilobytes, as they would for a slow client.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 10);
  auto stub = mergedb::v1::DocumentService::NewStub(
      grpc::CreateCustomChannel(node_->address(), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  Deadline(&context, 60000);
  auto stream = stub->UpdateStream(&context);
  std::thread writer([&] {
    for (int i = 0; i < kSent; ++i) {
      UpdateRequest request = UpdateOf("flood", "doc");
      Incr(&request, {"n"}, 1);
      if (!stream->Write(request)) return;  // the call was cancelled below
    }
  });
  // Wait until the node stops applying (bounded: 20 s).
  int64_t applied = -1;
  for (int round = 0; round < 100; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const int64_t now = CounterIn(GetOrDie("flood", "doc"), "n");
    if (now == applied && now > 0) break;
    applied = now;
  }
  EXPECT_GT(applied, 0);
  // Everything applied is an answer the node holds or has handed to the transport: far fewer
  // than were sent.
  EXPECT_LT(applied, kSent / 2) << "the node kept reading a stream whose answers nobody read";
  context.TryCancel();
  writer.join();
}

TEST_F(DocumentServiceTest, UpdateBatchStreamAnswersEveryMessageWithOneResponsePerUpdateInOrder) {
  StartNode();
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto stream = docs_->UpdateBatchStream(&context);
  // Message m holds m % 13 updates (some none), all written before any answer is read, so the
  // node takes several messages into one commit. Update "b5.2" has an empty operation (refused
  // alone), and "b7.0" retries "b6.0" (acknowledged, not applied twice).
  constexpr int kMessages = 40;
  auto id_of = [](int m, int i) {
    return m == 7 && i == 0 ? std::string("b6.0")
                            : "b" + std::to_string(m) + "." + std::to_string(i);
  };
  int64_t expected = 0;
  for (int m = 0; m < kMessages; ++m) {
    mergedb::v1::UpdateBatch batch;
    for (int i = 0; i < m % 13; ++i) {
      UpdateRequest* request = batch.add_updates();
      *request = UpdateOf("b", "doc" + std::to_string(i % 3));
      request->set_request_id(id_of(m, i));
      if (m == 5 && i == 2) {
        request->add_ops();
        continue;
      }
      Incr(request, {"n"}, 1);
      if (!(m == 7 && i == 0)) ++expected;
    }
    ASSERT_TRUE(stream->Write(batch));
  }
  stream->WritesDone();
  mergedb::v1::UpdateBatchResponse answer;
  int m = 0;
  uint64_t last_position = 0;
  while (stream->Read(&answer)) {
    ASSERT_LT(m, kMessages);
    ASSERT_EQ(answer.responses_size(), m % 13) << "message " << m;
    for (int i = 0; i < answer.responses_size(); ++i) {
      const UpdateResponse& response = answer.responses(i);
      EXPECT_EQ(response.request_id(), id_of(m, i));
      if (m == 5 && i == 2) {
        EXPECT_EQ(response.code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
      } else if (m == 7 && i == 0) {
        EXPECT_EQ(response.code(), 0) << response.message();
        EXPECT_TRUE(response.duplicate());
      } else {
        EXPECT_EQ(response.code(), 0) << response.message();
        EXPECT_FALSE(response.duplicate());
        EXPECT_GT(response.position(), last_position);
        last_position = response.position();
      }
    }
    ++m;
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(m, kMessages);
  int64_t total = 0;
  for (int d = 0; d < 3; ++d) total += CounterIn(GetOrDie("b", "doc" + std::to_string(d)), "n");
  EXPECT_EQ(total, expected);
}

TEST_F(DocumentServiceTest, UpdateBatchStreamEndsAtAMessageOverTheLimitAfterAnsweringTheOnesBefore) {
  NodeOptions options = Options();
  options.limits.max_batch_updates = 100;
  StartNode(options);
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto stream = docs_->UpdateBatchStream(&context);
  // Messages of 100, 100, 101 (one over: refused whole) and 100 updates.
  for (int n : {100, 100, 101, 100}) {
    mergedb::v1::UpdateBatch batch;
    for (int i = 0; i < n; ++i) Incr(batch.add_updates(), {"n"}, 1);
    for (auto& update : *batch.mutable_updates()) {
      update.set_collection("o");
      update.set_id(std::to_string(n));
    }
    if (!stream->Write(batch)) break;  // the node may end the stream before the last one
  }
  stream->WritesDone();
  mergedb::v1::UpdateBatchResponse answer;
  int messages = 0;
  while (stream->Read(&answer)) {
    ++messages;
    EXPECT_EQ(answer.responses_size(), 100);
    for (const UpdateResponse& response : answer.responses()) EXPECT_EQ(response.code(), 0);
  }
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "at most 100 updates")) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "this one holds 101")) << status.error_message();
  EXPECT_EQ(messages, 2);
  // The first two messages (both to document "100") applied, the refused one and the one after
  // it not.
  EXPECT_EQ(CounterIn(GetOrDie("o", "100"), "n"), 200);
  EXPECT_FALSE(GetOrDie("o", "101").found());
}

// A message is at most the size of one update: past it (below gRPC's receive limit, which also
// admits replication messages) the stream ends the same way.
TEST_F(DocumentServiceTest, UpdateBatchStreamEndsAtAMessageOverTheUpdateSizeLimit) {
  NodeOptions options = Options();
  options.limits.max_update_bytes = 64 << 10;
  StartNode(options);
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto stream = docs_->UpdateBatchStream(&context);
  // Messages of about 40 KiB, 80 KiB (refused whole) and 40 KiB.
  for (int n : {10, 20, 10}) {
    mergedb::v1::UpdateBatch batch;
    for (int i = 0; i < n; ++i) {
      UpdateRequest* update = batch.add_updates();
      *update = UpdateOf("s", std::to_string(n));
      SetStr(update, {"f" + std::to_string(i)}, std::string(4 << 10, 'v'));
    }
    if (!stream->Write(batch)) break;
  }
  stream->WritesDone();
  mergedb::v1::UpdateBatchResponse answer;
  int messages = 0;
  while (stream->Read(&answer)) ++messages;
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "over the node's 65536-byte"))
      << status.error_message();
  EXPECT_EQ(messages, 1);
  EXPECT_TRUE(GetOrDie("s", "10").found());
  EXPECT_FALSE(GetOrDie("s", "20").found());
}

TEST_F(DocumentServiceTest, UpdateBatchStreamOutlivesAClientThatLeaves) {
  StartNode();
  {
    grpc::ClientContext context;
    auto stream = docs_->UpdateBatchStream(&context);
    for (int m = 0; m < 200; ++m) {
      mergedb::v1::UpdateBatch batch;
      for (int i = 0; i < 50; ++i) {
        UpdateRequest* request = batch.add_updates();
        *request = UpdateOf("p", "gone");
        Incr(request, {"n"}, 1);
      }
      if (!stream->Write(batch)) break;
    }
    context.TryCancel();
  }
  UpdateRequest request = UpdateOf("p", "after");
  Incr(&request, {"n"}, 1);
  UpdateResponse response;
  EXPECT_TRUE(Update(request, &response).ok());
  EXPECT_EQ(CounterIn(GetOrDie("p", "after"), "n"), 1);
}

TEST_F(DocumentServiceTest, UpdateBatchStreamOnAReplicaRefusesEachUpdateAndServesOn) {
  NodeOptions options = Options();
  options.role = mergedb::v1::REPLICA;
  StartNode(options);
  grpc::ClientContext context;
  Deadline(&context, 10000);
  auto stream = docs_->UpdateBatchStream(&context);
  for (int m = 0; m < 3; ++m) {
    mergedb::v1::UpdateBatch batch;
    for (int i = 0; i < 4; ++i) Incr(batch.add_updates(), {"n"}, 1);
    for (auto& update : *batch.mutable_updates()) {
      update.set_collection("r");
      update.set_id("d");
    }
    ASSERT_TRUE(stream->Write(batch));
  }
  stream->WritesDone();
  mergedb::v1::UpdateBatchResponse answer;
  int messages = 0;
  while (stream->Read(&answer)) {
    ++messages;
    ASSERT_EQ(answer.responses_size(), 4);
    for (const UpdateResponse& response : answer.responses()) {
      EXPECT_EQ(response.code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(messages, 3);
  EXPECT_FALSE(GetOrDie("r", "d").found());
}

TEST_F(DocumentServiceTest, ARetriedRequestIdCountsOnceEvenAcrossARestart) {
  StartNode();
  UpdateRequest request = UpdateOf("c", "d");
  Incr(&request, {"n"}, 1);
  request.set_request_id("client-7/op-1");
  UpdateResponse first, retry;
  ASSERT_TRUE(Update(request, &first).ok());
  ASSERT_TRUE(Update(request, &retry).ok());
  EXPECT_FALSE(first.duplicate());
  EXPECT_TRUE(retry.duplicate());
  EXPECT_EQ(retry.version(), first.version());
  RestartNode(Options());
  ASSERT_TRUE(Update(request, &retry).ok());
  EXPECT_TRUE(retry.duplicate());
  EXPECT_EQ(CounterIn(GetOrDie("c", "d"), "n"), 1);
}

// A request id names one update. Used again for a different update of the same document it is
// refused, before and after a restart: answering it as a retry would acknowledge a write that
// was never applied. A true retry may ask for another write concern.
TEST_F(DocumentServiceTest, ARequestIdReusedForADifferentUpdateIsRefusedNotAcknowledged) {
  StartNode();
  UpdateRequest first = UpdateOf("c", "d");
  Incr(&first, {"n"}, 1);
  first.set_request_id("client-7/op-1");
  ASSERT_TRUE(Update(first).ok());
  UpdateRequest other = UpdateOf("c", "d");
  SetStr(&other, {"title"}, "x");
  other.set_request_id("client-7/op-1");
  for (int incarnation = 0; incarnation < 2; ++incarnation) {
    UpdateResponse response;
    grpc::Status status = Update(other, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), "different update of c/d"))
        << status.error_message();
    UpdateRequest retry = first;
    retry.set_write_concern(mergedb::v1::QUORUM);
    ASSERT_TRUE(Update(retry, &response).ok());
    EXPECT_TRUE(response.duplicate());
    const auto doc = GetOrDie("c", "d");
    EXPECT_EQ(CounterIn(doc, "n"), 1);
    EXPECT_EQ(doc.value().struct_value().fields().count("title"), 0u);
    RestartNode(Options());
  }
}

// An update based on a version this node has not applied yet (a token from a node whose writes
// have not arrived) holds a thread until the version arrives or its deadline passes; under fsync
// per commit every commit takes such a thread too. The two come from separate pools: however
// many updates wait for their versions, plain writes go on.
TEST_F(DocumentServiceTest, UpdatesWaitingForTheirBaseVersionDoNotHoldUpOtherWritesUnderFsync) {
  NodeOptions options = Options();
  options.durability = storage::Durability::kSyncEachCommit;
  StartNode(options);
  crdt::CausalContext elsewhere;
  elsewhere.Add(crdt::Dot{0x5151, 1});
  const std::string token = EncodeVersionToken(elsewhere);
  constexpr int kWaiting = 300;  // past the 256 threads of a pool
  std::vector<UpdateRequest> based;
  for (int i = 0; i < kWaiting; ++i) {
    based.push_back(UpdateOf("w", "d" + std::to_string(i)));
    Incr(&based.back(), {"n"}, 1);
    based.back().set_base_version(token);
  }
  testing::PendingUpdates waiting(docs_.get(), based, std::chrono::seconds(60));
  absl::SleepFor(absl::Seconds(2));  // time for them to reach the node and start waiting
  UpdateRequest plain = UpdateOf("w", "plain");
  Incr(&plain, {"n"}, 1);
  const grpc::Status status = Update(plain);  // a 5 s deadline
  EXPECT_TRUE(status.ok()) << status.error_message();
  for (const grpc::Status& waited : waiting.CancelAndCollect()) {
    // None was applied: the version never arrived.
    EXPECT_EQ(waited.error_code(), grpc::StatusCode::CANCELLED) << waited.error_message();
  }
}

TEST_F(DocumentServiceTest, SixteenClientsIncrementingOneDocumentLoseNothing) {
  StartNode();
  constexpr int kClients = 16;
  constexpr int kEach = 100;
  std::vector<std::thread> clients;
  std::atomic<int> failures{0};
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&] {
      // Each client has its own channel (and so its own connection).
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      auto channel = grpc::CreateCustomChannel(node_->address(), grpc::InsecureChannelCredentials(), args);
      auto stub = mergedb::v1::DocumentService::NewStub(channel);
      for (int i = 0; i < kEach; ++i) {
        UpdateRequest request = UpdateOf("hot", "doc");
        Incr(&request, {"n"}, 1);
        UpdateResponse response;
        grpc::ClientContext context;
        Deadline(&context, 20000);
        // A fresh connection may still be coming up under load: wait for it, as a client should.
        context.set_wait_for_ready(true);
        grpc::Status status = stub->Update(&context, request, &response);
        if (!status.ok()) {
          ++failures;
          ADD_FAILURE() << "update failed: " << status.error_message();
        }
      }
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(CounterIn(GetOrDie("hot", "doc"), "n"), kClients * kEach);
}

TEST_F(DocumentServiceTest, GracefulShutdownLosesNoAcknowledgedWrite) {
  StartNode();
  std::atomic<bool> stop{false};
  std::atomic<int64_t> acknowledged{0}, attempted{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      auto stub = mergedb::v1::DocumentService::NewStub(channel_);
      while (!stop) {
        UpdateRequest request = UpdateOf("c", "d");
        Incr(&request, {"n"}, 1);
        UpdateResponse response;
        grpc::ClientContext context;
        Deadline(&context, 2000);
        ++attempted;
        if (stub->Update(&context, request, &response).ok()) {
          ++acknowledged;
        } else {
          return;  // the node is going away
        }
      }
    });
  }
  while (acknowledged < 200) std::this_thread::yield();
  node_->Shutdown(absl::Seconds(5));  // while the clients are still writing
  stop = true;
  for (auto& c : clients) c.join();
  node_.reset();
  StartNode();
  const int64_t n = CounterIn(GetOrDie("c", "d"), "n");
  EXPECT_GE(n, acknowledged.load());
  EXPECT_LE(n, attempted.load());
}

// A second node on a port in use is refused with a clear error, and the node already there
// serves on (the refused one set up its write streams' queue before the bind failed).
TEST_F(DocumentServiceTest, ANodeOnAPortInUseIsRefusedAndTheOtherServesOn) {
  StartNode();
  NodeOptions second = Options();
  second.node_name = "n2";
  second.data_dir = "/data2";
  second.listen = node_->address();
  auto refused = Node::Start(second);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "cannot listen on " + node_->address()))
      << refused.status();
  grpc::ClientContext context;
  Deadline(&context);
  auto stream = docs_->UpdateStream(&context);
  UpdateRequest request = UpdateOf("p", "after");
  Incr(&request, {"n"}, 1);
  ASSERT_TRUE(stream->Write(request));
  UpdateResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.code(), 0) << response.message();
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(DocumentServiceTest, StatusReportsIdentityCountsAndADigestThatFollowsTheState) {
  StartNode();
  auto status = [&] {
    mergedb::v1::StatusResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    EXPECT_TRUE(cluster_->Status(&context, mergedb::v1::StatusRequest(), &response).ok());
    return response;
  };
  mergedb::v1::StatusResponse empty = status();
  EXPECT_EQ(empty.node_name(), "n1");
  EXPECT_EQ(empty.cluster_id(), "test");
  EXPECT_EQ(empty.role(), mergedb::v1::PRIMARY);
  EXPECT_EQ(empty.document_count(), 0);
  EXPECT_EQ(empty.state_digest().size(), 16u);
  UpdateRequest request = UpdateOf("c", "d");
  Incr(&request, {"n"}, 1);
  ASSERT_TRUE(Update(request).ok());
  mergedb::v1::StatusResponse after = status();
  EXPECT_EQ(after.document_count(), 1);
  EXPECT_NE(after.state_digest(), empty.state_digest());
  ASSERT_EQ(after.applied_size(), 1);
  EXPECT_EQ(after.applied(0).replica(), after.replica_id());
  EXPECT_EQ(after.applied(0).counter(), 1u);
  EXPECT_EQ(after.last_position(), 1u);
}

TEST_F(DocumentServiceTest, AReadOnlyReplicaRefusesWritesAndServesReads) {
  NodeOptions options = Options();
  options.role = mergedb::v1::REPLICA;
  StartNode(options);
  UpdateRequest request = UpdateOf("c", "d");
  Incr(&request, {"n"}, 1);
  grpc::Status status = Update(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "read-only replica"));
  EXPECT_FALSE(GetOrDie("c", "d").found());
}

}  // namespace
}  // namespace mergedb::node
