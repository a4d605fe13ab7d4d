// Crash test: a child process performs acknowledged writes (reporting each acknowledgement to
// the parent through a pipe) and is SIGKILLed at random moments, many times over. After each
// kill the parent reopens the data dir: every acknowledged write must be there, nothing may be
// applied more often than it was attempted, and no update may be half-applied.
//
// The child is this same binary re-executed with --crash-child, so it starts with a clean
// process (fork() alone would inherit LevelDB's background-thread state without the thread).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "storage/store.h"
#include "tests/storage/store_test_util.h"

namespace mergedb::storage {
namespace {

constexpr int kThreads = 4;
constexpr int kDocs = 20;

StoreOptions CrashOptions(const std::string& dir) {
  StoreOptions options;
  options.path = dir;
  options.cluster_id = "crash";
  options.node_name = "n1";
  return options;
}

// One update: increments a and b of a document together, with a request id so a retry could
// be recognised.
LocalWrite PairUpdate(crdt::ReplicaId me, int thread, int64_t i) {
  return testing::IncrementPair("c", "doc" + std::to_string((thread * 7919 + i) % kDocs), me,
                                "t" + std::to_string(thread) + "-" + std::to_string(i));
}

// The child: writes until killed. Each acknowledgement is one 8-byte record (thread, i), which
// a pipe delivers atomically.
int RunChild(const std::string& dir, int ack_fd, int round) {
  auto store = Store::Open(CrashOptions(dir));
  if (!store.ok()) {
    std::fprintf(stderr, "child: %s\n", std::string(store.status().message()).c_str());
    return 3;
  }
  const crdt::ReplicaId me = (*store)->replica_id();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int32_t i = 0;; ++i) {
        const int thread = round * kThreads + t;
        if (!(*store)->ApplyLocal(PairUpdate(me, thread, i)).ok()) _exit(4);
        int32_t ack[2] = {thread, i};
        if (write(ack_fd, ack, sizeof ack) != sizeof ack) _exit(5);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  return 0;
}

TEST(StoreCrash, AcknowledgedWritesSurviveSigkillAtRandomMoments) {
  const std::string dir = (std::filesystem::path(::testing::TempDir()) /
                           ("mergedb-crash-" + std::to_string(::getpid())))
                              .string();
  std::filesystem::remove_all(dir);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);

  // thread -> highest acknowledged i (updates of one thread are sequential).
  std::map<int, int32_t> acked;
  int64_t total_acked = 0;
  constexpr int kRounds = 15;
  for (int round = 0; round < kRounds; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      const std::string ack_fd = std::to_string(fds[1]);
      const std::string round_arg = std::to_string(round);
      execl("/proc/self/exe", "store_crash_test", "--crash-child", dir.c_str(), ack_fd.c_str(),
            round_arg.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    // The kill time is the experiment, not a synchronization: anywhere from before the store
    // is open to well into the writes.
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(5, 250)(rng)));
    kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early with status " << WEXITSTATUS(status);
    int32_t ack[2];
    while (read(fds[0], ack, sizeof ack) == sizeof ack) {
      acked[ack[0]] = std::max(acked.count(ack[0]) ? acked[ack[0]] : -1, ack[1]);
      ++total_acked;
    }
    close(fds[0]);

    auto store = Store::Open(CrashOptions(dir));
    ASSERT_TRUE(store.ok()) << "round " << round << ": " << store.status();
    int64_t a_total = 0;
    for (int d = 0; d < kDocs; ++d) {
      auto doc = (*store)->Get("c", "doc" + std::to_string(d));
      ASSERT_TRUE(doc.ok());
      int64_t a = 0, b = 0;
      for (const auto& f : doc->ReadField({"a"})) a = f.value().counter();
      for (const auto& f : doc->ReadField({"b"})) b = f.value().counter();
      ASSERT_EQ(a, b) << "round " << round << ": a half-applied update in doc" << d;
      a_total += a;
    }
    // Every acknowledged update is present; at most one more per writer thread (in flight at
    // the kill) may also have landed.
    ASSERT_GE(a_total, total_acked) << "round " << round << ": acknowledged writes lost";
    ASSERT_LE(a_total, total_acked + int64_t{kThreads}) << "round " << round;
    for (const auto& [thread, last] : acked) {
      auto record = (*store)->LookupRequest("t" + std::to_string(thread) + "-" + std::to_string(last));
      ASSERT_TRUE(record.ok() && record->has_value())
          << "round " << round << ": request record of an acknowledged write lost";
    }
    // Counting what landed beyond the acknowledgements keeps the next round's bound exact.
    total_acked = a_total;
  }
  std::printf("%d kills, %lld updates acknowledged or landed in total\n", kRounds,
              static_cast<long long>(total_acked));
  // A child that never got to write (stuck opening the store, say) would leave every check
  // above true and nothing tested.
  EXPECT_GT(total_acked, int64_t{kRounds}) << "the children wrote (almost) nothing";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mergedb::storage

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "--crash-child") == 0) {
    return mergedb::storage::RunChild(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
