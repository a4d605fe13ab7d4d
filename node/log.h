// Minimal leveled logging to stderr: one line per message, written with a single write(2) so
// lines from different threads never interleave.
//
//   MERGEDB_LOG(INFO) << "listening on " << address;
#ifndef MERGEDB_NODE_LOG_H_
#define MERGEDB_NODE_LOG_H_

#include <sstream>
#include <string>

namespace mergedb::node {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Messages below this level are dropped. Default kInfo.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// The node name printed on every line (empty: none).
void SetLogTag(const std::string& tag);

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace mergedb::node

#define MERGEDB_LOG_LEVEL_DEBUG ::mergedb::node::LogLevel::kDebug
#define MERGEDB_LOG_LEVEL_INFO ::mergedb::node::LogLevel::kInfo
#define MERGEDB_LOG_LEVEL_WARNING ::mergedb::node::LogLevel::kWarning
#define MERGEDB_LOG_LEVEL_ERROR ::mergedb::node::LogLevel::kError

#define MERGEDB_LOG(level)                                                  \
  if (MERGEDB_LOG_LEVEL_##level < ::mergedb::node::MinLogLevel()) {         \
  } else                                                                    \
    ::mergedb::node::LogMessage(MERGEDB_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

#endif  // MERGEDB_NODE_LOG_H_
