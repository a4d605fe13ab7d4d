// Every class of bad input gets a precise status and message, and nothing is partially applied.
#include <functional>
#include <limits>

#include "absl/strings/match.h"
#include "tests/node/node_test_util.h"

namespace mergedb::node {
namespace {

using mergedb::v1::UpdateRequest;
using testing::AddOp;
using testing::CounterIn;
using testing::Incr;
using testing::NodeTest;
using testing::SetStr;
using testing::UpdateOf;

class ValidationTest : public NodeTest {
 protected:
  void ExpectRefused(const UpdateRequest& request, grpc::StatusCode code, absl::string_view words) {
    grpc::Status status = Update(request);
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), words))
        << "'" << status.error_message() << "' lacks '" << words << "'";
  }
};

TEST_F(ValidationTest, EachBadUpdateGetsAPreciseStatus) {
  StartNode();
  struct Case {
    const char* name;
    std::function<void(UpdateRequest*)> make;
    grpc::StatusCode code;
    const char* words;
  };
  const std::string long_name(600, 'x');
  const std::vector<Case> cases = {
      {"empty collection", [](UpdateRequest* r) { r->set_collection(""); },
       grpc::StatusCode::INVALID_ARGUMENT, "collection: empty"},
      {"oversized id", [&](UpdateRequest* r) { r->set_id(long_name); },
       grpc::StatusCode::INVALID_ARGUMENT, "id: 600 bytes, over the 512-byte limit"},
      {"control character in a field name",
       [](UpdateRequest* r) { r->mutable_ops(0)->set_path(0, "a\nb"); },
       grpc::StatusCode::INVALID_ARGUMENT, "ops[0].path[0]: contains the control character 0x0a"},
      {"empty field name", [](UpdateRequest* r) { r->mutable_ops(0)->set_path(0, ""); },
       grpc::StatusCode::INVALID_ARGUMENT, "ops[0].path[0]: empty"},
      {"path deeper than the limit",
       [](UpdateRequest* r) {
         for (int i = 0; i < 40; ++i) r->mutable_ops(0)->add_path("p");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "41 names deep, over the limit of 24"},
      {"no operations", [](UpdateRequest* r) { r->clear_ops(); },
       grpc::StatusCode::INVALID_ARGUMENT, "ops: no operations"},
      {"unknown operation", [](UpdateRequest* r) { r->mutable_ops(0)->clear_increment(); },
       grpc::StatusCode::INVALID_ARGUMENT, "ops[0]: unknown or missing operation"},
      {"too many operations",
       [](UpdateRequest* r) {
         for (int i = 0; i < 1000; ++i) Incr(r, {"n"}, 1);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "1001 operations, over the limit of 1000"},
      {"NaN",
       [](UpdateRequest* r) {
         AddOp(r, {"x"})->mutable_set()->mutable_value()->mutable_scalar()->set_double_value(
             std::numeric_limits<double>::quiet_NaN());
       },
       grpc::StatusCode::INVALID_ARGUMENT, "ops[1].set.value: doubles must be finite"},
      {"register without a value", [](UpdateRequest* r) { AddOp(r, {"x"})->mutable_set(); },
       grpc::StatusCode::INVALID_ARGUMENT, "ops[1].set.value: neither scalar nor json set"},
      {"set add without elements", [](UpdateRequest* r) { AddOp(r, {"s"})->mutable_add(); },
       grpc::StatusCode::INVALID_ARGUMENT, "ops[1].add.elements: no elements"},
      {"value over the size limit",
       [](UpdateRequest* r) { SetStr(r, {"big"}, std::string((1 << 20) + 1, 'v')); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "over the 1048576-byte value limit"},
      {"delete_document with a path",
       [](UpdateRequest* r) { AddOp(r, {"x"})->mutable_delete_document(); },
       grpc::StatusCode::INVALID_ARGUMENT, "delete_document takes no path"},
      {"malformed base version", [](UpdateRequest* r) { r->set_base_version("\xff\xff\x01"); },
       grpc::StatusCode::INVALID_ARGUMENT, "base_version: malformed version token"},
      {"unknown write concern",
       [](UpdateRequest* r) { r->set_write_concern(static_cast<mergedb::v1::WriteConcern>(42)); },
       grpc::StatusCode::INVALID_ARGUMENT, "write_concern: unknown value 42"},
      {"oversized request id", [&](UpdateRequest* r) { r->set_request_id(long_name); },
       grpc::StatusCode::INVALID_ARGUMENT, "request_id: 600 bytes"},
      {"a type that contradicts the stored field",
       [](UpdateRequest* r) { SetStr(r, {"counter"}, "not a number"); },
       grpc::StatusCode::FAILED_PRECONDITION, "ops[1]: field counter is a counter, not a register"},
  };
  UpdateRequest seed = UpdateOf("c", "d");
  Incr(&seed, {"counter"}, 5);
  ASSERT_TRUE(Update(seed).ok());
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    UpdateRequest request = UpdateOf("c", "d");
    Incr(&request, {"counter"}, 1);
    c.make(&request);
    ExpectRefused(request, c.code, c.words);
  }
  // None of the refused updates applied anything, not even their valid first operation.
  EXPECT_EQ(CounterIn(GetOrDie("c", "d"), "counter"), 5);
}

TEST_F(ValidationTest, SizeLimitsOnUpdatesMessagesAndAnswers) {
  NodeOptions options = Options();
  options.limits.max_update_bytes = 64 << 10;
  options.limits.max_response_bytes = 32 << 10;  // a 10 KiB field shows twice: JSON and typed
  StartNode(options);
  // Over the update limit but under gRPC's message limit: refused by validation.
  UpdateRequest big = UpdateOf("c", "d");
  SetStr(&big, {"v"}, std::string(100 << 10, 'x'));
  ExpectRefused(big, grpc::StatusCode::RESOURCE_EXHAUSTED, "over the 65536-byte limit");
  // Over gRPC's message limit (the larger of the update limit and a replication message, plus
  // 1 MiB): refused by gRPC itself.
  UpdateRequest huge = UpdateOf("c", "d");
  SetStr(&huge, {"v"}, std::string(3 << 20, 'x'));
  ExpectRefused(huge, grpc::StatusCode::RESOURCE_EXHAUSTED, "");
  // A document whose answer exceeds the response limit: the error names the path option. (Four
  // fields: over the limit in JSON alone, which List and Watch send.)
  for (int i = 0; i < 4; ++i) {
    UpdateRequest part = UpdateOf("c", "wide");
    SetStr(&part, {"f" + std::to_string(i)}, std::string(10 << 10, 'y'));
    ASSERT_TRUE(Update(part).ok());
  }
  mergedb::v1::GetRequest get;
  get.set_collection("c");
  get.set_id("wide");
  mergedb::v1::GetResponse response;
  grpc::Status status = Get(get, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "GetRequest.path")) << status.error_message();
  get.add_path("f1");
  EXPECT_TRUE(Get(get, &response).ok());
  // List and Watch leave such a document's value out and say so, and go on past it.
  for (const char* id : {"a", "z"}) {
    UpdateRequest small = UpdateOf("c", id);
    Incr(&small, {"n"}, 1);
    ASSERT_TRUE(Update(small).ok());
  }
  std::vector<std::string> listed;
  mergedb::v1::ListRequest list;
  list.set_collection("c");
  list.set_page_size(1);
  for (int page = 0; page < 10; ++page) {
    mergedb::v1::ListResponse answer;
    grpc::ClientContext context;
    Deadline(&context);
    grpc::Status status = docs_->List(&context, list, &answer);
    ASSERT_TRUE(status.ok()) << status.error_message();
    for (const auto& doc : answer.documents()) {
      listed.push_back(doc.id());
      EXPECT_EQ(doc.too_large(), doc.id() == "wide") << doc.id();
      EXPECT_EQ(doc.has_value(), doc.id() != "wide") << doc.id();
      EXPECT_FALSE(doc.version().empty());
    }
    if (answer.next_page_token().empty()) break;
    list.set_page_token(answer.next_page_token());
  }
  EXPECT_EQ(listed, (std::vector<std::string>{"a", "wide", "z"}));
  mergedb::v1::WatchRequest watch;
  watch.set_collection("c");
  grpc::ClientContext context;
  Deadline(&context);
  auto reader = docs_->Watch(&context, watch);
  mergedb::v1::WatchEvent event;
  std::vector<std::string> watched;
  while (watched.size() < 6 && reader->Read(&event)) {
    watched.push_back(event.id());
    EXPECT_EQ(event.too_large(), event.id() == "wide") << event.id();
    EXPECT_EQ(event.has_value(), event.id() != "wide") << event.id();
    EXPECT_TRUE(event.found());
  }
  context.TryCancel();
  EXPECT_EQ(watched, (std::vector<std::string>{"wide", "wide", "wide", "wide", "a", "z"}));
}

TEST_F(ValidationTest, BadReadsAreRefused) {
  StartNode();
  mergedb::v1::GetRequest get;
  get.set_collection("c");
  get.set_id("d");
  get.set_after("\x08");
  mergedb::v1::GetResponse response;
  grpc::Status status = Get(get, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "after: malformed version token"));
  get.clear_after();
  get.set_id("");
  EXPECT_EQ(Get(get, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  mergedb::v1::WatchRequest watch;  // no collection
  grpc::ClientContext context;
  Deadline(&context);
  auto reader = docs_->Watch(&context, watch);
  mergedb::v1::WatchEvent event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(NameValidation, Utf8IsCheckedStrictly) {
  Limits limits;
  EXPECT_TRUE(ValidateName("n", "caf\xc3\xa9", limits).ok());
  EXPECT_TRUE(ValidateName("n", "\xf0\x9f\x98\x80", limits).ok());
  EXPECT_FALSE(ValidateName("n", "\xc3", limits).ok());              // truncated
  EXPECT_FALSE(ValidateName("n", "\xc0\xaf", limits).ok());          // overlong
  EXPECT_FALSE(ValidateName("n", "\xed\xa0\x80", limits).ok());      // surrogate
  EXPECT_FALSE(ValidateName("n", "\xf4\x90\x80\x80", limits).ok());  // past U+10FFFF
  EXPECT_FALSE(ValidateName("n", "a\x7f", limits).ok());             // DEL
}

}  // namespace
}  // namespace mergedb::node
